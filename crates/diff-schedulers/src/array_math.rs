//! numpy and torch array operations reproduced on host vectors, bit for bit: `linspace`,
//! `arange`, `round`, `cumprod`, `lerp`, the `repeat_interleave` layouts of the second-order
//! schedulers, and reading a tensor's values.

use crate::SchedulerError;
use burn::tensor::Tensor;

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

/// The flat f32 values of a tensor.
pub(crate) fn tensor_values<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>, SchedulerError> {
    t.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| SchedulerError::Shape(format!("cannot read tensor values: {e:?}")))
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
