//! `StableDiffusionPipeline.__call__` (diffusers 0.42.1 `pipeline_stable_diffusion.py`):
//! encode prompt -> `set_timesteps` -> latents `randn * init_noise_sigma` -> loop -> decode.

use super::{default_size, encode_and_loop};
use crate::call::{CallArgs, PipelineOutput, StepCallback, check_size};
use crate::decode::finish;
use crate::error::PipelineError;
use crate::latents::{
    generators_for, noise_dtype, prepare_text2img_latents, unet_sample_size, vae_latent_channels,
};
use crate::pipeline::DiffusionPipeline;
use crate::timesteps::{check_steps_left, retrieve_timesteps};

/// `StableDiffusionPipeline.__call__`.
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

    // 1. Check inputs. Raise error if not correct
    check_size(height, width)?;

    // 2. Define call parameters
    let guidance_scale = args.guidance_scale.unwrap_or(7.5);
    let dtype = noise_dtype(pipe.dtype());

    // 3. Encode input prompt
    let (denoise, total) =
        encode_and_loop(pipe, unet, args, guidance_scale, args.guidance_rescale)?;
    let mut gens = generators_for(args, total)?;

    // 4. Prepare timesteps
    let mut scheduler = pipe.require(pipe.scheduler(), "scheduler")?.clone();
    retrieve_timesteps(&mut scheduler, args)?;
    let timesteps = scheduler.timesteps().to_vec();
    check_steps_left(&timesteps, false, args.img2img.strength.unwrap_or(1.0))?;

    // 5. Prepare latent variables
    let shape = [
        total,
        vae_latent_channels(vae),
        height / factor,
        width / factor,
    ];
    // Given `latents` decide the output size, as in diffusers (no check against height and
    // width); a batch or channel count that cannot work fails deep in diffusers' UNet, so name
    // it here.
    if let Some(l) = args
        .latents
        .as_ref()
        .filter(|l| l.dims()[..2] != shape[..2])
    {
        return Err(PipelineError::arg(
            "latents",
            format!(
                "`latents` has shape {:?}; its batch and channels must be {:?} ([batch * num_images_per_prompt, channels, h, w])",
                l.dims(),
                &shape[..2]
            ),
        ));
    }
    let latents = prepare_text2img_latents(
        args.latents.as_ref(),
        shape,
        &mut gens,
        dtype,
        scheduler.init_noise_sigma(),
        pipe.device(),
    )?;

    // 6. Prepare extra step kwargs (eta) and 6.1 the guidance embedding: in `denoise`.
    // 7. Denoising loop
    let denoised = crate::pag::run_loop(
        pipe,
        args,
        denoise,
        (&mut scheduler, &timesteps),
        (latents, &mut gens),
        &mut crate::denoise::NoHook,
        callback,
    )?;

    // 8. Decode, run the safety checker, post-process
    finish(pipe, vae, args.output_type, denoised, None)
}
