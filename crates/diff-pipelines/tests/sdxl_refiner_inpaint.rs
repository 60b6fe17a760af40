//! The SDXL refiner, base -> refiner handoff and SDXL inpaint gate: each case of
//! `tests/fixtures/42-sdxl` (real diffusers 0.42.1 on `tests/fixtures/tiny-sdxl` and
//! `tests/fixtures/tiny-sdxl-refiner`, `output_type="np"`) replayed with the same seeds.
//! Tolerances (from `cases.json`): every pixel within 2/255, mean absolute error under 0.5/255;
//! latents within ten times those (they are not bounded to [0, 1]). A two-stage case feeds our
//! own first-stage latents to the second stage, so the chain is checked end to end, and compares
//! the first stage's latents with diffusers' on the way.

use diff_models::FromPretrained;
use diff_pipelines::{
    CallArgs, DiffusionPipeline, Generators, Img2ImgArgs, InpaintArgs, LoadOptions, OutputType,
    Passed, PipelineClass, PipelineError, XlArgs,
};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

#[macro_use]
mod common;
use common::{case_named, compare, fixtures, pair, read_tensor, strings, tolerance};

fn case_dir() -> PathBuf {
    fixtures().join("42-sdxl")
}

fn f32_of(v: Option<&Value>) -> Option<f32> {
    v.and_then(Value::as_f64).map(|v| v as f32)
}

/// The call arguments of a stage; `"image": "previous"` takes `previous` as `image_latents`.
fn call_args(args: &Value, previous: Option<&burn::tensor::Tensor<4>>) -> CallArgs {
    let dir = case_dir();
    let get = |k: &str| args.get(k);
    let image = |k: &str| {
        get(k)
            .and_then(Value::as_str)
            .filter(|p| *p != "previous")
            .map(|p| vec![diff_pipelines::image_processor::load_image(&dir.join(p)).unwrap()])
    };
    let defaults = CallArgs::default();
    CallArgs {
        prompt: strings(get("prompt").unwrap()).unwrap(),
        negative_prompt: get("negative_prompt").and_then(strings),
        num_images_per_prompt: get("num_images_per_prompt")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize,
        height: get("height").and_then(Value::as_u64).map(|v| v as usize),
        width: get("width").and_then(Value::as_u64).map(|v| v as usize),
        num_inference_steps: get("num_inference_steps").and_then(Value::as_u64).unwrap() as usize,
        guidance_scale: f32_of(get("guidance_scale")),
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
            image_latents: match get("image").and_then(Value::as_str) {
                Some("previous") => Some(previous.expect("a previous stage").clone()),
                _ => None,
            },
            strength: f32_of(get("strength")),
        },
        inpaint: InpaintArgs {
            mask_image: image("mask_image"),
            masked_image_latents: get("masked_image_latents")
                .and_then(Value::as_str)
                .map(|p| {
                    diff_pipelines::outputs::load_latents(&dir.join(p), &Default::default())
                        .unwrap()
                }),
            padding_mask_crop: get("padding_mask_crop")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
        },
        xl: XlArgs {
            prompt_2: get("prompt_2").and_then(strings),
            original_size: pair(get("original_size")),
            crops_coords_top_left: pair(get("crops_coords_top_left")).unwrap_or((0, 0)),
            target_size: pair(get("target_size")),
            negative_original_size: pair(get("negative_original_size")),
            negative_crops_coords_top_left: pair(get("negative_crops_coords_top_left"))
                .unwrap_or((0, 0)),
            negative_target_size: pair(get("negative_target_size")),
            aesthetic_score: f32_of(get("aesthetic_score")).unwrap_or(defaults.xl.aesthetic_score),
            negative_aesthetic_score: f32_of(get("negative_aesthetic_score"))
                .unwrap_or(defaults.xl.negative_aesthetic_score),
            denoising_end: f32_of(get("denoising_end")),
            denoising_start: f32_of(get("denoising_start")),
            ..XlArgs::default()
        },
        output_type: OutputType::Np,
        ..defaults
    }
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(case_dir().join("cases.json")).unwrap()).unwrap()
}

