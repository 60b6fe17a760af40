//! `DPMSolverMultistepScheduler`: DPM-Solver and DPM-Solver++ (1st to 3rd order multistep,
//! midpoint or Heun, ODE or SDE variants), the most used SD sampler ("DPM++ 2M (Karras)").

use crate::array_math::{np_arange, np_linspace, np_round};
use crate::betas::train_sigmas;
use crate::dpm_family::{
    ModelOutputs, Thresholding, alpha_sigma, convert_model_output_in, lambda, lambda_table,
    without_learned_variance,
};
use crate::interpolation::{np_interp, sigma_to_t};
use crate::precision::{mul_left, round_tensor};
use crate::prediction::Prediction;
use crate::random::noise_like;
use crate::sigma_schedules::{check_sigma_flags, exponential_sigmas, karras_sigmas};
use crate::timestep_spacing::Spacing;
use crate::unsupported;
use crate::{
    NoiseDtype, NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState,
    StepIndex, StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::DPMSolverMultistepSchedulerConfig;

const CLASS: &str = "DPMSolverMultistepScheduler";

/// The solver family (`algorithm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// `dpmsolver` (noise prediction, deprecated in diffusers).
    DpmSolver,
    /// `dpmsolver++` (data prediction).
    DpmSolverPP,
    /// `sde-dpmsolver` (deprecated in diffusers).
    SdeDpmSolver,
    /// `sde-dpmsolver++`.
    SdeDpmSolverPP,
}

impl Algorithm {
    fn is_pp(self) -> bool {
        matches!(self, Algorithm::DpmSolverPP | Algorithm::SdeDpmSolverPP)
    }
    fn is_sde(self) -> bool {
        matches!(self, Algorithm::SdeDpmSolver | Algorithm::SdeDpmSolverPP)
    }
}

/// diffusers' `DPMSolverMultistepScheduler`.
#[derive(Debug, Clone)]
pub struct DPMSolverMultistepScheduler {
    config: DPMSolverMultistepSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    algorithm: Algorithm,
    heun: bool,
    state: SchedulerState,
    lambda_t: Vec<f32>,
    model_outputs: ModelOutputs,
    lower_order_nums: usize,
}

