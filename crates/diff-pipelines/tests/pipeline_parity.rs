//! The parity gate: each case of `tests/fixtures/40-pipeline-runs` (made by real diffusers
//! 0.42.1 on the bundled tiny pipelines, `output_type="np"`) replayed here with the same seeds.
//! Tolerances (from `cases.json`): every pixel within 2/255, mean absolute error under 0.5/255.
//! The final latents are compared too (same tolerances) to tell loop errors from decode errors.

use diff_pipelines::{
    CallArgs, DiffusionPipeline, Generators, LoadOptions, OutputType, Passed, PipelineClass,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read_tensor(path: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), data)
}

fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

fn pair(v: Option<&Value>) -> Option<(usize, usize)> {
    let a = v?.as_array()?;
    Some((a.first()?.as_u64()? as usize, a.get(1)?.as_u64()? as usize))
}

fn call_args(args: &Value, dir: &Path) -> CallArgs {
    let get = |k: &str| args.get(k);
    let image = |k: &str| {
        get(k)
            .and_then(Value::as_str)
            .map(|p| vec![diff_pipelines::image_processor::load_image(&dir.join(p)).unwrap()])
    };
    CallArgs {
        prompt: strings(get("prompt").unwrap()).unwrap(),
        prompt_2: get("prompt_2").and_then(strings),
        negative_prompt: get("negative_prompt").and_then(strings),
        num_images_per_prompt: get("num_images_per_prompt")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize,
        height: get("height").and_then(Value::as_u64).map(|v| v as usize),
        width: get("width").and_then(Value::as_u64).map(|v| v as usize),
        num_inference_steps: get("num_inference_steps").and_then(Value::as_u64).unwrap() as usize,
        guidance_scale: get("guidance_scale")
            .and_then(Value::as_f64)
            .map(|v| v as f32),
        guidance_rescale: get("guidance_rescale")
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as f32,
        clip_skip: get("clip_skip").and_then(Value::as_u64).map(|v| v as usize),
        eta: get("eta").and_then(Value::as_f64).unwrap_or(0.0) as f32,
        strength: get("strength").and_then(Value::as_f64).map(|v| v as f32),
        generator: match (get("seed"), get("seeds")) {
            (Some(s), _) => Generators::Seed(s.as_u64().unwrap()),
            (_, Some(s)) => Generators::Seeds(
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect(),
            ),
            _ => Generators::Random,
        },
        image: image("image"),
        mask_image: image("mask_image"),
        original_size: pair(get("original_size")),
        crops_coords_top_left: pair(get("crops_coords_top_left")).unwrap_or((0, 0)),
        target_size: pair(get("target_size")),
        negative_original_size: pair(get("negative_original_size")),
        negative_target_size: pair(get("negative_target_size")),
        denoising_end: get("denoising_end").and_then(Value::as_f64).map(|v| v as f32),
        denoising_start: get("denoising_start").and_then(Value::as_f64).map(|v| v as f32),
        output_type: OutputType::Np,
        ..CallArgs::default()
    }
}

fn compare(
    what: &str,
    got: &[f32],
    want: &[f32],
    max_tol: f32,
    mean_tol: f32,
) -> Result<(f32, f32), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut max = 0f32;
    let mut sum = 0f64;
    for (a, b) in got.iter().zip(want) {
        let d = (a - b).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    let mean = (sum / want.len().max(1) as f64) as f32;
    if !(max <= max_tol && mean < mean_tol) {
        return Err(format!(
            "{what}: max abs {max:.3e} (tol {max_tol:.3e}), mean abs {mean:.3e} (tol {mean_tol:.3e})"
        ));
    }
    Ok((max, mean))
}

#[test]
fn pipelines_match_diffusers_on_tiny_fixtures() {
    let dir = fixtures().join("40-pipeline-runs");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let max_tol = meta["tolerance"]["max_abs"].as_f64().unwrap() as f32;
    let mean_tol = meta["tolerance"]["mean_abs"].as_f64().unwrap() as f32;
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 12, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut loaded: BTreeMap<(String, String), DiffusionPipeline> = BTreeMap::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let folder = case["pipeline_folder"].as_str().unwrap().to_string();
        let class_name = case["pipeline_class"].as_str().unwrap().to_string();
        let keep_checker = case["args"]
            .get("safety_checker")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let key = (
            folder.clone(),
            format!("{class_name} checker={keep_checker}"),
        );
        let pipe = loaded.entry(key).or_insert_with(|| {
            let mut options = LoadOptions {
                pipeline_class: PipelineClass::from_name(&class_name),
                ..LoadOptions::default()
            };
            if !keep_checker {
                options.components.safety_checker = Passed::Drop;
                options
                    .config
                    .insert("requires_safety_checker".into(), Value::Bool(false));
            }
            DiffusionPipeline::from_pretrained(fixtures().join(&folder).to_str().unwrap(), &options)
                .unwrap_or_else(|e| panic!("{name}: loading {folder}: {e}"))
        });
        let mut pipe = pipe.clone();
        let scheduler = case["scheduler_class"].as_str().unwrap();
        pipe.swap_scheduler(scheduler, &serde_json::Map::new())
            .unwrap();
        let args = call_args(&case["args"], &dir);
        let out = match pipe.call(&args, None) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        // The safety checker's flags, when diffusers ran one (exact).
        let want_flags: Option<Vec<bool>> =
            serde_json::from_value(case["nsfw_content_detected"].clone()).unwrap();
        if want_flags.is_some() || keep_checker {
            assert_eq!(
                out.nsfw_content_detected, want_flags,
                "{name}: nsfw_content_detected"
            );
        }
        let file = dir.join(format!("{name}.safetensors"));
        let (lshape, want_latents) = read_tensor(&file, "latents");
        let got_latents: Vec<f32> = out
            .latents
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        assert_eq!(out.latents.dims().to_vec(), lshape, "{name}: latents shape");
        let (ishape, want_images) = read_tensor(&file, "images");
        let imgs = out.images.as_ref().unwrap();
        assert_eq!(
            vec![imgs.count, imgs.height, imgs.width, 3],
            ishape,
            "{name}: image shape"
        );
        let lat = compare(
            &format!("{name} latents"),
            &got_latents,
            &want_latents,
            max_tol * 10.0,
            mean_tol * 10.0,
        );
        match compare(
            &format!("{name} images"),
            &imgs.data,
            &want_images,
            max_tol,
            mean_tol,
        ) {
            Ok((max, mean)) => {
                eprintln!("{name}: images max {max:.2e} mean {mean:.2e}; latents {lat:?}")
            }
            Err(e) => failures.push(format!("{e}; latents {lat:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
