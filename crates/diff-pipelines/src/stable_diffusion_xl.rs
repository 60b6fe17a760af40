//! `StableDiffusionXLPipeline`, `StableDiffusionXLImg2ImgPipeline` (also the refiner's class) and
//! `StableDiffusionXLInpaintPipeline` `__call__` (the inpaint-only parts are in
//! `stable_diffusion_xl_inpaint.rs`).
//!
//! Differences from SD 1.x (diffusers 0.42.1): two text encoders whose penultimate hidden states
//! (`hidden_states[-2]`, no final layer norm; `-(clip_skip + 2)` with clip_skip) are
//! concatenated on the feature axis; the pooled, projected embedding of `text_encoder_2` and the
//! "time ids" go to the UNet's added conditioning; the negative embeddings are zeros when there is
//! no negative prompt and `force_zeros_for_empty_prompt` is set; `set_begin_index(0)` before the
//! text-to-image loop.
//!
//! The refiner layout (`text_encoder` / `tokenizer` null) encodes with `text_encoder_2` alone, and
//! with `requires_aesthetics_score` its time ids are original size + crop + aesthetic score (5
//! per row) instead of original size + crop + target size (6). img2img and inpaint share
//! `get_timesteps` (strength, or `denoising_start` which ignores strength and adds no noise) and
//! `_get_add_time_ids`, including diffusers' checks of the time-id width against the UNet's
//! `projection_class_embeddings_input_dim`.

use crate::call::{
    CallArgs, OutputType, PipelineOutput, StepCallback, StepControl, StepInfo, check_size,
    decode_latents, default_guidance, encode_vae_image_as, guide, noise_dtype, randn_as,
    strength_timesteps, timestep_cutoff,
};
use crate::error::PipelineError;
use crate::image_processor::VaeImageProcessor;
use crate::pipeline::{DiffusionPipeline, PipelineClass};
use crate::stable_diffusion::{
    guidance_embedding, negative_prompts, repeat_per_prompt, repeat_rows, tokenize,
};
use crate::stable_diffusion_xl_inpaint::XlInpaint;
use burn::tensor::{Device, Tensor, TensorData};
use diff_format::configs::unet::SampleSize;
use diff_models::{AutoencoderKL, UNet2DConditionInput, UNet2DConditionModel};
use diff_schedulers::precision::round_tensor;
use diff_schedulers::{NoiseDtype, Scheduler, StepOptions, TorchGenerator, to_tensor};
use serde_json::Value;

/// SDXL prompt embeddings: `[B*n, 77, C1 + C2]` and pooled `[B*n, P]`, with the negatives when
/// CFG is on.
pub struct XlEmbeds {
    /// `prompt_embeds`.
    pub prompt_embeds: Tensor<3>,
    /// `pooled_prompt_embeds`.
    pub pooled: Tensor<2>,
    /// `negative_prompt_embeds` (CFG only).
    pub negative_prompt_embeds: Option<Tensor<3>>,
    /// `negative_pooled_prompt_embeds` (CFG only).
    pub negative_pooled: Option<Tensor<2>>,
}

