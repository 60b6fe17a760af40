//! `burn-diffusers inspect --json` on the tiny fixture pipelines lists exactly the weight files
//! that diffusers 0.42.1 selected and opened, as recorded by
//! `tests/fixtures/00-pipelines/generate.py` in `tests/fixtures/format/pipeline_selections.json`.
//! Comparison: exact file sets.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn inspect(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .arg("inspect")
        .args(args)
        .output()
        .expect("running burn-diffusers");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), json, stderr)
}

fn set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn inspect_lists_the_files_diffusers_loads_for_every_fixture_and_variant() {
    let text = std::fs::read_to_string(fixtures().join("format/pipeline_selections.json")).unwrap();
    let records: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for record in &records {
        let pipeline = record["pipeline"].as_str().unwrap();
        let folder = fixtures().join(pipeline);
        let folder = folder.to_str().unwrap();
        let mut args = vec![folder, "--json"];
        if let Some(v) = record["variant"].as_str() {
            args.extend(["--variant", v]);
        }
        match record["use_safetensors"].as_bool() {
            Some(true) => args.extend(["--use-safetensors", "true"]),
            Some(false) => args.extend(["--use-safetensors", "false"]),
            None => {}
        }
        let (ok, report, stderr) = inspect(&args);
        assert!(ok, "inspect {args:?} failed: {stderr}");
        assert_eq!(
            set(&report["weight_files"]),
            set(&record["loaded_files"]),
            "{pipeline} variant={} use_safetensors={}",
            record["variant"],
            record["use_safetensors"]
        );
        assert_eq!(
            set(&report["selected_files"]),
            set(&record["model_filenames"]),
            "{pipeline}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} recorded selections");
}

#[test]
fn inspect_reports_components_scheduler_and_tensor_statistics() {
    let folder = fixtures().join("tiny-sd");
    let (ok, report, stderr) = inspect(&[folder.to_str().unwrap(), "--json", "--variant", "fp16"]);
    assert!(ok, "{stderr}");
    assert_eq!(report["pipeline_class"], "StableDiffusionPipeline");
    let components = report["components"].as_array().unwrap();
    let unet = components.iter().find(|c| c["name"] == "unet").unwrap();
    assert_eq!(unet["library"], "diffusers");
    assert_eq!(unet["class"], "UNet2DConditionModel");
    // Every tensor of the fp16 variant is F16; the tensor count equals the header's entries.
    let dtypes = unet["dtypes"].as_object().unwrap();
    assert_eq!(dtypes.keys().collect::<Vec<_>>(), ["F16"]);
    assert_eq!(dtypes["F16"], unet["tensors"]);
    assert!(unet["parameters"].as_u64().unwrap() > 0);
    let image_encoder = components
        .iter()
        .find(|c| c["name"] == "image_encoder")
        .unwrap();
    assert_eq!(image_encoder["class"], Value::Null);
    assert_eq!(
        report["scheduler"]["config"]["_class_name"],
        "PNDMScheduler"
    );
    assert_eq!(report["scheduler"]["config"]["beta_start"], 0.00085);
}

#[test]
fn inspect_fails_clearly_for_a_missing_variant() {
    let folder = fixtures().join("tiny-sd-inpaint");
    let (ok, _, stderr) = inspect(&[folder.to_str().unwrap(), "--variant", "fp16"]);
    assert!(!ok);
    assert!(stderr.contains("variant=fp16"), "{stderr}");
}

#[test]
fn inspect_fails_when_a_model_component_would_load_nothing() {
    // tiny-sd ships safetensors only; diffusers with use_safetensors=False selects no weights,
    // so loading fails: each component is a problem, and inspect exits non-zero (issue 18).
    let folder = fixtures().join("tiny-sd");
    let (ok, report, stderr) = inspect(&[
        folder.to_str().unwrap(),
        "--json",
        "--use-safetensors",
        "false",
    ]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
    assert!(set(&report["weight_files"]).is_empty());
    let problems = set(&report["problems"]);
    for component in ["safety_checker", "text_encoder", "unet", "vae"] {
        assert!(
            problems
                .iter()
                .any(|w| w.contains(&format!("`{component}`"))),
            "no problem for {component}: {problems:?}"
        );
    }
}

#[test]
fn inspect_reads_pickle_weights_without_executing_them() {
    // Recorded by the generator with torch.load(weights_only=True): exact counts.
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("format/bin_vae.json")).unwrap(),
    )
    .unwrap();
    let folder = fixtures().join("format/bin-vae");
    let (ok, report, stderr) = inspect(&[folder.to_str().unwrap(), "--json"]);
    // The folder holds only the VAE of a StableDiffusionPipeline: the report is complete, and
    // the missing required components are problems (issue 18), so the exit status is 1.
    assert!(!ok, "{stderr}");
    let problems = set(&report["problems"]);
    assert_eq!(problems.len(), 4, "{problems:?}");
    for component in ["text_encoder", "tokenizer", "unet", "scheduler"] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("`{component}` is required"))),
            "{problems:?}"
        );
    }
    let file = want["file"].as_str().unwrap().to_owned();
    assert_eq!(set(&report["weight_files"]), BTreeSet::from([file]));
    let vae = &report["components"][0];
    assert_eq!(vae["name"], "vae");
    assert_eq!(vae["tensors"], want["tensors"]);
    assert_eq!(vae["parameters"], want["parameters"]);
    assert_eq!(vae["fully_inspected"], true);
    assert_eq!(want["dtypes"], serde_json::json!(["torch.float32"]));
    assert_eq!(
        vae["dtypes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["F32"]
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn inspect_resolves_a_repo_id_from_the_offline_cache() {
    // A Hugging Face cache holding tiny-sd as org/tiny-sd at a fixed commit; no network used.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspect_offline_cache");
    let _ = std::fs::remove_dir_all(&cache);
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join("models--org--tiny-sd");
    copy_tree(
        &fixtures().join("tiny-sd"),
        &repo.join("snapshots").join(commit),
    );
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let cache_arg = cache.to_str().unwrap();
    let args = [
        "org/tiny-sd",
        "--json",
        "--offline",
        "--cache-dir",
        cache_arg,
        "--variant",
        "fp16",
    ];
    let (ok, report, stderr) = inspect(&args);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(fixtures().join("format/pipeline_selections.json")).unwrap();
    let records: Vec<Value> = serde_json::from_str(&text).unwrap();
    let want = records
        .iter()
        .find(|r| r["pipeline"] == "tiny-sd" && r["variant"] == "fp16")
        .unwrap();
    assert_eq!(set(&report["weight_files"]), set(&want["loaded_files"]));
}

/// Issue 18: every reason `generate` could not load a folder is reported, with its reason, and
/// the exit status is non-zero; the inputs are the tiny-sd fixture with one thing broken each.
#[test]
fn inspect_reports_every_load_problem_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let dir = tmp.path().join(name);
        copy_tree(&fixtures().join("tiny-sd"), &dir);
        dir
    };
    let edit_json = |path: &Path, key: &str, value: Value| {
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    };
    let problems_of = |dir: &Path| {
        let (ok, report, stderr) = inspect(&[dir.to_str().unwrap(), "--json"]);
        assert!(!ok, "{}: {stderr}", dir.display());
        assert!(stderr.contains("problem(s)"), "{stderr}");
        set(&report["problems"])
    };
    let has = |problems: &BTreeSet<String>, needle: &str| {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no `{needle}` in {problems:?}"
        );
    };

    let unknown = fresh("unknown");
    edit_json(
        &unknown.join("model_index.json"),
        "_class_name",
        Value::from("NoSuchPipeline"),
    );
    has(
        &problems_of(&unknown),
        "pipeline class `NoSuchPipeline` is not one",
    );

    let wrong_type = fresh("wrong-type");
    edit_json(
        &wrong_type.join("unet/config.json"),
        "sample_size",
        Value::from("big"),
    );
    let p = problems_of(&wrong_type);
    has(&p, "component `unet` (UNet2DConditionModel)");
    has(&p, "sample_size");

    let null_unet = fresh("null-unet");
    edit_json(
        &null_unet.join("model_index.json"),
        "unet",
        serde_json::json!([null, null]),
    );
    has(&problems_of(&null_unet), "component `unet` is [null, null]");

    let no_folder = fresh("no-folder");
    std::fs::remove_dir_all(no_folder.join("unet")).unwrap();
    has(&problems_of(&no_folder), "its folder unet/ is missing");

    let bad_scheduler = fresh("bad-scheduler");
    edit_json(
        &bad_scheduler.join("scheduler/scheduler_config.json"),
        "num_train_timesteps",
        Value::from(0),
    );
    has(&problems_of(&bad_scheduler), "num_train_timesteps");

    // A pickle that calls os.system (`posix.system`): refused, with the reason.
    let refused = fresh("refused-pickle");
    for f in std::fs::read_dir(refused.join("vae")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "safetensors") {
            std::fs::remove_file(f).unwrap();
        }
    }
    std::fs::copy(
        fixtures().join("50-convert/pickle/malicious_os_system.bin"),
        refused.join("vae/diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let p = problems_of(&refused);
    has(&p, "vae/diffusion_pytorch_model.bin cannot be loaded");
    has(&p, "system`, which is not allowed");
}
