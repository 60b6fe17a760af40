//! `validate ORIGINAL SAVED` with the forward check, on saves of the bundled tiny pipelines, and
//! its tokenizer check against what transformers 5.23 saves (`tests/fixtures/52-validate`).

use diff_convert::SaveDtype;
use diff_convert::save::{SaveOptions, save_pipeline};
use diff_tokenizer::ClipTokenizer;
use diff_validate::{
    BF16_REL_TOLERANCE, F16_REL_TOLERANCE, TOKENIZER_PROMPTS, Tolerance, ValidateOptions,
    ValidationReport, compare_tokenizers, validate_pipeline,
};
use safetensors::Dtype;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn save(src: &Path, out: &Path, options: SaveOptions) {
    save_pipeline(src, out, &options).unwrap();
}

fn validate(original: &Path, saved: &Path, variant: Option<&str>) -> ValidationReport {
    let options = ValidateOptions {
        variant: variant.map(str::to_string),
        ..ValidateOptions::default()
    };
    validate_pipeline(original, saved, &options).unwrap()
}

fn forward_names(report: &ValidationReport) -> Vec<&str> {
    report.forward.iter().map(|r| r.name.as_str()).collect()
}

/// Rewrites one tensor of a safetensors file in place (test set-up only).
fn perturb(file: &Path, tensor: &str, delta: f32) {
    let (mut tensors, _) = diff_convert::tensors::read_safetensors(file).unwrap();
    let t = tensors.get_mut(tensor).unwrap();
    assert_eq!(t.dtype, Dtype::F32);
    let first = f32::from_le_bytes(t.data[..4].try_into().unwrap()) + delta;
    t.data[..4].copy_from_slice(&first.to_le_bytes());
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    std::fs::write(file, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn plain_fp16_variant_and_sharded_saves_of_tiny_sd_validate_clean_with_forward() {
    let src = fixture("tiny-sd");
    let tmp = tempfile::tempdir().unwrap();
    let (plain, fp16, sharded) = (
        tmp.path().join("plain"),
        tmp.path().join("fp16"),
        tmp.path().join("sharded"),
    );
    save(&src, &plain, SaveOptions::default());
    save(
        &src,
        &fp16,
        SaveOptions {
            variant: Some("fp16".into()),
            dtype: Some(SaveDtype::F16),
            ..SaveOptions::default()
        },
    );
    save(
        &src,
        &sharded,
        SaveOptions::default().with_max_shard_size("30KB").unwrap(),
    );
    assert!(
        sharded
            .join("unet/diffusion_pytorch_model.safetensors.index.json")
            .is_file()
    );
    let models = ["safety_checker", "text_encoder", "unet", "vae"];
    for (saved, variant) in [(&plain, None), (&sharded, None)] {
        let report = validate(&src, saved, variant);
        assert!(report.ok(), "{}", report.render());
        assert_eq!(forward_names(&report), models);
        // Same weights, same inputs, same device: bit-identical outputs (tolerance: exact).
        for r in &report.forward {
            assert_eq!(r.tolerance, Tolerance::Exact, "{}", r.name);
            assert_eq!(r.worst(), (0.0, 0.0), "{}", r.name);
            assert!(!r.outputs.is_empty(), "{}", r.name);
        }
    }
    let report = validate(&src, &fp16, Some("fp16"));
    assert!(report.ok(), "{}", report.render());
    assert_eq!(forward_names(&report), models);
    for r in &report.forward {
        assert_eq!(
            r.tolerance,
            Tolerance::Relative {
                dtype: Dtype::F16,
                rel: F16_REL_TOLERANCE
            },
            "{}",
            r.name
        );
        let (abs, rel) = r.worst();
        // The f16 weights do change the outputs, by far less than the 1e-2 tolerance (measured
        // rel about 2e-4 to 8e-4 on tiny-sd).
        assert!(
            abs > 0.0 && rel < F16_REL_TOLERANCE / 4.0,
            "{}",
            report.render()
        );
    }
}

#[test]
fn bf16_save_of_tiny_sdxl_validates_within_the_bf16_tolerance() {
    let src = fixture("tiny-sdxl");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bf16");
    save(
        &src,
        &out,
        SaveOptions {
            variant: Some("bf16".into()),
            dtype: Some(SaveDtype::BF16),
            ..SaveOptions::default()
        },
    );
    let report = validate(&src, &out, Some("bf16"));
    assert!(report.ok(), "{}", report.render());
    assert_eq!(
        forward_names(&report),
        ["text_encoder", "text_encoder_2", "unet", "vae"]
    );
    for r in &report.forward {
        assert!(
            matches!(r.tolerance, Tolerance::Relative { dtype: Dtype::BF16, rel } if rel == BF16_REL_TOLERANCE)
        );
        let (abs, rel) = r.worst();
        assert!(
            abs > 0.0 && rel < BF16_REL_TOLERANCE / 4.0,
            "{}",
            report.render()
        );
    }
    assert_eq!(report.tokenizers.len(), 2);
}

#[test]
fn one_perturbed_tensor_fails_both_the_tensor_and_the_forward_check() {
    let src = fixture("tiny-sd");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("copy");
    save(&src, &out, SaveOptions::default());
    perturb(
        &out.join("unet/diffusion_pytorch_model.safetensors"),
        "conv_in.weight",
        0.25,
    );
    let report = validate(&src, &out, None);
    assert!(!report.ok());
    let files = report.files.iter().find(|r| r.name == "unet").unwrap();
    assert_eq!(files.problems.len(), 1, "{}", report.render());
    assert!(files.problems[0].contains("conv_in.weight"));
    let forward = report.forward.iter().find(|r| r.name == "unet").unwrap();
    assert!(!forward.ok(), "{}", report.render());
    assert!(forward.problems[0].contains("`sample` differs"));
    assert!(forward.worst().0 > 0.0);
    // Every other component is untouched and still matches exactly.
    let failed: Vec<&str> = report
        .forward
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(failed, ["unet"]);
    assert_eq!(report.failures(), 2);
    let text = report.render();
    assert!(text.contains("FAILED  files    unet"), "{text}");
    assert!(text.contains("FAILED  forward  unet"), "{text}");
}

#[test]
fn a_changed_config_value_fails_validation() {
    let src = fixture("tiny-sd");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("copy");
    save(&src, &out, SaveOptions::default());
    let path = out.join("vae/config.json");
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config.insert("scaling_factor".into(), Value::from(0.13025));
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let report = validate(&src, &out, None);
    assert!(!report.ok());
    let vae = report.files.iter().find(|r| r.name == "vae").unwrap();
    assert_eq!(vae.problems.len(), 1, "{}", report.render());
    assert!(vae.problems[0].contains("scaling_factor"), "{vae:?}");
    // scaling_factor is applied by the pipeline, not inside encode/decode: the forward matches.
    assert!(report.forward.iter().all(|r| r.ok()), "{}", report.render());
}

#[test]
fn no_forward_compares_files_and_tokenizers_only() {
    let src = fixture("tiny-sd");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("copy");
    save(&src, &out, SaveOptions::default());
    perturb(
        &out.join("vae/diffusion_pytorch_model.safetensors"),
        "quant_conv.bias",
        1.0,
    );
    let options = ValidateOptions {
        forward: false,
        ..ValidateOptions::default()
    };
    let report = validate_pipeline(&src, &out, &options).unwrap();
    assert!(report.forward.is_empty());
    assert_eq!(report.tokenizers.len(), 1);
    assert_eq!(report.failures(), 1, "{}", report.render());
}

/// The tiny tokenizer of `52-validate` in the Hub layout (`vocab.json`, `merges.txt`, ...) and
/// as transformers 5.23's `save_pretrained` wrote it (`tokenizer.json`, rewritten
/// `tokenizer_config.json`): both give transformers' ids, and `validate` accepts either.
#[test]
fn tokenizer_saved_by_transformers_and_copied_tokenizer_files_both_validate() {
    let dir = fixture("52-validate");
    let ids: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ids.json")).unwrap()).unwrap();
    let prompts: Vec<&str> = ids["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(prompts, TOKENIZER_PROMPTS);
    assert_eq!(
        ids["saved_files"],
        serde_json::json!(["tokenizer.json", "tokenizer_config.json"])
    );
    for which in ["files", "saved"] {
        let tok = ClipTokenizer::from_pretrained(dir.join(format!("tokenizer_{which}"))).unwrap();
        for (prompt, want) in prompts.iter().zip(ids["ids"][which].as_array().unwrap()) {
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
                .collect();
            assert_eq!(
                tok.encode_padded(prompt, 77),
                want,
                "{which}: {prompt:?} (exact)"
            );
        }
    }
    let direct = compare_tokenizers(
        "tokenizer",
        &dir.join("tokenizer_files"),
        &dir.join("tokenizer_saved"),
    );
    assert!(direct.ok(), "{direct:?}");

    // A whole pipeline: the original carries the Hub layout, the saved copy the layout
    // transformers writes; everything, forward included, validates.
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("original");
    save(&fixture("tiny-sd"), &original, SaveOptions::default());
    let replace = |root: &Path, from: &Path| {
        let tok = root.join("tokenizer");
        std::fs::remove_dir_all(&tok).unwrap();
        std::fs::create_dir(&tok).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tok.join(e.file_name())).unwrap();
        }
    };
    replace(&original, &dir.join("tokenizer_files"));
    let saved = tmp.path().join("saved");
    save(&original, &saved, SaveOptions::default());
    // Our save copies the tokenizer files unchanged.
    for f in [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert_eq!(
            std::fs::read(original.join("tokenizer").join(f)).unwrap(),
            std::fs::read(saved.join("tokenizer").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(validate(&original, &saved, None).ok());
    replace(&saved, &dir.join("tokenizer_saved"));
    let report = validate(&original, &saved, None);
    assert!(report.ok(), "{}", report.render());
    assert_eq!(
        report.tokenizers[0].files.1,
        ["tokenizer.json", "tokenizer_config.json"]
    );

    // A tokenizer that tokenizes differently is caught.
    std::fs::copy(
        fixture("tiny-sd/tokenizer/vocab.json"),
        saved.join("tokenizer/vocab.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("tiny-sd/tokenizer/merges.txt"),
        saved.join("tokenizer/merges.txt"),
    )
    .unwrap();
    std::fs::remove_file(saved.join("tokenizer/tokenizer.json")).unwrap();
    let report = validate(&original, &saved, None);
    assert!(!report.tokenizers[0].ok(), "{}", report.render());
    assert_eq!(report.failures(), 1, "{}", report.render());
}