fn hidden_index(len: usize, clip_skip: Option<usize>) -> Result<usize, PipelineError> {
    let back = clip_skip.map_or(2, |k| k + 2);
    len.checked_sub(back).ok_or_else(|| {
        PipelineError::arg(
            "clip_skip",
            format!(
                "clip_skip {clip_skip:?} is deeper than the text encoder's {} layers",
                len.saturating_sub(1)
            ),
        )
    })
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// `unet.config.sample_size` (the first side of a `[height, width]` pair), 128 when absent.
fn unet_sample_size(unet: &UNet2DConditionModel) -> usize {
    match &unet.config.sample_size {
        Some(SampleSize::Square(s)) => to_usize(*s),
        Some(SampleSize::HeightWidth(v)) => v.first().copied().map_or(128, to_usize),
        None => 128,
    }
}

/// The Python tuple `a + b + c` of `_get_add_time_ids`, as floats.
fn time_row(a: (usize, usize), b: (usize, usize), tail: &[f32]) -> Vec<f32> {
    let mut v = vec![a.0 as f32, a.1 as f32, b.0 as f32, b.1 as f32];
    v.extend_from_slice(tail);
    v
}

/// SDXL img2img / inpaint `get_timesteps`: the tail of the schedule for `strength`, or (with a
/// valid `denoising_start`) the timesteps below `denoising_start`'s cutoff, strength ignored.
/// Sets the scheduler's begin index as diffusers does.
fn xl_get_timesteps(
    scheduler: &mut Scheduler,
    num_inference_steps: usize,
    strength: f32,
    denoising_start: Option<f32>,
) -> Vec<f64> {
    let Some(start) = denoising_start else {
        return strength_timesteps(scheduler, num_inference_steps, strength);
    };
    let cutoff = timestep_cutoff(scheduler, start);
    let all = scheduler.timesteps().to_vec();
    let mut n = all.iter().filter(|t| **t < cutoff).count();
    // A second-order scheduler duplicates every timestep but the first: an even count would
    // cut between the two derivative evaluations of one step.
    if scheduler.order() == 2 && n % 2 == 0 {
        n += 1;
    }
    let t_start = all.len().saturating_sub(n);
    scheduler.set_begin_index(t_start);
    all.get(t_start..).map(<[f64]>::to_vec).unwrap_or_default()
}

/// diffusers' check of the added-conditioning width in `_get_add_time_ids`:
/// `addition_time_embed_dim * len(time ids) + projection dim` must equal the UNet's
/// `projection_class_embeddings_input_dim` (`add_embedding.linear_1.in_features`). The img2img
/// and inpaint classes (`aesthetics_hint`) say which way `requires_aesthetics_score` is wrong
/// when the widths differ by one time id.
fn check_add_embed_dim(
    unet: &UNet2DConditionModel,
    n_ids: usize,
    projection_dim: usize,
    aesthetics_hint: Option<(f32, f32)>,
    target_size: (usize, usize),
) -> Result<(), PipelineError> {
    let (Some(per_id), Some(expected)) = (
        unet.config.addition_time_embed_dim,
        unet.config.projection_class_embeddings_input_dim,
    ) else {
        return Ok(());
    };
    let (per_id, expected) = (to_usize(per_id), to_usize(expected));
    let passed = per_id.saturating_mul(n_ids).saturating_add(projection_dim);
    let head = format!(
        "Model expects an added time embedding vector of length {expected}, but a vector of {passed} was created."
    );
    // diffusers 0.42.1 gives these two hints the wrong way round (it asks to enable the score
    // when the UNet wants one id more, i.e. the 6-id layout); ours name the fix that works.
    let aesthetic = aesthetics_hint.unwrap_or_default();
    if aesthetics_hint.is_some() && passed > expected && passed - expected == per_id {
        Err(PipelineError::arg(
            "requires_aesthetics_score",
            format!(
                "{head} The UNet takes 5 time ids (a refiner): enable `requires_aesthetics_score` (`pipe.register_to_config(requires_aesthetics_score=True)`, or `requires_aesthetics_score: true` in model_index.json) so that `aesthetic_score` {} and `negative_aesthetic_score` {} are used.",
                aesthetic.0, aesthetic.1
            ),
        ))
    } else if aesthetics_hint.is_some() && expected > passed && expected - passed == per_id {
        Err(PipelineError::arg(
            "requires_aesthetics_score",
            format!(
                "{head} The UNet takes 6 time ids (a base model): disable `requires_aesthetics_score` (`pipe.register_to_config(requires_aesthetics_score=False)`) so that `target_size` {target_size:?} is used."
            ),
        ))
    } else if passed != expected {
        Err(PipelineError::arg(
            "unet",
            format!(
                "{head} The model has an incorrect config. Please check `unet.config.time_embedding_type` and `text_encoder_2.config.projection_dim`."
            ),
        ))
    } else {
        Ok(())
    }
}

/// The added time ids of one run, `[rows, 5 or 6]`: the positive row per image, and with CFG
/// the negative rows first.
struct TimeIds {
    pos: Vec<f32>,
    neg: Vec<f32>,
}

impl TimeIds {
    fn tensor(
        &self,
        total: usize,
        do_cfg: bool,
        img2img_order: bool,
        device: &Device,
    ) -> Tensor<2> {
        let width = self.pos.len().max(1);
        let rows = |v: &[f32], times: usize| -> Vec<f32> {
            (0..times).flat_map(|_| v.iter().copied()).collect()
        };
        let data = match (do_cfg, img2img_order) {
            (false, _) => rows(&self.pos, total),
            // txt2img: cat([neg, pos]) then repeat(B*n, 1): [neg, pos, neg, pos, ...].
            (true, false) => {
                let pair: Vec<f32> = self.neg.iter().chain(self.pos.iter()).copied().collect();
                rows(&pair, total)
            }
            // img2img / inpaint: repeat each, then cat: [neg x B*n, pos x B*n].
            (true, true) => {
                let mut v = rows(&self.neg, total);
                v.extend(rows(&self.pos, total));
                v
            }
        };
        let n = data.len() / width;
        Tensor::from_data(TensorData::new(data, [n, width]), device)
    }
}

impl DiffusionPipeline {
    /// Encodes one side (prompts or negative prompts) with both encoders: the concatenated
    /// hidden states and the pooled projection of `text_encoder_2`.
    fn encode_xl_side(
        &self,
        prompts: &[String],
        prompts_2: &[String],
        clip_skip: Option<usize>,
    ) -> Result<(Tensor<3>, Tensor<2>), PipelineError> {
        let device = self.device();
        let mut parts = Vec::new();
        // diffusers zips `[prompt, prompt_2]` with the tokenizers present: without the first
        // text encoder (the refiner) `text_encoder_2` gets `prompt`, and `prompt_2` is unused.
        let second_prompts = match (self.tokenizer(), self.text_encoder()) {
            (Some(tok), Some(te)) => {
                let out = te.forward(tokenize(tok, prompts, device))?;
                let idx = hidden_index(out.hidden_states.len(), clip_skip)?;
                parts.push(
                    out.hidden_states
                        .get(idx)
                        .cloned()
                        .ok_or_else(|| PipelineError::arg("clip_skip", "no such hidden state"))?,
                );
                prompts_2
            }
            _ => prompts,
        };
        let tok2 = self.require(self.tokenizer_2(), "tokenizer_2")?;
        let te2 = self.require(self.text_encoder_2(), "text_encoder_2")?;
        let out = te2.forward(tokenize(tok2, second_prompts, device))?;
        let idx = hidden_index(out.hidden_states.len(), clip_skip)?;
        parts.push(
            out.hidden_states
                .get(idx)
                .cloned()
                .ok_or_else(|| PipelineError::arg("clip_skip", "no such hidden state"))?,
        );
        Ok((Tensor::cat(parts, 2), out.text_embeds))
    }

    /// SDXL `encode_prompt`.
    pub fn encode_prompt_xl(
        &self,
        args: &CallArgs,
        do_cfg: bool,
    ) -> Result<XlEmbeds, PipelineError> {
        let n = args.num_images_per_prompt.max(1);
        let (cond, pooled) = match (&args.prompt_embeds, &args.pooled_prompt_embeds) {
            (Some(e), Some(p)) => (e.clone(), p.clone()),
            (Some(_), None) => {
                return Err(PipelineError::arg(
                    "pooled_prompt_embeds",
                    "If `prompt_embeds` are provided, `pooled_prompt_embeds` also have to be passed.",
                ));
            }
            _ => {
                let p2 = args.prompt_2.clone().unwrap_or_else(|| args.prompt.clone());
                self.encode_xl_side(&args.prompt, &p2, args.clip_skip)?
            }
        };
        let batch = cond.dims()[0];
        let force_zeros = self
            .config()
            .get("force_zeros_for_empty_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let (neg, neg_pooled) = if !do_cfg {
            (None, None)
        } else if let (Some(e), Some(p)) = (
            &args.negative_prompt_embeds,
            &args.negative_pooled_prompt_embeds,
        ) {
            (Some(e.clone()), Some(p.clone()))
        } else if args.negative_prompt.is_none() && force_zeros {
            (Some(cond.zeros_like()), Some(pooled.zeros_like()))
        } else {
            let neg = negative_prompts(args.negative_prompt.as_ref(), batch)?;
            let neg2 = negative_prompts(
                args.negative_prompt_2
                    .as_ref()
                    .or(args.negative_prompt.as_ref()),
                batch,
            )?;
            // The negative side never uses clip_skip.
            let (e, p) = self.encode_xl_side(&neg, &neg2, None)?;
            (Some(e), Some(p))
        };
        Ok(XlEmbeds {
            prompt_embeds: repeat_per_prompt(cond, n),
            pooled: repeat_rows(pooled, n),
            negative_prompt_embeds: neg.map(|e| repeat_per_prompt(e, n)),
            negative_pooled: neg_pooled.map(|p| repeat_rows(p, n)),
        })
    }

    /// `requires_aesthetics_score` from the pipeline config (false by default).
    fn requires_aesthetics_score(&self) -> bool {
        self.config()
            .get("requires_aesthetics_score")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The VAE's `latents_mean` / `latents_std` (some SDXL fine-tunes), as `[1, C, 1, 1]`.
    fn latents_stats(
        &self,
        device: &Device,
    ) -> Result<Option<(Tensor<4>, Tensor<4>)>, PipelineError> {
        let stats = |key: &str| -> Option<Vec<f32>> {
            self.config_value("vae", key)?
                .as_array()?
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32))
                .collect()
        };
        let (Some(mean), Some(std)) = (stats("latents_mean"), stats("latents_std")) else {
            return Ok(None);
        };
        let (cm, cs) = (mean.len(), std.len());
        Ok(Some((
            to_tensor(mean, [1, cm, 1, 1], device)?,
            to_tensor(std, [1, cs, 1, 1], device)?,
        )))
    }

    /// SDXL img2img `prepare_latents`: the init image's latents (VAE posterior sample, or the
    /// `image_latents` given), repeated to the batch, noised to the first timestep unless
    /// `denoising_start` was given.
    #[allow(clippy::too_many_arguments)]
    fn prepare_img2img_latents(
        &self,
        args: &CallArgs,
        vae: &AutoencoderKL,
        processor: &VaeImageProcessor,
        size: (usize, usize),
        total: usize,
        gens: &mut [TorchGenerator],
        scheduler: &Scheduler,
        first_t: f64,
    ) -> Result<Tensor<4>, PipelineError> {
        let device = self.device().clone();
        let mut init = if let Some(latents) = &args.image_latents {
            latents.clone()
        } else {
            let images = args
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
                noise_dtype(self.dtype())
            };
            let mut init = encode_vae_image_as(vae, image, gens, vae_noise, &device)?;
            if let Some((mean, std)) = self.latents_stats(&device)? {
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
                    format!(
                        "Cannot duplicate `image` of batch size {n_lat} to {total} text prompts."
                    ),
                ));
            }
            init = init.repeat_dim(0, total / n_lat);
        }
        if args.denoising_start.is_some() {
            // add_noise=False: the latents are already partly denoised (a base run's output).
            return Ok(init);
        }
        let noise = randn_as(init.dims(), gens, noise_dtype(self.dtype()), &device)?;
        Ok(scheduler.add_noise(init, noise, &vec![first_t; total])?)
    }

    pub(crate) fn call_xl(
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
        let sample_size = unet_sample_size(unet);
        let latent_channels = self.config_usize("vae", "latent_channels").unwrap_or(4);
        let img2img = class == PipelineClass::StableDiffusionXLImg2Img;
        let inpaint = class == PipelineClass::StableDiffusionXLInpaint;

        let (height, width) = if img2img {
            match (&args.image_latents, &args.image) {
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
            }
        } else {
            (
                args.height.unwrap_or(sample_size * factor),
                args.width.unwrap_or(sample_size * factor),
            )
        };
        check_size(height, width)?;
        let strength = args.strength.unwrap_or(if inpaint { 0.9999 } else { 0.3 });
        if !(0.0..=1.0).contains(&strength) {
            return Err(PipelineError::arg(
                "strength",
                format!("the value of strength should be in [0.0, 1.0] but is {strength}"),
            ));
        }
        let guidance = args.guidance_scale.unwrap_or(default_guidance(class));
        let do_cfg = guidance > 1.0 && unet.config.time_cond_proj_dim.is_none();

        let embeds = self.encode_prompt_xl(args, do_cfg)?;
        let total = embeds.prompt_embeds.dims()[0];
        let mut gens = crate::stable_diffusion::generators_for(args, total)?;

        let mut scheduler = self.require(self.scheduler(), "scheduler")?.clone();
        scheduler.set_timesteps(args.num_inference_steps)?;
        let valid = |f: Option<f32>| f.filter(|v| *v > 0.0 && *v < 1.0);
        let denoising_start = if img2img || inpaint {
            valid(args.denoising_start)
        } else {
            None
        };
        let denoising_end = valid(args.denoising_end);
        if let (Some(s), Some(e)) = (denoising_start, denoising_end)
            && s >= e
        {
            return Err(PipelineError::arg(
                "denoising_start",
                format!(
                    "`denoising_start`: {s} cannot be larger than or equal to `denoising_end`: {e} when using type float."
                ),
            ));
        }
        let mut timesteps = if img2img || inpaint {
            xl_get_timesteps(
                &mut scheduler,
                args.num_inference_steps,
                strength,
                denoising_start,
            )
        } else {
            scheduler.timesteps().to_vec()
        };
        // Inpaint checks the step count strength leaves (`num_inference_steps - t_start`),
        // which is 0 where PNDM's schedule still has a timestep; img2img only fails on an
        // empty schedule.
        let steps = args.num_inference_steps;
        let no_step_left = inpaint
            && denoising_start.is_none()
            && ((steps as f64 * crate::call::py_float(strength)) as usize).min(steps) == 0;
        if timesteps.is_empty() || no_step_left {
            return Err(PipelineError::arg(
                "strength",
                format!(
                    "After adjusting the num_inference_steps by strength parameter: {strength}, the number of pipeline steps is 0 which is < 1 and not appropriate for this pipeline."
                ),
            ));
        }
        // The noise level of the init latents is the first timestep of the strength schedule,
        // taken before `denoising_end` trims the tail.
        let first_t = timesteps.first().copied().unwrap_or(0.0);
        if let Some(end) = denoising_end {
            let cutoff = timestep_cutoff(&scheduler, end);
            let keep = timesteps.iter().filter(|t| **t >= cutoff).count();
            timesteps.truncate(keep);
        }
        let sigma0 = scheduler.init_noise_sigma();
        let mut inpaint_state: Option<XlInpaint> = None;
        let latents = if img2img {
            match &args.latents {
                // Given latents are used as they are (prepare_latents is skipped).
                Some(l) => l.clone(),
                None => self.prepare_img2img_latents(
                    args,
                    vae,
                    &processor,
                    (height, width),
                    total,
                    &mut gens,
                    &scheduler,
                    first_t,
                )?,
            }
        } else if inpaint {
            let (latents, state) = XlInpaint::prepare(
                self,
                args,
                vae,
                unet,
                &processor,
                (height, width),
                total,
                do_cfg,
                strength,
                &mut gens,
                &scheduler,
                first_t,
            )?;
            inpaint_state = Some(state);
            latents
        } else {
            let shape = [total, latent_channels, height / factor, width / factor];
            match &args.latents {
                Some(l) => l.clone().mul_scalar(sigma0),
                None => randn_as(shape, &mut gens, noise_dtype(self.dtype()), &device)?
                    .mul_scalar(sigma0),
            }
        };

        // Given latents (or image latents) must fit the batch and the UNet.
        let [n_lat, c_lat, lh, lw] = latents.dims();
        if n_lat != total || c_lat != latent_channels {
            return Err(PipelineError::arg(
                "latents",
                format!(
                    "the latents have shape {:?}, expected batch {total} (prompts x num_images_per_prompt) and {latent_channels} channels",
                    latents.dims()
                ),
            ));
        }
        // Added conditioning: sizes default to the latents' size in pixels.
        let (h, w) = if img2img || inpaint {
            (lh * factor, lw * factor)
        } else {
            (height, width)
        };
        let original = args.original_size.unwrap_or((h, w));
        let target = args.target_size.unwrap_or((h, w));
        let crops = args.crops_coords_top_left;
        let projection_dim = self
            .config_usize("text_encoder_2", "projection_dim")
            .unwrap_or_else(|| embeds.pooled.dims()[1]);
        let time_ids = if img2img || inpaint {
            let neg_original = args.negative_original_size.unwrap_or(original);
            let neg_target = args.negative_target_size.unwrap_or(target);
            let ids = if self.requires_aesthetics_score() {
                TimeIds {
                    pos: time_row(original, crops, &[args.aesthetic_score]),
                    neg: time_row(
                        neg_original,
                        args.negative_crops_coords_top_left,
                        &[args.negative_aesthetic_score],
                    ),
                }
            } else {
                // diffusers 0.42.1 uses the positive crop coordinates for the negative ids here.
                TimeIds {
                    pos: time_row(original, crops, &[target.0 as f32, target.1 as f32]),
                    neg: time_row(
                        neg_original,
                        crops,
                        &[neg_target.0 as f32, neg_target.1 as f32],
                    ),
                }
            };
            check_add_embed_dim(
                unet,
                ids.pos.len(),
                projection_dim,
                Some((args.aesthetic_score, args.negative_aesthetic_score)),
                target,
            )?;
            ids
        } else {
            let pos = time_row(original, crops, &[target.0 as f32, target.1 as f32]);
            let neg = match (args.negative_original_size, args.negative_target_size) {
                (Some(o), Some(t)) => time_row(
                    o,
                    args.negative_crops_coords_top_left,
                    &[t.0 as f32, t.1 as f32],
                ),
                _ => pos.clone(),
            };
            check_add_embed_dim(unet, pos.len(), projection_dim, None, target)?;
            TimeIds { pos, neg }
        };
        let time_ids = time_ids.tensor(total, do_cfg, img2img || inpaint, &device);
        let (prompt_embeds, text_embeds) =
            match (embeds.negative_prompt_embeds, embeds.negative_pooled) {
                (Some(ne), Some(np)) if do_cfg => (
                    Tensor::cat(vec![ne, embeds.prompt_embeds], 0),
                    Tensor::cat(vec![np, embeds.pooled], 0),
                ),
                _ => (embeds.prompt_embeds, embeds.pooled),
            };

        if !(img2img || inpaint) {
            scheduler.set_begin_index(0);
        }
        // Ancestral / eta noise is drawn in the model's dtype (`model_output.dtype`).
        let step_options = StepOptions {
            eta: Some(args.eta),
            noise_dtype: noise_dtype(self.dtype()),
            ..StepOptions::default()
        };
        // A guidance-distilled UNet (`time_cond_proj_dim`) gets `guidance_scale - 1` embedded.
        let timestep_cond = unet
            .config
            .time_cond_proj_dim
            .map(|d| guidance_embedding(guidance, to_usize(d), total, &device));
        // torch keeps the latents in the model dtype: from here on every elementwise op of the
        // loop is rounded to it (`round_tensor` is the identity in float32).
        let half = noise_dtype(self.dtype());
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
            if let Some(state) = &inpaint_state {
                input = state.unet_input(input);
            }
            let tt = Tensor::<1>::from_data(TensorData::new(vec![t as f32], [1]), &device);
            let mut unet_in = UNet2DConditionInput::new(input, tt, prompt_embeds.clone());
            unet_in.text_embeds = Some(text_embeds.clone());
            unet_in.time_ids = Some(time_ids.clone());
            unet_in.timestep_cond = timestep_cond.clone();
            let noise_pred = unet.forward(unet_in)?.cast(burn::tensor::DType::F32);
            let noise_pred = if do_cfg {
                guide(noise_pred, guidance, args.guidance_rescale, half)
            } else {
                noise_pred
            };
            latents = scheduler
                .step(noise_pred, t, latents, &step_options, Some(&mut gens))?
                .prev_sample;
            if let Some(state) = &inpaint_state {
                latents = state.blend(latents, &scheduler, timesteps.get(i + 1).copied())?;
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
                let images = match &inpaint_state {
                    Some(state) => state.finish(&processor, images)?,
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