impl SchedulerMixin for DPMSolverMultistepScheduler {
    type Config = DPMSolverMultistepSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(mut config: DPMSolverMultistepSchedulerConfig) -> Result<Self, SchedulerError> {
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
        // diffusers rewrites the config for DEIS / UniPC names of compatible classes.
        if config.algorithm_type == "deis" {
            config.algorithm_type = "dpmsolver++".into();
        }
        if matches!(config.solver_type.as_str(), "logrho" | "bh1" | "bh2") {
            config.solver_type = "midpoint".into();
        }
        let algorithm = match config.algorithm_type.as_str() {
            "dpmsolver" => Algorithm::DpmSolver,
            "dpmsolver++" => Algorithm::DpmSolverPP,
            "sde-dpmsolver" => Algorithm::SdeDpmSolver,
            "sde-dpmsolver++" => Algorithm::SdeDpmSolverPP,
            other => return Err(unsupported(CLASS, "algorithm_type", other)),
        };
        let heun = match config.solver_type.as_str() {
            "midpoint" => false,
            "heun" => true,
            other => return Err(unsupported(CLASS, "solver_type", other)),
        };
        if prediction == Prediction::Flow && !algorithm.is_pp() {
            return Err(unsupported(CLASS, "prediction_type", "flow_prediction"));
        }
        if !algorithm.is_pp() && config.final_sigmas_type == "zero" {
            return Err(SchedulerError::InvalidConfig {
                class: CLASS,
                message: format!(
                    "`final_sigmas_type` zero is not supported for `algorithm_type` {}; use \
                     `sigma_min`",
                    config.algorithm_type
                ),
            });
        }
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(unsupported(
                CLASS,
                "final_sigmas_type",
                &config.final_sigmas_type,
            ));
        }
        if let Some(v) = &config.variance_type
            && !matches!(v.as_str(), "learned" | "learned_range")
        {
            return Err(unsupported(CLASS, "variance_type", v));
        }
        if config.use_dynamic_shifting && config.time_shift_type != "exponential" {
            return Err(unsupported(
                CLASS,
                "time_shift_type",
                &config.time_shift_type,
            ));
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
            config.rescale_betas_zero_snr,
        )?;
        let lambda_t = lambda_table(&ac);
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
            algorithm,
            heun,
            lambda_t,
            model_outputs: ModelOutputs::new(CLASS, order),
            lower_order_nums: 0,
            state: SchedulerState::new(kind, timesteps, sigmas, ac),
        })
    }

    /// `set_timesteps(num_inference_steps | timesteps, mu)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} takes no custom sigmas"
            )));
        }
        request.check_exclusive(CLASS)?;
        if let Some(mu) = request.mu {
            if !self.config.use_dynamic_shifting {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{CLASS}: `mu` needs use_dynamic_shifting"
                )));
            }
            self.config.flow_shift = mu.exp();
        }
        let c = &self.config;
        if request.timesteps.is_some()
            && (c.use_karras_sigmas
                || c.use_lu_lambdas
                || c.use_exponential_sigmas
                || c.use_beta_sigmas)
        {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: custom timesteps cannot be used with karras / lu / exponential sigmas"
            )));
        }
        let t_train = c.num_train_timesteps;
        let mut ts: Vec<f64> = if let Some(custom) = &request.timesteps {
            custom.iter().map(|t| (*t as i64) as f64).collect()
        } else {
            let n = request.resolved_steps(CLASS)?;
            // searchsorted(flip(lambda_t), lambda_min_clipped): entries below the clip.
            let clipped = self
                .lambda_t
                .iter()
                .filter(|l| f64::from(**l) < c.lambda_min_clipped)
                .count();
            let last = t_train.saturating_sub(clipped);
            match self.spacing {
                Spacing::Linspace => {
                    let mut v: Vec<f64> = np_linspace(0.0, last as f64 - 1.0, n + 1)
                        .into_iter()
                        .map(np_round)
                        .collect();
                    v.reverse();
                    v.pop();
                    v
                }
                Spacing::Leading => {
                    let ratio = last / (n + 1);
                    let mut v: Vec<f64> = (0..=n).map(|i| (i * ratio) as f64).collect();
                    v.reverse();
                    v.pop();
                    v.into_iter().map(|t| t + c.steps_offset as f64).collect()
                }
                Spacing::Trailing => {
                    let ratio = t_train as f64 / n as f64;
                    np_arange(last as f64, 0.0, -ratio)
                        .into_iter()
                        .map(|x| np_round(x) - 1.0)
                        .collect()
                }
            }
        };
        let n = ts.len();
        let train = train_sigmas(&self.state.alphas_cumprod);
        let log_sigmas: Vec<f32> = train
            .iter()
            .map(|s| crate::float_kernels::numpy_log_f32(*s))
            .collect();
        let round_ts = c.beta_schedule != "squaredcos_cap_v2";
        let (sigma_min, sigma_max) = (f64::from(train[0]), f64::from(train[train.len() - 1]));
        let mut sig: Vec<f64> = if c.use_karras_sigmas {
            let s = karras_sigmas(sigma_min, sigma_max, n, 7.0);
            ts = s
                .iter()
                .map(|v| {
                    let t = sigma_to_t(*v, &log_sigmas);
                    if round_ts { np_round(t) } else { t }
                })
                .collect();
            s
        } else if c.use_lu_lambdas {
            let lambda_min = f64::from(log_sigmas[0]);
            let lambda_max = f64::from(log_sigmas[log_sigmas.len() - 1]);
            let lambdas: Vec<f64> = np_linspace(0.0, 1.0, n)
                .into_iter()
                .map(|r| lambda_max + r * (lambda_min - lambda_max))
                .collect();
            let s: Vec<f64> = lambdas.into_iter().map(f64::exp).collect();
            ts = s
                .iter()
                .map(|v| {
                    let t = sigma_to_t(*v, &log_sigmas);
                    if round_ts { np_round(t) } else { t }
                })
                .collect();
            s
        } else if c.use_exponential_sigmas {
            let s = exponential_sigmas(sigma_min, sigma_max, n);
            ts = s.iter().map(|v| sigma_to_t(*v, &log_sigmas)).collect();
            s
        } else if c.use_beta_sigmas {
            let s = crate::sigma_schedules::beta_sigmas(sigma_min, sigma_max, n);
            ts = s.iter().map(|v| sigma_to_t(*v, &log_sigmas)).collect();
            s
        } else if c.use_flow_sigmas {
            let shift = c.flow_shift;
            let alphas = np_linspace(1.0, 1.0 / t_train as f64, n + 1);
            let mut s: Vec<f64> = alphas
                .into_iter()
                .map(|a| {
                    let s = 1.0 - a;
                    shift * s / (1.0 + (shift - 1.0) * s)
                })
                .collect();
            s.reverse();
            s.pop();
            ts = s.iter().map(|v| v * t_train as f64).collect();
            s
        } else {
            np_interp(&ts, &train)
        };
        let last = if c.final_sigmas_type == "sigma_min" {
            let a0 = self.state.alphas_cumprod[0];
            f64::from(((1.0 - a0) / a0).sqrt())
        } else {
            0.0
        };
        sig.push(last);
        // `.to(torch.int64)` truncates.
        self.state.timesteps = ts.into_iter().map(|t| (t as i64) as f64).collect();
        self.state.sigmas = sig.into_iter().map(|s| s as f32).collect();
        self.state.num_inference_steps = Some(self.state.timesteps.len());
        self.model_outputs = ModelOutputs::new(CLASS, c.solver_order);
        self.lower_order_nums = 0;
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One multistep DPM-Solver step.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.state.dpm_step_index(CLASS, timestep)?;
        let c = &self.config;
        let len = self.state.timesteps.len();
        let lower_order_final = i + 1 == len
            && (c.euler_at_final
                || (c.lower_order_final && len < 15)
                || c.final_sigmas_type == "zero");
        let lower_order_second = i + 2 == len && c.lower_order_final && len < 15;
        let dims = sample.dims();
        // The dtype of `model_output` (the pipeline's model dtype): the conversion runs in it,
        // the update in float32, and the result is cast back to it.
        let half = options.noise_dtype;
        let converted = self.convert(model_output, sample.clone(), i, half)?;
        let out_dims = converted.dims();
        let m = converted.flatten::<1>(0, D - 1);
        self.model_outputs.push(m.clone());
        let x = sample.flatten::<1>(0, D - 1);
        let noise = if self.algorithm.is_sde() {
            let like = Tensor::<D>::zeros(out_dims, &x.device());
            // diffusers draws the SDE noise in float32 whatever the model dtype.
            Some(noise_like(&like, generator, NoiseDtype::Float32)?.flatten::<1>(0, D - 1))
        } else {
            None
        };
        let order = c.solver_order;
        let prev = if order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(m, x, noise, i, half)?
        } else if order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(x, noise, i, half)?
        } else {
            self.third_order(x, noise, i, half)?
        };
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: round_tensor(prev, half).reshape(dims),
            pred_original_sample: None,
        })
    }
}

