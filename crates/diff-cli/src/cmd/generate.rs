//! `burn-diffusers generate --model REPO_OR_DIR --prompt TEXT [...]`: run a Stable Diffusion /
//! SDXL pipeline and write PNGs and/or a float array.
//!
//! `--model` may also be an original single-file checkpoint (an existing file:
//! `FILE.safetensors`, `FILE.ckpt`), loaded as diffusers' `from_single_file` with the configs of
//! `--config` (a folder or repo id; default: the repo diffusers uses for the detected family).
//!
//! The pipeline class comes from `model_index.json`; `--image` switches SD / SDXL text-to-image
//! checkpoints to their img2img class and `--mask` to the inpaint class, as a diffusers user
//! would pick `StableDiffusionImg2ImgPipeline.from_pretrained(same repo)`. `--pipeline CLASS`
//! names the class instead (`StableDiffusionSAGPipeline`, an AutoPipeline; see
//! `pipeline_arg.rs`), and `--sag-scale` is the SAG class's `sag_scale`. `--scheduler CLASS`
//! builds `CLASS.from_config(pipe.scheduler.config, **overrides)`; each `--scheduler-set k=v`
//! value is read as JSON when it parses (`0.5`, `true`, `"linear"`, `[1, 2]`) and as a plain
//! string otherwise (`linear`).

