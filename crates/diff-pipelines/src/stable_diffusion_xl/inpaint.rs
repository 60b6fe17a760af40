//! `StableDiffusionXLInpaintPipeline.__call__` (diffusers 0.42.1
//! `pipeline_stable_diffusion_xl_inpaint.py`): `prepare_latents` (image latents, noise,
//! strength), `prepare_mask_latents` (the mask at latent size and the masked image's latents,
//! doubled for CFG), and per step either the 9-channel UNet input `[latents, mask,
//! masked_image_latents]` or, for a 4-channel UNet (the base or the refiner used for
//! inpainting), the known region blended back after each step (`InpaintHook`).
//!
//! The order of random draws is diffusers': the init image's VAE sample (only for a 4-channel
//! UNet, or when strength < 1 and no latents are given), the noise, then the masked image's VAE
//! sample (drawn whenever the image is pixels and no `masked_image_latents` are given, even for
//! a 4-channel UNet that never reads it). The initial noise is drawn in the model dtype
//! (`prompt_embeds.dtype`); the VAE samples in float32 when the VAE has `force_upcast` (SDXL's
//! `_encode_vae_image` upcasts it), else in its dtype.

use super::{Task, check_latents, denoise_loop, encode, prepare_timesteps};
use crate::call::{CallArgs, PipelineOutput, StepCallback, check_size};
use crate::decode::finish;
use crate::error::PipelineError;
use crate::image_processor::{CropBox, VaeImageProcessor};
use crate::inpaint_common::{
    InpaintHook, Overlay, double_for_cfg, nearest_downsample, padding_mask_crop,
};
use crate::latents::{
    encode_vae_image_as, generators_for, noise_dtype, randn_as, unet_in_channels, unet_sample_size,
    vae_latent_channels,
};
use crate::pipeline::DiffusionPipeline;
use crate::timesteps::check_strength;
use burn::tensor::Tensor;
use diff_models::AutoencoderKL;
use diff_schedulers::{NoiseDtype, Scheduler, TorchGenerator};

/// `StableDiffusionXLInpaintPipeline.__call__`.
pub(crate) fn call(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    callback: Option<&mut StepCallback<'_>>,
) -> Result<PipelineOutput, PipelineError> {
    let unet = pipe.require(pipe.unet(), "unet")?;
    let vae = pipe.require(pipe.vae(), "vae")?;
    let factor = pipe.vae_scale_factor();

    // 0. Default height and width to unet
    let default = unet_sample_size(unet, 128) * factor;
    let (height, width) = (
        args.height.unwrap_or(default),
        args.width.unwrap_or(default),
    );

    // 1. Check inputs
    check_size(height, width)?;
    let strength = args.img2img.strength.unwrap_or(0.9999);
    check_strength(strength)?;

    // 2. Define call parameters (SDXL inpaint keeps SD's default guidance scale 7.5) and
    // 3. Encode input prompt
    let encoded = encode(pipe, unet, args, 7.5)?;
    let (total, do_cfg) = (encoded.total, encoded.do_cfg);
    let mut gens = generators_for(args, total)?;

    // 4. set timesteps
    let mut scheduler = pipe.require(pipe.scheduler(), "scheduler")?.clone();
    let (timesteps, first_t) = prepare_timesteps(&mut scheduler, args, Task::Inpaint, strength)?;

    // 5. Preprocess mask and image
    let processor = VaeImageProcessor::new(factor);
    let inputs = Inputs::preprocess(
        pipe,
        args,
        unet_in_channels(unet),
        &processor,
        (height, width),
    )?;

    // 6. Prepare latent variables
    let latent_channels = vae_latent_channels(vae);
    let shape = [total, latent_channels, height / factor, width / factor];
    let prepared = prepare_latents(
        pipe,
        args,
        &inputs,
        shape,
        strength,
        &mut gens,
        (&scheduler, first_t),
    )?;

    // 7. Prepare mask latent variables
    let (mask, masked_image_latents) =
        prepare_mask_latents(pipe, args, &inputs, (total, do_cfg), &mut gens)?;

    // 8. Check that sizes of mask, masked image and latents match
    check_sizes(
        &prepared,
        &mask,
        masked_image_latents.as_ref(),
        (height, width, factor),
    )?;
    check_latents(&prepared.latents, total, latent_channels)?;
    let mut hook = InpaintHook {
        mask: double_for_cfg(mask, do_cfg),
        masked_image_latents,
        image_latents: if inputs.nine_channel {
            None
        } else {
            prepared.image_latents
        },
        noise: prepared.noise,
        nine_channel: inputs.nine_channel,
        total,
        blend_dtype: NoiseDtype::Float32,
    };

    // 9. Prepare extra step kwargs: in `denoise`.
    // 10. Prepare added time ids & embeddings (sizes default to the latents' size in pixels)
    let [_, _, lh, lw] = prepared.latents.dims();
    let denoise = denoise_loop(
        pipe,
        unet,
        args,
        encoded,
        (lh * factor, lw * factor),
        Task::Inpaint,
    )?;

    // 11. Denoising loop
    let denoised = crate::pag::run_loop(
        pipe,
        args,
        denoise,
        (&mut scheduler, &timesteps),
        (prepared.latents, &mut gens),
        &mut hook,
        callback,
    )?;

    // 12. Decode, post-process, paste back (`padding_mask_crop`).
    let overlay = inputs.crop.map(|crop| Overlay {
        crop,
        images: args.img2img.image.clone().unwrap_or_default(),
        masks: inputs.masks.to_vec(),
    });
    finish(pipe, vae, args.output_type, denoised, overlay.as_ref())
}

