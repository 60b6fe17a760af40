//! transformers 5.23's re-serialisation of the configs of the components diffusers' Stable
//! Diffusion pipelines take from transformers: `CLIPTextModel` / `CLIPTextModelWithProjection`
//! (`clip_text_model`), `CLIPVisionModelWithProjection` (`clip_vision_model`), the safety
//! checker's `CLIPConfig` (`clip`) and `CLIPImageProcessor`'s `preprocessor_config.json`.
//!
//! # Why
//! Hub repos carry configs written by the transformers of their day (SD 1.x: 4.22, with a
//! `CLIPConfig` dumped in full and the legacy `text_config_dict` / `vision_config_dict`; SD 2.x:
//! 4.25; SDXL: 4.3x). `pipe.save_pretrained` with transformers 5.23 does not copy them: it loads
//! each config into its class and writes `to_json_string(use_diff=True)`. [`resave_model_config`]
//! reproduces that (from `configuration_utils.py` and `models/clip/configuration_clip.py`):
//! - **Loading** (`__init__` + `__post_init__`): every dataclass field of the class takes the JSON
//!   value or its default (so fields missing from an old file appear with their default, e.g.
//!   `projection_dim: 512` in a 4.22 text config); `torch_dtype` becomes `dtype`; generation
//!   parameters (`max_length`, `top_k`, ...: `GenerationConfig._get_default_generation_params`)
//!   are dropped; `id2label` keys become ints and a missing `id2label` becomes
//!   `{0: LABEL_0, 1: LABEL_1}` (with `label2id` to match); `_commit_hash`, `name_or_path`,
//!   `attn_implementation` are dropped; any other key is kept as an attribute.
//! - **`CLIPConfig`'s legacy dicts**: `text_config_dict` is turned into a full `CLIPTextConfig`
//!   dict (its defaults included) which *overwrites* `text_config` key by key (hence
//!   `bos_token_id: 49406` where a 4.22 dump said `0`); likewise `vision_config_dict`.
//! - **Loading the model** sets `dtype` on the config *and on every sub-config* to the dtype the
//!   weights are loaded in; saving sets `architectures` to the model class and `dtype` to the
//!   weights' dtype ([`load_dtype`] gives that dtype when the caller asks for none: transformers
//!   5's `dtype="auto"`, the config's `dtype` / `torch_dtype`).
//! - **Writing** (`to_diff_dict`): a key is written unless it is one of `PreTrainedConfig`'s own
//!   (`architectures`, `return_dict`, `id2label`, ...) with its default value; so every field of
//!   the CLIP classes is written. Sub-configs are written the same way against their class
//!   defaults, plus their `model_type`; they carry no `transformers_version`. `_name_or_path` is
//!   never written, `transformers_version` is `"5.23.0"`, keys are sorted, floats are Python's.
//!   Values compare as Python compares them (`0 == 0.0 == False`).
//!
//! [`resave_image_processor_config`] does the same for `ImageProcessingMixin` /
//! `BaseImageProcessor` (`image_processing_base.py`, `image_processing_utils.py`) and
//! `CLIPImageProcessor` (`models/clip/image_processing_clip.py`): `feature_extractor_type` and
//! `processor_class` dropped, every valid image-processor argument set from the file or the class
//! default (`None`s dropped), `size` / `crop_size` turned into size dicts (`224` becomes
//! `{"shortest_edge": 224}` for `size`, `{"height": 224, "width": 224}` for `crop_size`),
//! `image_processor_type: "CLIPImageProcessor"` (also for a `CLIPFeatureExtractor`, which
//! diffusers loads as `CLIPImageProcessor`).
//!
//! # Not covered
//! Other model types (T5, ...) have other fields and sub-config rules; their configs are copied
//! (see `save::rewrite_config`). `id2label` maps with more than ten labels would be sorted by
//! integer key by Python and by string here (CLIP configs of diffusers pipelines have none).
//! Non-finite floats are written as Python's bare tokens, where transformers 5.23 would tag them
//! (`{"__float__": "Infinity"}`); no CLIP field takes one. transformers 5.23 also validates field
//! types strictly and refuses to load, e.g., `"initializer_factor": 1` (an int where a float is
//! declared); such a config is re-saved here as it reads. Keys with their own setters
//! (`rope_scaling`, `per_layer_config`) are kept as plain keys.

