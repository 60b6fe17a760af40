//! `DPMSolverSinglestepScheduler`: DPM-Solver(++) in singlestep form (each order-k update
//! starts again from the anchor sample of its first stage, following an order list).

use crate::array_math::{np_linspace, np_round};
use crate::betas::train_sigmas;
use crate::dpm_family::{
    ModelOutputs, Thresholding, alpha_sigma, convert_model_output, lambda, lambda_table,
    without_learned_variance,
};
use crate::dpmsolver_multistep::Algorithm;
use crate::float_kernels::numpy_log_f32;
use crate::interpolation::{np_interp, sigma_to_t};
use crate::prediction::Prediction;
use crate::random::noise_like;
use crate::sigma_schedules::{check_sigma_flags, exponential_sigmas, karras_sigmas};
use crate::unsupported;
use crate::{
    NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState, StepIndex,
    StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::DPMSolverSinglestepSchedulerConfig;

const CLASS: &str = "DPMSolverSinglestepScheduler";

/// diffusers' `DPMSolverSinglestepScheduler`.
#[derive(Debug, Clone)]
pub struct DPMSolverSinglestepScheduler {
    config: DPMSolverSinglestepSchedulerConfig,
    prediction: Prediction,
    algorithm: Algorithm,
    heun: bool,
    state: SchedulerState,
    lambda_t: Vec<f32>,
    order_list: Vec<usize>,
    model_outputs: ModelOutputs,
    anchor: Option<Tensor<1>>,
}

impl SchedulerMixin for DPMSolverSinglestepScheduler {
    type Config = DPMSolverSinglestepSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(mut config: DPMSolverSinglestepSchedulerConfig) -> Result<Self, SchedulerError> {
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
        check_sigma_flags(
            CLASS,
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        if config.algorithm_type == "deis" {
            config.algorithm_type = "dpmsolver++".into();
        }
        if matches!(config.solver_type.as_str(), "logrho" | "bh1" | "bh2") {
            config.solver_type = "midpoint".into();
        }
        let algorithm = match config.algorithm_type.as_str() {
            "dpmsolver" => Algorithm::DpmSolver,
            "dpmsolver++" => Algorithm::DpmSolverPP,
            "sde-dpmsolver++" => Algorithm::SdeDpmSolverPP,
            other => return Err(unsupported(CLASS, "algorithm_type", other)),
        };
        let heun = match config.solver_type.as_str() {
            "midpoint" => false,
            "heun" => true,
            other => return Err(unsupported(CLASS, "solver_type", other)),
        };
        if algorithm == Algorithm::DpmSolver && config.final_sigmas_type == "zero" {
            return Err(SchedulerError::InvalidConfig {
                class: CLASS,
                message:
                    "`final_sigmas_type` zero is not supported for `algorithm_type` dpmsolver; \
                          use `sigma_min`"
                        .into(),
            });
        }
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(unsupported(
                CLASS,
                "final_sigmas_type",
                &config.final_sigmas_type,
            ));
        }
        if config.solver_order == 0 || config.solver_order > 3 {
            return Err(unsupported(
                CLASS,
                "solver_order",
                &config.solver_order.to_string(),
            ));
        }
        if let Some(v) = &config.variance_type
            && !matches!(v.as_str(), "learned" | "learned_range")
        {
            return Err(unsupported(CLASS, "variance_type", v));
        }
        let ac = crate::betas::alphas_cumprod_zero_snr(
            CLASS,
            &crate::betas::beta_config!(config),
            false,
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
            algorithm,
            heun,
            lambda_t,
            order_list: Vec::new(),
            model_outputs: ModelOutputs::new(CLASS, order),
            anchor: None,
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
            && (c.use_karras_sigmas || c.use_exponential_sigmas || c.use_beta_sigmas)
        {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: custom timesteps cannot be used with karras / exponential sigmas"
            )));
        }
        let n = request.resolved_steps(CLASS)?;
        let t_train = c.num_train_timesteps;
        let mut ts: Vec<f64> = match &request.timesteps {
            Some(custom) => custom.iter().map(|t| (*t as i64) as f64).collect(),
            None => {
                let clipped = self
                    .lambda_t
                    .iter()
                    .filter(|l| f64::from(**l) < c.lambda_min_clipped)
                    .count();
                let mut v: Vec<f64> = np_linspace(0.0, (t_train - 1 - clipped) as f64, n + 1)
                    .into_iter()
                    .map(np_round)
                    .collect();
                v.reverse();
                v.pop();
                v
            }
        };
        let train = train_sigmas(&self.state.alphas_cumprod);
        let log_sigmas: Vec<f32> = train.iter().map(|s| numpy_log_f32(*s)).collect();
        let (smin, smax) = (f64::from(train[0]), f64::from(train[train.len() - 1]));
        let mut sig: Vec<f64> = if c.use_karras_sigmas {
            let s = karras_sigmas(smin, smax, n, 7.0);
            ts = s
                .iter()
                .map(|v| np_round(sigma_to_t(*v, &log_sigmas)))
                .collect();
            s
        } else if c.use_exponential_sigmas {
            let s = exponential_sigmas(smin, smax, n);
            ts = s.iter().map(|v| sigma_to_t(*v, &log_sigmas)).collect();
            s
        } else if c.use_beta_sigmas {
            let s = crate::sigma_schedules::beta_sigmas(smin, smax, n);
            ts = s.iter().map(|v| sigma_to_t(*v, &log_sigmas)).collect();
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
        self.state.sigmas = sig.into_iter().map(|s| s as f32).collect();
        self.state.timesteps = ts.into_iter().map(|t| (t as i64) as f64).collect();
        self.model_outputs = ModelOutputs::new(CLASS, c.solver_order);
        self.anchor = None;
        // diffusers rewrites its config here.
        if !self.config.lower_order_final
            && (!n.is_multiple_of(self.config.solver_order)
                || self.config.final_sigmas_type == "zero")
        {
            self.config.lower_order_final = true;
        }
        self.order_list = self.order_list(n);
        self.state.num_inference_steps = Some(n);
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One singlestep DPM-Solver step.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.state.dpm_step_index(CLASS, timestep)?;
        let dims = sample.dims();
        let converted = self.convert(model_output, sample.clone(), i)?;
        let out_dims = converted.dims();
        self.model_outputs.push(converted.flatten::<1>(0, D - 1));
        let x = sample.flatten::<1>(0, D - 1);
        let noise = if self.algorithm == Algorithm::SdeDpmSolverPP {
            let like = Tensor::<D>::zeros(out_dims, &x.device());
            Some(noise_like(&like, generator, options.noise_dtype)?.flatten::<1>(0, D - 1))
        } else {
            None
        };
        let mut order = self.order_list.get(i).copied().unwrap_or(1);
        while order > 1 && self.model_outputs.is_missing(order - 1) {
            order -= 1;
        }
        if order == 1 {
            self.anchor = Some(x);
        }
        let anchor = self
            .anchor
            .clone()
            .ok_or(SchedulerError::NotInitialised(CLASS))?;
        let prev = self.update(anchor, noise, i, order)?;
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev.reshape(dims),
            pred_original_sample: None,
        })
    }
}

