//! Loading and saving component configs the way diffusers does, for any plain serde struct.
//!
//! # Writing a config struct
//!
//! A config author writes only a serde struct whose fields are the JSON keys verbatim, with the
//! Python `__init__` defaults, and a flattened map that keeps every other key:
//!
//! ```
//! use std::collections::BTreeMap;
//! #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
//! #[serde(default)]
//! pub struct PNDMSchedulerConfig {
//!     /// `num_train_timesteps`, default 1000.
//!     pub num_train_timesteps: u32,
//!     /// `beta_start`, default 0.0001.
//!     pub beta_start: f64,
//!     /// Keys this struct does not model (`_class_name`, `_diffusers_version`, foreign keys ...).
//!     #[serde(flatten)]
//!     pub extra: BTreeMap<String, serde_json::Value>,
//! }
//! impl Default for PNDMSchedulerConfig {
//!     fn default() -> Self {
//!         Self { num_train_timesteps: 1000, beta_start: 0.0001, extra: BTreeMap::new() }
//!     }
//! }
//!
//! use diff_format::config::ConfigFile;
//! let text = r#"{"_class_name": "PNDMScheduler", "beta_start": 0.00085, "num_train_timesteps": 1000}"#;
//! let file = ConfigFile::<PNDMSchedulerConfig>::from_json_str(text, "scheduler_config.json")?;
//! assert_eq!(file.config.beta_start, 0.00085);
//! // Saving keeps raw values and writes Python's JSON spelling.
//! assert_eq!(
//!     file.to_json_string()?,
//!     "{\n  \"_class_name\": \"PNDMScheduler\",\n  \"beta_start\": 0.00085,\n  \"num_train_timesteps\": 1000\n}\n"
//! );
//! # Ok::<(), diff_format::FormatError>(())
//! ```
//!
//! Use `f64` for float fields (an `f32` field cannot hold `0.00085` exactly; re-saving still
//! keeps the file's spelling, but a changed value is then written with f32 noise).
//!
//! # Loading ([`ConfigFile::load`], [`load_config`])
//!
//! 1. The file must be a JSON object; bad JSON gives [`FormatError::InvalidJson`] with line and
//!    column, a value of the wrong type gives [`FormatError::ConfigValue`] naming the key.
//! 2. `_use_default_values` is honoured as diffusers' `extract_init_dict` does
//!    (`configuration_utils.py`): every key it lists is removed, and so is the list itself, so
//!    the struct's own defaults apply. (diffusers never writes that key, but tools that dump
//!    `dict(scheduler.config)` do.)
//! 3. Unknown keys land in the struct's flattened `extra` map (a `tracing` debug line lists
//!    them; config struct authors may warn on them).
//!
//! # Saving ([`ConfigFile::to_json_value`], [`ConfigFile::to_json_string`], [`ConfigFile::save`])
//!
//! diffusers saves `register_to_config`'s dict: every `__init__` parameter, the value the object
//! was built with, plus the hidden keys. We reproduce that from the typed struct, and for each key
//! that was in the loaded file and still holds an equal value, the file's raw JSON value is written
//! instead of the re-serialized one. That keeps `1` as `1` when the field is a float, `1.0` as `1.0`
//! when it is an integer, exactly as Python (which keeps the loaded object) does. Keys the file
//! lacked are filled from the struct ([`Fill::AllFields`], what `register_to_config` does), or,
//! for transformers-style configs that write only non-default values, written only if they differ
//! from given defaults ([`Fill::ChangedFrom`]). `_use_default_values`, `_ignore_files` and
//! `_pre_quantization_dtype` are dropped, as diffusers' `to_json_string` drops them.
//! `_diffusers_version` is kept as loaded (so a file diffusers 0.42.1 wrote re-saves byte for
//! byte); configs made with [`ConfigFile::new`] are stamped with [`crate::DIFFUSERS_VERSION`].
//! Files are written atomically (temporary name, then rename).

use crate::error::{FormatError, describe};
use crate::json;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Keys diffusers' `ConfigMixin.to_json_string` removes before writing.
pub const DROPPED_ON_SAVE: [&str; 3] = [
    "_use_default_values",
    "_ignore_files",
    "_pre_quantization_dtype",
];

