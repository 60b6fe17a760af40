//! Machinery shared by the schedulers: beta schedules, numpy/torch-faithful table maths,
//! sigma conversions, timestep spacings, prediction conversions and thresholding.
//!
//! Tables are built on the host. Where diffusers uses float32 torch tensors (betas,
//! `alphas_cumprod`, training sigmas) the maths is `f32` with torch's quirks (FMA `linspace`,
//! double-accumulated `cumprod`); where it uses numpy float64 (`set_timesteps`) it is `f64`
//! with numpy's formulas (`linspace`, `interp`, round-half-to-even).

use crate::SchedulerError;
pub(crate) use crate::float_kernels::{numpy_log_f32, torch_exp_f32, torch_log_f32};
use burn::tensor::{Tensor, TensorData};

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// `epsilon`: the noise.
    Epsilon,
    /// `sample`: the denoised sample x0.
    Sample,
    /// `v_prediction`: the velocity.
    VPrediction,
    /// `flow_prediction`: the flow (DPM-Solver / UniPC / DEIS with flow sigmas).
    Flow,
}

impl Prediction {
    /// Parses `prediction_type`, allowing only the values `allowed` (diffusers raises for the
    /// others).
    pub(crate) fn parse(
        class: &'static str,
        value: &str,
        allowed: &[Prediction],
    ) -> Result<Self, SchedulerError> {
        let p = match value {
            "epsilon" => Prediction::Epsilon,
            "sample" | "original_sample" => Prediction::Sample,
            "v_prediction" => Prediction::VPrediction,
            "flow_prediction" => Prediction::Flow,
            _ => return Err(unsupported(class, "prediction_type", value)),
        };
        if allowed.contains(&p) {
            Ok(p)
        } else {
            Err(unsupported(class, "prediction_type", value))
        }
    }
}

/// `timestep_spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `linspace`: evenly spread over [0, T-1].
    Linspace,
    /// `leading`: multiples of T // n, plus `steps_offset`.
    Leading,
    /// `trailing`: counted down from T, minus one.
    Trailing,
}

impl Spacing {
    pub(crate) fn parse(class: &'static str, value: &str) -> Result<Self, SchedulerError> {
        match value {
            "linspace" => Ok(Spacing::Linspace),
            "leading" => Ok(Spacing::Leading),
            "trailing" => Ok(Spacing::Trailing),
            _ => Err(unsupported(class, "timestep_spacing", value)),
        }
    }
}

/// The typed error for an option value this port does not support (or diffusers rejects).
pub(crate) fn unsupported(class: &'static str, key: &'static str, value: &str) -> SchedulerError {
    SchedulerError::Unsupported {
        class,
        key,
        value: value.to_string(),
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU, bit-exact: both halves use a
/// single-rounding FMA from their end, as torch's vectorised kernel compiled with FMA does.
pub(crate) fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f32;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((n - 1 - i) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// `np.linspace(start, stop, n)` (endpoint included) in float64: `i * step + start` with the
/// last element pinned to `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
            v[n - 1] = stop;
            v
        }
    }
}

/// `np.linspace(start, stop, n, endpoint=False)` in float64.
pub(crate) fn np_linspace_open(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let step = (stop - start) / n as f64;
    (0..n).map(|i| i as f64 * step + start).collect()
}

/// `np.arange(start, stop, step)` for a float step: `ceil((stop - start) / step)` elements,
/// each `start + i * step`.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    (0..len as usize).map(|i| start + i as f64 * step).collect()
}

/// numpy's `round` (half to even).
pub(crate) fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `torch.cumprod` on the CPU: a double accumulator, each output rounded to f32.
pub(crate) fn torch_cumprod(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|v| {
            acc *= f64::from(*v);
            acc as f32
        })
        .collect()
}

