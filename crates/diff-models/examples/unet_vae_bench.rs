//! The Rust half of `cargo xtask bench` (see `xtask/src/bench.rs`).
//!
//! - `unet_vae_bench first-forward <unet-folder>`: loads the UNet from safetensors and runs one
//!   forward (batch 2, 4x32x32 latents, 77x768 text states, f32); the caller times the process
//!   from start to exit.
//! - `unet_vae_bench steady <unet-folder> <vae-folder> <text-encoder-folder>`: loads the three
//!   models, runs each once to warm up, then times a second UNet forward, a VAE decode of a
//!   1x4x32x32 latent and a CLIP text encode of 77 tokens.
//!
//! Each mode prints one JSON line: timings in seconds and the peak RSS in bytes (`VmHWM`).
//!
//! Environment: `BENCH_REPS` (default 1): `steady` times that many rounds (UNet, VAE, CLIP in
//! turn) and prints the median of each; `BENCH_DEVICE` `cpu` (default), `wgpu` or `cuda`
//! (built with the matching feature); `BENCH_DTYPE` `f32` (default) or `f16`.

use diff_models::FromPretrained;
use std::path::Path;
use std::time::Instant;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use diff_models::{AutoencoderKL, CLIPTextModel, UNet2DConditionInput, UNet2DConditionModel};

type Error = Box<dyn std::error::Error>;

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

/// Reads the sum back, which forces the computation to finish.
fn sync<const D: usize>(t: &Tensor<D>) -> f32 {
    t.clone()
        .cast(DType::F32)
        .sum()
        .into_data()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f32::NAN)
}

fn unet_input(device: &Device, dtype: DType) -> UNet2DConditionInput {
    // Deterministic, non-constant inputs (the same formula as the Python half).
    let n = 2 * 4 * 32 * 32;
    let sample: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 / 97.0) - 0.5).collect();
    let m = 2 * 77 * 768;
    let text: Vec<f32> = (0..m).map(|i| ((i % 89) as f32 / 89.0) - 0.5).collect();
    UNet2DConditionInput::new(
        Tensor::from_data(TensorData::new(sample, [2, 4, 32, 32]), (device, dtype)),
        Tensor::from_floats([500.0, 500.0], device),
        Tensor::from_data(TensorData::new(text, [2, 77, 768]), (device, dtype)),
    )
}

/// The device named by `BENCH_DEVICE`.
fn bench_device() -> Result<Device, Error> {
    match std::env::var("BENCH_DEVICE").as_deref() {
        Err(_) | Ok("cpu") | Ok("flex") => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        Ok("wgpu") => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        Ok("cuda") => Ok(Device::cuda(0)),
        Ok(other) => Err(format!("BENCH_DEVICE={other}: not built (features wgpu / cuda)").into()),
    }
}

