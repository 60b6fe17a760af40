//! The inpaint-only parts of `StableDiffusionXLInpaintPipeline.__call__` (diffusers 0.42.1):
//! `prepare_latents` (image latents, noise, strength), `prepare_mask_latents` (the mask at
//! latent size and the masked image's latents, doubled for CFG), and per step either the
//! 9-channel UNet input `[latents, mask, masked_image_latents]` or, for a 4-channel UNet (the
//! base or the refiner used for inpainting), the known region blended back after each step.
//!
//! The order of random draws is diffusers': the init image's VAE sample (only for a 4-channel
//! UNet, or when strength < 1 and no latents are given), the noise, then the masked image's VAE
//! sample (drawn whenever the image is pixels and no `masked_image_latents` are given, even for
//! a 4-channel UNet that never reads it). The initial noise is drawn in the model dtype
//! (`prompt_embeds.dtype`); the VAE samples in float32 when the VAE has `force_upcast` (SDXL's
//! `_encode_vae_image` upcasts it), else in its dtype.
//!
//! The image and mask preprocessing (`resize_mode`, `padding_mask_crop`'s crop box and the
//! final `apply_overlay`), the VAE sampling and the nearest-neighbour mask resize are the SD
//! inpaint pipeline's (`image_processor.rs`, `call.rs`, `stable_diffusion.rs`).

use crate::call::{CallArgs, encode_vae_image_as, noise_dtype, randn_as};
use crate::error::PipelineError;
use crate::image_processor::{CropBox, FloatImages, VaeImageProcessor};
use crate::pipeline::DiffusionPipeline;
use crate::stable_diffusion::{apply_overlays, nearest_downsample, padding_mask_crop};
use burn::tensor::Tensor;
use diff_models::{AutoencoderKL, UNet2DConditionModel};
use diff_schedulers::{NoiseDtype, Scheduler, TorchGenerator};
use image::RgbImage;

/// The mask state of one SDXL inpaint run.
pub(crate) struct XlInpaint {
    /// The mask at latent size, `[B*n, 1, h, w]` (twice that with CFG).
    mask: Tensor<4>,
    /// The masked image's latents, batched as `mask` (`None` when `image` was given as latents).
    masked_image_latents: Option<Tensor<4>>,
    /// The clean image latents the 4-channel path blends back (`None` for 9 channels).
    image_latents: Option<Tensor<4>>,
    /// The noise the blended-back image latents are noised with.
    noise: Tensor<4>,
    /// A 9-channel UNet (inputs concatenated) rather than a 4-channel one (blend).
    nine_channel: bool,
    /// `B * num_images_per_prompt`.
    total: usize,
    /// `padding_mask_crop`: the crop box, the original image and mask for `apply_overlay`.
    overlay: Option<(CropBox, Vec<RgbImage>, Vec<RgbImage>)>,
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

impl XlInpaint {
    /// `prepare_latents` and `prepare_mask_latents`: the initial latents and the mask state.
    /// `first_t` is the first timestep of the strength schedule (the noise level of the init
    /// latents when strength < 1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        pipe: &DiffusionPipeline,
        args: &CallArgs,
        vae: &AutoencoderKL,
        unet: &UNet2DConditionModel,
        processor: &VaeImageProcessor,
        (height, width): (usize, usize),
        total: usize,
        do_cfg: bool,
        strength: f32,
        gens: &mut [TorchGenerator],
        scheduler: &Scheduler,
        first_t: f64,
    ) -> Result<(Tensor<4>, Self), PipelineError> {
        let device = pipe.device().clone();
        let factor = pipe.vae_scale_factor();
        let latent_channels = pipe.config_usize("vae", "latent_channels").unwrap_or(4);
        let unet_channels = usize::try_from(unet.config.in_channels).unwrap_or(usize::MAX);
        let nine_channel = match unet_channels {
            4 => false,
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
                true
            }
            other => {
                return Err(PipelineError::arg(
                    "unet",
                    format!("The unet should have either 4 or 9 input channels, not {other}."),
                ));
            }
        };
        let masks = args
            .mask_image
            .as_ref()
            .ok_or_else(|| PipelineError::arg("mask_image", "inpainting needs a `mask_image`"))?;
        let model_noise = noise_dtype(pipe.dtype());
        let vae_noise = if vae.force_upcast() {
            NoiseDtype::Float32
        } else {
            model_noise
        };
        let (crops_coords, resize_mode) = padding_mask_crop(
            args,
            args.image.as_deref().unwrap_or_default(),
            args.mask_image.as_deref().unwrap_or_default(),
            args.image_latents.is_some(),
            (height, width),
        )?;
        let init_image = match (&args.image_latents, &args.image) {
            (Some(_), _) => None,
            (None, Some(images)) => Some(processor.preprocess_with(
                images,
                Some(height),
                Some(width),
                resize_mode,
                crops_coords,
                &device,
            )?),
            (None, None) => {
                return Err(PipelineError::arg("image", "inpainting needs an `image`"));
            }
        };
        let mask_condition = processor.preprocess_mask_with(
            masks,
            height,
            width,
            resize_mode,
            crops_coords,
            &device,
        )?;
        // `init_image * (mask < 0.5)`: the known region only, unless its latents are given. An
        // image given as latents cannot be masked.
        let masked_image = match (&args.masked_image_latents, &init_image) {
            (Some(_), _) | (None, None) => None,
            (None, Some(img)) => Some(img.clone() * mask_condition.clone().lower_elem(0.5).float()),
        };

