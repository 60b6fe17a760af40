//! The arguments of the pipelines' `__call__`, their output, the per-step callback, and the
//! pieces of the denoising flow the pipelines share (noise, guidance, timesteps, decoding).

use crate::error::PipelineError;
use crate::image_processor::{FloatImages, VaeImageProcessor};
use crate::pipeline::{DiffusionPipeline, PipelineClass};
use burn::tensor::{Device, Tensor};
use diff_models::AutoencoderKL;
use diff_schedulers::precision::round_tensor;
use diff_schedulers::{NoiseDtype, Scheduler, TorchGenerator, randn_tensor, to_tensor};
use image::RgbImage;

/// Where the random numbers come from: diffusers' `generator=`.
#[derive(Debug, Clone)]
pub enum Generators {
    /// One `torch.Generator("cpu").manual_seed(seed)` for the whole batch.
    Seed(u64),
    /// One generator per image (`generator=[g0, g1, ...]`), each seeded.
    Seeds(Vec<u64>),
    /// No seed: a generator seeded from the OS (`generator=None`).
    Random,
}

impl Generators {
    pub(crate) fn build(&self) -> Vec<TorchGenerator> {
        match self {
            Generators::Seed(s) => vec![TorchGenerator::new(*s)],
            Generators::Seeds(seeds) => seeds.iter().map(|s| TorchGenerator::new(*s)).collect(),
            Generators::Random => vec![TorchGenerator::from_entropy()],
        }
    }
}

/// What a pipeline returns (`output_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputType {
    /// 8-bit images (`"pil"`).
    #[default]
    Pil,
    /// Float images in [0, 1], `[N, H, W, 3]` (`"np"`).
    Np,
    /// The final latents, not decoded (`"latent"`).
    Latent,
}

/// The arguments of `__call__` that users use, with diffusers' defaults where `None`.
#[derive(Debug, Clone)]
pub struct CallArgs {
    /// `prompt`: one string per batch item (ignored when `prompt_embeds` is given).
    pub prompt: Vec<String>,
    /// SDXL `prompt_2` (defaults to `prompt`).
    pub prompt_2: Option<Vec<String>>,
    /// `negative_prompt`: one string (used for every prompt) or one per prompt.
    pub negative_prompt: Option<Vec<String>>,
    /// SDXL `negative_prompt_2` (defaults to `negative_prompt`).
    pub negative_prompt_2: Option<Vec<String>>,
    /// Precomputed `prompt_embeds` `[B, 77, C]`.
    pub prompt_embeds: Option<Tensor<3>>,
    /// Precomputed `negative_prompt_embeds`.
    pub negative_prompt_embeds: Option<Tensor<3>>,
    /// SDXL precomputed `pooled_prompt_embeds` `[B, P]`.
    pub pooled_prompt_embeds: Option<Tensor<2>>,
    /// SDXL precomputed `negative_pooled_prompt_embeds`.
    pub negative_pooled_prompt_embeds: Option<Tensor<2>>,
    /// `num_images_per_prompt` (default 1).
    pub num_images_per_prompt: usize,
    /// `height` (default `unet.sample_size * vae_scale_factor`; must be a multiple of 8).
    pub height: Option<usize>,
    /// `width` (as height).
    pub width: Option<usize>,
    /// `num_inference_steps` (default 50).
    pub num_inference_steps: usize,
    /// `guidance_scale` (default 7.5, SDXL 5.0); classifier-free guidance when > 1.
    pub guidance_scale: Option<f32>,
    /// `guidance_rescale` (default 0).
    pub guidance_rescale: f32,
    /// `clip_skip`.
    pub clip_skip: Option<usize>,
    /// `generator`.
    pub generator: Generators,
    /// Initial `latents` `[B*n, C, h, w]` (not yet scaled by `init_noise_sigma`).
    pub latents: Option<Tensor<4>>,
    /// `eta` (DDIM).
    pub eta: f32,
    /// img2img / inpaint `strength` (default 0.8 SD img2img, 0.3 SDXL img2img, 1.0 SD inpaint,
    /// 0.9999 SDXL inpaint).
    pub strength: Option<f32>,
    /// img2img / inpaint `image`.
    pub image: Option<Vec<RgbImage>>,
    /// SDXL img2img / inpaint `image` given as latents `[B, C, h, w]` (used instead of `image`):
    /// diffusers takes a latent-channel tensor as is, without the VAE, e.g. a base run's
    /// `output_type="latent"` output handed to the refiner with `denoising_start`.
    pub image_latents: Option<Tensor<4>>,
    /// inpaint `mask_image` (white = repaint).
    pub mask_image: Option<Vec<RgbImage>>,
    /// inpaint `masked_image_latents` `[B, C, h, w]` (already scaled by the VAE's
    /// `scaling_factor`): used instead of VAE-encoding `image * (mask < 0.5)`, so no random
    /// draw is made for it.
    pub masked_image_latents: Option<Tensor<4>>,
    /// inpaint `padding_mask_crop`: crop image and mask to the masked region grown by this
    /// many pixels (and to the generation aspect ratio), generate there, and paste the result
    /// back onto the original image (`get_crop_region`, `resize_mode="fill"`,
    /// `apply_overlay`). As in diffusers it needs one image, one mask and `OutputType::Pil`;
    /// the output images then have the original image's size.
    pub padding_mask_crop: Option<usize>,
    /// SDXL `original_size` (height, width); default (H, W).
    pub original_size: Option<(usize, usize)>,
    /// SDXL `crops_coords_top_left`; default (0, 0).
    pub crops_coords_top_left: (usize, usize),
    /// SDXL `target_size`; default (H, W).
    pub target_size: Option<(usize, usize)>,
    /// SDXL `negative_original_size`.
    pub negative_original_size: Option<(usize, usize)>,
    /// SDXL `negative_crops_coords_top_left`.
    pub negative_crops_coords_top_left: (usize, usize),
    /// SDXL `negative_target_size`.
    pub negative_target_size: Option<(usize, usize)>,
    /// SDXL img2img `aesthetic_score` (default 6.0).
    pub aesthetic_score: f32,
    /// SDXL img2img `negative_aesthetic_score` (default 2.5).
    pub negative_aesthetic_score: f32,
    /// SDXL `denoising_end` in (0, 1): stop early, leaving the rest to a refiner.
    pub denoising_end: Option<f32>,
    /// SDXL img2img `denoising_start` in (0, 1): start part-way, without adding noise to the
    /// init latents (the refiner half of an ensemble of experts).
    pub denoising_start: Option<f32>,
    /// `output_type`.
    pub output_type: OutputType,
}

