//! `LMSDiscreteScheduler`: the linear multistep method on the k-diffusion sigmas (up to
//! fourth order, coefficients from integrating the Lagrange basis between sigmas).

use crate::betas::{alphas_cumprod_of, beta_config};
use crate::prediction::{Prediction, k_x0};
use crate::sigma_schedules::{check_sigma_flags, k_schedule};
use crate::timestep_spacing::Spacing;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::LMSDiscreteSchedulerConfig;

const CLASS: &str = "LMSDiscreteScheduler";
/// diffusers' default `order` argument of `step`.
const LMS_ORDER: usize = 4;

/// diffusers' `LMSDiscreteScheduler`.
#[derive(Debug, Clone)]
pub struct LMSDiscreteScheduler {
    config: LMSDiscreteSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    state: SchedulerState,
    derivatives: Vec<Tensor<1>>,
}

impl SchedulerMixin for LMSDiscreteScheduler {
    type Config = LMSDiscreteSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: LMSDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
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
        let ac = alphas_cumprod_of(CLASS, &beta_config!(config), false, &[])?;
        let mut sigmas = crate::betas::train_sigmas(&ac);
        sigmas.reverse();
        sigmas.push(0.0);
        let timesteps = crate::timestep_spacing::initial_timesteps(config.num_train_timesteps);
        Ok(Self {
            config,
            prediction,
            spacing,
            derivatives: Vec::new(),
            state: SchedulerState::new(NoiseKind::Sigma(spacing), timesteps, sigmas, ac),
        })
    }

    /// `set_timesteps(num_inference_steps)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.timesteps.is_some() || request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}.set_timesteps takes only num_inference_steps"
            )));
        }
        let n = request.resolved_steps(CLASS)?;
        let c = &self.config;
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
        let mut sigmas: Vec<f32> = sig.into_iter().map(|v| v as f32).collect();
        sigmas.push(0.0);
        self.state.timesteps = ts.into_iter().map(|t| f64::from(t as f32)).collect();
        self.state.sigmas = sigmas;
        self.derivatives.clear();
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One LMS step (order 4, lower while the history fills).
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        _options: &StepOptions,
        _generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.state.current_index(timestep)?;
        let sigma = self.state.sigma_at(i)?;
        let dims = sample.dims();
        let x0 = k_x0(self.prediction, model_output, sample.clone(), sigma);
        let x = sample.flatten::<1>(0, D - 1);
        let derivative = (x.clone() - x0.clone().flatten::<1>(0, D - 1)).div_scalar(sigma);
        self.derivatives.push(derivative);
        if self.derivatives.len() > LMS_ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(LMS_ORDER);
        let mut acc: Option<Tensor<1>> = None;
        for (current, d) in self.derivatives.iter().rev().take(order).enumerate() {
            let coeff = self.lms_coefficient(order, i, current)? as f32;
            let term = d.clone().mul_scalar(coeff);
            acc = Some(match acc {
                Some(a) => a + term,
                None => term,
            });
        }
        let prev = match acc {
            Some(a) => x + a,
            None => x,
        };
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev.reshape(dims),
            pred_original_sample: Some(x0),
        })
    }
}

impl LMSDiscreteScheduler {
    /// `get_lms_coefficient`: ∫ from σ_t to σ_{t+1} of the Lagrange basis polynomial of
    /// `current` among the last `order` sigmas. diffusers integrates with `scipy.quad`; the
    /// integrand is a polynomial of degree ≤ 3, which 3-point Gauss–Legendre integrates
    /// exactly, so the results agree to rounding (float32 evaluation in diffusers).
    fn lms_coefficient(
        &self,
        order: usize,
        t: usize,
        current: usize,
    ) -> Result<f64, SchedulerError> {
        let s =
            |i: usize| -> Result<f64, SchedulerError> { Ok(f64::from(self.state.sigma_at(i)?)) };
        let basis = |tau: f64| -> Result<f64, SchedulerError> {
            let mut prod = 1.0;
            for k in 0..order {
                if k == current {
                    continue;
                }
                let sk = s(t - k)?;
                prod *= (tau - sk) / (s(t - current)? - sk);
            }
            Ok(prod)
        };
        let (a, b) = (s(t)?, s(t + 1)?);
        let half = (b - a) / 2.0;
        let mid = (a + b) / 2.0;
        let node = (3.0f64 / 5.0).sqrt();
        let sum = 5.0 / 9.0 * basis(mid - half * node)?
            + 8.0 / 9.0 * basis(mid)?
            + 5.0 / 9.0 * basis(mid + half * node)?;
        Ok(sum * half)
    }
}
