//! `cargo xtask bench`: ours against PyTorch/diffusers on the same machine and thread count.
//!
//! 1. Makes random-weight models with the real SD 1.5 structure once, with Python, under
//!    `target/bench-models/` (UNet 859.5 M params, VAE, CLIP text encoder; safetensors).
//! 2. Builds `diff-models`' `unet_vae_bench` example (release by default, `--dev` to reuse the
//!    dev build); burn-flex is built with SIMD and rayon threads workspace-wide.
//! 3. Runs, for ours and for PyTorch: a fresh process that loads the UNet from safetensors and
//!    runs one forward (timed from spawn to exit, with its peak RSS), then a process that times
//!    a warm UNet forward (batch 2, 32x32 latents, f32), a VAE decode of a 32x32 latent and a CLIP
//!    text encode of 77 tokens.
//! 4. Prints a table with the ratio ours / PyTorch per row.
//!
//! Both sides use `--threads N` threads (default: all cores): `RAYON_NUM_THREADS` for burn,
//! `torch.set_num_threads` for PyTorch.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PYTHON: &str = r#"
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
mode, root = sys.argv[1], sys.argv[2]

def unet_input():
    sample = ((torch.arange(2 * 4 * 32 * 32) % 97).float() / 97 - 0.5).reshape(2, 4, 32, 32)
    text = ((torch.arange(2 * 77 * 768) % 89).float() / 89 - 0.5).reshape(2, 77, 768)
    return sample, torch.tensor([500.0, 500.0]), text

def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

if mode == "make":
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    if not os.path.exists(os.path.join(root, "unet", "config.json")):
        UNet2DConditionModel(cross_attention_dim=768, sample_size=64).save_pretrained(os.path.join(root, "unet"))
    if not os.path.exists(os.path.join(root, "vae", "config.json")):
        AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=512,
        ).save_pretrained(os.path.join(root, "vae"))
    if not os.path.exists(os.path.join(root, "text_encoder", "config.json")):
        CLIPTextModel(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            hidden_act="quick_gelu", max_position_embeddings=77, projection_dim=768,
        )).save_pretrained(os.path.join(root, "text_encoder"))
elif mode == "first-forward":
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet")).eval()
    with torch.no_grad():
        out = unet(*unet_input()).sample
    print(json.dumps({"peak_rss": peak_rss(), "check": float(out.sum())}))
elif mode == "steady":
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    unet = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet")).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(root, "vae")).eval()
    clip = CLIPTextModel.from_pretrained(os.path.join(root, "text_encoder")).eval()
    z = ((torch.arange(4 * 32 * 32) % 83).float() / 83 - 0.5).reshape(1, 4, 32, 32)
    ids = torch.tensor([[49407 if i == 76 else 320 + i for i in range(77)]])
    def timed(f):
        t = time.perf_counter(); v = f(); return v, time.perf_counter() - t
    with torch.no_grad():
        unet(*unet_input()); vae.decode(z); clip(ids)
        c1, unet_s = timed(lambda: float(unet(*unet_input()).sample.sum()))
        c2, vae_s = timed(lambda: float(vae.decode(z).sample.sum()))
        c3, clip_s = timed(lambda: float(clip(ids).last_hidden_state.sum()))
    print(json.dumps({"unet_forward_s": unet_s, "vae_decode_s": vae_s, "clip_encode_s": clip_s,
                      "peak_rss": peak_rss(), "checks": [c1, c2, c3]}))
"#;

