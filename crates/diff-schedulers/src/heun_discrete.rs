//! `HeunDiscreteScheduler`: Heun's second-order method on the k-diffusion sigmas (two model
//! calls per interval, the last interval Euler only).

use crate::common::{Prediction, Spacing, check_sigma_flags, k_alphas, k_schedule, k_x0};
use crate::{
    SchedulerError, SchedulerOutput, StepIndex, StepOptions, TimestepsRequest, TorchGenerator,
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
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// First-stage state: derivative, dt and sample (diffusers' `prev_derivative`, `dt`,
    /// `sample`), flattened.
    first_stage: Option<(Tensor<1>, f32, Tensor<1>)>,
    index: StepIndex,
}

impl HeunDiscreteScheduler {
    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    pub fn new(config: HeunDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
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
        let ac = k_alphas(
            CLASS,
            &config.beta_schedule,
            config.beta_start,
            config.beta_end,
            config.num_train_timesteps,
            config.trained_betas.as_deref(),
            &["exp"],
        )?;
        let mut s = Self {
            config,
            prediction,
            spacing,
            alphas_cumprod: ac,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            first_stage: None,
            index: StepIndex::default(),
        };
        // diffusers' __init__ calls set_timesteps(num_train_timesteps).
        let n = s.config.num_train_timesteps;
        s.set_timesteps(&TimestepsRequest::steps(n))?;
        Ok(s)
    }

    /// The config, for re-save.
    pub fn config(&self) -> &HeunDiscreteSchedulerConfig {
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
        let c = &self.config;
        let (ts, sig) = if let Some(custom) = &request.timesteps {
            if c.use_karras_sigmas || c.use_exponential_sigmas || c.use_beta_sigmas {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{CLASS}: custom timesteps cannot be used with karras / exponential / beta sigmas"
                )));
            }
            let ts: Vec<f64> = custom.iter().map(|t| f64::from(*t as f32)).collect();
            let train = crate::common::train_sigmas(&self.alphas_cumprod);
            let sig = crate::common::np_interp(&ts, &train);
            (ts, sig)
        } else {
            let n = request.resolved_steps(CLASS)?;
            let (ts, sig, _) = k_schedule(
                self.spacing,
                &self.alphas_cumprod,
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
        let sigmas = crate::common::interleave_inner(&s32);
        let ts32: Vec<f64> = ts.iter().map(|t| f64::from(*t as f32)).collect();
        let mut timesteps = vec![ts32[0]];
        for t in &ts32[1..] {
            timesteps.push(*t);
            timesteps.push(*t);
        }
        self.timesteps = timesteps;
        self.sigmas = sigmas;
        self.first_stage = None;
        self.index = StepIndex::default();
        Ok(())
    }

    /// The inference timesteps (2n − 1 entries: every one but the first repeated).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The sigmas (2n entries).
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

    /// `scale_model_input`: x / √(σ² + 1) with σ = `sigmas[step_index]`.
    pub fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        let i = self.index.current(&self.timesteps, timestep)?;
        let sigma = self.sigma_at(i)?;
        Ok(sample.div_scalar((sigma * sigma + 1.0).sqrt()))
    }

    /// One Heun stage.
    pub fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        _options: &StepOptions,
        _generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.index.current(&self.timesteps, timestep)?;
        let dims = sample.dims();
        let first = self.first_stage.is_none();
        let (sigma, sigma_next) = if first {
            (self.sigma_at(i)?, self.sigma_at(i + 1)?)
        } else {
            (
                self.sigma_at(
                    i.checked_sub(1)
                        .ok_or(SchedulerError::StepOutOfRange { index: 0, len: 0 })?,
                )?,
                self.sigma_at(i)?,
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
        self.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev.reshape(dims),
            pred_original_sample: Some(x0),
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

    /// `order` (2).
    pub fn order(&self) -> usize {
        2
    }
}