/// `betas_for_alpha_bar` (Python doubles, then float32).
pub(crate) fn betas_for_alpha_bar(n: usize, transform: &str) -> Vec<f32> {
    let alpha_bar = |t: f64| -> f64 {
        match transform {
            "exp" => (t * -12.0).exp(),
            "laplace" => {
                let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
                let snr = lmb.exp();
                (snr / (1.0 + snr)).sqrt()
            }
            _ => ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                .cos()
                .powi(2),
        }
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// The betas of a config (`trained_betas` or `beta_schedule`), as float32 torch makes them.
/// `extra_schedules` lists the schedules beyond linear / scaled_linear / squaredcos_cap_v2
/// that the class accepts (`"exp"` for Heun, `"sigmoid"` for DDPM).
pub(crate) fn make_betas(
    class: &'static str,
    schedule: &str,
    beta_start: f64,
    beta_end: f64,
    n: usize,
    trained: Option<&[f64]>,
    extra_schedules: &[&str],
) -> Result<Vec<f32>, SchedulerError> {
    if let Some(trained) = trained {
        return Ok(trained.iter().map(|b| *b as f32).collect());
    }
    match schedule {
        "linear" => Ok(torch_linspace_f32(beta_start as f32, beta_end as f32, n)),
        "scaled_linear" => {
            Ok(
                torch_linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
            )
        }
        "squaredcos_cap_v2" => Ok(betas_for_alpha_bar(n, "cosine")),
        "exp" if extra_schedules.contains(&"exp") => Ok(betas_for_alpha_bar(n, "exp")),
        "sigmoid" if extra_schedules.contains(&"sigmoid") => {
            let xs = torch_linspace_f32(-6.0, 6.0, n);
            let (start, end) = (beta_start as f32, beta_end as f32);
            Ok(xs
                .into_iter()
                .map(|x| (1.0 / (1.0 + (-x).exp())) * (end - start) + start)
                .collect())
        }
        other => Err(unsupported(class, "beta_schedule", other)),
    }
}

/// `rescale_zero_terminal_snr(betas)`, float32 as torch does it.
pub(crate) fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let cumprod = torch_cumprod(&alphas);
    let mut sqrt: Vec<f32> = cumprod.iter().map(|a| a.sqrt()).collect();
    let (Some(&s0), Some(&st)) = (sqrt.first(), sqrt.last()) else {
        return Vec::new();
    };
    let scale = s0 / (s0 - st);
    for v in sqrt.iter_mut() {
        *v -= st;
        *v *= scale;
    }
    let bar: Vec<f32> = sqrt.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// `alphas_cumprod` from betas: `cumprod(1 - betas)` in torch's way.
pub(crate) fn alphas_cumprod(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    torch_cumprod(&alphas)
}

/// The betas fields every `*SchedulerConfig` has, borrowed for the table builders.
pub(crate) struct BetaConfig<'a> {
    /// `beta_schedule`.
    pub schedule: &'a str,
    /// `beta_start`.
    pub start: f64,
    /// `beta_end`.
    pub end: f64,
    /// `num_train_timesteps`.
    pub num_train_timesteps: usize,
    /// `trained_betas`.
    pub trained: Option<&'a [f64]>,
}

/// A [`BetaConfig`] borrowing the betas fields of any scheduler config struct (they share the
/// key names).
macro_rules! beta_config {
    ($config:expr) => {
        crate::common::BetaConfig {
            schedule: &$config.beta_schedule,
            start: $config.beta_start,
            end: $config.beta_end,
            num_train_timesteps: $config.num_train_timesteps,
            trained: $config.trained_betas.as_deref(),
        }
    };
}
pub(crate) use beta_config;

/// `alphas_cumprod` as the Euler / Euler-ancestral / DPM-Solver multistep / UniPC `__init__`
/// builds it: with `rescale_betas_zero_snr` the betas are rescaled to zero terminal SNR and the
/// last ᾱ is then set to 2⁻²⁴ (float16's smallest subnormal), so that σ_max stays finite.
pub(crate) fn alphas_cumprod_zero_snr(
    class: &'static str,
    betas: &BetaConfig<'_>,
    rescale_betas_zero_snr: bool,
) -> Result<Vec<f32>, SchedulerError> {
    let mut b = make_betas(
        class,
        betas.schedule,
        betas.start,
        betas.end,
        betas.num_train_timesteps,
        betas.trained,
        &[],
    )?;
    if rescale_betas_zero_snr {
        b = rescale_zero_terminal_snr(&b);
    }
    let mut ac = alphas_cumprod(&b);
    if rescale_betas_zero_snr && let Some(last) = ac.last_mut() {
        *last = 2f32.powi(-24);
    }
    Ok(ac)
}

/// The timesteps before `set_timesteps`: `np.linspace(0, N - 1, N)[::-1]` as float32.
pub(crate) fn initial_timesteps(num_train_timesteps: usize) -> Vec<f64> {
    np_linspace(
        0.0,
        num_train_timesteps.saturating_sub(1) as f64,
        num_train_timesteps,
    )
    .into_iter()
    .rev()
    .map(|t| f64::from(t as f32))
    .collect()
}

/// Training sigmas `((1 - ᾱ) / ᾱ) ** 0.5` in float32, ascending in t.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)` in float64, with numpy's slope formula.
pub(crate) fn np_interp(xs: &[f64], fp: &[f32]) -> Vec<f64> {
    let n = fp.len();
    xs.iter()
        .map(|&x| {
            if n == 0 {
                return f64::NAN;
            }
            if x <= 0.0 {
                return f64::from(fp[0]);
            }
            if x >= (n - 1) as f64 {
                return f64::from(fp[n - 1]);
            }
            let j = (x.floor() as usize).min(n.saturating_sub(2));
            if x == j as f64 {
                return f64::from(fp[j]);
            }
            let (a, b) = (f64::from(fp[j]), f64::from(fp[j + 1]));
            let slope = (b - a) / 1.0;
            slope * (x - j as f64) + a
        })
        .collect()
}

/// `_sigma_to_t(sigma, log_sigmas)` with float32 `log_sigmas` and float64 maths.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of the cumulative count of (log_sigma - log_sigmas >= 0): the last index where
    // the running count reaches its maximum first, i.e. the index of the last `true`.
    let mut count = 0usize;
    let mut best = 0usize;
    let mut best_idx = 0usize;
    for (i, ls) in log_sigmas.iter().enumerate() {
        if log_sigma - f64::from(*ls) >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            best_idx = i;
        }
    }
    let low_idx = best_idx.min(n - 2);
    let high_idx = low_idx + 1;
    let (low32, high32) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    // numpy: the numerator mixes a float64 scalar and is float64; the denominator subtracts
    // two float32 elements and stays float32.
    let denominator = f64::from(low32 - high32);
    let w = ((f64::from(low32) - log_sigma) / denominator).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `_convert_to_karras` (rho = 7), float64.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f64> {
    let ramp = np_linspace(0.0, 1.0, n);
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    ramp.iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// `_convert_to_exponential`, float64.
pub(crate) fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// `ln B(0.6, 0.6)`: diffusers' `_convert_to_beta` always uses alpha = beta = 0.6.
const LN_BETA_06_06: f64 = 0.8818418061417858;

/// The continued fraction of the regularized incomplete beta function (modified Lentz).
fn incomplete_beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..400 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(0.6, 0.6).
fn beta_cdf_06(x: f64) -> f64 {
    let (a, b) = (0.6, 0.6);
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (a * x.ln() + b * (1.0 - x).ln() - LN_BETA_06_06).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * incomplete_beta_cf(a, b, x) / a
    } else {
        1.0 - front * incomplete_beta_cf(b, a, 1.0 - x) / b
    }
}

