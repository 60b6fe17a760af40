//! Runs the walkthrough example (`examples/walkthrough.rs`) on the tiny fixtures and checks
//! what it shows: the SD + IP-Adapter image and the SAG image by `from_pipe` are diffusers'
//! (`tests/fixtures/47-ip-adapter`: `t2i_plain_bin_cfg`, `sag_plain_nocfg`, every pixel within
//! 2/255, mean under 0.5/255), the `from_pipe` SAG pipeline gives exactly the output of a SAG
//! pipeline loaded afresh and adds no parameters, `unload_ip_adapter` on the SAG pipeline is
//! seen by the SD pipeline, and the AnimateDiff step (`from_pipe` with the motion adapter, DDIM
//! linear, the IP-Adapter again, the motion LoRA at 0.75, 16 frames) gives diffusers' frames
//! (`tests/fixtures/71-animatediff-ip-adapter`: `ip_cfg_lora075_16f`), writes a 16-frame GIF,
//! and adds only the motion adapter's and LoRA's parameters (and the IP-Adapter loaded again).

#[path = "../examples/walkthrough.rs"]
mod walkthrough;

use burn_diffusers::pipelines::PipelineOutput;
use burn_diffusers::pipelines::outputs::load_float_images;
use std::path::Path;

fn images(out: &PipelineOutput) -> &[f32] {
    &out.images.as_ref().unwrap().data
}

fn assert_close(name: &str, got: &[f32], fixture: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/47-ip-adapter")
        .join(fixture);
    let want = load_float_images(&path).unwrap();
    assert_eq!(got.len(), want.data.len(), "{name}");
    let diffs: Vec<f32> = got
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let max = diffs.iter().copied().fold(0.0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    eprintln!("{name}: max {max:e}, mean {mean:e}");
    assert!(
        max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
        "{name}: max {max}, mean {mean}"
    );
}

/// The float16 `frames` of a fixture file, widened.
fn f16_frames(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("frames").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F16);
    t.data()
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

#[test]
fn the_from_pipe_walkthrough_runs_as_the_guide_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let gif = tmp.path().join("out_animate.gif");
    let mut inputs = walkthrough::Inputs::tiny();
    inputs.animate.as_mut().unwrap().gif = gif.clone();
    let report = walkthrough::run(&inputs).unwrap();
    assert_close(
        "out_sd",
        images(&report.out_sd),
        "t2i_plain_bin_cfg.safetensors",
    );
    assert_close(
        "out_sag",
        images(&report.out_sag),
        "sag_plain_nocfg.safetensors",
    );
    // from_pipe: the same output as a SAG pipeline loaded afresh, and no added parameters.
    assert_eq!(images(&report.out_sag), images(&report.out_sag_fresh));
    assert!(report.bytes_sd > 0);
    assert_eq!(report.bytes_sd_and_sag, report.bytes_sd);
    // unload_ip_adapter on the SAG pipeline is seen by the SD pipeline.
    let err = report.after_unload.to_string();
    assert!(err.contains("no IP-Adapter loaded"), "{err}");
    assert!(
        report
            .processors_after_unload
            .iter()
            .all(|p| p == "AttnProcessor2_0"),
        "{:?}",
        report.processors_after_unload
    );
    assert_ne!(images(&report.out_sd_unloaded), images(&report.out_sd));

    // The AnimateDiff step: diffusers' frames, a GIF, and only the adapters' bytes added.
    let anim = report.animate.as_ref().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/71-animatediff-ip-adapter/ip_cfg_lora075_16f.safetensors");
    let want = f16_frames(&fixture);
    let got = images(&anim.out);
    assert_eq!(got.len(), want.len(), "16 frames of 32x32");
    let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().copied().fold(0.0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    eprintln!("out_animate: max {max:e}, mean {mean:e}");
    assert!(
        max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
        "out_animate: max {max}, mean {mean}"
    );
    assert_eq!(anim.gif_frames, 16);
    let bytes = std::fs::read(&gif).unwrap();
    assert!(bytes.starts_with(b"GIF89a"), "an animated GIF");
    assert_eq!(bytes.len(), anim.gif_bytes);
    assert!(anim.bytes_motion_adapter > 0 && anim.bytes_lora > 0 && anim.bytes_ip_adapter > 0);
    assert_eq!(
        anim.bytes_all,
        anim.bytes_sd_before + anim.bytes_motion_adapter + anim.bytes_lora + anim.bytes_ip_adapter,
        "from_pipe adds the motion adapter, the motion LoRA and the IP-Adapter loaded again"
    );
}
