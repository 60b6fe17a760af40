//! `HeunDiscreteScheduler`: Heun's second-order method on the k-diffusion sigmas (two model
//! calls per interval, the last interval Euler only).

use crate::betas::{alphas_cumprod_of, beta_config};
use crate::prediction::{Prediction, k_x0};
use crate::sigma_schedules::{check_sigma_flags, k_schedule};
use crate::timestep_spacing::Spacing;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::HeunDiscreteSchedulerConfig;

const CLASS: &str = "HeunDiscreteScheduler";

/// diffusers' `HeunDiscreteScheduler`.
#[derive(Debug, Clone)]
pub struct HeunDiscreteScheduler {
    config: HeunDiscreteSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    state: SchedulerState,
    /// First-stage state: derivative, dt and sample (diffusers' `prev_derivative`, `dt`,
    /// `sample`), flattened.
    first_stage: Option<(Tensor<1>, f32, Tensor<1>)>,
}

impl SchedulerMixin for HeunDiscreteScheduler {
    const ORDER: usize = 2;

    type Config = HeunDiscreteSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: HeunDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
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
        check_sigma_flags(
            CLASS,
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        let ac = alphas_cumprod_of(CLASS, &beta_config!(config), false, &["exp"])?;
        let mut s = Self {
            config,
            prediction,
            spacing,
            first_stage: None,
            state: SchedulerState::new(NoiseKind::Sigma(spacing), Vec::new(), Vec::new(), ac),
        };
        // diffusers' __init__ calls set_timesteps(num_train_timesteps).
        let n = s.config.num_train_timesteps;
        s.set_timesteps(n)?;
        Ok(s)
    }

    /// `set_timesteps(num_inference_steps | timesteps)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} takes no custom sigmas"
            )));
        }
        request.check_exclusive(CLASS)?;
        let c = &self.config;
        let (ts, sig) = if let Some(custom) = &request.timesteps {
            if c.use_karras_sigmas || c.use_exponential_sigmas || c.use_beta_sigmas {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{CLASS}: custom timesteps cannot be used with karras / exponential / beta sigmas"
                )));
            }
            let ts: Vec<f64> = custom.iter().map(|t| f64::from(*t as f32)).collect();
            let train = crate::betas::train_sigmas(&self.state.alphas_cumprod);
            let sig = crate::interpolation::np_interp(&ts, &train);
            (ts, sig)
        } else {
            let n = request.resolved_steps(CLASS)?;
            let (ts, sig, _) = k_schedule(
                self.spacing,
                &self.state.alphas_cumprod,
                n,
                c.steps_offset,
                c.use_karras_sigmas,
                c.use_exponential_sigmas,
                c.use_beta_sigmas,
                false,
            );
            (ts, sig)
        };
        let mut s32: Vec<f32> = sig.into_iter().map(|v| v as f32).collect();
        s32.push(0.0);
        let sigmas = crate::array_math::interleave_inner(&s32);
        let ts32: Vec<f64> = ts.iter().map(|t| f64::from(*t as f32)).collect();
        let mut timesteps = vec![ts32[0]];
        for t in &ts32[1..] {
            timesteps.push(*t);
            timesteps.push(*t);
        }
        self.state.timesteps = timesteps;
        self.state.sigmas = sigmas;
        self.first_stage = None;
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One Heun stage.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        _options: &StepOptions,
        _generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.state.current_index(timestep)?;
        let dims = sample.dims();
        let first = self.first_stage.is_none();
        let (sigma, sigma_next) = if first {
            (self.state.sigma_at(i)?, self.state.sigma_at(i + 1)?)
        } else {
            (
                self.state.sigma_at(
                    i.checked_sub(1)
                        .ok_or(SchedulerError::StepOutOfRange { index: 0, len: 0 })?,
                )?,
                self.state.sigma_at(i)?,
            )
        };
        let sigma_hat = sigma;
        let sigma_input = if first { sigma_hat } else { sigma_next };
        let mut x0 = k_x0(self.prediction, model_output, sample.clone(), sigma_input);
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r);
        }
        let x = sample.flatten::<1>(0, D - 1);
        let x0f = x0.clone().flatten::<1>(0, D - 1);
        let prev = match self.first_stage.take() {
            None => {
                let derivative = (x.clone() - x0f).div_scalar(sigma_hat);
                let dt = sigma_next - sigma_hat;
                let prev = x.clone() + derivative.clone().mul_scalar(dt);
                self.first_stage = Some((derivative, dt, x));
                prev
            }
            Some((prev_derivative, dt, stored)) => {
                let derivative = (x - x0f).div_scalar(sigma_next);
                let derivative = (prev_derivative + derivative).div_scalar(2.0);
                stored + derivative.mul_scalar(dt)
            }
        };
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev.reshape(dims),
            pred_original_sample: Some(x0),
        })
    }
}
