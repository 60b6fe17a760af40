//! The end of every flow: VAE decode (with SDXL's float32 upcast of a float16 `force_upcast`
//! VAE), the safety checker, post-processing.

use crate::call::{OutputType, PipelineOutput};
use crate::denoise::Denoised;
use crate::error::PipelineError;
use crate::image_processor::{FloatImages, VaeImageProcessor};
use crate::inpaint_common::Overlay;
use crate::latents::noise_dtype;
use crate::pipeline::DiffusionPipeline;
use burn::tensor::{Device, Tensor};
use diff_models::AutoencoderKL;
use diff_schedulers::precision::round_tensor;
use diff_schedulers::{NoiseDtype, to_tensor};

/// The VAE's `latents_mean` / `latents_std` (`vae.config`, some SDXL fine-tunes), as
/// `[1, C, 1, 1]`.
pub(crate) fn latents_stats(
    vae: &AutoencoderKL,
    device: &Device,
) -> Result<Option<(Tensor<4>, Tensor<4>)>, PipelineError> {
    let as_f32 = |v: &[f64]| v.iter().map(|f| *f as f32).collect::<Vec<f32>>();
    let (Some(mean), Some(std)) = (&vae.config.latents_mean, &vae.config.latents_std) else {
        return Ok(None);
    };
    let (cm, cs) = (mean.len(), std.len());
    Ok(Some((
        to_tensor(as_f32(mean), [1, cm, 1, 1], device)?,
        to_tensor(as_f32(std), [1, cs, 1, 1], device)?,
    )))
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
    match latents_stats(vae, &device)? {
        Some((mean, std)) if pipe.class().is_xl() => z = z * std.div_scalar(sf) + mean,
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

/// The last step of every flow: the latents as they are for `output_type="latent"`, else
/// decoded, checked and post-processed, pasted back into the original image with
/// `padding_mask_crop` (`overlay`).
pub(crate) fn finish(
    pipe: &DiffusionPipeline,
    vae: &AutoencoderKL,
    output_type: OutputType,
    denoised: Denoised,
    overlay: Option<&Overlay>,
) -> Result<PipelineOutput, PipelineError> {
    let Denoised {
        latents,
        interrupted,
    } = denoised;
    let (images, nsfw_content_detected) = match output_type {
        OutputType::Latent => (None, None),
        _ => {
            let (images, flags) = decode_latents(pipe, vae, latents.clone())?;
            let images = match overlay {
                Some(overlay) => {
                    let processor = VaeImageProcessor::new(pipe.vae_scale_factor());
                    overlay.apply(&processor, images)?
                }
                None => images,
            };
            (Some(images), flags)
        }
    };
    Ok(PipelineOutput {
        images,
        latents,
        nsfw_content_detected,
        interrupted,
    })
}
