//! `StableDiffusionPipeline`, `StableDiffusionImg2ImgPipeline` and
//! `StableDiffusionInpaintPipeline` `__call__`, in diffusers' order of random draws and
//! arithmetic:
//!
//! - text-to-image: encode prompt -> `set_timesteps` -> latents `randn * init_noise_sigma` ->
//!   loop -> decode;
//! - img2img: encode prompt -> `set_timesteps` + strength tail -> VAE posterior sample (first
//!   draw) -> noise (second draw) -> `add_noise` -> loop -> decode;
//! - inpaint: as img2img for the init latents (the image is encoded only for the legacy
//!   4-channel UNet or when strength < 1), then the masked image is VAE-encoded (another draw),
//!   and the loop either feeds `[latents, mask, masked_image_latents]` to a 9-channel UNet or,
//!   for a 4-channel one, blends the known region back after each step.

use crate::call::{
    CallArgs, OutputType, PipelineOutput, StepCallback, StepControl, StepInfo, check_size,
    decode_latents, default_guidance, encode_vae_image_as, guide, noise_dtype, randn_as,
    strength_timesteps,
};
use crate::clip_tokenizer::ClipTokenizer;
use crate::error::PipelineError;
use crate::image_processor::{FloatImages, ResizeMode, VaeImageProcessor, get_crop_region};
use crate::pipeline::{DiffusionPipeline, PipelineClass};
use burn::tensor::{Device, Int, Tensor, TensorData};
use diff_models::{CLIPTextModel, UNet2DConditionInput};
use diff_schedulers::StepOptions;
use diff_schedulers::precision::round_tensor;

/// Tokenizes a batch as diffusers' `encode_prompt` does (max-length padding, truncation with
/// diffusers' warning) and returns the ids tensor `[B, 77]`.
pub(crate) fn tokenize(
    tokenizer: &ClipTokenizer,
    prompts: &[String],
    device: &Device,
) -> Tensor<2, Int> {
    let (ids, removed) = tokenizer.encode_for_pipeline(prompts);
    if let Some(removed) = removed {
        tracing::warn!(
            "The following part of your input was truncated because CLIP can only handle sequences up to {} tokens: {:?}",
            tokenizer.model_max_length().unwrap_or(77),
            removed
        );
    }
    let seq = ids.first().map_or(0, Vec::len);
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(flat, [prompts.len(), seq]), device)
}

/// `[B, S, C]` -> `[B * n, S, C]` with each prompt's copies next to each other
/// (`repeat(1, n, 1).view(B * n, S, C)`).
pub(crate) fn repeat_per_prompt(x: Tensor<3>, n: usize) -> Tensor<3> {
    if n == 1 {
        return x;
    }
    let [b, s, c] = x.dims();
    x.unsqueeze_dim::<4>(1)
        .repeat_dim(1, n)
        .reshape([b * n, s, c])
}

/// `[B, C]` -> `[B * n, C]`, each row's copies together.
pub(crate) fn repeat_rows(x: Tensor<2>, n: usize) -> Tensor<2> {
    if n == 1 {
        return x;
    }
    let [b, c] = x.dims();
    x.unsqueeze_dim::<3>(1).repeat_dim(1, n).reshape([b * n, c])
}

/// The negative prompts for a batch of `batch` prompts: `""` each when none is given, one
/// string for all, or one per prompt.
pub(crate) fn negative_prompts(
    negative: Option<&Vec<String>>,
    batch: usize,
) -> Result<Vec<String>, PipelineError> {
    match negative {
        None => Ok(vec![String::new(); batch]),
        Some(v) if v.len() == 1 => Ok(vec![v.first().cloned().unwrap_or_default(); batch]),
        Some(v) if v.len() == batch => Ok(v.clone()),
        Some(v) => Err(PipelineError::arg(
            "negative_prompt",
            format!(
                "`negative_prompt` has batch size {}, but `prompt` has batch size {batch}; they must match",
                v.len()
            ),
        )),
    }
}

