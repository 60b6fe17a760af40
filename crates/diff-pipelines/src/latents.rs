//! Latent preparation the flows share (diffusers' step "5. Prepare latent variables"): the
//! random draws in the model dtype, the call's generators, the VAE posterior sample of an init
//! image (`retrieve_latents`), and text-to-image's `prepare_latents`.

use crate::call::CallArgs;
use crate::error::PipelineError;
use crate::pipeline::DiffusionPipeline;
use crate::timesteps::retrieve_timesteps;
use burn::tensor::{Device, Tensor};
use diff_format::configs::unet::SampleSize;
use diff_models::{AutoencoderKL, UNet2DConditionModel};
use diff_schedulers::precision::round_tensor;
use diff_schedulers::{NoiseDtype, TorchGenerator, randn_tensor, to_tensor};

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

/// The call's generators, with diffusers' error when a list of them does not match the
/// effective batch size `total` (one generator, or none, serves any batch).
pub(crate) fn generators_for(
    args: &CallArgs,
    total: usize,
) -> Result<Vec<TorchGenerator>, PipelineError> {
    let gens = args.generator.build();
    if gens.len() > 1 && gens.len() != total {
        return Err(PipelineError::arg(
            "generator",
            format!(
                "You have passed a list of generators of length {}, but requested an effective batch size of {total}. Make sure the batch size matches the length of the generators.",
                gens.len()
            ),
        ));
    }
    Ok(gens)
}

/// `unet.config.sample_size` (the first side of a `[height, width]` pair), or `default` when
/// the config has none. Clamped to 2^32, so that times the VAE factor it cannot overflow
/// (`check_size` refuses such a size with the pixel limit).
pub(crate) fn unet_sample_size(unet: &UNet2DConditionModel, default: usize) -> usize {
    let to_usize = |v: u64| usize::try_from(v.min(1 << 32)).unwrap_or(usize::MAX);
    match &unet.config.sample_size {
        Some(SampleSize::Square(s)) => to_usize(*s),
        Some(SampleSize::HeightWidth(v)) => v.first().copied().map_or(default, to_usize),
        None => default,
    }
}

/// `unet.config.in_channels`.
pub(crate) fn unet_in_channels(unet: &UNet2DConditionModel) -> usize {
    usize::try_from(unet.config.in_channels).unwrap_or(usize::MAX)
}

/// `vae.config.latent_channels`.
pub(crate) fn vae_latent_channels(vae: &AutoencoderKL) -> usize {
    usize::try_from(vae.config.latent_channels).unwrap_or(usize::MAX)
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
    let encode_one = |img: Tensor<4>,
                      gens: &mut [TorchGenerator]|
     -> Result<Tensor<4>, PipelineError> {
        let dist = vae.encode(img)?;
        if dist.mean.dtype() != burn::tensor::DType::F32 {
            // Known gap: an input image encoded in float16 / bfloat16 does not reproduce
            // diffusers' numbers yet (measured on the tiny img2img: 8.5/255 in float16,
            // 91/255 in bfloat16), so refuse rather than return a different image.
            return Err(PipelineError::arg(
                "dtype",
                format!(
                    "img2img and inpaint (an input image encoded by the VAE) are not yet supported in {:?}: they do not reproduce diffusers' numbers; load the pipeline in float32 (`--dtype f32`)",
                    dist.mean.dtype()
                ),
            ));
        }
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

/// Text-to-image `prepare_latents`: `randn_tensor(shape, generator, dtype)` or the given
/// `latents`, times the scheduler's `init_noise_sigma` (unrounded: the flows round when the
/// loop starts).
pub(crate) fn prepare_text2img_latents(
    given: Option<&Tensor<4>>,
    shape: [usize; 4],
    gens: &mut [TorchGenerator],
    dtype: NoiseDtype,
    init_noise_sigma: f32,
    device: &Device,
) -> Result<Tensor<4>, PipelineError> {
    Ok(match given {
        Some(l) => l.clone().mul_scalar(init_noise_sigma),
        None => randn_as(shape, gens, dtype, device)?.mul_scalar(init_noise_sigma),
    })
}

impl DiffusionPipeline {
    /// diffusers' text-to-image `prepare_latents`, the initial latents a text-to-image `call`
    /// with `args` starts from: `randn_tensor(shape, generator, dtype=prompt_embeds.dtype)`
    /// drawn in the pipeline's dtype (torch's float16 / bfloat16 normals are not the float32
    /// ones rounded), or the given `latents`, times the scheduler's `init_noise_sigma`.
    /// `shape` is `[batch * num_images_per_prompt, C, height / f, width / f]` with the call's
    /// default height and width (SD 1.x / 2.x sizes: `unet.config.sample_size * f`).
    pub fn prepare_latents(&self, args: &CallArgs) -> Result<Tensor<4>, PipelineError> {
        let unet = self.require(self.unet(), "unet")?;
        let factor = self.vae_scale_factor();
        let sample_size = unet_sample_size(unet, 64);
        let channels = unet_in_channels(unet);
        let (height, width) = crate::stable_diffusion::default_size(
            self.class(),
            args.height,
            args.width,
            sample_size * factor,
        );
        crate::call::check_size(height, width)?;
        let batch = match &args.prompt_embeds {
            Some(e) => e.dims()[0],
            None => args.prompt.len(),
        };
        let total = batch * args.num_images_per_prompt.max(1);
        let mut scheduler = self.require(self.scheduler(), "scheduler")?.clone();
        retrieve_timesteps(&mut scheduler, args)?;
        let sigma0 = scheduler.init_noise_sigma();
        // `latents * init_noise_sigma` runs in the pipeline's dtype (rounded in half precision).
        let half = noise_dtype(self.dtype());
        let shape = [total, channels, height / factor, width / factor];
        let latents = match &args.latents {
            Some(l) => l.clone().mul_scalar(sigma0),
            None => {
                let mut gens = generators_for(args, total)?;
                prepare_text2img_latents(None, shape, &mut gens, half, sigma0, self.device())?
            }
        };
        Ok(round_tensor(latents, half))
    }
}