fn tensor_values(t: &burn::tensor::Tensor<4>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().try_to_vec().unwrap()
}

/// Loads a stage's pipeline as the fixture did: `pipeline_class` null is
/// `DiffusionPipeline.from_pretrained` (the class model_index.json names), `unet_folder` is
/// passed as `unet=`, `scheduler_class` replaces the scheduler from its config.
fn load_stage(stage: &Value) -> DiffusionPipeline {
    let mut options = LoadOptions {
        pipeline_class: stage["pipeline_class"]
            .as_str()
            .map(|n| PipelineClass::from_name(n).unwrap()),
        ..LoadOptions::default()
    };
    if let Some(folder) = stage["unet_folder"].as_str() {
        let (unet, _) = diff_models::UNet2DConditionModel::from_pretrained(
            &fixtures().join(folder),
            &diff_models::ModelLoadOptions::new(&options.device),
        )
        .unwrap();
        options.components.unet = Passed::Replace(Arc::new(unet));
    }
    let folder = fixtures().join(stage["pipeline_folder"].as_str().unwrap());
    let mut pipe = DiffusionPipeline::from_pretrained(folder.to_str().unwrap(), &options).unwrap();
    assert_eq!(
        pipe.class().name(),
        stage["resolved_pipeline_class"].as_str().unwrap(),
        "pipeline class"
    );
    for (key, want) in stage["config"].as_object().unwrap() {
        assert_eq!(
            pipe.config().get(key),
            Some(want),
            "pipeline config `{key}`"
        );
    }
    if let Some(scheduler) = stage["scheduler_class"].as_str() {
        pipe.swap_scheduler(scheduler, &serde_json::Map::new())
            .unwrap();
    }
    pipe
}

fn run_case(name: &str) {
    let meta = meta();
    let (max_tol, mean_tol) = tolerance(&meta);
    let case = case_named(&meta, "cases", name);
    let file = case_dir().join(format!("{name}.safetensors"));
    let stages = case["stages"].as_array().unwrap();
    let mut previous = None;
    let mut report = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        let pipe = load_stage(stage);
        let mut args = call_args(&stage["args"], previous.as_ref());
        let last = i + 1 == stages.len();
        let pil = stage["output_type"] == "pil";
        if !last {
            args.output_type = OutputType::Latent;
        } else if pil {
            args.output_type = OutputType::Pil;
        }
        let out = pipe
            .call(&args, None)
            .unwrap_or_else(|e| panic!("{name} stage {i}: {e}"));
        // A PIL-output stage (padding_mask_crop) has no latent output in diffusers.
        let lat = if pil {
            Ok((0.0, 0.0))
        } else {
            let (lshape, want) = read_tensor(
                &file,
                &if last {
                    "latents".to_string()
                } else {
                    format!("stage{i}_latents")
                },
            );
            assert_eq!(
                out.latents.dims().to_vec(),
                lshape,
                "{name} stage {i}: latents shape"
            );
            let lat = compare(
                &format!("{name} stage {i} latents"),
                &tensor_values(&out.latents),
                &want,
                max_tol * 10.0,
                mean_tol * 10.0,
            );
            report.push(format!("stage {i} latents {lat:?}"));
            lat
        };
        if last {
            let (ishape, want_images) = read_tensor(&file, "images");
            let imgs = out.images.as_ref().unwrap();
            // PIL output is 8-bit on both sides: compare what the user gets.
            let got_images: Vec<f32> = if pil {
                out.rgb8()
                    .iter()
                    .flat_map(|im| im.as_raw().iter().map(|&v| f32::from(v) / 255.0))
                    .collect()
            } else {
                imgs.data.clone()
            };
            assert_eq!(
                vec![imgs.count, imgs.height, imgs.width, 3],
                ishape,
                "{name}: image shape"
            );
            let img = compare(
                &format!("{name} images"),
                &got_images,
                &want_images,
                max_tol,
                mean_tol,
            );
            eprintln!("{name}: images {img:?}; {}", report.join("; "));
            img.unwrap();
        }
        lat.unwrap();
        previous = Some(out.latents);
    }
}

