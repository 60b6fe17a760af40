//! `cargo xtask bench --only lora-memory [--dev] [--rank R]`: peak RSS of a process that loads
//! an SD 1.5-sized pipeline, without and with a LoRA adapter (issue 12: loading a LoRA does not
//! copy base weights, so the difference is about the adapter's bytes).
//!
//! 1. The random-weight SD 1.5 UNet, VAE and CLIP text encoder of `cargo xtask bench`
//!    (`target/bench-models/`, made with Python when missing, same configs) are put in a
//!    pipeline folder `target/bench-models/lora-pipeline/` (links to them, with the tokenizer
//!    and scheduler of `tests/fixtures/tiny-sd`).
//! 2. `diff-pipelines`' `lora_rss` example writes a random diffusers-format LoRA of rank R
//!    (default 64) on every UNet attention projection, then loads the pipeline in two fresh
//!    processes, one without and one with the LoRA, each reporting its peak RSS.
//! 3. Prints the rows: both peaks, the difference of the peaks and of the RSS once loaded,
//!    against the LoRA file's size.
//!
//! Kept apart from `bench.rs` (the speed table) so each changes on its own.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const MAKE_MODELS: &str = r#"
import os, sys
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
root = sys.argv[1]
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
"#;

const MODEL_INDEX: &str = r#"{
  "_class_name": "StableDiffusionPipeline",
  "_diffusers_version": "0.42.1",
  "feature_extractor": [null, null],
  "image_encoder": [null, null],
  "requires_safety_checker": false,
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "PNDMScheduler"],
  "text_encoder": ["transformers", "CLIPTextModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "unet": ["diffusers", "UNet2DConditionModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}
"#;

/// Whether `cargo xtask bench` was asked for this row (`--only lora-memory`).
pub fn wanted(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--only" && w[1] == "lora-memory")
}

/// Runs the row with the arguments after `bench`.
pub fn run(args: &[String]) -> Result<()> {
    let root = crate::repo_root()?;
    let mut release = true;
    let mut rank = 64usize;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--only" => {
                it.next();
            }
            "--dev" => release = false,
            "--rank" => {
                rank = it
                    .next()
                    .context("--rank needs a number")?
                    .parse()
                    .context("--rank needs a number")?;
            }
            other => {
                bail!("unknown argument `{other}` (expected --only lora-memory, --dev, --rank R)")
            }
        }
    }
    let models = root.join("target/bench-models");
    let pipeline = make_pipeline(&root, &models)?;
    let example = build_example(&root, release)?;
    let lora = models.join(format!("lora-rank{rank}.safetensors"));
    if !lora.is_file() {
        let status = Command::new(&example)
            .arg("make-lora")
            .arg(&pipeline)
            .arg(&lora)
            .arg(rank.to_string())
            .status()
            .context("running lora_rss make-lora")?;
        if !status.success() {
            bail!("making the bench LoRA failed with {status}");
        }
    }
    eprintln!("xtask bench: peak RSS, pipeline alone, then pipeline + LoRA");
    let base = peak(&example, &pipeline, None)?;
    let with = peak(&example, &pipeline, Some(&lora))?;
    let lora_bytes = std::fs::metadata(&lora)?.len() as f64;
    let ((base_rss, base_after), (with_rss, with_after)) = (base, with);
    println!(
        "\nLoRA: rank {rank} on every UNet attention projection, {:.1} MB; Rust build: {}\n",
        lora_bytes / 1e6,
        if release { "release" } else { "dev" }
    );
    println!("| row | value |");
    println!("|---|---|");
    println!(
        "| peak RSS, SD 1.5 pipeline loaded (f32, CPU) | {:.3} GB |",
        base_rss / 1e9
    );
    println!(
        "| peak RSS, same + load_lora_weights | {:.3} GB |",
        with_rss / 1e9
    );
    println!(
        "| peak difference / LoRA file bytes | {:.1} MB / {:.1} MB = {:.2} |",
        (with_rss - base_rss) / 1e6,
        lora_bytes / 1e6,
        (with_rss - base_rss) / lora_bytes
    );
    println!(
        "| RSS once loaded, difference / LoRA file bytes | {:.1} MB / {:.1} MB = {:.2} |",
        (with_after - base_after) / 1e6,
        lora_bytes / 1e6,
        (with_after - base_after) / lora_bytes
    );
    Ok(())
}

/// The pipeline folder over the bench models (made with Python when missing).
fn make_pipeline(root: &Path, models: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(models).with_context(|| format!("creating {}", models.display()))?;
    let missing = ["unet", "vae", "text_encoder"]
        .iter()
        .any(|c| !models.join(c).join("config.json").is_file());
    if missing {
        eprintln!(
            "xtask bench: making random-weight SD 1.5 models in {}",
            models.display()
        );
        let python = crate::fixtures::ensure_venv(root)?;
        let script = models.join("make_lora_bench_models.py");
        std::fs::write(&script, MAKE_MODELS)?;
        let status = Command::new(&python)
            .arg(&script)
            .arg(models)
            .status()
            .context("running the Python model maker")?;
        if !status.success() {
            bail!("making the bench models failed with {status}");
        }
    }
    let pipeline = models.join("lora-pipeline");
    std::fs::create_dir_all(&pipeline)?;
    std::fs::write(pipeline.join("model_index.json"), MODEL_INDEX)?;
    for component in ["unet", "vae", "text_encoder"] {
        let link = pipeline.join(component);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..").join(component), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    let tiny = root.join("tests/fixtures/tiny-sd");
    for component in ["tokenizer", "scheduler"] {
        let to = pipeline.join(component);
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(tiny.join(component))? {
            let entry = entry?;
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(pipeline)
}

fn build_example(root: &Path, release: bool) -> Result<PathBuf> {
    eprintln!(
        "xtask bench: building the lora_rss example ({})",
        if release { "release" } else { "dev" }
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(&cargo);
    build
        .current_dir(root)
        .args(["build", "-p", "diff-pipelines", "--example", "lora_rss"]);
    if release {
        build.arg("--release");
    }
    if !build.status().context("running cargo build")?.success() {
        bail!("building the lora_rss example failed");
    }
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("examples/lora_rss"))
}

/// The peak RSS and the RSS once loaded of one `lora_rss load` process.
fn peak(example: &Path, pipeline: &Path, lora: Option<&Path>) -> Result<(f64, f64)> {
    let mut cmd = Command::new(example);
    cmd.arg("load").arg(pipeline);
    if let Some(l) = lora {
        cmd.arg(l);
    }
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
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
    let value: serde_json::Value = serde_json::from_str(line)?;
    let get = |k: &str| {
        value[k]
            .as_f64()
            .with_context(|| format!("no `{k}` in {line}"))
    };
    Ok((get("peak_rss")?, get("rss_after")?))
}
