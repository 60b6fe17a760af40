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

fn unet_input(device: &Device) -> UNet2DConditionInput {
    // Deterministic, non-constant inputs (the same formula as the Python half).
    let n = 2 * 4 * 32 * 32;
    let sample: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 / 97.0) - 0.5).collect();
    let m = 2 * 77 * 768;
    let text: Vec<f32> = (0..m).map(|i| ((i % 89) as f32 / 89.0) - 0.5).collect();
    UNet2DConditionInput::new(
        Tensor::from_data(TensorData::new(sample, [2, 4, 32, 32]), device),
        Tensor::from_floats([500.0, 500.0], device),
        Tensor::from_data(TensorData::new(text, [2, 77, 768]), device),
    )
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
    let device = Device::default();
    let options = diff_models::ModelLoadOptions::new(&device);
    match args.get(1).map(String::as_str) {
        Some("first-forward") => {
            let (unet, _) = UNet2DConditionModel::from_pretrained(arg(2)?, &options)?;
            let out = unet.forward(unet_input(&device))?;
            let check = sync(&out);
            println!("{{\"peak_rss\": {}, \"check\": {check}}}", peak_rss());
        }
        Some("steady") => {
            let (unet, _) = UNet2DConditionModel::from_pretrained(arg(2)?, &options)?;
            let (vae, _) = AutoencoderKL::from_pretrained(arg(3)?, &options)?;
            let (clip, _) = CLIPTextModel::from_pretrained(
                arg(4)?,
                &diff_models::ModelLoadOptions::new(&device).with_dtype(DType::F32),
            )?;
            let z = || {
                let v: Vec<f32> = (0..4 * 32 * 32)
                    .map(|i| ((i % 83) as f32 / 83.0) - 0.5)
                    .collect();
                Tensor::<4>::from_data(TensorData::new(v, [1, 4, 32, 32]), &device)
            };
            let ids = || {
                let v: Vec<i64> = (0..77)
                    .map(|i| if i == 76 { 49407 } else { 320 + i })
                    .collect();
                Tensor::<2, Int>::from_data(TensorData::new(v, [1, 77]), &device)
            };
            // Warm-up runs, so that one-time allocations are not timed.
            sync(&unet.forward(unet_input(&device))?);
            sync(&vae.decode(z())?);
            sync(&clip.forward(ids())?.last_hidden_state);
            let (c1, unet_s) = timed(|| Ok(sync(&unet.forward(unet_input(&device))?)))?;
            let (c2, vae_s) = timed(|| Ok(sync(&vae.decode(z())?)))?;
            let (c3, clip_s) = timed(|| Ok(sync(&clip.forward(ids())?.last_hidden_state)))?;
            println!(
                "{{\"unet_forward_s\": {unet_s:.3}, \"vae_decode_s\": {vae_s:.3}, \
                 \"clip_encode_s\": {clip_s:.4}, \"peak_rss\": {}, \"checks\": [{c1}, {c2}, {c3}]}}",
                peak_rss()
            );
        }
        _ => return Err("usage: unet_vae_bench first-forward UNET | steady UNET VAE CLIP".into()),
    }
    Ok(())
}
