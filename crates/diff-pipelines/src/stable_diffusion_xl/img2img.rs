//! `StableDiffusionXLImg2ImgPipeline.__call__` (diffusers 0.42.1
//! `pipeline_stable_diffusion_xl_img2img.py`), also the refiner's class: encode prompt ->
//! `set_timesteps` + strength tail (or `denoising_start`) -> the init image's latents (VAE
//! posterior sample in float32 for a `force_upcast` VAE, or the `image_latents` given) ->
//! noise -> `add_noise` (skipped with `denoising_start`) -> added time ids (aesthetic scores for
//! a refiner) -> loop -> decode.

use super::{Task, check_latents, denoise_loop, encode, prepare_timesteps};
use crate::call::{CallArgs, PipelineOutput, StepCallback, check_size};
use crate::decode::{finish, latents_stats};
use crate::error::PipelineError;
use crate::image_processor::VaeImageProcessor;
use crate::latents::{
    encode_vae_image_as, generators_for, noise_dtype, randn_as, vae_latent_channels,
};
use crate::pipeline::DiffusionPipeline;
use crate::timesteps::check_strength;
use burn::tensor::Tensor;
use diff_schedulers::{NoiseDtype, Scheduler, TorchGenerator};

/// `StableDiffusionXLImg2ImgPipeline.__call__`.
pub(crate) fn call(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    callback: Option<&mut StepCallback<'_>>,
) -> Result<PipelineOutput, PipelineError> {
    let unet = pipe.require(pipe.unet(), "unet")?;
    let vae = pipe.require(pipe.vae(), "vae")?;
    let factor = pipe.vae_scale_factor();
    let processor = VaeImageProcessor::new(factor);

    // 1. Check inputs. The size is the image's (rounded down to the scale factor), or the
    // given image latents' in pixels.
    let (height, width) = match (&args.img2img.image_latents, &args.img2img.image) {
        (Some(l), _) => {
            let [_, _, h, w] = l.dims();
            (h * factor, w * factor)
        }
        (None, Some(images)) => {
            let first = images
                .first()
                .ok_or_else(|| PipelineError::arg("image", "no image given"))?;
            processor.default_height_width(first.dimensions(), args.height, args.width)
        }
        (None, None) => {
            return Err(PipelineError::arg("image", "img2img needs an `image`"));
        }
    };
    check_size(height, width)?;
    let strength = args.img2img.strength.unwrap_or(0.3);
    check_strength(strength)?;

    // 2. Define call parameters and 3. Encode input prompt
    let encoded = encode(pipe, unet, args, 5.0)?;
    let total = encoded.total;
    let mut gens = generators_for(args, total)?;

    // 4. Preprocess image: in step 6, where the image is needed.
    // 5. Prepare timesteps
    let mut scheduler = pipe.require(pipe.scheduler(), "scheduler")?.clone();
    let (timesteps, first_t) = prepare_timesteps(&mut scheduler, args, Task::Img2Img, strength)?;

    // 6. Prepare latent variables: given latents are used as they are.
    let latents = match &args.latents {
        Some(l) => l.clone(),
        None => prepare_latents(
            pipe,
            args,
            &processor,
            (height, width),
            total,
            &mut gens,
            (&scheduler, first_t),
        )?,
    };
    check_latents(&latents, total, vae_latent_channels(vae))?;

    // 7. Prepare extra step kwargs: in `denoise`.
    // 8. Prepare added time ids & embeddings (sizes default to the latents' size in pixels)
    let [_, _, lh, lw] = latents.dims();
    let size = (lh * factor, lw * factor);
    let denoise = denoise_loop(pipe, unet, args, encoded, size, Task::Img2Img)?;

    // 9. Denoising loop
    let denoised = crate::pag::run_loop(
        pipe,
        args,
        denoise,
        (&mut scheduler, &timesteps),
        (latents, &mut gens),
        &mut crate::denoise::NoHook,
        callback,
    )?;

    // 10. Decode (with a float32 copy of a float16 `force_upcast` VAE), post-process
    finish(pipe, vae, args.output_type, denoised, None)
}

/// SDXL img2img `prepare_latents`: the init image's latents (VAE posterior sample, or the
/// `image_latents` given), repeated to the batch, noised to the first timestep unless
/// `denoising_start` was given.
fn prepare_latents(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    processor: &VaeImageProcessor,
    size: (usize, usize),
    total: usize,
    gens: &mut [TorchGenerator],
    (scheduler, first_t): (&Scheduler, f64),
) -> Result<Tensor<4>, PipelineError> {
    let device = pipe.device().clone();
    let vae = pipe.require(pipe.vae(), "vae")?;
    let mut init = if let Some(latents) = &args.img2img.image_latents {
        latents.clone()
    } else {
        let images = args
            .img2img
            .image
            .as_ref()
            .ok_or_else(|| PipelineError::arg("image", "img2img needs an `image`"))?;
        let mut image = processor.preprocess(images, Some(size.0), Some(size.1), &device)?;
        let n_img = image.dims()[0];
        if gens.len() > 1 && n_img < total {
            if !total.is_multiple_of(n_img) {
                return Err(PipelineError::arg(
                    "image",
                    format!(
                        "Cannot duplicate `image` of batch size {n_img} to effective batch_size {total} "
                    ),
                ));
            }
            image = image.repeat_dim(0, total / n_img);
        }
        // SDXL upcasts a `force_upcast` VAE to float32 for encoding, so its posterior
        // sample is drawn in float32.
        let vae_noise = if vae.force_upcast() {
            NoiseDtype::Float32
        } else {
            noise_dtype(pipe.dtype())
        };
        let mut init = encode_vae_image_as(vae, image, gens, vae_noise, &device)?;
        if let Some((mean, std)) = latents_stats(vae, &device)? {
            // encode_vae_image scaled by sf: (x - mean) * sf / std = (x * sf - mean * sf) / std.
            let sf = vae.scaling_factor() as f32;
            init = (init - mean.mul_scalar(sf)) / std;
        }
        init
    };
    let n_lat = init.dims()[0].max(1);
    if n_lat > total {
        return Err(PipelineError::arg(
            "image",
            format!("`image` has batch size {n_lat}, more than the {total} images requested."),
        ));
    }
    if total > n_lat {
        if !total.is_multiple_of(n_lat) {
            return Err(PipelineError::arg(
                "image",
                format!("Cannot duplicate `image` of batch size {n_lat} to {total} text prompts."),
            ));
        }
        init = init.repeat_dim(0, total / n_lat);
    }
    if args.xl.denoising_start.is_some() {
        // add_noise=False: the latents are already partly denoised (a base run's output).
        return Ok(init);
    }
    let noise = randn_as(init.dims(), gens, noise_dtype(pipe.dtype()), &device)?;
    Ok(scheduler.add_noise(init, noise, &vec![first_t; total])?)
}
