//! `EulerDiscreteScheduler`: Euler steps on the k-diffusion sigma schedule, with optional
//! churn (noise) and karras / exponential sigmas.

use crate::array_math::torch_linspace_f32;
use crate::betas::train_sigmas;
use crate::interpolation::{np_interp, sigma_to_t};
use crate::precision::{mul_left, round_tensor};
use crate::prediction::{Prediction, v_prediction_x0_in};
use crate::random::noise_like;
use crate::sigma_schedules::{check_sigma_flags, exponential_sigmas, karras_sigmas};
use crate::timestep_spacing::{Spacing, spacing_timesteps};
use crate::unsupported;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::EulerDiscreteSchedulerConfig;

const CLASS: &str = "EulerDiscreteScheduler";

/// diffusers' `EulerDiscreteScheduler`.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    config: EulerDiscreteSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    continuous: bool,
    state: SchedulerState,
}

impl SchedulerMixin for EulerDiscreteScheduler {
    type Config = EulerDiscreteSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: EulerDiscreteSchedulerConfig) -> Result<Self, SchedulerError> {
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
            config.use_karras_sigmas.unwrap_or(false),
            config.use_exponential_sigmas.unwrap_or(false),
            config.use_beta_sigmas.unwrap_or(false),
        )?;
        if !matches!(config.interpolation_type.as_str(), "linear" | "log_linear") {
            return Err(unsupported(
                CLASS,
                "interpolation_type",
                &config.interpolation_type,
            ));
        }
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(unsupported(
                CLASS,
                "final_sigmas_type",
                &config.final_sigmas_type,
            ));
        }
        let continuous = match config.timestep_type.as_str() {
            "discrete" => false,
            "continuous" => prediction == Prediction::VPrediction,
            other => return Err(unsupported(CLASS, "timestep_type", other)),
        };
        let ac = crate::betas::alphas_cumprod_zero_snr(
            CLASS,
            &crate::betas::beta_config!(config),
            config.rescale_betas_zero_snr,
        )?;
        let mut sigmas: Vec<f32> = train_sigmas(&ac);
        sigmas.reverse();
        let timesteps: Vec<f64> = if continuous {
            sigmas
                .iter()
                .map(|s| f64::from(0.25 * crate::float_kernels::torch_log_f32(*s)))
                .collect()
        } else {
            crate::timestep_spacing::initial_timesteps(config.num_train_timesteps)
        };
        sigmas.push(0.0);
        Ok(Self {
            config,
            prediction,
            spacing,
            continuous,
            state: SchedulerState::new(NoiseKind::Sigma(spacing), timesteps, sigmas, ac),
        })
    }

    /// `set_timesteps(num_inference_steps | timesteps | sigmas)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        let c = &self.config;
        let karras = c.use_karras_sigmas.unwrap_or(false);
        let exponential = c.use_exponential_sigmas.unwrap_or(false);
        request.check_exclusive(CLASS)?;
        if request.timesteps.is_some()
            && (karras || exponential || c.use_beta_sigmas.unwrap_or(false))
        {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: cannot set `timesteps` with karras or exponential sigmas"
            )));
        }
        if request.timesteps.is_some() && self.continuous {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: cannot set `timesteps` with continuous v-prediction timesteps"
            )));
        }
        let train = train_sigmas(&self.state.alphas_cumprod);
        let log_sigmas: Vec<f32> = train
            .iter()
            .map(|s| crate::float_kernels::numpy_log_f32(*s))
            .collect();
        let (timesteps, sigmas): (Vec<f64>, Vec<f32>) = if let Some(custom) = &request.sigmas {
            let sig: Vec<f32> = custom.iter().map(|s| *s as f32).collect();
            let ts = sig[..sig.len().saturating_sub(1)]
                .iter()
                .map(|s| {
                    crate::interpolation::sigma_to_t_f32(
                        *s,
                        &log_sigmas,
                        crate::interpolation::SigmaToT::Numpy,
                    )
                })
                .collect();
            (ts, sig)
        } else {
            let n = request.resolved_steps(CLASS)?;
            let mut ts: Vec<f64> = match &request.timesteps {
                Some(custom) => custom.clone(),
                None => spacing_timesteps(
                    self.spacing,
                    c.num_train_timesteps,
                    n,
                    c.steps_offset,
                    false,
                ),
            };
            ts.iter_mut().for_each(|t| *t = f64::from(*t as f32));
            let mut sig: Vec<f64> = if c.interpolation_type == "log_linear" {
                let (Some(first), Some(last)) = (train.first(), train.last()) else {
                    return Err(SchedulerError::InvalidConfig {
                        class: CLASS,
                        message: "no training timesteps".into(),
                    });
                };
                // `np.log` of float32 numpy scalars, then torch's `exp` of the float32 linspace.
                torch_linspace_f32(
                    crate::float_kernels::numpy_log_f32(*last),
                    crate::float_kernels::numpy_log_f32(*first),
                    n + 1,
                )
                .into_iter()
                .map(|v| f64::from(crate::float_kernels::torch_exp_f32(v)))
                .collect()
            } else {
                np_interp(&ts, &train)
            };
            let range = (
                c.sigma_min
                    .unwrap_or_else(|| sig.last().copied().unwrap_or(0.0)),
                c.sigma_max
                    .unwrap_or_else(|| sig.first().copied().unwrap_or(0.0)),
            );
            if karras {
                sig = karras_sigmas(range.0, range.1, n, 7.0);
                ts = sig.iter().map(|s| sigma_to_t(*s, &log_sigmas)).collect();
            } else if exponential {
                sig = exponential_sigmas(range.0, range.1, n);
                ts = sig.iter().map(|s| sigma_to_t(*s, &log_sigmas)).collect();
            } else if c.use_beta_sigmas.unwrap_or(false) {
                sig = crate::sigma_schedules::beta_sigmas(range.0, range.1, n);
                ts = sig.iter().map(|s| sigma_to_t(*s, &log_sigmas)).collect();
            }
            let last = if c.final_sigmas_type == "sigma_min" {
                let a0 = self.state.alphas_cumprod[0];
                f64::from(((1.0 - a0) / a0).sqrt())
            } else {
                0.0
            };
            sig.push(last);
            (ts, sig.into_iter().map(|s| s as f32).collect())
        };
        self.state.timesteps = if self.continuous {
            sigmas[..sigmas.len().saturating_sub(1)]
                .iter()
                .map(|s| f64::from(0.25 * crate::float_kernels::torch_log_f32(*s)))
                .collect()
        } else {
            timesteps.into_iter().map(|t| f64::from(t as f32)).collect()
        };
        self.state.num_inference_steps = Some(self.state.timesteps.len());
        self.state.sigmas = sigmas;
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One Euler step (with churn when `options.s_churn > 0`).
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
        let gamma = if options.s_tmin <= sigma && sigma <= options.s_tmax {
            (options.s_churn / (self.state.sigmas.len() - 1) as f32).min(2f32.sqrt() - 1.0)
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0);
        // diffusers upcasts `sample` to float32 for the step, but the products with the
        // half-precision `model_output` (and the step noise, drawn in its dtype) stay in that
        // dtype, rounded per op (`sigma_hat * model_output`: the 0-d sigma on the left is
        // rounded too); the result is cast back to it.
        let half = options.noise_dtype;
        let mut sample = sample;
        if gamma > 0.0 {
            let noise = noise_like(&model_output, generator, options.noise_dtype)?;
            let eps = round_tensor(noise.mul_scalar(options.s_noise), half);
            sample = sample
                + round_tensor(
                    eps.mul_scalar((sigma_hat * sigma_hat - sigma * sigma).sqrt()),
                    half,
                );
        }
        let pred = match self.prediction {
            Prediction::Sample => model_output.clone(),
            Prediction::VPrediction => {
                v_prediction_x0_in(model_output.clone(), sample.clone(), sigma, half)
            }
            _ => sample.clone() - mul_left(sigma_hat, model_output.clone(), half),
        };
        let derivative = (sample.clone() - pred.clone()).div_scalar(sigma_hat);
        let dt = sigma_next - sigma_hat;
        let prev = round_tensor(sample + derivative.mul_scalar(dt), half);
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(pred),
        })
    }
}
