//! The CLI regression set of the differential sweep: command lines of `burn-diffusers generate`
//! and `schedule` run through the built binary and compared with what Python diffusers 0.42.1
//! answered for the same command (`tests/fixtures/60-cli-sweep/generate.py`, which translates
//! each command into the calls a diffusers user would make; nothing is hard-coded here).
//!
//! Tolerances (from the fixture's `cases.json`): images every pixel within 2/255 and mean
//! absolute error under 0.5/255 (NaN only where diffusers has NaN); schedules timesteps exact,
//! sigmas and init_noise_sigma within 1e-5 relative (absolute below 1); replays `prev_samples`
//! and `final` within 1e-5 relative (absolute below 1). Where diffusers raises, the CLI must exit
//! non-zero with an `error:` message, without a panic and without writing the output file.

use burn_diffusers::format::json;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/60-cli-sweep")
}

/// A float32 tensor of a safetensors file: values and shape.
fn tensor(path: &Path, name: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let view = st
        .tensor(name)
        .map_err(|e| format!("{}: `{name}`: {e}", path.display()))?;
    if view.dtype() != Dtype::F32 {
        return Err(format!(
            "{}: `{name}` is {:?}",
            path.display(),
            view.dtype()
        ));
    }
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((values, view.shape().to_vec()))
}

/// Max and mean absolute difference; an error when shapes differ or NaNs are not in the same
/// places.
fn abs_diff(
    got: &(Vec<f32>, Vec<usize>),
    want: &(Vec<f32>, Vec<usize>),
) -> Result<(f64, f64), String> {
    if got.1 != want.1 {
        return Err(format!("shape {:?}, diffusers {:?}", got.1, want.1));
    }
    let mut max = 0f64;
    let mut sum = 0f64;
    for (g, w) in got.0.iter().zip(&want.0) {
        match (g.is_nan(), w.is_nan()) {
            (true, true) => continue,
            (false, false) => {}
            _ => return Err(format!("NaN mismatch: got {g}, diffusers {w}")),
        }
        let d = (f64::from(*g) - f64::from(*w)).abs();
        max = max.max(d);
        sum += d;
    }
    Ok((max, sum / want.0.len().max(1) as f64))
}

/// Largest `|got - want| / max(|want|, 1)`.
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g == w {
                0.0
            } else {
                (g - w).abs() / w.abs().max(1.0)
            }
        })
        .fold(
            0.0,
            |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
        )
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
        .unwrap_or_default()
}

/// Runs one case; `Err` describes how the CLI differs from diffusers.
fn check(case: &Value, scratch: &Path, tol: &Value) -> Result<(), String> {
    let name = case["name"].as_str().unwrap_or("?");
    let out = scratch.join(format!("{name}.safetensors"));
    let argv: Vec<String> = case["argv"]
        .as_array()
        .ok_or("no argv")?
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap_or_default()
                .replace("{OUT}", &out.display().to_string())
        })
        .collect();
    let result = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(&argv)
        .current_dir(root())
        .output()
        .map_err(|e| format!("running the CLI: {e}"))?;
    let stderr = String::from_utf8_lossy(&result.stderr);
    if stderr.contains("panicked") {
        return Err(format!("the CLI panicked: {stderr}"));
    }
    if case["expect"] == "error" {
        if result.status.success() {
            return Err(format!(
                "diffusers raises `{}` but the CLI succeeded",
                case["diffusers_error"]
            ));
        }
        if !stderr.contains("error:") {
            return Err(format!("failed without an error message: {stderr}"));
        }
        if out.exists() {
            return Err("a failed run left an output file".into());
        }
        return Ok(());
    }
    if !result.status.success() {
        return Err(format!("the CLI failed where diffusers succeeds: {stderr}"));
    }
    let rel = tol["schedule_rel"].as_f64().unwrap_or(1e-5);
    let want_file = fixture().join(format!("{name}.safetensors"));
    match case["kind"].as_str() {
        Some("generate") => {
            let (max, mean) = abs_diff(&tensor(&out, "images")?, &tensor(&want_file, "images")?)?;
            let (tmax, tmean) = (
                tol["images_max_abs"].as_f64().unwrap_or(2.0 / 255.0),
                tol["images_mean_abs"].as_f64().unwrap_or(0.5 / 255.0),
            );
            if max > tmax || mean >= tmean {
                return Err(format!(
                    "images differ: max {:.3}/255 (tolerance {:.1}/255), mean {:.4}/255 (tolerance {:.1}/255)",
                    max * 255.0,
                    tmax * 255.0,
                    mean * 255.0,
                    tmean * 255.0
                ));
            }
        }
        _ if want_file.exists() => {
            for key in ["prev_samples", "final"] {
                let got = tensor(&out, key)?;
                let want = tensor(&want_file, key)?;
                if got.1 != want.1 {
                    return Err(format!("{key}: shape {:?}, diffusers {:?}", got.1, want.1));
                }
                let g: Vec<f64> = got.0.iter().map(|v| f64::from(*v)).collect();
                let w: Vec<f64> = want.0.iter().map(|v| f64::from(*v)).collect();
                let e = rel_err(&g, &w);
                if e > rel {
                    return Err(format!("{key}: relative error {e:e} > {rel:e}"));
                }
            }
        }
        _ => {
            let stdout = String::from_utf8_lossy(&result.stdout);
            let doc = json::loads(&stdout).map_err(|e| format!("stdout is not JSON: {e}"))?;
            let (got_t, want_t) = (floats(&doc["timesteps"]), floats(&case["timesteps"]));
            if got_t != want_t {
                return Err(format!("timesteps {got_t:?}, diffusers {want_t:?}"));
            }
            match (&doc["sigmas"], &case["sigmas"]) {
                (Value::Null, Value::Null) => {}
                (g, w) => {
                    let e = rel_err(&floats(g), &floats(w));
                    if e > rel {
                        return Err(format!(
                            "sigmas relative error {e:e} > {rel:e}: {g}, diffusers {w}"
                        ));
                    }
                }
            }
            let e = rel_err(
                &[doc["init_noise_sigma"].as_f64().unwrap_or(f64::NAN)],
                &[case["init_noise_sigma"].as_f64().unwrap_or(f64::NAN)],
            );
            if e > rel {
                return Err(format!(
                    "init_noise_sigma {}, diffusers {}",
                    doc["init_noise_sigma"], case["init_noise_sigma"]
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn cli_commands_match_python_diffusers_on_the_sweep_regression_set() {
    let text = std::fs::read_to_string(fixture().join("cases.json")).expect("cases.json");
    let meta = json::loads(&text).expect("valid cases.json");
    let cases = meta["cases"].as_array().expect("cases");
    let scratch = tempfile::tempdir().expect("temp dir");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            check(case, scratch.path(), &meta["tolerance"])
                .err()
                .map(|e| format!("{}: {e}", case["name"]))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from diffusers:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 50, "only {} cases", cases.len());
}
