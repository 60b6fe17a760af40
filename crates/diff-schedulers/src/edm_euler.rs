//! `EDMEulerScheduler`: Euler steps in Karras et al.'s EDM formulation (preconditioned
//! inputs and outputs, karras or exponential sigmas, optional churn).

use crate::prediction::Prediction;
use crate::random::noise_like;
use crate::unsupported;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::EDMEulerSchedulerConfig;

const CLASS: &str = "EDMEulerScheduler";

/// `torch.linspace(start, end, n, dtype=float64)`: FMA from the nearer end, in f64.
fn torch_linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            (0..n)
                .map(|i| {
                    if i < n / 2 {
                        step.mul_add(i as f64, start)
                    } else {
                        (-step).mul_add((n - 1 - i) as f64, end)
                    }
                })
                .collect()
        }
    }
}

/// diffusers' `EDMEulerScheduler`.
#[derive(Debug, Clone)]
pub struct EDMEulerScheduler {
    config: EDMEulerSchedulerConfig,
    prediction: Prediction,
    state: SchedulerState,
}

impl SchedulerMixin for EDMEulerScheduler {
    type Config = EDMEulerSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: EDMEulerSchedulerConfig) -> Result<Self, SchedulerError> {
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[Prediction::Epsilon, Prediction::VPrediction],
        )?;
        if !matches!(config.sigma_schedule.as_str(), "karras" | "exponential") {
            return Err(unsupported(CLASS, "sigma_schedule", &config.sigma_schedule));
        }
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(unsupported(
                CLASS,
                "final_sigmas_type",
                &config.final_sigmas_type,
            ));
        }
        let t = config.num_train_timesteps;
        let ramp: Vec<f64> = (0..=t).map(|i| i as f64 / t as f64).collect();
        let mut s = Self {
            config,
            prediction,
            state: SchedulerState::new(
                NoiseKind::Sigma(crate::Spacing::Linspace),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            ),
        };
        s.fill(&ramp);
        Ok(s)
    }

    /// `set_timesteps(num_inference_steps | sigmas)`; custom `sigmas` are the ramp values in
    /// [0, 1] that diffusers passes through the schedule.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.timesteps.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} takes no custom timesteps"
            )));
        }
        let ramp = match &request.sigmas {
            Some(s) => s.clone(),
            None => torch_linspace_f64(0.0, 1.0, request.resolved_steps(CLASS)?),
        };
        self.fill(&ramp);
        Ok(())
    }

    /// `init_noise_sigma`: √(sigma_max² + 1), from the config.
    fn init_noise_sigma(&self) -> f32 {
        (self.config.sigma_max * self.config.sigma_max + 1.0).sqrt() as f32
    }

    /// `scale_model_input`: x·c_in with c_in = 1/√(σ² + σ_data²).
    fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        let i = self.state.current_index(timestep)?;
        let sigma = self.state.sigma_at(i)?;
        let sd = self.config.sigma_data as f32;
        let c_in = 1.0 / (sigma * sigma + sd * sd).sqrt();
        Ok(sample.mul_scalar(c_in))
    }

    /// One EDM Euler step (with churn when `options.s_churn > 0`).
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.state.current_index(timestep)?;
        let sigma = self.state.sigma_at(i)?;
        let gamma = if options.s_tmin <= sigma && sigma <= options.s_tmax {
            (options.s_churn / (self.state.sigmas.len() - 1) as f32).min(2f32.sqrt() - 1.0)
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0);
        let mut sample = sample;
        if gamma > 0.0 {
            let noise = noise_like(&model_output, generator, options.noise_dtype)?;
            sample = sample
                + noise
                    .mul_scalar(options.s_noise)
                    .mul_scalar((sigma_hat * sigma_hat - sigma * sigma).sqrt());
        }
        let sd = self.config.sigma_data as f32;
        let denom = sigma_hat * sigma_hat + sd * sd;
        let c_skip = sd * sd / denom;
        let c_out = match self.prediction {
            Prediction::VPrediction => -sigma_hat * sd / denom.sqrt(),
            _ => sigma_hat * sd / denom.sqrt(),
        };
        let x0 = sample.clone().mul_scalar(c_skip) + model_output.mul_scalar(c_out);
        let derivative = (sample.clone() - x0.clone()).div_scalar(sigma_hat);
        let dt = self.state.sigma_at(i + 1)? - sigma_hat;
        let prev = sample + derivative.mul_scalar(dt);
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }
}

impl EDMEulerScheduler {
    fn fill(&mut self, ramp: &[f64]) {
        let c = &self.config;
        let sigmas: Vec<f32> = if c.sigma_schedule == "karras" {
            let min_inv = c.sigma_min.powf(1.0 / c.rho);
            let max_inv = c.sigma_max.powf(1.0 / c.rho);
            ramp.iter()
                .map(|r| (max_inv + r * (min_inv - max_inv)).powf(c.rho) as f32)
                .collect()
        } else {
            // torch.linspace in the default float32, exp, flipped.
            let mut v: Vec<f32> = crate::array_math::torch_linspace_f32(
                c.sigma_min.ln() as f32,
                c.sigma_max.ln() as f32,
                ramp.len(),
            )
            .into_iter()
            .map(crate::float_kernels::torch_exp_f32)
            .collect();
            v.reverse();
            v
        };
        self.state.timesteps = sigmas
            .iter()
            .map(|s| f64::from(0.25 * crate::float_kernels::torch_log_f32(*s)))
            .collect();
        let last = if c.final_sigmas_type == "sigma_min" {
            sigmas.last().copied().unwrap_or(0.0)
        } else {
            0.0
        };
        self.state.sigmas = sigmas;
        self.state.sigmas.push(last);
        self.state.index = StepIndex::default();
    }
}
