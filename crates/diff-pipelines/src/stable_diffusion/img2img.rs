//! `StableDiffusionImg2ImgPipeline.__call__` (diffusers 0.42.1
//! `pipeline_stable_diffusion_img2img.py`): encode prompt -> `set_timesteps` + strength tail ->
//! VAE posterior sample (first draw) -> noise (second draw) -> `add_noise` -> loop -> decode.

use super::{default_size, encode_and_loop, no_guidance_rescale};
use crate::call::{CallArgs, PipelineOutput, StepCallback};
use crate::decode::finish;
use crate::error::PipelineError;
use crate::image_processor::VaeImageProcessor;
use crate::latents::{
    encode_vae_image_as, generators_for, noise_dtype, randn_as, unet_sample_size,
};
use crate::pipeline::DiffusionPipeline;
use crate::timesteps::{check_steps_left, check_strength, retrieve_timesteps, strength_timesteps};
use burn::tensor::Tensor;
use diff_schedulers::{NoiseDtype, Scheduler, TorchGenerator};

/// `StableDiffusionImg2ImgPipeline.__call__`.
pub(crate) fn call(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    callback: Option<&mut StepCallback<'_>>,
) -> Result<PipelineOutput, PipelineError> {
    let unet = pipe.require(pipe.unet(), "unet")?;
    let vae = pipe.require(pipe.vae(), "vae")?;
    let factor = pipe.vae_scale_factor();
    let processor = VaeImageProcessor::new(factor);

    // 1. Check inputs. img2img takes no height/width in diffusers: the image's size rounded
    // down to the scale factor is used as is.
    let (height, width) = match &args.img2img.image {
        Some(images) => {
            let first = images
                .first()
                .ok_or_else(|| PipelineError::arg("image", "no image given"))?;
            processor.default_height_width(first.dimensions(), args.height, args.width)
        }
        None => default_size(
            pipe.class(),
            args.height,
            args.width,
            unet_sample_size(unet, 64) * factor,
        ),
    };
    if height == 0 || width == 0 {
        return Err(PipelineError::arg(
            "image",
            format!("image size {width}x{height} is smaller than the VAE scale factor {factor}"),
        ));
    }
    let strength = args.img2img.strength.unwrap_or(0.8);
    check_strength(strength)?;

    // 2. Define call parameters
    let guidance_scale = args.guidance_scale.unwrap_or(7.5);
    let guidance_rescale = no_guidance_rescale(pipe, args);
    let dtype = noise_dtype(pipe.dtype());

    // 3. Encode input prompt
    let (denoise, total) = encode_and_loop(pipe, unet, args, guidance_scale, guidance_rescale)?;
    let mut gens = generators_for(args, total)?;

    // 4. Preprocess image: in step 6, where the image is needed.
    // 5. set timesteps
    let mut scheduler = pipe.require(pipe.scheduler(), "scheduler")?.clone();
    let steps = retrieve_timesteps(&mut scheduler, args)?;
    let timesteps = strength_timesteps(&mut scheduler, steps, strength);
    check_steps_left(&timesteps, false, strength)?;
    let first_t = timesteps.first().copied().unwrap_or(0.0);

    // 6. Prepare latent variables
    let latents = prepare_latents(
        pipe,
        args,
        &processor,
        (height, width),
        total,
        &mut gens,
        dtype,
        (&scheduler, first_t),
    )?;

    // 7. Prepare extra step kwargs: in `denoise`.
    // 8. Denoising loop
    let denoised = crate::pag::run_loop(
        pipe,
        args,
        denoise,
        (&mut scheduler, &timesteps),
        (latents, &mut gens),
        &mut crate::denoise::NoHook,
        callback,
    )?;

    // 9. Decode, run the safety checker, post-process
    finish(pipe, vae, args.output_type, denoised, None)
}

/// img2img `prepare_latents`: the preprocessed image (repeated to the batch with a list of
/// generators), its VAE posterior sample repeated to the batch, noised to the first timestep
/// of the strength schedule.
#[allow(clippy::too_many_arguments)]
fn prepare_latents(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    processor: &VaeImageProcessor,
    (height, width): (usize, usize),
    total: usize,
    gens: &mut [TorchGenerator],
    dtype: NoiseDtype,
    (scheduler, first_t): (&Scheduler, f64),
) -> Result<Tensor<4>, PipelineError> {
    let device = pipe.device().clone();
    let vae = pipe.require(pipe.vae(), "vae")?;
    let images = args
        .img2img
        .image
        .as_ref()
        .ok_or_else(|| PipelineError::arg("image", "img2img needs an `image`"))?;
    let mut image = processor.preprocess(images, Some(height), Some(width), &device)?;
    let n_img = image.dims()[0];
    if gens.len() > 1 && n_img < total {
        if !total.is_multiple_of(n_img) {
            return Err(PipelineError::arg(
                "image",
                format!(
                    "Cannot duplicate `image` of batch size {n_img} to effective batch_size {total}"
                ),
            ));
        }
        image = image.repeat_dim(0, total / n_img);
    }
    let mut init = encode_vae_image_as(vae, image, gens, dtype, &device)?;
    let n_lat = init.dims()[0];
    if total > n_lat {
        if !total.is_multiple_of(n_lat) {
            return Err(PipelineError::arg(
                "image",
                format!("Cannot duplicate `image` of batch size {n_lat} to {total} text prompts."),
            ));
        }
        init = init.repeat_dim(0, total / n_lat);
    }
    let noise = randn_as(init.dims(), gens, dtype, &device)?;
    Ok(scheduler.add_noise(init, noise, &vec![first_t; total])?)
}