/// Runs the task with the arguments after `bench`.
pub fn run(args: &[String]) -> Result<()> {
    let root = crate::repo_root()?;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut release = true;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--threads" => {
                threads = it
                    .next()
                    .context("--threads needs a number")?
                    .parse()
                    .context("--threads needs a number")?;
            }
            "--dev" => release = false,
            other => bail!("unknown argument `{other}` (expected --threads N, --dev)"),
        }
    }
    let python = crate::fixtures::ensure_venv(&root)?;
    let models = root.join("target/bench-models");
    std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
    let script = models.join("bench_torch.py");
    std::fs::write(&script, PYTHON).with_context(|| format!("writing {}", script.display()))?;

    eprintln!(
        "xtask bench: making random-weight SD 1.5 models in {}",
        models.display()
    );
    let status = Command::new(&python)
        .arg(&script)
        .args(["make"])
        .arg(&models)
        .env("BENCH_THREADS", threads.to_string())
        .status()
        .context("running the Python model maker")?;
    if !status.success() {
        bail!("making the bench models failed with {status}");
    }

    eprintln!(
        "xtask bench: building the Rust bench ({})",
        if release { "release" } else { "dev" }
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(&cargo);
    build
        .current_dir(&root)
        .args(["build", "-p", "diff-models", "--example", "unet_vae_bench"]);
    if release {
        build.arg("--release");
    }
    if !build.status().context("running cargo build")?.success() {
        bail!("building the bench example failed");
    }
    let ours = root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("examples/unet_vae_bench");

    let unet = models.join("unet");
    let vae = models.join("vae");
    let clip = models.join("text_encoder");
    let run_ours = |mode: &str, paths: &[&Path]| -> Result<(f64, Json)> {
        let mut cmd = Command::new(&ours);
        cmd.arg(mode)
            .args(paths)
            .env("RAYON_NUM_THREADS", threads.to_string());
        timed_json(cmd)
    };
    let run_torch = |mode: &str| -> Result<(f64, Json)> {
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg(mode)
            .arg(&models)
            .env("BENCH_THREADS", threads.to_string())
            .env("OMP_NUM_THREADS", threads.to_string());
        timed_json(cmd)
    };

    eprintln!("xtask bench: start to first forward (ours, then PyTorch)");
    let (ours_first, ours_first_json) = run_ours("first-forward", &[&unet])?;
    let (torch_first, torch_first_json) = run_torch("first-forward")?;
    eprintln!("xtask bench: steady state (ours, then PyTorch)");
    let (_, ours_steady) = run_ours("steady", &[&unet, &vae, &clip])?;
    let (_, torch_steady) = run_torch("steady")?;

    let weight_bytes = dir_bytes(&unet, "safetensors")?;
    let rows = [
        (
            "UNet forward, SD 1.5, batch 2, 32x32, f32 (s)",
            ours_steady.get("unet_forward_s")?,
            torch_steady.get("unet_forward_s")?,
        ),
        (
            "VAE decode, 32x32 latent (s)",
            ours_steady.get("vae_decode_s")?,
            torch_steady.get("vae_decode_s")?,
        ),
        (
            "CLIP text encode, 77 tokens (s)",
            ours_steady.get("clip_encode_s")?,
            torch_steady.get("clip_encode_s")?,
        ),
        (
            "process start to end of first UNet forward (s)",
            ours_first,
            torch_first,
        ),
        (
            "peak RSS of that process / UNet weight bytes",
            ours_first_json.get("peak_rss")? / weight_bytes as f64,
            torch_first_json.get("peak_rss")? / weight_bytes as f64,
        ),
    ];
    println!(
        "\nthreads: {threads}; UNet weights: {:.2} GB; Rust build: {}\n",
        weight_bytes as f64 / 1e9,
        if release {
            "release"
        } else {
            "dev (dependencies at opt-level 2)"
        }
    );
    println!("| row | ours | PyTorch | ours / PyTorch |");
    println!("|---|---|---|---|");
    for (name, a, b) in rows {
        println!("| {name} | {a:.3} | {b:.3} | {:.2}x |", a / b);
    }
    Ok(())
}

/// One JSON object line printed by a bench process (numbers only are read).
struct Json(String);

impl Json {
    fn get(&self, key: &str) -> Result<f64> {
        let pat = format!("\"{key}\":");
        let start = self
            .0
            .find(&pat)
            .with_context(|| format!("no `{key}` in bench output: {}", self.0))?
            + pat.len();
        let rest = self.0[start..].trim_start();
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
            .unwrap_or(rest.len());
        rest[..end]
            .parse()
            .with_context(|| format!("`{key}` is not a number in: {}", self.0))
    }
}

/// Runs a command, returning its wall time from spawn to exit and its last stdout line.
fn timed_json(mut cmd: Command) -> Result<(f64, Json)> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON line from {cmd:?}: {text}"))?;
    Ok((secs, Json(line.to_owned())))
}

/// Total size of the files in `dir` whose names end with `ext`.
fn dir_bytes(dir: &Path, ext: &str) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path: PathBuf = entry?.path();
        if path.extension().is_some_and(|e| e == ext) {
            total += std::fs::metadata(&path)?.len();
        }
    }
    Ok(total)
}
