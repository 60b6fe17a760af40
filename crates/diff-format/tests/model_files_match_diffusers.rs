//! Which weight files a diffusers model loads from its folder, against decisions recorded by
//! running diffusers 0.42.1's real `UNet2DConditionModel.from_pretrained` (stopped right before
//! it reads tensor data) in `tests/fixtures/00-pipelines/generate.py`. Exact comparison of the
//! resolved file names, the error kind and (for missing files) the error message.

use diff_format::FormatError;
use diff_format::model_files::resolve_diffusers_model_files;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn golden() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/format/model_resolution.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Recreates the recorded folder: empty weight files, and index files listing the recorded shards.
fn make_folder(root: &Path, n: usize, files: &[String], index_shards: &Value) -> PathBuf {
    let folder = root.join(format!("case{n}")).join("unet");
    std::fs::create_dir_all(&folder).unwrap();
    for name in files {
        if name.ends_with(".json") {
            let mut map = serde_json::Map::new();
            for (i, shard) in index_shards[name.as_str()]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                map.insert(format!("t{i}"), shard.clone());
            }
            let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
            std::fs::write(folder.join(name), index.to_string()).unwrap();
        } else {
            std::fs::write(folder.join(name), b"").unwrap();
        }
    }
    folder
}

#[test]
fn diffusers_model_weight_resolution_matches_diffusers() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("model_files_match_diffusers");
    let _ = std::fs::remove_dir_all(&root);
    let mut failures = Vec::new();
    let records = golden();
    assert!(records.len() >= 60, "only {} records", records.len());
    for (n, record) in records.iter().enumerate() {
        let files: Vec<String> = record["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect();
        let folder = make_folder(&root, n, &files, &record["index_shards"]);
        let variant = record["variant"].as_str();
        let use_safetensors = record["use_safetensors"].as_bool();
        let got = resolve_diffusers_model_files(&folder, variant, use_safetensors);
        let label = format!(
            "{} variant={variant:?} use_safetensors={use_safetensors:?}",
            record["name"]
        );
        match (&record["error"], got) {
            (Value::Null, Ok(weights)) => {
                let names: Vec<String> = weights
                    .files
                    .iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                    .collect();
                let want: Vec<String> = record["resolved"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_owned())
                    .collect();
                if names != want {
                    failures.push(format!("{label}: want {want:?}, got {names:?}"));
                }
            }
            (Value::Object(err), Err(got)) => {
                let kind = err["type"].as_str().unwrap();
                let ok = match (&got, kind) {
                    (FormatError::WeightsNotFound { .. }, "OSError") => {
                        let message = got
                            .to_string()
                            .replace(&folder.display().to_string(), "<folder>");
                        message == err["message"].as_str().unwrap()
                    }
                    (FormatError::MissingShard { .. }, "FileNotFoundError") => true,
                    _ => false,
                };
                if !ok {
                    failures.push(format!(
                        "{label}: want {kind}: {}, got {got}",
                        err["message"]
                    ));
                }
            }
            (want, got) => failures.push(format!("{label}: want {want}, got {got:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