/// The preprocessed image and mask of one run.
struct Inputs<'a> {
    /// A 9-channel UNet (inputs concatenated) rather than a 4-channel one (blend).
    nine_channel: bool,
    /// The masks given.
    masks: &'a [image::RgbImage],
    /// `padding_mask_crop`'s crop box.
    crop: Option<CropBox>,
    /// The image as pixels in [-1, 1] (`None` when given as latents).
    init_image: Option<Tensor<4>>,
    /// The mask at image size.
    mask_condition: Tensor<4>,
    /// `init_image * (mask < 0.5)` (`None` with `masked_image_latents` or image latents).
    masked_image: Option<Tensor<4>>,
    /// The VAE's latent channels.
    latent_channels: usize,
    /// The dtype of the VAE's posterior draws.
    vae_noise: NoiseDtype,
    /// The generation size `(height, width)`.
    size: (usize, usize),
}

impl<'a> Inputs<'a> {
    /// The UNet's channel check, then image and mask preprocessing (with `padding_mask_crop`'s
    /// crop box and `resize_mode="fill"`).
    fn preprocess(
        pipe: &DiffusionPipeline,
        args: &'a CallArgs,
        unet_channels: usize,
        processor: &VaeImageProcessor,
        (height, width): (usize, usize),
    ) -> Result<Self, PipelineError> {
        let vae = pipe.require(pipe.vae(), "vae")?;
        let device = pipe.device().clone();
        let latent_channels = vae_latent_channels(vae);
        let nine_channel = nine_channel(unet_channels, latent_channels)?;
        let masks =
            args.inpaint.mask_image.as_ref().ok_or_else(|| {
                PipelineError::arg("mask_image", "inpainting needs a `mask_image`")
            })?;
        // SDXL upcasts a `force_upcast` VAE to float32 for encoding.
        let vae_noise = if vae.force_upcast() {
            NoiseDtype::Float32
        } else {
            noise_dtype(pipe.dtype())
        };
        let image = &args.img2img;
        let (crop, resize_mode) = padding_mask_crop(
            args,
            image.image.as_deref().unwrap_or_default(),
            masks,
            image.image_latents.is_some(),
            (height, width),
        )?;
        let init_image = match (&image.image_latents, &image.image) {
            (Some(_), _) => None,
            (None, Some(images)) => Some(processor.preprocess_with(
                images,
                Some(height),
                Some(width),
                resize_mode,
                crop,
                &device,
            )?),
            (None, None) => {
                return Err(PipelineError::arg("image", "inpainting needs an `image`"));
            }
        };
        let mask_condition =
            processor.preprocess_mask_with(masks, height, width, resize_mode, crop, &device)?;
        // `init_image * (mask < 0.5)`: the known region only, unless its latents are given. An
        // image given as latents cannot be masked.
        let masked_image = match (&args.inpaint.masked_image_latents, &init_image) {
            (Some(_), _) | (None, None) => None,
            (None, Some(img)) => Some(img.clone() * mask_condition.clone().lower_elem(0.5).float()),
        };
        Ok(Self {
            nine_channel,
            masks,
            crop,
            init_image,
            mask_condition,
            masked_image,
            latent_channels,
            vae_noise,
            size: (height, width),
        })
    }
}

