//! `StableDiffusionSAGPipeline.__call__` (diffusers 0.42.1
//! `pipelines/deprecated/stable_diffusion_sag/pipeline_stable_diffusion_sag.py`): text-to-image
//! with self-attention guidance (Hong et al., <https://huggingface.co/papers/2210.00939>).
//!
//! At every step the probabilities of the mid block's first self-attention
//! (`mid_block.attentions[0].transformer_blocks[0].attn1`, through a
//! [`CrossAttnStoreProcessor`]) mark the latent regions the model attends to most; those regions
//! of the predicted clean sample are blurred, re-noised to the step's noise level, and a second
//! UNet pass on the degraded latents gives a prediction the guided one is pushed away from:
//!
//! | symbol           | here                                                          |
//! |------------------|---------------------------------------------------------------|
//! | x̂₀               | `pred_x0(latents, ε, t)`                                      |
//! | ε̂                | `pred_epsilon(latents, ε, t)`                                 |
//! | M                | `sum_q mean_heads(A) > 1`, nearest-upsampled to the latents    |
//! | x̃ₜ               | `add_noise(blur(x̂₀)·M + x̂₀·(1 − M), ε̂, t)`                    |
//! | ε_sag            | `ε + s · (ε_u − unet(x̃ₜ, t, uncond))`                          |
//!
//! where ε_u is the unconditional prediction with classifier-free guidance, and the (only,
//! conditional) prediction without it.

use super::{default_size, no_guidance_rescale};
use crate::call::{CallArgs, PipelineOutput, StepCallback, check_size};
use crate::decode::finish;
use crate::denoise::{Conditioning, DenoiseLoop, Guidance, StepContext, StepHook};
use crate::error::PipelineError;
use crate::ip_adapter::{EmbedsRepeat, ip_hidden_states};
use crate::latents::{generators_for, noise_dtype, prepare_text2img_latents, unet_sample_size};
use crate::pipeline::DiffusionPipeline;
use crate::timesteps::check_steps_left;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Int, Tensor, TensorData};
use diff_format::configs::unet::PerBlock;
use diff_models::{
    AttnProcessorRef, AttnProcessorSetting, CrossAttnStoreProcessor, UNet2DConditionInput,
    UNet2DConditionModel,
};
use diff_schedulers::Scheduler;
use serde_json::Value;
use std::sync::Arc;

/// The schedulers whose `timesteps` torch keeps as integers: the only ones diffusers' SAG runs
/// with (`alphas_cumprod[timestep]`); it refuses the float-timestep (sigma) schedulers.
const INTEGER_TIMESTEP_SCHEDULERS: &[&str] = &[
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "LCMScheduler",
    "TCDScheduler",
];

/// The Gaussian blur of `sag_masking`: `gaussian_blur_2d(kernel_size=9, sigma=1.0)`.
const BLUR_KERNEL: usize = 9;
const BLUR_SIGMA: f32 = 1.0;

