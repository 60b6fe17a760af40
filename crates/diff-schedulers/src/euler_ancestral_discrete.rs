//! `EulerAncestralDiscreteScheduler`: Euler steps with ancestral noise at every step
//! (including the last, where σ_up = 0 but the generator is still advanced).

use crate::betas::train_sigmas;
use crate::interpolation::np_interp;
use crate::precision::{mul_left, round_tensor};
use crate::prediction::{Prediction, v_prediction_x0_in};
use crate::random::noise_like;
use crate::timestep_spacing::{Spacing, spacing_timesteps};
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::EulerAncestralDiscreteSchedulerConfig;

const CLASS: &str = "EulerAncestralDiscreteScheduler";

/// diffusers' `EulerAncestralDiscreteScheduler`.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    config: EulerAncestralDiscreteSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    state: SchedulerState,
}

impl SchedulerMixin for EulerAncestralDiscreteScheduler {
    type Config = EulerAncestralDiscreteSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: EulerAncestralDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
        // diffusers raises NotImplementedError for `sample`.
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[Prediction::Epsilon, Prediction::VPrediction],
        )?;
        let spacing = Spacing::parse(CLASS, &config.timestep_spacing)?;
        let ac = crate::betas::alphas_cumprod_zero_snr(
            CLASS,
            &crate::betas::beta_config!(config),
            config.rescale_betas_zero_snr,
        )?;
        let mut sigmas = train_sigmas(&ac);
        sigmas.reverse();
        sigmas.push(0.0);
        let timesteps = crate::timestep_spacing::initial_timesteps(config.num_train_timesteps);
        Ok(Self {
            config,
            prediction,
            spacing,
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
        let ts: Vec<f64> = spacing_timesteps(
            self.spacing,
            c.num_train_timesteps,
            n,
            c.steps_offset,
            false,
        )
        .into_iter()
        .map(|t| f64::from(t as f32))
        .collect();
        let train = train_sigmas(&self.state.alphas_cumprod);
        let mut sig: Vec<f32> = np_interp(&ts, &train)
            .into_iter()
            .map(|s| s as f32)
            .collect();
        sig.push(0.0);
        self.state.timesteps = ts;
        self.state.sigmas = sig;
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One ancestral Euler step; always draws `randn(model_output.shape)`.
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
        let sigma_to = self.state.sigma_at(i + 1)?;
        // As Euler: `sample` is upcast to float32, the products with the half-precision
        // `model_output` and noise are rounded to its dtype, the result cast back.
        let half = options.noise_dtype;
        let pred = match self.prediction {
            Prediction::VPrediction => {
                v_prediction_x0_in(model_output.clone(), sample.clone(), sigma, half)
            }
            _ => sample.clone() - mul_left(sigma, model_output.clone(), half),
        };
        let s2 = sigma * sigma;
        let t2 = sigma_to * sigma_to;
        let sigma_up = (t2 * (s2 - t2) / s2).sqrt();
        let sigma_down = (t2 - sigma_up * sigma_up).sqrt();
        let derivative = (sample.clone() - pred.clone()).div_scalar(sigma);
        let dt = sigma_down - sigma;
        let prev = sample + derivative.mul_scalar(dt);
        let noise = noise_like(&model_output, generator, options.noise_dtype)?;
        let prev = round_tensor(prev + round_tensor(noise.mul_scalar(sigma_up), half), half);
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(pred),
        })
    }
}
