//! `enable_model_cpu_offload` on the CPU (issue 15): the weights of every model loaded from the
//! folder stay memory-mapped, the sequence follows diffusers' `model_cpu_offload_seq`, a
//! generation gives the same latents and images bit for bit, and `from_pipe` re-applies it.

mod common;

use burn::tensor::Tensor;
use diff_pipelines::{CallArgs, DiffusionPipeline, LoadOptions, OutputType, PipelineClass};

fn tiny_sd() -> DiffusionPipeline {
    // The tiny pipeline with its safety checker: the checker is offloaded too.
    DiffusionPipeline::from_pretrained(
        common::fixtures().join("tiny-sd").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn values(t: &Tensor<4>) -> Vec<f32> {
    t.clone().into_data().try_to_vec::<f32>().unwrap()
}

fn run(pipe: &DiffusionPipeline) -> (Vec<f32>, Vec<f32>) {
    let args = CallArgs::prompt("a photo of an astronaut riding a horse on mars")
        .with_steps(2)
        .with_seed(7)
        .with_size(64, 64)
        .with_output_type(OutputType::Np);
    let out = pipe.call(&args, None).unwrap();
    let images = out.images.unwrap();
    (values(&out.latents), images.data.clone())
}

#[test]
fn offload_keeps_results_bit_for_bit_and_maps_every_model() {
    let plain = tiny_sd();
    let (latents, images) = run(&plain);

    let mut offloaded = tiny_sd();
    assert!(!offloaded.model_cpu_offload_enabled());
    offloaded.enable_model_cpu_offload().unwrap();
    assert!(offloaded.model_cpu_offload_enabled());
    let models = offloaded.model_cpu_offload_models();
    let names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["text_encoder", "unet", "vae", "safety_checker"],
        "diffusers' order, then the checker"
    );
    assert!(
        models.iter().all(|(_, mapped)| *mapped),
        "every model of the folder is mapped: {models:?}"
    );
    let (latents2, images2) = run(&offloaded);
    assert_eq!(latents, latents2);
    assert_eq!(images, images2);
    // A second call (every model released after the first) is the same again.
    assert_eq!(run(&offloaded).0, latents);

    // from_pipe re-applies offload to the new pipeline, sharing the mapped models.
    let img2img = offloaded
        .from_pipe(
            PipelineClass::StableDiffusionImg2Img,
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
    assert!(img2img.model_cpu_offload_enabled());
    assert!(std::sync::Arc::ptr_eq(
        img2img.unet().unwrap(),
        offloaded.unet().unwrap()
    ));
    assert!(img2img.model_cpu_offload_models().iter().all(|(_, m)| *m));
}
