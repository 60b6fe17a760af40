//! `burn-diffusers generate --model FILE.safetensors|FILE.ckpt [--config DIR]`: a single-file
//! checkpoint works as a model. Each case of `tests/fixtures/54-single-file-load` (real
//! diffusers' `from_single_file` + generation) is run through the built binary and compared:
//! every pixel within 2/255, mean absolute error under 0.5/255. Failures (an unknown
//! architecture, `--config` with a folder model, no config offline) exit non-zero with a clear
//! message and write nothing.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cli(args: &[String], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .output()
        .expect("run burn-diffusers")
}

fn images(path: &Path) -> (Vec<usize>, Vec<f32>) {
    common::read_tensor(path, "images")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn generate_from_a_single_file_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = root().join("tests/fixtures/54-single-file-load");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    for (name, case) in cases.as_object().unwrap() {
        let a = &case["args"];
        let out = tmp.path().join(format!("{name}.safetensors"));
        let mut args = strings(&["generate", "--model"]);
        args.push(
            root()
                .join(case["checkpoint"].as_str().unwrap())
                .display()
                .to_string(),
        );
        args.push("--config".into());
        args.push(
            root()
                .join(case["config"].as_str().unwrap())
                .display()
                .to_string(),
        );
        for (flag, key) in [
            ("--prompt", "prompt"),
            ("--negative-prompt", "negative_prompt"),
            ("--steps", "steps"),
            ("--guidance", "guidance"),
            ("--seed", "seed"),
            ("--num-images", "num_images"),
        ] {
            if let Some(v) = a.get(key) {
                args.push(flag.into());
                args.push(match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
        }
        args.push("--out-array".into());
        args.push(out.display().to_string());
        let run = cli(&args, &tmp.path().join("cache"));
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let (shape, got) = images(&out);
        let (want_shape, want) = images(&dir.join(format!("{name}.safetensors")));
        assert_eq!(shape, want_shape, "{name}");
        let diffs: Vec<f32> = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).collect();
        let max = diffs.iter().copied().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(
            max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
            "{name}: max {max}, mean {mean} (tolerance 2/255 per pixel, 0.5/255 mean)"
        );
    }
}

#[test]
fn single_file_failures_are_clear_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out.png");
    let run = |model: &Path, extra: &[&str]| {
        let mut args = strings(&["generate", "--prompt", "a cat", "--steps", "1", "--model"]);
        args.push(model.display().to_string());
        args.extend(strings(extra));
        args.push("--out".into());
        args.push(out.display().to_string());
        let output = cli(&args, &cache);
        assert!(!output.status.success(), "{model:?} {extra:?} succeeded");
        assert!(!out.exists(), "a failed run wrote {}", out.display());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let fixtures = root().join("tests/fixtures");
    // A VAE alone is no Stable Diffusion checkpoint.
    let vae = fixtures.join("51-single-file/sd1_vae/vae.safetensors");
    let msg = run(&vae, &[]);
    assert!(
        msg.contains("no Stable Diffusion UNet") && msg.contains("vae.safetensors"),
        "{msg}"
    );
    // A checkpoint without its VAE: diffusers' SingleFileComponentError.
    let no_vae = fixtures.join("51-single-file/sd1_vae/model.safetensors");
    let config = fixtures
        .join("51-single-file/sd1_vae/config")
        .display()
        .to_string();
    let msg = run(&no_vae, &["--config", &config]);
    assert!(msg.contains("`vae`") && msg.contains("pass it in"), "{msg}");
    // No --config, and the family's default repo is not in the (empty) offline cache.
    let ckpt = fixtures.join("50-convert/single_file/sd1/model.ckpt");
    let msg = run(&ckpt, &[]);
    assert!(
        msg.contains("stable-diffusion-v1-5/stable-diffusion-v1-5"),
        "{msg}"
    );
    // --config belongs to single files only.
    let msg = run(&fixtures.join("tiny-sd"), &["--config", &config]);
    assert!(
        msg.contains("--config") && msg.contains("single-file"),
        "{msg}"
    );
}

#[test]
fn separate_single_file_vae_generates_as_diffusers_vae_argument() {
    // `from_single_file(model, config=config, vae=AutoencoderKL.from_single_file(vae, ...))`:
    // diffusers saved that pipeline as `expected`; both runs must give the same floats.
    let tmp = tempfile::tempdir().unwrap();
    let case = root().join("tests/fixtures/51-single-file/sd1_vae");
    let common = strings(&[
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--seed",
        "5",
        "--out-array",
    ]);
    let run = |model: PathBuf, extra: Vec<String>, out: &Path| {
        let mut args = strings(&["generate", "--model"]);
        args.push(model.display().to_string());
        args.extend(extra);
        args.extend(common.clone());
        args.push(out.display().to_string());
        let output = cli(&args, &tmp.path().join("cache"));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        images(out)
    };
    let single = run(
        case.join("model.safetensors"),
        vec![
            "--config".into(),
            case.join("config").display().to_string(),
            "--vae".into(),
            case.join("vae.safetensors").display().to_string(),
        ],
        &tmp.path().join("single.safetensors"),
    );
    let folder = run(
        case.join("expected"),
        Vec::new(),
        &tmp.path().join("folder.safetensors"),
    );
    // Tolerance zero: the same tensors.
    assert_eq!(single, folder);
    // A folder model lends its own vae/config.json to a single-file --vae.
    let replaced = run(
        case.join("expected"),
        vec![
            "--vae".into(),
            case.join("vae.safetensors").display().to_string(),
        ],
        &tmp.path().join("replaced.safetensors"),
    );
    assert_eq!(replaced, folder);
}
