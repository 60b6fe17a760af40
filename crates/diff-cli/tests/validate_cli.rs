//! `burn-diffusers validate`: the per-component report and the exit status, on `save`s of the
//! bundled tiny SD pipeline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_sd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(args)
        .output()
        .expect("run burn-diffusers")
}

fn save(out: &Path, extra: &[&str]) {
    let src = tiny_sd();
    let mut args = vec![
        "save",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = cli(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The lines of the report, without the column padding.
fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn validate_prints_one_line_per_component_and_check_and_exits_zero_on_a_faithful_fp16_save() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fp16");
    save(&out, &["--variant", "fp16", "--dtype", "f16"]);
    let o = cli(&[
        "validate",
        tiny_sd().to_str().unwrap(),
        out.to_str().unwrap(),
        "--variant",
        "fp16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = lines(&o);
    let heads: Vec<String> = lines
        .iter()
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        heads,
        [
            "ok files model_index.json",
            "ok files feature_extractor",
            "ok files safety_checker",
            "ok files scheduler",
            "ok files text_encoder",
            "ok files tokenizer",
            "ok files unet",
            "ok files vae",
            "ok tokens tokenizer",
            "ok forward safety_checker",
            "ok forward text_encoder",
            "ok forward unet",
            "ok forward vae",
        ]
    );
    assert!(lines.contains(&"ok files unet 208 tensors (208 compared after a cast)".to_string()));
    let unet = lines
        .iter()
        .find(|l| l.starts_with("ok forward unet"))
        .unwrap();
    assert!(
        unet.contains("[rel <= 1e-2 (F16 weights)] over sample[1, 4, 8, 8]"),
        "{unet}"
    );
    let vae = lines
        .iter()
        .find(|l| l.starts_with("ok forward vae"))
        .unwrap();
    assert!(
        vae.ends_with("over encode.mean[1, 4, 8, 8], decode[1, 3, 16, 16]"),
        "{vae}"
    );
}

#[test]
fn validate_exits_non_zero_and_names_the_tensor_when_weights_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plain");
    save(&out, &[]);
    // The same VAE weights with one value changed.
    let file = out.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let bias = tensors
        .iter_mut()
        .find(|t| t.0 == "decoder.conv_out.bias")
        .unwrap();
    let v = f32::from_le_bytes(bias.3[..4].try_into().unwrap()) + 0.5;
    bias.3[..4].copy_from_slice(&v.to_le_bytes());
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
    let o = cli(&[
        "validate",
        tiny_sd().to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let report = lines(&o);
    let text = report.join("\n");
    assert!(
        report.contains(&"FAILED files vae 123 tensors (0 compared after a cast)".to_string()),
        "{text}"
    );
    assert!(
        text.contains("`decoder.conv_out.bias`: values differ (F32, exact comparison)"),
        "{text}"
    );
    let forward = report
        .iter()
        .find(|l| l.starts_with("FAILED forward vae"))
        .unwrap();
    assert!(forward.contains("[exact]"), "{forward}");
    // The encoder does not use the decoder's bias; only `decode` differs, by exactly 0.5.
    assert!(
        text.contains("`decode` differs: max abs 5.000e-1"),
        "{text}"
    );
    assert!(!text.contains("`encode.mean` differs"), "{text}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("2 check(s) found a difference"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // --no-forward: the tensor check alone still fails.
    let o = cli(&[
        "validate",
        tiny_sd().to_str().unwrap(),
        out.to_str().unwrap(),
        "--no-forward",
    ]);
    assert!(!o.status.success());
    assert!(!lines(&o).iter().any(|l| l.contains("forward")));
}