/// How keys that the loaded file did not contain are written on save.
#[derive(Debug, Clone, Copy)]
pub enum Fill<'a> {
    /// Write every field of the struct (diffusers' `register_to_config` records every `__init__`
    /// parameter, so a diffusers-saved config is complete).
    AllFields,
    /// Write a missing key only if its value differs from the same key in these defaults (a JSON
    /// object), as transformers' `to_diff_dict` does for model configs.
    ChangedFrom(&'a Value),
}

/// A typed config together with the raw JSON it was loaded from, so that it re-saves faithfully.
#[derive(Debug, Clone)]
pub struct ConfigFile<T> {
    /// The typed config. Edit it freely; edited keys are written with their new values.
    pub config: T,
    /// The loaded object after `_use_default_values` handling (empty for new configs).
    original: Map<String, Value>,
    /// Keys forced on save (`_class_name`, `_diffusers_version` for configs made by [`Self::new`]).
    stamped: Map<String, Value>,
    /// Where the config came from, for error messages.
    origin: PathBuf,
}

/// Reads a config file into a typed struct (see the module doc for the rules).
pub fn load_config<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, FormatError> {
    Ok(ConfigFile::<T>::load(path)?.config)
}

/// Reads a file as a JSON object, with errors naming the file.
pub fn read_json_object(path: &Path) -> Result<Map<String, Value>, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    parse_json_object(&text, path)
}

/// Parses text as a JSON object; `origin` names it in errors.
pub fn parse_json_object(text: &str, origin: &Path) -> Result<Map<String, Value>, FormatError> {
    // `crate::json::loads` also reads Python's `-Infinity` / `Infinity` / `NaN` tokens.
    let value: Value = crate::json::loads(text).map_err(|e| FormatError::json(origin, &e))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(FormatError::UnexpectedJson {
            path: origin.to_path_buf(),
            key: ".".to_owned(),
            expected: "a JSON object".to_owned(),
            got: describe(&other),
        }),
    }
}

/// Deserializes a JSON object into `T`, naming the offending key on a type error.
pub fn from_object<T: DeserializeOwned>(
    map: Map<String, Value>,
    origin: &Path,
) -> Result<T, FormatError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|err| {
        let path = err.path().to_string();
        FormatError::ConfigValue {
            path: origin.to_path_buf(),
            key: path,
            message: crate::json::clean_message(&err.into_inner().to_string()),
        }
    })
}

/// Applies diffusers' `_use_default_values` rule: removes the listed keys and the list itself.
pub fn apply_use_default_values(map: &mut Map<String, Value>) {
    if let Some(Value::Array(listed)) = map.remove("_use_default_values") {
        for key in listed.iter().filter_map(Value::as_str) {
            map.remove(key);
        }
    }
}

impl<T: DeserializeOwned> ConfigFile<T> {
    /// Loads a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let map = read_json_object(path)?;
        Self::from_object(map, path)
    }

    /// Parses config text; `origin` names it in errors (a file name or URL).
    pub fn from_json_str(text: &str, origin: impl AsRef<Path>) -> Result<Self, FormatError> {
        let origin = origin.as_ref();
        let map = parse_json_object(text, origin)?;
        Self::from_object(map, origin)
    }

    /// Builds from an already parsed JSON value (which must be an object).
    pub fn from_value(value: Value, origin: impl AsRef<Path>) -> Result<Self, FormatError> {
        let origin = origin.as_ref();
        match value {
            Value::Object(map) => Self::from_object(map, origin),
            other => Err(FormatError::UnexpectedJson {
                path: origin.to_path_buf(),
                key: ".".to_owned(),
                expected: "a JSON object".to_owned(),
                got: describe(&other),
            }),
        }
    }

    fn from_object(mut map: Map<String, Value>, origin: &Path) -> Result<Self, FormatError> {
        apply_use_default_values(&mut map);
        let config: T = from_object(map.clone(), origin)?;
        tracing::debug!(file = %origin.display(), keys = map.len(), "loaded config");
        Ok(ConfigFile {
            config,
            original: map,
            stamped: Map::new(),
            origin: origin.to_path_buf(),
        })
    }
}