fn encode_text(
    encoder: &CLIPTextModel,
    ids: Tensor<2, Int>,
    clip_skip: Option<usize>,
) -> Result<Tensor<3>, PipelineError> {
    let out = encoder.forward(ids)?;
    match clip_skip {
        None => Ok(out.last_hidden_state),
        Some(k) => {
            // hidden_states[-(k + 1)], then the final layer norm.
            let idx = out.hidden_states.len().checked_sub(k + 1).ok_or_else(|| {
                PipelineError::arg(
                    "clip_skip",
                    format!(
                        "clip_skip {k} is deeper than the text encoder's {} layers",
                        out.hidden_states.len().saturating_sub(1)
                    ),
                )
            })?;
            let h = out
                .hidden_states
                .get(idx)
                .cloned()
                .ok_or_else(|| PipelineError::arg("clip_skip", "no such hidden state"))?;
            Ok(encoder.final_layer_norm.forward(h))
        }
    }
}

/// The generation size when the caller leaves it out: text-to-image defaults both when either
/// is missing or 0 (`if not height or not width`), inpaint each on its own (`height or ...`).
fn default_size(
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

/// `guidance_scale - 1` embedded as LCM's `get_guidance_scale_embedding`.
pub(crate) fn guidance_embedding(w: f32, dim: usize, batch: usize, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let w = (w - 1.0) * 1000.0;
    let scale = (10000f32).ln() / (half.saturating_sub(1).max(1)) as f32;
    let mut row: Vec<f32> = Vec::with_capacity(dim);
    let freqs: Vec<f32> = (0..half).map(|i| (-(i as f32) * scale).exp() * w).collect();
    row.extend(freqs.iter().map(|f| f.sin()));
    row.extend(freqs.iter().map(|f| f.cos()));
    row.resize(dim, 0.0);
    let data: Vec<f32> = (0..batch).flat_map(|_| row.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, [batch, dim]), device)
}

impl DiffusionPipeline {
    /// Runs the pipeline's `__call__` with `args`; `callback` sees every step and may stop the
    /// loop early (the output then holds the latents reached).
    pub fn call(
        &self,
        args: &CallArgs,
        callback: Option<&mut StepCallback<'_>>,
    ) -> Result<PipelineOutput, PipelineError> {
        if self.class().is_xl() {
            self.call_xl(args, callback)
        } else {
            self.call_sd(args, callback)
        }
    }

    /// diffusers' text-to-image `prepare_latents`, the initial latents a text-to-image `call`
    /// with `args` starts from: `randn_tensor(shape, generator, dtype=prompt_embeds.dtype)`
    /// drawn in the pipeline's dtype (torch's float16 / bfloat16 normals are not the float32
    /// ones rounded), or the given `latents`, times the scheduler's `init_noise_sigma`.
    /// `shape` is `[batch * num_images_per_prompt, C, height / f, width / f]` with the call's
    /// default height and width.
    pub fn prepare_latents(&self, args: &CallArgs) -> Result<Tensor<4>, PipelineError> {
        let factor = self.vae_scale_factor();
        let sample_size = self.config_usize("unet", "sample_size").unwrap_or(64);
        let channels = self.config_usize("unet", "in_channels").unwrap_or(4);
        let (height, width) =
            default_size(self.class(), args.height, args.width, sample_size * factor);
        check_size(height, width)?;
        let batch = match &args.prompt_embeds {
            Some(e) => e.dims()[0],
            None => args.prompt.len(),
        };
        let total = batch * args.num_images_per_prompt.max(1);
        let mut scheduler = self.require(self.scheduler(), "scheduler")?.clone();
        scheduler.set_timesteps(args.num_inference_steps)?;
        let sigma0 = scheduler.init_noise_sigma();
        // `latents * init_noise_sigma` runs in the pipeline's dtype (rounded in half precision).
        let half = noise_dtype(self.dtype());
        if let Some(l) = &args.latents {
            return Ok(round_tensor(l.clone().mul_scalar(sigma0), half));
        }
        let mut gens = generators_for(args, total)?;
        let shape = [total, channels, height / factor, width / factor];
        Ok(round_tensor(
            randn_as(shape, &mut gens, half, self.device())?.mul_scalar(sigma0),
            half,
        ))
    }

