//! The parity gate: each case of `tests/fixtures/40-pipeline-runs` (made by real diffusers
//! 0.42.1 on the bundled tiny pipelines, `output_type="np"`) replayed here with the same seeds.
//! Tolerances (from `cases.json`): every pixel within 2/255, mean absolute error under 0.5/255.
//! The final latents are compared too (same tolerances) to tell loop errors from decode errors.

use diff_models::FromPretrained;
use diff_pipelines::{
    CallArgs, DiffusionPipeline, Generators, Img2ImgArgs, InpaintArgs, LoadOptions, OutputType,
    Passed, PipelineClass, XlArgs,
};
use serde_json::Value;
use std::path::Path;

#[macro_use]
mod common;
use common::{compare, fixtures, pair, read_tensor, strings};

fn call_args(args: &Value, dir: &Path) -> CallArgs {
    let get = |k: &str| args.get(k);
    let image = |k: &str| {
        get(k)
            .and_then(Value::as_str)
            .map(|p| vec![diff_pipelines::image_processor::load_image(&dir.join(p)).unwrap()])
    };
    CallArgs {
        prompt: strings(get("prompt").unwrap()).unwrap(),
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
        img2img: Img2ImgArgs {
            image: image("image"),
            strength: get("strength").and_then(Value::as_f64).map(|v| v as f32),
            ..Img2ImgArgs::default()
        },
        inpaint: InpaintArgs {
            mask_image: image("mask_image"),
            ..InpaintArgs::default()
        },
        xl: XlArgs {
            prompt_2: get("prompt_2").and_then(strings),
            original_size: pair(get("original_size")),
            crops_coords_top_left: pair(get("crops_coords_top_left")).unwrap_or((0, 0)),
            target_size: pair(get("target_size")),
            negative_original_size: pair(get("negative_original_size")),
            negative_target_size: pair(get("negative_target_size")),
            denoising_end: get("denoising_end")
                .and_then(Value::as_f64)
                .map(|v| v as f32),
            denoising_start: get("denoising_start")
                .and_then(Value::as_f64)
                .map(|v| v as f32),
            ..XlArgs::default()
        },
        output_type: OutputType::Np,
        ..CallArgs::default()
    }
}

struct Meta {
    max_tol: f32,
    mean_tol: f32,
    cases: Vec<Value>,
}

fn meta() -> Meta {
    let dir = fixtures().join("40-pipeline-runs");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    Meta {
        max_tol: meta["tolerance"]["max_abs"].as_f64().unwrap() as f32,
        mean_tol: meta["tolerance"]["mean_abs"].as_f64().unwrap() as f32,
        cases: meta["cases"].as_array().unwrap().clone(),
    }
}

/// Replays one fixture case and compares images (2/255 max, 0.5/255 mean), latents (ten times
/// those, as they are not bounded to [0, 1]) and the safety checker's flags (exact).
fn run_case(name: &str) {
    let dir = fixtures().join("40-pipeline-runs");
    let Meta {
        max_tol,
        mean_tol,
        cases,
    } = meta();
    let case = cases
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name} in cases.json"));
    let folder = case["pipeline_folder"].as_str().unwrap().to_string();
    let class_name = case["pipeline_class"].as_str().unwrap().to_string();
    let keep_checker = case["args"]
        .get("safety_checker")
        .and_then(Value::as_bool)
        .unwrap_or(false);
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
    if let Some(folder) = case["args"]
        .get("safety_checker_folder")
        .and_then(Value::as_str)
    {
        let (checker, _) = diff_models::StableDiffusionSafetyChecker::from_pretrained(
            &dir.join(folder),
            &diff_models::ModelLoadOptions::new(&options.device)
                .with_dtype(diff_pipelines::DType::F32),
        )
        .unwrap();
        options.components.safety_checker = Passed::Replace(std::sync::Arc::new(checker));
    }
    let mut pipe =
        DiffusionPipeline::from_pretrained(fixtures().join(&folder).to_str().unwrap(), &options)
            .unwrap_or_else(|e| panic!("{name}: loading {folder}: {e}"));
    let scheduler = case["scheduler_class"].as_str().unwrap();
    pipe.swap_scheduler(scheduler, &serde_json::Map::new())
        .unwrap();
    let args = call_args(&case["args"], &dir);
    let out = pipe
        .call(&args, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let want_flags: Option<Vec<bool>> =
        serde_json::from_value(case["nsfw_content_detected"].clone()).unwrap();
    assert_eq!(
        out.nsfw_content_detected, want_flags,
        "{name}: nsfw_content_detected"
    );
    let file = dir.join(format!("{name}.safetensors"));
    let (lshape, want_latents) = read_tensor(&file, "latents");
    assert_eq!(out.latents.dims().to_vec(), lshape, "{name}: latents shape");
    let got_latents: Vec<f32> = out
        .latents
        .clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
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
    sd_txt2img_pndm_default_scheduler => sd_txt2img_with_the_default_pndm_scheduler_matches_diffusers;
    sd_txt2img_ddim => sd_txt2img_ddim_matches_diffusers;
    sd_txt2img_ddim_eta_negative => sd_txt2img_ddim_eta_noise_and_negative_prompt_match_diffusers;
    sd_txt2img_euler_ancestral => sd_txt2img_ancestral_scheduler_matches_diffusers;
    sd_txt2img_euler_cfg_off => sd_txt2img_without_cfg_matches_diffusers;
    sd_txt2img_ddpm_clip_skip => sd_txt2img_clip_skip_matches_diffusers;
    sd_txt2img_batch2_generator_each => sd_txt2img_batch_of_two_with_one_generator_each_matches_diffusers;
    sd_txt2img_images_per_prompt_rescale => sd_txt2img_two_images_per_prompt_and_guidance_rescale_match_diffusers;
    sd_txt2img_long_prompt_truncated => sd_txt2img_truncated_long_prompt_matches_diffusers;
    sd_img2img_ddim => sd_img2img_ddim_matches_diffusers;
    sd_img2img_euler_ancestral => sd_img2img_ancestral_scheduler_matches_diffusers;
    sd_inpaint_9ch_ddim => sd_inpaint_nine_channel_unet_matches_diffusers;
    sd_inpaint_legacy_4ch_euler => sd_inpaint_legacy_four_channel_blend_matches_diffusers;
    sdxl_txt2img_euler => sdxl_txt2img_matches_diffusers;
    sdxl_txt2img_negative_conditions => sdxl_txt2img_prompt_2_and_size_conditions_match_diffusers;
    sdxl_img2img_ddim => sdxl_img2img_matches_diffusers;
    sdxl_txt2img_denoising_end => sdxl_txt2img_denoising_end_matches_diffusers;
    sdxl_img2img_denoising_start => sdxl_img2img_denoising_start_matches_diffusers;
    sdxl_txt2img_clip_skip_two_per_prompt_negative_sizes => sdxl_clip_skip_two_per_prompt_and_negative_sizes_match_diffusers;
    sd_img2img_batch2_generator_each => sd_img2img_batch_of_two_with_one_generator_each_matches_diffusers;
    sd_txt2img_safety_checker_on => sd_txt2img_safety_checker_flags_match_diffusers;
    sd_txt2img_safety_checker_flags_black_image => flagged_images_come_back_black_as_in_diffusers;
}

#[test]
fn every_fixture_case_has_a_parity_test_and_there_are_at_least_12() {
    let names: Vec<String> = meta()
        .cases
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.len() >= 12, "{} cases", names.len());
    let mut sorted_names = names.clone();
    sorted_names.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(sorted_names, tested);
}