/// `scipy.stats.beta.ppf(q, 0.6, 0.6)`: bisection on the CDF down to float64 resolution.
pub(crate) fn beta_ppf_06(q: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf_06(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `_convert_to_beta` (alpha = beta = 0.6), float64:
/// σ_min + ppf(1 − linspace(0, 1, n))·(σ_max − σ_min).
pub(crate) fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|t| sigma_min + beta_ppf_06(1.0 - t) * (sigma_max - sigma_min))
        .collect()
}

/// Checks that at most one of karras / exponential / beta sigmas is set.
pub(crate) fn check_sigma_flags(
    class: &'static str,
    karras: bool,
    exponential: bool,
    beta: bool,
) -> Result<(), SchedulerError> {
    if [karras, exponential, beta].iter().filter(|b| **b).count() > 1 {
        return Err(SchedulerError::InvalidConfig {
            class,
            message:
                "only one of `use_beta_sigmas`, `use_exponential_sigmas`, `use_karras_sigmas` \
                      can be used"
                    .into(),
        });
    }
    Ok(())
}

/// Family-A timesteps (DDIM, DDPM, PNDM, LMS, Euler, Heun, KDPM2): float64 values, before the
/// caller's cast. `round` rounds the linspace spacing (integer schedulers).
pub(crate) fn spacing_timesteps(
    spacing: Spacing,
    train_steps: usize,
    n: usize,
    steps_offset: i64,
    round_linspace: bool,
) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut v = np_linspace(0.0, (train_steps - 1) as f64, n);
            if round_linspace {
                v.iter_mut().for_each(|x| *x = np_round(*x));
            }
            v.reverse();
            v
        }
        Spacing::Leading => {
            let ratio = train_steps.checked_div(n).unwrap_or(0);
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = train_steps as f64 / n as f64;
            np_arange(train_steps as f64, 0.0, -ratio)
                .into_iter()
                .map(|x| np_round(x) - 1.0)
                .collect()
        }
    }
}

