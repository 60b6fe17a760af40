//! `EulerAncestralDiscreteScheduler`: Euler steps with ancestral noise at every step
//! (including the last, where σ_up = 0 but the generator is still advanced).

use crate::common::{
    Prediction, Spacing, noise_like, np_interp, spacing_timesteps, train_sigmas, v_prediction_x0_in,
};
use crate::precision::{mul_left, round_tensor};
use crate::{
    SchedulerError, SchedulerOutput, StepIndex, StepOptions, TimestepsRequest, TorchGenerator,
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
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    index: StepIndex,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    pub fn new(config: EulerAncestralDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
        // diffusers raises NotImplementedError for `sample`.
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[Prediction::Epsilon, Prediction::VPrediction],
        )?;
        let spacing = Spacing::parse(CLASS, &config.timestep_spacing)?;
        let ac = crate::common::alphas_cumprod_zero_snr(
            CLASS,
            &crate::common::beta_config!(config),
            config.rescale_betas_zero_snr,
        )?;
        let mut sigmas = train_sigmas(&ac);
        sigmas.reverse();
        sigmas.push(0.0);
        let timesteps = crate::common::initial_timesteps(config.num_train_timesteps);
        Ok(Self {
            config,
            prediction,
            spacing,
            alphas_cumprod: ac,
            timesteps,
            sigmas,
            index: StepIndex::default(),
        })
    }

    /// The config, for re-save.
    pub fn config(&self) -> &EulerAncestralDiscreteSchedulerConfig {
        &self.config
    }

    /// `set_timesteps(num_inference_steps)`.
    pub fn set_timesteps(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
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
        let train = train_sigmas(&self.alphas_cumprod);
        let mut sig: Vec<f32> = np_interp(&ts, &train)
            .into_iter()
            .map(|s| s as f32)
            .collect();
        sig.push(0.0);
        self.timesteps = ts;
        self.sigmas = sig;
        self.index = StepIndex::default();
        Ok(())
    }

    /// The inference timesteps (float32 values).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The sigmas, one more than the timesteps.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// `init_noise_sigma`: max σ for linspace/trailing spacing, √(max σ² + 1) for leading.
    pub fn init_noise_sigma(&self) -> f32 {
        crate::common::k_init_noise_sigma(&self.sigmas, self.spacing)
    }

    /// The index bookkeeping.
    pub fn step_index(&mut self) -> &mut StepIndex {
        &mut self.index
    }

    fn sigma_at(&self, i: usize) -> Result<f32, SchedulerError> {
        crate::common::sigma_at(&self.sigmas, i)
    }

    /// `scale_model_input`: x / √(σ² + 1).
    pub fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        let i = self.index.current(&self.timesteps, timestep)?;
        let sigma = self.sigma_at(i)?;
        Ok(sample.div_scalar((sigma * sigma + 1.0).sqrt()))
    }

    /// One ancestral Euler step; always draws `randn(model_output.shape)`.
    pub fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.index.current(&self.timesteps, timestep)?;
        let sigma = self.sigma_at(i)?;
        let sigma_to = self.sigma_at(i + 1)?;
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
        self.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(pred),
        })
    }

    /// `add_noise`: x0 + z·σ.
    pub fn add_noise<const D: usize>(
        &self,
        original: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[f64],
    ) -> Result<Tensor<D>, SchedulerError> {
        crate::common::k_add_noise(
            &self.index,
            &self.timesteps,
            &self.sigmas,
            original,
            noise,
            timesteps,
        )
    }

    /// `order`.
    pub fn order(&self) -> usize {
        1
    }
}