use super::pipeline_arg::Requested;
use anyhow::{Context, Result, bail};
use burn_diffusers::format::model_index::{ModelIndex, PipelineClass as IndexClass};
use burn_diffusers::models::{AutoencoderKL, FromPretrained, ModelLoadOptions};
use burn_diffusers::pipelines::image_processor::load_image;
use burn_diffusers::pipelines::outputs::{load_latents, save_float_images, save_latents};
use burn_diffusers::pipelines::pipeline::resolve_folder;
use burn_diffusers::pipelines::single_file::{
    SingleFileLoadOptions, autoencoder_kl_from_single_file, is_single_file,
};
use burn_diffusers::pipelines::{
    CallArgs, DiffusionPipeline, Generators, Img2ImgArgs, InpaintArgs, LoadOptions, OutputType,
    Passed, PipelineClass, SagArgs, StepInfo, XlArgs,
};
use burn_diffusers::schedulers::SCHEDULER_CLASSES;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// A local diffusers pipeline folder, a Hub repo id (`owner/name`, downloaded into the
    /// Hugging Face cache; `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` apply), or an original
    /// single-file checkpoint (`FILE.safetensors`, `FILE.ckpt`), converted in memory as
    /// diffusers' `from_single_file` does.
    #[arg(long, required = false, required_unless_present = "from_png")]
    pub model: String,
    /// For a single-file --model: the diffusers folder or Hub repo id its configs, tokenizers
    /// and scheduler come from (default: the repo diffusers uses for the detected family; only
    /// its config files are downloaded).
    #[arg(long, value_name = "REPO_OR_DIR")]
    pub config: Option<String>,
    /// Load the model's components into this pipeline class, as `CLASS.from_pretrained(model)`
    /// would: a supported class (`StableDiffusionSAGPipeline`, `StableDiffusionImg2ImgPipeline`,
    /// ...) or an AutoPipeline (`AutoPipelineForText2Image`, `AutoPipelineForImage2Image`,
    /// `AutoPipelineForInpainting`: the task class of the model's family). Without it the class
    /// is `model_index.json`'s, switched to img2img / inpaint by --image / --mask.
    #[arg(long, value_name = "CLASS")]
    pub pipeline: Option<String>,
    /// Replace the VAE (diffusers' `vae=`): a diffusers VAE folder, or a single-file VAE
    /// (`vae-ft-mse-840000-ema-pruned.safetensors`) converted with the `vae/config.json` of
    /// --config, or of --model when that is a folder or repo.
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub vae: Option<PathBuf>,
    /// Where a repo id comes from: `--revision`, `--endpoint`, `--offline`, `--cache-dir`.
    #[command(flatten)]
    pub hub: super::download::HubArgs,
    #[command(flatten)]
    pub offload: super::generate_offload::OffloadArgs,
    /// `prompt`: the prompt or prompts to guide image generation.
    #[arg(long, default_value = "", hide_default_value = true,
          required_unless_present_any = ["prompts", "from_png"])]
    pub prompt: String,
    /// `negative_prompt`: the prompt or prompts to guide what to not include in image
    /// generation. Ignored when not using guidance (`guidance_scale` < 1).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// `num_inference_steps`: the number of denoising steps. More denoising steps usually lead
    /// to a higher quality image at the expense of slower inference. For img2img / inpaint the
    /// steps run are `steps * strength`.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// `guidance_scale` (default 7.5, SDXL 5.0): a higher guidance scale value encourages the
    /// model to generate images closely linked to the text `prompt` at the expense of lower
    /// image quality. Guidance is enabled when `guidance_scale > 1`.
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// `guidance_rescale` (default 0): guidance rescale factor from "Common Diffusion Noise
    /// Schedules and Sample Steps are Flawed"; fixes overexposure when using zero terminal SNR.
    #[arg(long, allow_negative_numbers = true)]
    pub guidance_rescale: Option<f32>,
    /// StableDiffusionSAGPipeline's `sag_scale` (default 0.75; 0 turns self-attention guidance
    /// off).
    #[arg(long, allow_negative_numbers = true)]
    pub sag_scale: Option<f32>,
    /// Perturbed-Attention Guidance: `--pag-scale`, `--pag-adaptive-scale`,
    /// `--pag-applied-layers` (`generate_pag.rs`).
    #[command(flatten)]
    pub pag: super::generate_pag::PagArgs,
    /// `eta` (default 0): corresponds to parameter eta (η) from the DDIM paper; only applies to
    /// the DDIMScheduler and is ignored in other schedulers.
    #[arg(long, allow_negative_numbers = true)]
    pub eta: Option<f32>,
    /// `clip_skip`: number of layers to be skipped from CLIP while computing the prompt
    /// embeddings. A value of 1 means that the output of the pre-final layer is used
    /// (AUTOMATIC1111's "Clip skip: 2").
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// The seed of the `torch.Generator("cpu")` that makes the generation deterministic:
    /// 0 ..= 2^64-1, or a negative one down to -2^63 (torch's `manual_seed` wraps it to
    /// 2^64 + seed). Image i of a run uses seed + i (AUTOMATIC1111's rule). When absent, one is
    /// drawn, printed and recorded in the image.
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: Option<u64>,
    /// `height`: the height in pixels of the generated image, a multiple of 8 (default:
    /// `unet.config.sample_size * vae_scale_factor`, or the input image's for inpaint).
    #[arg(long)]
    pub height: Option<usize>,
    /// `width`: the width in pixels of the generated image, a multiple of 8.
    #[arg(long)]
    pub width: Option<usize>,
    /// `scheduler`: a scheduler class to be used in combination with `unet` to denoise the
    /// encoded image latents, built as `CLASS.from_config(pipe.scheduler.config)` (e.g.
    /// `DPMSolverMultistepScheduler`, `EulerAncestralDiscreteScheduler`).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// `key=value` override for `--scheduler` (repeatable).
    #[arg(
        long = "scheduler-set",
        value_name = "KEY=VALUE",
        requires = "scheduler"
    )]
    pub scheduler_set: Vec<String>,
    /// `variant`: load weights from a specified variant filename such as `"fp16"` or `"ema"`.
    #[arg(long)]
    pub variant: Option<String>,
    /// `torch_dtype`: the dtype the models are loaded and run in.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// Device: `flex` (or `cpu`, the default), `wgpu`, `wgpu:N`, `wgpu:cpu`, `cuda`, `cuda:N`;
    /// the GPU backends need a binary built with `--features wgpu` / `--features cuda`.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// `image`: the image used as the starting point (img2img), or the image to repaint
    /// (inpaint, with --mask); PNG or JPEG, read as PIL reads it.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// `strength` in [0, 1]: indicates the extent to transform the reference `image`. `image`
    /// is used as a starting point and more noise is added the higher the `strength`; the
    /// number of denoising steps run is `steps * strength`. A value of 1 essentially ignores
    /// `image` (default 0.8; SDXL img2img 0.3, inpaint 1.0 / SDXL 0.9999).
    #[arg(long, requires = "image", allow_negative_numbers = true)]
    pub strength: Option<f32>,
    /// `mask_image`: white pixels in the mask are repainted while black pixels are preserved.
    #[arg(long, requires = "image")]
    pub mask: Option<PathBuf>,
    /// Inpaint `padding_mask_crop`: generate only in the masked region grown by N pixels (and
    /// to the output aspect ratio), then paste it back onto the image, whose size the output
    /// keeps (image and mask must have the same size).
    #[arg(long, requires = "mask")]
    pub padding_mask_crop: Option<usize>,
    /// SDXL img2img / inpaint `aesthetic_score` (default 6.0): used to simulate an aesthetic
    /// score of the generated image by influencing the positive text condition; part of SDXL's
    /// micro-conditioning (used when the pipeline has `requires_aesthetics_score`, the refiner).
    #[arg(long)]
    pub aesthetic_score: Option<f32>,
    /// SDXL img2img / inpaint `negative_aesthetic_score` (default 2.5): used to simulate an
    /// aesthetic score of the generated image by influencing the negative text condition.
    #[arg(long)]
    pub negative_aesthetic_score: Option<f32>,
    /// `latents`: pre-generated noisy latents sampled from a Gaussian distribution, used as
    /// inputs for image generation (a safetensors file: tensor `latents` or the only tensor).
    /// Can be used to tweak the same generation with different prompts.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// SDXL img2img / inpaint: the `image` given as latents (a safetensors file, key `latents`,
    /// e.g. a base run's `--out-latents`), used as is without the VAE, as diffusers takes a
    /// latent-channel `image`; with `--denoising-start` this is the refiner half of diffusers'
    /// "ensemble of expert denoisers".
    #[arg(long, value_name = "IN.safetensors", conflicts_with = "image")]
    pub image_latents: Option<PathBuf>,
    /// SDXL `denoising_end` in (0, 1): stop after this fraction of the schedule (hand the rest to
    /// a refiner with `--out-latents` and `--denoising-start`).
    #[arg(long)]
    pub denoising_end: Option<f32>,
    /// SDXL img2img / inpaint `denoising_start` in (0, 1): start at this fraction of the
    /// schedule, without noising the input (strength is then ignored, as in diffusers).
    #[arg(long)]
    pub denoising_start: Option<f32>,
    /// `num_images_per_prompt`: the number of images to generate per prompt, image i with
    /// seed + i (AUTOMATIC1111's rule: each equals a single run with that seed).
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// `safety_checker=None`: do not load the classification module that estimates whether
    /// generated images could be considered offensive or harmful.
    #[arg(long)]
    pub no_safety_checker: bool,
    /// The image file to write; its extension picks the format: `.png` (with AUTOMATIC1111's
    /// `parameters` and the full recipe, see --from-png), `.jpg` / `.jpeg` (--jpeg-quality),
    /// `.webp` (lossless). A pattern names each image of a batch: `{seed}`, `{index}` (0-based
    /// position in the run), `{job}` (--prompts line), e.g. `img-{seed}-{index}.png`; without
    /// one, several images get `-1`, `-2`, ... before the extension. An existing file is an
    /// error unless --overwrite.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the float images in [0, 1], [N, H, W, 3], under the key `images`.
    #[arg(long)]
    pub out_array: Option<PathBuf>,
    /// Write the final latents `[N, C, h, w]` (float32, key `latents`) instead of decoding
    /// them: diffusers' `output_type="latent"`. Cannot be combined with --out / --out-array.
    #[arg(long, value_name = "OUT.safetensors", conflicts_with_all = ["out", "out_array"])]
    pub out_latents: Option<PathBuf>,
    /// A LoRA to load: a file, a folder or a Hub repo id (repeatable; `load_lora_weights`,
    /// adapters named `default_0`, `default_1`, ... and activated together).
    #[arg(long, value_name = "SRC")]
    pub lora: Vec<String>,
    /// The weight of the `--lora` at the same position (repeatable; default 1.0 each).
    #[arg(long = "lora-scale", value_name = "W", allow_negative_numbers = true)]
    pub lora_scale: Vec<f64>,
    /// Fuse the weighted LoRAs into the layers before generating (`fuse_lora`).
    #[arg(long, requires = "lora")]
    pub fuse_lora: bool,
    /// Outputs, batches, reproduction and run settings (`output.rs`).
    #[command(flatten)]
    pub output: super::output::OutputArgs,
    /// AnimateDiff (`--pipeline AnimateDiffPipeline`): `--motion-adapter`, `--num-frames`, ...
    #[command(flatten)]
    pub animatediff: super::generate_animatediff::AnimateDiffArgs,
    /// `--ip-adapter` and its flags (`generate_ip_adapter.rs`).
    #[command(flatten)]
    pub ip_adapter: super::generate_ip_adapter::IpAdapterFlags,
}