/// `StableDiffusionSAGPipeline.__call__`.
pub(crate) fn call(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    callback: Option<&mut StepCallback<'_>>,
) -> Result<PipelineOutput, PipelineError> {
    let unet = pipe.require(pipe.unet(), "unet")?;
    let vae = pipe.require(pipe.vae(), "vae")?;
    let factor = pipe.vae_scale_factor();

    // 0. Default height and width to unet (`height or ...`, each on its own)
    let default = unet_sample_size(unet, 64) * factor;
    let (height, width) = default_size(pipe.class(), args.height, args.width, default);

    // 1. Check inputs. Raise error if not correct
    check_size(height, width)?;
    if args.timesteps.is_some() || args.sigmas.is_some() {
        return Err(PipelineError::arg(
            "timesteps",
            "StableDiffusionSAGPipeline takes no custom `timesteps` or `sigmas`",
        ));
    }

    // 2. Define call parameters: CFG is `guidance_scale > 1` only (no guidance-distilled
    // UNets here), SAG runs when `sag_scale > 0`.
    let guidance_scale = args.guidance_scale.unwrap_or(7.5);
    let sag_scale = args.sag.sag_scale;
    let do_cfg = guidance_scale > 1.0;
    let dtype = noise_dtype(pipe.dtype());
    let device = pipe.device().clone();

    // 3. Encode input prompt (negative first with CFG)
    let (cond, uncond) = pipe.encode_prompt(args, do_cfg)?;
    let total = cond.dims()[0];
    let encoder_hidden_states = match uncond {
        Some(u) => Tensor::cat(vec![u, cond], 0),
        None => cond,
    };
    let mut gens = generators_for(args, total)?;
    // IP-Adapter image tokens (the SAG pipeline's own batching: `batch * num_images_per_prompt`
    // copies of encoded images, given embeddings as they are).
    let ip_all = ip_hidden_states(
        pipe,
        unet,
        &args.ip_adapter,
        EmbedsRepeat::Sag(total),
        do_cfg,
    )?;
    let (ip_hidden_states, ip_uncond) = split_sag_ip_states(ip_all, do_cfg)?;

    // 4. Prepare timesteps
    let mut scheduler = pipe.require(pipe.scheduler(), "scheduler")?.clone();
    scheduler.set_timesteps(args.num_inference_steps)?;
    if !INTEGER_TIMESTEP_SCHEDULERS.contains(&scheduler.class_name()) {
        return Err(PipelineError::arg(
            "scheduler",
            format!(
                "StableDiffusionSAGPipeline does not support using a scheduler of type {}. Please make sure to use one of 'DDIMScheduler, PNDMScheduler, DDPMScheduler, DEISMultistepScheduler, UniPCMultistepScheduler, DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler'.",
                scheduler.class_name()
            ),
        ));
    }
    let timesteps = scheduler.timesteps().to_vec();
    check_steps_left(&timesteps, false, 1.0)?;

    // 5. Prepare latent variables (`unet.config.in_channels` channels)
    let channels = usize::try_from(unet.config.in_channels).unwrap_or(4);
    let (lh, lw) = (height / factor, width / factor);
    let shape = [total, channels, lh, lw];
    if let Some(l) = args.latents.as_ref().filter(|l| l.dims() != shape) {
        return Err(PipelineError::arg(
            "latents",
            format!("`latents` has shape {:?}, expected {shape:?}", l.dims()),
        ));
    }
    let latents = prepare_text2img_latents(
        args.latents.as_ref(),
        shape,
        &mut gens,
        dtype,
        scheduler.init_noise_sigma(),
        &device,
    )?;

    // 6. Prepare extra step kwargs (eta): in `denoise`.
    let conditioning = Conditioning {
        encoder_hidden_states,
        text_embeds: None,
        time_ids: None,
        timestep_cond: None,
        ip_hidden_states,
    };
    let guidance = do_cfg.then(|| Guidance {
        scale: guidance_scale,
        rescale: no_guidance_rescale(pipe, args),
    });
    let denoise = DenoiseLoop::new(unet, conditioning, guidance, args.eta, dtype, device);

    // The store processor on the mid block's first self-attention for the call; `map_size`
    // is the spatial size of that attention block's output (a forward hook in diffusers).
    let store = Arc::new(CrossAttnStoreProcessor::new());
    let restore = ProcessorRestore::install(unet, store.clone())?;
    let mut hook = SagHook {
        ip_uncond,
        store,
        sag_scale,
        map_size: mid_block_size(unet, lh, lw),
        heads: attention_heads(unet),
        prediction_type: prediction_type(&scheduler)?,
    };

    // 7. Denoising loop
    let denoised = denoise.run(
        &mut scheduler,
        &timesteps,
        latents,
        &mut gens,
        &mut hook,
        callback,
    );

    // 8. Decode, run the safety checker, post-process; then `set_attn_processor(original)`.
    let out = denoised.and_then(|d| finish(pipe, vae, args.output_type, d, None));
    restore.restore()?;
    out
}

