//! `UniPCMultistepScheduler`: the unified predictor-corrector solver (UniP predictor, UniC
//! corrector, B(h) variants bh1 / bh2).

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
use diff_format::configs::scheduler::UniPCMultistepSchedulerConfig;

const CLASS: &str = "UniPCMultistepScheduler";

/// Solves the small dense system `a·x = b` (Gaussian elimination with partial pivoting, in
/// f64). diffusers calls `torch.linalg.solve` in float32; the systems are at most 3×3.
pub(crate) fn solve_small(
    mut a: Vec<Vec<f64>>,
    mut b: Vec<f64>,
) -> Result<Vec<f64>, SchedulerError> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|x, y| a[*x][col].abs().total_cmp(&a[*y][col].abs()))
            .ok_or_else(|| SchedulerError::InvalidArgument("empty linear system".into()))?;
        if a[pivot][col] == 0.0 {
            return Err(SchedulerError::InvalidArgument(
                "singular UniPC coefficient system".into(),
            ));
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col].clone();
            for (dst, src) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *dst -= f * src;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Ok(x)
}

/// diffusers' `UniPCMultistepScheduler`.
#[derive(Debug, Clone)]
pub struct UniPCMultistepScheduler {
    config: UniPCMultistepSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    bh1: bool,
    state: SchedulerState,
    model_outputs: ModelOutputs,
    last_sample: Option<Tensor<1>>,
    this_order: usize,
    lower_order_nums: usize,
}

impl SchedulerMixin for UniPCMultistepScheduler {
    type Config = UniPCMultistepSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(mut config: UniPCMultistepSchedulerConfig) -> Result<Self, SchedulerError> {
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
        if matches!(config.solver_type.as_str(), "midpoint" | "heun" | "logrho") {
            config.solver_type = "bh2".into();
        }
        let bh1 = match config.solver_type.as_str() {
            "bh1" => true,
            "bh2" => false,
            other => return Err(unsupported(CLASS, "solver_type", other)),
        };
        if config.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(CLASS, "solver_p", "a scheduler object"));
        }
        if !matches!(config.final_sigmas_type.as_str(), "zero" | "sigma_min") {
            return Err(unsupported(
                CLASS,
                "final_sigmas_type",
                &config.final_sigmas_type,
            ));
        }
        if config.solver_order == 0 {
            return Err(unsupported(CLASS, "solver_order", "0"));
        }
        if prediction == Prediction::Flow && !config.predict_x0 {
            return Err(unsupported(
                CLASS,
                "prediction_type",
                "flow_prediction with predict_x0=false",
            ));
        }
        let ac = crate::betas::alphas_cumprod_zero_snr(
            CLASS,
            &crate::betas::beta_config!(config),
            config.rescale_betas_zero_snr,
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
            bh1,
            model_outputs: ModelOutputs::new(CLASS, order),
            last_sample: None,
            this_order: 1,
            lower_order_nums: 0,
            state: SchedulerState::new(kind, timesteps, sigmas, ac),
        })
    }

    /// `set_timesteps(num_inference_steps | sigmas (flow sigmas only), mu)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        let c = &self.config;
        if request.timesteps.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} takes no custom timesteps"
            )));
        }
        if c.use_dynamic_shifting && request.mu.is_none() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: `mu` must be passed when use_dynamic_shifting is set"
            )));
        }
        if request.sigmas.is_some() && !c.use_flow_sigmas {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS}: custom sigmas need use_flow_sigmas"
            )));
        }
        let n = match &request.sigmas {
            Some(s) => s.len(),
            None => request.resolved_steps(CLASS)?,
        };
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
        let last_min = |sig: &[f64]| sig.last().copied().unwrap_or(0.0);
        let (mut sig, last): (Vec<f64>, f64) =
            if c.use_karras_sigmas || c.use_exponential_sigmas || c.use_beta_sigmas {
                let smin = c.sigma_min.unwrap_or(f64::from(train[0]));
                let smax = c.sigma_max.unwrap_or(f64::from(train[train.len() - 1]));
                let mut s = if c.use_karras_sigmas {
                    karras_sigmas(smin, smax, n, 7.0)
                } else if c.use_exponential_sigmas {
                    exponential_sigmas(smin, smax, n)
                } else {
                    crate::sigma_schedules::beta_sigmas(smin, smax, n)
                };
                if c.use_karras_sigmas && c.use_flow_sigmas {
                    s = s.into_iter().map(|v| v / (v + 1.0)).collect();
                    ts = s.iter().map(|v| v * t_train as f64).collect();
                } else {
                    ts = s
                        .iter()
                        .map(|v| {
                            let t = sigma_to_t(*v, &log_sigmas);
                            if c.use_karras_sigmas { np_round(t) } else { t }
                        })
                        .collect();
                }
                let l = if c.final_sigmas_type == "sigma_min" {
                    last_min(&s)
                } else {
                    0.0
                };
                (s, l)
            } else if c.use_flow_sigmas {
                let mut s: Vec<f64> = match &request.sigmas {
                    Some(v) => v.clone(),
                    None => {
                        let mut v = np_linspace(1.0, 1.0 / t_train as f64, n + 1);
                        v.pop();
                        v
                    }
                };
                if c.use_dynamic_shifting {
                    let mu = request.mu.unwrap_or(0.0);
                    s = s
                        .into_iter()
                        .map(|t| {
                            if c.time_shift_type == "linear" {
                                mu / (mu + (1.0 / t - 1.0))
                            } else {
                                mu.exp() / (mu.exp() + (1.0 / t - 1.0))
                            }
                        })
                        .collect();
                } else {
                    let shift = c.flow_shift;
                    s = s
                        .into_iter()
                        .map(|v| shift * v / (1.0 + (shift - 1.0) * v))
                        .collect();
                }
                if let Some(terminal) = c.shift_terminal
                    && terminal != 0.0
                {
                    let scale = (1.0 - last_min(&s)) / (1.0 - terminal);
                    s = s.into_iter().map(|v| 1.0 - (1.0 - v) / scale).collect();
                }
                if let Some(first) = s.first_mut()
                    && (*first - 1.0).abs() < 1e-6
                {
                    *first -= 1e-6;
                }
                ts = s.iter().map(|v| v * t_train as f64).collect();
                let l = if c.final_sigmas_type == "sigma_min" {
                    last_min(&s)
                } else {
                    0.0
                };
                (s, l)
            } else {
                let s = np_interp(&ts, &train);
                let l = if c.final_sigmas_type == "sigma_min" {
                    let a0 = self.state.alphas_cumprod[0];
                    f64::from(((1.0 - a0) / a0).sqrt())
                } else {
                    0.0
                };
                (s, l)
            };
        sig.push(last);
        self.state.sigmas = sig.into_iter().map(|s| s as f32).collect();
        self.state.timesteps = ts.into_iter().map(|t| (t as i64) as f64).collect();
        self.state.num_inference_steps = Some(self.state.timesteps.len());
        self.model_outputs = ModelOutputs::new(CLASS, c.solver_order);
        self.lower_order_nums = 0;
        self.last_sample = None;
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One UniPC step: corrector on the previous prediction, then predictor.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        _options: &StepOptions,
        _generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.state.dpm_step_index(CLASS, timestep)?;
        let dims = sample.dims();
        let use_corrector = i > 0
            && !self.config.disable_corrector.contains(&(i as i64 - 1))
            && self.last_sample.is_some();
        let converted = self
            .convert(model_output, sample.clone(), i)?
            .flatten::<1>(0, D - 1);
        let mut x = sample.flatten::<1>(0, D - 1);
        if use_corrector && let Some(last) = self.last_sample.clone() {
            x = self.corrector(converted.clone(), last, i, self.this_order)?;
        }
        self.model_outputs.push(converted);
        let len = self.state.timesteps.len();
        let order = if self.config.lower_order_final {
            self.config.solver_order.min(len - i)
        } else {
            self.config.solver_order
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        self.last_sample = Some(x.clone());
        let prev = self.predictor(x, i, self.this_order)?;
        if self.lower_order_nums < self.config.solver_order {
            self.lower_order_nums += 1;
        }
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev.reshape(dims),
            pred_original_sample: None,
        })
    }
}

