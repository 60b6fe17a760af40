//! `burn-diffusers convert CKPT --out DIR [--config REPO_OR_DIR] [--variant V] [--dtype D]
//! [--max-shard-size S] [--vae FILE_OR_DIR] [--extract-ema] [--pipeline-class CLASS]`.
//!
//! Converts an original Stable Diffusion single-file checkpoint (`.safetensors`, or `.ckpt` /
//! `.pt` / `.bin` through the restricted pickle reader) to a diffusers pipeline folder, as
//! diffusers' `from_single_file(...).save_pretrained(...)` would (`diff_convert::single_file`).
//! The pipeline layout and configs come from `--config` (a local diffusers folder or a Hub repo
//! id); without it, from the repo diffusers uses for the detected family (e.g.
//! `stabilityai/stable-diffusion-xl-base-1.0`), of which only the config and tokenizer files are
//! downloaded (diffusers' own allow patterns). The output folder is replaced atomically: a
//! failed conversion leaves no folder, or the previous one untouched.

use anyhow::{Context, Result};
use burn_diffusers::convert::single_file::{SingleFileOptions, convert_single_file_with};
use burn_diffusers::convert::{
    Checkpoint, ModelType, SaveDtype, SaveOptions, single_file::detect_model_type,
};
use std::path::PathBuf;

/// How families are detected and where configs come from (`convert --help`).
const FAMILIES_HELP: &str = "\
Families (detected from the checkpoint's keys and shapes, in the order of diffusers'
infer_diffusers_model_type; K2 = model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight):
  SD 1.x / 2.x / SDXL inpainting  model.diffusion_model.input_blocks.0.0.weight has 9 input channels;
                                  SD 2.x if K2 is 1024 wide, SDXL if the SDXL base key below exists
  SD 2.x                          K2 is 1024 wide (OpenCLIP text encoder cond_stage_model.model.*)
  SDXL base                       conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias
  SDXL refiner                    conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias
  SD 1.x                          otherwise, with a 4-channel UNet conv_in
Other families diffusers knows (Playground, upscaler, ControlNet, InstructPix2Pix, SD3, Flux,
Stable Cascade) and files without a Stable Diffusion UNet are refused with the keys looked for.

Configs without --config (diffusers' DIFFUSERS_DEFAULT_PIPELINE_PATHS):
  SD 1.x                 stable-diffusion-v1-5/stable-diffusion-v1-5
  SD 1.x inpainting      stable-diffusion-v1-5/stable-diffusion-inpainting
  SD 2.x                 stabilityai/stable-diffusion-2-1 (768, v-prediction)
  SD 2.x inpainting      stabilityai/stable-diffusion-2-inpainting
  SDXL base / refiner    stabilityai/stable-diffusion-xl-base-1.0 / stabilityai/stable-diffusion-xl-refiner-1.0
  SDXL inpainting        diffusers/stable-diffusion-xl-1.0-inpainting-0.1
An SD 2.x checkpoint does not say whether it is the 512 epsilon or the 768 v-prediction model;
like diffusers, the default is v-prediction: pass --config stabilityai/stable-diffusion-2-1-base
for 512-base models.

The models are saved in float32 whatever the checkpoint's dtype (as diffusers without
torch_dtype) unless --dtype or an fp16/bf16 --variant says otherwise. The safety checker is not
converted (model_index.json gets [null, null] for it, as diffusers writes).";

