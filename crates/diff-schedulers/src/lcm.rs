//! `LCMScheduler`: latent consistency models (multi-step consistency sampling, noise at every
//! step but the last).

use crate::array_math::np_linspace_open;
use crate::betas::{alphas_cumprod_of, beta_config};
use crate::prediction::clip_or_threshold;
use crate::prediction::{Prediction, ddpm_x0};
use crate::random::noise_like;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::LCMSchedulerConfig;

const CLASS: &str = "LCMScheduler";

/// The LCM / TCD timestep selection: custom timesteps (validated, cut by `strength`) or `n`
/// entries picked evenly from the reversed origin schedule.
pub(crate) fn consistency_timesteps(
    class: &'static str,
    origin: Vec<i64>,
    train_steps: usize,
    request: &TimestepsRequest,
    limit: usize,
) -> Result<Vec<f64>, SchedulerError> {
    let strength = request.strength.unwrap_or(1.0);
    if let Some(custom) = &request.timesteps {
        if custom.windows(2).any(|w| w[1] >= w[0]) {
            return Err(SchedulerError::InvalidArgument(format!(
                "{class}: custom timesteps must be in descending order"
            )));
        }
        if custom.first().is_some_and(|t| *t >= train_steps as f64) {
            return Err(SchedulerError::InvalidArgument(format!(
                "{class}: timesteps must start before num_train_timesteps ({train_steps})"
            )));
        }
        if custom.len() > limit {
            return Err(SchedulerError::InvalidArgument(format!(
                "{class}: {} custom timesteps exceed {limit}",
                custom.len()
            )));
        }
        let n = custom.len();
        let init = ((n as f64 * strength) as usize).min(n);
        let t_start = n.saturating_sub(init);
        return Ok(custom[t_start..]
            .iter()
            .map(|t| (*t as i64) as f64)
            .collect());
    }
    let n = request.resolved_steps(class)?;
    if n > train_steps || n > limit {
        return Err(SchedulerError::InvalidArgument(format!(
            "{class}: num_inference_steps {n} exceeds the {limit} available timesteps"
        )));
    }
    if origin.len() / n < 1 {
        return Err(SchedulerError::InvalidArgument(format!(
            "{class}: strength leaves {} timesteps, fewer than num_inference_steps {n}",
            origin.len()
        )));
    }
    let mut rev = origin;
    rev.reverse();
    np_linspace_open(0.0, rev.len() as f64, n)
        .into_iter()
        .map(|x| {
            rev.get(x.floor() as usize)
                .map(|t| *t as f64)
                .ok_or_else(|| {
                    SchedulerError::InvalidArgument(format!("{class}: index out of range"))
                })
        })
        .collect()
}

/// diffusers' `LCMScheduler`.
#[derive(Debug, Clone)]
pub struct LCMScheduler {
    config: LCMSchedulerConfig,
    prediction: Prediction,
    state: SchedulerState,
    final_alpha_cumprod: f32,
}

impl SchedulerMixin for LCMScheduler {
    type Config = LCMSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: LCMSchedulerConfig) -> Result<Self, SchedulerError> {
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[
                Prediction::Epsilon,
                Prediction::Sample,
                Prediction::VPrediction,
            ],
        )?;
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
            final_alpha_cumprod,
            state: SchedulerState::new(NoiseKind::AlphasCumprod, timesteps, Vec::new(), ac),
        })
    }

    /// `set_timesteps(num_inference_steps | timesteps, original_inference_steps, strength)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} takes no custom sigmas"
            )));
        }
        request.check_exclusive(CLASS)?;
        let t = self.config.num_train_timesteps;
        let original = request
            .original_inference_steps
            .unwrap_or(self.config.original_inference_steps);
        if original == 0 || original > t {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: original_inference_steps {original} must be in 1..={t}"
            )));
        }
        let k = (t / original) as i64;
        let strength = request.strength.unwrap_or(1.0);
        let origin: Vec<i64> = (1..=((original as f64 * strength) as i64))
            .map(|i| i * k - 1)
            .collect();
        self.state.timesteps = consistency_timesteps(CLASS, origin, t, request, original)?;
        self.state.num_inference_steps = Some(self.state.timesteps.len());
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One consistency step.
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
        let i = self.state.current_index(timestep)?;
        let prev_t = self.state.timesteps.get(i + 1).copied().unwrap_or(timestep) as i64;
        let t = timestep as i64;
        let alpha_t = self
            .state
            .alpha_cumprod_or_final(t, self.final_alpha_cumprod)?;
        let alpha_prev = self
            .state
            .alpha_cumprod_or_final(prev_t, self.final_alpha_cumprod)?;
        let beta_prev = 1.0 - alpha_prev;
        // The timestep is an int64 tensor; times a Python float it becomes float32.
        let scaled = t as f32 * self.config.timestep_scaling as f32;
        let c_skip = 0.25f32 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let c = &self.config;
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
        let denoised = x0.mul_scalar(c_out) + sample.mul_scalar(c_skip);
        let prev = if i + 1 != n {
            let noise = noise_like(&model_output, generator, options.noise_dtype)?;
            denoised.clone().mul_scalar(alpha_prev.sqrt()) + noise.mul_scalar(beta_prev.sqrt())
        } else {
            denoised.clone()
        };
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(denoised),
        })
    }
}
