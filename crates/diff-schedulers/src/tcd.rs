//! `TCDScheduler`: trajectory consistency distillation (strategic stochastic sampling with
//! `eta`, default 0.3).

use crate::betas::{alphas_cumprod_of, beta_config};
use crate::lcm::consistency_timesteps;
use crate::prediction::{Prediction, ddpm_x0};
use crate::random::noise_like;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::TCDSchedulerConfig;

const CLASS: &str = "TCDScheduler";

/// diffusers' `TCDScheduler`.
#[derive(Debug, Clone)]
pub struct TCDScheduler {
    config: TCDSchedulerConfig,
    prediction: Prediction,
    state: SchedulerState,
    final_alpha_cumprod: f32,
}

impl SchedulerMixin for TCDScheduler {
    type Config = TCDSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: TCDSchedulerConfig) -> Result<Self, SchedulerError> {
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
    /// An explicit `original_inference_steps` selects from every training timestep, as in
    /// diffusers.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} takes no custom sigmas"
            )));
        }
        request.check_exclusive(CLASS)?;
        let t = self.config.num_train_timesteps;
        let strength = request.strength.unwrap_or(1.0);
        let (origin, limit): (Vec<i64>, usize) = match request.original_inference_steps {
            None => {
                let original = self.config.original_inference_steps;
                if original == 0 || original > t {
                    return Err(SchedulerError::InvalidArgument(format!(
                        "{CLASS}: original_inference_steps {original} must be in 1..={t}"
                    )));
                }
                let k = (t / original) as i64;
                (
                    (1..=((original as f64 * strength) as i64))
                        .map(|i| i * k - 1)
                        .collect(),
                    original,
                )
            }
            Some(_) => ((0..((t as f64 * strength) as i64)).collect(), t),
        };
        self.state.timesteps = consistency_timesteps(CLASS, origin, t, request, limit)?;
        self.state.num_inference_steps = Some(self.state.timesteps.len());
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One TCD step (`options.eta`, default 0.3).
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
        let eta = options.eta.unwrap_or(0.3);
        if !(0.0..=1.0).contains(&eta) {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: eta {eta} must be in [0, 1]"
            )));
        }
        let i = self.state.current_index(timestep)?;
        let prev_t = self.state.timesteps.get(i + 1).copied().unwrap_or(0.0) as i64;
        // (1 - eta) is a Python double; times the int64 tensor it becomes float32.
        let s = ((1.0 - f64::from(eta)) as f32 * prev_t as f32).floor() as i64;
        let alpha_t = self
            .state
            .alpha_cumprod_or_final(timestep as i64, self.final_alpha_cumprod)?;
        let beta_t = 1.0 - alpha_t;
        let alpha_prev = self
            .state
            .alpha_cumprod_or_final(prev_t, self.final_alpha_cumprod)?;
        let alpha_s = self
            .state
            .alpha_cumprod_or_final(s, self.final_alpha_cumprod)?;
        let beta_s = 1.0 - alpha_s;
        let (x0, eps) = match self.prediction {
            Prediction::Sample => {
                let x0 = model_output.clone();
                let eps = (sample.clone() - x0.clone().mul_scalar(alpha_t.sqrt()))
                    .div_scalar(beta_t.sqrt());
                (x0, eps)
            }
            Prediction::VPrediction => (
                ddpm_x0(
                    self.prediction,
                    model_output.clone(),
                    sample.clone(),
                    alpha_t,
                ),
                model_output.clone().mul_scalar(alpha_t.sqrt())
                    + sample.clone().mul_scalar(beta_t.sqrt()),
            ),
            _ => (
                ddpm_x0(
                    self.prediction,
                    model_output.clone(),
                    sample.clone(),
                    alpha_t,
                ),
                model_output.clone(),
            ),
        };
        let noised = x0.mul_scalar(alpha_s.sqrt()) + eps.mul_scalar(beta_s.sqrt());
        let prev = if eta > 0.0 && i + 1 != n {
            let noise = noise_like(&model_output, generator, options.noise_dtype)?;
            noised.clone().mul_scalar((alpha_prev / alpha_s).sqrt())
                + noise.mul_scalar((1.0 - alpha_prev / alpha_s).sqrt())
        } else {
            noised.clone()
        };
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(noised),
        })
    }
}
