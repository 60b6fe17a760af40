//! `StableDiffusionInpaintPipeline.__call__` (diffusers 0.42.1
//! `pipeline_stable_diffusion_inpaint.py`): as img2img for the init latents (the image is
//! encoded only for the legacy 4-channel UNet or when strength < 1), then the masked image is
//! VAE-encoded (another draw), and the loop either feeds `[latents, mask,
//! masked_image_latents]` to a 9-channel UNet or, for a 4-channel one, blends the known region
//! back after each step (`InpaintHook`).

use super::{default_size, encode_and_loop, no_guidance_rescale};
use crate::call::{CallArgs, PipelineOutput, StepCallback};
use crate::decode::finish;
use crate::error::PipelineError;
use crate::image_processor::VaeImageProcessor;
use crate::inpaint_common::{
    InpaintHook, Overlay, double_for_cfg, nearest_downsample, padding_mask_crop,
};
use crate::latents::{
    encode_vae_image_as, generators_for, noise_dtype, randn_as, unet_in_channels, unet_sample_size,
    vae_latent_channels,
};
use crate::pipeline::DiffusionPipeline;
use crate::timesteps::{
    check_steps_left, check_strength, init_timestep, retrieve_timesteps, strength_timesteps,
};
use burn::tensor::{Device, Tensor};
use diff_schedulers::{NoiseDtype, Scheduler, TorchGenerator};
use image::RgbImage;

/// `StableDiffusionInpaintPipeline.__call__`.
pub(crate) fn call(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    callback: Option<&mut StepCallback<'_>>,
) -> Result<PipelineOutput, PipelineError> {
    let unet = pipe.require(pipe.unet(), "unet")?;
    let vae = pipe.require(pipe.vae(), "vae")?;
    let factor = pipe.vae_scale_factor();

    // 0. Default height and width to unet
    let default = unet_sample_size(unet, 64) * factor;
    let (height, width) = default_size(pipe.class(), args.height, args.width, default);

    // 1. Check inputs: multiples of the VAE scale factor (the message still says 8).
    if height % factor != 0 || width % factor != 0 || height == 0 || width == 0 {
        return Err(PipelineError::arg(
            "height/width",
            format!("`height` and `width` have to be divisible by 8 but are {height} and {width}."),
        ));
    }
    // StableDiffusionPAGInpaintPipeline's default is 0.9999, as SDXL's.
    let pag_class = pipe.class() == crate::pipeline::PipelineClass::StableDiffusionPAGInpaint;
    let strength = args
        .img2img
        .strength
        .unwrap_or(if pag_class { 0.9999 } else { 1.0 });
    check_strength(strength)?;

    // 2. Define call parameters
    let guidance_scale = args.guidance_scale.unwrap_or(7.5);
    let guidance_rescale = if pag_class {
        crate::pag::inpaint_guidance_rescale(pipe, args, guidance_scale)?
    } else {
        no_guidance_rescale(pipe, args)
    };
    let dtype = noise_dtype(pipe.dtype());

    // 3. Encode input prompt
    let (denoise, total) = encode_and_loop(pipe, unet, args, guidance_scale, guidance_rescale)?;
    let do_cfg = denoise.guidance.is_some();
    let mut gens = generators_for(args, total)?;

    // 4. set timesteps
    let mut scheduler = pipe.require(pipe.scheduler(), "scheduler")?.clone();
    let steps = retrieve_timesteps(&mut scheduler, args)?;
    let timesteps = strength_timesteps(&mut scheduler, steps, strength);
    // The step count strength leaves (`num_inference_steps - t_start`) must be at least 1.
    check_steps_left(&timesteps, init_timestep(steps, strength) == 0, strength)?;
    let first_t = timesteps.first().copied().unwrap_or(0.0);

    // 5. Preprocess mask and image
    let inputs = Inputs::check(args, vae_latent_channels(vae), unet_in_channels(unet))?;
    let (crop, resize_mode) =
        padding_mask_crop(args, inputs.images, inputs.masks, false, (height, width))?;
    let processor = VaeImageProcessor::new(factor);
    let device = pipe.device().clone();
    let init_image = processor.preprocess_with(
        inputs.images,
        Some(height),
        Some(width),
        resize_mode,
        crop,
        &device,
    )?;

    // 6. Prepare latent variables
    let is_strength_max = strength == 1.0;
    let image_latents = if inputs.unet_channels == 4 || (args.latents.is_none() && !is_strength_max)
    {
        let l = encode_vae_image_as(vae, init_image.clone(), &mut gens, dtype, &device)?;
        let n_lat = l.dims()[0];
        Some(l.repeat_dim(0, (total / n_lat.max(1)).max(1)))
    } else {
        None
    };
    let shape = [
        total,
        inputs.latent_channels,
        height / factor,
        width / factor,
    ];
    let (latents, noise) = prepare_latents(
        args,
        shape,
        image_latents.as_ref(),
        &mut gens,
        dtype,
        (&scheduler, first_t, is_strength_max),
        &device,
    )?;

    // 7. Prepare mask latent variables
    let mask_condition =
        processor.preprocess_mask_with(inputs.masks, height, width, resize_mode, crop, &device)?;
    let mask = nearest_downsample(mask_condition.clone(), height / factor, width / factor);
    let masked_image_latents = match &args.inpaint.masked_image_latents {
        // Given latents are used as they are: no VAE pass, no random draw.
        Some(given) => check_masked_latents(given, inputs.latent_channels)?,
        None => {
            let keep = mask_condition.lower_elem(0.5).float();
            encode_vae_image_as(vae, init_image * keep, &mut gens, dtype, &device)?
        }
    };

    // 8. Check that sizes of mask, masked image and latents match
    let mut hook = inputs.hook(
        mask,
        masked_image_latents,
        image_latents,
        noise,
        (total, do_cfg, dtype),
    )?;

    // 9. Prepare extra step kwargs (and 9.1 the guidance embedding): in `denoise`.
    // 10. Denoising loop
    let denoised = crate::pag::run_loop(
        pipe,
        args,
        denoise,
        (&mut scheduler, &timesteps),
        (latents, &mut gens),
        &mut hook,
        callback,
    )?;

    // 11. Decode, run the safety checker, post-process, paste back (`padding_mask_crop`).
    let overlay = crop.map(|crop| Overlay {
        crop,
        images: inputs.images.to_vec(),
        masks: inputs.masks.to_vec(),
    });
    finish(pipe, vae, args.output_type, denoised, overlay.as_ref())
}