    /// SD 1.x/2.x `encode_prompt`: `(prompt_embeds, negative_prompt_embeds)`, both repeated
    /// `num_images_per_prompt` times; the negative is `None` without CFG.
    pub fn encode_prompt(
        &self,
        args: &CallArgs,
        do_cfg: bool,
    ) -> Result<(Tensor<3>, Option<Tensor<3>>), PipelineError> {
        let device = self.device();
        let n = args.num_images_per_prompt.max(1);
        let cond = match &args.prompt_embeds {
            Some(e) => e.clone(),
            None => {
                let tok = self.require(self.tokenizer(), "tokenizer")?;
                let te = self.require(self.text_encoder(), "text_encoder")?;
                encode_text(te, tokenize(tok, &args.prompt, device), args.clip_skip)?
            }
        };
        let batch = cond.dims()[0];
        let uncond = if do_cfg {
            Some(match &args.negative_prompt_embeds {
                Some(e) => e.clone(),
                None => {
                    let tok = self.require(self.tokenizer(), "tokenizer")?;
                    let te = self.require(self.text_encoder(), "text_encoder")?;
                    let neg = negative_prompts(args.negative_prompt.as_ref(), batch)?;
                    // diffusers never applies clip_skip to the negative prompt.
                    encode_text(te, tokenize(tok, &neg, device), None)?
                }
            })
        } else {
            None
        };
        Ok((
            repeat_per_prompt(cond, n),
            uncond.map(|u| repeat_per_prompt(u, n)),
        ))
    }