use crate::ConvertError;
use serde_json::{Map, Value, json};
use std::path::Path;

/// The transformers release whose writing rules this module reproduces.
pub const TRANSFORMERS_VERSION: &str = "5.23.0";

/// `PreTrainedConfig().to_dict()`: the keys a config writes only when they differ from these.
fn base_defaults() -> Map<String, Value> {
    object(json!({
        "architectures": null,
        "output_hidden_states": false,
        "return_dict": true,
        "dtype": null,
        "chunk_size_feed_forward": 0,
        "is_encoder_decoder": false,
        "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
        "label2id": {"LABEL_0": 0, "LABEL_1": 1},
        "problem_type": null,
        "_name_or_path": "",
        "model_type": "",
        "output_attentions": false,
    }))
}

/// The map of a JSON object literal.
fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `PreTrainedConfig`'s dataclass fields and defaults (`id2label` / `label2id` are filled by
/// `__post_init__`, see [`construct`]).
const BASE_FIELDS: [&str; 10] = [
    "transformers_version",
    "architectures",
    "output_hidden_states",
    "return_dict",
    "dtype",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "id2label",
    "label2id",
    "problem_type",
];

fn base_field_default(name: &str) -> Value {
    match name {
        "output_hidden_states" | "is_encoder_decoder" => Value::Bool(false),
        "return_dict" => Value::Bool(true),
        "chunk_size_feed_forward" => json!(0),
        _ => Value::Null,
    }
}

/// `GenerationConfig._get_default_generation_params()` (transformers 5.23): popped from a model
/// config's extra keys on load.
const GENERATION_PARAMS: [&str; 34] = [
    "assistant_confidence_threshold",
    "assistant_lookbehind",
    "bad_words_ids",
    "begin_suppress_tokens",
    "diversity_penalty",
    "do_sample",
    "early_stopping",
    "encoder_no_repeat_ngram_size",
    "encoder_repetition_penalty",
    "epsilon_cutoff",
    "eta_cutoff",
    "exponential_decay_length_penalty",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "length_penalty",
    "max_length",
    "min_length",
    "no_repeat_ngram_size",
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "num_beam_groups",
    "num_beams",
    "num_return_sequences",
    "output_scores",
    "remove_invalid_values",
    "repetition_penalty",
    "return_dict_in_generate",
    "suppress_tokens",
    "target_lookbehind",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "use_cache",
];

/// `PreTrainedConfig._remove_keys_not_serialized` (applied to every nested dict too).
const NOT_SERIALIZED: [&str; 11] = [
    "_is_quantized",
    "_auto_class",
    "_commit_hash",
    "_attn_implementation_internal",
    "_experts_implementation_internal",
    "_post_init_done",
    "ignore_keys_at_rope_validation",
    "base_model_tp_plan",
    "base_model_pp_plan",
    "base_model_fsdp_plan",
    "distributed_config",
];

/// A CLIP config class: its `model_type` and its own dataclass fields with their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClipClass {
    Text,
    Vision,
    Composite,
}

