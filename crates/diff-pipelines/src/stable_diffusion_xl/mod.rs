//! Stable Diffusion XL `__call__` flows, one file per task as diffusers'
//! `pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl{,_img2img,_inpaint}.py`:
//!
//! - `text2img.rs`: `StableDiffusionXLPipeline`;
//! - `img2img.rs`: `StableDiffusionXLImg2ImgPipeline` (also the refiner's class);
//! - `inpaint.rs`: `StableDiffusionXLInpaintPipeline`.
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

pub(crate) mod img2img;
pub(crate) mod inpaint;
pub(crate) mod text2img;

use crate::call::CallArgs;
use crate::denoise::{
    Conditioning, DenoiseLoop, Guidance, do_classifier_free_guidance, timestep_cond,
};
use crate::error::PipelineError;
use crate::ip_adapter::{EmbedsRepeat, ip_hidden_states};
use crate::latents::noise_dtype;
use crate::pipeline::DiffusionPipeline;
use crate::prompt::XlEmbeds;
use crate::timesteps::{
    apply_denoising_end, check_steps_left, init_timestep, retrieve_timesteps, xl_get_timesteps,
};
use burn::tensor::{Device, Tensor, TensorData};
use diff_models::UNet2DConditionModel;
use serde_json::Value;

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The Python tuple `a + b + c` of `_get_add_time_ids`, as floats.
fn time_row(a: (usize, usize), b: (usize, usize), tail: &[f32]) -> Vec<f32> {
    let mut v = vec![a.0 as f32, a.1 as f32, b.0 as f32, b.1 as f32];
    v.extend_from_slice(tail);
    v
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

/// The SDXL task that runs: text-to-image, or one of the image tasks (img2img, inpaint), which
/// share `get_timesteps` (strength or `denoising_start`) and `_get_add_time_ids`' layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Text2Img,
    Img2Img,
    Inpaint,
}

impl Task {
    fn is_image_task(self) -> bool {
        self != Task::Text2Img
    }
}

/// What steps 2 and 3 give every SDXL task.
struct Encoded {
    embeds: XlEmbeds,
    /// `B * num_images_per_prompt`.
    total: usize,
    do_cfg: bool,
    guidance_scale: f32,
}

/// Steps 2 (`guidance_scale`, `do_classifier_free_guidance`) and 3 (`encode_prompt`).
fn encode(
    pipe: &DiffusionPipeline,
    unet: &UNet2DConditionModel,
    args: &CallArgs,
    default_guidance_scale: f32,
) -> Result<Encoded, PipelineError> {
    let guidance_scale = args.guidance_scale.unwrap_or(default_guidance_scale);
    let do_cfg = do_classifier_free_guidance(unet, guidance_scale);
    let embeds = pipe.encode_prompt_xl(args, do_cfg)?;
    let total = embeds.prompt_embeds.dims()[0];
    Ok(Encoded {
        embeds,
        total,
        do_cfg,
        guidance_scale,
    })
}

/// Step 4, "Prepare timesteps": `retrieve_timesteps`, the image tasks' `get_timesteps`
/// (strength, or a valid `denoising_start`), then `denoising_end`'s cutoff. Returns the
/// timesteps to run and the noise level of the init latents (the first timestep of the
/// strength schedule, taken before `denoising_end` trims the tail).
fn prepare_timesteps(
    scheduler: &mut diff_schedulers::Scheduler,
    args: &CallArgs,
    task: Task,
    strength: f32,
) -> Result<(Vec<f64>, f64), PipelineError> {
    let steps = retrieve_timesteps(scheduler, args)?;
    let valid = |f: Option<f32>| f.filter(|v| *v > 0.0 && *v < 1.0);
    let denoising_start = valid(args.xl.denoising_start).filter(|_| task.is_image_task());
    let denoising_end = valid(args.xl.denoising_end);
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
    let mut timesteps = if task.is_image_task() {
        xl_get_timesteps(scheduler, steps, strength, denoising_start)
    } else {
        scheduler.timesteps().to_vec()
    };
    // Inpaint checks the step count strength leaves (`num_inference_steps - t_start`), which is
    // 0 where PNDM's schedule still has a timestep; img2img only fails on an empty schedule.
    let no_step_left =
        task == Task::Inpaint && denoising_start.is_none() && init_timestep(steps, strength) == 0;
    check_steps_left(&timesteps, no_step_left, strength)?;
    let first_t = timesteps.first().copied().unwrap_or(0.0);
    apply_denoising_end(scheduler, &mut timesteps, denoising_end);
    Ok((timesteps, first_t))
}