    fn call_sd(
        &self,
        args: &CallArgs,
        mut callback: Option<&mut StepCallback<'_>>,
    ) -> Result<PipelineOutput, PipelineError> {
        let class = self.class();
        let device = self.device().clone();
        let unet = self.require(self.unet(), "unet")?;
        let vae = self.require(self.vae(), "vae")?;
        let factor = self.vae_scale_factor();
        let processor = VaeImageProcessor::new(factor);
        let sample_size = self.config_usize("unet", "sample_size").unwrap_or(64);
        let unet_channels = self.config_usize("unet", "in_channels").unwrap_or(4);
        let latent_channels = self.config_usize("vae", "latent_channels").unwrap_or(4);
        let time_cond_dim = self.config_usize("unet", "time_cond_proj_dim");

        // Sizes: img2img takes the image's size (rounded down to the scale factor); the others
        // default to sample_size * vae_scale_factor.
        let (height, width) = match (class, &args.image) {
            (PipelineClass::StableDiffusionImg2Img, Some(images)) => {
                let first = images
                    .first()
                    .ok_or_else(|| PipelineError::arg("image", "no image given"))?;
                processor.default_height_width(first.dimensions(), args.height, args.width)
            }
            _ => default_size(class, args.height, args.width, sample_size * factor),
        };
        match class {
            // img2img takes no height/width in diffusers: the image's size rounded down to the
            // scale factor is used as is.
            PipelineClass::StableDiffusionImg2Img => {
                if height == 0 || width == 0 {
                    return Err(PipelineError::arg(
                        "image",
                        format!(
                            "image size {width}x{height} is smaller than the VAE scale factor {factor}"
                        ),
                    ));
                }
            }
            // The inpaint pipeline checks multiples of the VAE scale factor (its message still
            // says 8).
            PipelineClass::StableDiffusionInpaint => {
                if height % factor != 0 || width % factor != 0 || height == 0 || width == 0 {
                    return Err(PipelineError::arg(
                        "height/width",
                        format!(
                            "`height` and `width` have to be divisible by 8 but are {height} and {width}."
                        ),
                    ));
                }
            }
            _ => check_size(height, width)?,
        }
        let noise = noise_dtype(self.dtype());
        let strength = args.strength.unwrap_or(match class {
            PipelineClass::StableDiffusionImg2Img => 0.8,
            _ => 1.0,
        });
        if !(0.0..=1.0).contains(&strength) {
            return Err(PipelineError::arg(
                "strength",
                format!("the value of strength should be in [0.0, 1.0] but is {strength}"),
            ));
        }
        let guidance = args.guidance_scale.unwrap_or(default_guidance(class));
        // diffusers' SD img2img and inpaint `__call__` have no `guidance_rescale` (their
        // `**kwargs` swallow it): only text-to-image rescales.
        let guidance_rescale = match class {
            PipelineClass::StableDiffusion => args.guidance_rescale,
            _ => {
                if args.guidance_rescale > 0.0 {
                    tracing::warn!(
                        "guidance_rescale is ignored by {}, as in diffusers",
                        class.name()
                    );
                }
                0.0
            }
        };
        let do_cfg = guidance > 1.0 && time_cond_dim.is_none();

        let (cond, uncond) = self.encode_prompt(args, do_cfg)?;
        let total = cond.dims()[0];
        let embeds = match uncond {
            Some(u) => Tensor::cat(vec![u, cond], 0),
            None => cond,
        };

        let mut gens = generators_for(args, total)?;

        let mut scheduler = self.require(self.scheduler(), "scheduler")?.clone();
        scheduler.set_timesteps(args.num_inference_steps)?;
        let timesteps = match class {
            PipelineClass::StableDiffusion => scheduler.timesteps().to_vec(),
            _ => strength_timesteps(&mut scheduler, args.num_inference_steps, strength),
        };
        // Inpaint checks the step count strength leaves (`num_inference_steps - t_start`),
        // which is 0 where PNDM's schedule still has a timestep; img2img only fails on an
        // empty schedule.
        let steps = args.num_inference_steps;
        let no_step_left = class == PipelineClass::StableDiffusionInpaint
            && ((steps as f64 * crate::call::py_float(strength)) as usize).min(steps) == 0;
        if timesteps.is_empty() || no_step_left {
            return Err(PipelineError::arg(
                "strength",
                format!(
                    "After adjusting the num_inference_steps by strength parameter: {strength}, the number of pipeline steps is 0 which is < 1 and not appropriate for this pipeline."
                ),
            ));
        }
        let shape = [total, latent_channels, height / factor, width / factor];
        let sigma0 = scheduler.init_noise_sigma();
        let first_t = timesteps.first().copied().unwrap_or(0.0);

        // Inpaint state: mask and masked-image latents (doubled for CFG), the clean image
        // latents and the noise for the legacy 4-channel blend.
        let mut inpaint: Option<(Tensor<4>, Tensor<4>, Option<Tensor<4>>, Tensor<4>)> = None;
        // padding_mask_crop: the crop box and the original image and mask, for apply_overlay.
        type Overlay = (
            crate::image_processor::CropBox,
            Vec<image::RgbImage>,
            Vec<image::RgbImage>,
        );
        let mut overlay: Option<Overlay> = None;

        let latents = match class {
            PipelineClass::StableDiffusion => match &args.latents {
                // diffusers fails deep in the UNet on a wrongly shaped `latents`; name it here.
                Some(l) if l.dims() != shape => {
                    return Err(PipelineError::arg(
                        "latents",
                        format!(
                            "`latents` has shape {:?}, expected {shape:?} ([batch * num_images_per_prompt, channels, height / {factor}, width / {factor}])",
                            l.dims()
                        ),
                    ));
                }
                Some(l) => l.clone().mul_scalar(sigma0),
                None => randn_as(shape, &mut gens, noise, &device)?.mul_scalar(sigma0),
            },
            PipelineClass::StableDiffusionImg2Img => {
                let images = args
                    .image
                    .as_ref()
                    .ok_or_else(|| PipelineError::arg("image", "img2img needs an `image`"))?;
                let mut image = processor.preprocess(images, Some(height), Some(width), &device)?;
                let n_img = image.dims()[0];
                if gens.len() > 1 && n_img < total {
                    if total % n_img != 0 {
                        return Err(PipelineError::arg(
                            "image",
                            format!(
                                "Cannot duplicate `image` of batch size {n_img} to effective batch_size {total}"
                            ),
                        ));
                    }
                    image = image.repeat_dim(0, total / n_img);
                }
                let mut init = encode_vae_image_as(vae, image, &mut gens, noise, &device)?;
                let n_lat = init.dims()[0];
                if total > n_lat {
                    if total % n_lat != 0 {
                        return Err(PipelineError::arg(
                            "image",
                            format!(
                                "Cannot duplicate `image` of batch size {n_lat} to {total} text prompts."
                            ),
                        ));
                    }
                    init = init.repeat_dim(0, total / n_lat);
                }
                let noise = randn_as(init.dims(), &mut gens, noise, &device)?;
                scheduler.add_noise(init, noise, &vec![first_t; total])?
            }
            PipelineClass::StableDiffusionInpaint => {
                let images = args
                    .image
                    .as_ref()
                    .ok_or_else(|| PipelineError::arg("image", "inpainting needs an `image`"))?;
                let masks = args.mask_image.as_ref().ok_or_else(|| {
                    PipelineError::arg("mask_image", "inpainting needs a `mask_image`")
                })?;
                if unet_channels != 4 && unet_channels != 4 + 1 + latent_channels {
                    return Err(PipelineError::arg(
                        "unet",
                        format!(
                            "The unet should have either 4 or 9 input channels, not {unet_channels}."
                        ),
                    ));
                }
                // padding_mask_crop: crop both to the masked region grown to the generation
                // aspect, and fit them with resize_mode "fill".
                let (crops_coords, resize_mode) =
                    padding_mask_crop(args, images, masks, false, (height, width))?;
                overlay = crops_coords.map(|c| (c, images.clone(), masks.clone()));
                let init_image = processor.preprocess_with(
                    images,
                    Some(height),
                    Some(width),
                    resize_mode,
                    crops_coords,
                    &device,
                )?;
                let is_strength_max = strength == 1.0;
                let return_image_latents = unet_channels == 4;
                let image_latents = if return_image_latents
                    || (args.latents.is_none() && !is_strength_max)
                {
                    let l =
                        encode_vae_image_as(vae, init_image.clone(), &mut gens, noise, &device)?;
                    let n_lat = l.dims()[0];
                    Some(l.repeat_dim(0, (total / n_lat.max(1)).max(1)))
                } else {
                    None
                };
                let (latents, noise_t) = match &args.latents {
                    Some(l) => (l.clone().mul_scalar(sigma0), l.clone()),
                    None => {
                        let drawn = randn_as(shape, &mut gens, noise, &device)?;
                        let latents = if is_strength_max {
                            drawn.clone().mul_scalar(sigma0)
                        } else {
                            let il = image_latents
                                .clone()
                                .ok_or_else(|| PipelineError::arg("image", "no image latents"))?;
                            scheduler.add_noise(il, drawn.clone(), &vec![first_t; total])?
                        };
                        (latents, drawn)
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
                let mask =
                    nearest_downsample(mask_condition.clone(), height / factor, width / factor);
                let masked_latents = match &args.masked_image_latents {
                    // Given latents are used as they are: no VAE pass, no random draw.
                    Some(given) => {
                        let c = given.dims()[1];
                        if c != latent_channels {
                            return Err(PipelineError::arg(
                                "masked_image_latents",
                                format!(
                                    "masked_image_latents must have the VAE's {latent_channels} latent channels, got shape {:?}",
                                    given.dims()
                                ),
                            ));
                        }
                        given.clone()
                    }
                    None => {
                        let keep = mask_condition.lower_elem(0.5).float();
                        let masked_image = init_image * keep;
                        encode_vae_image_as(vae, masked_image, &mut gens, noise, &device)?
                    }
                };
                for (what, n) in [
                    ("mask_image", mask.dims()[0]),
                    ("masked_image_latents", masked_latents.dims()[0]),
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
                    let t = t.repeat_dim(0, (total / n.max(1)).max(1));
                    if do_cfg {
                        Tensor::cat(vec![t.clone(), t], 0)
                    } else {
                        t
                    }
                };
                if unet_channels != 4 {
                    let got = latent_channels + 1 + masked_latents.dims()[1];
                    if got != unet_channels {
                        return Err(PipelineError::arg(
                            "unet",
                            format!(
                                "the unet expects {unet_channels} input channels but latents, mask and masked_image_latents give {got}"
                            ),
                        ));
                    }
                }
                let noise = noise_t;
                inpaint = Some((dup(mask), dup(masked_latents), image_latents, noise));
                latents
            }
            _ => unreachable_class(class)?,
        };

        // Ancestral / eta noise is drawn in the model's dtype, as
        // `randn_tensor(..., dtype=model_output.dtype)` does.
        let step_options = StepOptions {
            eta: Some(args.eta),
            noise_dtype: noise,
            ..StepOptions::default()
        };
        let timestep_cond = time_cond_dim.map(|d| guidance_embedding(guidance, d, total, &device));
        // torch keeps the latents in the model dtype: from here on every elementwise op of the
        // loop is rounded to it (`round_tensor` is the identity in float32).
        let half = noise;
        let mut latents = round_tensor(latents, half);
        let mut interrupted = false;
        let steps = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if do_cfg {
                Tensor::cat(vec![latents.clone(), latents.clone()], 0)
            } else {
                latents.clone()
            };
            let mut input = round_tensor(scheduler.scale_model_input(input, t)?, half);
            if let (Some((mask, masked, _, _)), 9..) = (&inpaint, unet_channels) {
                input = Tensor::cat(vec![input, mask.clone(), masked.clone()], 1);
            }
            let tt = Tensor::<1>::from_data(TensorData::new(vec![t as f32], [1]), &device);
            let mut unet_in = UNet2DConditionInput::new(input, tt, embeds.clone());
            unet_in.timestep_cond = timestep_cond.clone();
            let noise_pred = unet.forward(unet_in)?.cast(burn::tensor::DType::F32);
            let noise_pred = if do_cfg {
                guide(noise_pred, guidance, guidance_rescale, half)
            } else {
                noise_pred
            };
            latents = scheduler
                .step(noise_pred, t, latents, &step_options, Some(&mut gens))?
                .prev_sample;
            if let (Some((mask, _, Some(image_latents), noise)), 4) = (&inpaint, unet_channels) {
                let init_mask = mask.clone().narrow(0, 0, total);
                let mut proper = image_latents.clone();
                if let Some(&next_t) = timesteps.get(i + 1) {
                    proper = scheduler.add_noise(proper, noise.clone(), &[next_t])?;
                }
                latents = round_tensor(
                    init_mask.clone().neg().add_scalar(1.0) * proper + init_mask * latents,
                    half,
                );
            }
            if let Some(cb) = callback.as_mut() {
                let info = StepInfo {
                    step: i,
                    total: steps,
                    timestep: t,
                    latents: &latents,
                };
                if cb(&info) == StepControl::Stop {
                    interrupted = true;
                    break;
                }
            }
        }

        let (images, nsfw_content_detected) = match args.output_type {
            OutputType::Latent => (None, None),
            _ => {
                let (images, flags) = decode_latents(self, vae, latents.clone())?;
                let images = match &overlay {
                    Some((crop, originals, masks)) => {
                        apply_overlays(&processor, &images, *crop, originals, masks)?
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
}

/// The call's generators, with diffusers' error when a list of them does not match the
/// effective batch size `total` (one generator, or none, serves any batch).
pub(crate) fn generators_for(
    args: &CallArgs,
    total: usize,
) -> Result<Vec<diff_schedulers::TorchGenerator>, PipelineError> {
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

/// `padding_mask_crop`'s checks (`check_inputs`: one image given as pixels, one mask, PIL
/// output, and here also equal image and mask sizes) and crop box
/// (`mask_processor.get_crop_region(mask_image, width, height, pad)`, then
/// `resize_mode="fill"`), shared by the SD and SDXL inpaint pipelines. `latents_given` says
/// that the image came as latents (SDXL's `image_latents`), which a crop cannot use.
pub(crate) fn padding_mask_crop(
    args: &CallArgs,
    images: &[image::RgbImage],
    masks: &[image::RgbImage],
    latents_given: bool,
    (height, width): (usize, usize),
) -> Result<(Option<crate::image_processor::CropBox>, ResizeMode), PipelineError> {
    let Some(pad) = args.padding_mask_crop else {
        return Ok((None, ResizeMode::Default));
    };
    let (image, mask) = match (images, masks, latents_given) {
        ([i], [m], false) => (i, m),
        _ => {
            return Err(PipelineError::arg(
                "padding_mask_crop",
                format!(
                    "inpainting mask crop needs one image and one mask (the image as pixels), got {} images{} and {} masks",
                    images.len(),
                    if latents_given { " (as latents)" } else { "" },
                    masks.len()
                ),
            ));
        }
    };
    if args.output_type != OutputType::Pil {
        return Err(PipelineError::arg(
            "output_type",
            format!(
                "The output type should be PIL when inpainting mask crop, but is {:?}.",
                args.output_type
            ),
        ));
    }
    if image.dimensions() != mask.dimensions() {
        return Err(PipelineError::arg(
            "mask_image",
            format!(
                "with padding_mask_crop the mask ({}x{}) must have the image's size ({}x{})",
                mask.width(),
                mask.height(),
                image.width(),
                image.height()
            ),
        ));
    }
    Ok((
        Some(get_crop_region(mask, width, height, pad)?),
        ResizeMode::Fill,
    ))
}

/// The inpaint pipeline's last step with `padding_mask_crop`: each generated image (rounded to
/// 8 bits, as `output_type="pil"`) is pasted into the crop box of the original image through
/// the mask (`apply_overlay`); the result has the original's size.
pub(crate) fn apply_overlays(
    processor: &VaeImageProcessor,
    images: &FloatImages,
    crop: crate::image_processor::CropBox,
    originals: &[image::RgbImage],
    masks: &[image::RgbImage],
) -> Result<FloatImages, PipelineError> {
    let (Some(original), Some(mask)) = (originals.first(), masks.first()) else {
        return Err(PipelineError::arg("image", "no image to overlay on"));
    };
    let mut data = Vec::new();
    for generated in images.to_rgb8_all() {
        let out = processor.apply_overlay(mask, original, &generated, Some(crop))?;
        data.extend(out.as_raw().iter().map(|&v| f32::from(v) / 255.0));
    }
    Ok(FloatImages {
        count: images.count,
        height: original.height() as usize,
        width: original.width() as usize,
        data,
    })
}

/// `F.interpolate(mask, size=(h, w))` (mode "nearest": source index `floor(i * in / out)`).
pub(crate) fn nearest_downsample(mask: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let [b, c, ih, iw] = mask.dims();
    let device = mask.device();
    let values: Vec<f32> = mask
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let mut out = Vec::with_capacity(b * c * h * w);
    for plane in 0..b * c {
        for y in 0..h {
            let sy = (y * ih) / h.max(1);
            for x in 0..w {
                let sx = (x * iw) / w.max(1);
                out.push(
                    values
                        .get((plane * ih + sy) * iw + sx)
                        .copied()
                        .unwrap_or(0.0),
                );
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, c, h, w]), &device)
}

fn unreachable_class(class: PipelineClass) -> Result<Tensor<4>, PipelineError> {
    Err(PipelineError::arg(
        "pipeline",
        format!(
            "{} is not a Stable Diffusion 1.x/2.x pipeline",
            class.name()
        ),
    ))
}
