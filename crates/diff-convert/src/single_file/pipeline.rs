//! The `model_index.json` diffusers writes after `from_single_file`, for the Stable Diffusion
//! pipeline classes.
//!
//! diffusers does not copy the config folder's `model_index.json`: it builds the pipeline class
//! from it (`extract_init_dict`), skips the safety checker (`SINGLE_FILE_OPTIONAL_COMPONENTS`),
//! leaves optional components that are absent or `[null, null]` at `None`, and `save_pretrained`
//! writes what the class registered: every `__init__` component (`[null, null]` when `None`) and
//! the config parameters it registers, with the folder's value or the `__init__` default. A
//! config folder downloaded from an old Hub repo (`stable-diffusion-v1-5`: no `image_encoder`, no
//! `requires_safety_checker`, a safety checker entry) thus re-saves with all of those filled in.

use crate::ConvertError;
use serde_json::{Map, Value};
use std::path::Path;

/// Components diffusers' `from_single_file` never loads (`SINGLE_FILE_OPTIONAL_COMPONENTS`).
pub const SINGLE_FILE_SKIPPED: [&str; 1] = ["safety_checker"];

/// A pipeline class: its `__init__` components, which of them may be `None`, and the config
/// parameters it registers with their `__init__` defaults.
#[derive(Debug, Clone, Copy)]
pub struct PipelineSpec {
    /// The class name (`_class_name`).
    pub class: &'static str,
    /// Every component `__init__` takes.
    pub components: &'static [&'static str],
    /// `_optional_components`.
    pub optional: &'static [&'static str],
    /// Registered config parameters and their defaults.
    pub params: &'static [(&'static str, bool)],
}

const SD_COMPONENTS: &[&str] = &[
    "vae",
    "text_encoder",
    "tokenizer",
    "unet",
    "scheduler",
    "safety_checker",
    "feature_extractor",
    "image_encoder",
];
const SD_OPTIONAL: &[&str] = &["safety_checker", "feature_extractor", "image_encoder"];
const SD_PARAMS: &[(&str, bool)] = &[("requires_safety_checker", true)];
const XL_COMPONENTS: &[&str] = &[
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "unet",
    "scheduler",
    "image_encoder",
    "feature_extractor",
];
const XL_OPTIONAL: &[&str] = &[
    "tokenizer",
    "tokenizer_2",
    "text_encoder",
    "text_encoder_2",
    "image_encoder",
    "feature_extractor",
];

/// The pipeline classes whose layout this crate knows (diffusers 0.42.1 `__init__`s).
pub const PIPELINES: &[PipelineSpec] = &[
    PipelineSpec {
        class: "StableDiffusionPipeline",
        components: SD_COMPONENTS,
        optional: SD_OPTIONAL,
        params: SD_PARAMS,
    },
    PipelineSpec {
        class: "StableDiffusionImg2ImgPipeline",
        components: SD_COMPONENTS,
        optional: SD_OPTIONAL,
        params: SD_PARAMS,
    },
    PipelineSpec {
        class: "StableDiffusionInpaintPipeline",
        components: SD_COMPONENTS,
        optional: SD_OPTIONAL,
        params: SD_PARAMS,
    },
    PipelineSpec {
        class: "StableDiffusionXLPipeline",
        components: XL_COMPONENTS,
        optional: XL_OPTIONAL,
        params: &[("force_zeros_for_empty_prompt", true)],
    },
    PipelineSpec {
        class: "StableDiffusionXLImg2ImgPipeline",
        components: XL_COMPONENTS,
        optional: XL_OPTIONAL,
        params: &[
            ("requires_aesthetics_score", false),
            ("force_zeros_for_empty_prompt", true),
        ],
    },
    PipelineSpec {
        class: "StableDiffusionXLInpaintPipeline",
        components: XL_COMPONENTS,
        optional: XL_OPTIONAL,
        params: &[
            ("requires_aesthetics_score", false),
            ("force_zeros_for_empty_prompt", true),
        ],
    },
];

/// The spec of `class`, if this crate knows it.
pub fn spec(class: &str) -> Option<&'static PipelineSpec> {
    PIPELINES.iter().find(|p| p.class == class)
}

/// One `model_index.json` component entry: `Some((library, class))` or `None` for `[null, null]`.
fn entry(value: Option<&Value>) -> Option<(String, String)> {
    match value.and_then(Value::as_array).map(Vec::as_slice) {
        Some([Value::String(lib), Value::String(class)]) => Some((lib.clone(), class.clone())),
        _ => None,
    }
}

/// The pipeline after `from_single_file`: the `model_index.json` to write (without
/// `_diffusers_version`) and the components to load, as `(name, class)`.
pub struct PlannedIndex {
    /// The index to write.
    pub index: Map<String, Value>,
    /// Components to convert or copy, by folder name, with their class.
    pub load: Vec<(String, String)>,
}

