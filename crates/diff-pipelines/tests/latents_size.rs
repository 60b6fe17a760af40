//! Given `latents` decide the output size, as in diffusers' StableDiffusionPipeline (no check
//! against `height` / `width`): `tests/fixtures/46-latents-size` (real diffusers 0.42.1).

mod common;

use burn::tensor::{Tensor, TensorData};
use diff_pipelines::{CallArgs, DiffusionPipeline, LoadOptions, OutputType, Passed};
use serde_json::{Map, Value};

#[test]
fn latents_of_another_size_give_an_image_of_that_size() {
    let case = common::fixtures().join("46-latents-size");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap()).unwrap();
    let mut options = LoadOptions::default();
    options.components.safety_checker = Passed::Drop;
    options
        .config
        .insert("requires_safety_checker".into(), Value::Bool(false));
    let mut pipe = DiffusionPipeline::from_pretrained(
        common::fixtures().join("tiny-sd").to_str().unwrap(),
        &options,
    )
    .unwrap();
    pipe.swap_scheduler(meta["scheduler"].as_str().unwrap(), &Map::new())
        .unwrap();
    let file = case.join("case.safetensors");
    let (shape, values) = common::read_tensor(&file, "latents");
    let latents = Tensor::<4>::from_data(TensorData::new(values, shape.clone()), pipe.device());
    let mut args = CallArgs::prompt(meta["prompt"].as_str().unwrap())
        .with_steps(meta["num_inference_steps"].as_u64().unwrap() as usize)
        .with_guidance_scale(meta["guidance_scale"].as_f64().unwrap() as f32)
        .with_output_type(OutputType::Np);
    args.latents = Some(latents);
    let out = pipe.call(&args, None).unwrap();
    let images = out.images.unwrap();
    let (want_shape, want) = common::read_tensor(&file, "images");
    assert_eq!(
        [images.count, images.height, images.width, 3].to_vec(),
        want_shape
    );
    common::compare("images", &images.data, &want, 2.0 / 255.0, 0.5 / 255.0).unwrap();
}