/// The processors of the UNet before the call, put back afterwards. diffusers restores them
/// at the end of a call that succeeds; here a failing call restores them too (the error
/// returned is the call's), so a shared UNet never keeps the store processor.
struct ProcessorRestore<'a> {
    unet: &'a UNet2DConditionModel,
    original: Option<Vec<(String, AttnProcessorRef)>>,
}

impl<'a> ProcessorRestore<'a> {
    fn install(
        unet: &'a UNet2DConditionModel,
        store: Arc<CrossAttnStoreProcessor>,
    ) -> Result<Self, PipelineError> {
        let attn1 = unet
            .mid_block
            .as_ref()
            .and_then(|m| m.attentions.first())
            .and_then(|a| a.transformer_blocks.first())
            .map(|b| &b.attn1)
            .ok_or_else(|| {
                PipelineError::arg(
                    "unet",
                    "self-attention guidance needs a UNet whose mid block has an attention (`mid_block.attentions[0].transformer_blocks[0].attn1`)",
                )
            })?;
        let original = unet.attn_processors();
        attn1.set_processor(store);
        Ok(Self {
            unet,
            original: Some(original),
        })
    }

    fn restore(mut self) -> Result<(), PipelineError> {
        match self.original.take() {
            Some(o) => Ok(self
                .unet
                .set_attn_processor(AttnProcessorSetting::ByName(o))?),
            None => Ok(()),
        }
    }
}

impl Drop for ProcessorRestore<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.original.take() {
            // Reached on an early return or a panic unwinding through the call; the names come
            // from the same UNet, so this cannot fail.
            let _ = self
                .unet
                .set_attn_processor(AttnProcessorSetting::ByName(o));
        }
    }
}

/// The SAG pipeline's image tokens: without CFG, all of them for both passes; with CFG the
/// negative half for the second pass, and for the main pass only the positive half, which
/// diffusers 0.42.1 hands a batch-doubled UNet (`added_cond_kwargs = {"image_embeds":
/// image_embeds}` after `chunk(2)`): its IP-Adapter processors' `view(batch_size, -1, ...)`
/// then gives each of the `2B` rows half of the positive tokens, in order. Reproduced as that
/// reshape; an odd token count fails there in diffusers and is a clear error here.
#[allow(clippy::type_complexity)]
fn split_sag_ip_states(
    ip: Option<Vec<Tensor<3>>>,
    do_cfg: bool,
) -> Result<(Option<Vec<Tensor<3>>>, Option<Vec<Tensor<3>>>), PipelineError> {
    let ip = match ip {
        Some(ip) if do_cfg => ip,
        other => return Ok((other, None)),
    };
    let mut main = Vec::with_capacity(ip.len());
    let mut uncond = Vec::with_capacity(ip.len());
    for t in ip {
        let [b2, tokens, c] = t.dims();
        let b = b2 / 2;
        if tokens % 2 != 0 {
            return Err(PipelineError::arg(
                "ip_adapter_image",
                format!(
                    "StableDiffusionSAGPipeline with classifier-free guidance spreads the {tokens} image tokens of an IP-Adapter over the doubled batch (as diffusers 0.42.1 does), which needs an even token count; use guidance_scale <= 1 with this adapter"
                ),
            ));
        }
        uncond.push(t.clone().narrow(0, 0, b));
        main.push(t.narrow(0, b, b).reshape([b2, tokens / 2, c]));
    }
    Ok((Some(main), Some(uncond)))
}

/// The SAG step: the second UNet pass on the degraded latents after guidance.
struct SagHook {
    /// The negative image tokens of the unconditional second pass, with CFG.
    ip_uncond: Option<Vec<Tensor<3>>>,
    store: Arc<CrossAttnStoreProcessor>,
    sag_scale: f32,
    /// The mid block's spatial size (`map_size`).
    map_size: (usize, usize),
    /// `unet.config.attention_head_dim` (its last entry for a list), as `sag_masking` reads it.
    heads: usize,
    prediction_type: PredictionType,
}

