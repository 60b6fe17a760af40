//! Interpolation and lookup: numpy's `interp` over the training sigmas, `_sigma_to_t` (σ back
//! to a fractional timestep, float64 and float32 variants) and `index_for_timestep`.

use crate::SchedulerError;
use crate::float_kernels::numpy_log_f32;

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
