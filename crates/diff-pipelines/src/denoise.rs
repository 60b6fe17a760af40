//! The denoising loop every Stable Diffusion flow shares (diffusers' step "7. Denoising loop"
//! of `pipeline_stable_diffusion*.py`), with a per-step hook for what a task adds.
//!
//! One step, in diffusers' order of operations (and of torch's roundings in half precision):
//!
//! 1. `latent_model_input = cat([latents] * 2)` with classifier-free guidance, then
//!    `scheduler.scale_model_input(latent_model_input, t)`, rounded to the model dtype;
//! 2. [`StepHook::unet_input`]: the task may change the UNet input (inpaint's 9-channel
//!    `[latents, mask, masked_image_latents]`; a video pipeline's frame axis);
//! 3. `noise_pred = unet(latent_model_input, t, encoder_hidden_states, timestep_cond,
//!    added_cond_kwargs)`, then guidance ([`guide`]: `uncond + g * (text - uncond)` and
//!    `rescale_noise_cfg`);
//! 4. [`StepHook::noise_pred`]: the task may post-process the prediction given the step and
//!    the model (self-attention guidance's second UNet pass);
//! 5. `latents = scheduler.step(noise_pred, t, latents, eta, generator).prev_sample`;
//! 6. [`StepHook::after_step`]: the task may post-process the latents (inpaint's 4-channel
//!    blending of the known region);
//! 7. `callback_on_step_end`, which may stop the loop.

use crate::call::{StepCallback, StepControl, StepInfo};
use crate::error::PipelineError;
use burn::tensor::{Device, Tensor, TensorData};
use diff_models::{UNet2DConditionInput, UNet2DConditionModel};
use diff_schedulers::precision::round_tensor;
use diff_schedulers::{NoiseDtype, Scheduler, StepOptions, TorchGenerator};

/// What the UNet is conditioned on, the same at every step (batch-doubled with CFG: the
/// negative half first).
#[derive(Debug, Clone)]
pub(crate) struct Conditioning {
    /// `encoder_hidden_states` (`prompt_embeds`).
    pub encoder_hidden_states: Tensor<3>,
    /// SDXL's `added_cond_kwargs["text_embeds"]` (the pooled prompt embeddings).
    pub text_embeds: Option<Tensor<2>>,
    /// SDXL's `added_cond_kwargs["time_ids"]`.
    pub time_ids: Option<Tensor<2>>,
    /// `timestep_cond`: `guidance_scale - 1` embedded, for guidance-distilled UNets
    /// (`time_cond_proj_dim`).
    pub timestep_cond: Option<Tensor<2>>,
    /// IP-Adapter image tokens, one per adapter (`crate::ip_adapter::ip_hidden_states`).
    pub ip_hidden_states: Option<Vec<Tensor<3>>>,
}

/// Classifier-free guidance of one run (present only when `do_classifier_free_guidance`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guidance {
    /// `guidance_scale`.
    pub scale: f32,
    /// `guidance_rescale` (0 where the class takes none).
    pub rescale: f32,
}

/// What a hook sees of the step it runs in. Inpaint reads the scheduler and the next timestep;
/// the other fields are there for the hooks to come (self-attention guidance's second pass
/// reads the UNet, the conditioning and the guidance).
#[allow(dead_code)]
pub(crate) struct StepContext<'a> {
    /// Step index `i` (0-based).
    pub step: usize,
    /// The timestep `t`.
    pub timestep: f64,
    /// The next timestep of the loop (`None` at the last step).
    pub next_timestep: Option<f64>,
    /// The UNet.
    pub unet: &'a UNet2DConditionModel,
    /// The scheduler (after its step, in [`StepHook::after_step`]).
    pub scheduler: &'a Scheduler,
    /// The UNet's conditioning.
    pub conditioning: &'a Conditioning,
    /// Classifier-free guidance, when on.
    pub guidance: Option<Guidance>,
    /// The dtype torch keeps the latents in (rounding target of the loop's arithmetic).
    pub dtype: NoiseDtype,
}

/// What a task adds to the shared loop, step by step. Every method defaults to "nothing".
pub(crate) trait StepHook {
    /// Changes the UNet input (the scaled, CFG-doubled latents in `input.sample`, the
    /// conditioning, the timestep).
    fn unet_input(
        &mut self,
        input: UNet2DConditionInput,
        _ctx: &StepContext<'_>,
    ) -> Result<UNet2DConditionInput, PipelineError> {
        Ok(input)
    }