/// `--lora` / `--lora-scale` / `--fuse-lora`: loads each LoRA (`default_0`, `default_1`, ...),
/// activates them together with their weights (`set_adapters`) and fuses them if asked.
fn apply_loras(pipe: &DiffusionPipeline, args: &Args) -> Result<()> {
    super::lora_flags::apply(
        pipe,
        &args.lora,
        &args.lora_scale,
        args.fuse_lora,
        &args.hub,
    )
}

/// `torch.Generator.manual_seed`'s range: a u64, or a negative i64 taken modulo 2^64.
fn parse_seed(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(v) = text.parse::<u64>() {
        return Ok(v);
    }
    match text.parse::<i64>() {
        Ok(v) => Ok(v as u64),
        Err(_) => Err(format!(
            "`{text}` is not a seed: expected an integer from -9223372036854775808 to 18446744073709551615"
        )),
    }
}

/// The flow-matching scheduler, which the Stable Diffusion pipelines cannot use.
const FLOW_MATCH: &str = "FlowMatchEulerDiscreteScheduler";

fn parse_override(item: &str) -> Result<(String, Value)> {
    let (k, v) = item
        .split_once('=')
        .with_context(|| format!("--scheduler-set `{item}`: expected KEY=VALUE"))?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    Ok((k.trim().to_string(), value))
}

/// The default output size is the UNet's `sample_size` times the VAE scale factor: for a
/// local folder or a repo id (its two small config files fetched first, as diffusers fetches
/// configs before weights), check it against the pixel limit before any model is loaded or
/// any weight downloaded (a `sample_size` of 1e9 would otherwise allocate latents of
/// exabytes). Configs that do not load are left to the loader, which names the file and key.
fn check_default_size(
    model: &str,
    height: Option<usize>,
    width: Option<usize>,
    hub: &super::download::HubArgs,
) -> Result<()> {
    use burn_diffusers::format::configs::unet::{SampleSize, UNet2DConditionConfig};
    use burn_diffusers::format::configs::vae::AutoencoderKLConfig;
    use burn_diffusers::format::load_config;
    let folder = Path::new(model);
    let config_file = |name: &str| -> Option<PathBuf> {
        if folder.is_dir() {
            return Some(folder.join(name));
        }
        if is_single_file(model) || burn_diffusers::hub::validate_repo_id(model).is_err() {
            return None;
        }
        let options = burn_diffusers::hub::DownloadOptions {
            revision: hub.revision.clone(),
            local_files_only: hub.offline,
            ..Default::default()
        };
        hub.api().ok()?.hf_hub_download(model, name, &options).ok()
    };
    let Some(unet_path) = config_file("unet/config.json") else {
        return Ok(());
    };
    let Ok(unet) = load_config::<UNet2DConditionConfig>(&unet_path) else {
        return Ok(());
    };
    let vae = config_file("vae/config.json");
    let scale: u64 = vae
        .and_then(|p| load_config::<AutoencoderKLConfig>(p).ok())
        .map_or(8, |v| {
            1u64.checked_shl(v.block_out_channels.len().saturating_sub(1) as u32)
                .unwrap_or(u64::MAX)
        });
    let (h, w) = match unet.sample_size {
        Some(SampleSize::Square(s)) => (s, s),
        Some(SampleSize::HeightWidth(hw)) if hw.len() == 2 => (hw[0], hw[1]),
        _ => return Ok(()),
    };
    let side = |given: Option<usize>, default: u64| {
        given.map_or(default.saturating_mul(scale), |g| g as u64)
    };
    let (h, w) = (side(height, h), side(width, w));
    let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    super::check_pixels(clamp(h), clamp(w)).with_context(|| {
        format!("the default output size comes from {model}/unet/config.json `sample_size`; pass --height and --width")
    })
}

