//! Pipeline-level weight resolution against decisions recorded from real diffusers 0.42.1 and
//! transformers 5.23 (`tests/fixtures/02-weight-resolution/generate.py`): for each recorded
//! pipeline folder, variant and `use_safetensors`, the components that get the variant
//! ([`ComponentVariants`]) and the file each component loads, or the exact error message
//! ([`resolve_model_files`], diffusers rules for `unet`/`vae`, transformers rules for
//! `text_encoder`/`safety_checker`). The folders are rebuilt with empty weight files and index
//! files naming the recorded shards.

use diff_format::FormatError;
use diff_format::ModelIndex;
use diff_format::model_files::resolve_model_files;
use diff_format::selection::ComponentVariants;
use diff_format::weights::Naming;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn decisions() -> Vec<Value> {
    let path = fixtures().join("02-weight-resolution/decisions.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn naming(component: &str) -> Naming {
    match component {
        "unet" | "vae" => Naming::Diffusers,
        _ => Naming::Transformers,
    }
}

/// Recreates the recorded pipeline folder: tiny-sd's model_index.json, every listed file (empty
/// weights, index files naming the recorded shards).
fn make_pipeline(root: &Path, record: &Value) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::copy(
        fixtures().join("tiny-sd/model_index.json"),
        root.join("model_index.json"),
    )
    .unwrap();
    for (component, files) in record["listing"].as_object().unwrap() {
        let folder = root.join(component);
        std::fs::create_dir_all(&folder).unwrap();
        for name in files.as_array().unwrap() {
            let name = name.as_str().unwrap();
            let shards = &record["index_shards"][component][name];
            if let Some(shards) = shards.as_array() {
                let map: serde_json::Map<String, Value> = shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("t{i}"), s.clone()))
                    .collect();
                let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
                std::fs::write(folder.join(name), index.to_string()).unwrap();
            } else {
                std::fs::write(folder.join(name), b"{}").unwrap();
            }
        }
    }
}

fn message(err: &FormatError, root: &Path) -> String {
    err.to_string()
        .replace(&root.display().to_string(), "<root>")
}

#[test]
fn pipeline_weight_resolution_matches_diffusers_and_transformers() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weight_resolution_matches_diffusers");
    let _ = std::fs::remove_dir_all(&base);
    let records = decisions();
    assert_eq!(records.len(), 66);
    let mut failures = Vec::new();
    let mut checked = 0;
    for (n, record) in records.iter().enumerate() {
        let root = base.join(format!("case{n}"));
        make_pipeline(&root, record);
        let variant = record["variant"].as_str();
        let use_safetensors = record["use_safetensors"].as_bool();
        let label = format!(
            "{} variant={variant:?} use_safetensors={use_safetensors:?}",
            record["case"]
        );
        let index = ModelIndex::load(root.join("model_index.json")).unwrap();
        let variants = match (
            ComponentVariants::for_folder(&root, &index, variant),
            &record["error"],
        ) {
            (Ok(v), Value::Null) => v,
            (Err(e), Value::Object(want)) => {
                if message(&e, &root) != want["message"].as_str().unwrap() {
                    failures.push(format!("{label}: want {}, got {e}", want["message"]));
                }
                checked += 1;
                continue;
            }
            (got, want) => {
                failures.push(format!("{label}: want {want}, got {got:?}"));
                continue;
            }
        };
        for (component, want) in record["components"].as_object().unwrap() {
            checked += 1;
            let label = format!("{label} {component}");
            let chosen = variants.variant_for(component);
            if chosen != want["variant"].as_str() {
                failures.push(format!(
                    "{label}: variant {chosen:?}, want {}",
                    want["variant"]
                ));
            }
            let got = resolve_model_files(
                &root.join(component),
                naming(component),
                chosen,
                use_safetensors,
            );
            match (got, &want["error"]) {
                (Ok(weights), Value::Null) => {
                    let name = weights.entry().file_name().unwrap().to_string_lossy();
                    if name != want["loaded"].as_str().unwrap() {
                        failures.push(format!("{label}: loaded {name}, want {}", want["loaded"]));
                    }
                }
                (Err(e), Value::Object(err)) => {
                    if message(&e, &root) != err["message"].as_str().unwrap() {
                        failures.push(format!("{label}: error {e}, want {}", err["message"]));
                    }
                }
                (got, want) => failures.push(format!("{label}: got {got:?}, want {want}")),
            }
        }
    }
    assert!(checked > 150, "only {checked} decisions checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The two cases the issue names, spelled out: a component that lacks the requested variant
/// loads its plain file, and `use_safetensors=false` with both formats present loads pickle.
#[test]
fn component_without_the_variant_and_pickle_first_are_recorded() {
    let records = decisions();
    let find = |case: &str, variant: Option<&str>, st: Option<bool>| {
        records
            .iter()
            .find(|r| {
                r["case"] == case
                    && r["variant"].as_str() == variant
                    && r["use_safetensors"].as_bool() == st
            })
            .unwrap()
    };
    let r = find("variant_in_some_components", Some("fp16"), None);
    assert_eq!(r["components"]["vae"]["variant"], Value::Null);
    assert_eq!(
        r["components"]["vae"]["loaded"],
        "diffusion_pytorch_model.safetensors"
    );
    assert_eq!(
        r["components"]["unet"]["loaded"],
        "diffusion_pytorch_model.fp16.safetensors"
    );
    let r = find("both_formats_everywhere", None, Some(false));
    assert_eq!(
        r["components"]["unet"]["loaded"],
        "diffusion_pytorch_model.bin"
    );
    assert_eq!(
        r["components"]["text_encoder"]["loaded"],
        "pytorch_model.bin"
    );
}