/// The index of `timestep` in `schedule` as diffusers' `index_for_timestep`: the second match
/// when there are several (so a restart in the middle of a second-order pair works), else
/// the first.
pub(crate) fn index_for_timestep(schedule: &[f64], timestep: f64) -> Result<usize, SchedulerError> {
    let matches: Vec<usize> = schedule
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == timestep)
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [] => Err(SchedulerError::UnknownTimestep(timestep)),
        [only] => Ok(*only),
        [_, second, ..] => Ok(*second),
    }
}

/// Dynamic thresholding (`_threshold_sample`): per batch item, s = quantile(|x0|, ratio)
/// clamped to [1, max], then x0 = clamp(x0, -s, s) / s.
pub(crate) fn threshold_sample<const D: usize>(
    sample: Tensor<D>,
    ratio: f64,
    max_value: f64,
) -> Result<Tensor<D>, SchedulerError> {
    let dims = sample.dims();
    let device = sample.device();
    let values = tensor_values(&sample)?;
    let batch = dims[0].max(1);
    let per = values.len() / batch;
    let mut out = Vec::with_capacity(values.len());
    for item in values.chunks(per.max(1)) {
        let mut abs: Vec<f32> = item.iter().map(|v| v.abs()).collect();
        abs.sort_by(|a, b| a.total_cmp(b));
        // torch.quantile's default linear interpolation, computed in float32 on CPU.
        let pos = ratio * (abs.len().saturating_sub(1)) as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(abs.len().saturating_sub(1));
        let frac = (pos - lo as f64) as f32;
        let q = abs[lo] + (abs[hi] - abs[lo]) * frac;
        let s = q.clamp(1.0, max_value as f32);
        out.extend(item.iter().map(|v| v.clamp(-s, s) / s));
    }
    Ok(Tensor::from_data(TensorData::new(out, dims), &device))
}

/// The flat f32 values of a tensor.
pub(crate) fn tensor_values<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, SchedulerError> {
    t.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| SchedulerError::Shape(format!("cannot read tensor values: {e:?}")))
}

/// Converts a model output to x0 in the DDPM formulation (§3.0 of the spec): `alpha_prod` is
/// ᾱ_t as a float32 scalar.
pub(crate) fn ddpm_x0<const D: usize>(
    prediction: Prediction,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    alpha_prod: f32,
) -> Tensor<D> {
    ddpm_x0_in(
        prediction,
        model_output,
        sample,
        alpha_prod,
        crate::NoiseDtype::Float32,
    )
}