/// Whether the UNet takes `[latents, mask, masked_image_latents]` (9 channels) or the latents
/// alone (4), with diffusers' errors for anything else.
fn nine_channel(unet_channels: usize, latent_channels: usize) -> Result<bool, PipelineError> {
    match unet_channels {
        4 => Ok(false),
        9 => {
            // latents + one mask channel + the masked image's latents.
            let sum = latent_channels + 1 + latent_channels;
            if sum != unet_channels {
                return Err(PipelineError::arg(
                    "unet",
                    format!(
                        "Incorrect configuration settings! The config of `pipeline.unet` expects {unet_channels} but received `num_channels_latents`: {latent_channels} + `num_channels_mask`: 1 + `num_channels_masked_image`: {latent_channels} = {sum}. Please verify the config of `pipeline.unet` or your `mask_image` or `image` input."
                    ),
                ));
            }
            Ok(true)
        }
        other => Err(PipelineError::arg(
            "unet",
            format!("The unet should have either 4 or 9 input channels, not {other}."),
        )),
    }
}

/// `t` repeated along the batch up to `total` rows (`t.repeat(total // n, 1, 1, 1)`), with
/// diffusers' error when `total` is not a multiple. More rows than `total` is an error here
/// (diffusers fails later, inside the UNet).
fn repeat_to(t: Tensor<4>, total: usize, what: &str) -> Result<Tensor<4>, PipelineError> {
    let n = t.dims()[0].max(1);
    if n == total {
        return Ok(t);
    }
    if n > total || !total.is_multiple_of(n) {
        return Err(PipelineError::arg(
            what,
            format!(
                "The passed {what} and the required batch size don't match: {n} cannot be duplicated to a total batch size of {total}. Make sure the number of {what} that you pass divides the total requested batch size."
            ),
        ));
    }
    Ok(t.repeat_dim(0, total / n))
}

/// What `prepare_latents` gives.
struct Prepared {
    /// The initial latents.
    latents: Tensor<4>,
    /// The clean image latents (for the blend, or the start with `denoising_start`).
    image_latents: Option<Tensor<4>>,
    /// The noise the blended-back image latents are noised with.
    noise: Tensor<4>,
}

/// SDXL inpaint `prepare_latents`: the image latents (the given ones, or a VAE sample for a
/// 4-channel UNet or strength < 1), then pure noise at strength 1, the image latents noised to
/// the first timestep below it, or (with `denoising_start`) the image latents as they are.
fn prepare_latents(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    inputs: &Inputs<'_>,
    shape: [usize; 4],
    strength: f32,
    gens: &mut [TorchGenerator],
    (scheduler, first_t): (&Scheduler, f64),
) -> Result<Prepared, PipelineError> {
    let vae = pipe.require(pipe.vae(), "vae")?;
    let device = pipe.device().clone();
    let model_noise = noise_dtype(pipe.dtype());
    let total = shape[0];
    let is_strength_max = strength == 1.0;
    let add_noise = args.xl.denoising_start.is_none();
    let image_latents = match (&args.img2img.image_latents, &inputs.init_image) {
        (Some(l), _) => Some(repeat_to(l.clone(), total, "image")?),
        (None, Some(img))
            if !inputs.nine_channel || (args.latents.is_none() && !is_strength_max) =>
        {
            let l = encode_vae_image_as(vae, img.clone(), gens, inputs.vae_noise, &device)?;
            Some(repeat_to(l, total, "image")?)
        }
        _ => None,
    };
    let sigma0 = scheduler.init_noise_sigma();
    let (latents, noise) = match (&args.latents, add_noise) {
        (None, true) => {
            let noise = randn_as(shape, gens, model_noise, &device)?;
            let latents = if is_strength_max {
                // Pure noise start, scaled by the scheduler's init sigma.
                noise.clone().mul_scalar(sigma0)
            } else {
                let il = image_latents.clone().ok_or_else(|| {
                    PipelineError::arg("image", "strength < 1 needs the image's latents")
                })?;
                scheduler.add_noise(il, noise.clone(), &vec![first_t; total])?
            };
            (latents, noise)
        }
        (Some(l), true) => (l.clone().mul_scalar(sigma0), l.clone()),
        (_, false) => {
            // denoising_start: continue from the image latents as they are; the noise is
            // still drawn (it noises the blended-back region).
            let noise = randn_as(shape, gens, model_noise, &device)?;
            let latents = image_latents.clone().ok_or_else(|| {
                PipelineError::arg(
                    "denoising_start",
                    "`denoising_start` continues from the image's latents, which a 9-channel UNet at strength 1.0 never computes: pass `image` as latents or a strength below 1",
                )
            })?;
            (latents, noise)
        }
    };
    Ok(Prepared {
        latents,
        image_latents,
        noise,
    })
}

