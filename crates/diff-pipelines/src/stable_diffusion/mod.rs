//! Stable Diffusion 1.x / 2.x `__call__` flows, one file per task as diffusers'
//! `pipelines/stable_diffusion/pipeline_stable_diffusion{,_img2img,_inpaint}.py`:
//!
//! - `text2img.rs`: `StableDiffusionPipeline`;
//! - `img2img.rs`: `StableDiffusionImg2ImgPipeline`;
//! - `inpaint.rs`: `StableDiffusionInpaintPipeline`;
//! - `sag.rs`: `StableDiffusionSAGPipeline` (diffusers' `pipelines/deprecated/stable_diffusion_sag/`:
//!   text-to-image with self-attention guidance, its second UNet pass in the loop's
//!   `noise_pred` hook).
//!
//! Each runs diffusers' numbered steps in diffusers' order of random draws and arithmetic; the
//! prompt encoding (`prompt.rs`), the latent and timestep preparation (`latents.rs`,
//! `timesteps.rs`), the denoising loop (`denoise.rs`) and the decode (`decode.rs`) are shared
//! with SDXL. This module holds what the three SD tasks share.

pub(crate) mod img2img;
pub(crate) mod inpaint;
pub(crate) mod sag;
pub(crate) mod text2img;

use crate::call::CallArgs;
use crate::denoise::{
    Conditioning, DenoiseLoop, Guidance, do_classifier_free_guidance, timestep_cond,
};
use crate::error::PipelineError;
use crate::ip_adapter::{EmbedsRepeat, ip_hidden_states};
use crate::latents::noise_dtype;
use crate::pipeline::{DiffusionPipeline, PipelineClass};
use burn::tensor::Tensor;
use diff_models::UNet2DConditionModel;

/// The generation size when the caller leaves it out: text-to-image defaults both when either
/// is missing or 0 (`if not height or not width`), inpaint each on its own (`height or ...`).
pub(crate) fn default_size(
    class: PipelineClass,
    height: Option<usize>,
    width: Option<usize>,
    default: usize,
) -> (usize, usize) {
    let (h, w) = (height.filter(|h| *h > 0), width.filter(|w| *w > 0));
    match (class, h, w) {
        (PipelineClass::StableDiffusion, Some(h), Some(w)) => (h, w),
        (PipelineClass::StableDiffusion, _, _) => (default, default),
        _ => (h.unwrap_or(default), w.unwrap_or(default)),
    }
}

/// diffusers' SD img2img and inpaint `__call__` have no `guidance_rescale` (their `**kwargs`
/// swallow it): warn when one is given, and use 0.
fn no_guidance_rescale(pipe: &DiffusionPipeline, args: &CallArgs) -> f32 {
    if args.guidance_rescale > 0.0 {
        tracing::warn!(
            "guidance_rescale is ignored by {}, as in diffusers",
            pipe.class().name()
        );
    }
    0.0
}

/// Step 3 and the loop's set-up of every SD task: `encode_prompt` (negative first with CFG),
/// `timestep_cond` for a guidance-distilled UNet, and the loop with the call's `eta` and the
/// pipeline's dtype. Returns the loop and the effective batch `B * num_images_per_prompt`.
fn encode_and_loop<'a>(
    pipe: &DiffusionPipeline,
    unet: &'a UNet2DConditionModel,
    args: &CallArgs,
    guidance_scale: f32,
    guidance_rescale: f32,
) -> Result<(DenoiseLoop<'a>, usize), PipelineError> {
    let device = pipe.device().clone();
    let do_cfg = do_classifier_free_guidance(unet, guidance_scale);
    let (cond, uncond) = pipe.encode_prompt(args, do_cfg)?;
    let total = cond.dims()[0];
    let encoder_hidden_states = match uncond {
        Some(u) => Tensor::cat(vec![u, cond], 0),
        None => cond,
    };
    let repeat = EmbedsRepeat::PerPrompt(args.num_images_per_prompt);
    let ip_hidden_states = ip_hidden_states(pipe, unet, &args.ip_adapter, repeat, do_cfg)?;
    let conditioning = Conditioning {
        encoder_hidden_states,
        text_embeds: None,
        time_ids: None,
        timestep_cond: timestep_cond(unet, guidance_scale, total, &device),
        ip_hidden_states,
    };
    let guidance = do_cfg.then_some(Guidance {
        scale: guidance_scale,
        rescale: guidance_rescale,
    });
    let denoise = DenoiseLoop::new(
        unet,
        conditioning,
        guidance,
        args.eta,
        noise_dtype(pipe.dtype()),
        device,
    );
    Ok((denoise, total))
}
