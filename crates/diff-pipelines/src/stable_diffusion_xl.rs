//! `StableDiffusionXLPipeline` and `StableDiffusionXLImg2ImgPipeline` `__call__`.
//!
//! Differences from SD 1.x (diffusers 0.42.1): two text encoders whose penultimate hidden states
//! (`hidden_states[-2]`, no final layer norm; `-(clip_skip + 2)` with clip_skip) are
//! concatenated on the feature axis; the pooled, projected embedding of `text_encoder_2` and six
//! "time ids" (original size, crop, target size) go to the UNet's added conditioning; the
//! negative embeddings are zeros when there is no negative prompt and
//! `force_zeros_for_empty_prompt` is set; `set_begin_index(0)` before the loop.

use crate::call::{
    CallArgs, OutputType, PipelineOutput, StepCallback, StepControl, StepInfo, check_size,
    decode_latents, default_guidance, encode_vae_image, guide, randn, strength_timesteps,
    timestep_cutoff,
};
use crate::error::PipelineError;
use crate::image_processor::VaeImageProcessor;
use crate::pipeline::{DiffusionPipeline, PipelineClass};
use crate::stable_diffusion::{negative_prompts, repeat_per_prompt, repeat_rows, tokenize};
use burn::tensor::{Tensor, TensorData};
use diff_models::UNet2DConditionInput;
use diff_schedulers::{StepOptions, to_tensor};
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
        if let (Some(tok), Some(te)) = (self.tokenizer(), self.text_encoder()) {
            let out = te.forward(tokenize(tok, prompts, device))?;
            let idx = hidden_index(out.hidden_states.len(), clip_skip)?;
            parts.push(
                out.hidden_states
                    .get(idx)
                    .cloned()
                    .ok_or_else(|| PipelineError::arg("clip_skip", "no such hidden state"))?,
            );
        }
        let tok2 = self.require(self.tokenizer_2(), "tokenizer_2")?;
        let te2 = self.require(self.text_encoder_2(), "text_encoder_2")?;
        let out = te2.forward(tokenize(tok2, prompts_2, device))?;
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
        let sample_size = self.config_usize("unet", "sample_size").unwrap_or(128);
        let latent_channels = self.config_usize("vae", "latent_channels").unwrap_or(4);
        let img2img = class == PipelineClass::StableDiffusionXLImg2Img;

        let (height, width) = match (img2img, &args.image) {
            (true, Some(images)) => {
                let first = images
                    .first()
                    .ok_or_else(|| PipelineError::arg("image", "no image given"))?;
                processor.default_height_width(first.dimensions(), args.height, args.width)
            }
            (true, None) => return Err(PipelineError::arg("image", "img2img needs an `image`")),
            _ => (
                args.height.unwrap_or(sample_size * factor),
                args.width.unwrap_or(sample_size * factor),
            ),
        };
        check_size(height, width)?;
        let strength = args.strength.unwrap_or(0.3);
        if !(0.0..=1.0).contains(&strength) {
            return Err(PipelineError::arg(
                "strength",
                format!("the value of strength should be in [0.0, 1.0] but is {strength}"),
            ));
        }
        let guidance = args.guidance_scale.unwrap_or(default_guidance(class));
        let do_cfg = guidance > 1.0 && self.config_usize("unet", "time_cond_proj_dim").is_none();

        let embeds = self.encode_prompt_xl(args, do_cfg)?;
        let total = embeds.prompt_embeds.dims()[0];
        let mut gens = args.generator.build();
        if gens.len() > 1 && gens.len() != total {
            return Err(PipelineError::arg(
                "generator",
                format!(
                    "You have passed a list of generators of length {}, but requested an effective batch size of {total}. Make sure the batch size matches the length of the generators.",
                    gens.len()
                ),
            ));
        }

        let mut scheduler = self.require(self.scheduler(), "scheduler")?.clone();
        scheduler.set_timesteps(args.num_inference_steps)?;
        let valid = |f: Option<f32>| f.filter(|v| *v > 0.0 && *v < 1.0);
        let denoising_start = if img2img {
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
        let mut timesteps = match (img2img, denoising_start) {
            (true, None) => strength_timesteps(&mut scheduler, args.num_inference_steps, strength),
            (true, Some(start)) => {
                // Strength is ignored: start at the timestep `denoising_start` names.
                let cutoff = timestep_cutoff(&scheduler, start);
                let all = scheduler.timesteps().to_vec();
                let mut n = all.iter().filter(|t| **t < cutoff).count();
                if scheduler.order() == 2 && n % 2 == 0 {
                    n += 1;
                }
                let t_start = all.len().saturating_sub(n);
                scheduler.set_begin_index(t_start);
                all.get(t_start..).map(<[f64]>::to_vec).unwrap_or_default()
            }
            (false, _) => scheduler.timesteps().to_vec(),
        };
        if let Some(end) = denoising_end {
            let cutoff = timestep_cutoff(&scheduler, end);
            let keep = timesteps.iter().filter(|t| **t >= cutoff).count();
            timesteps.truncate(keep);
        }
        if timesteps.is_empty() {
            return Err(PipelineError::arg(
                "strength",
                format!("strength {strength} leaves no denoising step"),
            ));
        }
        let sigma0 = scheduler.init_noise_sigma();
        let mut latents = if img2img {
            let images = args
                .image
                .as_ref()
                .ok_or_else(|| PipelineError::arg("image", "img2img needs an `image`"))?;
            let mut image = processor.preprocess(images, Some(height), Some(width), &device)?;
            let n_img = image.dims()[0];
            if gens.len() > 1 && n_img < total && total % n_img == 0 {
                image = image.repeat_dim(0, total / n_img);
            }
            let mut init = encode_vae_image(vae, image, &mut gens, &device)?;
            let stats = |key: &str| -> Option<Vec<f32>> {
                self.config_value("vae", key)?
                    .as_array()?
                    .iter()
                    .map(|v| v.as_f64().map(|f| f as f32))
                    .collect()
            };
            if let (Some(mean), Some(std)) = (stats("latents_mean"), stats("latents_std")) {
                // init was scaled by encode_vae_image: (x - mean) * sf / std = (x*sf - mean*sf) / std.
                let sf = vae.scaling_factor() as f32;
                let c = mean.len();
                let mean = to_tensor(mean, [1, c, 1, 1], &device)?;
                let std = to_tensor(std, [1, c, 1, 1], &device)?;
                init = (init - mean.mul_scalar(sf)) / std;
            }
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
            if denoising_start.is_some() {
                // add_noise=False: the latents are already partly denoised.
                init
            } else {
                let noise = randn(init.dims(), &mut gens, &device)?;
                let first_t = timesteps.first().copied().unwrap_or(0.0);
                scheduler.add_noise(init, noise, &vec![first_t; total])?
            }
        } else {
            let shape = [total, latent_channels, height / factor, width / factor];
            match &args.latents {
                Some(l) => l.clone().mul_scalar(sigma0),
                None => randn(shape, &mut gens, &device)?.mul_scalar(sigma0),
            }
        };

        // Added conditioning.
        let [_, _, lh, lw] = latents.dims();
        let (h, w) = if img2img {
            (lh * factor, lw * factor)
        } else {
            (height, width)
        };
        let original = args.original_size.unwrap_or((h, w));
        let target = args.target_size.unwrap_or((h, w));
        let crops = args.crops_coords_top_left;
        let aesthetics = self
            .config()
            .get("requires_aesthetics_score")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ids = |o: (usize, usize), c: (usize, usize), tail: Vec<f32>| -> Vec<f32> {
            let mut v = vec![o.0 as f32, o.1 as f32, c.0 as f32, c.1 as f32];
            v.extend(tail);
            v
        };
        let (pos_ids, neg_ids) = if img2img {
            let neg_original = args.negative_original_size.unwrap_or(original);
            let neg_target = args.negative_target_size.unwrap_or(target);
            if aesthetics {
                (
                    ids(original, crops, vec![args.aesthetic_score]),
                    ids(
                        neg_original,
                        args.negative_crops_coords_top_left,
                        vec![args.negative_aesthetic_score],
                    ),
                )
            } else {
                // diffusers 0.42.1 uses the positive crop coordinates for the negative ids here.
                (
                    ids(original, crops, vec![target.0 as f32, target.1 as f32]),
                    ids(
                        neg_original,
                        crops,
                        vec![neg_target.0 as f32, neg_target.1 as f32],
                    ),
                )
            }
        } else {
            let pos = ids(original, crops, vec![target.0 as f32, target.1 as f32]);
            let neg = match (args.negative_original_size, args.negative_target_size) {
                (Some(o), Some(t)) => ids(
                    o,
                    args.negative_crops_coords_top_left,
                    vec![t.0 as f32, t.1 as f32],
                ),
                _ => pos.clone(),
            };
            (pos, neg)
        };
        let width_ids = pos_ids.len();
        let rows = |v: &Vec<f32>, times: usize| -> Vec<f32> {
            (0..times).flat_map(|_| v.iter().copied()).collect()
        };
        let time_ids_data = match (do_cfg, img2img) {
            (false, _) => rows(&pos_ids, total),
            // txt2img: cat([neg, pos]) then repeat(B*n, 1): [neg, pos, neg, pos, ...].
            (true, false) => {
                let pair: Vec<f32> = neg_ids.iter().chain(pos_ids.iter()).copied().collect();
                rows(&pair, total)
            }
            // img2img: repeat each, then cat: [neg x B*n, pos x B*n].
            (true, true) => {
                let mut v = rows(&neg_ids, total);
                v.extend(rows(&pos_ids, total));
                v
            }
        };
        let time_rows = time_ids_data.len() / width_ids.max(1);
        let time_ids = Tensor::<2>::from_data(
            TensorData::new(time_ids_data, [time_rows, width_ids]),
            &device,
        );
        let (prompt_embeds, text_embeds) =
            match (embeds.negative_prompt_embeds, embeds.negative_pooled) {
                (Some(ne), Some(np)) if do_cfg => (
                    Tensor::cat(vec![ne, embeds.prompt_embeds], 0),
                    Tensor::cat(vec![np, embeds.pooled], 0),
                ),
                _ => (embeds.prompt_embeds, embeds.pooled),
            };

        if !img2img {
            scheduler.set_begin_index(0);
        }
        let step_options = StepOptions {
            eta: Some(args.eta),
            ..StepOptions::default()
        };
        let mut interrupted = false;
        let steps = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if do_cfg {
                Tensor::cat(vec![latents.clone(), latents.clone()], 0)
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(input, t)?;
            let tt = Tensor::<1>::from_data(TensorData::new(vec![t as f32], [1]), &device);
            let mut unet_in = UNet2DConditionInput::new(input, tt, prompt_embeds.clone());
            unet_in.text_embeds = Some(text_embeds.clone());
            unet_in.time_ids = Some(time_ids.clone());
            let noise_pred = unet.forward(unet_in)?.cast(burn::tensor::DType::F32);
            let noise_pred = if do_cfg {
                guide(noise_pred, guidance, args.guidance_rescale)
            } else {
                noise_pred
            };
            latents = scheduler
                .step(noise_pred, t, latents, &step_options, Some(&mut gens))?
                .prev_sample;
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