impl Default for CallArgs {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            prompt_2: None,
            negative_prompt: None,
            negative_prompt_2: None,
            prompt_embeds: None,
            negative_prompt_embeds: None,
            pooled_prompt_embeds: None,
            negative_pooled_prompt_embeds: None,
            num_images_per_prompt: 1,
            height: None,
            width: None,
            num_inference_steps: 50,
            guidance_scale: None,
            guidance_rescale: 0.0,
            clip_skip: None,
            generator: Generators::Random,
            latents: None,
            eta: 0.0,
            strength: None,
            image: None,
            image_latents: None,
            mask_image: None,
            masked_image_latents: None,
            padding_mask_crop: None,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            negative_original_size: None,
            negative_crops_coords_top_left: (0, 0),
            negative_target_size: None,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
            denoising_end: None,
            denoising_start: None,
            output_type: OutputType::Pil,
        }
    }
}

impl CallArgs {
    /// Arguments for one prompt with everything else at its default.
    pub fn prompt(prompt: impl Into<String>) -> Self {
        Self {
            prompt: vec![prompt.into()],
            ..Self::default()
        }
    }
}

/// What `__call__` returns.
#[derive(Debug, Clone)]
pub struct PipelineOutput {
    /// Float images in [0, 1] (for `Pil` and `Np`), `None` for `Latent`.
    pub images: Option<FloatImages>,
    /// The final latents `[N, C, h, w]` (always kept: cheap, and what `Latent` returns).
    pub latents: Tensor<4>,
    /// The safety checker's flags, `None` when no checker ran.
    pub nsfw_content_detected: Option<Vec<bool>>,
    /// Whether the callback stopped the loop early.
    pub interrupted: bool,
}

impl PipelineOutput {
    /// The images as 8-bit RGB (empty for `Latent`).
    pub fn rgb8(&self) -> Vec<RgbImage> {
        self.images
            .as_ref()
            .map(FloatImages::to_rgb8_all)
            .unwrap_or_default()
    }
}

