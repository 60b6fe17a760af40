//! `validate ORIGINAL SAVED`: compares two diffusers pipeline folders component by component.
//!
//! For every component of the original's `model_index.json`:
//! - configs (`config.json`, `scheduler_config.json`, `preprocessor_config.json`) must hold the
//!   same JSON values, ignoring `_diffusers_version`, `_name_or_path` and transformers' `dtype` /
//!   `torch_dtype` (which a cast legitimately changes);
//! - weights (read strictly: every shard of an index must be present) must have the same names
//!   and shapes; values must be identical when the dtypes match, and when the saved copy was
//!   cast (e.g. an fp16 variant), identical to the original cast with torch's rounding. That is
//!   stricter than a tolerance and exact for a correct save: a cast is deterministic.
//!
//! This is the burn-free half of the issue's `validate`; running one forward pass of each model
//! on fixed inputs needs the burn models of `diff-models` and is not done here.

use crate::ConvertError;
use crate::cast::{SaveDtype, cast};
use crate::save::read_component_weights;
use crate::tensors::RawTensor;
use safetensors::Dtype;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The verdict for one component.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentReport {
    /// The component name (`unet`, `text_encoder`, ...).
    pub name: String,
    /// Tensors compared.
    pub tensors: usize,
    /// Tensors compared after casting the original to the saved dtype.
    pub cast: usize,
    /// Every difference found (empty: the component matches).
    pub problems: Vec<String>,
}

impl ComponentReport {
    /// Whether the component matches.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

const CONFIG_FILES: [&str; 3] = [
    "config.json",
    "scheduler_config.json",
    "preprocessor_config.json",
];
const IGNORED_KEYS: [&str; 4] = [
    "_diffusers_version",
    "_name_or_path",
    "dtype",
    "torch_dtype",
];

fn read_object(path: &Path) -> Result<Map<String, Value>, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ConvertError::BadJson {
            path: path.to_path_buf(),
            reason: "not a JSON object".into(),
        }),
    }
}

fn compare_configs(
    original: &Path,
    saved: &Path,
    problems: &mut Vec<String>,
) -> Result<(), ConvertError> {
    for file in CONFIG_FILES {
        let (a, b) = (original.join(file), saved.join(file));
        match (a.is_file(), b.is_file()) {
            (false, false) => continue,
            (true, false) => problems.push(format!("{file} is missing from the saved copy")),
            (false, true) => problems.push(format!("{file} is only in the saved copy")),
            (true, true) => {
                let (mut x, mut y) = (read_object(&a)?, read_object(&b)?);
                for k in IGNORED_KEYS {
                    x.remove(k);
                    y.remove(k);
                }
                for key in x
                    .keys()
                    .chain(y.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                {
                    let (p, q) = (x.get(key), y.get(key));
                    let same = match (p, q) {
                        (Some(p), Some(q)) => diff_format::config::same_value(p, q),
                        _ => false,
                    };
                    if !same {
                        problems.push(format!(
                            "{file}: `{key}` is {p:?} in the original, {q:?} in the saved copy"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn compare_tensor(name: &str, original: &RawTensor, saved: &RawTensor) -> Result<bool, String> {
    if original.shape != saved.shape {
        return Err(format!(
            "`{name}`: shape {:?} vs {:?}",
            original.shape, saved.shape
        ));
    }
    if original.dtype == saved.dtype {
        return if original.data == saved.data {
            Ok(false)
        } else {
            Err(format!(
                "`{name}`: values differ ({:?}, exact comparison)",
                original.dtype
            ))
        };
    }
    let to = match saved.dtype {
        Dtype::F32 => SaveDtype::F32,
        Dtype::F16 => SaveDtype::F16,
        Dtype::BF16 => SaveDtype::BF16,
        other => return Err(format!("`{name}`: dtype {:?} vs {other:?}", original.dtype)),
    };
    let expected = cast(name, original.clone(), to).map_err(|e| e.to_string())?;
    if expected.data == saved.data {
        Ok(true)
    } else {
        Err(format!(
            "`{name}`: values differ from the original cast {:?} -> {:?} (exact comparison after torch's rounding)",
            original.dtype, saved.dtype
        ))
    }
}

/// Compares one component folder (`variant` selects the saved weights; the original is read
/// with its own variant files if any, else the plain ones).
pub fn validate_component(
    name: &str,
    original: &Path,
    saved: &Path,
    variant: Option<&str>,
) -> Result<ComponentReport, ConvertError> {
    let mut report = ComponentReport {
        name: name.to_string(),
        tensors: 0,
        cast: 0,
        problems: Vec::new(),
    };
    if !saved.is_dir() {
        report
            .problems
            .push("the component folder is missing from the saved copy".into());
        return Ok(report);
    }
    compare_configs(original, saved, &mut report.problems)?;
    let a = read_component_weights(original, None)?;
    let b = match read_component_weights(saved, variant)? {
        Some(w) => Some(w),
        None if variant.is_some() => read_component_weights(saved, None)?,
        None => None,
    };
    match (a, b) {
        (None, None) => {}
        (Some(_), None) => report
            .problems
            .push("weights are missing from the saved copy".into()),
        (None, Some(_)) => report
            .problems
            .push("the saved copy has weights the original lacks".into()),
        (Some((_, a)), Some((_, b))) => {
            let b: BTreeMap<String, RawTensor> = b.into_iter().collect();
            for (k, t) in &a {
                match b.get(k) {
                    None => report
                        .problems
                        .push(format!("`{k}` is missing from the saved copy")),
                    Some(s) => match compare_tensor(k, t, s) {
                        Ok(was_cast) => {
                            report.tensors += 1;
                            report.cast += usize::from(was_cast);
                        }
                        Err(p) => report.problems.push(p),
                    },
                }
            }
            let a_keys: std::collections::BTreeSet<&String> = a.iter().map(|(k, _)| k).collect();
            for k in b.keys().filter(|k| !a_keys.contains(k)) {
                report
                    .problems
                    .push(format!("`{k}` is only in the saved copy"));
            }
        }
    }
    Ok(report)
}

/// Compares two pipeline folders; one report per component of the original's `model_index.json`.
pub fn validate_pipeline(
    original: &Path,
    saved: &Path,
    variant: Option<&str>,
) -> Result<Vec<ComponentReport>, ConvertError> {
    let index = read_object(&original.join("model_index.json"))?;
    let saved_index = read_object(&saved.join("model_index.json"))?;
    let mut reports = Vec::new();
    let mut top = ComponentReport {
        name: "model_index.json".into(),
        tensors: 0,
        cast: 0,
        problems: Vec::new(),
    };
    for (k, v) in &index {
        if IGNORED_KEYS.contains(&k.as_str()) {
            continue;
        }
        if saved_index.get(k) != Some(v) {
            top.problems.push(format!(
                "`{k}` is {v} in the original, {:?} in the saved copy",
                saved_index.get(k)
            ));
        }
    }
    reports.push(top);
    for (name, v) in &index {
        let is_component = !name.starts_with('_')
            && matches!(
                v.as_array().map(Vec::as_slice),
                Some([Value::String(_), Value::String(_)])
            );
        if !is_component || name.contains(['/', '\\']) || name == ".." {
            continue;
        }
        reports.push(validate_component(
            name,
            &original.join(name),
            &saved.join(name),
            variant,
        )?);
    }
    Ok(reports)
}