impl StepHook for SagHook {
    fn noise_pred(
        &mut self,
        guided: Tensor<4>,
        raw: &Tensor<4>,
        latents: &Tensor<4>,
        ctx: &StepContext<'_>,
    ) -> Result<Tensor<4>, PipelineError> {
        if self.sag_scale <= 0.0 {
            return Ok(guided);
        }
        let probs = self.store.attention_probs().ok_or_else(|| {
            PipelineError::arg("unet", "the mid block's self-attention did not run")
        })?;
        let alpha = alpha_prod(ctx.scheduler, ctx.timestep)?;
        let ehs = &ctx.conditioning.encoder_hidden_states;
        // With CFG the unconditional half (first) is guided, with the negative image tokens
        // (`added_uncond_kwargs`); without, the only prediction.
        let (eps, attn, emb, ip) = if ctx.guidance.is_some() {
            let half = raw.dims()[0] / 2;
            let p_half = probs.dims()[0] / 2;
            (
                raw.clone().narrow(0, 0, half),
                probs.narrow(0, 0, p_half),
                ehs.clone().narrow(0, 0, ehs.dims()[0] / 2),
                self.ip_uncond.clone(),
            )
        } else {
            let ip = ctx.conditioning.ip_hidden_states.clone();
            (guided.clone(), probs, ehs.clone(), ip)
        };
        let x0 = self.prediction_type.pred_x0(latents, &eps, alpha);
        let pred_eps = self.prediction_type.pred_epsilon(latents, &eps, alpha);
        let degraded = self.sag_masking(x0, attn, ctx, pred_eps)?;
        let t = Tensor::<1>::from_data(
            TensorData::new(vec![ctx.timestep as f32], [1]),
            &latents.device(),
        );
        let mut input = UNet2DConditionInput::new(degraded, t, emb);
        input.ip_hidden_states = ip;
        let degraded_pred = ctx.unet.forward(input)?.cast(burn::tensor::DType::F32);
        Ok(guided + (eps - degraded_pred).mul_scalar(self.sag_scale))
    }
}

impl SagHook {
    /// diffusers' `sag_masking`: the attention mask from the stored probabilities, the blurred
    /// `x0` inside it, re-noised to `t` with `eps`.
    fn sag_masking(
        &self,
        x0: Tensor<4>,
        attn: Tensor<3>,
        ctx: &StepContext<'_>,
        eps: Tensor<4>,
    ) -> Result<Tensor<4>, PipelineError> {
        let [bh, hw1, hw2] = attn.dims();
        let [b, c, lh, lw] = x0.dims();
        let (mh, mw) = self.map_size;
        if b * self.heads != bh || mh * mw != hw2 {
            return Err(PipelineError::arg(
                "unet",
                format!(
                    "the mid block's attention map [{bh}, {hw1}, {hw2}] does not reshape to ({b}, {}, {hw1}, {hw2}) and map size {mh}x{mw} (`attention_head_dim` is read as the head count, as diffusers' SAG does)",
                    self.heads
                ),
            ));
        }
        let mask = attn
            .reshape([b, self.heads, hw1, hw2])
            .mean_dim(1)
            .sum_dim(2)
            .greater_elem(1.0)
            .float()
            .reshape([b, 1, mh, mw])
            .repeat_dim(1, c);
        let mask = nearest_resize(mask, lh, lw);
        let blurred = gaussian_blur_2d(x0.clone(), BLUR_KERNEL, BLUR_SIGMA)?;
        let degraded = blurred * mask.clone() + x0 * (mask.neg().add_scalar(1.0));
        Ok(ctx.scheduler.add_noise(degraded, eps, &[ctx.timestep])?)
    }
}

