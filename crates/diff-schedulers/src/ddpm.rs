//! `DDPMScheduler`: denoising diffusion probabilistic models (noise at every step with t > 0).

use crate::betas::{alphas_cumprod_of, beta_config};
use crate::prediction::clip_or_threshold;
use crate::prediction::{Prediction, ddpm_x0};
use crate::random::noise_like;
use crate::timestep_spacing::{Spacing, spacing_timesteps};
use crate::unsupported;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::DDPMSchedulerConfig;

const CLASS: &str = "DDPMScheduler";

/// diffusers' `DDPMScheduler`.
#[derive(Debug, Clone)]
pub struct DDPMScheduler {
    config: DDPMSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    state: SchedulerState,
    custom_timesteps: bool,
}

impl SchedulerMixin for DDPMScheduler {
    type Config = DDPMSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: DDPMSchedulerConfig) -> Result<Self, SchedulerError> {
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
        if !matches!(
            config.variance_type.as_str(),
            "fixed_small"
                | "fixed_small_log"
                | "fixed_large"
                | "fixed_large_log"
                | "learned"
                | "learned_range"
        ) {
            return Err(unsupported(CLASS, "variance_type", &config.variance_type));
        }
        let ac = alphas_cumprod_of(
            CLASS,
            &beta_config!(config),
            config.rescale_betas_zero_snr,
            &["sigmoid", "laplace"],
        )?;
        let timesteps = (0..config.num_train_timesteps)
            .rev()
            .map(|t| t as f64)
            .collect();
        Ok(Self {
            config,
            prediction,
            spacing,
            custom_timesteps: false,
            state: SchedulerState::new(NoiseKind::AlphasCumprod, timesteps, Vec::new(), ac),
        })
    }

    /// `set_timesteps(num_inference_steps | timesteps)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} takes no custom sigmas"
            )));
        }
        request.check_exclusive(CLASS)?;
        let t = self.config.num_train_timesteps;
        if let Some(custom) = &request.timesteps {
            if custom.windows(2).any(|w| w[1] >= w[0]) {
                return Err(SchedulerError::InvalidArgument(
                    "`custom_timesteps` must be in descending order".into(),
                ));
            }
            if custom.first().is_some_and(|f| *f >= t as f64) {
                return Err(SchedulerError::InvalidArgument(format!(
                    "`timesteps` must start before `num_train_timesteps` ({t})"
                )));
            }
            self.state.timesteps = custom.iter().map(|v| (*v as i64) as f64).collect();
            self.custom_timesteps = true;
            self.state.num_inference_steps = Some(custom.len());
        } else {
            let n = request.resolved_steps(CLASS)?;
            if n > t {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{CLASS}: num_inference_steps {n} exceeds num_train_timesteps {t}"
                )));
            }
            self.state.timesteps =
                spacing_timesteps(self.spacing, t, n, self.config.steps_offset, true);
            self.custom_timesteps = false;
            self.state.num_inference_steps = Some(n);
        }
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One DDPM step.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let c = &self.config;
        let t = timestep as i64;
        let prev_t = self.previous_timestep(timestep)?;
        let channels = sample.dims()[1];
        let learned = matches!(c.variance_type.as_str(), "learned" | "learned_range");
        let (model_output, predicted_variance) =
            if model_output.dims()[1] == channels * 2 && learned {
                let mut parts = model_output.split(channels, 1);
                let var = parts.pop();
                let out = parts.pop();
                match (out, var) {
                    (Some(o), Some(v)) => (o, Some(v)),
                    _ => {
                        return Err(SchedulerError::Shape(
                            "cannot split the learned variance".into(),
                        ));
                    }
                }
            } else {
                (model_output, None)
            };
        let alpha_t = self.state.alpha_cumprod_at(t)?;
        let alpha_prev = if prev_t >= 0 {
            self.state.alpha_cumprod_at(prev_t)?
        } else {
            1.0
        };
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let current_alpha = alpha_t / alpha_prev;
        let current_beta = 1.0 - current_alpha;
        let x0 = ddpm_x0(
            self.prediction,
            model_output.clone(),
            sample.clone(),
            alpha_t,
        );
        let x0 = clip_or_threshold(
            x0,
            c.thresholding,
            c.clip_sample,
            c.clip_sample_range,
            c.dynamic_thresholding_ratio,
            c.sample_max_value,
        )?;
        let x0_coeff = (alpha_prev.sqrt() * current_beta) / beta_t;
        let sample_coeff = current_alpha.sqrt() * beta_prev / beta_t;
        let mut prev = x0.clone().mul_scalar(x0_coeff) + sample.mul_scalar(sample_coeff);
        if t > 0 {
            let noise = noise_like(&model_output, generator, options.noise_dtype)?;
            let variance = (beta_prev / beta_t * current_beta).max(1e-20);
            let term = match (c.variance_type.as_str(), predicted_variance) {
                ("fixed_small_log", _) => noise.mul_scalar((0.5 * variance.ln()).exp()),
                ("fixed_large", _) => noise.mul_scalar(current_beta.sqrt()),
                ("fixed_large_log", _) => noise.mul_scalar(current_beta.ln().sqrt()),
                ("learned_range", Some(v)) => {
                    let (min_log, max_log) = (variance.ln(), current_beta.ln());
                    let frac = v.add_scalar(1.0).div_scalar(2.0);
                    let log_var = frac.clone().mul_scalar(max_log)
                        + frac.neg().add_scalar(1.0).mul_scalar(min_log);
                    log_var.mul_scalar(0.5).exp() * noise
                }
                ("learned", Some(v)) => v.sqrt() * noise,
                _ => noise.mul_scalar(variance.sqrt()),
            };
            prev = prev + term;
        }
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }
}

impl DDPMScheduler {
    /// `previous_timestep`: the next schedule entry (-1 after the last), or t - 1 before
    /// `set_timesteps`.
    fn previous_timestep(&self, t: f64) -> Result<i64, SchedulerError> {
        if self.custom_timesteps || self.state.num_inference_steps.is_some() {
            let i = self
                .state
                .timesteps
                .iter()
                .position(|v| *v == t)
                .ok_or(SchedulerError::UnknownTimestep(t))?;
            Ok(self.state.timesteps.get(i + 1).map_or(-1, |v| *v as i64))
        } else {
            Ok(t as i64 - 1)
        }
    }
}
