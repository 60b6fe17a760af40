//! `validate ORIGINAL SAVED`: compares two diffusers pipeline folders component by component.
//!
//! For every component of the original's `model_index.json`:
//! - configs (`config.json`, `scheduler_config.json`, `preprocessor_config.json`) must hold the
//!   same JSON values, ignoring `_diffusers_version`, `_name_or_path` and transformers' `dtype` /
//!   `torch_dtype` (which a cast legitimately changes); CLIP model and image-processor configs
//!   are compared as transformers 5.23 re-serialises them (`crate::transformers_config`), so an
//!   original written by an old transformers matches its faithful re-save, and a legacy
//!   `CLIPFeatureExtractor` entry of `model_index.json` matches the `CLIPImageProcessor` one;
//!   diffusers configs of the original are compared with their `__init__` defaults filled in,
//!   and scheduler and UNet configs as the Stable Diffusion pipelines' `__init__` loads them
//!   (`steps_offset`, `clip_sample`, `skip_prk_steps`, `sample_size` fixed up);
//! - weights (read strictly: every shard of an index must be present) must have the same names
//!   and shapes; values must be identical when the dtypes match, and when the saved copy was
//!   cast (e.g. an fp16 variant), identical to the original cast with torch's rounding. That is
//!   stricter than a tolerance and exact for a correct save: a cast is deterministic.
//!
//! This is the burn-free half of `validate`; the forward pass of each model on fixed inputs is
//! `diff_pipelines::validate`, and the command (the functional tokenizer check too) is the
//! diff-validate crate, which calls this first and uses [`ComponentReport::narrowed_to`] to
//! pick the forward tolerance.
//!
//! # Tokenizer folders
//! Tokenizer folders have no `config.json` and are not compared here; diff-pipelines compares
//! them by what they do (the ids of fixed prompts), because two layouts are faithful:
//! - **ours**: [`crate::save`] copies the original files unchanged (`vocab.json`, `merges.txt`,
//!   `special_tokens_map.json`, `tokenizer_config.json`, or `tokenizer.json` when that is what
//!   the original has);
//! - **transformers 5.23's** `CLIPTokenizer.save_pretrained` (what `pipe.save_pretrained`
//!   calls), measured on tiny-sd and tiny-sdxl: it writes only `tokenizer.json` (3,642,073 bytes
//!   for the CLIP vocabulary, the fast tokenizer converted from vocab and merges, with the EOS
//!   added token turned to `normalized: false`) and a rewritten `tokenizer_config.json`
//!   (sorted keys, special tokens as plain strings, `name_or_path` and
//!   `special_tokens_map_file` dropped, `backend: "tokenizers"` added), and drops `vocab.json`,
//!   `merges.txt` and `special_tokens_map.json`.
//!
//! We copy rather than reproduce those bytes because (1) they are not a function of the
//! tokenizer: `tokenizer_config.json` records transformers' loading state, `"is_local": true`
//! and `"local_files_only"`, which is `false` for a normal load and `true` under
//! `HF_HUB_OFFLINE=1` (both measured), so the same pipeline saves to different bytes; (2) the
//! rewritten folder no longer loads with transformers 4's slow `CLIPTokenizer`, the class
//! `model_index.json` names (transformers 4.57.1: `TypeError: expected str, bytes or
//! os.PathLike object, not NoneType`, since `vocab.json` is gone), while the copied files load
//! in transformers 4 and 5 alike; (3) both layouts give transformers 5.23's CLIPTokenizer the
//! same ids (`tests/fixtures/52-validate`). Everything else a save writes stays byte-identical
//! to diffusers.

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
    /// The narrowest dtype a tensor was cast to with a loss of precision (f32 -> f16 or bf16,
    /// f16 <-> bf16); `None` when every tensor is bit-identical or a lossless up-cast (f16 ->
    /// f32), i.e. when the models must compute bit-identical outputs.
    pub narrowed_to: Option<Dtype>,
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

/// transformers 5.23 also records the load dtype inside the sub-configs of a composite config
/// (`text_config.dtype`, `vision_config.dtype` of the safety checker's `CLIPConfig`) when it
/// re-saves a model loaded from a config without them, so diffusers' own save of an SD 1.x
/// pipeline differs there from the original; like the top-level `dtype`, it describes the
/// loading, not the model.
fn strip_sub_config_dtypes(map: &mut Map<String, Value>) {
    for value in map.values_mut() {
        if let Value::Object(sub) = value {
            sub.remove("dtype");
            sub.remove("torch_dtype");
        }
    }
}

/// A CLIP model config or `CLIPImageProcessor` config as transformers 5.23 re-serialises it
/// ([`crate::transformers_config`]): an original written by an older transformers (4.22's full
/// dumps, legacy `*_config_dict`, integer sizes) is compared in the form a faithful save writes.
fn as_transformers_writes(
    map: Map<String, Value>,
    file: &str,
    path: &Path,
) -> Result<Map<String, Value>, ConvertError> {
    use crate::transformers_config as tc;
    if file == "config.json" && tc::is_supported_model_config(&map) {
        return tc::resave_model_config(map, None, None, path);
    }
    if file == "preprocessor_config.json"
        && tc::image_processor_class(&map).is_some_and(tc::is_supported_image_processor)
    {
        return tc::resave_image_processor_config(map, path);
    }
    Ok(map)
}

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

/// What a faithful save does to an original config before writing it (see
/// [`compare_configs_with`]).
type ConfigFix<'a> = &'a dyn Fn(&str, &mut Map<String, Value>);

#[cfg(test)]
fn compare_configs(
    original: &Path,
    saved: &Path,
    problems: &mut Vec<String>,
) -> Result<(), ConvertError> {
    compare_configs_with(original, saved, problems, &|_, _| {})
}

