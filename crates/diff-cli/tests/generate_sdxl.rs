//! `burn-diffusers generate` on the SDXL refiner and SDXL inpaint layouts: cases of
//! `tests/fixtures/42-sdxl` (real diffusers 0.42.1) replayed through the built CLI with
//! `--image`, `--mask`, `--strength` and `--aesthetic-score`, compared with the same tolerances as
//! the library gate (every pixel within 2/255, mean absolute error under 0.5/255).

mod common;

use burn_diffusers::pipelines::outputs::load_float_images;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The single stage of a 42-sdxl case.
fn stage(name: &str) -> Value {
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("42-sdxl/cases.json")).unwrap(),
    )
    .unwrap();
    let case = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone();
    assert_eq!(case["stages"].as_array().unwrap().len(), 1);
    case["stages"][0].clone()
}

/// Runs `generate` for a case; `--model` is the case's folder, the pipeline class comes from
/// model_index.json plus `--image` / `--mask`, as a CLI user gets it.
fn generate_case(name: &str, extra: &[&str]) {
    let st = stage(name);
    let args = &st["args"];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let fx = fixtures();
    let path = |key: &str| {
        fx.join("42-sdxl")
            .join(args[key].as_str().unwrap())
            .display()
            .to_string()
    };
    let mut cli: Vec<String> = vec![
        "generate".into(),
        "--model".into(),
        fx.join(st["pipeline_folder"].as_str().unwrap())
            .display()
            .to_string(),
        "--prompt".into(),
        args["prompt"].as_str().unwrap().into(),
        "--steps".into(),
        args["num_inference_steps"].to_string(),
        "--seed".into(),
        args["seed"].to_string(),
        "--image".into(),
        path("image"),
        "--strength".into(),
        args["strength"].to_string(),
        "--out-array".into(),
        out.display().to_string(),
    ];
    if args.get("mask_image").is_some() {
        cli.extend(["--mask".into(), path("mask_image")]);
    }
    for key in ["height", "width"] {
        if let Some(v) = args.get(key) {
            cli.extend([format!("--{key}"), v.to_string()]);
        }
    }
    if let Some(s) = st["scheduler_class"].as_str() {
        cli.extend(["--scheduler".into(), s.into()]);
    }
    cli.extend(extra.iter().map(|s| s.to_string()));
    let run = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(&cli)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "burn-diffusers {cli:?} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_images_match(name, &out, &fx.join(format!("42-sdxl/{name}.safetensors")));
}

/// The CLI's `--out-array` against the fixture's `images`, with the library gate's tolerances
/// (every pixel within 2/255, mean absolute error under 0.5/255).
fn assert_images_match(name: &str, got: &Path, want: &Path) {
    let got = load_float_images(got).unwrap();
    let want = load_float_images(want).unwrap();
    assert_eq!(
        (got.count, got.height, got.width),
        (want.count, want.height, want.width)
    );
    let diffs: Vec<f32> = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let max = diffs.iter().copied().fold(0.0, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    eprintln!("{name}: max {max:.3e}, mean {mean:.3e}");
    assert!(
        max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
        "{name}: max {max}, mean {mean}"
    );
}

#[test]
fn generate_with_a_refiner_folder_and_image_matches_diffusers() {
    generate_case("refiner_img2img_euler", &[]);
}

#[test]
fn generate_with_mask_on_an_sdxl_folder_inpaints_as_diffusers() {
    generate_case("inpaint_4ch_base_strength_1_euler", &[]);
}

#[test]
fn generate_refiner_inpaint_with_aesthetic_score_matches_diffusers() {
    let st = stage("inpaint_refiner_aesthetic_strength_07");
    let score = st["args"]["aesthetic_score"].to_string();
    generate_case(
        "inpaint_refiner_aesthetic_strength_07",
        &["--aesthetic-score", &score],
    );
}

fn cli(args: &[String]) {
    let run = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "burn-diffusers {args:?} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// diffusers' "ensemble of expert denoisers" through the CLI: the base stops at
/// `denoising_end` and writes its latents (`output_type="latent"`), the refiner continues from
/// them with `denoising_start`. Latents within 1e-4 of the largest value (float32 UNet and
/// scheduler differences only), images within the library gate's 2/255 / 0.5/255.
#[test]
fn base_to_refiner_handoff_through_out_latents_and_image_latents_matches_diffusers() {
    let name = "base_to_refiner_handoff_euler";
    let fx = fixtures();
    let want_file = fx.join(format!("42-sdxl/{name}.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let latents = dir.path().join("base.safetensors");
    let out = dir.path().join("out.safetensors");
    let s = |v: &str| v.to_string();
    let prompt = "a photo of an astronaut riding a horse on mars";
    cli(&[
        s("generate"),
        s("--model"),
        fx.join("tiny-sdxl").display().to_string(),
        s("--prompt"),
        s(prompt),
        s("--steps"),
        s("8"),
        s("--denoising-end"),
        s("0.7"),
        s("--height"),
        s("32"),
        s("--width"),
        s("32"),
        s("--seed"),
        s("44"),
        s("--out-latents"),
        latents.display().to_string(),
    ]);
    let (_, got) = common::read_tensor(&latents, "latents");
    let (_, want) = common::read_tensor(&want_file, "stage0_latents");
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max / scale < 1e-4, "base latents: max {max}, scale {scale}");
    cli(&[
        s("generate"),
        s("--model"),
        fx.join("tiny-sdxl-refiner").display().to_string(),
        s("--prompt"),
        s(prompt),
        s("--steps"),
        s("8"),
        s("--denoising-start"),
        s("0.7"),
        s("--image-latents"),
        latents.display().to_string(),
        s("--seed"),
        s("45"),
        s("--out-array"),
        out.display().to_string(),
    ]);
    assert_images_match(name, &out, &want_file);
}