impl DPMSolverSinglestepScheduler {
    /// `get_order_list`: the solver order of every step.
    pub fn order_list(&self, steps: usize) -> Vec<usize> {
        let order = self.config.solver_order;
        let rep = |pattern: &[usize], times: usize| -> Vec<usize> {
            pattern
                .iter()
                .copied()
                .cycle()
                .take(pattern.len() * times)
                .collect()
        };
        let mut orders: Vec<usize> = if self.config.lower_order_final {
            match order {
                3 => match steps % 3 {
                    0 => [
                        rep(&[1, 2, 3], (steps / 3).saturating_sub(1)),
                        vec![1, 2, 1],
                    ]
                    .concat(),
                    1 => [rep(&[1, 2, 3], steps / 3), vec![1]].concat(),
                    _ => [rep(&[1, 2, 3], steps / 3), vec![1, 2]].concat(),
                },
                2 => {
                    if steps.is_multiple_of(2) {
                        [rep(&[1, 2], (steps / 2).saturating_sub(1)), vec![1, 1]].concat()
                    } else {
                        [rep(&[1, 2], steps / 2), vec![1]].concat()
                    }
                }
                _ => vec![1; steps],
            }
        } else {
            match order {
                3 => rep(&[1, 2, 3], steps / 3),
                2 => rep(&[1, 2], steps / 2),
                _ => vec![1; steps],
            }
        };
        if self.config.final_sigmas_type == "zero"
            && let Some(last) = orders.last_mut()
        {
            *last = 1;
        }
        orders
    }