/// Compares the config files of two component folders, with `fix` applied to each original
/// config (by file name) first.
fn compare_configs_with(
    original: &Path,
    saved: &Path,
    problems: &mut Vec<String>,
    fix: ConfigFix<'_>,
) -> Result<(), ConvertError> {
    for file in CONFIG_FILES {
        let (a, b) = (original.join(file), saved.join(file));
        match (a.is_file(), b.is_file()) {
            (false, false) => continue,
            (true, false) => problems.push(format!("{file} is missing from the saved copy")),
            (false, true) => problems.push(format!("{file} is only in the saved copy")),
            (true, true) => {
                let (mut x, mut y) = (read_object(&a)?, read_object(&b)?);
                x = as_transformers_writes(x, file, &a)?;
                // diffusers configs as loaded: every `__init__` default filled in (an old
                // original lacks keys a save writes); left as they are if they do not parse.
                if x.contains_key("_diffusers_version") {
                    x = crate::save::fill_defaults(x.clone(), &a).unwrap_or(x);
                }
                fix(file, &mut x);
                y = as_transformers_writes(y, file, &b)?;
                for k in IGNORED_KEYS {
                    x.remove(k);
                    y.remove(k);
                }
                strip_sub_config_dtypes(&mut x);
                strip_sub_config_dtypes(&mut y);
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

/// Whether casting `from` to `to` can change a value.
fn is_lossy(from: Dtype, to: Dtype) -> bool {
    matches!(
        (from, to),
        (Dtype::F64, Dtype::F32 | Dtype::F16 | Dtype::BF16)
            | (Dtype::F32, Dtype::F16 | Dtype::BF16)
            | (Dtype::F16, Dtype::BF16)
            | (Dtype::BF16, Dtype::F16)
    )
}

/// The wider of two tolerance-deciding dtypes: bf16 (8 mantissa bits) over f16 (11) over f32.
fn coarser(a: Option<Dtype>, b: Dtype) -> Option<Dtype> {
    let rank = |d: Dtype| match d {
        Dtype::BF16 => 3,
        Dtype::F16 => 2,
        _ => 1,
    };
    match a {
        Some(a) if rank(a) >= rank(b) => Some(a),
        _ => Some(b),
    }
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
    validate_component_with(name, original, saved, variant, &|_, _| {})
}

fn validate_component_with(
    name: &str,
    original: &Path,
    saved: &Path,
    variant: Option<&str>,
    fix: ConfigFix<'_>,
) -> Result<ComponentReport, ConvertError> {
    let mut report = ComponentReport {
        name: name.to_string(),
        tensors: 0,
        cast: 0,
        narrowed_to: None,
        problems: Vec::new(),
    };
    if !saved.is_dir() {
        report
            .problems
            .push("the component folder is missing from the saved copy".into());
        return Ok(report);
    }
    compare_configs_with(original, saved, &mut report.problems, fix)?;
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
                            if was_cast && is_lossy(t.dtype, s.dtype) {
                                report.narrowed_to = coarser(report.narrowed_to, s.dtype);
                            }
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
        narrowed_to: None,
        problems: Vec::new(),
    };
    for (k, v) in &index {
        if IGNORED_KEYS.contains(&k.as_str()) {
            continue;
        }
        // A faithful save renames a legacy class entry as diffusers does (`save::saved_index_entry`).
        if saved_index.get(k) != Some(v)
            && saved_index.get(k) != Some(&crate::save::saved_index_entry(v))
        {
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
        // The Stable Diffusion pipelines' `__init__` rewrites outdated scheduler and UNet
        // configs, so a faithful save differs there from the original (`save::apply_init_fixes`);
        // the original is compared as loaded.
        let class = index
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let fix = |file: &str, map: &mut Map<String, Value>| match (name.as_str(), file) {
            ("scheduler", "scheduler_config.json") => {
                crate::save::init_fix_scheduler(class, map);
            }
            ("unet", "config.json") => {
                let version = map
                    .get("_diffusers_version")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                crate::save::init_fix_unet(class, version.as_deref(), map);
            }
            _ => {}
        };
        reports.push(validate_component_with(
            name,
            &original.join(name),
            &saved.join(name),
            variant,
            &fix,
        )?);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_config() -> Map<String, Value> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-sd/safety_checker/config.json");
        read_object(&path).unwrap()
    }

    fn compare(edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<String> {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let original = fixture_config();
        let mut saved = original.clone();
        edit(&mut saved);
        std::fs::write(a.join("config.json"), Value::Object(original).to_string()).unwrap();
        std::fs::write(b.join("config.json"), Value::Object(saved).to_string()).unwrap();
        let mut problems = Vec::new();
        compare_configs(&a, &b, &mut problems).unwrap();
        problems
    }

    /// diffusers 0.42.1 + transformers 5.23's own re-save of tiny-sd adds `"dtype": "float32"`
    /// to the safety checker's `text_config` and `vision_config` (measured); that is accepted,
    /// a changed sub-config value is not.
    #[test]
    fn sub_config_dtype_written_by_transformers_is_ignored_but_sub_config_values_are_compared() {
        let problems = compare(|c| {
            for sub in ["text_config", "vision_config"] {
                c.get_mut(sub)
                    .and_then(Value::as_object_mut)
                    .unwrap()
                    .insert("dtype".into(), Value::from("float32"));
            }
        });
        assert!(problems.is_empty(), "{problems:?}");
        let problems = compare(|c| {
            c.get_mut("vision_config")
                .and_then(Value::as_object_mut)
                .unwrap()
                .insert("image_size".into(), Value::from(64));
        });
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("vision_config"), "{problems:?}");
    }
}