/// The scheduler's `prediction_type`, as `pred_x0` / `pred_epsilon` read it.
#[derive(Debug, Clone, Copy)]
enum PredictionType {
    Epsilon,
    Sample,
    VPrediction,
}

fn prediction_type(scheduler: &Scheduler) -> Result<PredictionType, PipelineError> {
    let config = scheduler.config_json()?;
    match config.get("prediction_type").and_then(Value::as_str) {
        Some("epsilon") | None => Ok(PredictionType::Epsilon),
        Some("sample") => Ok(PredictionType::Sample),
        Some("v_prediction") => Ok(PredictionType::VPrediction),
        Some(other) => Err(PipelineError::arg(
            "prediction_type",
            format!(
                "prediction_type given as {other} must be one of `epsilon`, `sample`, or `v_prediction`"
            ),
        )),
    }
}

impl PredictionType {
    /// diffusers' `pred_x0(sample, model_output, timestep)` with `alpha = alphas_cumprod[t]`.
    fn pred_x0(self, sample: &Tensor<4>, out: &Tensor<4>, alpha: f32) -> Tensor<4> {
        let beta = 1.0 - alpha;
        match self {
            PredictionType::Epsilon => {
                (sample.clone() - out.clone().mul_scalar(beta.sqrt())).div_scalar(alpha.sqrt())
            }
            PredictionType::Sample => out.clone(),
            PredictionType::VPrediction => {
                sample.clone().mul_scalar(alpha.sqrt()) - out.clone().mul_scalar(beta.sqrt())
            }
        }
    }

    /// diffusers' `pred_epsilon(sample, model_output, timestep)`.
    fn pred_epsilon(self, sample: &Tensor<4>, out: &Tensor<4>, alpha: f32) -> Tensor<4> {
        let beta = 1.0 - alpha;
        match self {
            PredictionType::Epsilon => out.clone(),
            PredictionType::Sample => {
                (sample.clone() - out.clone().mul_scalar(alpha.sqrt())).div_scalar(beta.sqrt())
            }
            PredictionType::VPrediction => {
                sample.clone().mul_scalar(beta.sqrt()) + out.clone().mul_scalar(alpha.sqrt())
            }
        }
    }
}

/// `scheduler.alphas_cumprod[timestep]` (an integer timestep).
fn alpha_prod(scheduler: &Scheduler, t: f64) -> Result<f32, PipelineError> {
    let table = scheduler.alphas_cumprod();
    (t >= 0.0 && t.fract() == 0.0)
        .then(|| table.get(t as usize).copied())
        .flatten()
        .ok_or_else(|| {
            PipelineError::arg(
                "scheduler",
                format!(
                    "timestep {t} is not an index of {}'s alphas_cumprod ({} entries)",
                    scheduler.class_name(),
                    table.len()
                ),
            )
        })
}

/// `unet.config.attention_head_dim` (the last entry of a list): what diffusers' `sag_masking`
/// reshapes the probabilities with.
fn attention_heads(unet: &UNet2DConditionModel) -> usize {
    let h = match &unet.config.attention_head_dim {
        PerBlock::One(h) => *h,
        PerBlock::Many(v) => v.last().copied().flatten(),
    };
    h.and_then(|h| usize::try_from(h).ok()).unwrap_or(8)
}

/// The spatial size of the mid block for `lh x lw` latents: one `Downsample2D` (3x3 conv,
/// stride 2, `downsample_padding`; a (0, 1, 0, 1) pad when it is 0) per down block but the last.
fn mid_block_size(unet: &UNet2DConditionModel, lh: usize, lw: usize) -> (usize, usize) {
    let downsamples = unet.config.down_block_types.len().saturating_sub(1);
    let pad = match unet.config.downsample_padding {
        0 => 1,
        p => 2 * usize::try_from(p).unwrap_or(1),
    };
    let down = |x: usize| (x + pad).saturating_sub(3) / 2 + 1;
    (0..downsamples).fold((lh, lw), |(h, w), _| (down(h), down(w)))
}