/// What the per-step callback sees (`callback_on_step_end(pipe, i, t, {"latents": ...})`).
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// Step index `i` (0-based).
    pub step: usize,
    /// Number of steps in the loop.
    pub total: usize,
    /// The timestep `t`.
    pub timestep: f64,
    /// The latents after this step.
    pub latents: &'a Tensor<4>,
}

/// What the callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    /// Go on.
    Continue,
    /// Stop after this step (`pipe._interrupt = True`).
    Stop,
}

/// A per-step callback.
pub type StepCallback<'a> = dyn FnMut(&StepInfo<'_>) -> StepControl + 'a;

/// Draws `randn_tensor(shape, generator, dtype=dtype)`: torch makes half and bfloat16 normals
/// in that dtype (float32 Box–Muller rounded, with its own tail handling when the count is not
/// a multiple of 16), so a pipeline loaded in float16 must draw in float16 to get diffusers'
/// numbers. The values come back in a float32 tensor (they are exact in float32).
pub(crate) fn randn_as(
    shape: [usize; 4],
    generators: &mut [TorchGenerator],
    dtype: NoiseDtype,
    device: &Device,
) -> Result<Tensor<4>, PipelineError> {
    let values = randn_tensor(&shape, generators, dtype)?;
    Ok(to_tensor(values, shape, device)?)
}

/// The dtype diffusers' `randn_tensor` is asked for in a pipeline whose models are in `dtype`
/// (`prompt_embeds.dtype` for the initial latents, `model_output.dtype` for a scheduler's
/// noise).
pub fn noise_dtype(dtype: burn::tensor::DType) -> NoiseDtype {
    match dtype {
        burn::tensor::DType::F16 => NoiseDtype::Float16,
        burn::tensor::DType::BF16 => NoiseDtype::BFloat16,
        _ => NoiseDtype::Float32,
    }
}

/// `noise_pred_uncond + g * (noise_pred_text - noise_pred_uncond)`, then `rescale_noise_cfg`
/// when `guidance_rescale > 0`. With a float16 / bfloat16 UNet (`dtype`) torch rounds each op to
/// that dtype (the guidance scale, a Python float, stays float32 in the product).
pub fn guide(
    noise: Tensor<4>,
    guidance_scale: f32,
    guidance_rescale: f32,
    dtype: NoiseDtype,
) -> Tensor<4> {
    let r = |t: Tensor<4>| round_tensor(t, dtype);
    let half = noise.dims()[0] / 2;
    let uncond = noise.clone().narrow(0, 0, half);
    let text = noise.narrow(0, half, half);
    let cfg = r(uncond.clone() + r(r(text.clone() - uncond).mul_scalar(guidance_scale)));
    if guidance_rescale > 0.0 {
        // rescale_noise_cfg's std and blend run in the model dtype too; rounding its result
        // once is an approximation of torch's per-op rounding there.
        r(rescale_noise_cfg(cfg, text, guidance_rescale))
    } else {
        cfg
    }
}

/// diffusers' `rescale_noise_cfg`: std over all but the batch dim, unbiased.
fn rescale_noise_cfg(cfg: Tensor<4>, text: Tensor<4>, phi: f32) -> Tensor<4> {
    let std = |x: Tensor<4>| {
        let [b, c, h, w] = x.dims();
        let flat = x.reshape([b, c * h * w]);
        let n = (c * h * w) as f32;
        let mean = flat.clone().mean_dim(1);
        let var = (flat - mean)
            .powi_scalar(2)
            .sum_dim(1)
            .div_scalar((n - 1.0).max(1.0));
        var.sqrt().reshape([b, 1, 1, 1])
    };
    let std_text = std(text);
    let std_cfg = std(cfg.clone());
    let rescaled = cfg.clone() * (std_text / std_cfg);
    rescaled.mul_scalar(phi) + cfg.mul_scalar(1.0 - phi)
}

/// img2img's `get_timesteps`: the tail of the schedule for `strength`, and sets the
/// scheduler's begin index. Returns the timesteps to run.
pub(crate) fn strength_timesteps(
    scheduler: &mut Scheduler,
    num_inference_steps: usize,
    strength: f32,
) -> Vec<f64> {
    let init =
        ((num_inference_steps as f64 * py_float(strength)) as usize).min(num_inference_steps);
    let t_start = num_inference_steps.saturating_sub(init);
    let order = scheduler.order();
    let all = scheduler.timesteps().to_vec();
    let begin = (t_start * order).min(all.len());
    scheduler.set_begin_index(begin);
    all.get(begin..).map(<[f64]>::to_vec).unwrap_or_default()
}

