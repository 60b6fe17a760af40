//! `burn-diffusers convert CKPT --out DIR [--config REPO_OR_DIR] [--variant V] [--dtype D]
//! [--max-shard-size S]`.
//!
//! Converts an original Stable Diffusion single-file checkpoint (`.safetensors`, or `.ckpt` /
//! `.pt` / `.bin` through the restricted pickle reader) to a diffusers pipeline folder, as
//! diffusers' `from_single_file(...).save_pretrained(...)` would (`diff_convert::single_file`).
//! The pipeline layout and configs come from `--config` (a local diffusers folder or a Hub repo
//! id); without it, from the repo diffusers uses for the detected family (e.g.
//! `stabilityai/stable-diffusion-xl-base-1.0`), of which only the JSON and text files are
//! downloaded.

use anyhow::{Context, Result, bail};
use burn_diffusers::convert::{
    Checkpoint, SaveDtype, SaveOptions, convert_single_file, infer_model_type,
};
use std::path::{Path, PathBuf};

/// Arguments of `convert`.
#[derive(clap::Args)]
pub struct Args {
    /// The single-file checkpoint (`.safetensors`, `.ckpt`, `.pt`, `.bin`).
    pub ckpt: PathBuf,
    /// The folder to write (created, or replaced atomically if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// A diffusers folder or Hub repo id giving the pipeline layout and configs (default: the
    /// repo diffusers picks for the detected family).
    #[arg(long, value_name = "REPO_OR_DIR")]
    pub config: Option<String>,
    /// Save the weights under this variant name. `fp16` / `bf16` also cast to that dtype unless
    /// `--dtype` says otherwise.
    #[arg(long)]
    pub variant: Option<String>,
    /// Cast floating-point weights: f32, f16 or bf16.
    #[arg(long, value_name = "f32|f16|bf16")]
    pub dtype: Option<String>,
    /// Shard weights larger than this ("10GB", "200KB" or bytes).
    #[arg(long, value_name = "SIZE")]
    pub max_shard_size: Option<String>,
}

/// The dtype to save in: `--dtype`, else the one a `fp16`/`bf16` variant name implies.
pub fn save_dtype(dtype: Option<&str>, variant: Option<&str>) -> Result<Option<SaveDtype>> {
    match dtype {
        Some(d) => Ok(Some(SaveDtype::parse(d).with_context(|| {
            format!("unknown --dtype `{d}` (expected f32, f16 or bf16)")
        })?)),
        None => Ok(match variant {
            Some("fp16") => Some(SaveDtype::F16),
            Some("bf16") => Some(SaveDtype::BF16),
            _ => None,
        }),
    }
}

fn config_folder(config: &str) -> Result<PathBuf> {
    let local = Path::new(config);
    if local.is_dir() {
        return Ok(local.to_path_buf());
    }
    if local.exists() {
        bail!("--config {config} is a file; expected a diffusers folder or a repo id");
    }
    let api = burn_diffusers::hub::HubApi::from_env().context("configuring the Hub client")?;
    let options = burn_diffusers::hub::SnapshotOptions {
        allow_patterns: Some(vec!["*.json".into(), "*.txt".into()]),
        ..Default::default()
    };
    api.snapshot_download(config, &options, &burn_diffusers::hub::NoProgress)
        .with_context(|| format!("downloading the configs of {config}"))
}

/// Runs `convert`.
pub fn run(args: Args) -> Result<()> {
    let dtype = save_dtype(args.dtype.as_deref(), args.variant.as_deref())?;
    let mut options = SaveOptions {
        variant: args.variant.clone(),
        dtype,
        ..SaveOptions::default()
    };
    if let Some(size) = &args.max_shard_size {
        options = options.with_max_shard_size(size)?;
    }
    let config = match &args.config {
        Some(c) => c.clone(),
        None => {
            let ckpt = Checkpoint::open(&args.ckpt)
                .with_context(|| format!("reading {}", args.ckpt.display()))?;
            let family = infer_model_type(&ckpt);
            let repo = family.default_config_repo();
            eprintln!("detected {family:?}; using the configs of {repo} (pass --config to choose)");
            repo.to_string()
        }
    };
    let folder = config_folder(&config)?;
    convert_single_file(&args.ckpt, &folder, &args.out, &options).with_context(|| {
        format!(
            "converting {} with the configs of {config}",
            args.ckpt.display()
        )
    })?;
    eprintln!(
        "converted {} to {}",
        args.ckpt.display(),
        args.out.display()
    );
    Ok(())
}
