//! `PNDMScheduler`: pseudo numerical methods for diffusion models (Runge–Kutta warm-up steps,
//! then linear multistep; Stable Diffusion 1.x ships it with `skip_prk_steps`).

use crate::array_math::{np_arange, np_linspace, np_round};
use crate::betas::{alphas_cumprod_of, beta_config};
use crate::precision::{mul_left, round_tensor};
use crate::prediction::Prediction;
use crate::timestep_spacing::Spacing;
use crate::{
    NoiseDtype, NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState,
    StepIndex, StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::PNDMSchedulerConfig;

const CLASS: &str = "PNDMScheduler";
const PNDM_ORDER: usize = 4;

/// diffusers' `PNDMScheduler`.
#[derive(Debug, Clone)]
pub struct PNDMScheduler {
    config: PNDMSchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    state: SchedulerState,
    final_alpha_cumprod: f32,
    prk_timesteps: Vec<i64>,
    counter: usize,
    /// Running Runge–Kutta sum (diffusers' `cur_model_output`, 0 when `None`).
    cur_model_output: Option<Tensor<1>>,
    cur_sample: Option<Tensor<1>>,
    ets: Vec<Tensor<1>>,
}

impl SchedulerMixin for PNDMScheduler {
    type Config = PNDMSchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: PNDMSchedulerConfig) -> Result<Self, SchedulerError> {
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[Prediction::Epsilon, Prediction::VPrediction],
        )?;
        let spacing = Spacing::parse(CLASS, &config.timestep_spacing)?;
        let ac = alphas_cumprod_of(CLASS, &beta_config!(config), false, &[])?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { ac[0] };
        Ok(Self {
            config,
            prediction,
            spacing,
            final_alpha_cumprod,
            prk_timesteps: Vec::new(),
            counter: 0,
            cur_model_output: None,
            cur_sample: None,
            ets: Vec::new(),
            state: SchedulerState::new(NoiseKind::AlphasCumprod, Vec::new(), Vec::new(), ac),
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
        let t = self.config.num_train_timesteps;
        // Ascending, as diffusers' `_timesteps`.
        let base: Vec<i64> = match self.spacing {
            Spacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
                .into_iter()
                .map(|x| np_round(x) as i64)
                .collect(),
            Spacing::Leading => {
                let ratio = t / n;
                (0..n)
                    .map(|i| (i * ratio) as i64 + self.config.steps_offset)
                    .collect()
            }
            Spacing::Trailing => {
                let ratio = t as f64 / n as f64;
                let mut v: Vec<i64> = np_arange(t as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|x| np_round(x) as i64 - 1)
                    .collect();
                v.reverse();
                v
            }
        };
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.config.skip_prk_steps {
            let len = base.len();
            let mut plms: Vec<i64> = base[..len.saturating_sub(1)].to_vec();
            if len >= 2 {
                plms.push(base[len - 2]);
            }
            if let Some(last) = base.last() {
                plms.push(*last);
            }
            plms.reverse();
            (Vec::new(), plms)
        } else {
            if base.len() < PNDM_ORDER {
                return Err(SchedulerError::InvalidArgument(format!(
                    "{CLASS} with Runge-Kutta steps needs at least {PNDM_ORDER} inference steps"
                )));
            }
            let half = (t / n / 2) as i64;
            let tail = &base[base.len() - PNDM_ORDER..];
            let mut rep: Vec<i64> = Vec::new();
            for v in tail {
                rep.push(*v);
                rep.push(*v + half);
            }
            // prk_timesteps[:-1].repeat(2)[1:-1][::-1]
            let head = &rep[..rep.len() - 1];
            let doubled: Vec<i64> = head.iter().flat_map(|v| [*v, *v]).collect();
            let mut prk: Vec<i64> = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms: Vec<i64> = base[..base.len().saturating_sub(3)].to_vec();
            plms.reverse();
            (prk, plms)
        };
        self.state.timesteps = prk.iter().chain(plms.iter()).map(|v| *v as f64).collect();
        self.prk_timesteps = prk;
        self.state.num_inference_steps = Some(n);
        self.ets.clear();
        self.counter = 0;
        self.cur_model_output = None;
        self.cur_sample = None;
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// One PRK or PLMS step, by the call counter as diffusers does.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        _generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        // PNDM computes in the sample's dtype: with float16 / bfloat16 latents every op is
        // rounded to it (the identity in float32).
        let half = options.noise_dtype;
        let n = self
            .state
            .num_inference_steps
            .ok_or(SchedulerError::NotInitialised(CLASS))?;
        let dims = sample.dims();
        let mo = model_output.flatten::<1>(0, D - 1);
        let x = sample.flatten::<1>(0, D - 1);
        let prev = if self.counter < self.prk_timesteps.len() && !self.config.skip_prk_steps {
            self.step_prk(mo, timestep as i64, x, n, half)?
        } else {
            self.step_plms(mo, timestep as i64, x, n, half)?
        };
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev.reshape(dims),
            pred_original_sample: None,
        })
    }
}

