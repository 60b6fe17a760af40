//! The AnimateDiff + IP-Adapter gate: `tests/fixtures/71-animatediff-ip-adapter` (diffusers
//! 0.42.1 following the loading guide's "Reuse a pipeline" section on the tiny fixtures: SD
//! with an IP-Adapter at 0.6, a SAG pipeline by `from_pipe`, `unload_ip_adapter` on it, then
//! `AnimateDiffPipeline.from_pipe(pipe_sd, motion_adapter=adapter)`, DDIM with
//! `beta_schedule="linear"`, the IP-Adapter loaded again, the "zoom-out" motion LoRA) replayed
//! with the same seed and `ip_adapter_image`: 16 frames with CFG and the LoRA at 0.75, and 8
//! frames without CFG (the LoRA disabled, scale 0.6). Tolerances (from `cases.json`): every
//! pixel of every frame within 2/255, mean absolute error under 0.5/255; the final latents
//! within ten times those. Also what the unload does to the SD pipeline (diffusers'
//! `AttributeError` there is a typed error here) and the bytes the AnimateDiff pipeline adds.

use diff_models::{FromPretrained, ModelLoadOptions, MotionAdapter, ScaleConfig};
use diff_pipelines::animatediff::video_latents;
use diff_pipelines::ip_adapter::{LoadIpAdapter, distinct_parameter_bytes};
use diff_pipelines::{
    AdapterWeight, CallArgs, DiffusionPipeline, Generators, LoadOptions, OutputType, Passed,
    PassedComponents, PipelineClass,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[macro_use]
mod common;
use common::{case_named, compare, fixtures, tolerance};

fn dir() -> PathBuf {
    fixtures().join("71-animatediff-ip-adapter")
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

fn ip_image() -> image::RgbImage {
    diff_image::load_image(&fixtures().join("47-ip-adapter/ip_image.png")).unwrap()
}

/// `load_ip_adapter(repo, subfolder="models", weight_name="ip-adapter_tiny.bin",
/// image_encoder_folder="models/image_encoder")`.
fn ip_adapter() -> LoadIpAdapter {
    let repo = fixtures().join("47-ip-adapter/repo");
    LoadIpAdapter::new(repo.to_str().unwrap(), "models", "ip-adapter_tiny.bin")
        .with_image_encoder_folder(Some("models/image_encoder"))
}

fn motion_adapter() -> Arc<MotionAdapter> {
    let device = Default::default();
    let (adapter, report) = MotionAdapter::from_pretrained(
        &fixtures().join("70-animatediff/motion_adapter"),
        &ModelLoadOptions::new(&device),
    )
    .unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    Arc::new(adapter)
}

/// `StableDiffusionPipeline.from_pretrained(tiny-sd, safety_checker=None, ...)`.
fn load_sd() -> DiffusionPipeline {
    let mut options = LoadOptions::default();
    options.components.safety_checker = Passed::Drop;
    options
        .config
        .insert("requires_safety_checker".into(), Value::Bool(false));
    let path = fixtures().join("tiny-sd");
    DiffusionPipeline::from_pretrained(path.to_str().unwrap(), &options).unwrap()
}

/// The guide's steps up to the AnimateDiff pipeline: (pipe_sd, pipe_sag, pipe_animate).
fn guide_pipelines() -> (DiffusionPipeline, DiffusionPipeline, DiffusionPipeline) {
    let mut pipe_sd = load_sd();
    pipe_sd.load_ip_adapter(&ip_adapter()).unwrap();
    pipe_sd
        .set_ip_adapter_scale(&[ScaleConfig::Uniform(0.6)])
        .unwrap();
    let mut pipe_sag = pipe_sd
        .from_pipe(
            PipelineClass::StableDiffusionSAG,
            &PassedComponents::default(),
            &BTreeMap::new(),
        )
        .unwrap();
    pipe_sag.unload_ip_adapter().unwrap();
    let mut pipe = pipe_sd.animatediff_from_pipe(motion_adapter()).unwrap();
    let overrides: Map<String, Value> = meta()["scheduler_overrides"].as_object().cloned().unwrap();
    pipe.swap_scheduler("DDIMScheduler", &overrides).unwrap();
    pipe.load_ip_adapter(&ip_adapter()).unwrap();
    let lora = fixtures().join("70-animatediff/motion_lora");
    let name = pipe
        .load_lora_weights(lora.to_str().unwrap(), None, Some("zoom-out"))
        .unwrap();
    assert_eq!(name, "zoom-out");
    (pipe_sd, pipe_sag, pipe)
}

/// A float16 tensor of a fixture file, widened.
fn read_f16(path: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F16, "{key} is float16");
    let data = t
        .data()
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    (t.shape().to_vec(), data)
}

fn call_args(args: &Value) -> CallArgs {
    let mut call = CallArgs {
        prompt: vec![args["prompt"].as_str().unwrap().to_string()],
        height: args["height"].as_u64().map(|v| v as usize),
        width: args["width"].as_u64().map(|v| v as usize),
        num_inference_steps: args["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: args
            .get("guidance_scale")
            .and_then(Value::as_f64)
            .map(|v| v as f32),
        generator: Generators::Seed(args["seed"].as_u64().unwrap()),
        output_type: OutputType::Np,
        ..CallArgs::default()
    };
    call.video.num_frames = args["num_frames"].as_u64().unwrap() as usize;
    call.ip_adapter.ip_adapter_image = Some(vec![vec![ip_image()]]);
    call
}

fn run_case(name: &str) {
    let meta = meta();
    let (max_tol, mean_tol) = tolerance(&meta);
    let case = case_named(&meta, "cases", name);
    let (_sd, _sag, pipe) = guide_pipelines();
    let scale = case["ip_adapter_scale"].as_f64().unwrap();
    pipe.set_ip_adapter_scale(&[ScaleConfig::Uniform(scale)])
        .unwrap();
    match case["lora"].as_f64() {
        Some(w) => {
            pipe.enable_lora();
            pipe.set_adapters(&["zoom-out"], &[AdapterWeight::Uniform(w)])
                .unwrap()
        }
        None => pipe.disable_lora(),
    }
    let args = call_args(&case["args"]);
    let out = pipe
        .call(&args, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let file = dir().join(format!("{name}.safetensors"));
    let (lshape, want_latents) = read_f16(&file, "latents");
    let got_latents = video_latents(out.latents.clone(), args.video.num_frames);
    assert_eq!(got_latents.dims().to_vec(), lshape, "{name}: latents shape");
    let (fshape, want_frames) = read_f16(&file, "frames");
    let imgs = out.images.as_ref().unwrap();
    let f = args.video.num_frames;
    assert_eq!(
        vec![imgs.count / f, f, imgs.height, imgs.width, 3],
        fshape,
        "{name}: frames shape"
    );
    let lat = compare(
        &format!("{name} latents"),
        &got_latents
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap(),
        &want_latents,
        max_tol * 10.0,
        mean_tol * 10.0,
    );
    let img = compare(
        &format!("{name} frames"),
        &imgs.data,
        &want_frames,
        max_tol,
        mean_tol,
    );
    eprintln!("{name}: frames {img:?}; latents {lat:?}");
    img.unwrap();
    lat.unwrap();
}

parity! {
    ip_cfg_lora075_16f => animatediff_ip_adapter_cfg_motion_lora_16_frames_matches_diffusers;
    ip_nocfg_8f => animatediff_ip_adapter_without_cfg_matches_diffusers;
}

#[test]
fn every_recorded_case_is_tested() {
    for case in meta()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        assert!(TESTED.contains(&name), "case {name} has no test");
    }
}

/// The guide's memory point, and its unload warning: the AnimateDiff pipeline adds only the
/// motion adapter's bytes and the motion LoRA's (held by the adapter's motion modules) to what
/// the SD pipeline holds (the UNet with the IP-Adapter layers, the VAE, the text and image
/// encoders are shared); and after
/// `pipe_sag.unload_ip_adapter()` the SD pipeline had no IP-Adapter (diffusers raises
/// `AttributeError: 'NoneType' object has no attribute 'image_projection_layers'`).
#[test]
fn guide_flow_shares_models_and_the_unload_reaches_the_sd_pipeline() {
    let mut pipe_sd = load_sd();
    pipe_sd.load_ip_adapter(&ip_adapter()).unwrap();
    let mut pipe_sag = pipe_sd
        .from_pipe(
            PipelineClass::StableDiffusionSAG,
            &PassedComponents::default(),
            &BTreeMap::new(),
        )
        .unwrap();
    pipe_sag.unload_ip_adapter().unwrap();
    let args = CallArgs::prompt("bear eats pizza")
        .with_steps(1)
        .with_size(32, 32)
        .with_ip_adapter_image(ip_image());
    let err = pipe_sd.call(&args, None).unwrap_err().to_string();
    assert!(
        err.contains("IP-Adapter") || err.contains("ip_adapter"),
        "{err}"
    );

    let (pipe_sd, _sag, pipe) = guide_pipelines();
    let adapter = pipe.motion_adapter().unwrap();
    let adapter_bytes = adapter.parameter_count() * 4;
    assert_eq!(
        adapter_bytes as u64,
        meta()["memory_diffusers"]["adapter_bytes"]
            .as_u64()
            .unwrap(),
        "the motion adapter's bytes are diffusers'"
    );
    let sd = distinct_parameter_bytes(&[&pipe_sd]);
    let anim = distinct_parameter_bytes(&[&pipe]);
    let both = distinct_parameter_bytes(&[&pipe_sd, &pipe]);
    eprintln!("parameter bytes: SD {sd}, AnimateDiff {anim}, both {both}, adapter {adapter_bytes}");
    // The motion LoRA's lora_A / lora_B (float32 in the file, as the pipeline holds them).
    let lora_file = std::fs::read(
        fixtures().join("70-animatediff/motion_lora/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let lora_bytes: usize = safetensors::SafeTensors::deserialize(&lora_file)
        .unwrap()
        .tensors()
        .iter()
        .map(|(_, t)| t.data().len())
        .sum();
    eprintln!("motion LoRA bytes {lora_bytes}");
    assert_eq!(anim, sd + adapter_bytes + lora_bytes);
    assert_eq!(both, anim);
    assert!(Arc::ptr_eq(
        pipe.image_encoder().unwrap(),
        pipe_sd.image_encoder().unwrap()
    ));
}

/// The gate sees the image prompt: with the IP-Adapter scale at 0 the frames are far from
/// diffusers' (so a call that dropped the image tokens, or gave them to the wrong frames,
/// would fail the cases above).
#[test]
fn the_image_prompt_changes_the_frames_beyond_the_tolerance() {
    let meta = meta();
    let (max_tol, _) = tolerance(&meta);
    let case = case_named(&meta, "cases", "ip_nocfg_8f");
    let (_sd, _sag, pipe) = guide_pipelines();
    pipe.set_ip_adapter_scale(&[ScaleConfig::Uniform(0.0)])
        .unwrap();
    pipe.disable_lora();
    let out = pipe.call(&call_args(&case["args"]), None).unwrap();
    let (_, want) = read_f16(&dir().join("ip_nocfg_8f.safetensors"), "frames");
    let got = &out.images.as_ref().unwrap().data;
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("scale 0 vs diffusers at 0.6: max abs {max}");
    assert!(max > 5.0 * max_tol, "max abs {max}");
}

/// Without the guide's unload-then-reload: the IP-Adapter loaded on the SD pipeline is on the
/// UNet the AnimateDiff pipeline shares, so `from_pipe` alone gives diffusers' frames (diffusers
/// needs the reload because its `from_pipe` copies the UNet into a new `UNetMotionModel`).
#[test]
fn ip_adapter_loaded_before_from_pipe_gives_the_same_frames() {
    let meta = meta();
    let (max_tol, mean_tol) = tolerance(&meta);
    let case = case_named(&meta, "cases", "ip_cfg_lora075_16f");
    let mut pipe_sd = load_sd();
    pipe_sd.load_ip_adapter(&ip_adapter()).unwrap();
    let mut pipe = pipe_sd.animatediff_from_pipe(motion_adapter()).unwrap();
    let overrides: Map<String, Value> = meta["scheduler_overrides"].as_object().cloned().unwrap();
    pipe.swap_scheduler("DDIMScheduler", &overrides).unwrap();
    let lora = fixtures().join("70-animatediff/motion_lora");
    pipe.load_lora_weights(lora.to_str().unwrap(), None, Some("zoom-out"))
        .unwrap();
    pipe.set_adapters(&["zoom-out"], &[AdapterWeight::Uniform(0.75)])
        .unwrap();
    let out = pipe.call(&call_args(&case["args"]), None).unwrap();
    let (_, want) = read_f16(&dir().join("ip_cfg_lora075_16f.safetensors"), "frames");
    let stats = compare(
        "reuse without reload",
        &out.images.as_ref().unwrap().data,
        &want,
        max_tol,
        mean_tol,
    );
    eprintln!("{stats:?}");
    stats.unwrap();
}