/// `prepare_mask_latents`: the mask at latent size repeated to the batch (doubled for CFG by
/// the caller), and the masked image's latents (given, or a VAE sample), repeated and doubled.
fn prepare_mask_latents(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    inputs: &Inputs<'_>,
    (total, do_cfg): (usize, bool),
    gens: &mut [TorchGenerator],
) -> Result<(Tensor<4>, Option<Tensor<4>>), PipelineError> {
    let vae: &AutoencoderKL = pipe.require(pipe.vae(), "vae")?;
    let device = pipe.device().clone();
    let factor = pipe.vae_scale_factor();
    let (height, width) = inputs.size;
    let mask = nearest_downsample(
        inputs.mask_condition.clone(),
        height / factor,
        width / factor,
    );
    let mask = repeat_to(mask, total, "masks")?;
    let latent_channels = inputs.latent_channels;
    let masked_image_latents = match (&args.inpaint.masked_image_latents, &inputs.masked_image) {
        // Given latents are used as they are: no VAE pass, no random draw.
        (Some(given), _) => {
            if given.dims()[1] != latent_channels {
                return Err(PipelineError::arg(
                    "masked_image_latents",
                    format!(
                        "masked_image_latents must have the VAE's {latent_channels} latent channels, got shape {:?}",
                        given.dims()
                    ),
                ));
            }
            Some(double_for_cfg(
                repeat_to(given.clone(), total, "images")?,
                do_cfg,
            ))
        }
        (None, Some(img)) => {
            let l = encode_vae_image_as(vae, img.clone(), gens, inputs.vae_noise, &device)?;
            Some(double_for_cfg(repeat_to(l, total, "images")?, do_cfg))
        }
        (None, None) => None,
    };
    if inputs.nine_channel && masked_image_latents.is_none() {
        return Err(PipelineError::arg(
            "image",
            "a 9-channel inpainting UNet needs the masked image, but `image` was given as latents, which cannot be masked",
        ));
    }
    Ok((mask, masked_image_latents))
}

/// Everything concatenated or blended with the latents must have their spatial size.
fn check_sizes(
    prepared: &Prepared,
    mask: &Tensor<4>,
    masked_image_latents: Option<&Tensor<4>>,
    (height, width, factor): (usize, usize, usize),
) -> Result<(), PipelineError> {
    let [_, _, lh, lw] = prepared.latents.dims();
    let sizes = [
        ("mask_image", Some(mask.dims())),
        (
            "masked_image_latents",
            masked_image_latents.map(|t| t.dims()),
        ),
        ("image", prepared.image_latents.as_ref().map(|t| t.dims())),
    ];
    for (what, dims) in sizes {
        if let Some([_, _, h, w]) = dims
            && (h, w) != (lh, lw)
        {
            return Err(PipelineError::arg(
                what,
                format!(
                    "{what} is {h}x{w} in latent space but the latents are {lh}x{lw} (height {height}, width {width}, VAE scale factor {factor})"
                ),
            ));
        }
    }
    Ok(())
}
