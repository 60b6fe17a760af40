//! Pipelines whose inputs are not at the generation size, `padding_mask_crop`, given
//! `masked_image_latents`, and the initial latents of float16 / bfloat16 pipelines, replayed
//! from `tests/fixtures/41-image-processor/pipelines.json` (real diffusers 0.42.1 on the bundled
//! tiny pipelines). Tolerances (from the fixture): every pixel within 2/255 and mean absolute
//! error under 0.5/255 for images; ten times those for the final latents (not bounded to
//! [0, 1]); the initial latents of reduced-precision pipelines bit for bit.

use diff_pipelines::{
    CallArgs, DType, DiffusionPipeline, Generators, Img2ImgArgs, InpaintArgs, LoadOptions,
    OutputType, Passed, PipelineClass,
};
use serde_json::Value;
use std::path::PathBuf;

mod common;
use common::fixtures;

fn dir() -> PathBuf {
    fixtures().join("41-image-processor")
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("pipelines.json")).unwrap()).unwrap()
}

fn read_tensor(key: &str) -> (Vec<usize>, Vec<f32>) {
    common::read_tensor(&dir().join("pipelines.safetensors"), key)
}

fn strings(v: &Value) -> Vec<String> {
    common::strings(v).unwrap_or_else(|| panic!("not a prompt: {v}"))
}

fn generators(args: &Value) -> Generators {
    match (args.get("seed"), args.get("seeds")) {
        (Some(s), _) => Generators::Seed(s.as_u64().unwrap()),
        (_, Some(s)) => Generators::Seeds(
            s.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect(),
        ),
        _ => panic!("no seed"),
    }
}

fn load(folder: &str, class: Option<&str>, dtype: DType) -> DiffusionPipeline {
    let mut options = LoadOptions {
        pipeline_class: class.and_then(PipelineClass::from_name),
        dtype,
        ..LoadOptions::default()
    };
    options.components.safety_checker = Passed::Drop;
    options
        .config
        .insert("requires_safety_checker".into(), Value::Bool(false));
    DiffusionPipeline::from_pretrained(fixtures().join(folder).to_str().unwrap(), &options)
        .unwrap_or_else(|e| panic!("loading {folder}: {e}"))
}

fn compare(what: &str, got: &[f32], want: &[f32], max_tol: f32, mean_tol: f32) -> (f32, f32) {
    common::compare(what, got, want, max_tol, mean_tol).unwrap_or_else(|e| panic!("{e}"))
}

