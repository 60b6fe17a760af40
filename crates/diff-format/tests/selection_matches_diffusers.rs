//! File selection against golden decisions recorded by running diffusers 0.42.1's own
//! `DiffusionPipeline.download` (Hub calls mocked) in `tests/fixtures/00-pipelines/generate.py`.
//! Comparisons are exact: same files, same patterns (allow patterns as a set, since diffusers
//! builds part of that list from Python sets), same error kind, same warnings.

use diff_format::selection::{SelectionOptions, SelectionWarning, download_plan};
use diff_format::{FormatError, ModelIndex};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/format")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks one recorded decision; returns a description of the first difference.
fn check(files: &BTreeSet<String>, index: &ModelIndex, result: &Value) -> Result<(), String> {
    let options = SelectionOptions {
        variant: result["variant"].as_str().map(String::from),
        use_safetensors: result["use_safetensors"].as_bool(),
        ..Default::default()
    };
    let got = download_plan(files, index, &options, "org/repo");
    match (&result["error"], got) {
        (Value::Null, Ok(plan)) => {
            let want_allow: BTreeSet<String> =
                strings(&result["allow_patterns"]).into_iter().collect();
            let got_allow: BTreeSet<String> = plan.allow_patterns.iter().cloned().collect();
            if want_allow != got_allow {
                return Err(format!(
                    "allow patterns: want {want_allow:?}, got {got_allow:?}"
                ));
            }
            if strings(&result["ignore_patterns"]) != plan.ignore_patterns {
                return Err(format!(
                    "ignore patterns: want {:?}, got {:?}",
                    result["ignore_patterns"], plan.ignore_patterns
                ));
            }
            let want: BTreeSet<String> = strings(&result["model_filenames"]).into_iter().collect();
            if want != plan.model_filenames {
                return Err(format!(
                    "model files: want {want:?}, got {:?}",
                    plan.model_filenames
                ));
            }
            let want: BTreeSet<String> =
                strings(&result["variant_filenames"]).into_iter().collect();
            if want != plan.variant_filenames {
                return Err(format!(
                    "variant files: want {want:?}, got {:?}",
                    plan.variant_filenames
                ));
            }
            let want: BTreeSet<String> = strings(&result["expected_files"]).into_iter().collect();
            if want != plan.expected_files {
                return Err(format!(
                    "expected files: want {want:?}, got {:?}",
                    plan.expected_files
                ));
            }
            let got_warnings: Vec<&str> = plan
                .warnings
                .iter()
                .map(|w| match w {
                    SelectionWarning::MixedVariant { .. } => "mixed_variant",
                    SelectionWarning::LegacyShardedVariant { .. } => "legacy_sharded_variant",
                })
                .collect();
            let want_warnings = strings(&result["warnings"]);
            if got_warnings != want_warnings {
                return Err(format!(
                    "warnings: want {want_warnings:?}, got {got_warnings:?}"
                ));
            }
            Ok(())
        }
        (Value::Object(err), Err(got)) => {
            let kind = err["type"].as_str().unwrap_or_default();
            let ok = matches!(
                (kind, &got),
                ("ValueError", FormatError::NoSuchVariant { .. })
                    | ("OSError", FormatError::SafetensorsNotFound { .. })
            );
            if ok {
                Ok(())
            } else {
                Err(format!("want {kind}: {}, got {got}", err["message"]))
            }
        }
        (want, got) => Err(format!("want error {want}, got {got:?}")),
    }
}

#[test]
fn synthetic_listings_select_what_diffusers_selects() {
    let text = std::fs::read_to_string(fixtures().join("selection_cases.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let index = ModelIndex::from_object(
            case["model_index"].as_object().unwrap().clone(),
            Path::new(name),
        )
        .unwrap();
        let files: BTreeSet<String> = strings(&case["files"]).into_iter().collect();
        for result in case["results"].as_array().unwrap() {
            checked += 1;
            if let Err(e) = check(&files, &index, result) {
                failures.push(format!(
                    "{name} variant={} use_safetensors={}: {e}",
                    result["variant"], result["use_safetensors"]
                ));
            }
        }
    }
    assert!(checked >= 100, "only {checked} decisions recorded");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fixture_pipelines_select_what_diffusers_selects_and_loads() {
    let text = std::fs::read_to_string(fixtures().join("pipeline_selections.json")).unwrap();
    let records: Value = serde_json::from_str(&text).unwrap();
    let root = fixtures().join("..");
    let mut failures = Vec::new();
    for record in records.as_array().unwrap() {
        let pipeline = record["pipeline"].as_str().unwrap();
        let folder = root.join(pipeline);
        let index = ModelIndex::load(&folder).unwrap();
        let mut files = BTreeSet::new();
        for entry in walk(&folder) {
            files.insert(entry);
        }
        // versions.json is written after the selection was recorded; it matches no pattern.
        files.remove("versions.json");
        if let Err(e) = check(&files, &index, record) {
            failures.push(format!("{pipeline} variant={}: {e}", record["variant"]));
        }
        // What from_pretrained opened = the selected files minus index files.
        let options = SelectionOptions {
            variant: record["variant"].as_str().map(String::from),
            use_safetensors: record["use_safetensors"].as_bool(),
            ..Default::default()
        };
        let plan = download_plan(&files, &index, &options, pipeline).unwrap();
        let loaded: BTreeSet<String> = plan
            .model_filenames
            .iter()
            .filter(|f| !diff_format::weights::is_index_file(f))
            .cloned()
            .collect();
        let want: BTreeSet<String> = strings(&record["loaded_files"]).into_iter().collect();
        if loaded != want {
            failures.push(format!(
                "{pipeline} variant={}: loaded want {want:?}, got {loaded:?}",
                record["variant"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}