impl ClipClass {
    fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "clip_text_model" => Some(Self::Text),
            "clip_vision_model" => Some(Self::Vision),
            "clip" => Some(Self::Composite),
            _ => None,
        }
    }

    fn model_type(self) -> &'static str {
        match self {
            Self::Text => "clip_text_model",
            Self::Vision => "clip_vision_model",
            Self::Composite => "clip",
        }
    }

    /// The class's own fields, as in `configuration_clip.py` (5.23).
    fn fields(self) -> Vec<(&'static str, Value)> {
        match self {
            Self::Text => vec![
                ("vocab_size", json!(49408)),
                ("hidden_size", json!(512)),
                ("intermediate_size", json!(2048)),
                ("projection_dim", json!(512)),
                ("num_hidden_layers", json!(12)),
                ("num_attention_heads", json!(8)),
                ("max_position_embeddings", json!(77)),
                ("hidden_act", json!("quick_gelu")),
                ("layer_norm_eps", json!(1e-5)),
                ("attention_dropout", json!(0.0)),
                ("initializer_range", json!(0.02)),
                ("initializer_factor", json!(1.0)),
                ("pad_token_id", json!(1)),
                ("bos_token_id", json!(49406)),
                ("eos_token_id", json!(49407)),
            ],
            Self::Vision => vec![
                ("hidden_size", json!(768)),
                ("intermediate_size", json!(3072)),
                ("projection_dim", json!(512)),
                ("num_hidden_layers", json!(12)),
                ("num_attention_heads", json!(12)),
                ("num_channels", json!(3)),
                ("image_size", json!(224)),
                ("patch_size", json!(32)),
                ("hidden_act", json!("quick_gelu")),
                ("layer_norm_eps", json!(1e-5)),
                ("attention_dropout", json!(0.0)),
                ("initializer_range", json!(0.02)),
                ("initializer_factor", json!(1.0)),
            ],
            Self::Composite => vec![
                ("text_config", Value::Null),
                ("vision_config", Value::Null),
                ("projection_dim", json!(512)),
                ("logit_scale_init_value", json!(2.6592)),
                ("initializer_factor", json!(1.0)),
            ],
        }
    }
}

/// Whether `map` (a component's `config.json`) is one whose re-save this module reproduces.
pub fn is_supported_model_config(map: &Map<String, Value>) -> bool {
    !map.contains_key("_diffusers_version")
        && map
            .get("model_type")
            .and_then(Value::as_str)
            .and_then(ClipClass::from_model_type)
            .is_some()
}

/// The dtype transformers 5.23 loads a model in when none is asked for (`dtype="auto"`): the
/// config's `dtype`, else its legacy `torch_dtype`, as written (`"float16"`, ...). `None` when
/// the config names none (transformers then uses the weights' own dtype).
pub fn load_dtype(map: &Map<String, Value>) -> Option<String> {
    ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_str))
        .filter(|s| *s != "auto")
        .map(str::to_string)
}

/// Python's `==` on JSON values: numbers by value (`0 == 0.0`), `True == 1`, containers
/// element-wise.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    fn num(v: &Value) -> Option<(Option<i128>, f64)> {
        match v {
            Value::Bool(b) => Some((Some(i128::from(*b)), f64::from(u8::from(*b)))),
            Value::Number(n) => {
                let int = n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from));
                Some((int, n.as_f64()?))
            }
            _ => None,
        }
    }
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => match (num(a), num(b)) {
            (Some((Some(i), _)), Some((Some(j), _))) => i == j,
            (Some((_, x)), Some((_, y))) => x == y,
            _ => a == b,
        },
    }
}

/// `{i: "LABEL_i"}` and its inverse, as the `num_labels` setter builds them.
fn default_labels(n: u64) -> (Value, Value) {
    let mut id2label = Map::new();
    let mut label2id = Map::new();
    for i in 0..n {
        id2label.insert(i.to_string(), Value::String(format!("LABEL_{i}")));
        label2id.insert(format!("LABEL_{i}"), json!(i));
    }
    (Value::Object(id2label), Value::Object(label2id))
}

/// `{int(key): value}`: keys written back as Python writes an int.
fn int_keys(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| {
            let key = k
                .trim()
                .parse::<i64>()
                .map_or_else(|_| k.clone(), |i| i.to_string());
            (key, v.clone())
        })
        .collect()
}

