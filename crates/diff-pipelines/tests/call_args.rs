//! The call API's shared core: custom `timesteps` / `sigmas` (`retrieve_timesteps`), and the
//! builder reaching the task parts.

use diff_pipelines::{
    CallArgs, DiffusionPipeline, LoadOptions, OutputType, PipelineClass, StepControl, StepInfo,
};
use std::path::PathBuf;

fn tiny_sd(class: Option<PipelineClass>) -> DiffusionPipeline {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd");
    let options = LoadOptions {
        pipeline_class: class,
        ..LoadOptions::default()
    };
    DiffusionPipeline::from_pretrained(dir.to_str().unwrap(), &options).unwrap()
}

fn small(prompt: &str) -> CallArgs {
    CallArgs::prompt(prompt)
        .with_size(32, 32)
        .with_steps(4)
        .with_seed(0)
        .with_output_type(OutputType::Latent)
}

#[test]
fn custom_timesteps_replace_num_inference_steps() {
    let mut pipe = tiny_sd(None);
    pipe.swap_scheduler("DDPMScheduler", &Default::default())
        .unwrap();
    let args = CallArgs {
        timesteps: Some(vec![900.0, 500.0, 10.0]),
        ..small("a cat")
    };
    let mut seen = Vec::new();
    let mut record = |info: &StepInfo<'_>| {
        seen.push((info.step, info.total, info.timestep));
        StepControl::Continue
    };
    pipe.call(&args, Some(&mut record)).unwrap();
    assert_eq!(seen, [(0, 3, 900.0), (1, 3, 500.0), (2, 3, 10.0)]);
}

#[test]
fn timesteps_and_sigmas_together_are_an_error() {
    let pipe = tiny_sd(None);
    let args = CallArgs {
        timesteps: Some(vec![900.0, 10.0]),
        sigmas: Some(vec![10.0, 1.0]),
        ..small("a cat")
    };
    let err = pipe.call(&args, None).unwrap_err().to_string();
    assert!(
        err.contains("Only one of `timesteps` or `sigmas` can be passed"),
        "{err}"
    );
}

#[test]
fn the_builder_sets_the_task_parts() {
    let image = image::RgbImage::new(8, 8);
    let args = small("a cat")
        .with_image(image.clone())
        .with_mask_image(image)
        .with_strength(0.5)
        .with_padding_mask_crop(4)
        .with_denoising(Some(0.2), Some(0.8));
    assert_eq!(args.img2img.image.as_ref().map(Vec::len), Some(1));
    assert_eq!(args.img2img.strength, Some(0.5));
    assert_eq!(args.inpaint.mask_image.as_ref().map(Vec::len), Some(1));
    assert_eq!(args.inpaint.padding_mask_crop, Some(4));
    assert_eq!(args.xl.denoising_start, Some(0.2));
    assert_eq!(args.xl.denoising_end, Some(0.8));
    // The img2img class reads the image part: a 32x32 image gives 16x16 latents.
    let pipe = tiny_sd(Some(PipelineClass::StableDiffusionImg2Img));
    let args = small("a cat").with_image(image::RgbImage::new(32, 32));
    let out = pipe.call(&args, None).unwrap();
    assert_eq!(out.latents.dims(), [1, 4, 16, 16]);
}
