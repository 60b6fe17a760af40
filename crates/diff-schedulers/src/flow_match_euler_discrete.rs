//! `FlowMatchEulerDiscreteScheduler`: Euler steps for rectified-flow models (SD3, Flux), with
//! static or dynamic (resolution-dependent `mu`) shifting.

use crate::array_math::np_linspace;
use crate::random::noise_like;
use crate::sigma_schedules::{check_sigma_flags, exponential_sigmas, karras_sigmas};
use crate::unsupported;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::FlowMatchEulerDiscreteSchedulerConfig;

const CLASS: &str = "FlowMatchEulerDiscreteScheduler";

/// diffusers' `FlowMatchEulerDiscreteScheduler`.
#[derive(Debug, Clone)]
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowMatchEulerDiscreteSchedulerConfig,
    shift: f64,
    sigma_min: f64,
    sigma_max: f64,
    state: SchedulerState,
}

impl SchedulerMixin for FlowMatchEulerDiscreteScheduler {
    type Config = FlowMatchEulerDiscreteSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: FlowMatchEulerDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
        check_sigma_flags(
            CLASS,
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        if !matches!(config.time_shift_type.as_str(), "exponential" | "linear") {
            return Err(unsupported(
                CLASS,
                "time_shift_type",
                &config.time_shift_type,
            ));
        }
        let t = config.num_train_timesteps;
        let shift = config.shift as f32;
        let mut sigmas: Vec<f32> = np_linspace(1.0, t as f64, t)
            .into_iter()
            .rev()
            .map(|v| v as f32 / t as f32)
            .collect();
        if !config.use_dynamic_shifting {
            let sm1 = (config.shift - 1.0) as f32;
            sigmas = sigmas
                .into_iter()
                .map(|s| shift * s / (1.0 + sm1 * s))
                .collect();
        }
        let timesteps = sigmas.iter().map(|s| f64::from(s * t as f32)).collect();
        let sigma_min = f64::from(sigmas.last().copied().unwrap_or(0.0));
        let sigma_max = f64::from(sigmas.first().copied().unwrap_or(1.0));
        Ok(Self {
            shift: config.shift,
            config,
            sigma_min,
            sigma_max,
            state: SchedulerState::new(NoiseKind::FlowMatch, timesteps, sigmas, Vec::new()),
        })
    }

    /// `set_timesteps(num_inference_steps | sigmas | timesteps, mu)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        let c = &self.config;
        let t_train = c.num_train_timesteps as f64;
        if c.use_dynamic_shifting && request.mu.is_none() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: `mu` must be passed when use_dynamic_shifting is set"
            )));
        }
        if let (Some(s), Some(t)) = (&request.sigmas, &request.timesteps)
            && s.len() != t.len()
        {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: sigmas and timesteps must have the same length"
            )));
        }
        if request.timesteps.is_some() && request.sigmas.is_none() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: custom timesteps need custom sigmas too"
            )));
        }
        let n = match (request.num_inference_steps, &request.sigmas) {
            (Some(n), _) => n,
            (None, Some(s)) => s.len(),
            (None, None) => 0,
        };
        if n == 0 {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: no inference steps"
            )));
        }
        let mut sig: Vec<f64> = match &request.sigmas {
            Some(s) => s.iter().map(|v| f64::from(*v as f32)).collect(),
            None => np_linspace(self.sigma_max * t_train, self.sigma_min * t_train, n)
                .into_iter()
                .map(|t| t / t_train)
                .collect(),
        };
        if c.use_dynamic_shifting {
            let mu = request.mu.unwrap_or(0.0);
            sig = sig
                .into_iter()
                .map(|t| {
                    if c.time_shift_type == "linear" {
                        mu / (mu + (1.0 / t - 1.0))
                    } else {
                        mu.exp() / (mu.exp() + (1.0 / t - 1.0))
                    }
                })
                .collect();
        } else {
            let shift = self.shift;
            sig = sig
                .into_iter()
                .map(|s| shift * s / (1.0 + (shift - 1.0) * s))
                .collect();
        }
        if let Some(terminal) = c.shift_terminal
            && terminal != 0.0
        {
            let last = 1.0 - sig.last().copied().unwrap_or(0.0);
            let scale = last / (1.0 - terminal);
            sig = sig.into_iter().map(|s| 1.0 - (1.0 - s) / scale).collect();
        }
        let (min, max) = (
            sig.last().copied().unwrap_or(0.0),
            sig.first().copied().unwrap_or(1.0),
        );
        if c.use_karras_sigmas {
            sig = karras_sigmas(min, max, n, 7.0);
        } else if c.use_exponential_sigmas {
            sig = exponential_sigmas(min, max, n);
        } else if c.use_beta_sigmas {
            sig = crate::sigma_schedules::beta_sigmas(min, max, n);
        }
        let mut sigmas: Vec<f32> = sig.into_iter().map(|s| s as f32).collect();
        let scale = c.num_train_timesteps as f32;
        let mut timesteps: Vec<f64> = match &request.timesteps {
            Some(t) => t.iter().map(|v| f64::from(*v as f32)).collect(),
            None => sigmas.iter().map(|s| f64::from(s * scale)).collect(),
        };
        if c.invert_sigmas {
            sigmas = sigmas.into_iter().map(|s| 1.0 - s).collect();
            timesteps = sigmas.iter().map(|s| f64::from(s * scale)).collect();
            sigmas.push(1.0);
        } else {
            sigmas.push(0.0);
        }
        self.state.timesteps = timesteps;
        self.state.sigmas = sigmas;
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One Euler step of the flow ODE (or the stochastic re-noising variant).
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
        let sigma_next = self.state.sigma_at(i + 1)?;
        let prev = if self.config.stochastic_sampling {
            let x0 = sample.clone() - model_output.mul_scalar(sigma);
            let noise = noise_like(&sample, generator, options.noise_dtype)?;
            x0.mul_scalar(1.0 - sigma_next) + noise.mul_scalar(sigma_next)
        } else {
            sample + model_output.mul_scalar(sigma_next - sigma)
        };
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: None,
        })
    }
}

impl FlowMatchEulerDiscreteScheduler {
    /// `set_shift`.
    pub fn set_shift(&mut self, shift: f64) {
        self.shift = shift;
    }
}