impl UniPCMultistepScheduler {
    fn asl(&self, i: usize) -> Result<(f32, f32, f32), SchedulerError> {
        let (a, s) = alpha_sigma(self.state.sigma_at(i)?, self.config.use_flow_sigmas);
        Ok((a, s, lambda(a, s)))
    }

    /// `convert_model_output`: x0 with `predict_x0` (thresholded if asked), else ε (diffusers
    /// has no thresholding on that branch).
    fn convert<const D: usize>(
        &self,
        model_output: Tensor<D>,
        sample: Tensor<D>,
        i: usize,
    ) -> Result<Tensor<D>, SchedulerError> {
        let c = &self.config;
        let thresholding = Thresholding::when(
            c.thresholding && c.predict_x0,
            c.dynamic_thresholding_ratio,
            c.sample_max_value,
        );
        convert_model_output(
            model_output,
            sample,
            self.state.sigma_at(i)?,
            c.use_flow_sigmas,
            self.prediction,
            c.predict_x0,
            thresholding,
        )
    }

    /// The shared coefficient set of UniP / UniC: h, h·φ₁, B(h), the r_k, D1_k and b.
    #[allow(clippy::type_complexity)]
    fn coefficients(
        &self,
        t_idx: usize,
        s0_idx: usize,
        older: &[usize],
        order: usize,
    ) -> Result<(f32, f32, f32, f32, f32, Vec<f32>, Vec<f32>), SchedulerError> {
        let (alpha_t, sigma_t, lambda_t) = self.asl(t_idx)?;
        let (alpha_s0, sigma_s0, lambda_s0) = self.asl(s0_idx)?;
        let h = lambda_t - lambda_s0;
        let mut rks = Vec::new();
        for si in older.iter().take(order.saturating_sub(1)) {
            let (_, _, lambda_si) = self.asl(*si)?;
            rks.push((lambda_si - lambda_s0) / h);
        }
        let hh = if self.config.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0f32;
        let b_h = if self.bh1 { hh } else { hh.exp_m1() };
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f32;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let _ = (alpha_s0, sigma_t);
        Ok((alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, rks, {
            let mut v = b;
            v.push(b_h);
            v
        }))
    }