/// `num_train_timesteps` of the scheduler config (1000 when absent).
pub(crate) fn num_train_timesteps(scheduler: &Scheduler) -> f64 {
    scheduler
        .config_json()
        .ok()
        .and_then(|c| {
            c.get("num_train_timesteps")
                .and_then(serde_json::Value::as_f64)
        })
        .unwrap_or(1000.0)
}

/// SDXL's discrete cutoff `int(round(T - fraction * T))` (Python's `round`: ties to even).
pub(crate) fn timestep_cutoff(scheduler: &Scheduler, fraction: f32) -> f64 {
    let t = num_train_timesteps(scheduler);
    (t - py_float(fraction) * t).round_ties_even()
}

/// `vae.encode(image).latent_dist.sample(generator)`: one sample for the batch with one
/// generator, or item by item with a list (as `retrieve_latents` per `image[i:i+1]`), with the
/// posterior's noise drawn in `dtype` (the VAE's dtype: `DiagonalGaussianDistribution.sample`
/// draws with `dtype=self.parameters.dtype`).
pub(crate) fn encode_vae_image_as(
    vae: &AutoencoderKL,
    image: Tensor<4>,
    generators: &mut [TorchGenerator],
    dtype: NoiseDtype,
    device: &Device,
) -> Result<Tensor<4>, PipelineError> {
    let encode_one =
        |img: Tensor<4>, gens: &mut [TorchGenerator]| -> Result<Tensor<4>, PipelineError> {
            let dist = vae.encode(img)?;
            let shape = dist.mean.dims();
            let noise = randn_as(shape, gens, dtype, device)?;
            dist.sample(noise)
                .ok_or_else(|| PipelineError::arg("image", "VAE posterior and noise shapes differ"))
        };
    let latents = if generators.len() > 1 {
        let n = image.dims()[0];
        let mut parts = Vec::with_capacity(n);
        for (i, g) in generators.iter_mut().enumerate().take(n) {
            parts.push(encode_one(
                image.clone().narrow(0, i, 1),
                std::slice::from_mut(g),
            )?);
        }
        Tensor::cat(parts, 0)
    } else {
        encode_one(image, generators)?
    };
    Ok(latents.mul_scalar(vae.scaling_factor() as f32))
}

impl DiffusionPipeline {
    /// The end of a `call` with `output_type="np"` on final `latents`: unscale, VAE decode (in
    /// the pipeline's dtype, or with a float32 copy of a float16 `force_upcast` VAE for SDXL, as
    /// diffusers does), safety checker where the pipeline has one, post-processing. Returns the
    /// images and the checker's flags.
    pub fn decode_latents(
        &self,
        latents: Tensor<4>,
    ) -> Result<(FloatImages, Option<Vec<bool>>), PipelineError> {
        let vae = self.require(self.vae(), "vae")?;
        decode_latents(self, vae, latents)
    }
}