parity! {
    refiner_img2img_euler => refiner_folder_as_diffusion_pipeline_img2img_matches_diffusers;
    refiner_img2img_ddim_aesthetic_scores_and_negative_conditions => refiner_aesthetic_scores_and_negative_conditions_match_diffusers;
    refiner_img2img_batch2_generator_each_ancestral => refiner_batch_of_two_with_one_generator_each_matches_diffusers;
    base_to_refiner_handoff_euler => base_denoising_end_latents_handed_to_refiner_denoising_start_match_diffusers;
    inpaint_4ch_base_strength_1_euler => sdxl_inpaint_four_channel_base_unet_strength_one_matches_diffusers;
    inpaint_4ch_base_strength_06_ddim_negative => sdxl_inpaint_four_channel_strength_below_one_with_negative_prompt_matches_diffusers;
    inpaint_9ch_strength_1_ddim => sdxl_inpaint_nine_channel_unet_strength_one_matches_diffusers;
    inpaint_9ch_default_strength_batch2_generator_each_euler => sdxl_inpaint_nine_channel_default_strength_batch_of_two_matches_diffusers;
    inpaint_9ch_strength_05_ancestral_two_per_prompt => sdxl_inpaint_nine_channel_half_strength_two_per_prompt_matches_diffusers;
    inpaint_refiner_aesthetic_strength_07 => refiner_folder_as_inpaint_pipeline_with_aesthetic_score_matches_diffusers;
    inpaint_base_to_refiner_handoff => sdxl_inpaint_base_to_refiner_handoff_matches_diffusers;
    inpaint_9ch_padding_mask_crop_pil => sdxl_inpaint_padding_mask_crop_pasted_on_the_original_matches_diffusers;
    inpaint_9ch_given_masked_image_latents => sdxl_inpaint_given_masked_image_latents_match_diffusers;
    txt2img_lcm_unet_guidance_embedding => sdxl_guidance_distilled_unet_gets_the_embedded_guidance_scale_as_diffusers;
}

#[test]
fn every_42_sdxl_fixture_case_has_a_parity_test() {
    let mut names: Vec<String> = meta()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(names, tested);
}

fn load(folder: &str, class: Option<PipelineClass>) -> Result<DiffusionPipeline, PipelineError> {
    let options = LoadOptions {
        pipeline_class: class,
        ..LoadOptions::default()
    };
    DiffusionPipeline::from_pretrained(fixtures().join(folder).to_str().unwrap(), &options)
}