/// Plans the pipeline `class` (the config folder's `_class_name` unless overridden) from the
/// config folder's `model_index.json` (`config`, read from `index_path`), as diffusers does.
pub fn plan(
    config: &Map<String, Value>,
    index_path: &Path,
    class: Option<&str>,
) -> Result<PlannedIndex, ConvertError> {
    let class = class
        .map(str::to_string)
        .or_else(|| {
            config
                .get("_class_name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .ok_or_else(|| ConvertError::BadJson {
            path: index_path.to_path_buf(),
            reason: "no `_class_name` (pass the pipeline class explicitly)".into(),
        })?;
    let mut index = Map::new();
    index.insert("_class_name".into(), Value::String(class.clone()));
    let mut load = Vec::new();
    let null_pair = || Value::Array(vec![Value::Null, Value::Null]);
    let Some(spec) = spec(&class) else {
        // An unknown class: keep the folder's entries (diffusers would use the class's own
        // `__init__`, which we cannot see), still skipping the safety checker.
        tracing::warn!(class = %class, "pipeline class not known; keeping the config folder's model_index entries");
        for (key, value) in config {
            if key.starts_with('_') {
                continue;
            }
            match (
                entry(Some(value)),
                SINGLE_FILE_SKIPPED.contains(&key.as_str()),
            ) {
                (Some((_, c)), false) => {
                    load.push((key.clone(), c));
                    index.insert(key.clone(), value.clone());
                }
                (Some(_), true) => {
                    index.insert(key.clone(), null_pair());
                }
                (None, _) => {
                    index.insert(key.clone(), value.clone());
                }
            }
        }
        load.sort();
        return Ok(PlannedIndex { index, load });
    };
    for name in spec.components {
        let loaded = entry(config.get(*name)).filter(|_| !SINGLE_FILE_SKIPPED.contains(name));
        match loaded {
            Some((lib, c)) => {
                index.insert(
                    (*name).into(),
                    Value::Array(vec![Value::String(lib), Value::String(c.clone())]),
                );
                load.push(((*name).into(), c));
            }
            None if spec.optional.contains(name) => {
                index.insert((*name).into(), null_pair());
            }
            None => {
                return Err(ConvertError::BadJson {
                    path: index_path.to_path_buf(),
                    reason: format!(
                        "{class} needs the component `{name}`, but the config's model_index.json has {}",
                        if config.contains_key(*name) {
                            "[null, null] for it"
                        } else {
                            "no entry for it"
                        }
                    ),
                });
            }
        }
    }
    for (param, default) in spec.params {
        let value = match config.get(*param) {
            Some(v @ Value::Bool(_)) => v.clone(),
            Some(other) => {
                return Err(ConvertError::BadJson {
                    path: index_path.to_path_buf(),
                    reason: format!("`{param}` must be true or false, got {other}"),
                });
            }
            None => Value::Bool(*default),
        };
        index.insert((*param).into(), value);
    }
    // diffusers loads components in name order (`sorted(init_dict.items())`), so the first
    // failing component is the same in both.
    load.sort();
    Ok(PlannedIndex { index, load })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn hub_style_index_gets_init_defaults_and_no_safety_checker() {
        let config = object(json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.6.0",
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "stray_key": 1
        }));
        let plan = plan(&config, Path::new("model_index.json"), None).unwrap();
        assert_eq!(plan.index["safety_checker"], json!([null, null]));
        assert_eq!(plan.index["image_encoder"], json!([null, null]));
        assert_eq!(plan.index["requires_safety_checker"], json!(true));
        assert!(!plan.index.contains_key("stray_key"));
        let names: Vec<&str> = plan.load.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "feature_extractor",
                "scheduler",
                "text_encoder",
                "tokenizer",
                "unet",
                "vae"
            ]
        );
    }

    #[test]
    fn missing_required_component_names_the_class_and_component() {
        let config = object(json!({
            "_class_name": "StableDiffusionXLPipeline",
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": [null, null]
        }));
        let err = plan(&config, Path::new("model_index.json"), None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("StableDiffusionXLPipeline") && err.contains("`vae`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_class_keeps_the_folder_entries_but_skips_the_safety_checker() {
        let config = object(json!({
            "_class_name": "MyPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "my_flag": true
        }));
        let plan = plan(&config, Path::new("model_index.json"), None).unwrap();
        assert_eq!(plan.index["_class_name"], json!("MyPipeline"));
        assert_eq!(plan.index["safety_checker"], json!([null, null]));
        assert_eq!(plan.index["my_flag"], json!(true));
        assert_eq!(
            plan.load,
            [("unet".to_string(), "UNet2DConditionModel".to_string())]
        );
    }
}