    /// Post-processes the guided noise prediction; `raw` is the UNet output before guidance
    /// (both halves with CFG) and `latents` the latents entering the step.
    fn noise_pred(
        &mut self,
        guided: Tensor<4>,
        _raw: &Tensor<4>,
        _latents: &Tensor<4>,
        _ctx: &StepContext<'_>,
    ) -> Result<Tensor<4>, PipelineError> {
        Ok(guided)
    }

    /// Post-processes the latents after the scheduler's step.
    fn after_step(
        &mut self,
        latents: Tensor<4>,
        _ctx: &StepContext<'_>,
    ) -> Result<Tensor<4>, PipelineError> {
        Ok(latents)
    }
}

/// The hook of a task that adds nothing (text-to-image, img2img).
pub(crate) struct NoHook;

impl StepHook for NoHook {}

/// A model the loop calls in place of the 2D UNet (a video UNet, whose input carries the frame
/// axis): the same inputs and output layout as `UNet2DConditionModel::forward`.
pub(crate) trait NoisePredictor {
    /// The noise prediction for `input`.
    fn predict(&self, input: UNet2DConditionInput) -> Result<Tensor<4>, PipelineError>;
}

/// The loop's fixed parts: the model, its conditioning, guidance and the step options.
pub(crate) struct DenoiseLoop<'a> {
    /// The UNet.
    pub unet: &'a UNet2DConditionModel,
    /// The model called instead of `unet` when set (AnimateDiff's motion UNet).
    pub model: Option<&'a dyn NoisePredictor>,
    /// The conditioning of every step.
    pub conditioning: Conditioning,
    /// Classifier-free guidance, when on.
    pub guidance: Option<Guidance>,
    /// `eta` and the dtype of the scheduler's noise draws.
    pub step_options: StepOptions,
    /// The model dtype (latents are rounded to it; identity in float32).
    pub dtype: NoiseDtype,
    /// The device of the timestep tensor.
    pub device: Device,
}

/// The loop's result.
pub(crate) struct Denoised {
    /// The latents reached.
    pub latents: Tensor<4>,
    /// Whether the callback stopped the loop.
    pub interrupted: bool,
}

impl<'a> DenoiseLoop<'a> {
    /// The loop of a call: `eta` and the model `dtype` go to the scheduler's step (ancestral /
    /// eta noise is drawn in the model's dtype, as `randn_tensor(..., dtype=model_output.dtype)`
    /// does).
    pub(crate) fn new(
        unet: &'a UNet2DConditionModel,
        conditioning: Conditioning,
        guidance: Option<Guidance>,
        eta: f32,
        dtype: NoiseDtype,
        device: Device,
    ) -> Self {
        Self {
            unet,
            model: None,
            conditioning,
            guidance,
            step_options: StepOptions {
                eta: Some(eta),
                noise_dtype: dtype,
                ..StepOptions::default()
            },
            dtype,
            device,
        }
    }

    /// Runs the loop over `timesteps` from `latents`; `gens` draw the schedulers' noise.
    pub(crate) fn run(
        &self,
        scheduler: &mut Scheduler,
        timesteps: &[f64],
        latents: Tensor<4>,
        gens: &mut [TorchGenerator],
        hook: &mut dyn StepHook,
        mut callback: Option<&mut StepCallback<'_>>,
    ) -> Result<Denoised, PipelineError> {
        // torch keeps the latents in the model dtype: from here on every elementwise op of the
        // loop is rounded to it (`round_tensor` is the identity in float32).
        let mut latents = round_tensor(latents, self.dtype);
        for (i, &t) in timesteps.iter().enumerate() {
            let next_timestep = timesteps.get(i + 1).copied();
            let noise_pred = self.predict(scheduler, &latents, i, t, next_timestep, hook)?;
            latents = scheduler
                .step(noise_pred, t, latents, &self.step_options, Some(&mut *gens))?
                .prev_sample;
            let ctx = self.context(scheduler, i, t, next_timestep);
            latents = hook.after_step(latents, &ctx)?;
            if let Some(cb) = callback.as_mut() {
                let info = StepInfo {
                    step: i,
                    total: timesteps.len(),
                    timestep: t,
                    latents: &latents,
                };
                if cb(&info) == StepControl::Stop {
                    return Ok(Denoised {
                        latents,
                        interrupted: true,
                    });
                }
            }
        }
        Ok(Denoised {
            latents,
            interrupted: false,
        })
    }

