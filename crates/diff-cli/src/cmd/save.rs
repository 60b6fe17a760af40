//! `burn-diffusers save SRC --out DIR [--variant V] [--dtype f32|f16|bf16] [--max-shard-size S]`.
//!
//! Re-saves a pipeline (a local folder with `model_index.json`, or a Hub repo id, downloaded
//! through diff-hub first with `--revision` / `--endpoint` / `--offline` / `--cache-dir`) in the diffusers layout, as `DiffusionPipeline.save_pretrained` writes
//! it; see `diff_convert::save` for the rules (variants, casts, sharding, atomic replacement).

use anyhow::{Context, Result};
use burn_diffusers::convert::{RawTensor, Replacements, SaveOptions, save_pipeline_with};
use std::path::{Path, PathBuf};

/// Arguments of `save`.
#[derive(clap::Args)]
pub struct Args {
    /// `pretrained_model_name_or_path`: a local diffusers pipeline folder (with
    /// `model_index.json`) or a Hub repo id (`stable-diffusion-v1-5/stable-diffusion-v1-5`).
    pub src: String,
    /// `save_directory`: directory to save a pipeline to. Will be created if it doesn't exist
    /// (an existing one is updated atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// `variant`: if specified, weights are saved in the format
    /// `pytorch_model.<variant>.bin` / `diffusion_pytorch_model.<variant>.safetensors` (`fp16`,
    /// `non_ema`, ...), beside existing ones.
    /// `fp16` / `bf16` also cast to that dtype unless `--dtype` says otherwise (diffusers'
    /// `variant=` only renames; a half-precision variant of full-precision weights is what the
    /// name promises).
    #[arg(long)]
    pub variant: Option<String>,
    /// Cast floating-point weights on save: f32, f16 or bf16 (ints are never cast).
    #[arg(long, value_name = "f32|f16|bf16")]
    pub dtype: Option<String>,
    /// `max_shard_size`: the maximum size for a checkpoint before being sharded. Checkpoints
    /// shard will then be each of size lower than this size ("10GB", "200KB" or bytes);
    /// default: each library's own (10GB diffusers, 50GB transformers).
    #[arg(long, value_name = "SIZE")]
    pub max_shard_size: Option<String>,
    /// Where a repo id comes from: `--revision`, `--endpoint`, `--offline`, `--cache-dir`.
    #[command(flatten)]
    pub hub: super::download::HubArgs,
    /// Write a README.md model card (kept if the folder already has one).
    #[arg(long)]
    pub card: bool,
    /// License for the model card (e.g. `creativeml-openrail-m`).
    #[arg(long)]
    pub license: Option<String>,
    /// `base_model` for the model card (default: SRC when it is a repo id).
    #[arg(long)]
    pub base_model: Option<String>,
    /// A LoRA to fuse into the saved weights: a file, a folder or a Hub repo id (repeatable).
    /// As diffusers' `load_lora_weights`, `set_adapters`, `fuse_lora`, `unload_lora_weights`
    /// then `save_pretrained`: the UNet and text encoder weights written are the fused ones.
    #[arg(long, value_name = "SRC")]
    pub lora: Vec<String>,
    /// The weight of the `--lora` at the same position (repeatable; default 1.0 each).
    #[arg(long = "lora-scale", value_name = "W", allow_negative_numbers = true)]
    pub lora_scale: Vec<f64>,
    /// Fuse the `--lora` adapters into the saved weights (what `save` does with `--lora`
    /// anyway: a diffusers folder has no place for unfused adapters; accepted so that a
    /// `generate --lora ... --fuse-lora` line can be reused).
    #[arg(long, requires = "lora")]
    pub fuse_lora: bool,
}

/// Runs `save`.
pub fn run(args: Args) -> Result<()> {
    super::check_card_field("--license", args.license.as_deref())?;
    super::check_out_folder("--out", &args.out)?;
    super::check_card_field("--base-model", args.base_model.as_deref())?;
    let dtype = super::convert::save_dtype(args.dtype.as_deref(), args.variant.as_deref())?;
    let mut options = SaveOptions {
        variant: args.variant.clone(),
        dtype,
        max_shard_size: None,
        name_or_path: Some(args.src.clone()),
    };
    if let Some(size) = &args.max_shard_size {
        options = options.with_max_shard_size(size)?;
    }
    let src = super::download::resolve_source(&args.src, &args.hub, args.variant.as_deref())?;
    let replacements = fused_lora_weights(&src, &args)?;
    let spinner = super::progress::spinner(format!("saving to {}", args.out.display()));
    let saved = save_pipeline_with(&src, &args.out, &options, &replacements)
        .with_context(|| format!("saving {} to {}", args.src, args.out.display()));
    spinner.finish_and_clear();
    saved?;
    if args.card {
        let is_repo = !Path::new(&args.src).exists();
        let options = burn_diffusers::convert::card::ModelCardOptions {
            repo_id: None,
            license: args.license.clone(),
            base_model: args
                .base_model
                .clone()
                .or_else(|| is_repo.then(|| args.src.clone())),
        };
        burn_diffusers::convert::card::write_model_card(&args.out, &options)?;
    }
    crate::info_line!("saved {} to {}", args.src, args.out.display());
    Ok(())
}

/// With `--lora`: loads the pipeline (float32, without the safety checker, which LoRA does not
/// touch), loads and fuses the adapters, and returns the fused weights to write in place
/// of the stored ones. Without `--lora`: nothing to replace.
fn fused_lora_weights(src: &Path, args: &Args) -> Result<Replacements> {
    use burn_diffusers::pipelines::{DiffusionPipeline, LoadOptions, Passed};
    let mut replacements = Replacements::new();
    if args.lora.is_empty() {
        return Ok(replacements);
    }
    let mut options = LoadOptions {
        variant: args.variant.clone(),
        local_files_only: true,
        ..LoadOptions::default()
    };
    options.components.safety_checker = Passed::Drop;
    let pipe = DiffusionPipeline::from_pretrained(&src.display().to_string(), &options)
        .with_context(|| format!("loading {} to fuse --lora into it", args.src))?;
    super::lora_flags::apply(&pipe, &args.lora, &args.lora_scale, true, &args.hub)?;
    for (component, tensors) in pipe.fused_lora_weights() {
        let mut by_key = std::collections::BTreeMap::new();
        for (key, data) in tensors {
            let shape = data.shape().to_vec();
            let values = data
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("fused weight {component}.{key}: {e:?}"))?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let raw = RawTensor::new(safetensors::Dtype::F32, shape, bytes)
                .map_err(|e| anyhow::anyhow!("fused weight {component}.{key}: {e}"))?;
            by_key.insert(key, raw);
        }
        replacements.insert(component, by_key);
    }
    if replacements.is_empty() {
        anyhow::bail!(
            "--lora: no layer of {} took an adapter, nothing to fuse",
            args.src
        );
    }
    Ok(replacements)
}
