//! `DDIMScheduler`: denoising diffusion implicit models (deterministic unless `eta > 0`).

use crate::common::{
    Prediction, Spacing, alphas_cumprod, ddpm_x0_in, make_betas, noise_like,
    rescale_zero_terminal_snr, spacing_timesteps, threshold_sample,
};
use crate::precision::{mul_left, round_tensor};
use crate::{
    SchedulerError, SchedulerOutput, StepIndex, StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::DDIMSchedulerConfig;

const CLASS: &str = "DDIMScheduler";

/// diffusers' `DDIMScheduler`.
#[derive(Debug, Clone)]
pub struct DDIMScheduler {
    config: DDIMSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    num_inference_steps: Option<usize>,
    index: StepIndex,
}

/// Clips or thresholds x0 as the DDPM-family schedulers do.
pub(crate) fn clip_or_threshold<const D: usize>(
    x0: Tensor<D>,
    thresholding: bool,
    clip_sample: bool,
    clip_range: f64,
    ratio: f64,
    max_value: f64,
) -> Result<Tensor<D>, SchedulerError> {
    if thresholding {
        threshold_sample(x0, ratio, max_value)
    } else if clip_sample {
        let r = clip_range as f32;
        Ok(x0.clamp(-r, r))
    } else {
        Ok(x0)
    }
}

/// Builds `alphas_cumprod` of a DDPM-family config.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ddpm_family_alphas(
    class: &'static str,
    schedule: &str,
    beta_start: f64,
    beta_end: f64,
    n: usize,
    trained: Option<&[f64]>,
    rescale: bool,
    extra_schedules: &[&str],
) -> Result<Vec<f32>, SchedulerError> {
    let mut betas = make_betas(
        class,
        schedule,
        beta_start,
        beta_end,
        n,
        trained,
        extra_schedules,
    )?;
    if rescale {
        betas = rescale_zero_terminal_snr(&betas);
    }
    Ok(alphas_cumprod(&betas))
}

impl DDIMScheduler {
    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    pub fn new(config: DDIMSchedulerConfig) -> Result<Self, SchedulerError> {
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
            spacing,
            alphas_cumprod: ac,
            final_alpha_cumprod,
            timesteps,
            num_inference_steps: None,
            index: StepIndex::default(),
        })
    }

    /// The config, for re-save.
    pub fn config(&self) -> &DDIMSchedulerConfig {
        &self.config
    }

    /// `set_timesteps(num_inference_steps)` (DDIM takes no custom timesteps).
    pub fn set_timesteps(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.timesteps.is_some() || request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}.set_timesteps takes only num_inference_steps"
            )));
        }
        let n = request.resolved_steps(CLASS)?;
        let t = self.config.num_train_timesteps;
        if n > t {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: num_inference_steps {n} exceeds num_train_timesteps {t}"
            )));
        }
        self.timesteps = spacing_timesteps(self.spacing, t, n, self.config.steps_offset, true);
        self.num_inference_steps = Some(n);
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
        usize::try_from(t)
            .ok()
            .and_then(|i| self.alphas_cumprod.get(i).copied())
            .ok_or(SchedulerError::UnknownTimestep(t as f64))
    }

    /// One DDIM step. `prev_t = t - T // n` whatever the spacing, as diffusers does.
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
        let c = &self.config;
        let t = timestep as i64;
        let prev_t = t - (c.num_train_timesteps / n) as i64;
        let alpha_t = self.alpha(t)?;
        let alpha_prev = if prev_t >= 0 {
            self.alpha(prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let beta_t = 1.0 - alpha_t;
        // DDIM computes in the sample's dtype: with float16 / bfloat16 latents every op is
        // rounded to it, and its 0-d float32 coefficients, on the left of each product, are
        // rounded to it first (the identity in float32; see `precision`).
        let half = options.noise_dtype;
        let r = |t: Tensor<D>| round_tensor(t, half);
        let ml = |c: f32, t: Tensor<D>| mul_left(c, t, half);
        let (mut x0, mut eps) = match self.prediction {
            Prediction::Sample => {
                let x0 = model_output.clone();
                let eps = r(
                    r(sample.clone() - ml(alpha_t.sqrt(), x0.clone())).div_scalar(beta_t.sqrt())
                );
                (x0, eps)
            }
            Prediction::VPrediction => (
                ddpm_x0_in(
                    self.prediction,
                    model_output.clone(),
                    sample.clone(),
                    alpha_t,
                    half,
                ),
                r(ml(alpha_t.sqrt(), model_output.clone()) + ml(beta_t.sqrt(), sample.clone())),
            ),
            _ => (
                ddpm_x0_in(
                    self.prediction,
                    model_output.clone(),
                    sample.clone(),
                    alpha_t,
                    half,
                ),
                model_output.clone(),
            ),
        };
        x0 = r(clip_or_threshold(
            x0,
            c.thresholding,
            c.clip_sample,
            c.clip_sample_range,
            c.dynamic_thresholding_ratio,
            c.sample_max_value,
        )?);
        let beta_prev = 1.0 - alpha_prev;
        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        let eta = options.eta.unwrap_or(0.0);
        let std_dev = eta * variance.sqrt();
        if options.use_clipped_model_output {
            eps = r(r(sample.clone() - ml(alpha_t.sqrt(), x0.clone())).div_scalar(beta_t.sqrt()));
        }
        let direction = ml((1.0 - alpha_prev - std_dev * std_dev).sqrt(), eps);
        let mut prev = r(ml(alpha_prev.sqrt(), x0.clone()) + direction);
        if eta > 0.0 {
            let noise = noise_like(&model_output, generator, options.noise_dtype)?;
            prev = r(prev + ml(std_dev, noise));
        }
        self.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
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

/// `add_noise` of the DDPM family, indexing `alphas_cumprod` by the timesteps.
pub(crate) fn add_noise_ddpm<const D: usize>(
    alphas_cumprod: &[f32],
    original: Tensor<D>,
    noise: Tensor<D>,
    timesteps: &[f64],
) -> Result<Tensor<D>, SchedulerError> {
    let alphas = timesteps
        .iter()
        .map(|t| {
            usize::try_from(*t as i64)
                .ok()
                .and_then(|i| alphas_cumprod.get(i).copied())
                .ok_or(SchedulerError::UnknownTimestep(*t))
        })
        .collect::<Result<Vec<f32>, _>>()?;
    crate::per_batch(original, noise, &alphas, |x, z, a| {
        x.mul_scalar(a.sqrt()) + z.mul_scalar((1.0 - a).sqrt())
    })
}
