//! `burn-diffusers convert`: flags reach the conversion (separate VAE, EMA, dtype, variant,
//! shards), failures exit non-zero without an output folder, and `--help` documents detection.
//! Byte parity with diffusers is the library's test (`diff-convert/tests/single_file_families.rs`);
//! here the CLI output is compared with the same diffusers-made fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::copy_tree;

fn fixtures() -> PathBuf {
    common::fixture_path("51-single-file")
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run burn-diffusers")
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `burn-diffusers convert CASE/CHECKPOINT --out OUT --config CASE/config EXTRA...`.
fn convert(case: &Path, checkpoint: &str, out: &Path, extra: &[&str]) -> Output {
    let checkpoint = case.join(checkpoint);
    let config = case.join("config");
    let mut args = vec![
        "convert",
        checkpoint.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

/// Each of `files` under `out` equals, byte for byte, the one under `expected` (tolerance:
/// none).
fn assert_same_files(out: &Path, expected: &Path, files: &[&str]) {
    for file in files {
        assert!(
            read(&out.join(file)) == read(&expected.join(file)),
            "{file} (exact)"
        );
    }
}

#[test]
fn convert_with_separate_vae_and_extract_ema_writes_what_diffusers_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let case = fixtures().join("sd1_vae");
    let out = tmp.path().join("out");
    let vae = case.join("vae.safetensors");
    let o = convert(
        &case,
        "model.safetensors",
        &out,
        &["--vae", vae.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_files(
        &out,
        &case.join("expected"),
        &[
            "model_index.json",
            "vae/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors",
        ],
    );

    let case = fixtures().join("sd1_ema");
    let o = convert(&case, "model.ckpt", &out, &["--extract-ema"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_files(
        &out,
        &case.join("expected_ema"),
        &["unet/diffusion_pytorch_model.safetensors"],
    );
}

#[test]
fn convert_dtype_variant_and_shards_reach_the_save() {
    let tmp = tempfile::tempdir().unwrap();
    let case = fixtures().join("sd1_fp16");
    let out = tmp.path().join("out");
    let o = convert(&case, "model.safetensors", &out, &["--dtype", "f16"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_files(
        &out,
        &case.join("expected_fp16"),
        &[
            "unet/diffusion_pytorch_model.safetensors",
            "text_encoder/config.json",
        ],
    );
    let o = convert(
        &case,
        "model.safetensors",
        &out,
        &["--variant", "fp16", "--max-shard-size", "20KB"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let index: serde_json::Value = serde_json::from_slice(&read(
        &out.join("unet/diffusion_pytorch_model.safetensors.index.fp16.json"),
    ))
    .unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    for shard in shards {
        assert!(
            shard.starts_with("diffusion_pytorch_model.fp16-0000"),
            "{shard}"
        );
        assert!(out.join("unet").join(shard).is_file(), "{shard}");
    }
    // The variant is written beside, not over, the weights of the conversion before (f16).
    assert!(
        read(&out.join("unet/diffusion_pytorch_model.safetensors"))
            == read(&case.join("expected_fp16/unet/diffusion_pytorch_model.safetensors")),
        "the earlier non-variant save is kept"
    );
}

#[test]
fn convert_of_a_file_without_unet_fails_naming_the_keys_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A VAE-only file: no --config, so the family must be detected, and it cannot be.
    let o = cli(&[
        "convert",
        fixtures().join("sd1_vae/vae.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("model.diffusion_model.input_blocks.0.0.weight"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn convert_help_explains_detection_and_default_configs() {
    let o = cli(&["convert", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "infer_diffusers_model_type",
        "9 input channels",
        "stabilityai/stable-diffusion-2-1-base",
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        "--extract-ema",
        "--vae",
        "--max-shard-size",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn convert_without_config_takes_the_default_repo_of_the_detected_family_from_the_cache() {
    // diffusers' `from_single_file` without `config=` downloads the configs of the family's
    // default repo. Here that repo is served from a Hugging Face cache (offline) holding the
    // fixture's config folder under the name diffusers chose (case.json), so the result must be
    // diffusers' `from_single_file(config=folder)` output.
    let case = fixtures().join("sd2_inpaint");
    let info: serde_json::Value = serde_json::from_slice(&read(&case.join("case.json"))).unwrap();
    let repo = info["default_config"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    copy_tree(
        &case.join("config"),
        &repo_dir.join("snapshots").join(commit),
    );
    let out = tmp.path().join("out");
    let o = cli(&[
        "convert",
        case.join("model.ckpt").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--offline",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(repo), "{stderr}");
    assert_same_files(
        &out,
        &case.join("expected"),
        &[
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors",
            "scheduler/scheduler_config.json",
        ],
    );
}