/// [`ddpm_x0`] on tensors of `dtype` (float32 tensors holding its values): each op is rounded
/// to it, as torch does when the sample and model output are float16 / bfloat16.
pub(crate) fn ddpm_x0_in<const D: usize>(
    prediction: Prediction,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    alpha_prod: f32,
    dtype: crate::NoiseDtype,
) -> Tensor<D> {
    use crate::precision::{mul_left, round_tensor};
    let r = |t: Tensor<D>| round_tensor(t, dtype);
    let beta_prod = 1.0 - alpha_prod;
    // `beta_prod_t ** 0.5 * model_output`: 0-d float32 factors on the left (see `precision`).
    match prediction {
        Prediction::Epsilon | Prediction::Flow => {
            r(r(sample - mul_left(beta_prod.sqrt(), model_output, dtype))
                .div_scalar(alpha_prod.sqrt()))
        }
        Prediction::Sample => model_output,
        Prediction::VPrediction => r(mul_left(alpha_prod.sqrt(), sample, dtype)
            - mul_left(beta_prod.sqrt(), model_output, dtype)),
    }
}

/// Draws `randn(shape)` from the generators (or a fresh clock-seeded one when none is given,
/// as torch would use its global generator) as a burn tensor on `like`'s device.
pub(crate) fn noise_like<const D: usize>(
    like: &Tensor<D>,
    generators: Option<&mut [crate::TorchGenerator]>,
    dtype: crate::NoiseDtype,
) -> Result<Tensor<D>, SchedulerError> {
    let dims = like.dims();
    let values = match generators {
        Some(gens) => crate::randn_tensor(&dims, gens, dtype)?,
        None => {
            // torch would draw from its unseeded global generator: results are not reproducible.
            tracing::debug!(
                "no generator passed to step; drawing noise from a clock-seeded generator"
            );
            let mut g = crate::TorchGenerator::from_entropy();
            crate::randn_tensor(&dims, std::slice::from_mut(&mut g), dtype)?
        }
    };
    crate::to_tensor(values, dims, &like.device())
}

/// The sigma schedule of the k-diffusion style schedulers (LMS, Heun, KDPM2, KDPM2 ancestral):
/// family-A float32 timesteps, sigmas interpolated in float64, optionally replaced by karras /
/// exponential / beta sigmas with timesteps re-derived by `_sigma_to_t` (rounded when `round_karras`).
/// Returns (timesteps, sigmas without the final entry, float32 log training sigmas).
#[allow(clippy::too_many_arguments)]
pub(crate) fn k_schedule(
    spacing: Spacing,
    alphas_cumprod: &[f32],
    n: usize,
    steps_offset: i64,
    karras: bool,
    exponential: bool,
    beta: bool,
    round_karras: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
    let train_steps = alphas_cumprod.len();
    let ts: Vec<f64> = spacing_timesteps(spacing, train_steps, n, steps_offset, false)
        .into_iter()
        .map(|t| f64::from(t as f32))
        .collect();
    k_sigmas(
        ts,
        alphas_cumprod,
        n,
        karras,
        exponential,
        beta,
        round_karras,
    )
}

/// The second half of [`k_schedule`], for schedulers that keep their spaced timesteps in
/// float64 (DPMSolverSDE) rather than rounding them to float32 first: the training sigmas
/// interpolated at `ts`, optionally replaced by karras / exponential / beta sigmas with the
/// timesteps re-derived by `_sigma_to_t` (rounded when `round_karras`).
/// Returns (timesteps, sigmas without the final entry, float32 log training sigmas).
pub(crate) fn k_sigmas(
    mut ts: Vec<f64>,
    alphas_cumprod: &[f32],
    n: usize,
    karras: bool,
    exponential: bool,
    beta: bool,
    round_karras: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
    let train = train_sigmas(alphas_cumprod);
    let log_sigmas: Vec<f32> = train.iter().map(|s| numpy_log_f32(*s)).collect();
    let mut sig = np_interp(&ts, &train);
    let (min, max) = (
        sig.last().copied().unwrap_or(0.0),
        sig.first().copied().unwrap_or(0.0),
    );
    if karras {
        sig = karras_sigmas(min, max, n, 7.0);
        ts = sig
            .iter()
            .map(|s| {
                let t = sigma_to_t(*s, &log_sigmas);
                if round_karras { np_round(t) } else { t }
            })
            .collect();
    } else if exponential {
        sig = exponential_sigmas(min, max, n);
        ts = sig.iter().map(|s| sigma_to_t(*s, &log_sigmas)).collect();
    } else if beta {
        sig = beta_sigmas(min, max, n);
        ts = sig.iter().map(|s| sigma_to_t(*s, &log_sigmas)).collect();
    }
    (ts, sig, log_sigmas)
}

