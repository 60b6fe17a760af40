//! The self-attention guidance gate: each case of `tests/fixtures/45-sag` (diffusers 0.42.1's
//! `StableDiffusionSAGPipeline` on the tiny SD pipeline, `output_type="np"`) replayed with the
//! same seed. Tolerances (from `cases.json`): every pixel within 2/255, mean absolute error under
//! 0.5/255; the final latents within ten times those. Also: `from_pipe` into SAG shares the
//! components and gives the output of a SAG pipeline loaded afresh, and the store processor is
//! gone from the shared UNet after a call.

use diff_pipelines::{
    CallArgs, DiffusionPipeline, Generators, LoadOptions, OutputType, Passed, PassedComponents,
    PipelineClass,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

#[macro_use]
mod common;
use common::{case_named, compare, fixtures, read_tensor, strings, tolerance};

fn meta() -> Value {
    let path = fixtures().join("45-sag/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tiny_sd() -> String {
    fixtures().join("tiny-sd").to_str().unwrap().to_string()
}

/// `from_pretrained(tiny-sd, safety_checker=None, requires_safety_checker=False)` as `class`.
fn load(class: PipelineClass) -> DiffusionPipeline {
    let mut options = LoadOptions {
        pipeline_class: Some(class),
        ..LoadOptions::default()
    };
    options.components.safety_checker = Passed::Drop;
    options
        .config
        .insert("requires_safety_checker".into(), Value::Bool(false));
    DiffusionPipeline::from_pretrained(&tiny_sd(), &options).unwrap()
}

fn call_args(args: &Value) -> CallArgs {
    let get = |k: &str| args.get(k);
    let mut call = CallArgs {
        prompt: strings(&args["prompt"]).unwrap(),
        height: get("height").and_then(Value::as_u64).map(|v| v as usize),
        width: get("width").and_then(Value::as_u64).map(|v| v as usize),
        num_inference_steps: args["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: get("guidance_scale")
            .and_then(Value::as_f64)
            .map(|v| v as f32),
        generator: Generators::Seed(args["seed"].as_u64().unwrap()),
        output_type: OutputType::Np,
        ..CallArgs::default()
    };
    if let Some(s) = get("sag_scale").and_then(Value::as_f64) {
        call.sag.sag_scale = s as f32;
    }
    call
}

/// The pipeline's scheduler replaced as the case records it (`Class.from_config(config,
/// **overrides)`; `null` keeps the folder's class with the overrides).
fn set_scheduler(pipe: &mut DiffusionPipeline, case: &Value) {
    let overrides: Map<String, Value> = case["scheduler_overrides"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let class = match case["scheduler"].as_str() {
        Some(c) => c.to_string(),
        None => pipe.scheduler().unwrap().class_name().to_string(),
    };
    pipe.swap_scheduler(&class, &overrides).unwrap();
}

fn images(out: &diff_pipelines::PipelineOutput) -> Vec<f32> {
    out.images.as_ref().unwrap().data.clone()
}

fn latents(out: &diff_pipelines::PipelineOutput) -> Vec<f32> {
    out.latents
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap()
}

fn run_case(name: &str) {
    let meta = meta();
    let (max_tol, mean_tol) = tolerance(&meta);
    let case = case_named(&meta, "cases", name);
    let mut pipe = load(PipelineClass::StableDiffusionSAG);
    set_scheduler(&mut pipe, &case);
    let out = pipe
        .call(&call_args(&case["args"]), None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let file = fixtures().join(format!("45-sag/{name}.safetensors"));
    let (lshape, want_latents) = read_tensor(&file, "latents");
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
        &latents(&out),
        &want_latents,
        max_tol * 10.0,
        mean_tol * 10.0,
    );
    let img = compare(
        &format!("{name} images"),
        &imgs.data,
        &want_images,
        max_tol,
        mean_tol,
    );
    eprintln!("{name}: images {img:?}; latents {lat:?}");
    img.unwrap();
    lat.unwrap();
}

parity! {
    ddim_cfg_sag075 => sag_with_cfg_and_ddim_matches_diffusers;
    ddim_cfg_off_sag1 => sag_without_cfg_uses_the_conditional_prediction_as_diffusers;
    pndm_cfg_sag1 => sag_with_the_default_pndm_scheduler_matches_diffusers;
    ddim_v_prediction_cfg => sag_v_prediction_with_cfg_matches_diffusers;
    ddim_v_prediction_cfg_off => sag_v_prediction_without_cfg_matches_diffusers;
    ddim_sample_cfg => sag_sample_prediction_matches_diffusers;
}

#[test]
fn every_recorded_case_is_tested() {
    for case in meta()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        assert!(TESTED.contains(&name), "case {name} has no test");
    }
}

#[test]
fn sag_refuses_float_timestep_schedulers_as_diffusers() {
    let meta = meta();
    let want = meta["errors"]["EulerDiscreteScheduler"].as_str().unwrap();
    let case = case_named(&meta, "cases", "ddim_cfg_sag075");
    let mut pipe = load(PipelineClass::StableDiffusionSAG);
    pipe.swap_scheduler("EulerDiscreteScheduler", &Map::new())
        .unwrap();
    let err = pipe.call(&call_args(&case["args"]), None).unwrap_err();
    assert!(err.to_string().contains(want), "{err}");
}

#[test]
fn sag_from_pipe_shares_components_and_matches_a_fresh_sag_pipeline() {
    let meta = meta();
    let case = case_named(&meta, "cases", "ddim_cfg_off_sag1");
    let mut sd = load(PipelineClass::StableDiffusion);
    set_scheduler(&mut sd, &case);
    let sag = sd
        .from_pipe(
            PipelineClass::StableDiffusionSAG,
            &PassedComponents::default(),
            &BTreeMap::new(),
        )
        .unwrap();
    assert_eq!(sag.class(), PipelineClass::StableDiffusionSAG);
    // The models are the same objects: no weights copied.
    assert!(Arc::ptr_eq(sd.unet().unwrap(), sag.unet().unwrap()));
    assert!(Arc::ptr_eq(sd.vae().unwrap(), sag.vae().unwrap()));
    assert!(Arc::ptr_eq(
        sd.text_encoder().unwrap(),
        sag.text_encoder().unwrap()
    ));
    assert!(Arc::ptr_eq(
        sd.tokenizer().unwrap(),
        sag.tokenizer().unwrap()
    ));
    // The config carries over as diffusers' from_pipe keeps it.
    assert_eq!(sag.config(), sd.config());
    assert_eq!(
        sag.config().get("requires_safety_checker"),
        Some(&Value::Bool(false))
    );

    let args = call_args(&case["args"]);
    let before: Vec<String> = sd
        .unet()
        .unwrap()
        .attn_processors()
        .iter()
        .map(|(_, p)| p.name().to_string())
        .collect();
    let from_pipe = sag.call(&args, None).unwrap();
    // The store processor is put back after the call, on the UNet both pipelines share.
    let after: Vec<String> = sd
        .unet()
        .unwrap()
        .attn_processors()
        .iter()
        .map(|(_, p)| p.name().to_string())
        .collect();
    assert_eq!(before, after);

    let mut fresh = load(PipelineClass::StableDiffusionSAG);
    set_scheduler(&mut fresh, &case);
    let loaded = fresh.call(&args, None).unwrap();
    assert_eq!(images(&from_pipe), images(&loaded));

    // And SAG changes the image: the SD pipeline on the same arguments differs.
    let plain = sd.call(&args, None).unwrap();
    assert_ne!(images(&plain), images(&from_pipe));
}

#[test]
fn sag_scale_zero_is_plain_text_to_image() {
    let meta = meta();
    let case = case_named(&meta, "cases", "ddim_cfg_sag075");
    let mut sd = load(PipelineClass::StableDiffusion);
    set_scheduler(&mut sd, &case);
    let sag = sd
        .from_pipe(
            PipelineClass::StableDiffusionSAG,
            &PassedComponents::default(),
            &BTreeMap::new(),
        )
        .unwrap();
    let args = call_args(&case["args"]).with_sag_scale(0.0);
    let a = sd.call(&args, None).unwrap();
    let b = sag.call(&args, None).unwrap();
    let (max_tol, mean_tol) = tolerance(&meta);
    // Only the store processor's classic attention differs from the fused default.
    compare("sag_scale 0", &images(&b), &images(&a), max_tol, mean_tol).unwrap();
}