/// Arguments of `convert`.
#[derive(clap::Args)]
#[command(after_long_help = FAMILIES_HELP)]
pub struct Args {
    /// The single-file checkpoint (`.safetensors`, `.ckpt`, `.pt`, `.bin`).
    #[arg(required_unless_present = "motion_module")]
    pub ckpt: Option<PathBuf>,
    /// The folder to write (created, or replaced atomically if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// A diffusers folder or Hub repo id giving the pipeline layout and configs (default: the
    /// repo diffusers picks for the detected family; see --help).
    #[arg(long, value_name = "REPO_OR_DIR")]
    pub config: Option<String>,
    /// Save the weights under this variant name. `fp16` / `bf16` also cast to that dtype unless
    /// `--dtype` says otherwise.
    #[arg(long)]
    pub variant: Option<String>,
    /// Cast floating-point weights: f32, f16 or bf16 (default f32, as diffusers loads them).
    #[arg(long, value_name = "f32|f16|bf16")]
    pub dtype: Option<String>,
    /// Shard weights larger than this ("10GB", "200KB" or bytes).
    #[arg(long, value_name = "SIZE")]
    pub max_shard_size: Option<String>,
    /// The VAE, when the checkpoint has none or another one is wanted: an original-layout
    /// single-file VAE (`vae-ft-mse-840000-ema-pruned.safetensors`) or a diffusers VAE folder
    /// (diffusers' `vae=`).
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub vae: Option<PathBuf>,
    /// Take the UNet from the checkpoint's EMA weights (`model_ema.*`), as diffusers'
    /// `extract_ema=True`.
    #[arg(long)]
    pub extract_ema: bool,
    /// The pipeline class to write (default: the config's `_class_name`), e.g.
    /// StableDiffusionImg2ImgPipeline.
    #[arg(long, value_name = "CLASS")]
    pub pipeline_class: Option<String>,
    /// Where a repo id given to --config (or the default one) is fetched from.
    #[command(flatten)]
    pub hub: super::download::HubArgs,
    /// `--motion-module FILE`: an AnimateDiff motion module to a MotionAdapter folder.
    #[command(flatten)]
    pub motion: super::convert_motion_module::MotionModuleArgs,
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

fn config_folder(config: &str, hub: &super::download::HubArgs) -> Result<PathBuf> {
    // diffusers' `_download_diffusers_model_config_from_hub` patterns.
    let patterns = ["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"]
        .map(String::from)
        .to_vec();
    super::download::resolve_snapshot_source(config, hub, Some(patterns))
        .with_context(|| format!("the configs of --config {config}"))
}

/// Runs `convert`.
pub fn run(args: Args) -> Result<()> {
    super::check_out_folder("--out", &args.out)?;
    let dtype = save_dtype(args.dtype.as_deref(), args.variant.as_deref())?;
    let mut save = SaveOptions {
        variant: args.variant.clone(),
        dtype,
        ..SaveOptions::default()
    };
    if let Some(size) = &args.max_shard_size {
        save = save.with_max_shard_size(size)?;
    }
    if let Some(mm) = &args.motion.motion_module {
        return super::convert_motion_module::run(&args.motion, mm, &args.out, save);
    }
    let ckpt_path = args
        .ckpt
        .clone()
        .context("the checkpoint to convert is missing")?;
    let config = match &args.config {
        Some(c) => c.clone(),
        None => {
            let ckpt = Checkpoint::open(&ckpt_path)
                .with_context(|| format!("reading {}", ckpt_path.display()))?;
            let family = detect_model_type(&ckpt)?;
            let repo = family.default_config_repo();
            crate::info_line!(
                "detected {} ({family:?}); using the configs of {repo} (pass --config to choose)",
                family.diffusers_name()
            );
            if family == ModelType::V2 {
                eprintln!(
                    "note: SD 2.x checkpoints do not record their prediction type; these are the 768 v-prediction configs (for a 512-base epsilon model pass --config stabilityai/stable-diffusion-2-1-base)"
                );
            }
            repo.to_string()
        }
    };
    let folder = config_folder(&config, &args.hub)?;
    let mut options = SingleFileOptions {
        save,
        extract_ema: args.extract_ema,
        pipeline_class: args.pipeline_class.clone(),
        ..SingleFileOptions::default()
    };
    if let Some(vae) = &args.vae {
        options.components.insert("vae".into(), vae.clone());
    }
    let spinner = super::progress::spinner(format!("converting {}", ckpt_path.display()));
    let converted = convert_single_file_with(&ckpt_path, &folder, &args.out, &options)
        .with_context(|| {
            format!(
                "converting {} with the configs of {config}",
                ckpt_path.display()
            )
        });
    spinner.finish_and_clear();
    converted?;
    crate::info_line!(
        "converted {} to {}",
        ckpt_path.display(),
        args.out.display()
    );
    Ok(())
}