/// Where `_sigma_to_t` runs on float32 values, the types decide the last two operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SigmaToT {
    /// numpy values (Euler's custom `sigmas`): `(1 - w) * low_idx` multiplies a float32 array
    /// by an int64 array, which numpy promotes to float64.
    Numpy,
    /// 0-d torch tensors (KDPM2's interpolated sigmas, with torch `log_sigmas`): numpy hands
    /// every result back as a tensor, so the index arithmetic stays float32 (int64 tensors
    /// are converted to float32 before each product; no fused multiply-add).
    Torch,
}

/// `_sigma_to_t` for a float32 sigma: the log is numpy's float32 SIMD `log` and the weight is
/// float32; `kind` says how the final interpolation is typed.
pub(crate) fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32], kind: SigmaToT) -> f64 {
    let n = log_sigmas.len();
    if n < 2 || sigma.is_nan() {
        return f64::NAN;
    }
    let log_sigma = numpy_log_f32(sigma.max(1e-10));
    let mut count = 0usize;
    let mut best = 0usize;
    let mut best_idx = 0usize;
    for (i, ls) in log_sigmas.iter().enumerate() {
        if log_sigma - *ls >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            best_idx = i;
        }
    }
    let low_idx = best_idx.min(n - 2);
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    match kind {
        SigmaToT::Numpy => {
            f64::from(1.0 - w) * low_idx as f64 + f64::from(w) * (low_idx + 1) as f64
        }
        SigmaToT::Torch => f64::from((1.0 - w) * low_idx as f32 + w * (low_idx + 1) as f32),
    }
}

/// `torch.lerp(start, end, 0.5)` on the CPU: `end - (end - start) * 0.5`.
pub(crate) fn lerp_half(start: f32, end: f32) -> f32 {
    end - (end - start) * 0.5
}

/// diffusers' `repeat_interleave` layout of second-order schedulers:
/// `cat([v[:1], v[1:].repeat_interleave(2), v[-1:]])`.
pub(crate) fn interleave_pairs(v: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(v.len() * 2);
    if let Some(first) = v.first() {
        out.push(*first);
    }
    for x in v.iter().skip(1) {
        out.push(*x);
        out.push(*x);
    }
    if let Some(last) = v.last() {
        out.push(*last);
    }
    out
}

/// The x0 of the k-diffusion schedulers for a σ: eps x − σ·ε, v-prediction, or the output.
pub(crate) fn k_x0<const D: usize>(
    prediction: Prediction,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    sigma: f32,
) -> Tensor<D> {
    match prediction {
        Prediction::Sample => model_output,
        Prediction::VPrediction => {
            model_output.mul_scalar(-sigma / (sigma * sigma + 1.0).sqrt())
                + sample.div_scalar(sigma * sigma + 1.0)
        }
        _ => sample - model_output.mul_scalar(sigma),
    }
}

/// The v-prediction x0 of the Euler schedulers for a σ in a pipeline's dtype: the product
/// with the (half-precision) `model_output` is rounded to `dtype`, the rest is float32, as
/// torch computes `model_output * (-σ / √(σ² + 1)) + sample / (σ² + 1)` with a float32 sample.
pub(crate) fn v_prediction_x0_in<const D: usize>(
    model_output: Tensor<D>,
    sample: Tensor<D>,
    sigma: f32,
    dtype: crate::NoiseDtype,
) -> Tensor<D> {
    crate::precision::round_tensor(
        model_output.mul_scalar(-sigma / (sigma * sigma + 1.0).sqrt()),
        dtype,
    ) + sample.div_scalar(sigma * sigma + 1.0)
}