/// The inpaint inputs, checked as diffusers checks them before any work on them.
struct Inputs<'a> {
    images: &'a [RgbImage],
    masks: &'a [RgbImage],
    latent_channels: usize,
    unet_channels: usize,
}

impl<'a> Inputs<'a> {
    /// An image and a mask are needed, and a UNet of 4 channels (the legacy blend) or of
    /// `4 + 1 + latent_channels` (latents, mask, masked image).
    fn check(
        args: &'a CallArgs,
        latent_channels: usize,
        unet_channels: usize,
    ) -> Result<Self, PipelineError> {
        let images = args
            .img2img
            .image
            .as_ref()
            .ok_or_else(|| PipelineError::arg("image", "inpainting needs an `image`"))?;
        let masks =
            args.inpaint.mask_image.as_ref().ok_or_else(|| {
                PipelineError::arg("mask_image", "inpainting needs a `mask_image`")
            })?;
        if unet_channels != 4 && unet_channels != 4 + 1 + latent_channels {
            return Err(PipelineError::arg(
                "unet",
                format!("The unet should have either 4 or 9 input channels, not {unet_channels}."),
            ));
        }
        Ok(Self {
            images,
            masks,
            latent_channels,
            unet_channels,
        })
    }

    /// The loop's inpaint hook: mask and masked-image latents repeated to the batch and
    /// doubled for CFG, after diffusers' batch and channel checks.
    fn hook(
        &self,
        mask: Tensor<4>,
        masked_image_latents: Tensor<4>,
        image_latents: Option<Tensor<4>>,
        noise: Tensor<4>,
        (total, do_cfg, dtype): (usize, bool, NoiseDtype),
    ) -> Result<InpaintHook, PipelineError> {
        for (what, n) in [
            ("mask_image", mask.dims()[0]),
            ("masked_image_latents", masked_image_latents.dims()[0]),
        ] {
            if n == 0 || total % n != 0 {
                return Err(PipelineError::arg(
                    what,
                    format!(
                        "{what} of batch size {n} cannot be duplicated to the total batch size {total}"
                    ),
                ));
            }
        }
        let dup = |t: Tensor<4>| {
            let n = t.dims()[0];
            double_for_cfg(t.repeat_dim(0, (total / n.max(1)).max(1)), do_cfg)
        };
        let nine_channel = self.unet_channels != 4;
        if nine_channel {
            let got = self.latent_channels + 1 + masked_image_latents.dims()[1];
            if got != self.unet_channels {
                return Err(PipelineError::arg(
                    "unet",
                    format!(
                        "the unet expects {} input channels but latents, mask and masked_image_latents give {got}",
                        self.unet_channels
                    ),
                ));
            }
        }
        Ok(InpaintHook {
            mask: dup(mask),
            masked_image_latents: Some(dup(masked_image_latents)),
            image_latents,
            noise,
            nine_channel,
            total,
            blend_dtype: dtype,
        })
    }
}

/// Inpaint `prepare_latents`: pure noise times `init_noise_sigma` at strength 1, else the image
/// latents noised to the first timestep; the given `latents` scaled instead. Returns the
/// latents and the noise the 4-channel blend noises the known region with.
fn prepare_latents(
    args: &CallArgs,
    shape: [usize; 4],
    image_latents: Option<&Tensor<4>>,
    gens: &mut [TorchGenerator],
    dtype: NoiseDtype,
    (scheduler, first_t, is_strength_max): (&Scheduler, f64, bool),
    device: &Device,
) -> Result<(Tensor<4>, Tensor<4>), PipelineError> {
    let sigma0 = scheduler.init_noise_sigma();
    if let Some(l) = &args.latents {
        return Ok((l.clone().mul_scalar(sigma0), l.clone()));
    }
    let noise = randn_as(shape, gens, dtype, device)?;
    let latents = if is_strength_max {
        noise.clone().mul_scalar(sigma0)
    } else {
        let il = image_latents
            .cloned()
            .ok_or_else(|| PipelineError::arg("image", "no image latents"))?;
        scheduler.add_noise(il, noise.clone(), &vec![first_t; shape[0]])?
    };
    Ok((latents, noise))
}

/// Given `masked_image_latents` must have the VAE's latent channels.
fn check_masked_latents(
    given: &Tensor<4>,
    latent_channels: usize,
) -> Result<Tensor<4>, PipelineError> {
    if given.dims()[1] != latent_channels {
        return Err(PipelineError::arg(
            "masked_image_latents",
            format!(
                "masked_image_latents must have the VAE's {latent_channels} latent channels, got shape {:?}",
                given.dims()
            ),
        ));
    }
    Ok(given.clone())
}
