//! img2img and inpaint in float16 / bfloat16 (an input image encoded by the VAE in half
//! precision) do not reproduce diffusers' numbers yet: they are refused with a clear error that
//! names the dtype and the way out, never a panic (they used to abort on a dtype mismatch inside
//! `add_noise`).

mod common;

use burn::tensor::DType;
use diff_pipelines::{CallArgs, DiffusionPipeline, LoadOptions, Passed, PipelineClass};
use serde_json::Value;

fn load(name: &str, dtype: DType) -> DiffusionPipeline {
    let mut o = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    o.components.safety_checker = Passed::Drop;
    o.config
        .insert("requires_safety_checker".into(), Value::Bool(false));
    DiffusionPipeline::from_pretrained(common::fixtures().join(name).to_str().unwrap(), &o).unwrap()
}

fn input(name: &str) -> image::RgbImage {
    let path = common::fixtures()
        .join("40-pipeline-runs/inputs")
        .join(name);
    diff_pipelines::image_processor::load_image(&path).unwrap()
}

#[test]
fn half_precision_img2img_and_inpaint_are_refused_clearly() {
    for dtype in [DType::F16, DType::BF16] {
        let sd = load("tiny-sd", dtype);
        let img2img = sd
            .from_pipe(
                PipelineClass::StableDiffusionImg2Img,
                &Default::default(),
                &Default::default(),
            )
            .unwrap();
        let args = CallArgs::prompt("a cat")
            .with_image(input("image_32x32.png"))
            .with_strength(0.5)
            .with_steps(2)
            .with_seed(0);
        let err = img2img.call(&args, None).unwrap_err().to_string();
        assert!(err.contains("float32") && err.contains("dtype"), "{err}");

        let inpaint = load("tiny-sd-inpaint", dtype);
        let args = args.with_mask_image(input("mask_32x32.png"));
        let err = inpaint.call(&args, None).unwrap_err().to_string();
        assert!(err.contains("float32") && err.contains("dtype"), "{err}");
    }
}