fn run_case(name: &str) {
    let meta = meta();
    let (max_tol, mean_tol) = common::tolerance(&meta);
    let case = common::case_named(&meta, "runs", name);
    let args = &case["args"];
    let mut pipe = load(
        case["pipeline_folder"].as_str().unwrap(),
        case["pipeline_class"].as_str(),
        DType::F32,
    );
    pipe.swap_scheduler(
        case["scheduler_class"].as_str().unwrap(),
        &serde_json::Map::new(),
    )
    .unwrap();
    let image = |k: &str| {
        args.get(k)
            .and_then(Value::as_str)
            .map(|p| vec![diff_pipelines::image_processor::load_image(&dir().join(p)).unwrap()])
    };
    let device = pipe.device().clone();
    let masked_image_latents = args
        .get("masked_image_latents")
        .and_then(Value::as_str)
        .map(|key| {
            let (shape, data) = read_tensor(key);
            let shape: [usize; 4] = shape.try_into().unwrap();
            burn::tensor::Tensor::<4>::from_data(
                burn::tensor::TensorData::new(data, shape),
                &device,
            )
        });
    let pil = args.get("output_type").and_then(Value::as_str) == Some("pil");
    let call = CallArgs {
        prompt: strings(&args["prompt"]),
        height: args
            .get("height")
            .and_then(Value::as_u64)
            .map(|v| v as usize),
        width: args
            .get("width")
            .and_then(Value::as_u64)
            .map(|v| v as usize),
        num_inference_steps: args["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: args
            .get("guidance_scale")
            .and_then(Value::as_f64)
            .map(|v| v as f32),
        generator: generators(args),
        img2img: Img2ImgArgs {
            image: image("image"),
            strength: args
                .get("strength")
                .and_then(Value::as_f64)
                .map(|v| v as f32),
            ..Img2ImgArgs::default()
        },
        inpaint: InpaintArgs {
            mask_image: image("mask_image"),
            masked_image_latents,
            padding_mask_crop: args
                .get("padding_mask_crop")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
        },
        output_type: if pil { OutputType::Pil } else { OutputType::Np },
        ..CallArgs::default()
    };
    let out = pipe
        .call(&call, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let images = out.images.as_ref().unwrap();
    let (ishape, want_images) = read_tensor(&format!("{name}.images"));
    assert_eq!(
        vec![images.count, images.height, images.width, 3],
        ishape,
        "{name}: image shape"
    );
    let img = compare(
        &format!("{name} images"),
        &images.data,
        &want_images,
        max_tol,
        mean_tol,
    );
    eprintln!("{name}: images max/mean {img:?}");
    if !pil {
        let (lshape, want_latents) = read_tensor(&format!("{name}.latents"));
        assert_eq!(out.latents.dims().to_vec(), lshape, "{name}: latents shape");
        let got: Vec<f32> = out
            .latents
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let lat = compare(
            &format!("{name} latents"),
            &got,
            &want_latents,
            max_tol * 10.0,
            mean_tol * 10.0,
        );
        eprintln!("{name}: latents max/mean {lat:?}");
    }
}

#[test]
fn sd_img2img_resizes_an_off_size_input_as_diffusers() {
    run_case("sd_img2img_input_resized");
}

#[test]
fn sd_inpaint_nine_channel_resizes_image_and_mask_of_other_sizes_as_diffusers() {
    run_case("sd_inpaint_9ch_inputs_resized");
}

#[test]
fn sd_inpaint_legacy_four_channel_with_resized_inputs_matches_diffusers() {
    run_case("sd_inpaint_legacy_4ch_inputs_resized");
}

#[test]
fn sd_inpaint_padding_mask_crop_matches_diffusers() {
    run_case("sd_inpaint_padding_mask_crop");
}

#[test]
fn sd_inpaint_padding_mask_crop_with_ancestral_scheduler_and_strength_matches_diffusers() {
    run_case("sd_inpaint_padding_mask_crop_ancestral");
}

#[test]
fn sd_inpaint_with_given_masked_image_latents_matches_diffusers() {
    run_case("sd_inpaint_masked_image_latents_given");
}

#[test]
fn every_run_in_the_fixture_has_a_test() {
    let names: Vec<String> = meta()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let tested = [
        "sd_img2img_input_resized",
        "sd_inpaint_9ch_inputs_resized",
        "sd_inpaint_legacy_4ch_inputs_resized",
        "sd_inpaint_padding_mask_crop",
        "sd_inpaint_padding_mask_crop_ancestral",
        "sd_inpaint_masked_image_latents_given",
    ];
    assert_eq!(names, tested);
}

#[test]
fn half_and_bfloat16_pipelines_draw_the_initial_latents_torch_draws_bit_for_bit() {
    let meta = meta();
    let cases = meta["initial_latents"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dtype = match case["torch_dtype"].as_str().unwrap() {
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            other => panic!("{other}"),
        };
        let pipe = load(case["pipeline_folder"].as_str().unwrap(), None, dtype);
        let args = &case["args"];
        let call = CallArgs {
            prompt: strings(&args["prompt"]),
            num_images_per_prompt: args
                .get("num_images_per_prompt")
                .and_then(Value::as_u64)
                .unwrap_or(1) as usize,
            height: args
                .get("height")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
            width: args
                .get("width")
                .and_then(Value::as_u64)
                .map(|v| v as usize),
            num_inference_steps: 2,
            generator: generators(args),
            ..CallArgs::default()
        };
        let latents = pipe.prepare_latents(&call).unwrap();
        let (shape, want) = read_tensor(&format!("{name}.noise"));
        assert_eq!(latents.dims().to_vec(), shape, "{name}: shape");
        let got: Vec<f32> = latents
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let differ = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{name}: {differ} of {} values differ",
            want.len()
        );
        // The float32 draw itself (what the pipeline used to feed an f16 pipeline) is not
        // what torch makes: the values must come out rounded to the pipeline's dtype.
        let mut gens = match generators(args) {
            Generators::Seed(s) => vec![diff_schedulers::TorchGenerator::new(s)],
            Generators::Seeds(s) => s
                .iter()
                .map(|&v| diff_schedulers::TorchGenerator::new(v))
                .collect(),
            Generators::Random => unreachable!("fixture cases are seeded"),
        };
        let f32_draw =
            diff_schedulers::randn_tensor(&shape, &mut gens, diff_schedulers::NoiseDtype::Float32)
                .unwrap();
        let f32_differ = f32_draw
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert!(
            f32_differ > want.len() / 2,
            "{name}: the float32 draw differs from torch's {dtype:?} draw in only {f32_differ} values"
        );
    }
}

#[test]
fn ancestral_step_noise_is_drawn_in_the_step_options_dtype() {
    // Euler ancestral with a zero model output and a zero sample returns `noise * sigma_up`,
    // rounded to the model dtype (`noise_dtype`: torch keeps float16 latents in float16), so the
    // noise it drew can be read back: with `noise_dtype = Float16` it is torch's float16 draw
    // (every value equal to the float16 draw times sigma_up, rounded to float16), not the
    // float32 one.
    let mut pipe = load("tiny-sd", None, DType::F32);
    pipe.swap_scheduler("EulerAncestralDiscreteScheduler", &serde_json::Map::new())
        .unwrap();
    let mut scheduler = pipe.scheduler().unwrap().clone();
    scheduler.set_timesteps(4).unwrap();
    let t = scheduler.timesteps()[0];
    let sigmas = scheduler.sigmas().unwrap().to_vec();
    let (s2, t2) = (sigmas[0] * sigmas[0], sigmas[1] * sigmas[1]);
    let sigma_up = (t2 * (s2 - t2) / s2).sqrt();
    let shape = [1usize, 4, 8, 8];
    let zeros = || burn::tensor::Tensor::<4>::zeros(shape, pipe.device());
    let f16 = diff_schedulers::NoiseDtype::Float16;
    let options = diff_schedulers::StepOptions {
        noise_dtype: f16,
        ..diff_schedulers::StepOptions::default()
    };
    let mut gens = vec![diff_schedulers::TorchGenerator::new(7)];
    let prev: Vec<f32> = scheduler
        .step(zeros(), t, zeros(), &options, Some(&mut gens))
        .unwrap()
        .prev_sample
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let expected = |dtype| -> Vec<f32> {
        let mut g = vec![diff_schedulers::TorchGenerator::new(7)];
        diff_schedulers::randn_tensor(&shape, &mut g, dtype)
            .unwrap()
            .iter()
            .map(|z| diff_schedulers::precision::round_scalar(z * sigma_up, f16))
            .collect()
    };
    // Tolerance: none, bit for bit.
    let differing = |want: &[f32]| prev.iter().zip(want).filter(|(a, b)| a != b).count();
    assert_eq!(differing(&expected(f16)), 0, "float16 draw");
    assert!(
        differing(&expected(diff_schedulers::NoiseDtype::Float32)) > 0,
        "the float32 draw must differ"
    );
}

fn inpaint_args() -> CallArgs {
    let image =
        |p: &str| vec![diff_pipelines::image_processor::load_image(&dir().join(p)).unwrap()];
    CallArgs {
        prompt: vec!["a red barn".into()],
        img2img: Img2ImgArgs {
            image: Some(image("inputs/image_50x38.png")),
            ..Img2ImgArgs::default()
        },
        inpaint: InpaintArgs {
            mask_image: Some(image("inputs/mask_50x38.png")),
            ..InpaintArgs::default()
        },
        height: Some(32),
        width: Some(32),
        num_inference_steps: 2,
        generator: Generators::Seed(0),
        ..CallArgs::default()
    }
}

#[test]
fn padding_mask_crop_needs_pil_output_one_image_and_a_mask_of_its_size() {
    let pipe = load("tiny-sd-inpaint", None, DType::F32);
    let np = inpaint_args()
        .with_padding_mask_crop(2)
        .with_output_type(OutputType::Np);
    let err = pipe.call(&np, None).unwrap_err().to_string();
    assert!(err.contains("output type should be PIL"), "{err}");

    let mut two = inpaint_args().with_padding_mask_crop(2);
    let img = two.img2img.image.as_ref().unwrap()[0].clone();
    two.img2img.image = Some(vec![img.clone(), img]);
    let err = pipe.call(&two, None).unwrap_err().to_string();
    assert!(err.contains("one image and one mask"), "{err}");

    let mut small_mask = inpaint_args().with_padding_mask_crop(2);
    small_mask.inpaint.mask_image = Some(vec![
        diff_pipelines::image_processor::load_image(&dir().join("inputs/mask_25x19.png")).unwrap(),
    ]);
    let err = pipe.call(&small_mask, None).unwrap_err().to_string();
    assert!(err.contains("must have the image's size"), "{err}");
}

#[test]
fn masked_image_latents_with_the_wrong_channel_count_are_a_clear_error() {
    let pipe = load("tiny-sd-inpaint", None, DType::F32);
    let args = inpaint_args().with_masked_image_latents(burn::tensor::Tensor::<4>::zeros(
        [1, 3, 16, 16],
        pipe.device(),
    ));
    let err = pipe.call(&args, None).unwrap_err().to_string();
    assert!(
        err.contains("masked_image_latents must have the VAE's 4 latent channels"),
        "{err}"
    );
}

#[test]
fn inpaint_sizes_must_be_multiples_of_the_vae_scale_factor_not_of_8() {
    // diffusers' inpaint check_inputs tests `height % vae_scale_factor` (2 for the tiny VAE):
    // 36x44 is accepted, 33 is not.
    let pipe = load("tiny-sd-inpaint", None, DType::F32);
    let odd = CallArgs {
        height: Some(33),
        ..inpaint_args()
    };
    let err = pipe.call(&odd, None).unwrap_err().to_string();
    assert!(
        err.contains("have to be divisible by 8 but are 33"),
        "{err}"
    );
    let ok = CallArgs {
        height: Some(36),
        width: Some(44),
        output_type: OutputType::Latent,
        ..inpaint_args()
    };
    let out = pipe.call(&ok, None).unwrap();
    assert_eq!(out.latents.dims(), [1, 4, 18, 22]);
}
