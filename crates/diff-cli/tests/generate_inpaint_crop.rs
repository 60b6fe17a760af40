//! `burn-diffusers generate --padding-mask-crop N` on the bundled tiny inpaint pipeline: the
//! `sd_inpaint_padding_mask_crop` case of `tests/fixtures/41-image-processor` (real diffusers
//! 0.42.1, image and mask larger than the generation size) replayed through the built CLI.
//! The output keeps the input image's size; tolerance as the library gate (every pixel within
//! 2/255, mean absolute error under 0.5/255).

use burn_diffusers::pipelines::outputs::load_float_images;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

mod common;

fn fixture_dir() -> PathBuf {
    common::fixture_path("41-image-processor")
}

#[test]
fn generate_with_padding_mask_crop_matches_diffusers() {
    let dir = fixture_dir();
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pipelines.json")).unwrap())
            .unwrap();
    let case = meta["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sd_inpaint_padding_mask_crop")
        .unwrap()
        .clone();
    let args = &case["args"];
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out.safetensors");
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let run = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["generate", "--model"])
        .arg(
            dir.join("..")
                .join(case["pipeline_folder"].as_str().unwrap()),
        )
        .args(["--prompt", &s(&args["prompt"])])
        .args(["--steps", &s(&args["num_inference_steps"])])
        .args(["--guidance", &s(&args["guidance_scale"])])
        .args(["--seed", &s(&args["seed"])])
        .args([
            "--height",
            &s(&args["height"]),
            "--width",
            &s(&args["width"]),
        ])
        .args(["--scheduler", case["scheduler_class"].as_str().unwrap()])
        .arg("--image")
        .arg(dir.join(args["image"].as_str().unwrap()))
        .arg("--mask")
        .arg(dir.join(args["mask_image"].as_str().unwrap()))
        .args(["--padding-mask-crop", &s(&args["padding_mask_crop"])])
        .arg("--no-safety-checker")
        .arg("--out-array")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = load_float_images(&out).unwrap();
    let (want_shape, want) = common::read_tensor(
        &dir.join("pipelines.safetensors"),
        "sd_inpaint_padding_mask_crop.images",
    );
    assert_eq!(vec![got.count, got.height, got.width, 3], want_shape);
    let (max_tol, mean_tol) = (2.0 / 255.0, 0.5 / 255.0);
    let mut max = 0f32;
    let mut sum = 0f64;
    for (a, b) in got.data.iter().zip(&want) {
        max = max.max((a - b).abs());
        sum += f64::from((a - b).abs());
    }
    let mean = (sum / want.len() as f64) as f32;
    assert!(
        max <= max_tol && mean < mean_tol,
        "max {max:e} (tol {max_tol:e}), mean {mean:e} (tol {mean_tol:e})"
    );
}
