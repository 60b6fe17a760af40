//! `DEISMultistepScheduler`: diffusion exponential integrator sampler (log-ρ multistep, up to
//! third order).

use crate::array_math::{np_arange, np_linspace, np_round};
use crate::betas::train_sigmas;
use crate::dpm_family::{ModelOutputs, Thresholding, alpha_sigma, convert_model_output, lambda};
use crate::float_kernels::numpy_log_f32;
use crate::interpolation::{np_interp, sigma_to_t};
use crate::prediction::Prediction;
use crate::sigma_schedules::{check_sigma_flags, exponential_sigmas, karras_sigmas};
use crate::timestep_spacing::Spacing;
use crate::unsupported;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::DEISMultistepSchedulerConfig;

const CLASS: &str = "DEISMultistepScheduler";

/// diffusers' `DEISMultistepScheduler`.
#[derive(Debug, Clone)]
pub struct DEISMultistepScheduler {
    config: DEISMultistepSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    state: SchedulerState,
    model_outputs: ModelOutputs,
    lower_order_nums: usize,
}

impl SchedulerMixin for DEISMultistepScheduler {
    type Config = DEISMultistepSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(mut config: DEISMultistepSchedulerConfig) -> Result<Self, SchedulerError> {
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[
                Prediction::Epsilon,
                Prediction::Sample,
                Prediction::VPrediction,
                Prediction::Flow,
            ],
        )?;
        let spacing = Spacing::parse(CLASS, &config.timestep_spacing)?;
        check_sigma_flags(
            CLASS,
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        // diffusers rewrites the names used by compatible classes.
        if matches!(config.algorithm_type.as_str(), "dpmsolver" | "dpmsolver++") {
            config.algorithm_type = "deis".into();
        }
        if matches!(
            config.solver_type.as_str(),
            "midpoint" | "heun" | "bh1" | "bh2"
        ) {
            config.solver_type = "logrho".into();
        }
        if config.algorithm_type != "deis" {
            return Err(unsupported(CLASS, "algorithm_type", &config.algorithm_type));
        }
        if config.solver_type != "logrho" {
            return Err(unsupported(CLASS, "solver_type", &config.solver_type));
        }
        if config.solver_order == 0 || config.solver_order > 3 {
            return Err(unsupported(
                CLASS,
                "solver_order",
                &config.solver_order.to_string(),
            ));
        }
        let ac = crate::betas::alphas_cumprod_zero_snr(
            CLASS,
            &crate::betas::beta_config!(config),
            false,
        )?;
        let sigmas = train_sigmas(&ac);
        let order = config.solver_order;
        let timesteps = crate::timestep_spacing::initial_timesteps(config.num_train_timesteps);
        let kind = NoiseKind::AlphaSigma {
            flow: config.use_flow_sigmas,
        };
        Ok(Self {
            config,
            prediction,
            spacing,
            model_outputs: ModelOutputs::new(CLASS, order),
            lower_order_nums: 0,
            state: SchedulerState::new(kind, timesteps, sigmas, ac),
        })
    }