    /// Steps 1 to 4 of a step: the guided (and hooked) noise prediction at `t`.
    fn predict(
        &self,
        scheduler: &mut Scheduler,
        latents: &Tensor<4>,
        i: usize,
        t: f64,
        next_timestep: Option<f64>,
        hook: &mut dyn StepHook,
    ) -> Result<Tensor<4>, PipelineError> {
        let input = if self.guidance.is_some() {
            Tensor::cat(vec![latents.clone(), latents.clone()], 0)
        } else {
            latents.clone()
        };
        let input = round_tensor(scheduler.scale_model_input(input, t)?, self.dtype);
        let ctx = self.context(scheduler, i, t, next_timestep);
        let tt = Tensor::<1>::from_data(TensorData::new(vec![t as f32], [1]), &self.device);
        let cond = &self.conditioning;
        let mut unet_in = UNet2DConditionInput::new(input, tt, cond.encoder_hidden_states.clone());
        unet_in.text_embeds = cond.text_embeds.clone();
        unet_in.time_ids = cond.time_ids.clone();
        unet_in.timestep_cond = cond.timestep_cond.clone();
        unet_in.ip_hidden_states = cond.ip_hidden_states.clone();
        let unet_in = hook.unet_input(unet_in, &ctx)?;
        let raw = match self.model {
            Some(model) => model.predict(unet_in)?,
            None => self.unet.forward(unet_in)?,
        }
        .cast(burn::tensor::DType::F32);
        let guided = match self.guidance {
            Some(g) => guide(raw.clone(), g.scale, g.rescale, self.dtype),
            None => raw.clone(),
        };
        hook.noise_pred(guided, &raw, latents, &ctx)
    }

    fn context<'s>(
        &'s self,
        scheduler: &'s Scheduler,
        step: usize,
        timestep: f64,
        next_timestep: Option<f64>,
    ) -> StepContext<'s> {
        StepContext {
            step,
            timestep,
            next_timestep,
            unet: self.unet,
            scheduler,
            conditioning: &self.conditioning,
            guidance: self.guidance,
            dtype: self.dtype,
        }
    }
}

/// Whether classifier-free guidance runs: `guidance_scale > 1` and a UNet that is not
/// guidance-distilled (`unet.config.time_cond_proj_dim is None`).
pub(crate) fn do_classifier_free_guidance(unet: &UNet2DConditionModel, guidance: f32) -> bool {
    guidance > 1.0 && unet.config.time_cond_proj_dim.is_none()
}

/// The `timestep_cond` of a guidance-distilled UNet (`time_cond_proj_dim`): `guidance_scale - 1`
/// embedded for each of the `batch` rows.
pub(crate) fn timestep_cond(
    unet: &UNet2DConditionModel,
    guidance: f32,
    batch: usize,
    device: &Device,
) -> Option<Tensor<2>> {
    unet.config
        .time_cond_proj_dim
        .map(|d| guidance_embedding(guidance, usize::try_from(d).unwrap_or(0), batch, device))
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

/// `noise_pred_uncond + g * (noise_pred_text - noise_pred_uncond)`, then `rescale_noise_cfg`
/// when `guidance_rescale > 0`. With a float16 / bfloat16 UNet (`dtype`) torch rounds each op to
/// that dtype (the guidance scale, a Python float, stays float32 in the product).
pub fn guide(
    noise: Tensor<4>,
    guidance_scale: f32,
    guidance_rescale: f32,
    dtype: NoiseDtype,
) -> Tensor<4> {
    let r = |t: Tensor<4>| round_tensor(t, dtype);
    let half = noise.dims()[0] / 2;
    let uncond = noise.clone().narrow(0, 0, half);
    let text = noise.narrow(0, half, half);
    let cfg = r(uncond.clone() + r(r(text.clone() - uncond).mul_scalar(guidance_scale)));
    if guidance_rescale > 0.0 {
        // rescale_noise_cfg's std and blend run in the model dtype too; rounding its result
        // once is an approximation of torch's per-op rounding there.
        r(rescale_noise_cfg(cfg, text, guidance_rescale))
    } else {
        cfg
    }
}

/// diffusers' `rescale_noise_cfg`: std over all but the batch dim, unbiased.
pub(crate) fn rescale_noise_cfg(cfg: Tensor<4>, text: Tensor<4>, phi: f32) -> Tensor<4> {
    let std = |x: Tensor<4>| {
        let [b, c, h, w] = x.dims();
        let flat = x.reshape([b, c * h * w]);
        let n = (c * h * w) as f32;
        let mean = flat.clone().mean_dim(1);
        let var = (flat - mean)
            .powi_scalar(2)
            .sum_dim(1)
            .div_scalar((n - 1.0).max(1.0));
        var.sqrt().reshape([b, 1, 1, 1])
    };
    let std_text = std(text);
    let std_cfg = std(cfg.clone());
    let rescaled = cfg.clone() * (std_text / std_cfg);
    rescaled.mul_scalar(phi) + cfg.mul_scalar(1.0 - phi)
}
