//! Peak memory of `DiffusionPipeline::from_single_file` against the size of the weights, and of
//! `from_pretrained` on the same pipeline converted to a folder, for comparison.
//!
//! `cargo run -p diff-pipelines --example single_file_rss -- single CKPT CONFIG_DIR`
//! `cargo run -p diff-pipelines --example single_file_rss -- folder PIPELINE_DIR`
//!
//! Run each mode in its own process (the peak is per process). Any SD checkpoint will do; a
//! random-weight one of a chosen size can be made from the helpers of
//! `tests/fixtures/50-convert/gen_single_file.py` (`unet_to_ldm`, `vae_to_ldm`, `clip_to_ldm`).

use burn::module::Module;
use diff_pipelines::single_file::SingleFileLoadOptions;
use diff_pipelines::{DiffusionPipeline, LoadOptions, Passed};
use std::time::Instant;

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: single_file_rss single CKPT CONFIG_DIR | folder PIPELINE_DIR";
    let mode = args.first().ok_or(usage)?;
    let load = LoadOptions {
        local_files_only: true,
        ..LoadOptions::default()
    };
    let rss_before = status_kb("VmRSS:");
    let start = Instant::now();
    let pipe = match mode.as_str() {
        "single" => {
            let ckpt = args.get(1).ok_or(usage)?;
            let options = SingleFileLoadOptions {
                config: Some(args.get(2).ok_or(usage)?.clone()),
                load,
                ..SingleFileLoadOptions::default()
            };
            println!(
                "checkpoint {ckpt}: {:.1} MB",
                std::fs::metadata(ckpt)?.len() as f64 / 1e6
            );
            DiffusionPipeline::from_single_file(ckpt, &options)?
        }
        "folder" => {
            let mut load = load;
            load.components.safety_checker = Passed::Drop;
            DiffusionPipeline::from_pretrained(args.get(1).ok_or(usage)?, &load)?
        }
        _ => return Err(usage.into()),
    };
    let secs = start.elapsed().as_secs_f64();
    let peak = status_kb("VmHWM:") as f64 * 1e3;
    let after = status_kb("VmRSS:") as f64 * 1e3;
    let mut params = 0usize;
    if let Some(m) = pipe.unet() {
        params += m.num_params();
    }
    if let Some(m) = pipe.vae() {
        params += m.num_params();
    }
    if let Some(m) = pipe.text_encoder() {
        params += m.num_params();
    }
    if let Some(m) = pipe.text_encoder_2() {
        params += m.num_params();
    }
    let weights = params as f64 * 4.0;
    println!(
        "{mode}: loaded in {secs:.1} s; models {:.1} MB (f32); RSS before {:.1} MB, after {:.1} MB, peak {:.1} MB; (peak - before) / models = {:.3}",
        weights / 1e6,
        rss_before as f64 / 1e3,
        after / 1e6,
        peak / 1e6,
        (peak - rss_before as f64 * 1e3) / weights
    );
    Ok(())
}