/// The attributes (`__dict__`) of `class(**input)` after `__post_init__`, sub-configs included
/// (as attribute maps), in `to_dict` form: `model_type` and `transformers_version` set.
fn construct(class: ClipClass, mut input: Map<String, Value>) -> Map<String, Value> {
    let mut attrs = Map::new();
    for name in BASE_FIELDS {
        let value = input
            .remove(name)
            .unwrap_or_else(|| base_field_default(name));
        attrs.insert(name.to_string(), value);
    }
    for (name, default) in class.fields() {
        attrs.insert(name.to_string(), input.remove(name).unwrap_or(default));
    }
    let mut kwargs = input;
    if class == ClipClass::Composite {
        for (key, legacy, sub) in [
            ("text_config", "text_config_dict", ClipClass::Text),
            ("vision_config", "vision_config_dict", ClipClass::Vision),
        ] {
            let mut merged = match attrs.remove(key) {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            // The legacy dict, completed with its class defaults, overwrites `*_config`.
            if let Some(Value::Object(legacy)) = kwargs.remove(legacy) {
                let full = construct(sub, legacy);
                for (k, v) in serialisable(full) {
                    merged.insert(k, v);
                }
            }
            attrs.insert(key.to_string(), Value::Object(construct(sub, merged)));
        }
    }
    // `torch_dtype` is the legacy spelling of `dtype`; `dtype` wins when both are given.
    if let Some(torch_dtype) = kwargs.remove("torch_dtype")
        && !torch_dtype.is_null()
        && attrs.get("dtype").is_none_or(Value::is_null)
    {
        attrs.insert("dtype".into(), torch_dtype);
    }
    let num_labels = kwargs.remove("num_labels").and_then(|v| v.as_u64());
    match attrs.get("id2label") {
        Some(Value::Object(m)) => {
            let converted = int_keys(m);
            let len = converted.len() as u64;
            attrs.insert("id2label".into(), Value::Object(converted));
            if let Some(n) = num_labels
                && n != len
            {
                let (i2l, l2i) = default_labels(n);
                attrs.insert("id2label".into(), i2l);
                attrs.insert("label2id".into(), l2i);
            }
        }
        _ => {
            let (i2l, l2i) = default_labels(num_labels.unwrap_or(2));
            attrs.insert("id2label".into(), i2l);
            attrs.insert("label2id".into(), l2i);
        }
    }
    for key in GENERATION_PARAMS {
        kwargs.remove(key);
    }
    for key in [
        "name_or_path",
        "_commit_hash",
        "attn_implementation",
        "experts_implementation",
        "_attn_implementation_internal",
        "_experts_implementation_internal",
    ] {
        kwargs.remove(key);
    }
    let output_attentions = kwargs
        .remove("output_attentions")
        .unwrap_or(Value::Bool(false));
    attrs.insert("output_attentions".into(), output_attentions);
    attrs.entry("_name_or_path").or_insert(json!(""));
    for (k, v) in kwargs {
        attrs.insert(k, v);
    }
    attrs.insert("model_type".into(), json!(class.model_type()));
    attrs
}

/// `to_dict`'s clean-up of an attribute map: the keys never serialised removed at every depth,
/// `kwargs` dropped, `transformers_version` stamped.
fn serialisable(mut attrs: Map<String, Value>) -> Map<String, Value> {
    attrs.remove("kwargs");
    attrs.insert("transformers_version".into(), json!(TRANSFORMERS_VERSION));
    remove_not_serialized(&mut attrs);
    attrs
}

fn remove_not_serialized(map: &mut Map<String, Value>) {
    for key in NOT_SERIALIZED {
        map.remove(key);
    }
    for value in map.values_mut() {
        if let Value::Object(inner) = value {
            remove_not_serialized(inner);
        }
    }
}

/// `recursive_diff_dict(sub, PreTrainedConfig().to_dict(), sub_config)` plus its `model_type`.
fn sub_config_diff(class: ClipClass, attrs: Map<String, Value>) -> Map<String, Value> {
    let base = base_defaults();
    let defaults = construct(class, Map::new());
    let mut out = Map::new();
    for (k, v) in serialisable(attrs) {
        if k == "transformers_version" {
            continue;
        }
        let keep = !base.contains_key(&k) || defaults.get(&k).is_none_or(|d| !py_eq(&v, d));
        if keep {
            out.insert(k, v);
        }
    }
    out.insert("model_type".into(), json!(class.model_type()));
    out
}

/// Re-serialises a CLIP model config as transformers 5.23's `save_pretrained` writes it after
/// diffusers loaded the model (see the module doc). `architecture` is the model class the
/// pipeline loaded (`model_index.json`); without it the config's own `architectures` is kept.
/// `dtype` is the dtype the weights are saved in (`"float32"`, `"float16"`, `"bfloat16"`).
pub fn resave_model_config(
    map: Map<String, Value>,
    architecture: Option<&str>,
    dtype: Option<&str>,
    path: &Path,
) -> Result<Map<String, Value>, ConvertError> {
    let class = map
        .get("model_type")
        .and_then(Value::as_str)
        .and_then(ClipClass::from_model_type)
        .ok_or_else(|| ConvertError::BadJson {
            path: path.to_path_buf(),
            reason: "expected `model_type` clip_text_model, clip_vision_model or clip".into(),
        })?;
    let mut attrs = construct(class, map);
    if let Some(d) = dtype {
        attrs.insert("dtype".into(), json!(d));
        for key in ["text_config", "vision_config"] {
            if let Some(Value::Object(sub)) = attrs.get_mut(key) {
                sub.insert("dtype".into(), json!(d));
            }
        }
    }
    if let Some(a) = architecture {
        attrs.insert("architectures".into(), json!([a]));
    }
    let base = base_defaults();
    let mut out = Map::new();
    for (k, v) in serialisable(attrs) {
        let sub_class = match k.as_str() {
            "text_config" if class == ClipClass::Composite => Some(ClipClass::Text),
            "vision_config" if class == ClipClass::Composite => Some(ClipClass::Vision),
            _ => None,
        };
        if let (Some(sub), Value::Object(sub_attrs)) = (sub_class, &v) {
            out.insert(k, Value::Object(sub_config_diff(sub, sub_attrs.clone())));
            continue;
        }
        let keep =
            k == "transformers_version" || base.get(&k).is_none_or(|default| !py_eq(&v, default));
        if keep {
            out.insert(k, v);
        }
    }
    out.remove("_name_or_path");
    Ok(out)
}

/// The image-processor classes whose `preprocessor_config.json` [`resave_image_processor_config`]
/// reproduces (diffusers loads a `CLIPFeatureExtractor` entry as `CLIPImageProcessor`).
pub fn is_supported_image_processor(class: &str) -> bool {
    matches!(class, "CLIPImageProcessor" | "CLIPFeatureExtractor")
}

/// The image-processor class a `preprocessor_config.json` names for itself.
pub fn image_processor_class(map: &Map<String, Value>) -> Option<&str> {
    ["image_processor_type", "feature_extractor_type"]
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_str))
}

