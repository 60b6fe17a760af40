//! Runs the walkthrough example (`examples/walkthrough.rs`) on the tiny fixtures and checks
//! what it shows: the SD + IP-Adapter image and the SAG image by `from_pipe` are diffusers'
//! (`tests/fixtures/47-ip-adapter`: `t2i_plain_bin_cfg`, `sag_plain_nocfg`, every pixel within
//! 2/255, mean under 0.5/255), the `from_pipe` SAG pipeline gives exactly the output of a SAG
//! pipeline loaded afresh and adds no parameters, and `unload_ip_adapter` on the SAG pipeline
//! is seen by the SD pipeline.

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

#[test]
fn the_from_pipe_walkthrough_runs_as_the_guide_shows() {
    let report = walkthrough::run(&walkthrough::Inputs::tiny()).unwrap();
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
}