    fn asl(&self, i: usize) -> Result<(f32, f32, f32), SchedulerError> {
        let (a, s) = alpha_sigma(self.state.sigma_at(i)?, self.config.use_flow_sigmas);
        Ok((a, s, lambda(a, s)))
    }

    /// `convert_model_output`: x0 for the ++ algorithms, ε for `dpmsolver`.
    fn convert<const D: usize>(
        &self,
        model_output: Tensor<D>,
        sample: Tensor<D>,
        i: usize,
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
        convert_model_output(
            model_output,
            sample,
            self.state.sigma_at(i)?,
            c.use_flow_sigmas,
            self.prediction,
            self.algorithm != Algorithm::DpmSolver,
            thresholding,
        )
    }

    fn update(
        &self,
        x: Tensor<1>,
        noise: Option<Tensor<1>>,
        i: usize,
        order: usize,
    ) -> Result<Tensor<1>, SchedulerError> {
        let early =
            || SchedulerError::InvalidArgument(format!("{CLASS}: order too high this early"));
        let (alpha_t, sigma_t, lambda_t) = self.asl(i + 1)?;
        let pp = self.algorithm != Algorithm::DpmSolver;
        let sde = self.algorithm == Algorithm::SdeDpmSolverPP;
        let noise_term = |z: Option<Tensor<1>>,
                          h: f32|
         -> Result<Option<Tensor<1>>, SchedulerError> {
            if !sde {
                return Ok(None);
            }
            let z =
                z.ok_or_else(|| SchedulerError::InvalidArgument("SDE step without noise".into()))?;
            Ok(Some(
                z.mul_scalar(sigma_t * (1.0 - (-2.0 * h).exp()).sqrt()),
            ))
        };
        let add = |t: Tensor<1>, n: Option<Tensor<1>>| match n {
            Some(n) => t + n,
            None => t,
        };
        match order {
            1 => {
                let (alpha_s, sigma_s, lambda_s) = self.asl(i)?;
                let h = lambda_t - lambda_s;
                let m0 = self.model_outputs.back(0)?;
                Ok(if sde {
                    add(
                        x.mul_scalar(sigma_t / sigma_s * (-h).exp())
                            + m0.mul_scalar(alpha_t * (1.0 - (-2.0 * h).exp())),
                        noise_term(noise, h)?,
                    )
                } else if pp {
                    x.mul_scalar(sigma_t / sigma_s) - m0.mul_scalar(alpha_t * ((-h).exp() - 1.0))
                } else {
                    x.mul_scalar(alpha_t / alpha_s) - m0.mul_scalar(sigma_t * (h.exp() - 1.0))
                })
            }
            2 => {
                let (_, _, lambda_s0) = self.asl(i)?;
                let (alpha_s1, sigma_s1, lambda_s1) =
                    self.asl(i.checked_sub(1).ok_or_else(early)?)?;
                let (m0, m1) = (self.model_outputs.back(0)?, self.model_outputs.back(1)?);
                let h = lambda_t - lambda_s1;
                let r0 = (lambda_s0 - lambda_s1) / h;
                let d0 = m1.clone();
                let d1 = (m0 - m1).mul_scalar(1.0 / r0);
                Ok(if sde {
                    let e2 = 1.0 - (-2.0 * h).exp();
                    let d1c = if self.heun {
                        alpha_t * (e2 / (-2.0 * h) + 1.0)
                    } else {
                        0.5 * (alpha_t * e2)
                    };
                    add(
                        x.mul_scalar(sigma_t / sigma_s1 * (-h).exp())
                            + d0.mul_scalar(alpha_t * e2)
                            + d1.mul_scalar(d1c),
                        noise_term(noise, h)?,
                    )
                } else if pp {
                    let e = (-h).exp() - 1.0;
                    let base = x.mul_scalar(sigma_t / sigma_s1) - d0.mul_scalar(alpha_t * e);
                    if self.heun {
                        base + d1.mul_scalar(alpha_t * (e / h + 1.0))
                    } else {
                        base - d1.mul_scalar(0.5 * (alpha_t * e))
                    }
                } else {
                    let e = h.exp() - 1.0;
                    let base = x.mul_scalar(alpha_t / alpha_s1) - d0.mul_scalar(sigma_t * e);
                    if self.heun {
                        base - d1.mul_scalar(sigma_t * (e / h - 1.0))
                    } else {
                        base - d1.mul_scalar(0.5 * (sigma_t * e))
                    }
                })
            }
            _ => {
                let (_, _, lambda_s0) = self.asl(i)?;
                let (_, _, lambda_s1) = self.asl(i.checked_sub(1).ok_or_else(early)?)?;
                let (alpha_s2, sigma_s2, lambda_s2) =
                    self.asl(i.checked_sub(2).ok_or_else(early)?)?;
                let (m0, m1, m2) = (
                    self.model_outputs.back(0)?,
                    self.model_outputs.back(1)?,
                    self.model_outputs.back(2)?,
                );
                let h = lambda_t - lambda_s2;
                let (r0, r1) = ((lambda_s0 - lambda_s2) / h, (lambda_s1 - lambda_s2) / h);
                let d0 = m2.clone();
                let d1_0 = (m1 - m2.clone()).mul_scalar(1.0 / r1);
                let d1_1 = (m0 - m2).mul_scalar(1.0 / r0);
                let d1 =
                    (d1_0.clone().mul_scalar(r0) - d1_1.clone().mul_scalar(r1)).div_scalar(r0 - r1);
                let d2 = (d1_1.clone() - d1_0).mul_scalar(2.0).div_scalar(r0 - r1);
                Ok(if sde {
                    let e2 = 1.0 - (-2.0 * h).exp();
                    let base =
                        x.mul_scalar(sigma_t / sigma_s2 * (-h).exp()) + d0.mul_scalar(alpha_t * e2);
                    let c1 = alpha_t * (e2 / (-2.0 * h) + 1.0);
                    let t = if self.heun {
                        base + d1.mul_scalar(c1)
                            + d2.mul_scalar(
                                alpha_t * ((e2 + (-2.0 * h)) / ((-2.0 * h) * (-2.0 * h)) - 0.5),
                            )
                    } else {
                        base + d1_1.mul_scalar(c1)
                    };
                    add(t, noise_term(noise, h)?)
                } else if pp {
                    let e = (-h).exp() - 1.0;
                    let base = x.mul_scalar(sigma_t / sigma_s2) - d0.mul_scalar(alpha_t * e);
                    if self.heun {
                        base + d1.mul_scalar(alpha_t * (e / h + 1.0))
                            - d2.mul_scalar(alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))
                    } else {
                        base + d1_1.mul_scalar(alpha_t * (e / h + 1.0))
                    }
                } else {
                    let e = h.exp() - 1.0;
                    let base = x.mul_scalar(alpha_t / alpha_s2) - d0.mul_scalar(sigma_t * e);
                    if self.heun {
                        base - d1.mul_scalar(sigma_t * (e / h - 1.0))
                            - d2.mul_scalar(sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5))
                    } else {
                        base - d1_1.mul_scalar(sigma_t * (e / h - 1.0))
                    }
                })
            }
        }
    }
}
