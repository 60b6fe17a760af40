//! Every config the Python generators wrote under `tests/fixtures/` re-saves byte for byte:
//! typed diffusers configs (UNet, VAE, schedulers) through [`ConfigFile`], `model_index.json`
//! through [`ModelIndex`], transformers model configs through [`ConfigFile`] with transformers'
//! "write what the file had" rule, and the tokenizer JSON files (written by Python with
//! `ensure_ascii=False`) through the JSON writer. Comparison: exact bytes.

use diff_format::config::{ConfigFile, Fill};
use diff_format::configs::{scheduler, unet::UNet2DConditionConfig, vae::AutoencoderKLConfig};
use diff_format::json::{DumpOptions, dumps};
use diff_format::{FormatError, ModelIndex};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

fn typed<T: DeserializeOwned + Serialize>(path: &Path) -> Result<String, FormatError> {
    ConfigFile::<T>::load(path)?.to_json_string()
}

/// Re-saves one file with the right machinery; `None` for JSON files that are not configs.
fn resave(path: &Path) -> Option<Result<String, FormatError>> {
    let name = path.file_name()?.to_str()?;
    let text = std::fs::read_to_string(path).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    let class = value
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    Some(match name {
        "model_index.json" => ModelIndex::load(path).map(|i| i.to_json_string()),
        "scheduler_config.json" => match class {
            "PNDMScheduler" => typed::<scheduler::PNDMSchedulerConfig>(path),
            "EulerDiscreteScheduler" => typed::<scheduler::EulerDiscreteSchedulerConfig>(path),
            "DDIMScheduler" => typed::<scheduler::DDIMSchedulerConfig>(path),
            "DDPMScheduler" => typed::<scheduler::DDPMSchedulerConfig>(path),
            "EulerAncestralDiscreteScheduler" => {
                typed::<scheduler::EulerAncestralDiscreteSchedulerConfig>(path)
            }
            "DPMSolverMultistepScheduler" => {
                typed::<scheduler::DPMSolverMultistepSchedulerConfig>(path)
            }
            "LMSDiscreteScheduler" => typed::<scheduler::LMSDiscreteSchedulerConfig>(path),
            _ => typed::<serde_json::Map<String, Value>>(path),
        },
        "config.json" if class == "UNet2DConditionModel" => typed::<UNet2DConditionConfig>(path),
        "config.json" if class == "AutoencoderKL" => typed::<AutoencoderKLConfig>(path),
        // transformers configs: written from the config object's diff, so only keys the file had.
        "config.json" => {
            let empty = Value::Object(Default::default());
            ConfigFile::<serde_json::Map<String, Value>>::load(path).and_then(|c| {
                Ok(diff_format::json::to_config_string(
                    &c.to_json_value_with(Fill::ChangedFrom(&empty))?,
                ))
            })
        }
        "preprocessor_config.json" => Ok(diff_format::json::to_config_string(&value)),
        "tokenizer_config.json" | "special_tokens_map.json" | "vocab.json" => {
            Ok(dumps(&value, &DumpOptions::tokenizer()) + "\n")
        }
        _ => return None,
    })
}

/// The top-level keys of a JSON object in file order.
struct KeyOrder(Vec<String>);

impl<'de> serde::Deserialize<'de> for KeyOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<KeyOrder, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(KeyOrder(keys))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Whether the file was written by `json.dumps(..., indent=2, sort_keys=True)`: hand-written
/// inputs (unsorted keys, other indentation), which some generators use on purpose to test
/// loaders, are not re-save candidates.
fn written_by_python_json_dumps(text: &str) -> bool {
    let sorted = serde_json::from_str::<KeyOrder>(text).is_ok_and(|k| k.0.is_sorted());
    sorted && (text.starts_with("{\n  \"") || text == "{}\n")
}

#[test]
fn every_generated_config_resaves_byte_identically() {
    let mut files = Vec::new();
    json_files(&fixtures_root(), &mut files);
    files.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in &files {
        let original = std::fs::read_to_string(path).unwrap();
        if !written_by_python_json_dumps(&original) {
            continue;
        }
        let Some(result) = resave(path) else { continue };
        checked += 1;
        match result {
            Ok(text) if text == original => {}
            Ok(text) => {
                let line = original
                    .lines()
                    .zip(text.lines())
                    .position(|(a, b)| a != b)
                    .map_or_else(|| "length".to_owned(), |i| format!("line {}", i + 1));
                failures.push(format!("{}: differs at {line}", path.display()));
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        checked >= 30,
        "only {checked} configs found under {}",
        fixtures_root().display()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} configs differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn python_float_repr_golden_matches() {
    let text =
        std::fs::read_to_string(fixtures_root().join("format/python_float_repr.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() > 500);
    for case in cases {
        let bits = case["bits"].as_u64().unwrap();
        let want = case["repr"].as_str().unwrap();
        let x = f64::from_bits(bits);
        assert_eq!(
            diff_format::json::python_float_repr(x),
            want,
            "bits {bits:#x}"
        );
        // And the parse of Python's spelling gives back the same bits (float_roundtrip).
        let parsed: f64 = serde_json::from_str(want).unwrap();
        assert_eq!(parsed.to_bits(), bits, "{want}");
    }
}
