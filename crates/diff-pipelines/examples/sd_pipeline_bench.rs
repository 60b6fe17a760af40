//! The Rust half of the whole-pipeline rows of `cargo xtask bench` (see `xtask/src/bench.rs`).
//!
//! `sd_pipeline_bench PIPELINE_DIR STEPS SIZE [--offload model] [--device SPEC] [--dtype f16]`
//! loads a Stable Diffusion pipeline from a folder, runs text-to-image with classifier-free
//! guidance (guidance 7.5, seed 0, `STEPS` steps, `SIZE`x`SIZE`, latent output), then decodes
//! the latents with the VAE, and prints one JSON line: `load_s`, `step_s` (median of the step
//! times), `decode_s`, `total_s` (the call and the decode), `peak_rss` (bytes, `VmHWM`) and a
//! checksum of the latents.

use burn::tensor::{DType, Tensor};
use diff_pipelines::{CallArgs, DiffusionPipeline, LoadOptions, OutputType, Passed, StepControl};
use std::time::Instant;

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Reads the sum back, which waits for the device to finish.
fn sync(t: &Tensor<4>) -> f32 {
    t.clone()
        .cast(DType::F32)
        .sum()
        .into_data()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sd_pipeline_bench PIPELINE_DIR STEPS SIZE [--offload model] [--device SPEC] [--dtype f16]";
    let folder = args.first().ok_or(usage)?;
    let steps: usize = args.get(1).ok_or(usage)?.parse()?;
    let size: usize = args.get(2).ok_or(usage)?.parse()?;
    let mut offload = false;
    let mut device = burn::tensor::Device::default();
    let mut dtype = DType::F32;
    let mut rest = args.iter().skip(3);
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--offload" => offload = rest.next().map(String::as_str) == Some("model"),
            "--device" => device = diff_pipelines::device::parse_device(rest.next().ok_or(usage)?)?,
            "--dtype" => {
                dtype = match rest.next().map(String::as_str) {
                    Some("f16") => DType::F16,
                    Some("bf16") => DType::BF16,
                    _ => DType::F32,
                }
            }
            _ => return Err(usage.into()),
        }
    }
    let mut load = LoadOptions {
        local_files_only: true,
        device,
        dtype,
        ..LoadOptions::default()
    };
    load.components.safety_checker = Passed::Drop;
    if offload {
        // Load mapped from the start, as `generate --offload model` does.
        diff_models::offload::set_map_weights_default(true);
    }
    let start = Instant::now();
    let mut pipe = DiffusionPipeline::from_pretrained(folder, &load)?;
    if offload {
        pipe.enable_model_cpu_offload()?;
    }
    let load_s = start.elapsed().as_secs_f64();

    let mut call = CallArgs::prompt("a photograph of an astronaut riding a horse")
        .with_steps(steps)
        .with_guidance_scale(7.5)
        .with_seed(0)
        .with_size(size, size)
        .with_output_type(OutputType::Latent);
    call.negative_prompt = Some(vec![String::new()]);
    let mut marks = Vec::with_capacity(steps);
    let t0 = Instant::now();
    let mut callback = |info: &diff_pipelines::StepInfo<'_>| {
        sync(info.latents);
        marks.push(t0.elapsed().as_secs_f64());
        StepControl::Continue
    };
    let out = pipe.call(&call, Some(&mut callback))?;
    let check = sync(&out.latents);
    let steps_done = t0.elapsed().as_secs_f64();
    // Step times: between consecutive step ends (the first also holds the prompt encoding).
    let step_times: Vec<f64> = marks.windows(2).map(|w| w[1] - w[0]).collect();
    let step_s = if step_times.is_empty() {
        marks.first().copied().unwrap_or(f64::NAN)
    } else {
        median(step_times)
    };
    let t1 = Instant::now();
    let (images, _) = pipe.decode_latents(out.latents)?;
    let decode_s = t1.elapsed().as_secs_f64();
    let total_s = steps_done + decode_s;
    println!(
        "{{\"load_s\": {load_s:.3}, \"step_s\": {step_s:.3}, \"decode_s\": {decode_s:.3}, \
         \"total_s\": {total_s:.3}, \"peak_rss\": {}, \"check\": {check}, \"images\": {}}}",
        peak_rss(),
        images.count
    );
    Ok(())
}