/// Builds the betas and `alphas_cumprod` of the k-diffusion schedulers without zero-SNR.
pub(crate) fn k_alphas(
    class: &'static str,
    schedule: &str,
    beta_start: f64,
    beta_end: f64,
    n: usize,
    trained: Option<&[f64]>,
    extra_schedules: &[&str],
) -> Result<Vec<f32>, SchedulerError> {
    Ok(alphas_cumprod(&make_betas(
        class,
        schedule,
        beta_start,
        beta_end,
        n,
        trained,
        extra_schedules,
    )?))
}

/// diffusers' layout of the Heun-like second-order schedulers (Heun, DPMSolverSDE):
/// `cat([v[:1], v[1:-1].repeat_interleave(2), v[-1:]])`, where `v` already ends in the
/// final σ = 0.
pub(crate) fn interleave_inner(v: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(v.len() * 2);
    if let Some(first) = v.first() {
        out.push(*first);
    }
    if let Some(inner) = v.get(1..v.len().saturating_sub(1)) {
        for x in inner {
            out.push(*x);
            out.push(*x);
        }
    }
    if v.len() > 1
        && let Some(last) = v.last()
    {
        out.push(*last);
    }
    out
}

/// `init_noise_sigma` of the k-diffusion style schedulers: max σ for linspace / trailing
/// spacing, √(max σ² + 1) for leading.
pub(crate) fn k_init_noise_sigma(sigmas: &[f32], spacing: Spacing) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        Spacing::Linspace | Spacing::Trailing => max,
        Spacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// The σ of each `add_noise` timestep, found by the same index rules as `step` (begin
/// index, or the timestep's position in `schedule`).
pub(crate) fn noise_sigmas(
    index: &crate::StepIndex,
    schedule: &[f64],
    sigmas: &[f32],
    timesteps: &[f64],
) -> Result<Vec<f32>, SchedulerError> {
    index
        .noise_indices(schedule, timesteps)?
        .into_iter()
        .map(|i| sigma_at(sigmas, i))
        .collect()
}

/// `add_noise` of the k-diffusion style schedulers: x0 + z·σ per batch entry.
pub(crate) fn k_add_noise<const D: usize>(
    index: &crate::StepIndex,
    schedule: &[f64],
    sigmas: &[f32],
    original: Tensor<D>,
    noise: Tensor<D>,
    timesteps: &[f64],
) -> Result<Tensor<D>, SchedulerError> {
    let sigmas = noise_sigmas(index, schedule, sigmas, timesteps)?;
    crate::per_batch(original, noise, &sigmas, |x, z, s| x + z.mul_scalar(s))
}

/// `sigmas[i]`, or a typed error when a step runs past the schedule (shared by the k-diffusion
/// style schedulers, which all index their sigma table by step).
pub(crate) fn sigma_at(sigmas: &[f32], i: usize) -> Result<f32, crate::SchedulerError> {
    sigmas
        .get(i)
        .copied()
        .ok_or(crate::SchedulerError::StepOutOfRange {
            index: i,
            len: sigmas.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_ppf_matches_scipy() {
        // scipy.stats.beta.ppf(q, 0.6, 0.6), scipy 1.17.1; tolerance 1e-13 absolute.
        for (q, want) in [
            (0.999, 0.9999814412614826),
            (0.9, 0.9604155944112192),
            (0.75, 0.824319621347305),
            (0.5, 0.5000000000000001),
            (0.3, 0.23401700387523572),
            (0.1, 0.03958440558878085),
            (0.01, 0.0008612388215429059),
            (1e-6, 1.8558824624053043e-10),
        ] {
            let got = beta_ppf_06(q);
            assert!((got - want).abs() <= 1e-13, "q {q}: {got} vs {want}");
        }
    }

    #[test]
    fn scaled_linear_betas_give_sd_alphas_cumprod() {
        let betas = make_betas("t", "scaled_linear", 0.00085, 0.012, 1000, None, &[]).unwrap();
        let ac = alphas_cumprod(&betas);
        // Reference values from the spec (float32 torch).
        assert_eq!(ac[999], 0.004_660_095);
        let s = train_sigmas(&ac);
        assert_eq!(s[999], 14.614_647);
        // torch gives 0.029167533 (the spec rounds it to ...535), see the Euler fixture cases.
        assert_eq!(s[0], 0.029_167_533);
    }
}
