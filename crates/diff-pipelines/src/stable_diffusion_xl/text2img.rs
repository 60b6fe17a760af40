//! `StableDiffusionXLPipeline.__call__` (diffusers 0.42.1 `pipeline_stable_diffusion_xl.py`):
//! encode prompt (two encoders) -> `set_timesteps` (+ `denoising_end`) -> latents
//! `randn * init_noise_sigma` -> added time ids -> `set_begin_index(0)` -> loop -> decode.

use super::{Task, check_latents, denoise_loop, encode, prepare_timesteps};
use crate::call::{CallArgs, PipelineOutput, StepCallback, check_size};
use crate::decode::finish;
use crate::error::PipelineError;
use crate::latents::{
    generators_for, noise_dtype, prepare_text2img_latents, unet_sample_size, vae_latent_channels,
};
use crate::pipeline::DiffusionPipeline;

/// `StableDiffusionXLPipeline.__call__`.
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

    // 1. Check inputs. Raise error if not correct
    check_size(height, width)?;

    // 2. Define call parameters and 3. Encode input prompt
    let encoded = encode(pipe, unet, args, 5.0)?;
    let total = encoded.total;
    let mut gens = generators_for(args, total)?;

    // 4. Prepare timesteps
    let mut scheduler = pipe.require(pipe.scheduler(), "scheduler")?.clone();
    // (strength is unused here but named by the error on an empty schedule.)
    let strength = args.img2img.strength.unwrap_or(0.3);
    let (timesteps, _) = prepare_timesteps(&mut scheduler, args, Task::Text2Img, strength)?;

    // 5. Prepare latent variables
    let latent_channels = vae_latent_channels(vae);
    let shape = [total, latent_channels, height / factor, width / factor];
    let latents = prepare_text2img_latents(
        args.latents.as_ref(),
        shape,
        &mut gens,
        noise_dtype(pipe.dtype()),
        scheduler.init_noise_sigma(),
        pipe.device(),
    )?;
    check_latents(&latents, total, latent_channels)?;

    // 6. Prepare extra step kwargs: in `denoise`.
    // 7. Prepare added time ids & embeddings
    let denoise = denoise_loop(pipe, unet, args, encoded, (height, width), Task::Text2Img)?;

    // 8. Denoising loop
    scheduler.set_begin_index(0);
    let denoised = crate::pag::run_loop(
        pipe,
        args,
        denoise,
        (&mut scheduler, &timesteps),
        (latents, &mut gens),
        &mut crate::denoise::NoHook,
        callback,
    )?;

    // 9. Decode (with a float32 copy of a float16 `force_upcast` VAE), post-process
    finish(pipe, vae, args.output_type, denoised, None)
}