#[test]
fn refiner_folder_loads_as_img2img_with_text_encoder_2_only() {
    let refiner = load("tiny-sdxl-refiner", None).unwrap();
    assert_eq!(refiner.class(), PipelineClass::StableDiffusionXLImg2Img);
    assert!(refiner.text_encoder().is_none() && refiner.tokenizer().is_none());
    assert!(refiner.text_encoder_2().is_some() && refiner.tokenizer_2().is_some());
    assert_eq!(
        refiner.config().get("requires_aesthetics_score"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        refiner.config().get("force_zeros_for_empty_prompt"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        refiner
            .unet()
            .unwrap()
            .config
            .projection_class_embeddings_input_dim,
        Some(5 * 8 + 16)
    );
    // The same folder as the inpaint class, and the base folder as img2img / inpaint.
    let inpaint = load(
        "tiny-sdxl-refiner",
        Some(PipelineClass::StableDiffusionXLInpaint),
    )
    .unwrap();
    assert_eq!(
        inpaint.config().get("requires_aesthetics_score"),
        Some(&Value::Bool(true))
    );
    let base = load("tiny-sdxl", Some(PipelineClass::StableDiffusionXLInpaint)).unwrap();
    assert_eq!(base.class(), PipelineClass::StableDiffusionXLInpaint);
    assert_eq!(
        base.config().get("requires_aesthetics_score"),
        Some(&Value::Bool(false))
    );
    // from_pipe to the inpaint class shares the text-to-image pipeline's components.
    let txt2img = load("tiny-sdxl", None).unwrap();
    let from_pipe = txt2img
        .from_pipe(
            PipelineClass::StableDiffusionXLInpaint,
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
    assert_eq!(from_pipe.class(), PipelineClass::StableDiffusionXLInpaint);
    assert!(Arc::ptr_eq(
        from_pipe.unet().unwrap(),
        txt2img.unet().unwrap()
    ));
}

fn small_call(image: bool, mask: bool) -> CallArgs {
    let dir = case_dir();
    let load_png =
        |p: &str| vec![diff_pipelines::image_processor::load_image(&dir.join(p)).unwrap()];
    CallArgs {
        num_inference_steps: 2,
        generator: Generators::Seed(0),
        img2img: Img2ImgArgs {
            image: image.then(|| load_png("inputs/image_32x32.png")),
            strength: Some(0.5),
            ..Img2ImgArgs::default()
        },
        inpaint: InpaintArgs {
            mask_image: mask.then(|| load_png("inputs/mask_32x32.png")),
            ..InpaintArgs::default()
        },
        height: Some(32),
        width: Some(32),
        output_type: OutputType::Latent,
        ..CallArgs::prompt("a lighthouse")
    }
}

#[test]
fn wrong_time_id_layout_names_requires_aesthetics_score() {
    // The refiner's UNet takes 5 time ids; without the aesthetic score 6 are built.
    let mut options = LoadOptions::default();
    options
        .config
        .insert("requires_aesthetics_score".into(), Value::Bool(false));
    let refiner = DiffusionPipeline::from_pretrained(
        fixtures().join("tiny-sdxl-refiner").to_str().unwrap(),
        &options,
    )
    .unwrap();
    let msg = refiner
        .call(&small_call(true, false), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("expects an added time embedding vector of length 56, but a vector of 64")
            && msg.contains("enable `requires_aesthetics_score`"),
        "{msg}"
    );
    // The base UNet takes 6; with the aesthetic score only 5 are built.
    options
        .config
        .insert("requires_aesthetics_score".into(), Value::Bool(true));
    options.pipeline_class = Some(PipelineClass::StableDiffusionXLImg2Img);
    let base = DiffusionPipeline::from_pretrained(
        fixtures().join("tiny-sdxl").to_str().unwrap(),
        &options,
    )
    .unwrap();
    let msg = base
        .call(&small_call(true, false), None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("length 64, but a vector of 56")
            && msg.contains("disable `requires_aesthetics_score`"),
        "{msg}"
    );
    // The refiner folder as a text-to-image pipeline: diffusers' "incorrect config" error.
    let txt2img = load("tiny-sdxl-refiner", Some(PipelineClass::StableDiffusionXL)).unwrap();
    let msg = txt2img
        .call(&small_call(false, false), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("The model has an incorrect config"), "{msg}");
}

#[test]
fn sdxl_inpaint_bad_inputs_give_clear_errors() {
    let base = load("tiny-sdxl", Some(PipelineClass::StableDiffusionXLInpaint)).unwrap();
    let msg = base
        .call(&small_call(true, false), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("mask_image"), "{msg}");
    let msg = base
        .call(&small_call(false, true), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`image`"), "{msg}");
    let msg = base
        .call(&small_call(true, true).with_strength(1.5), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("strength should be in [0.0, 1.0]"), "{msg}");
    // int(2 * 0.3) = 0 steps left: diffusers' inpaint raises even though PNDM's schedule
    // (steps + 1 entries) still has a timestep past `t_start`.
    let mut pndm = load("tiny-sdxl", Some(PipelineClass::StableDiffusionXLInpaint)).unwrap();
    pndm.swap_scheduler("PNDMScheduler", &serde_json::Map::new())
        .unwrap();
    let msg = pndm
        .call(&small_call(true, true).with_strength(0.3), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("the number of pipeline steps is 0"), "{msg}");
    let msg = base
        .call(
            &small_call(true, true).with_denoising(Some(0.8), Some(0.4)),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cannot be larger than or equal to `denoising_end`"),
        "{msg}"
    );
}

#[test]
fn sdxl_inpaint_mismatched_latents_give_clear_errors() {
    let mut options = LoadOptions {
        pipeline_class: Some(PipelineClass::StableDiffusionXLInpaint),
        ..LoadOptions::default()
    };
    let (unet, _) = diff_models::UNet2DConditionModel::from_pretrained(
        &case_dir().join("unet-9ch"),
        &diff_models::ModelLoadOptions::new(&options.device),
    )
    .unwrap();
    options.components.unet = Passed::Replace(Arc::new(unet));
    let nine = DiffusionPipeline::from_pretrained(
        fixtures().join("tiny-sdxl").to_str().unwrap(),
        &options,
    )
    .unwrap();
    // The passed UNet's config is the one the pipeline reports (diffusers' `pipe.unet.config`).
    assert_eq!(
        nine.component_config("unet").unwrap()["in_channels"],
        Value::from(9)
    );
    let device = nine.device().clone();
    // An image given as latents cannot be masked for the 9-channel UNet's input.
    let msg = nine
        .call(
            &small_call(false, true)
                .with_image_latents(burn::tensor::Tensor::zeros([1, 4, 16, 16], &device)),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cannot be masked"), "{msg}");
    // Given masked-image latents of the wrong size.
    let msg = nine
        .call(
            &small_call(true, true)
                .with_masked_image_latents(burn::tensor::Tensor::zeros([1, 4, 8, 8], &device)),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("masked_image_latents is 8x8"), "{msg}");
    // Two masks for one image and one prompt.
    let mut two_masks = small_call(true, true);
    let mask = two_masks.inpaint.mask_image.clone().unwrap();
    two_masks.inpaint.mask_image = Some([mask.clone(), mask].concat());
    let msg = nine.call(&two_masks, None).unwrap_err().to_string();
    assert!(msg.contains("masks"), "{msg}");
}

/// diffusers' ensemble-of-experts recipe loads the refiner with the base's `text_encoder_2` and
/// `vae` passed in (one copy in memory); the refiner then continues from diffusers' own base
/// latents (`stage0_latents` of the handoff fixture) to diffusers' final images (2/255 per
/// pixel, 0.5/255 mean).
#[test]
fn refiner_with_the_base_text_encoder_2_and_vae_shared_continues_diffusers_base_latents() {
    let base = load("tiny-sdxl", None).unwrap();
    let mut options = LoadOptions::default();
    options.components.text_encoder_2 = Passed::Replace(base.text_encoder_2().unwrap().clone());
    options.components.vae = Passed::Replace(base.vae().unwrap().clone());
    let refiner = DiffusionPipeline::from_pretrained(
        fixtures().join("tiny-sdxl-refiner").to_str().unwrap(),
        &options,
    )
    .unwrap();
    assert!(Arc::ptr_eq(
        refiner.text_encoder_2().unwrap(),
        base.text_encoder_2().unwrap()
    ));
    assert!(Arc::ptr_eq(refiner.vae().unwrap(), base.vae().unwrap()));
    let name = "base_to_refiner_handoff_euler";
    let case = case_named(&meta(), "cases", name);
    let file = case_dir().join(format!("{name}.safetensors"));
    let (shape, values) = read_tensor(&file, "stage0_latents");
    let dims: [usize; 4] = shape.try_into().unwrap();
    let base_latents = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(values, dims),
        refiner.device(),
    );
    let args = call_args(&case["stages"][1]["args"], Some(&base_latents));
    let out = refiner.call(&args, None).unwrap();
    let (_, want) = read_tensor(&file, "images");
    let got = compare(
        name,
        &out.images.unwrap().data,
        &want,
        2.0 / 255.0,
        0.5 / 255.0,
    );
    eprintln!("{name} from diffusers' base latents: {got:?}");
    got.unwrap();
}
