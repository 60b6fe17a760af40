//! `KDPM2AncestralDiscreteScheduler`: DPM-Solver-2 with ancestral noise in every second stage
//! (the machinery is shared with `k_dpm_2_discrete`).

use crate::betas::{alphas_cumprod_of, beta_config};
use crate::k_dpm_2_discrete::KDpm2Core;
use crate::{
    SchedulerError, SchedulerMixin, SchedulerOutput, StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::KDPM2AncestralDiscreteSchedulerConfig;

const CLASS: &str = "KDPM2AncestralDiscreteScheduler";

/// diffusers' `KDPM2AncestralDiscreteScheduler`.
#[derive(Debug, Clone)]
pub struct KDPM2AncestralDiscreteScheduler {
    config: KDPM2AncestralDiscreteSchedulerConfig,
    core: KDpm2Core,
}

impl SchedulerMixin for KDPM2AncestralDiscreteScheduler {
    const ORDER: usize = 2;

    type Config = KDPM2AncestralDiscreteSchedulerConfig;

    crate::mixin::state_accessors!(core.state);

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: KDPM2AncestralDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
        let alphas = alphas_cumprod_of(CLASS, &beta_config!(config), false, &[]);
        let mut core = KDpm2Core::new(
            CLASS,
            true,
            &config.prediction_type,
            &config.timestep_spacing,
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
            alphas,
        )?;
        core.set_timesteps(
            &TimestepsRequest::steps(config.num_train_timesteps),
            config.steps_offset,
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        Ok(Self { config, core })
    }

    /// `set_timesteps(num_inference_steps)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        let c = &self.config;
        self.core.set_timesteps(
            request,
            c.steps_offset,
            c.use_karras_sigmas,
            c.use_exponential_sigmas,
            c.use_beta_sigmas,
        )
    }

    /// `scale_model_input`: x / √(σ² + 1) with the stage's σ.
    fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        self.core.scale_model_input(sample, timestep)
    }

    /// One DPM2 stage (the second stage draws `randn(model_output.shape)`).
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        self.core.step(
            model_output,
            timestep,
            sample,
            options.noise_dtype,
            generator,
        )
    }
}
