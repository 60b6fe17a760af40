//! `DDPMScheduler`: denoising diffusion probabilistic models (noise at every step with t > 0).

use crate::common::{Prediction, Spacing, ddpm_x0, noise_like, spacing_timesteps, unsupported};
use crate::ddim::{add_noise_ddpm, clip_or_threshold, ddpm_family_alphas};
use crate::{
    SchedulerError, SchedulerOutput, StepIndex, StepOptions, TimestepsRequest, TorchGenerator,
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
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    num_inference_steps: Option<usize>,
    custom_timesteps: bool,
    index: StepIndex,
}

impl DDPMScheduler {
    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    pub fn new(config: DDPMSchedulerConfig) -> Result<Self, SchedulerError> {
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
        let ac = ddpm_family_alphas(
            CLASS,
            &config.beta_schedule,
            config.beta_start,
            config.beta_end,
            config.num_train_timesteps,
            config.trained_betas.as_deref(),
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
            alphas_cumprod: ac,
            timesteps,
            num_inference_steps: None,
            custom_timesteps: false,
            index: StepIndex::default(),
        })
    }

    /// The config, for re-save.
    pub fn config(&self) -> &DDPMSchedulerConfig {
        &self.config
    }

    /// `set_timesteps(num_inference_steps | timesteps)`.
    pub fn set_timesteps(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
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
            self.timesteps = custom.iter().map(|v| (*v as i64) as f64).collect();
            self.custom_timesteps = true;
            self.num_inference_steps = Some(custom.len());
        } else {
            let n = request.resolved_steps(CLASS)?;
            if n > t {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{CLASS}: num_inference_steps {n} exceeds num_train_timesteps {t}"
                )));
            }
            self.timesteps = spacing_timesteps(self.spacing, t, n, self.config.steps_offset, true);
            self.custom_timesteps = false;
            self.num_inference_steps = Some(n);
        }
        self.index = StepIndex::default();
        Ok(())
    }

    /// The inference timesteps (integers).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `init_noise_sigma` (1.0).
    pub fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// The index bookkeeping.
    pub fn step_index(&mut self) -> &mut StepIndex {
        &mut self.index
    }

    /// `scale_model_input`: the identity.
    pub fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        _timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        Ok(sample)
    }

    /// `previous_timestep`: the next schedule entry (-1 after the last), or t - 1 before
    /// `set_timesteps`.
    fn previous_timestep(&self, t: f64) -> Result<i64, SchedulerError> {
        if self.custom_timesteps || self.num_inference_steps.is_some() {
            let i = self
                .timesteps
                .iter()
                .position(|v| *v == t)
                .ok_or(SchedulerError::UnknownTimestep(t))?;
            Ok(self.timesteps.get(i + 1).map_or(-1, |v| *v as i64))
        } else {
            Ok(t as i64 - 1)
        }
    }

    fn alpha(&self, t: i64) -> Result<f32, SchedulerError> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.alphas_cumprod.get(i).copied())
            .ok_or(SchedulerError::UnknownTimestep(t as f64))
    }

    /// One DDPM step.
    pub fn step<const D: usize>(
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
        let alpha_t = self.alpha(t)?;
        let alpha_prev = if prev_t >= 0 {
            self.alpha(prev_t)?
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
        self.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }

    /// `add_noise`: √ᾱ_t·x0 + √(1-ᾱ_t)·z.
    pub fn add_noise<const D: usize>(
        &self,
        original: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[f64],
    ) -> Result<Tensor<D>, SchedulerError> {
        add_noise_ddpm(&self.alphas_cumprod, original, noise, timesteps)
    }

    /// `order`.
    pub fn order(&self) -> usize {
        1
    }
}
