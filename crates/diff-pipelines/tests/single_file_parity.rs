//! `from_single_file` + generation against real diffusers' `from_single_file` + generation:
//! each case of `tests/fixtures/54-single-file-load` (an SD 1.x pickle checkpoint and an SDXL
//! safetensors checkpoint, with their config folders) replayed with the same seed and arguments.
//! Tolerance: every pixel within 2/255 and mean absolute error under 0.5/255.

use diff_pipelines::single_file::SingleFileLoadOptions;
use diff_pipelines::{CallArgs, DiffusionPipeline, Generators, LoadOptions, OutputType};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn images(path: &Path) -> (Vec<usize>, Vec<f32>) {
    common::read_tensor(path, "images")
}

#[test]
fn single_file_generation_matches_diffusers_from_single_file() {
    let dir = root().join("tests/fixtures/54-single-file-load");

    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = cases.as_object().unwrap();
    assert!(cases.len() >= 2);
    for (name, case) in cases {
        let options = SingleFileLoadOptions {
            config: Some(
                root()
                    .join(case["config"].as_str().unwrap())
                    .display()
                    .to_string(),
            ),
            load: LoadOptions {
                local_files_only: true,
                ..LoadOptions::default()
            },
            ..SingleFileLoadOptions::default()
        };
        let ckpt = root().join(case["checkpoint"].as_str().unwrap());
        let pipe = DiffusionPipeline::from_single_file(&ckpt, &options).unwrap();
        assert_eq!(pipe.class().name(), case["pipeline"].as_str().unwrap());
        let a = &case["args"];
        let call = CallArgs {
            prompt: vec![a["prompt"].as_str().unwrap().to_string()],
            negative_prompt: a
                .get("negative_prompt")
                .and_then(Value::as_str)
                .map(|n| vec![n.to_string()]),
            num_inference_steps: a["steps"].as_u64().unwrap() as usize,
            guidance_scale: Some(a["guidance"].as_f64().unwrap() as f32),
            num_images_per_prompt: a.get("num_images").and_then(Value::as_u64).unwrap_or(1)
                as usize,
            // Image k from seed + k (the fixture's `generator=[...]`, as `generate` does).
            generator: Generators::Seeds(
                (0..a.get("num_images").and_then(Value::as_u64).unwrap_or(1))
                    .map(|k| a["seed"].as_u64().unwrap() + k)
                    .collect(),
            ),
            output_type: OutputType::Np,
            ..CallArgs::default()
        };
        let got = pipe.call(&call, None).unwrap().images.unwrap();
        let (shape, want) = images(&dir.join(format!("{name}.safetensors")));
        assert_eq!(
            vec![got.count, got.height, got.width, 3],
            shape,
            "{name}: shape"
        );
        let diffs: Vec<f32> = got
            .data
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs())
            .collect();
        let max = diffs.iter().copied().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        println!("{name}: max |diff| {max:.3e}, mean {mean:.3e}");
        assert!(
            max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
            "{name}: max {max}, mean {mean} (tolerance 2/255 per pixel, 0.5/255 mean)"
        );
    }
}
