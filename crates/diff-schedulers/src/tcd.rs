//! `TCDScheduler`: trajectory consistency distillation (strategic stochastic sampling with
//! `eta`, default 0.3).

use crate::common::{Prediction, ddpm_x0, noise_like};
use crate::ddim::{add_noise_ddpm, ddpm_family_alphas};
use crate::lcm::consistency_timesteps;
use crate::{
    SchedulerError, SchedulerOutput, StepIndex, StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::TCDSchedulerConfig;

const CLASS: &str = "TCDScheduler";

/// diffusers' `TCDScheduler`.
#[derive(Debug, Clone)]
pub struct TCDScheduler {
    config: TCDSchedulerConfig,
    prediction: Prediction,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
}

impl TCDScheduler {
    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    pub fn new(config: TCDSchedulerConfig) -> Result<Self, SchedulerError> {
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[
                Prediction::Epsilon,
                Prediction::Sample,
                Prediction::VPrediction,
            ],
        )?;
        let ac = ddpm_family_alphas(
            CLASS,
            &config.beta_schedule,
            config.beta_start,
            config.beta_end,
            config.num_train_timesteps,
            config.trained_betas.as_deref(),
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
            alphas_cumprod: ac,
            final_alpha_cumprod,
            timesteps,
            num_inference_steps: None,
            index: StepIndex::default(),
        })
    }

    /// The config, for re-save.
    pub fn config(&self) -> &TCDSchedulerConfig {
        &self.config
    }

    /// `set_timesteps(num_inference_steps | timesteps, original_inference_steps, strength)`.
    /// An explicit `original_inference_steps` selects from every training timestep, as in
    /// diffusers.
    pub fn set_timesteps(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
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
        self.timesteps = consistency_timesteps(CLASS, origin, t, request, limit)?;
        self.num_inference_steps = Some(self.timesteps.len());
        self.index = StepIndex::default();
        Ok(())
    }

    /// The inference timesteps (integers).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `init_noise_sigma` (1.0).
    pub fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// The index bookkeeping.
    pub fn step_index(&mut self) -> &mut StepIndex {
        &mut self.index
    }

    /// `scale_model_input`: the identity.
    pub fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        _timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        Ok(sample)
    }

    fn alpha(&self, t: i64) -> Result<f32, SchedulerError> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        usize::try_from(t)
            .ok()
            .and_then(|i| self.alphas_cumprod.get(i).copied())
            .ok_or(SchedulerError::UnknownTimestep(t as f64))
    }

    /// One TCD step (`options.eta`, default 0.3).
    pub fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let n = self
            .num_inference_steps
            .ok_or(SchedulerError::NotInitialised(CLASS))?;
        let eta = options.eta.unwrap_or(0.3);
        if !(0.0..=1.0).contains(&eta) {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: eta {eta} must be in [0, 1]"
            )));
        }
        let i = self.index.current(&self.timesteps, timestep)?;
        let prev_t = self.timesteps.get(i + 1).copied().unwrap_or(0.0) as i64;
        // (1 - eta) is a Python double; times the int64 tensor it becomes float32.
        let s = ((1.0 - f64::from(eta)) as f32 * prev_t as f32).floor() as i64;
        let alpha_t = self.alpha(timestep as i64)?;
        let beta_t = 1.0 - alpha_t;
        let alpha_prev = self.alpha(prev_t)?;
        let alpha_s = self.alpha(s)?;
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
        self.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(noised),
        })
    }

    /// `add_noise`: √ᾱ_t·x0 + √(1-ᾱ_t)·z.
    pub fn add_noise<const D: usize>(
        &self,
        original: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[f64],
    ) -> Result<Tensor<D>, SchedulerError> {
        add_noise_ddpm(&self.alphas_cumprod, original, noise, timesteps)
    }

    /// `order`.
    pub fn order(&self) -> usize {
        1
    }
}