/// `get_size_dict`: an int becomes `{"height", "width"}` (square) or `{"shortest_edge"}`, a
/// pair `{"height": h, "width": w}`; a dict keeps its non-null entries. `None` when transformers
/// would refuse the value.
fn size_dict(value: &Value, default_to_square: bool) -> Option<Value> {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(if default_to_square {
            json!({"height": n, "width": n})
        } else {
            json!({"shortest_edge": n})
        }),
        Value::Array(a) => match (a.first(), a.get(1)) {
            (Some(h), Some(w)) => Some(json!({"height": h, "width": w})),
            _ => None,
        },
        Value::Object(m) => Some(Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )),
        _ => None,
    }
}

/// Re-serialises a `CLIPImageProcessor` / `CLIPFeatureExtractor` `preprocessor_config.json` as
/// transformers 5.23's `CLIPImageProcessor.from_pretrained(...).save_pretrained(...)` writes it.
pub fn resave_image_processor_config(
    mut map: Map<String, Value>,
    path: &Path,
) -> Result<Map<String, Value>, ConvertError> {
    map.remove("feature_extractor_type");
    map.remove("processor_class");
    // KOSMOS-2's flag: a square of the *class default* shortest edge.
    if map
        .get("use_square_size")
        .is_some_and(|v| py_eq(v, &json!(true)))
    {
        map.remove("use_square_size");
        map.insert("size".into(), json!({"height": 224, "width": 224}));
    }
    // `ImagesKwargs`: each is set from the file or the class default; a `None` is dropped on
    // writing when the class has no non-`None` default (those listed as null here).
    let class_defaults = object(json!({
        "do_convert_rgb": true,
        "do_resize": true,
        "size": {"shortest_edge": 224},
        "default_to_square": false,
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 0.00392156862745098,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_pad": null,
        "pad_size": null,
        "do_center_crop": true,
        "data_format": null,
        "input_data_format": null,
        "device": null,
        "return_tensors": null,
        "disable_grouping": null,
        "image_seq_length": null,
    }));
    let default_to_square = match map.get("default_to_square") {
        Some(v) if !v.is_null() => py_eq(v, &json!(true)),
        _ => false,
    };
    let mut out = map.clone();
    for (key, default) in &class_defaults {
        if key == "default_to_square" {
            // Consumed by `_standardize_kwargs`, never set (kept only if the file has it).
            continue;
        }
        // A key the file has (even as null) was already set on the instance by
        // `ImageProcessingMixin.__init__`, so `_set_attributes` keeps it; only absent keys
        // take the class default.
        let value = map.get(key).unwrap_or(default).clone();
        out.insert(key.clone(), value);
    }
    for (key, square) in [
        ("size", default_to_square),
        ("crop_size", true),
        ("pad_size", true),
    ] {
        if let Some(v) = out.get(key).filter(|v| !v.is_null()) {
            let converted = size_dict(v, square).ok_or_else(|| ConvertError::BadJson {
                path: path.to_path_buf(),
                reason: format!("`{key}` must be an int, a pair or a size dict, got {v}"),
            })?;
            out.insert(key.to_string(), converted);
        }
    }
    out.insert("image_processor_type".into(), json!("CLIPImageProcessor"));
    out.remove("_valid_processor_keys");
    out.remove("_valid_kwargs_names");
    // `to_dict` drops `None`s unless the class default is a real value.
    let nulls: Vec<String> = out
        .iter()
        .filter(|(k, v)| v.is_null() && class_defaults.get(*k).is_none_or(Value::is_null))
        .map(|(k, _)| k.clone())
        .collect();
    for k in nulls {
        out.remove(&k);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_equality_mixes_ints_floats_and_bools() {
        assert!(py_eq(&json!(0), &json!(0.0)));
        assert!(py_eq(&json!(true), &json!(1)));
        assert!(!py_eq(&json!(null), &json!(0)));
        assert!(py_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!py_eq(&json!("1"), &json!(1)));
    }

    #[test]
    fn text_config_without_projection_dim_gets_the_class_default() {
        let Value::Object(m) = json!({"model_type": "clip_text_model", "hidden_size": 16,
            "torch_dtype": "float32", "_name_or_path": "x", "max_length": 20})
        else {
            unreachable!()
        };
        let out =
            resave_model_config(m, Some("CLIPTextModel"), Some("float32"), Path::new("c")).unwrap();
        assert_eq!(out["projection_dim"], json!(512));
        assert_eq!(out["dtype"], json!("float32"));
        assert_eq!(out["transformers_version"], json!(TRANSFORMERS_VERSION));
        for gone in [
            "torch_dtype",
            "_name_or_path",
            "max_length",
            "id2label",
            "return_dict",
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
    }
}