impl PNDMScheduler {
    /// `_get_prev_sample` (PNDM paper eq. 9), on flattened tensors.
    fn prev_sample(
        &self,
        sample: Tensor<1>,
        t: i64,
        prev_t: i64,
        model_output: Tensor<1>,
        half: NoiseDtype,
    ) -> Result<Tensor<1>, SchedulerError> {
        let r = |t: Tensor<1>| round_tensor(t, half);
        let alpha_t = self
            .state
            .alpha_cumprod_or_final(t, self.final_alpha_cumprod)?;
        let alpha_prev = self
            .state
            .alpha_cumprod_or_final(prev_t, self.final_alpha_cumprod)?;
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let model_output = if self.prediction == Prediction::VPrediction {
            r(mul_left(alpha_t.sqrt(), model_output, half)
                + mul_left(beta_t.sqrt(), sample.clone(), half))
        } else {
            model_output
        };
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denom = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        // `sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom`:
        // 0-d float32 factors on the left, rounded to the sample's dtype first.
        Ok(r(mul_left(sample_coeff, sample, half)
            - r(
                mul_left(alpha_prev - alpha_t, model_output, half).div_scalar(denom)
            )))
    }

    fn step_prk(
        &mut self,
        model_output: Tensor<1>,
        timestep: i64,
        sample: Tensor<1>,
        n: usize,
        half: NoiseDtype,
    ) -> Result<Tensor<1>, SchedulerError> {
        let r = |t: Tensor<1>| round_tensor(t, half);
        let t_train = self.config.num_train_timesteps;
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            (t_train / n / 2) as i64
        };
        let prev_t = timestep - diff_to_prev;
        let t = self.prk_timesteps[self.counter / 4 * 4];
        let add = |acc: Option<Tensor<1>>, v: Tensor<1>| match acc {
            Some(a) => r(a + v),
            None => v,
        };
        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(add(
                    self.cur_model_output.take(),
                    r(model_output.clone().mul_scalar(1.0f32 / 6.0)),
                ));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output
            }
            1 | 2 => {
                self.cur_model_output = Some(add(
                    self.cur_model_output.take(),
                    r(model_output.clone().mul_scalar(1.0f32 / 3.0)),
                ));
                model_output
            }
            _ => add(
                self.cur_model_output.take(),
                r(model_output.mul_scalar(1.0f32 / 6.0)),
            ),
        };
        let cur = self.cur_sample.clone().unwrap_or(sample);
        let prev = self.prev_sample(cur, t, prev_t, model_output, half)?;
        self.counter += 1;
        Ok(prev)
    }

    fn step_plms(
        &mut self,
        model_output: Tensor<1>,
        timestep: i64,
        sample: Tensor<1>,
        n: usize,
        half: NoiseDtype,
    ) -> Result<Tensor<1>, SchedulerError> {
        let r = |t: Tensor<1>| round_tensor(t, half);
        if !self.config.skip_prk_steps && self.ets.len() < 3 {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} can only run PLMS steps after at least 12 Runge-Kutta steps"
            )));
        }
        let delta = (self.config.num_train_timesteps / n) as i64;
        let mut prev_t = timestep - delta;
        let mut t = timestep;
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_t = timestep;
            t = timestep + delta;
        }
        let e = &self.ets;
        let k = e.len();
        let mut sample = sample;
        let model_output = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output
        } else if k == 1 && self.counter == 1 {
            let averaged = r(r(model_output + e[k - 1].clone()).div_scalar(2.0));
            if let Some(cur) = self.cur_sample.take() {
                sample = cur;
            }
            averaged
        } else if k == 2 {
            r(r(r(e[1].clone().mul_scalar(3.0)) - e[0].clone()).div_scalar(2.0))
        } else if k == 3 {
            r(r(
                r(r(e[2].clone().mul_scalar(23.0)) - r(e[1].clone().mul_scalar(16.0)))
                    + r(e[0].clone().mul_scalar(5.0)),
            )
            .div_scalar(12.0))
        } else {
            r(r(r(
                r(r(e[k - 1].clone().mul_scalar(55.0)) - r(e[k - 2].clone().mul_scalar(59.0)))
                    + r(e[k - 3].clone().mul_scalar(37.0)),
            ) - r(e[k - 4].clone().mul_scalar(9.0)))
            .mul_scalar(1.0f32 / 24.0))
        };
        let prev = self.prev_sample(sample, t, prev_t, model_output, half)?;
        self.counter += 1;
        Ok(prev)
    }
}