/// Given latents (or image latents) must fit the batch and the UNet.
fn check_latents(
    latents: &Tensor<4>,
    total: usize,
    latent_channels: usize,
) -> Result<(), PipelineError> {
    let [n_lat, c_lat, _, _] = latents.dims();
    if n_lat != total || c_lat != latent_channels {
        return Err(PipelineError::arg(
            "latents",
            format!(
                "the latents have shape {:?}, expected batch {total} (prompts x num_images_per_prompt) and {latent_channels} channels",
                latents.dims()
            ),
        ));
    }
    Ok(())
}

/// `_get_add_time_ids` of one run: original size, crop and target size (or, for a refiner's
/// image task with `requires_aesthetics_score`, the aesthetic score), checked against the UNet.
/// `(h, w)` is the default of the sizes (the image tasks' latents in pixels).
fn add_time_ids(
    pipe: &DiffusionPipeline,
    unet: &UNet2DConditionModel,
    args: &CallArgs,
    (h, w): (usize, usize),
    projection_dim: usize,
    task: Task,
) -> Result<TimeIds, PipelineError> {
    let xl = &args.xl;
    let original = xl.original_size.unwrap_or((h, w));
    let target = xl.target_size.unwrap_or((h, w));
    let crops = xl.crops_coords_top_left;
    if !task.is_image_task() {
        let pos = time_row(original, crops, &[target.0 as f32, target.1 as f32]);
        let neg = match (xl.negative_original_size, xl.negative_target_size) {
            (Some(o), Some(t)) => time_row(
                o,
                xl.negative_crops_coords_top_left,
                &[t.0 as f32, t.1 as f32],
            ),
            _ => pos.clone(),
        };
        check_add_embed_dim(unet, pos.len(), projection_dim, None, target)?;
        return Ok(TimeIds { pos, neg });
    }
    let neg_original = xl.negative_original_size.unwrap_or(original);
    let neg_target = xl.negative_target_size.unwrap_or(target);
    let ids = if requires_aesthetics_score(pipe) {
        TimeIds {
            pos: time_row(original, crops, &[xl.aesthetic_score]),
            neg: time_row(
                neg_original,
                xl.negative_crops_coords_top_left,
                &[xl.negative_aesthetic_score],
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
        Some((xl.aesthetic_score, xl.negative_aesthetic_score)),
        target,
    )?;
    Ok(ids)
}

/// `requires_aesthetics_score` from the pipeline config (false by default).
fn requires_aesthetics_score(pipe: &DiffusionPipeline) -> bool {
    pipe.config()
        .get("requires_aesthetics_score")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Step "Prepare added time ids & embeddings" and the loop's set-up: the UNet's conditioning
/// (prompt embeddings and pooled embeddings, negative first with CFG; the time ids; the
/// guidance embedding of a guidance-distilled UNet) and the loop with the call's `eta` and
/// guidance. `size` is the default of the added sizes.
fn denoise_loop<'a>(
    pipe: &DiffusionPipeline,
    unet: &'a UNet2DConditionModel,
    args: &CallArgs,
    encoded: Encoded,
    size: (usize, usize),
    task: Task,
) -> Result<DenoiseLoop<'a>, PipelineError> {
    let device = pipe.device().clone();
    let Encoded {
        embeds,
        total,
        do_cfg,
        guidance_scale,
    } = encoded;
    // `text_encoder_2.config.projection_dim`: the output width of its text projection.
    let projection_dim = pipe
        .text_encoder_2()
        .map(|te| te.text_projection.weight.dims()[1])
        .unwrap_or_else(|| embeds.pooled.dims()[1]);
    let time_ids = add_time_ids(pipe, unet, args, size, projection_dim, task)?;
    let time_ids = time_ids.tensor(total, do_cfg, task.is_image_task(), &device);
    let (prompt_embeds, text_embeds) = match (embeds.negative_prompt_embeds, embeds.negative_pooled)
    {
        (Some(ne), Some(np)) if do_cfg => (
            Tensor::cat(vec![ne, embeds.prompt_embeds], 0),
            Tensor::cat(vec![np, embeds.pooled], 0),
        ),
        _ => (embeds.prompt_embeds, embeds.pooled),
    };
    let repeat = EmbedsRepeat::PerPrompt(args.num_images_per_prompt);
    let ip_hidden_states = ip_hidden_states(pipe, unet, &args.ip_adapter, repeat, do_cfg)?;
    let conditioning = Conditioning {
        encoder_hidden_states: prompt_embeds,
        text_embeds: Some(text_embeds),
        time_ids: Some(time_ids),
        timestep_cond: timestep_cond(unet, guidance_scale, total, &device),
        ip_hidden_states,
    };
    let guidance = do_cfg.then_some(Guidance {
        scale: guidance_scale,
        rescale: args.guidance_rescale,
    });
    Ok(DenoiseLoop::new(
        unet,
        conditioning,
        guidance,
        args.eta,
        noise_dtype(pipe.dtype()),
        device,
    ))
}