impl<T> ConfigFile<T> {
    /// Wraps a config made in Rust. Saving writes `_class_name = class_name` and
    /// `_diffusers_version = `[`crate::DIFFUSERS_VERSION`], as diffusers stamps them on save.
    pub fn new(config: T, class_name: &str) -> Self {
        let mut stamped = Map::new();
        stamped.insert("_class_name".into(), Value::String(class_name.to_owned()));
        stamped.insert(
            "_diffusers_version".into(),
            Value::String(crate::DIFFUSERS_VERSION.to_owned()),
        );
        ConfigFile {
            config,
            original: Map::new(),
            stamped,
            origin: PathBuf::from(class_name),
        }
    }

    /// Wraps a config made in Rust without stamping anything (transformers configs and other
    /// files whose metadata keys the caller manages in the struct's `extra` map).
    pub fn unstamped(config: T, origin: impl AsRef<Path>) -> Self {
        ConfigFile {
            config,
            original: Map::new(),
            stamped: Map::new(),
            origin: origin.as_ref().to_path_buf(),
        }
    }

    /// Where this config came from (the file path or origin given on load).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The JSON object as loaded (after `_use_default_values` handling); empty for new configs.
    pub fn original(&self) -> &Map<String, Value> {
        &self.original
    }
}

impl<T: Serialize> ConfigFile<T> {
    /// The JSON object diffusers would write for this config ([`Fill::AllFields`]).
    pub fn to_json_value(&self) -> Result<Value, FormatError> {
        self.to_json_value_with(Fill::AllFields)
    }

    /// The JSON object to write, with an explicit rule for keys the loaded file lacked.
    pub fn to_json_value_with(&self, fill: Fill<'_>) -> Result<Value, FormatError> {
        let typed =
            serde_json::to_value(&self.config).map_err(|e| FormatError::ConfigSerialize {
                what: self.origin.display().to_string(),
                message: e.to_string(),
            })?;
        let Value::Object(typed) = typed else {
            return Err(FormatError::ConfigSerialize {
                what: self.origin.display().to_string(),
                message: format!("serialized to {}", describe(&typed)),
            });
        };
        let mut out = Map::new();
        for (key, value) in typed {
            if DROPPED_ON_SAVE.contains(&key.as_str()) {
                continue;
            }
            match self.original.get(&key) {
                Some(raw) if same_value(raw, &value) => {
                    out.insert(key, raw.clone());
                }
                Some(_) => {
                    out.insert(key, value);
                }
                None => {
                    let keep = match fill {
                        Fill::AllFields => true,
                        Fill::ChangedFrom(defaults) => defaults
                            .get(&key)
                            .is_none_or(|default| !same_value(default, &value)),
                    };
                    if keep {
                        out.insert(key, value);
                    }
                }
            }
        }
        for (key, value) in &self.stamped {
            out.insert(key.clone(), value.clone());
        }
        Ok(Value::Object(out))
    }

    /// The file contents diffusers would write: `json.dumps(indent=2, sort_keys=True) + "\n"`.
    pub fn to_json_string(&self) -> Result<String, FormatError> {
        Ok(json::to_config_string(&self.to_json_value()?))
    }

    /// Writes the config to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), FormatError> {
        crate::fsutil::write_atomic(path.as_ref(), self.to_json_string()?.as_bytes())
    }
}