impl DPMSolverMultistepScheduler {
    /// `convert_model_output`: x0 for the ++ algorithms, ε otherwise.
    fn convert<const D: usize>(
        &self,
        model_output: Tensor<D>,
        sample: Tensor<D>,
        i: usize,
        half: NoiseDtype,
    ) -> Result<Tensor<D>, SchedulerError> {
        let c = &self.config;
        // With a learned variance the model output carries it in the extra channels.
        let model_output =
            without_learned_variance(model_output, c.variance_type.is_some(), self.prediction);
        let thresholding = Thresholding::when(
            c.thresholding,
            c.dynamic_thresholding_ratio,
            c.sample_max_value,
        );
        convert_model_output_in(
            model_output,
            sample,
            self.state.sigma_at(i)?,
            c.use_flow_sigmas,
            self.prediction,
            self.algorithm.is_pp(),
            thresholding,
            half,
        )
    }

    fn alpha_sigma_lambda(&self, i: usize) -> Result<(f32, f32, f32), SchedulerError> {
        let (a, s) = alpha_sigma(self.state.sigma_at(i)?, self.config.use_flow_sigmas);
        Ok((a, s, lambda(a, s)))
    }

    fn first_order(
        &self,
        m0: Tensor<1>,
        x: Tensor<1>,
        noise: Option<Tensor<1>>,
        i: usize,
        half: NoiseDtype,
    ) -> Result<Tensor<1>, SchedulerError> {
        // diffusers upcasts the sample to float32, but the converted model outputs stay in the
        // model dtype: their differences and their products with the 0-d float32 coefficients
        // (on the left, so rounded to the dtype first) are rounded to it before they meet the
        // float32 sample.
        let p = |t: Tensor<1>, c: f32| mul_left(c, t, half);
        let (alpha_t, sigma_t, lambda_t) = self.alpha_sigma_lambda(i + 1)?;
        let (alpha_s, sigma_s, lambda_s) = self.alpha_sigma_lambda(i)?;
        let h = lambda_t - lambda_s;
        Ok(match (self.algorithm, noise) {
            (Algorithm::DpmSolverPP, _) => {
                x.mul_scalar(sigma_t / sigma_s) - p(m0, alpha_t * ((-h).exp() - 1.0))
            }
            (Algorithm::DpmSolver, _) => {
                x.mul_scalar(alpha_t / alpha_s) - p(m0, sigma_t * (h.exp() - 1.0))
            }
            (Algorithm::SdeDpmSolverPP, Some(z)) => {
                x.mul_scalar(sigma_t / sigma_s * (-h).exp())
                    + p(m0, alpha_t * (1.0 - (-2.0 * h).exp()))
                    + z.mul_scalar(sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())
            }
            (Algorithm::SdeDpmSolver, Some(z)) => {
                x.mul_scalar(alpha_t / alpha_s) - p(m0, 2.0 * (sigma_t * (h.exp() - 1.0)))
                    + z.mul_scalar(sigma_t * ((2.0 * h).exp() - 1.0).sqrt())
            }
            _ => {
                return Err(SchedulerError::InvalidArgument(
                    "SDE step without noise".into(),
                ));
            }
        })
    }