/// `F.interpolate(x, (h, w))` (mode `nearest`): source index `floor(dst * in / out)` with the
/// scale in float32, as torch computes it.
fn nearest_resize(x: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let [_, _, ih, iw] = x.dims();
    let device = x.device();
    let index = |input: usize, output: usize| {
        let scale = input as f32 / output as f32;
        let idx: Vec<i64> = (0..output)
            .map(|o| (((o as f32) * scale).floor() as usize).min(input - 1) as i64)
            .collect();
        Tensor::<1, Int>::from_data(TensorData::new(idx, [output]), &device)
    };
    let rows = index(ih, h);
    let cols = index(iw, w);
    x.select(2, rows).select(3, cols)
}

/// diffusers' `gaussian_blur_2d`: a normalised 1-D Gaussian on `linspace(-k/2, k/2, k)`, its
/// outer product as a depthwise kernel, reflect padding of `k / 2` on each side.
fn gaussian_blur_2d(
    img: Tensor<4>,
    kernel_size: usize,
    sigma: f32,
) -> Result<Tensor<4>, PipelineError> {
    let [_, c, h, w] = img.dims();
    let half = kernel_size / 2;
    if half >= h || half >= w {
        return Err(PipelineError::arg(
            "height/width",
            format!(
                "self-attention guidance blurs the latents with reflect padding {half}, which needs latents larger than {half}x{half}; these are {h}x{w}"
            ),
        ));
    }
    let ksize_half = (kernel_size as f32 - 1.0) * 0.5;
    let step = if kernel_size > 1 {
        2.0 * ksize_half / (kernel_size as f32 - 1.0)
    } else {
        0.0
    };
    let pdf: Vec<f32> = (0..kernel_size)
        .map(|i| {
            let x = -ksize_half + step * i as f32;
            (-0.5 * (x / sigma).powi(2)).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    let k1: Vec<f32> = pdf.iter().map(|p| p / sum).collect();
    let k2: Vec<f32> = (0..c)
        .flat_map(|_| k1.iter().flat_map(|a| k1.iter().map(move |b| a * b)))
        .collect();
    let kernel = Tensor::<4>::from_data(
        TensorData::new(k2, [c, 1, kernel_size, kernel_size]),
        &img.device(),
    );
    let padded = img.pad([(half, half), (half, half)], PadMode::Reflect);
    Ok(burn::tensor::module::conv2d(
        padded,
        kernel,
        None,
        ConvOptions::new([1, 1], [0, 0], [1, 1], c),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_resize_doubles_each_cell() {
        let device = burn::tensor::Device::default();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1f32, 2., 3., 4.], [1, 1, 2, 2]),
            &device,
        );
        let y: Vec<f32> = nearest_resize(x, 4, 4)
            .into_data()
            .try_to_vec()
            .unwrap_or_default();
        assert_eq!(
            y,
            vec![
                1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.
            ]
        );
    }

    #[test]
    fn gaussian_blur_keeps_a_constant_image() {
        let device = burn::tensor::Device::default();
        let x = Tensor::<4>::ones([1, 2, 10, 12], &device).mul_scalar(3.0);
        let y = gaussian_blur_2d(x, 9, 1.0).expect("blur");
        assert_eq!(y.dims(), [1, 2, 10, 12]);
        let v: Vec<f32> = y.into_data().try_to_vec().unwrap_or_default();
        assert!(v.iter().all(|x| (x - 3.0).abs() < 1e-5));
    }

    #[test]
    fn gaussian_blur_refuses_latents_smaller_than_its_padding() {
        let device = burn::tensor::Device::default();
        let x = Tensor::<4>::ones([1, 1, 4, 8], &device);
        assert!(gaussian_blur_2d(x, 9, 1.0).is_err());
    }
}
