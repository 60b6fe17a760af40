//! The AnimateDiff gate: each case of `tests/fixtures/70-animatediff` (diffusers 0.42.1's
//! `AnimateDiffPipeline.from_pipe(pipe_sd, motion_adapter=adapter)` on the tiny SD pipeline and
//! a tiny motion adapter with non-zero output projections, `output_type="np"`) replayed with
//! the same seed: 16 frames with DDIM `beta_schedule="linear"`, with and without the motion
//! LoRA at 0.75, and other schedulers, batch sizes and chunked decoding. Tolerances (from
//! `cases.json`): every pixel of every frame within 2/255, mean absolute error under 0.5/255;
//! the final latents within ten times those. Also: the pipeline made by `from_pipe` holds the
//! adapter's bytes and no more than the SD pipeline, and a mismatched adapter or too many
//! frames are refused with clear errors.

use diff_models::{FromPretrained, ModelLoadOptions, MotionAdapter};
use diff_pipelines::animatediff::{unique_parameter_bytes, video_latents};
use diff_pipelines::{
    AdapterWeight, CallArgs, DType, DiffusionPipeline, Generators, LoadOptions, OutputType, Passed,
};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[macro_use]
mod common;
use common::{case_named, compare, fixtures, strings, tolerance};

fn dir() -> PathBuf {
    fixtures().join("70-animatediff")
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
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

fn adapter() -> Arc<MotionAdapter> {
    let device = Default::default();
    let (adapter, report) = MotionAdapter::from_pretrained(
        &dir().join("motion_adapter"),
        &ModelLoadOptions::new(&device),
    )
    .unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    Arc::new(adapter)
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
    let get = |k: &str| args.get(k);
    let mut call = CallArgs {
        prompt: strings(&args["prompt"]).unwrap(),
        negative_prompt: get("negative_prompt").and_then(strings),
        height: get("height").and_then(Value::as_u64).map(|v| v as usize),
        width: get("width").and_then(Value::as_u64).map(|v| v as usize),
        num_inference_steps: args["num_inference_steps"].as_u64().unwrap() as usize,
        num_images_per_prompt: get("num_videos_per_prompt")
            .and_then(Value::as_u64)
            .map_or(1, |v| v as usize),
        guidance_scale: get("guidance_scale")
            .and_then(Value::as_f64)
            .map(|v| v as f32),
        generator: Generators::Seed(args["seed"].as_u64().unwrap()),
        output_type: OutputType::Np,
        ..CallArgs::default()
    };
    call.video.num_frames = args["num_frames"].as_u64().unwrap() as usize;
    if let Some(c) = get("decode_chunk_size").and_then(Value::as_u64) {
        call.video.decode_chunk_size = c as usize;
    }
    call
}

/// The AnimateDiff pipeline of the loading guide: `from_pipe` with the adapter, the motion
/// LoRA loaded as "zoom-out".
fn animate(sd: &DiffusionPipeline) -> DiffusionPipeline {
    let pipe = sd.animatediff_from_pipe(adapter()).unwrap();
    let lora = dir().join("motion_lora");
    let name = pipe
        .load_lora_weights(lora.to_str().unwrap(), None, Some("zoom-out"))
        .unwrap();
    assert_eq!(name, "zoom-out");
    pipe
}

fn run_case(name: &str) {
    let meta = meta();
    let (max_tol, mean_tol) = tolerance(&meta);
    let case = case_named(&meta, "cases", name);
    let sd = load_sd();
    let mut pipe = animate(&sd);
    let overrides: Map<String, Value> = case["scheduler_overrides"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    pipe.swap_scheduler(case["scheduler"].as_str().unwrap(), &overrides)
        .unwrap();
    match case["lora"].as_f64() {
        Some(w) => pipe
            .set_adapters(&["zoom-out"], &[AdapterWeight::Uniform(w)])
            .unwrap(),
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
    ddim_linear_16f => animatediff_16_frames_ddim_linear_matches_diffusers;
    ddim_linear_16f_lora075 => animatediff_motion_lora_at_075_matches_diffusers;
    euler_a_4f_2videos_chunk3 => animatediff_two_videos_ancestral_chunked_decode_matches_diffusers;
    dpm_6f_cfg_off => animatediff_without_cfg_dpm_solver_matches_diffusers;
}

#[test]
fn every_recorded_case_is_tested() {
    for case in meta()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        assert!(TESTED.contains(&name), "case {name} has no test");
    }
}

#[test]
fn from_pipe_holds_the_adapter_and_shares_everything_else() {
    let sd = load_sd();
    let adapter = adapter();
    let pipe = sd.animatediff_from_pipe(Arc::clone(&adapter)).unwrap();
    // No weight copied: the motion UNet is the SD pipeline's UNet and the adapter.
    let motion = pipe.unet_motion().unwrap();
    assert!(Arc::ptr_eq(&motion.unet, sd.unet().unwrap()));
    assert!(Arc::ptr_eq(&motion.motion_adapter, &adapter));
    assert!(Arc::ptr_eq(pipe.vae().unwrap(), sd.vae().unwrap()));
    assert!(Arc::ptr_eq(
        pipe.text_encoder().unwrap(),
        sd.text_encoder().unwrap()
    ));
    let sd_bytes = unique_parameter_bytes(&[&sd]);
    let anim_bytes = unique_parameter_bytes(&[&pipe]);
    let both = unique_parameter_bytes(&[&sd, &pipe]);
    let adapter_bytes = adapter.parameter_count() * 4;
    eprintln!(
        "parameter bytes: SD pipeline {sd_bytes}, AnimateDiff pipeline {anim_bytes}, both {both}, adapter {adapter_bytes}"
    );
    assert_eq!(both, sd_bytes + adapter_bytes);
    assert_eq!(anim_bytes, sd_bytes + adapter_bytes);
}

#[test]
fn num_frames_above_motion_max_seq_length_is_refused() {
    let sd = load_sd();
    let pipe = sd.animatediff_from_pipe(adapter()).unwrap();
    let mut args = CallArgs::prompt("x").with_steps(1).with_size(16, 16);
    args.video.num_frames = 33;
    let err = pipe.call(&args, None).unwrap_err().to_string();
    assert!(
        err.contains("num_frames") && err.contains("32"),
        "unexpected error: {err}"
    );
}

#[test]
fn adapter_with_other_channels_is_refused() {
    let sd = load_sd();
    let mut config: diff_format::configs::motion_adapter::MotionAdapterConfig =
        diff_format::load_config(dir().join("motion_adapter/config.json")).unwrap();
    config.block_out_channels = vec![32, 64];
    let adapter = MotionAdapter::from_config(&config, &Default::default(), DType::F32).unwrap();
    let err = sd
        .animatediff_from_pipe(Arc::new(adapter))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("block_out_channels") && err.contains("[16, 32]"),
        "unexpected error: {err}"
    );
}

/// IP-Adapter with AnimateDiff: the projected image tokens (one row per video) reach the 2D
/// cross-attention of every frame, as diffusers' `image_embeds.repeat_interleave(num_frames)`;
/// the motion modules keep their own processors.
#[test]
fn ip_adapter_tokens_reach_the_2d_cross_attention_of_every_frame() {
    use burn::tensor::{Distribution, Tensor};
    use diff_models::{IPAdapterAttnProcessor2_0, IpAdapterLayer, UNet2DConditionInput};

    let sd = load_sd();
    let pipe = sd.animatediff_from_pipe(adapter()).unwrap();
    let motion = pipe.unet_motion().unwrap();
    let device = Default::default();
    let attn2 = &motion.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2;
    let hidden = attn2.to_q.dims()[1];
    let layer = IpAdapterLayer::from_torch(
        Tensor::random([hidden, 16], Distribution::Normal(0.0, 0.5), &device),
        Tensor::random([hidden, 16], Distribution::Normal(0.0, 0.5), &device),
        4,
    );
    let before = attn2.get_processor();
    attn2.set_processor(Arc::new(IPAdapterAttnProcessor2_0::new(vec![layer])));

    let (b, f) = (1usize, 4usize);
    let sample: Tensor<4> =
        Tensor::random([b * f, 4, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let text: Tensor<3> = Tensor::random([b * f, 5, 16], Distribution::Normal(0.0, 1.0), &device);
    let ip: Tensor<3> = Tensor::random([b, 4, 16], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::from_floats([500.0], &device);
    let run = |ip: Option<Tensor<3>>| {
        let mut input = UNet2DConditionInput::new(sample.clone(), t.clone(), text.clone());
        input.ip_hidden_states = ip.map(|i| vec![i]);
        motion
            .forward_frames(input, f)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let per_video = run(Some(ip.clone()));
    let per_frame = run(Some(ip.clone().repeat_dim(0, f)));
    let without = run(None);
    attn2.set_processor(before);
    let diff = |a: &[f32], c: &[f32]| {
        a.iter()
            .zip(c)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        diff(&per_video, &per_frame) < 1e-6,
        "one row per video = the row repeated per frame"
    );
    assert!(
        diff(&per_video, &without) > 1e-4,
        "the image tokens change the prediction"
    );
    // The motion modules' attention layers keep the default processor.
    for (name, p) in motion.attn_processors() {
        if name.contains("motion_modules") {
            assert_eq!(p.name(), "AttnProcessor2_0", "{name}");
        }
    }
}

/// `AnimateDiffPipeline.from_pretrained(folder)` of a folder with a `motion_adapter` component
/// (the SD components plus the adapter, as diffusers saves one whose UNet is 2D): the adapter
/// loads through the component table and the call equals the `from_pipe` pipeline's.
#[test]
fn from_pretrained_folder_with_motion_adapter_equals_from_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("anim");
    common::copy_dir(&fixtures().join("tiny-sd"), &folder);
    std::fs::remove_dir_all(folder.join("safety_checker")).unwrap();
    common::copy_dir(&dir_adapter(), &folder.join("motion_adapter"));
    let index_path = folder.join("model_index.json");
    let mut index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["_class_name"] = Value::String("AnimateDiffPipeline".into());
    index["motion_adapter"] = serde_json::json!(["diffusers", "MotionAdapter"]);
    let map = index.as_object_mut().unwrap();
    map.remove("safety_checker");
    map.remove("requires_safety_checker");
    std::fs::write(&index_path, serde_json::to_string(&index).unwrap()).unwrap();

    let loaded =
        DiffusionPipeline::from_pretrained(folder.to_str().unwrap(), &LoadOptions::default())
            .unwrap();
    assert_eq!(loaded.class().name(), "AnimateDiffPipeline");
    assert!(loaded.safety_checker().is_none());
    assert!(loaded.unet_motion().is_some());
    let shared = load_sd().animatediff_from_pipe(adapter()).unwrap();
    let mut args = CallArgs::prompt("a bear")
        .with_steps(2)
        .with_size(16, 16)
        .with_seed(3)
        .with_output_type(OutputType::Np);
    args.video.num_frames = 3;
    let a = loaded.call(&args, None).unwrap().images.unwrap().data;
    let b = shared.call(&args, None).unwrap().images.unwrap().data;
    assert_eq!(a, b);
}

fn dir_adapter() -> PathBuf {
    dir().join("motion_adapter")
}