    fn second_order(
        &self,
        x: Tensor<1>,
        noise: Option<Tensor<1>>,
        i: usize,
        half: NoiseDtype,
    ) -> Result<Tensor<1>, SchedulerError> {
        // diffusers upcasts the sample to float32, but the converted model outputs stay in the
        // model dtype: their differences and their products with the 0-d float32 coefficients
        // (on the left, so rounded to the dtype first) are rounded to it before they meet the
        // float32 sample.
        let r = |t: Tensor<1>| round_tensor(t, half);
        let p = |t: Tensor<1>, c: f32| mul_left(c, t, half);
        let (alpha_t, sigma_t, lambda_t) = self.alpha_sigma_lambda(i + 1)?;
        let (alpha_s0, sigma_s0, lambda_s0) = self.alpha_sigma_lambda(i)?;
        let (_, _, lambda_s1) = self.alpha_sigma_lambda(i.checked_sub(1).ok_or(
            SchedulerError::InvalidArgument(format!("{CLASS}: second order at step 0")),
        )?)?;
        let m0 = self.model_outputs.back(0)?;
        let m1 = self.model_outputs.back(1)?;
        let h = lambda_t - lambda_s0;
        let h0 = lambda_s0 - lambda_s1;
        let r0 = h0 / h;
        let d0 = m0.clone();
        let d1 = p(r(m0 - m1), 1.0 / r0);
        let e = (-h).exp() - 1.0;
        Ok(match (self.algorithm, self.heun, noise) {
            (Algorithm::DpmSolverPP, false, _) => {
                x.mul_scalar(sigma_t / sigma_s0) - p(d0, alpha_t * e) - p(d1, 0.5 * (alpha_t * e))
            }
            (Algorithm::DpmSolverPP, true, _) => {
                x.mul_scalar(sigma_t / sigma_s0) - p(d0, alpha_t * e)
                    + p(d1, alpha_t * (e / h + 1.0))
            }
            (Algorithm::DpmSolver, heun, _) => {
                let eh = h.exp() - 1.0;
                let base = x.mul_scalar(alpha_t / alpha_s0) - p(d0, sigma_t * eh);
                if heun {
                    base - p(d1, sigma_t * (eh / h - 1.0))
                } else {
                    base - p(d1, 0.5 * (sigma_t * eh))
                }
            }
            (Algorithm::SdeDpmSolverPP, heun, Some(z)) => {
                let e2 = 1.0 - (-2.0 * h).exp();
                let base = x.mul_scalar(sigma_t / sigma_s0 * (-h).exp()) + p(d0, alpha_t * e2);
                let d1_term = if heun {
                    p(d1, alpha_t * (e2 / (-2.0 * h) + 1.0))
                } else {
                    p(d1, 0.5 * (alpha_t * e2))
                };
                base + d1_term + z.mul_scalar(sigma_t * e2.sqrt())
            }
            (Algorithm::SdeDpmSolver, heun, Some(z)) => {
                let eh = h.exp() - 1.0;
                let base = x.mul_scalar(alpha_t / alpha_s0) - p(d0, 2.0 * (sigma_t * eh));
                let d1_term = if heun {
                    p(d1, 2.0 * (sigma_t * (eh / h - 1.0)))
                } else {
                    p(d1, sigma_t * eh)
                };
                base - d1_term + z.mul_scalar(sigma_t * ((2.0 * h).exp() - 1.0).sqrt())
            }
            _ => {
                return Err(SchedulerError::InvalidArgument(
                    "SDE step without noise".into(),
                ));
            }
        })
    }

