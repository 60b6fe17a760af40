//! Helpers shared by this crate's fixture tests: loading a committed fixture, reading JSON
//! number arrays, and the error measures every parity comparison states its tolerance in.
//!
//! Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

use burn::tensor::{Tensor, TensorData};
use diff_format::json::as_py_float;
use diff_schedulers::{NoiseDtype, Scheduler, StepOptions, TorchGenerator};
use serde_json::{Map, Value};

/// Reads `tests/fixtures/<relative>` (from the workspace root) as JSON; Python's json writes
/// non-finite floats as `-Infinity` / `NaN`, which diff-format's reader accepts.
pub fn fixture_json(relative: &str) -> Value {
    let path = format!(
        "{}/../../tests/fixtures/{relative}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {path} is committed: {e}"));
    diff_format::json::loads(&text).unwrap_or_else(|e| panic!("fixture {path} is valid JSON: {e}"))
}

/// A JSON array of numbers as `f64` (non-numbers skipped; not an array: empty).
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// A JSON array of unsigned integers as `u64` (others skipped; not an array: empty).
pub fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// max |a - b| / max(1, max |b|).
pub fn scaled_error(rust: &[f64], python: &[f64]) -> f64 {
    assert_eq!(rust.len(), python.len(), "length differs");
    let scale = python.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    rust.iter()
        .zip(python)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale
}

/// max |a - b| / |b| element-wise (|b| floored at 1e-30), for schedule tables.
pub fn relative_error(rust: &[f64], python: &[f64]) -> f64 {
    assert_eq!(rust.len(), python.len(), "length differs");
    rust.iter()
        .zip(python)
        .map(|(a, b)| {
            if a == b {
                0.0
            } else {
                (a - b).abs() / b.abs().max(1e-30)
            }
        })
        .fold(0.0, f64::max)
}

/// A tensor's values as `f64`.
pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data()
        .convert::<f32>()
        .iter::<f32>()
        .map(f64::from)
        .collect()
}

/// The keys of the Python config (init keys and kept keys) whose values ours does not
/// equal. Numbers compare as floats (NaN equal to NaN); Python's `-Infinity` arrives as
/// diff-format's marker.
pub fn config_mismatches(rust: &Map<String, Value>, python: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, pv) in python {
        let rv = rust.get(k).unwrap_or(&Value::Null);
        let same = match (as_py_float(rv), as_py_float(pv)) {
            (Some(a), Some(b)) => a == b || (a.is_nan() && b.is_nan()),
            _ => rv == pv,
        };
        if !same {
            out.push(format!("{k}: rust {rv} vs python {pv}"));
        }
    }
    out
}

/// The fixture generators' seed-driven denoising loop (no stored model outputs): at step `i`
/// the "model" returns `0.3·scale_model_input(x) + 0.7·randn(seed 1000 + i)`, then `step`
/// runs with `options` and `generator`. Returns the sample after the first step and the final
/// sample; errors name the case, the step and the call.
pub fn harness_loop(
    name: &str,
    sched: &mut Scheduler,
    timesteps: &[f64],
    mut x: Tensor<4>,
    options: &StepOptions,
    mut generator: Option<&mut [TorchGenerator]>,
) -> Result<(Option<Vec<f64>>, Tensor<4>), String> {
    let (shape, device) = (x.dims(), x.device());
    let numel: usize = shape.iter().product();
    let mut first = None;
    for (i, t) in timesteps.iter().enumerate() {
        let inp = sched
            .scale_model_input(x.clone(), *t)
            .map_err(|e| format!("{name}: scale {i}: {e}"))?;
        let base = TorchGenerator::new(1000 + i as u64).randn(numel, NoiseDtype::Float32);
        let base = Tensor::<4>::from_data(TensorData::new(base, shape), &device);
        let model_output = inp.mul_scalar(0.3) + base.mul_scalar(0.7);
        x = sched
            .step(model_output, *t, x, options, generator.as_deref_mut())
            .map_err(|e| format!("{name}: step {i}: {e}"))?
            .prev_sample;
        if first.is_none() {
            first = Some(values(&x));
        }
    }
    Ok((first, x))
}