fn bench_dtype() -> DType {
    match std::env::var("BENCH_DTYPE").as_deref() {
        Ok("f16") => DType::F16,
        Ok("bf16") => DType::BF16,
        _ => DType::F32,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn timed<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<(T, f64), Error> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> Result<&Path, Error> {
        args.get(i)
            .map(Path::new)
            .ok_or_else(|| "usage: unet_vae_bench first-forward UNET | steady UNET VAE CLIP".into())
    };
    let device = bench_device()?;
    let dtype = bench_dtype();
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let options = diff_models::ModelLoadOptions::new(&device).with_dtype(dtype);
    match args.get(1).map(String::as_str) {
        Some("first-forward") => {
            let (unet, _) = UNet2DConditionModel::from_pretrained(arg(2)?, &options)?;
            let out = unet.forward(unet_input(&device, dtype))?;
            let check = sync(&out);
            println!("{{\"peak_rss\": {}, \"check\": {check}}}", peak_rss());
        }
        Some("steady") => {
            let (unet, _) = UNet2DConditionModel::from_pretrained(arg(2)?, &options)?;
            let (vae, _) = AutoencoderKL::from_pretrained(arg(3)?, &options)?;
            let (clip, _) = CLIPTextModel::from_pretrained(
                arg(4)?,
                &diff_models::ModelLoadOptions::new(&device).with_dtype(dtype),
            )?;
            let z = || {
                let v: Vec<f32> = (0..4 * 32 * 32)
                    .map(|i| ((i % 83) as f32 / 83.0) - 0.5)
                    .collect();
                Tensor::<4>::from_data(TensorData::new(v, [1, 4, 32, 32]), (&device, dtype))
            };
            let ids = || {
                let v: Vec<i64> = (0..77)
                    .map(|i| if i == 76 { 49407 } else { 320 + i })
                    .collect();
                Tensor::<2, Int>::from_data(TensorData::new(v, [1, 77]), &device)
            };
            // Warm-up runs, so that one-time allocations are not timed.
            sync(&unet.forward(unet_input(&device, dtype))?);
            sync(&vae.decode(z())?);
            sync(&clip.forward(ids())?.last_hidden_state);
            let (mut unet_t, mut vae_t, mut clip_t) = (Vec::new(), Vec::new(), Vec::new());
            let (mut c1, mut c2, mut c3) = (0.0, 0.0, 0.0);
            for _ in 0..reps {
                let (c, t) = timed(|| Ok(sync(&unet.forward(unet_input(&device, dtype))?)))?;
                c1 = c;
                unet_t.push(t);
                let (c, t) = timed(|| Ok(sync(&vae.decode(z())?)))?;
                c2 = c;
                vae_t.push(t);
                let (c, t) = timed(|| Ok(sync(&clip.forward(ids())?.last_hidden_state)))?;
                c3 = c;
                clip_t.push(t);
            }
            let (unet_s, vae_s, clip_s) = (median(unet_t), median(vae_t), median(clip_t));
            println!(
                "{{\"unet_forward_s\": {unet_s:.3}, \"vae_decode_s\": {vae_s:.3}, \
                 \"clip_encode_s\": {clip_s:.4}, \"peak_rss\": {}, \"checks\": [{c1}, {c2}, {c3}]}}",
                peak_rss()
            );
        }
        // For profilers (`perf record`, `valgrind --tool=callgrind`): N warm forwards of one
        // model, each timed.
        Some("profile-unet") | Some("profile-clip") | Some("profile-vae") => {
            let n: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3);
            let mode = args[1].as_str();
            let mut times = Vec::new();
            if mode == "profile-unet" {
                let (unet, _) = UNet2DConditionModel::from_pretrained(arg(2)?, &options)?;
                sync(&unet.forward(unet_input(&device, dtype))?);
                for _ in 0..n {
                    times.push(timed(|| Ok(sync(&unet.forward(unet_input(&device, dtype))?)))?.1);
                }
            } else if mode == "profile-vae" {
                let (vae, _) = AutoencoderKL::from_pretrained(arg(2)?, &options)?;
                let z = || {
                    let v: Vec<f32> = (0..4 * 32 * 32)
                        .map(|i| ((i % 83) as f32 / 83.0) - 0.5)
                        .collect();
                    Tensor::<4>::from_data(TensorData::new(v, [1, 4, 32, 32]), (&device, dtype))
                };
                sync(&vae.decode(z())?);
                for _ in 0..n {
                    times.push(timed(|| Ok(sync(&vae.decode(z())?)))?.1);
                }
            } else {
                let (clip, _) = CLIPTextModel::from_pretrained(arg(2)?, &options)?;
                let ids = || {
                    let v: Vec<i64> = (0..77)
                        .map(|i| if i == 76 { 49407 } else { 320 + i })
                        .collect();
                    Tensor::<2, Int>::from_data(TensorData::new(v, [1, 77]), &device)
                };
                sync(&clip.forward(ids())?.last_hidden_state);
                for _ in 0..n {
                    times.push(timed(|| Ok(sync(&clip.forward(ids())?.last_hidden_state)))?.1);
                }
            }
            println!(
                "{{\"times\": {times:?}, \"median\": {}}}",
                median(times.clone())
            );
        }
        _ => return Err("usage: unet_vae_bench first-forward UNET | steady UNET VAE CLIP".into()),
    }
    Ok(())
}