    /// `set_timesteps(num_inference_steps, mu)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.timesteps.is_some() || request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}.set_timesteps takes only num_inference_steps"
            )));
        }
        if let Some(mu) = request.mu {
            if !self.config.use_dynamic_shifting {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{CLASS}: `mu` needs use_dynamic_shifting"
                )));
            }
            self.config.flow_shift = mu.exp();
        }
        let n = request.resolved_steps(CLASS)?;
        let c = &self.config;
        let t_train = c.num_train_timesteps;
        let mut ts: Vec<f64> = match self.spacing {
            Spacing::Linspace => {
                let mut v: Vec<f64> = np_linspace(0.0, (t_train - 1) as f64, n + 1)
                    .into_iter()
                    .map(np_round)
                    .collect();
                v.reverse();
                v.pop();
                v
            }
            Spacing::Leading => {
                let ratio = t_train / (n + 1);
                let mut v: Vec<f64> = (0..=n).map(|i| (i * ratio) as f64).collect();
                v.reverse();
                v.pop();
                v.into_iter().map(|t| t + c.steps_offset as f64).collect()
            }
            Spacing::Trailing => {
                let ratio = t_train as f64 / n as f64;
                np_arange(t_train as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|x| np_round(x) - 1.0)
                    .collect()
            }
        };
        let train = train_sigmas(&self.state.alphas_cumprod);
        let log_sigmas: Vec<f32> = train.iter().map(|s| numpy_log_f32(*s)).collect();
        let (smin, smax) = (f64::from(train[0]), f64::from(train[train.len() - 1]));
        let mut sig: Vec<f64> =
            if c.use_karras_sigmas || c.use_exponential_sigmas || c.use_beta_sigmas {
                let s = if c.use_karras_sigmas {
                    karras_sigmas(smin, smax, n, 7.0)
                } else if c.use_exponential_sigmas {
                    exponential_sigmas(smin, smax, n)
                } else {
                    crate::sigma_schedules::beta_sigmas(smin, smax, n)
                };
                ts = s
                    .iter()
                    .map(|v| {
                        let t = sigma_to_t(*v, &log_sigmas);
                        if c.use_karras_sigmas { np_round(t) } else { t }
                    })
                    .collect();
                let last = s.last().copied().unwrap_or(0.0);
                let mut s = s;
                s.push(last);
                s
            } else if c.use_flow_sigmas {
                let shift = c.flow_shift;
                let mut s: Vec<f64> = np_linspace(1.0, 1.0 / t_train as f64, n + 1)
                    .into_iter()
                    .map(|a| {
                        let v = 1.0 - a;
                        shift * v / (1.0 + (shift - 1.0) * v)
                    })
                    .collect();
                s.reverse();
                s.pop();
                ts = s.iter().map(|v| v * t_train as f64).collect();
                let last = s.last().copied().unwrap_or(0.0);
                s.push(last);
                s
            } else {
                let mut s = np_interp(&ts, &train);
                let a0 = self.state.alphas_cumprod[0];
                s.push(f64::from(((1.0 - a0) / a0).sqrt()));
                s
            };
        if sig.is_empty() {
            sig.push(0.0);
        }
        self.state.sigmas = sig.into_iter().map(|s| s as f32).collect();
        self.state.timesteps = ts.into_iter().map(|t| (t as i64) as f64).collect();
        self.state.num_inference_steps = Some(self.state.timesteps.len());
        self.model_outputs = ModelOutputs::new(CLASS, c.solver_order);
        self.lower_order_nums = 0;
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One DEIS step.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        _options: &StepOptions,
        _generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.state.dpm_step_index(CLASS, timestep)?;
        let len = self.state.timesteps.len();
        let c = &self.config;
        let lower_order_final = i + 1 == len && c.lower_order_final && len < 15;
        let lower_order_second = i + 2 == len && c.lower_order_final && len < 15;
        let dims = sample.dims();
        let m = self
            .convert(model_output, sample.clone(), i)?
            .flatten::<1>(0, D - 1);
        self.model_outputs.push(m.clone());
        let x = sample.flatten::<1>(0, D - 1);
        let order = c.solver_order;
        let (alpha_t, sigma_t) = self.alpha_sigma_at(i + 1)?;
        let (alpha_s0, sigma_s0) = self.alpha_sigma_at(i)?;
        let ln = numpy_log_f32;
        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
            x.mul_scalar(alpha_t / alpha_s0) - m.mul_scalar(sigma_t * (h.exp() - 1.0))
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            let (alpha_s1, sigma_s1) = self.alpha_sigma_at(i - 1)?;
            let (rho_t, rho_s0, rho_s1) =
                (sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1);
            let ind = |t: f32, b: f32, c: f32| t * (-ln(c) + ln(t) - 1.0) / (ln(b) - ln(c));
            let coef1 = ind(rho_t, rho_s0, rho_s1) - ind(rho_s0, rho_s0, rho_s1);
            let coef2 = ind(rho_t, rho_s1, rho_s0) - ind(rho_s0, rho_s1, rho_s0);
            (x.div_scalar(alpha_s0)
                + m.mul_scalar(coef1)
                + self.model_outputs.back(1)?.mul_scalar(coef2))
            .mul_scalar(alpha_t)
        } else {
            let (alpha_s1, sigma_s1) = self.alpha_sigma_at(i - 1)?;
            let (alpha_s2, sigma_s2) = self.alpha_sigma_at(i - 2)?;
            let (rho_t, rho_s0, rho_s1, rho_s2) = (
                sigma_t / alpha_t,
                sigma_s0 / alpha_s0,
                sigma_s1 / alpha_s1,
                sigma_s2 / alpha_s2,
            );
            let ind = |t: f32, b: f32, c: f32, d: f32| {
                let num = t
                    * (ln(c) * (ln(d) - ln(t) + 1.0) - ln(d) * ln(t) + ln(d) + ln(t) * ln(t)
                        - 2.0 * ln(t)
                        + 2.0);
                let den = (ln(b) - ln(c)) * (ln(b) - ln(d));
                num / den
            };
            let coef1 = ind(rho_t, rho_s0, rho_s1, rho_s2) - ind(rho_s0, rho_s0, rho_s1, rho_s2);
            let coef2 = ind(rho_t, rho_s1, rho_s2, rho_s0) - ind(rho_s0, rho_s1, rho_s2, rho_s0);
            let coef3 = ind(rho_t, rho_s2, rho_s0, rho_s1) - ind(rho_s0, rho_s2, rho_s0, rho_s1);
            (x.div_scalar(alpha_s0)
                + m.mul_scalar(coef1)
                + self.model_outputs.back(1)?.mul_scalar(coef2)
                + self.model_outputs.back(2)?.mul_scalar(coef3))
            .mul_scalar(alpha_t)
        };
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev.reshape(dims),
            pred_original_sample: None,
        })
    }
}

impl DEISMultistepScheduler {
    fn alpha_sigma_at(&self, i: usize) -> Result<(f32, f32), SchedulerError> {
        Ok(alpha_sigma(
            self.state.sigma_at(i)?,
            self.config.use_flow_sigmas,
        ))
    }

    /// `convert_model_output`: ε recovered from the x0 prediction.
    fn convert<const D: usize>(
        &self,
        model_output: Tensor<D>,
        sample: Tensor<D>,
        i: usize,
    ) -> Result<Tensor<D>, SchedulerError> {
        let c = &self.config;
        let sigma = self.state.sigma_at(i)?;
        let thresholding = Thresholding::when(
            c.thresholding,
            c.dynamic_thresholding_ratio,
            c.sample_max_value,
        );
        let x0 = convert_model_output(
            model_output,
            sample.clone(),
            sigma,
            c.use_flow_sigmas,
            self.prediction,
            true,
            thresholding,
        )?;
        let (alpha_t, sigma_t) = alpha_sigma(sigma, c.use_flow_sigmas);
        Ok((sample - x0.mul_scalar(alpha_t)).div_scalar(sigma_t))
    }
}