        // prepare_latents.
        let is_strength_max = strength == 1.0;
        let add_noise = args.denoising_start.is_none();
        let shape = [total, latent_channels, height / factor, width / factor];
        let image_latents = match (&args.image_latents, &init_image) {
            (Some(l), _) => Some(repeat_to(l.clone(), total, "image")?),
            (None, Some(img)) if !nine_channel || (args.latents.is_none() && !is_strength_max) => {
                let l = encode_vae_image_as(vae, img.clone(), gens, vae_noise, &device)?;
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

        // prepare_mask_latents.
        let mask = nearest_downsample(mask_condition, height / factor, width / factor);
        let mask = repeat_to(mask, total, "masks")?;
        let double = |t: Tensor<4>| {
            if do_cfg {
                Tensor::cat(vec![t.clone(), t], 0)
            } else {
                t
            }
        };
        let masked_image_latents = match (&args.masked_image_latents, masked_image) {
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
                Some(double(repeat_to(given.clone(), total, "images")?))
            }
            (None, Some(img)) => {
                let l = encode_vae_image_as(vae, img, gens, vae_noise, &device)?;
                Some(double(repeat_to(l, total, "images")?))
            }
            (None, None) => None,
        };
        if nine_channel && masked_image_latents.is_none() {
            return Err(PipelineError::arg(
                "image",
                "a 9-channel inpainting UNet needs the masked image, but `image` was given as latents, which cannot be masked",
            ));
        }
        // Everything concatenated or blended with the latents must have their spatial size.
        let [_, _, lh, lw] = latents.dims();
        let sizes = [
            ("mask_image", Some(mask.dims())),
            (
                "masked_image_latents",
                masked_image_latents.as_ref().map(|t| t.dims()),
            ),
            ("image", image_latents.as_ref().map(|t| t.dims())),
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
        let state = XlInpaint {
            mask: double(mask),
            masked_image_latents,
            image_latents: if nine_channel { None } else { image_latents },
            noise,
            nine_channel,
            total,
            overlay: crops_coords
                .map(|c| (c, args.image.clone().unwrap_or_default(), masks.clone())),
        };
        Ok((latents, state))
    }

    /// The decoded images, pasted back into the original image with `padding_mask_crop`.
    pub(crate) fn finish(
        &self,
        processor: &VaeImageProcessor,
        images: FloatImages,
    ) -> Result<FloatImages, PipelineError> {
        match &self.overlay {
            Some((crop, originals, masks)) => {
                apply_overlays(processor, &images, *crop, originals, masks)
            }
            None => Ok(images),
        }
    }

    /// The UNet input: `[latents, mask, masked_image_latents]` on the channel axis for a
    /// 9-channel UNet, the scaled latents alone for a 4-channel one.
    pub(crate) fn unet_input(&self, input: Tensor<4>) -> Tensor<4> {
        match (&self.masked_image_latents, self.nine_channel) {
            (Some(masked), true) => Tensor::cat(vec![input, self.mask.clone(), masked.clone()], 1),
            _ => input,
        }
    }

    /// After a step, the 4-channel path puts the known region back: the image latents noised to
    /// the next timestep (clean after the last step) outside the mask, the step's latents
    /// inside.
    pub(crate) fn blend(
        &self,
        latents: Tensor<4>,
        scheduler: &Scheduler,
        next_t: Option<f64>,
    ) -> Result<Tensor<4>, PipelineError> {
        let Some(image_latents) = &self.image_latents else {
            return Ok(latents);
        };
        if self.nine_channel {
            return Ok(latents);
        }
        // With CFG the mask is doubled; its first half is the batch's.
        let init_mask = self.mask.clone().narrow(0, 0, self.total);
        let proper = match next_t {
            Some(t) => scheduler.add_noise(image_latents.clone(), self.noise.clone(), &[t])?,
            None => image_latents.clone(),
        };
        Ok(init_mask.clone().neg().add_scalar(1.0) * proper + init_mask * latents)
    }
}