    fn third_order(
        &self,
        x: Tensor<1>,
        noise: Option<Tensor<1>>,
        i: usize,
        half: NoiseDtype,
    ) -> Result<Tensor<1>, SchedulerError> {
        // diffusers upcasts the sample to float32, but the converted model outputs stay in the
        // model dtype: their differences and their products with the 0-d float32 coefficients
        // (on the left, so rounded to the dtype first) are rounded to it before they meet the
        // float32 sample.
        let r = |t: Tensor<1>| round_tensor(t, half);
        let p = |t: Tensor<1>, c: f32| mul_left(c, t, half);
        let too_early =
            || SchedulerError::InvalidArgument(format!("{CLASS}: third order too early"));
        let (alpha_t, sigma_t, lambda_t) = self.alpha_sigma_lambda(i + 1)?;
        let (alpha_s0, sigma_s0, lambda_s0) = self.alpha_sigma_lambda(i)?;
        let (_, _, lambda_s1) = self.alpha_sigma_lambda(i.checked_sub(1).ok_or_else(too_early)?)?;
        let (_, _, lambda_s2) = self.alpha_sigma_lambda(i.checked_sub(2).ok_or_else(too_early)?)?;
        let (m0, m1, m2) = (
            self.model_outputs.back(0)?,
            self.model_outputs.back(1)?,
            self.model_outputs.back(2)?,
        );
        let h = lambda_t - lambda_s0;
        let h0 = lambda_s0 - lambda_s1;
        let h1 = lambda_s1 - lambda_s2;
        let (r0, r1) = (h0 / h, h1 / h);
        let d0 = m0.clone();
        let d1_0 = p(r(m0 - m1.clone()), 1.0 / r0);
        let d1_1 = p(r(m1 - m2), 1.0 / r1);
        let d1 = r(d1_0.clone() + p(r(d1_0.clone() - d1_1.clone()), r0 / (r0 + r1)));
        let d2 = p(r(d1_0 - d1_1), 1.0 / (r0 + r1));
        Ok(match (self.algorithm, noise) {
            (Algorithm::DpmSolverPP, _) => {
                let e = (-h).exp() - 1.0;
                x.mul_scalar(sigma_t / sigma_s0) - p(d0, alpha_t * e)
                    + p(d1, alpha_t * (e / h + 1.0))
                    - p(d2, alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))
            }
            (Algorithm::DpmSolver, _) => {
                let e = h.exp() - 1.0;
                x.mul_scalar(alpha_t / alpha_s0)
                    - p(d0, sigma_t * e)
                    - p(d1, sigma_t * (e / h - 1.0))
                    - p(d2, sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5))
            }
            (Algorithm::SdeDpmSolverPP, Some(z)) => {
                let e2 = 1.0 - (-2.0 * h).exp();
                x.mul_scalar(sigma_t / sigma_s0 * (-h).exp())
                    + p(d0, alpha_t * e2)
                    + p(d1, alpha_t * (e2 / (-2.0 * h) + 1.0))
                    + p(
                        d2,
                        alpha_t * ((e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5),
                    )
                    + z.mul_scalar(sigma_t * e2.sqrt())
            }
            _ => {
                return Err(unsupported(
                    CLASS,
                    "algorithm_type",
                    "sde-dpmsolver (third order)",
                ));
            }
        })
    }
}