/// Whether two JSON values are the same value as Python would see it after loading: numbers
/// compare numerically (so `1` equals `1.0`, and a float that went through an `f32` field still
/// equals its file spelling), containers compare element by element.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                return x == y;
            }
            match (x.as_f64(), y.as_f64()) {
                // Comparing at f32 precision too lets `f32` fields keep the file's spelling.
                (Some(x), Some(y)) => x == y || (x as f32) == (y as f32),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Demo {
        scale: f64,
        layers: u32,
        prediction_type: String,
        eps: f32,
        #[serde(flatten)]
        extra: BTreeMap<String, Value>,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                scale: 1.0,
                layers: 2,
                prediction_type: "epsilon".into(),
                eps: 1e-5,
                extra: BTreeMap::new(),
            }
        }
    }

    #[test]
    fn resave_keeps_raw_number_spelling_and_fills_missing_defaults() {
        let text =
            r#"{"_class_name": "Demo", "scale": 1, "layers": 3, "eps": 1e-06, "foo": [1.0]}"#;
        let file = ConfigFile::<Demo>::from_json_str(text, "demo.json").unwrap();
        assert_eq!(file.config.scale, 1.0);
        assert_eq!(
            file.config.extra.get("foo"),
            Some(&serde_json::json!([1.0]))
        );
        let out = file.to_json_string().unwrap();
        assert_eq!(
            out,
            "{\n  \"_class_name\": \"Demo\",\n  \"eps\": 1e-06,\n  \"foo\": [\n    1.0\n  ],\n  \"layers\": 3,\n  \"prediction_type\": \"epsilon\",\n  \"scale\": 1\n}\n"
        );
    }

    #[test]
    fn edited_values_are_written_with_their_new_value() {
        let text = r#"{"scale": 1, "layers": 3}"#;
        let mut file = ConfigFile::<Demo>::from_json_str(text, "demo.json").unwrap();
        file.config.scale = 2.5;
        let v = file.to_json_value().unwrap();
        assert_eq!(v["scale"], serde_json::json!(2.5));
        assert_eq!(v["layers"], serde_json::json!(3));
    }

    #[test]
    fn use_default_values_keys_fall_back_to_struct_defaults_and_are_not_saved() {
        let text = r#"{"prediction_type": "v_prediction", "layers": 4, "_use_default_values": ["prediction_type"]}"#;
        let file = ConfigFile::<Demo>::from_json_str(text, "demo.json").unwrap();
        assert_eq!(file.config.prediction_type, "epsilon");
        assert_eq!(file.config.layers, 4);
        let v = file.to_json_value().unwrap();
        assert!(v.get("_use_default_values").is_none());
        assert_eq!(v["prediction_type"], serde_json::json!("epsilon"));
    }

    #[test]
    fn wrong_type_error_names_file_and_key() {
        let err = ConfigFile::<Demo>::from_json_str(r#"{"layers": "three"}"#, "unet/config.json")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unet/config.json"), "{msg}");
        assert!(msg.contains("`layers`"), "{msg}");
        assert!(matches!(err, FormatError::ConfigValue { .. }));
    }

    #[test]
    fn bad_json_error_names_file_and_position() {
        let err =
            ConfigFile::<Demo>::from_json_str("{\"layers\": 3,,}", "x/config.json").unwrap_err();
        match err {
            FormatError::InvalidJson { path, line, .. } => {
                assert_eq!(path, PathBuf::from("x/config.json"));
                assert_eq!(line, 1);
            }
            other => panic!("expected InvalidJson, got {other}"),
        }
    }

    #[test]
    fn non_object_document_is_rejected() {
        let err = ConfigFile::<Demo>::from_json_str("[1, 2]", "c.json").unwrap_err();
        assert!(matches!(err, FormatError::UnexpectedJson { .. }), "{err}");
    }

    #[test]
    fn new_config_is_stamped_with_class_and_version() {
        let file = ConfigFile::new(Demo::default(), "Demo");
        let v = file.to_json_value().unwrap();
        assert_eq!(v["_class_name"], "Demo");
        assert_eq!(v["_diffusers_version"], crate::DIFFUSERS_VERSION);
        assert_eq!(v["layers"], 2);
    }

    #[test]
    fn changed_from_fill_writes_only_non_default_missing_keys() {
        let mut file = ConfigFile::<Demo>::from_json_str(r#"{"layers": 2}"#, "c.json").unwrap();
        file.config.scale = 3.0;
        let defaults = serde_json::to_value(Demo::default()).unwrap();
        let v = file
            .to_json_value_with(Fill::ChangedFrom(&defaults))
            .unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["layers", "scale"]);
    }
}
