//! The Perturbed-Attention Guidance gate: each case of `tests/fixtures/56-pag` (diffusers
//! 0.42.1's PAG classes on the tiny SD and SDXL pipelines, `output_type="np"`) replayed with the
//! same seed, the pipeline made as the case says (`from_pretrained` of the PAG class with its
//! `pag_applied_layers`, or `AutoPipelineFor<Task>.from_pipe(base, enable_pag=True)`).
//! Tolerances (from `cases.json`): every pixel within 2/255, mean absolute error under 0.5/255;
//! the final latents within ten times those. Also: the class and layers diffusers built, the
//! UNet's processors restored after the call (also on the shared base pipeline), and the errors
//! for a pattern that matches nothing.

use diff_pipelines::{
    AutoTask, CallArgs, DiffusionPipeline, Generators, LoadOptions, OutputType, Passed,
    PassedComponents, PipelineClass,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[macro_use]
mod common;
use common::{case_named, compare, fixtures, read_tensor, strings, tolerance};

fn meta() -> Value {
    let path = fixtures().join("56-pag/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn layers_config(case: &Value) -> BTreeMap<String, Value> {
    let mut config = BTreeMap::new();
    if !case["pag_applied_layers"].is_null() {
        config.insert(
            "pag_applied_layers".to_owned(),
            case["pag_applied_layers"].clone(),
        );
    }
    config
}

/// The pipeline of a case, and the base pipeline it was made from (for `auto_from_pipe`).
fn load(case: &Value) -> (DiffusionPipeline, Option<DiffusionPipeline>) {
    let model = case["model"].as_str().unwrap();
    let folder = fixtures().join(model).display().to_string();
    let sd = model != "tiny-sdxl";
    let mut options = LoadOptions::default();
    if sd {
        options.components.safety_checker = Passed::Drop;
        options
            .config
            .insert("requires_safety_checker".into(), Value::Bool(false));
    }
    let how = case["load"].as_str().unwrap();
    if let Some(task) = how.strip_prefix("auto_from_pipe:") {
        let base = DiffusionPipeline::from_pretrained(&folder, &options).unwrap();
        let task = AutoTask::from_name(&format!("AutoPipelineFor{task}")).unwrap();
        let pipe = task
            .from_pipe(
                &base,
                &PassedComponents::default(),
                &layers_config(case),
                Some(true),
            )
            .unwrap();
        (pipe, Some(base))
    } else {
        options.pipeline_class = PipelineClass::from_name(how);
        options.config.extend(layers_config(case));
        (
            DiffusionPipeline::from_pretrained(&folder, &options).unwrap(),
            None,
        )
    }
}

fn call_args(args: &Value) -> CallArgs {
    let get = |k: &str| args.get(k);
    let f = |k: &str| get(k).and_then(Value::as_f64).map(|v| v as f32);
    let mut call = CallArgs {
        prompt: strings(&args["prompt"]).unwrap(),
        negative_prompt: get("negative_prompt").and_then(strings),
        height: get("height").and_then(Value::as_u64).map(|v| v as usize),
        width: get("width").and_then(Value::as_u64).map(|v| v as usize),
        num_inference_steps: args["num_inference_steps"].as_u64().unwrap() as usize,
        num_images_per_prompt: get("num_images_per_prompt")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize,
        guidance_scale: f("guidance_scale"),
        guidance_rescale: f("guidance_rescale").unwrap_or(0.0),
        generator: Generators::Seed(args["seed"].as_u64().unwrap()),
        output_type: OutputType::Np,
        ..CallArgs::default()
    };
    if let Some(s) = f("pag_scale") {
        call.pag.pag_scale = s;
    }
    if let Some(s) = f("pag_adaptive_scale") {
        call.pag.pag_adaptive_scale = s;
    }
    if let Some(p) = get("image").and_then(Value::as_str) {
        let path = fixtures().join("56-pag").join(p);
        call.img2img.image = Some(vec![
            diff_pipelines::image_processor::load_image(&path).unwrap(),
        ]);
        call.img2img.strength = f("strength");
    }
    if let Some(p) = get("mask_image").and_then(Value::as_str) {
        let path = fixtures().join("56-pag").join(p);
        call.inpaint.mask_image = Some(vec![
            diff_pipelines::image_processor::load_image(&path).unwrap(),
        ]);
    }
    call
}

fn processor_names(pipe: &DiffusionPipeline) -> Vec<String> {
    let mut names: Vec<String> = pipe
        .unet()
        .unwrap()
        .attn_processors()
        .iter()
        .map(|(_, p)| p.name().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn run_case(name: &str) {
    let meta = meta();
    let (max_tol, mean_tol) = tolerance(&meta);
    let case = case_named(&meta, "cases", name);
    let (mut pipe, base) = load(&case);
    assert_eq!(pipe.class().name(), case["class_name"].as_str().unwrap());
    let want_layers: Vec<String> =
        serde_json::from_value(case["pipeline_pag_applied_layers"].clone()).unwrap();
    assert_eq!(pipe.pag_applied_layers(), want_layers.as_slice());
    if let Some(s) = case["scheduler"].as_str() {
        pipe.swap_scheduler(s, &Map::new()).unwrap();
    }
    let out = pipe
        .call(&call_args(&case["args"]), None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want_procs: Vec<String> = serde_json::from_value(case["processors_after"].clone()).unwrap();
    assert_eq!(
        processor_names(&pipe),
        want_procs,
        "{name}: processors after"
    );
    if let Some(base) = &base {
        assert_eq!(processor_names(base), want_procs, "{name}: base processors");
    }
    let file = fixtures().join(format!("56-pag/{name}.safetensors"));
    let (lshape, want_latents) = read_tensor(&file, "latents");
    assert_eq!(out.latents.dims().to_vec(), lshape, "{name}: latents shape");
    let (ishape, want_images) = read_tensor(&file, "images");
    let imgs = out.images.as_ref().unwrap();
    assert_eq!(
        vec![imgs.count, imgs.height, imgs.width, 3],
        ishape,
        "{name}: image shape"
    );
    let got_latents: Vec<f32> = out
        .latents
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    let lat = compare(
        &format!("{name} latents"),
        &got_latents,
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
    sd_cfg_ddim => pag_with_cfg_matches_diffusers;
    sd_cfg_off_ddim => pag_without_cfg_matches_diffusers;
    sd_layers_down_up_adaptive => pag_on_other_layers_with_an_adaptive_scale_matches_diffusers;
    sd_rescale_two_per_prompt_pndm => pag_with_guidance_rescale_and_two_images_matches_diffusers;
    sd_pag_scale_zero_is_the_base_task => pag_scale_zero_runs_the_base_task_as_diffusers;
    sd_img2img_auto_from_pipe => pag_img2img_by_auto_pipeline_from_pipe_matches_diffusers;
    sd_text2img_auto_from_pipe_cfg_off => pag_by_auto_pipeline_from_pipe_without_cfg_matches_diffusers;
    sdxl_cfg_euler => sdxl_pag_with_cfg_matches_diffusers;
    sdxl_cfg_off_layers_up_ddim => sdxl_pag_without_cfg_on_the_up_blocks_matches_diffusers;
    sdxl_rescale_two_per_prompt => sdxl_pag_with_rescale_adaptive_scale_and_two_images_matches_diffusers;
    sdxl_img2img_auto_from_pipe => sdxl_pag_img2img_by_auto_pipeline_from_pipe_matches_diffusers;
    sd_inpaint_9ch_ddim => pag_inpaint_with_a_9_channel_unet_matches_diffusers;
    sd_inpaint_legacy_4ch_cfg_off_auto_from_pipe => pag_legacy_inpaint_without_cfg_by_auto_pipeline_matches_diffusers;
    sdxl_inpaint_4ch_auto_from_pipe => sdxl_pag_inpaint_by_auto_pipeline_from_pipe_matches_diffusers;
}

#[test]
fn every_recorded_case_is_tested() {
    for case in meta()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        assert!(TESTED.contains(&name), "case {name} has no test");
    }
}

#[test]
fn pag_layers_are_matched_as_diffusers_matches_them() {
    let folder = fixtures().join("tiny-sd").display().to_string();
    let options = LoadOptions {
        pipeline_class: Some(PipelineClass::StableDiffusionPAG),
        ..LoadOptions::default()
    };
    let mut pipe = DiffusionPipeline::from_pretrained(&folder, &options).unwrap();
    assert_eq!(pipe.pag_applied_layers(), ["mid"]);
    assert_eq!(
        pipe.pag_layer_names().unwrap(),
        ["mid_block.attentions.0.transformer_blocks.0.attn1"]
    );
    // A regular expression, searched: "blocks.0" matches the down, up and mid blocks' names
    // that contain it (only self-attention layers).
    pipe.set_pag_applied_layers(vec!["down|up".into()]).unwrap();
    assert_eq!(
        pipe.pag_layer_names().unwrap(),
        [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
            "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
            "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
        ]
    );
    pipe.set_pag_applied_layers(vec!["nowhere".into()]).unwrap();
    let e = pipe.pag_layer_names().unwrap_err().to_string();
    assert!(
        e.contains("Cannot find PAG layer to set attention processor for: nowhere"),
        "{e}"
    );
    // A failing call leaves the processors as they were.
    let e = pipe
        .call(
            &CallArgs::prompt("x")
                .with_pag_scale(1.0)
                .with_pag_adaptive_scale(0.0),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("nowhere"), "{e}");
    assert_eq!(processor_names(&pipe), ["AttnProcessor2_0"]);
    let e = pipe
        .set_pag_applied_layers(vec!["mid((".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("pag_applied_layers"), "{e}");
}

#[test]
fn pag_inpaint_refuses_guidance_rescale_where_diffusers_fails() {
    let folder = fixtures().join("tiny-sd-inpaint").display().to_string();
    let mut options = LoadOptions {
        pipeline_class: Some(PipelineClass::StableDiffusionPAGInpaint),
        ..LoadOptions::default()
    };
    options.components.safety_checker = Passed::Drop;
    let pipe = DiffusionPipeline::from_pretrained(&folder, &options).unwrap();
    let dir = fixtures().join("40-pipeline-runs/inputs");
    let load = |n: &str| diff_pipelines::image_processor::load_image(&dir.join(n)).unwrap();
    let mut args = CallArgs::prompt("x")
        .with_image(load("image_32x32.png"))
        .with_mask_image(load("mask_32x32.png"));
    args.guidance_rescale = 0.5;
    args.num_inference_steps = 2;
    let e = pipe.call(&args, None).unwrap_err().to_string();
    assert!(e.contains("cannot rescale the guidance"), "{e}");
    assert_eq!(processor_names(&pipe), ["AttnProcessor2_0"]);
}
