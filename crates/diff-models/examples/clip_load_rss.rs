//! Measures loading a CLIP text encoder: wall time and peak RSS against the weight bytes.
//!
//! `cargo run -p diff-models --example clip_load_rss --release -- <text_encoder folder> [variant] [f32|f16]`
//!
//! Make a full-size SD 1.5 text encoder with random weights first, e.g. with transformers:
//! `CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
//! num_attention_heads=12, eos_token_id=2)).save_pretrained(folder)`.

use diff_models::FromPretrained;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{DType, Device, Int, Tensor};
use diff_models::CLIPTextModel;
use diff_models::weights::{Naming, open_weights, resolve_weights};

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
    let mut args = std::env::args().skip(1);
    let folder = PathBuf::from(
        args.next()
            .ok_or("usage: clip_load_rss <folder> [variant] [f32|f16]")?,
    );
    let variant = args.next().filter(|v| v != "-");
    let dtype = match args.next().as_deref() {
        Some("f16") => DType::F16,
        _ => DType::F32,
    };
    let weights = resolve_weights(&folder, Naming::Transformers, variant.as_deref(), None)?;
    let file = weights.entry().to_path_buf();
    let disk_bytes = open_weights(&weights)?.total_bytes() as f64;
    let device = Device::default();
    let rss_before = status_kb("VmRSS:");
    let start = Instant::now();
    let (model, report) = CLIPTextModel::from_pretrained(
        &folder,
        &diff_models::ModelLoadOptions::new(&device)
            .with_dtype(dtype)
            .with_variant(variant.as_deref()),
    )?;
    let load_s = start.elapsed().as_secs_f64();
    let peak_kb = status_kb("VmHWM:");
    let rss_after = status_kb("VmRSS:");
    let elem = if dtype == DType::F16 { 2.0 } else { 4.0 };
    let in_memory = burn::module::Module::num_params(&model) as f64 * elem;
    println!(
        "loaded {} tensors from {} ({:.1} MB on disk) as {dtype:?} in {load_s:.2} s",
        report.loaded,
        file.display(),
        disk_bytes / 1e6
    );
    println!(
        "RSS before {:.1} MB, after {:.1} MB, peak {:.1} MB; model {:.1} MB in memory; peak / model = {:.3}",
        rss_before as f64 / 1e3,
        rss_after as f64 / 1e3,
        peak_kb as f64 / 1e3,
        in_memory / 1e6,
        (peak_kb as f64 * 1e3) / in_memory
    );
    let ids = Tensor::<2, Int>::zeros([1, 77], &device);
    for i in 0..3 {
        let t = Instant::now();
        let out = model.forward(ids.clone())?;
        let _ = out.last_hidden_state.into_data();
        println!(
            "forward {i} (77 tokens): {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