/// Decodes final latents, runs the safety checker (SD 1.x / 2.x pipelines that have one) and
/// post-processes (`output_type` `Pil` / `Np`): flagged images come back black, as diffusers
/// zeroes them and skips their denormalisation.
pub(crate) fn decode_latents(
    pipe: &DiffusionPipeline,
    vae: &AutoencoderKL,
    latents: Tensor<4>,
) -> Result<(FloatImages, Option<Vec<bool>>), PipelineError> {
    let device = latents.device();
    let mut z = latents;
    // VAEs with latents_mean / latents_std (some SDXL fine-tunes): latents * std / sf + mean.
    let stats = |key: &str| -> Option<Vec<f32>> {
        pipe.config_value("vae", key)?
            .as_array()?
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32))
            .collect()
    };
    let sf = vae.scaling_factor() as f32;
    // SDXL pipelines decode with the VAE upcast to float32 when it is float16 with
    // `force_upcast` (the latents are cast to float32 first); otherwise the decode and the
    // latents' unscaling run in the VAE's dtype, rounded per op as torch does.
    let upcast = pipe.class().is_xl()
        && vae.settings.dtype == burn::tensor::DType::F16
        && vae.force_upcast();
    let half = if upcast {
        NoiseDtype::Float32
    } else {
        noise_dtype(vae.settings.dtype)
    };
    let upcast_vae = upcast.then(|| upcast_to_f32(vae));
    let vae = upcast_vae.as_ref().unwrap_or(vae);
    match (stats("latents_mean"), stats("latents_std")) {
        (Some(mean), Some(std)) if pipe.class().is_xl() => {
            let c = mean.len();
            let mean = to_tensor(mean, [1, c, 1, 1], &device)?;
            let std = to_tensor(std, [1, c, 1, 1], &device)?;
            z = z * std.div_scalar(sf) + mean;
        }
        _ => z = z.div_scalar(sf),
    }
    if let Some(shift) = vae.shift_factor() {
        z = z.add_scalar(shift as f32);
    }
    let z = round_tensor(z, half);
    let image = vae.decode(z)?.cast(burn::tensor::DType::F32);
    let processor = VaeImageProcessor::new(pipe.vae_scale_factor());
    let checker = if pipe.class().is_xl() {
        None
    } else {
        pipe.safety_checker()
    };
    let Some(checker) = checker else {
        return Ok((processor.postprocess_as(image, None, half)?, None));
    };
    let extractor = pipe.require(pipe.feature_extractor(), "feature_extractor")?;
    // run_safety_checker: the PIL images (denormalised, rounded to u8) through the CLIP image
    // processor give clip_input; the checker zeroes flagged images of the decoder output.
    let pil = processor.postprocess(image.clone(), None)?.to_rgb8_all();
    let views: Vec<diff_models::image_processor::ImageU8<'_>> = pil
        .iter()
        .map(|img| diff_models::image_processor::ImageU8 {
            width: img.width() as usize,
            height: img.height() as usize,
            channels: 3,
            data: img.as_raw(),
        })
        .collect();
    let clip_input = extractor.preprocess(&views, &device)?;
    let checked = checker.forward(clip_input, image)?;
    if checked.has_nsfw_concepts.iter().any(|f| *f) {
        tracing::warn!(
            "Potential NSFW content was detected in one or more images. A black image will be returned instead. Try again with a different prompt and/or seed."
        );
    }
    let denormalize: Vec<bool> = checked.has_nsfw_concepts.iter().map(|f| !f).collect();
    let images = processor.postprocess_as(checked.images, Some(&denormalize), half)?;
    Ok((images, Some(checked.has_nsfw_concepts)))
}

/// A float32 copy of a VAE (`pipe.vae.to(torch.float32)`, what SDXL's `upcast_vae` does for
/// the decode): every float parameter widened exactly, computing in float32.
fn upcast_to_f32(vae: &AutoencoderKL) -> AutoencoderKL {
    struct ToF32;
    impl burn::module::ModuleMapper for ToF32 {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            param.map(|t| t.cast(burn::tensor::DType::F32))
        }
    }
    let mut out = burn::module::Module::map(vae.clone(), &mut ToF32);
    out.settings.dtype = burn::tensor::DType::F32;
    out
}

/// diffusers' `check_inputs` for the sizes: both multiples of 8.
pub(crate) fn check_size(height: usize, width: usize) -> Result<(), PipelineError> {
    if !height.is_multiple_of(8) || !width.is_multiple_of(8) || height == 0 || width == 0 {
        return Err(PipelineError::arg(
            "height/width",
            format!("`height` and `width` have to be divisible by 8 but are {height} and {width}."),
        ));
    }
    Ok(())
}

/// The default guidance scale of a class.
pub(crate) fn default_guidance(class: PipelineClass) -> f32 {
    match class {
        // SDXL inpaint keeps SD's 7.5 (diffusers 0.42.1's `__call__` default).
        PipelineClass::StableDiffusionXLInpaint => 7.5,
        c if c.is_xl() => 5.0,
        _ => 7.5,
    }
}

/// The Python float a user's `f32` argument stands for: the shortest decimal that rounds to it,
/// read as `f64` (`0.7f32` is 0.699999988 as `f64::from`, but the user meant Python's 0.7, and
/// `int(10 * 0.7)` must give 7, not 6).
pub(crate) fn py_float(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}