/// The `--vae` model: a diffusers folder as it is, a single file converted with the VAE config
/// of `--config` or of a folder / repo `--model`.
fn load_vae(vae: &Path, args: &Args, options: &LoadOptions) -> Result<AutoencoderKL> {
    if vae.is_dir() {
        let load = ModelLoadOptions::new(&options.device).with_dtype(options.dtype);
        let (model, _) = AutoencoderKL::from_pretrained(vae, &load)
            .with_context(|| format!("loading --vae {}", vae.display()))?;
        return Ok(model);
    }
    let config = match &args.config {
        Some(c) => c.clone(),
        None if !is_single_file(&args.model) => args.model.clone(),
        None => bail!(
            "--vae {} is a single file: pass --config REPO_OR_DIR for its vae/config.json (the single-file --model does not carry configs)",
            vae.display()
        ),
    };
    autoencoder_kl_from_single_file(vae, &config, "vae", options).with_context(|| {
        format!(
            "loading --vae {} with the configs of {config}",
            vae.display()
        )
    })
}

/// Applies `--pipeline`: a class is loaded as `CLASS.from_pretrained` would (`pipeline_class`);
/// an AutoPipeline reads the model's `_class_name` first (the folder or repo resolved once, the
/// load then reads that folder) and picks its family's task class. Returns the model to load.
fn requested_class(
    requested: Option<Requested>,
    model: &str,
    options: &mut LoadOptions,
) -> Result<String> {
    match requested {
        None => Ok(model.to_string()),
        Some(Requested::Class(class)) => {
            options.pipeline_class = Some(class);
            Ok(model.to_string())
        }
        Some(Requested::Auto(task)) => {
            if is_single_file(model) {
                bail!(
                    "--pipeline {}: AutoPipelines load diffusers folders and repos (diffusers has no AutoPipeline from_single_file); name the class instead",
                    task.name()
                );
            }
            let folder =
                resolve_folder(model, options).with_context(|| format!("loading {model}"))?;
            let index_path = folder.join("model_index.json");
            let index = ModelIndex::load(&index_path)
                .with_context(|| format!("reading {}", index_path.display()))?;
            let name = match &index.class_name {
                IndexClass::Builtin(n) => n.clone(),
                IndexClass::Custom { class_name, .. } => class_name.clone(),
            };
            options.pipeline_class = Some(task.class_for(&name, None)?);
            Ok(folder.display().to_string())
        }
    }
}

/// With `--pipeline`, the inputs must be the class's: `--mask` for an inpainting class, `--image`
/// for an image-to-image or inpainting one, and neither for text-to-image (diffusers' `__call__`
/// raises a TypeError on an unexpected `image=` / `mask_image=`).
fn check_inputs_fit(class: PipelineClass, has_image: bool, has_mask: bool) -> Result<()> {
    let inpaint = matches!(
        class,
        PipelineClass::StableDiffusionInpaint
            | PipelineClass::StableDiffusionXLInpaint
            | PipelineClass::StableDiffusionPAGInpaint
            | PipelineClass::StableDiffusionXLPAGInpaint
    );
    let img2img = matches!(
        class,
        PipelineClass::StableDiffusionImg2Img
            | PipelineClass::StableDiffusionXLImg2Img
            | PipelineClass::StableDiffusionPAGImg2Img
            | PipelineClass::StableDiffusionXLPAGImg2Img
    );
    if has_mask && !inpaint {
        bail!(
            "--mask is for the inpainting classes; --pipeline {} does not take `mask_image`",
            class.name()
        );
    }
    if has_image && !(inpaint || img2img) {
        bail!(
            "--image is for the image-to-image and inpainting classes; --pipeline {} does not take `image`",
            class.name()
        );
    }
    Ok(())
}

