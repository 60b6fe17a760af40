//! Peak memory of a process that loads a pipeline, with and without a LoRA adapter (issue 12:
//! loading a LoRA must not copy the base weights, so the difference is about the adapter's
//! bytes). Driven by `cargo xtask bench --only lora-memory`.
//!
//! `lora_rss make-lora PIPELINE_DIR OUT.safetensors RANK`: writes a random diffusers-format
//! LoRA (`unet.<module>.lora_A.weight` / `lora_B.weight`, float32) of that rank on every UNet
//! attention projection (`to_q`, `to_k`, `to_v`, `to_out.0`) of the pipeline.
//! `lora_rss load PIPELINE_DIR [LORA]`: loads the pipeline (float32, CPU, no safety checker),
//! then the LoRA if given, and prints one JSON line with the peak RSS (`VmHWM`), the RSS once
//! loaded (`VmRSS`) and the LoRA file's bytes. Run each in its own process: the peak is per process.

use diff_pipelines::{DiffusionPipeline, LoadOptions, Passed};
use std::collections::HashMap;

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

fn load(folder: &str) -> Result<DiffusionPipeline, Box<dyn std::error::Error>> {
    let mut options = LoadOptions {
        local_files_only: true,
        ..LoadOptions::default()
    };
    options.components.safety_checker = Passed::Drop;
    Ok(DiffusionPipeline::from_pretrained(folder, &options)?)
}

/// A small deterministic generator (xorshift), values in [-0.01, 0.01).
fn values(n: usize, seed: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let v = ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02;
        out.extend(v.to_le_bytes());
    }
    out
}

fn make_lora(folder: &str, out: &str, rank: usize) -> Result<(), Box<dyn std::error::Error>> {
    let pipe = load(folder)?;
    let targets = [".to_q", ".to_k", ".to_v", ".to_out.0"];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for table in pipe.lora_model_tables() {
        if table.component != "unet" {
            continue;
        }
        for m in &table.modules {
            if !targets.iter().any(|t| m.name.ends_with(t)) || m.weight_shape.len() != 2 {
                continue;
            }
            let (d_out, d_in) = (m.weight_shape[0], m.weight_shape[1]);
            let a = values(rank * d_in, &mut seed);
            let b = values(d_out * rank, &mut seed);
            tensors.push((
                format!("unet.{}.lora_A.weight", m.name),
                vec![rank, d_in],
                a,
            ));
            tensors.push((
                format!("unet.{}.lora_B.weight", m.name),
                vec![d_out, rank],
                b,
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<_, _>>()?;
    let meta: HashMap<String, String> = [("format".to_owned(), "pt".to_owned())].into();
    safetensors::serialize_to_file(views, Some(meta), std::path::Path::new(out))?;
    println!("{} tensors written to {out}", tensors.len());
    Ok(())
}

/// The LoRA file's size (its tensors, plus a header of a few KB), read without loading it
/// (reading it here would add to the peak being measured).
fn lora_file_bytes(path: &str) -> Result<u64, Box<dyn std::error::Error>> {
    Ok(std::fs::metadata(path)?.len())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: lora_rss make-lora PIPELINE_DIR OUT.safetensors RANK | load PIPELINE_DIR [LORA]";
    match args.first().map(String::as_str) {
        Some("make-lora") => {
            let rank = args.get(3).ok_or(usage)?.parse()?;
            make_lora(args.get(1).ok_or(usage)?, args.get(2).ok_or(usage)?, rank)
        }
        Some("load") => {
            let pipe = load(args.get(1).ok_or(usage)?)?;
            let lora_bytes = match args.get(2) {
                Some(lora) => {
                    pipe.load_lora_weights(lora, None, Some("bench"))?;
                    lora_file_bytes(lora)?
                }
                None => 0,
            };
            let peak = status_kb("VmHWM:") * 1024;
            let rss = status_kb("VmRSS:") * 1024;
            println!(
                "{{\"peak_rss\": {peak}, \"rss_after\": {rss}, \"lora_bytes\": {lora_bytes}}}"
            );
            Ok(())
        }
        _ => Err(usage.into()),
    }
}
