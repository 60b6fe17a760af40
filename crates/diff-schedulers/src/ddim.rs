//! `DDIMScheduler`: denoising diffusion implicit models (deterministic unless `eta > 0`).

use crate::betas::{alphas_cumprod_of, beta_config};
use crate::precision::{mul_left, round_tensor};
use crate::prediction::{Prediction, clip_or_threshold, ddpm_x0_in};
use crate::random::noise_like;
use crate::timestep_spacing::{Spacing, spacing_timesteps};
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::DDIMSchedulerConfig;

const CLASS: &str = "DDIMScheduler";

/// diffusers' `DDIMScheduler`.
#[derive(Debug, Clone)]
pub struct DDIMScheduler {
    config: DDIMSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    state: SchedulerState,
    final_alpha_cumprod: f32,
}

impl SchedulerMixin for DDIMScheduler {
    type Config = DDIMSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: DDIMSchedulerConfig) -> Result<Self, SchedulerError> {
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[
                Prediction::Epsilon,
                Prediction::Sample,
                Prediction::VPrediction,
            ],
        )?;
        let spacing = Spacing::parse(CLASS, &config.timestep_spacing)?;
        let ac = alphas_cumprod_of(
            CLASS,
            &beta_config!(config),
            config.rescale_betas_zero_snr,
            &[],
        )?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { ac[0] };
        let timesteps = (0..config.num_train_timesteps)
            .rev()
            .map(|t| t as f64)
            .collect();
        Ok(Self {
            config,
            prediction,
            spacing,
            final_alpha_cumprod,
            state: SchedulerState::new(NoiseKind::AlphasCumprod, timesteps, Vec::new(), ac),
        })
    }

    /// `set_timesteps(num_inference_steps)` (DDIM takes no custom timesteps).
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.timesteps.is_some() || request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}.set_timesteps takes only num_inference_steps"
            )));
        }
        let n = request.resolved_steps(CLASS)?;
        let t = self.config.num_train_timesteps;
        if n > t {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: num_inference_steps {n} exceeds num_train_timesteps {t}"
            )));
        }
        self.state.timesteps =
            spacing_timesteps(self.spacing, t, n, self.config.steps_offset, true);
        self.state.num_inference_steps = Some(n);
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One DDIM step. `prev_t = t - T // n` whatever the spacing, as diffusers does.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let n = self
            .state
            .num_inference_steps
            .ok_or(SchedulerError::NotInitialised(CLASS))?;
        let c = &self.config;
        let t = timestep as i64;
        let prev_t = t - (c.num_train_timesteps / n) as i64;
        let alpha_t = self.state.alpha_cumprod_at(t)?;
        let alpha_prev = self
            .state
            .alpha_cumprod_or_final(prev_t, self.final_alpha_cumprod)?;
        let beta_t = 1.0 - alpha_t;
        // DDIM computes in the sample's dtype: with float16 / bfloat16 latents every op is
        // rounded to it, and its 0-d float32 coefficients, on the left of each product, are
        // rounded to it first (the identity in float32; see `precision`).
        let half = options.noise_dtype;
        let r = |t: Tensor<D>| round_tensor(t, half);
        let ml = |c: f32, t: Tensor<D>| mul_left(c, t, half);
        let (mut x0, mut eps) = match self.prediction {
            Prediction::Sample => {
                let x0 = model_output.clone();
                let eps = r(
                    r(sample.clone() - ml(alpha_t.sqrt(), x0.clone())).div_scalar(beta_t.sqrt())
                );
                (x0, eps)
            }
            Prediction::VPrediction => (
                ddpm_x0_in(
                    self.prediction,
                    model_output.clone(),
                    sample.clone(),
                    alpha_t,
                    half,
                ),
                r(ml(alpha_t.sqrt(), model_output.clone()) + ml(beta_t.sqrt(), sample.clone())),
            ),
            _ => (
                ddpm_x0_in(
                    self.prediction,
                    model_output.clone(),
                    sample.clone(),
                    alpha_t,
                    half,
                ),
                model_output.clone(),
            ),
        };
        x0 = r(clip_or_threshold(
            x0,
            c.thresholding,
            c.clip_sample,
            c.clip_sample_range,
            c.dynamic_thresholding_ratio,
            c.sample_max_value,
        )?);
        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        let eta = options.eta.unwrap_or(0.0);
        let std_dev = eta * variance.sqrt();
        if options.use_clipped_model_output {
            eps = r(r(sample.clone() - ml(alpha_t.sqrt(), x0.clone())).div_scalar(beta_t.sqrt()));
        }
        let direction = ml((1.0 - alpha_prev - std_dev * std_dev).sqrt(), eps);
        let mut prev = r(ml(alpha_prev.sqrt(), x0.clone()) + direction);
        if eta > 0.0 {
            let noise = noise_like(&model_output, generator, options.noise_dtype)?;
            prev = r(prev + ml(std_dev, noise));
        }
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }
}