    /// R[i][k] = rks[k]^i with the final r = 1.
    fn vandermonde(rks: &[f32], order: usize) -> Vec<Vec<f64>> {
        let mut all: Vec<f64> = rks.iter().map(|r| f64::from(*r)).collect();
        all.push(1.0);
        (0..order)
            .map(|i| all.iter().map(|r| r.powi(i as i32)).collect())
            .collect()
    }

    /// Σ ρ_k·D1_k.
    fn weighted(d1s: &[Tensor<1>], rhos: &[f32]) -> Option<Tensor<1>> {
        let mut acc: Option<Tensor<1>> = None;
        for (d, r) in d1s.iter().zip(rhos) {
            let term = d.clone().mul_scalar(*r);
            acc = Some(match acc {
                Some(a) => a + term,
                None => term,
            });
        }
        acc
    }

    fn predictor(&self, x: Tensor<1>, i: usize, order: usize) -> Result<Tensor<1>, SchedulerError> {
        let older: Vec<usize> = (1..order).map(|k| i - k).collect();
        let (alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, rks, mut b) =
            self.coefficients(i + 1, i, &older, order)?;
        let b_h = b.pop().unwrap_or(1.0);
        let m0 = self.model_outputs.back(0)?;
        let d1s: Vec<Tensor<1>> = (1..order)
            .map(|k| Ok((self.model_outputs.back(k)? - m0.clone()).div_scalar(rks[k - 1])))
            .collect::<Result<_, SchedulerError>>()?;
        let rhos: Vec<f32> = if d1s.is_empty() {
            Vec::new()
        } else if order == 2 {
            vec![0.5]
        } else {
            let r = Self::vandermonde(&rks, order);
            let a: Vec<Vec<f64>> = r[..order - 1]
                .iter()
                .map(|row| row[..order - 1].to_vec())
                .collect();
            solve_small(a, b[..order - 1].iter().map(|v| f64::from(*v)).collect())?
                .into_iter()
                .map(|v| v as f32)
                .collect()
        };
        let res = Self::weighted(&d1s, &rhos);
        let out = if self.config.predict_x0 {
            let base = x.mul_scalar(sigma_t / sigma_s0) - m0.mul_scalar(alpha_t * h_phi_1);
            match res {
                Some(r) => base - r.mul_scalar(alpha_t * b_h),
                None => base,
            }
        } else {
            let base = x.mul_scalar(alpha_t / alpha_s0) - m0.mul_scalar(sigma_t * h_phi_1);
            match res {
                Some(r) => base - r.mul_scalar(sigma_t * b_h),
                None => base,
            }
        };
        Ok(out)
    }

    fn corrector(
        &self,
        model_t: Tensor<1>,
        last: Tensor<1>,
        i: usize,
        order: usize,
    ) -> Result<Tensor<1>, SchedulerError> {
        let older: Vec<usize> = (1..order).map(|k| i - (k + 1)).collect();
        let (alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, rks, mut b) =
            self.coefficients(i, i - 1, &older, order)?;
        let b_h = b.pop().unwrap_or(1.0);
        let m0 = self.model_outputs.back(0)?;
        let d1s: Vec<Tensor<1>> = (1..order)
            .map(|k| Ok((self.model_outputs.back(k)? - m0.clone()).div_scalar(rks[k - 1])))
            .collect::<Result<_, SchedulerError>>()?;
        let rhos: Vec<f32> = if order == 1 {
            vec![0.5]
        } else {
            let r = Self::vandermonde(&rks, order);
            solve_small(r, b.iter().map(|v| f64::from(*v)).collect())?
                .into_iter()
                .map(|v| v as f32)
                .collect()
        };
        let (last_rho, rest) = rhos
            .split_last()
            .ok_or_else(|| SchedulerError::InvalidArgument("no rho".into()))?;
        let corr = Self::weighted(&d1s, rest);
        let d1_t = model_t - m0.clone();
        let inner = match corr {
            Some(c) => c + d1_t.mul_scalar(*last_rho),
            None => d1_t.mul_scalar(*last_rho),
        };
        Ok(if self.config.predict_x0 {
            last.mul_scalar(sigma_t / sigma_s0)
                - m0.mul_scalar(alpha_t * h_phi_1)
                - inner.mul_scalar(alpha_t * b_h)
        } else {
            last.mul_scalar(alpha_t / alpha_s0)
                - m0.mul_scalar(sigma_t * h_phi_1)
                - inner.mul_scalar(sigma_t * b_h)
        })
    }
}