/// Runs `generate`.
pub fn run(args: Args) -> Result<()> {
    super::output::apply_threads(args.output.threads)?;
    if args.out.is_none()
        && args.out_array.is_none()
        && args.out_latents.is_none()
        && args.animatediff.frames_dir.is_none()
    {
        bail!(
            "nothing to write: pass --out OUT.png and/or --out-array OUT.safetensors, or --out-latents OUT.safetensors"
        );
    }
    let device = burn_diffusers::pipelines::parse_device(&args.device)
        .with_context(|| format!("--device {}", args.device))?;
    let requested = args
        .pipeline
        .as_deref()
        .map(super::pipeline_arg::parse)
        .transpose()?;
    let video = super::generate_animatediff::is_video(requested);
    let requested = super::generate_animatediff::check(
        &args.animatediff,
        requested,
        args.out.as_deref().filter(|_| video),
        args.latents.is_some() || args.out_latents.is_some(),
    )?;
    // img2img (an --image without --mask) ignores the size flags, as diffusers does; the other
    // modes check them here, before any model is loaded.
    let sized = args.image.is_none() || args.mask.is_some();
    if let Some(h) = args.height.filter(|h| sized && h % 8 != 0) {
        bail!("--height {h} is not a multiple of 8");
    }
    if let Some(w) = args.width.filter(|w| sized && w % 8 != 0) {
        bail!("--width {w} is not a multiple of 8");
    }
    super::check_steps(args.steps, super::MAX_GENERATE_STEPS)?;
    if let (Some(h), Some(w)) = (args.height.filter(|_| sized), args.width.filter(|_| sized)) {
        super::check_pixels(h, w)?;
    } else if let Some(side) = args.height.or(args.width).filter(|_| sized) {
        // One side given: the other is at least 8 (the smallest multiple of 8).
        super::check_pixels(side, 8)?;
    }
    if sized && (args.height.is_none() || args.width.is_none()) {
        check_default_size(&args.model, args.height, args.width, &args.hub)?;
    }
    if args.num_images == 0 {
        // diffusers fails on an empty batch (a reshape of 0 elements); say why instead.
        bail!("--num-images 0: at least one image per prompt is needed");
    }
    // Check every output path before any work, so a missing folder or a path that is a folder,
    // FIFO or device fails now, not after the denoising loop.
    let seed = args.seed.unwrap_or_else(super::output::draw_seed);
    let plan = super::output::plan(
        args.out.as_deref().filter(|_| !video),
        &args.prompt,
        seed,
        args.num_images,
        &args.output,
    )?;
    let overwrite = args.output.overwrite;
    let out_array = args
        .out_array
        .as_deref()
        .map(|p| super::output::check_new("--out-array", p, overwrite))
        .transpose()?;
    let out_latents = args
        .out_latents
        .as_deref()
        .map(|p| super::output::check_new("--out-latents", p, overwrite))
        .transpose()?;
    if args.seed.is_none() {
        crate::info_line!("seed {seed} (drawn at random; --seed {seed} makes the same image)");
    }
    for (flag, path) in [
        ("--latents", &args.latents),
        ("--image-latents", &args.image_latents),
    ] {
        if let Some(p) = path {
            super::check_latents_file(flag, p)?;
        }
    }
    // Read inputs before loading models, so a bad file fails fast.
    let image = match &args.image {
        Some(p) => Some(load_image(p).with_context(|| format!("reading --image {}", p.display()))?),
        None => None,
    };
    let mask = match &args.mask {
        Some(p) => Some(load_image(p).with_context(|| format!("reading --mask {}", p.display()))?),
        None => None,
    };
    let dtype = match args.dtype.as_str() {
        "f16" => burn_diffusers::pipelines::DType::F16,
        "bf16" => burn_diffusers::pipelines::DType::BF16,
        _ => burn_diffusers::pipelines::DType::F32,
    };
    let mut options = LoadOptions {
        variant: args.variant.clone(),
        dtype,
        device,
        revision: Some(args.hub.revision.clone()),
        local_files_only: args.hub.offline,
        hub: Some(args.hub.config()?),
        ..LoadOptions::default()
    };
    if args.no_safety_checker {
        options.components.safety_checker = Passed::Drop;
    }
    if let Some(vae) = &args.vae {
        options.components.vae = Passed::Replace(Arc::new(load_vae(vae, &args, &options)?));
    }
    let load_bars = Arc::new(super::progress::LoadBars::new());
    options.progress = Some(load_bars.clone());
    let model = requested_class(requested, &args.model, &mut options)?;
    let latents = match &args.latents {
        Some(p) => Some(
            load_latents(p, &options.device)
                .with_context(|| format!("reading --latents {}", p.display()))?,
        ),
        None => None,
    };
    let image_latents = match &args.image_latents {
        Some(p) => Some(
            load_latents(p, &options.device)
                .with_context(|| format!("reading --image-latents {}", p.display()))?,
        ),
        None => None,
    };
    let video_options = options.clone();
    args.offload.before_load();
    let mut pipe = if is_single_file(&args.model) {
        let options = SingleFileLoadOptions {
            config: args.config.clone(),
            load: options.clone(),
            ..SingleFileLoadOptions::default()
        };
        DiffusionPipeline::from_single_file(&model, &options)
            .with_context(|| format!("loading the single-file checkpoint {}", args.model))?
    } else {
        if let Some(config) = &args.config {
            bail!(
                "--config {config} is for single-file checkpoints, but --model {} is a folder or repo id (its own configs are used)",
                args.model
            );
        }
        DiffusionPipeline::from_pretrained(&model, &options)
            .with_context(|| format!("loading {}", args.model))?
    };
    load_bars.finish();
    let source = super::recipe::ModelSource::resolve(&args.model, &model, &args.hub, &options);
    args.offload.apply(&mut pipe)?;
    if image_latents.is_some() && !pipe.class().is_xl() {
        bail!(
            "--image-latents is for the SDXL pipelines (diffusers' Stable Diffusion img2img encodes a pixel image); {} is {}",
            args.model,
            pipe.class().name()
        );
    }
    let has_image = image.is_some() || image_latents.is_some();
    let wanted = match (pipe.class(), has_image, mask.is_some()) {
        // The class asked for is kept: its inputs must fit it.
        (c, _, _) if requested.is_some() => {
            check_inputs_fit(c, has_image, mask.is_some())?;
            None
        }
        (c, _, true) if c.is_xl() => Some(PipelineClass::StableDiffusionXLInpaint),
        (_, _, true) => Some(PipelineClass::StableDiffusionInpaint),
        (c, true, false) if c.is_xl() => Some(PipelineClass::StableDiffusionXLImg2Img),
        (PipelineClass::StableDiffusion, true, false) => {
            Some(PipelineClass::StableDiffusionImg2Img)
        }
        _ => None,
    };
    if let Some(class) = wanted.filter(|c| *c != pipe.class()) {
        pipe = pipe.from_pipe(class, &Default::default(), &Default::default())?;
    }
    let explicit = requested.and_then(|r| match r {
        Requested::Class(c) => Some(c),
        Requested::Auto(_) => None,
    });
    pipe = super::generate_pag::apply(&args.pag, pipe, explicit)?;
    if video {
        pipe =
            super::generate_animatediff::into_animatediff(pipe, &args.animatediff, &video_options)?;
    }
    if let Some(class) = &args.scheduler {
        let mut overrides = Map::new();
        for item in &args.scheduler_set {
            let (k, v) = parse_override(item)?;
            overrides.insert(k, v);
        }
        pipe.swap_scheduler(class, &overrides)
            .with_context(|| format!("--scheduler {class}"))?;
    }
    apply_loras(&pipe, &args)?;
    pipe = super::output::apply_vae(pipe, &args.output)?;
    // The Stable Diffusion pipelines drive a scheduler through `init_noise_sigma`,
    // `scale_model_input` and `add_noise`, which the flow-matching scheduler (SD3 / Flux) does
    // not have: diffusers raises AttributeError there, so refuse it before any work.
    if let Some(s) = pipe.scheduler().filter(|s| s.class_name() == FLOW_MATCH) {
        bail!(
            "{} cannot drive {}: it has no init_noise_sigma / scale_model_input / add_noise \
             (it is for flow-matching models such as SD3 and Flux); pick one of {}",
            s.class_name(),
            pipe.class().name(),
            SCHEDULER_CLASSES
                .iter()
                .filter(|c| **c != FLOW_MATCH)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // diffusers' `sag_scale` is an argument of StableDiffusionSAGPipeline only.
    if args.sag_scale.is_some() && pipe.class() != PipelineClass::StableDiffusionSAG {
        bail!(
            "--sag-scale is for StableDiffusionSAGPipeline (pass --pipeline StableDiffusionSAGPipeline); {} does not take `sag_scale`",
            pipe.class().name()
        );
    }
    // diffusers' `__call__`s take `denoising_end` only in the SDXL pipelines and
    // `denoising_start` only in SDXL img2img / inpaint; elsewhere Python raises a TypeError for
    // the unexpected keyword, so refuse rather than ignore them.
    if args.denoising_end.is_some() && !pipe.class().is_xl() {
        bail!(
            "--denoising-end is for the SDXL pipelines; {} does not take `denoising_end`",
            pipe.class().name()
        );
    }
    if args.denoising_start.is_some()
        && !matches!(
            pipe.class(),
            PipelineClass::StableDiffusionXLImg2Img
                | PipelineClass::StableDiffusionXLInpaint
                | PipelineClass::StableDiffusionXLPAGImg2Img
                | PipelineClass::StableDiffusionXLPAGInpaint
        )
    {
        bail!(
            "--denoising-start is for SDXL img2img / inpaint (pass --image or --image-latents); {} does not take `denoising_start`",
            pipe.class().name()
        );
    }
    // diffusers' img2img pipelines take no height/width (`**kwargs` swallows them): the output
    // has the input image's size. Do the same, and say so.
    let img2img = matches!(
        pipe.class(),
        PipelineClass::StableDiffusionImg2Img
            | PipelineClass::StableDiffusionXLImg2Img
            | PipelineClass::StableDiffusionPAGImg2Img
            | PipelineClass::StableDiffusionXLPAGImg2Img
    );
    if img2img && (args.height.is_some() || args.width.is_some()) {
        tracing::warn!(
            "--height/--width are ignored for img2img, as diffusers' {} ignores them: the output has the size of --image (resize the image to change it)",
            pipe.class().name()
        );
    }
    // diffusers reads a height or width of 0 as "not given".
    let size = |v: Option<usize>| v.filter(|v| *v > 0 && !img2img);
    let mut call = CallArgs {
        prompt: Vec::new(),
        negative_prompt: args.negative_prompt.clone().map(|n| vec![n]),
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        guidance_rescale: args.guidance_rescale.unwrap_or(0.0),
        eta: args.eta.unwrap_or(0.0),
        clip_skip: args.clip_skip,
        height: size(args.height),
        width: size(args.width),
        generator: Generators::Random,
        latents,
        img2img: Img2ImgArgs {
            image: image.map(|i| vec![i]),
            image_latents,
            strength: args.strength,
        },
        inpaint: InpaintArgs {
            mask_image: mask.map(|m| vec![m]),
            padding_mask_crop: args.padding_mask_crop,
            ..InpaintArgs::default()
        },
        xl: XlArgs {
            aesthetic_score: args.aesthetic_score.unwrap_or(6.0),
            negative_aesthetic_score: args.negative_aesthetic_score.unwrap_or(2.5),
            denoising_start: args.denoising_start,
            denoising_end: args.denoising_end,
            ..XlArgs::default()
        },
        sag: SagArgs {
            sag_scale: args.sag_scale.unwrap_or(SagArgs::default().sag_scale),
        },
        pag: args.pag.call_args(),
        num_images_per_prompt: args.num_images,
        video: args.animatediff.video_args(),
        // diffusers pastes the crop back onto the 8-bit image, so it needs output_type="pil".
        output_type: if args.out_latents.is_some() {
            OutputType::Latent
        } else if args.padding_mask_crop.is_some() {
            OutputType::Pil
        } else {
            OutputType::Np
        },
        ..CallArgs::default()
    };
    super::generate_ip_adapter::apply(&mut pipe, &args.ip_adapter, &mut call)?;
    let jobs = plan.jobs.len();
    for (j, job) in plan.jobs.iter().enumerate() {
        call.prompt = vec![job.prompt.clone()];
        call.generator = Generators::Seeds(job.seeds.clone());
        let label = if jobs > 1 {
            format!(" (job {}/{jobs})", j + 1)
        } else {
            String::new()
        };
        let mut bars = super::progress::DenoiseBars::new(args.steps, label, out_latents.is_none());
        let out = pipe.call(&call, Some(&mut |i: &StepInfo<'_>| bars.on_step(i)))?;
        bars.finish();
        if let Some(path) = &out_latents {
            save_latents(path, &out.latents)?;
            crate::info_line!(
                "wrote {} ({:?} float32 latents under `latents`)",
                path.display(),
                out.latents.dims()
            );
            continue;
        }
        if video {
            super::generate_animatediff::write_outputs(
                &out,
                &args.animatediff,
                args.out.as_deref(),
                out_array.as_deref(),
            )?;
            continue;
        }
        let images = out
            .images
            .as_ref()
            .context("the pipeline returned no images")?;
        if let Some(format) = plan.format {
            let context = super::recipe::RunContext::new(&pipe, &args, &source);
            let written = super::output::write_job(job, &images.to_rgb8_all(), format, &context)?;
            for p in written {
                crate::info_line!("wrote {}", p.display());
            }
        }
        if let Some(path) = &out_array {
            save_float_images(path, images)?;
            crate::info_line!(
                "wrote {} ([{}, {}, {}, 3] float32 under `images`)",
                path.display(),
                images.count,
                images.height,
                images.width
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_diffusers::pipelines::outputs::load_float_images;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "burn-diffusers-generate-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn base_args(out_dir: &Path) -> Args {
        Args {
            model: fixtures().join("tiny-sd").display().to_string(),
            config: None,
            pipeline: None,
            vae: None,
            hub: super::super::download::HubArgs::default(),
            offload: Default::default(),
            prompt: "a photo of an astronaut riding a horse on mars".into(),
            negative_prompt: None,
            steps: 4,
            guidance: Some(7.5),
            guidance_rescale: None,
            sag_scale: None,
            pag: Default::default(),
            eta: None,
            clip_skip: None,
            seed: Some(0),
            height: Some(32),
            width: Some(32),
            scheduler: Some("DDIMScheduler".into()),
            scheduler_set: Vec::new(),
            variant: None,
            dtype: "f32".into(),
            device: "flex".into(),
            image: None,
            strength: None,
            mask: None,
            padding_mask_crop: None,
            aesthetic_score: None,
            negative_aesthetic_score: None,
            latents: None,
            image_latents: None,
            denoising_end: None,
            denoising_start: None,
            num_images: 1,
            no_safety_checker: true,
            out: Some(out_dir.join("out.png")),
            out_array: Some(out_dir.join("out.safetensors")),
            out_latents: None,
            lora: Vec::new(),
            lora_scale: Vec::new(),
            fuse_lora: false,
            output: Default::default(),
            animatediff: Default::default(),
            ip_adapter: Default::default(),
        }
    }

    /// `--lora` / `--lora-scale` / `--fuse-lora` on `tests/fixtures/25-lora-formats/sd_kohya`:
    /// diffusers' images at weight 1.0, 0.5 and fused at 0.75, within 2/255 per pixel and
    /// 0.5/255 mean.
    #[test]
    fn generate_with_lora_flags_matches_the_diffusers_fixture() {
        let case = fixtures().join("25-lora-formats/sd_kohya");
        let images = case.join("images.safetensors");
        let lora = case.join("lora.safetensors").display().to_string();
        for (key, scale, fuse) in [
            ("unfused", None, false),
            ("weighted", Some(0.5), false),
            ("fused", Some(0.75), true),
        ] {
            let dir = scratch(&format!("lora-{key}"));
            let mut args = base_args(&dir);
            args.prompt = "a red circle".into();
            args.steps = 2;
            args.height = None;
            args.width = None;
            args.lora = vec![lora.clone()];
            args.lora_scale = scale.into_iter().collect();
            args.fuse_lora = fuse;
            run(args).unwrap();
            let got = load_float_images(&dir.join("out.safetensors")).unwrap();
            let bytes = std::fs::read(&images).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let want: Vec<f32> = st
                .tensor(key)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(got.data.len(), want.len(), "{key}");
            let diffs: Vec<f32> = got
                .data
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .collect();
            let max = diffs.iter().copied().fold(0.0f32, f32::max);
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            assert!(
                max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
                "{key}: max {max}, mean {mean}"
            );
        }
    }

    #[test]
    fn more_lora_scales_than_loras_is_refused() {
        let dir = scratch("lora-scales");
        let mut args = base_args(&dir);
        args.lora_scale = vec![0.5];
        let err = run(args).unwrap_err().to_string();
        assert!(err.contains("--lora-scale"), "{err}");
    }

    /// The `sd_txt2img_ddim` case of tests/fixtures/40-pipeline-runs through the CLI; same
    /// tolerances as the library gate (2/255 per pixel, 0.5/255 mean).
    #[test]
    fn generate_out_array_matches_the_diffusers_fixture() {
        let dir = scratch("parity");
        run(base_args(&dir)).unwrap();
        let got = load_float_images(&dir.join("out.safetensors")).unwrap();
        let want =
            load_float_images(&fixtures().join("40-pipeline-runs/sd_txt2img_ddim.safetensors"))
                .unwrap();
        assert_eq!(
            (got.count, got.height, got.width),
            (want.count, want.height, want.width)
        );
        let diffs: Vec<f32> = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().copied().fold(0.0, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(
            max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
            "max {max}, mean {mean}"
        );
        let png = load_image(&dir.join("out.png")).unwrap();
        assert_eq!(png.dimensions(), (32, 32));
        std::fs::remove_dir_all(dir).ok();
    }

    /// Issue 18: outputs, steps and sizes are checked before any model is loaded (the model
    /// path does not exist here, so reaching the loader would give another message).
    #[test]
    fn hostile_outputs_and_sizes_are_refused_up_front() {
        let dir = scratch("hostile");
        let err = |args: Args| format!("{:#}", run(args).unwrap_err());
        let quick = |out_dir: &Path| Args {
            model: dir.join("no/such/model").display().to_string(),
            out_array: None,
            ..base_args(out_dir)
        };
        let msg = err(quick(&dir.join("missing-folder")));
        assert!(
            msg.contains("--out") && msg.contains("does not exist"),
            "{msg}"
        );
        std::fs::create_dir_all(dir.join("out.png")).unwrap();
        let msg = err(quick(&dir));
        assert!(msg.contains("a folder"), "{msg}");
        std::fs::remove_dir(dir.join("out.png")).unwrap();
        let msg = err(Args {
            out: Some(PathBuf::from("/dev/null")),
            ..quick(&dir)
        });
        assert!(msg.contains("character device"), "{msg}");
        let msg = err(Args {
            out: Some(dir.join("x.gif")),
            ..quick(&dir)
        });
        assert!(msg.contains("use one of .png"), "{msg}");
        let msg = err(Args {
            steps: usize::MAX,
            ..quick(&dir)
        });
        assert!(msg.contains("--steps") && msg.contains("limit"), "{msg}");
        // A UNet config whose sample_size asks for a huge default size.
        let huge = dir.join("huge-unet");
        std::fs::create_dir_all(huge.join("unet")).unwrap();
        std::fs::write(
            huge.join("unet/config.json"),
            br#"{"sample_size": 1000000000}"#,
        )
        .unwrap();
        let msg = err(Args {
            model: huge.display().to_string(),
            height: None,
            width: None,
            ..quick(&dir)
        });
        assert!(
            msg.contains("sample_size") && msg.contains("limit"),
            "{msg}"
        );
        for (h, w) in [(100_000, 100_000), (4_294_967_288, 8), (8, usize::MAX - 7)] {
            let msg = err(Args {
                height: Some(h),
                width: Some(w),
                ..quick(&dir)
            });
            assert!(msg.contains("pixels") && msg.contains("limit"), "{msg}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_inputs_give_clear_errors() {
        let dir = scratch("bad");
        let err = |args: Args| format!("{:#}", run(args).unwrap_err());
        let msg = err(Args {
            height: Some(100),
            ..base_args(&dir)
        });
        assert!(
            msg.contains("--height 100") && msg.contains("multiple of 8"),
            "{msg}"
        );
        let missing = dir.join("missing.png");
        let msg = err(Args {
            image: Some(missing.clone()),
            ..base_args(&dir)
        });
        assert!(
            msg.contains(&missing.display().to_string()) && msg.contains("No such file"),
            "{msg}"
        );
        let corrupt = dir.join("corrupt.png");
        std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
        let msg = err(Args {
            image: Some(corrupt.clone()),
            ..base_args(&dir)
        });
        assert!(msg.contains(&corrupt.display().to_string()), "{msg}");
        let msg = err(Args {
            model: dir.join("no/such/model").display().to_string(),
            ..base_args(&dir)
        });
        assert!(
            msg.contains("neither a valid local path nor a valid repo id"),
            "{msg}"
        );
        // diffusers' StableDiffusionPipeline raises on `denoising_end` / `denoising_start`.
        let msg = err(Args {
            denoising_end: Some(0.5),
            ..base_args(&dir)
        });
        assert!(msg.contains("--denoising-end is for the SDXL"), "{msg}");
        let msg = err(Args {
            denoising_start: Some(0.5),
            ..base_args(&dir)
        });
        assert!(msg.contains("--denoising-start is for SDXL"), "{msg}");
        let msg = err(Args {
            scheduler: Some("NoSuchScheduler".into()),
            ..base_args(&dir)
        });
        assert!(msg.contains("NoSuchScheduler"), "{msg}");
        assert!(
            !dir.join("out.png").exists(),
            "a failed run wrote an output"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    /// `--pipeline StableDiffusionSAGPipeline --sag-scale 1.0` on the `ddim_cfg_off_sag1` case
    /// of tests/fixtures/45-sag (2/255 per pixel, 0.5/255 mean).
    #[test]
    fn generate_with_the_sag_pipeline_matches_the_diffusers_fixture() {
        let dir = scratch("sag");
        run(Args {
            pipeline: Some("StableDiffusionSAGPipeline".into()),
            sag_scale: Some(1.0),
            guidance: Some(1.0),
            steps: 3,
            width: Some(48),
            ..base_args(&dir)
        })
        .unwrap();
        let got = load_float_images(&dir.join("out.safetensors")).unwrap();
        let want =
            load_float_images(&fixtures().join("45-sag/ddim_cfg_off_sag1.safetensors")).unwrap();
        assert_eq!(
            (got.count, got.height, got.width),
            (want.count, want.height, want.width)
        );
        let max = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let mean = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / want.data.len() as f32;
        assert!(
            max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
            "max {max}, mean {mean}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    /// `AutoPipelineForText2Image` on the tiny SD folder is its StableDiffusionPipeline: the
    /// same image as without `--pipeline`.
    #[test]
    fn generate_with_an_auto_pipeline_picks_the_family_task_class() {
        let dir = scratch("auto");
        run(Args {
            pipeline: Some("AutoPipelineForText2Image".into()),
            ..base_args(&dir)
        })
        .unwrap();
        let got = load_float_images(&dir.join("out.safetensors")).unwrap();
        let want =
            load_float_images(&fixtures().join("40-pipeline-runs/sd_txt2img_ddim.safetensors"))
                .unwrap();
        let max = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(got.data.len(), want.data.len());
        assert!(max <= 2.0 / 255.0, "max {max}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_pipeline_flags_give_clear_errors() {
        let dir = scratch("bad-pipeline");
        let err = |args: Args| format!("{:#}", run(args).unwrap_err());
        let msg = err(Args {
            pipeline: Some("StableDiffusionControlNetPipeline".into()),
            ..base_args(&dir)
        });
        assert!(
            msg.contains("--pipeline StableDiffusionControlNetPipeline: unknown pipeline class")
                && msg.contains("StableDiffusionSAGPipeline")
                && msg.contains("AutoPipelineForInpainting"),
            "{msg}"
        );
        let msg = err(Args {
            sag_scale: Some(0.5),
            ..base_args(&dir)
        });
        assert!(
            msg.contains("--sag-scale is for StableDiffusionSAGPipeline"),
            "{msg}"
        );
        let image = fixtures().join("40-pipeline-runs/inputs");
        let first = std::fs::read_dir(&image)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "png"))
            .unwrap();
        let msg = err(Args {
            pipeline: Some("StableDiffusionSAGPipeline".into()),
            image: Some(first),
            ..base_args(&dir)
        });
        assert!(
            msg.contains("--image is for the image-to-image and inpainting classes"),
            "{msg}"
        );
        assert!(
            !dir.join("out.png").exists(),
            "a failed run wrote an output"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
