//! The loader picks weight files per component as diffusers 0.42.1 does (the decisions are
//! replayed in full in diff-format's `weight_resolution_matches_diffusers`; these check that
//! the pipeline and the models call that resolver): a component without the requested variant
//! loads its plain files, `use_safetensors=false` loads pickle when both formats are present,
//! and a variant no component has is diffusers' error.

use diff_models::{AutoencoderKL, FromPretrained, ModelLoadOptions};
use diff_pipelines::{DiffusionPipeline, LoadOptions, Passed, PipelineError};
use std::path::Path;
use std::sync::Arc;

mod common;
use common::{copy_dir, fixtures};

fn load(folder: &Path, options: &LoadOptions) -> Result<DiffusionPipeline, PipelineError> {
    DiffusionPipeline::from_pretrained(folder.to_str().unwrap(), options)
}

fn first_values(vae: &AutoencoderKL) -> Vec<f32> {
    vae.post_quant_conv
        .as_ref()
        .unwrap()
        .weight
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn a_component_without_the_variant_loads_its_plain_weights() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-sd"), tmp.path());
    std::fs::remove_file(
        tmp.path()
            .join("vae/diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    let options = LoadOptions {
        variant: Some("fp16".into()),
        ..LoadOptions::default()
    };
    let pipe = load(tmp.path(), &options).expect("vae falls back to its plain file");
    let device = pipe.device().clone();
    let (plain, report) = AutoencoderKL::from_pretrained(
        &fixtures().join("tiny-sd/vae"),
        &ModelLoadOptions::new(&device),
    )
    .unwrap();
    assert!(
        report
            .source
            .ends_with("diffusion_pytorch_model.safetensors")
    );
    assert_eq!(first_values(pipe.vae().unwrap()), first_values(&plain));
    // The UNet has the variant, so it loads it: its values are the fp16-rounded ones.
    let unet_plain = diff_models::UNet2DConditionModel::from_pretrained(
        &fixtures().join("tiny-sd/unet"),
        &ModelLoadOptions::new(&device),
    )
    .unwrap()
    .0;
    let conv = |u: &diff_models::UNet2DConditionModel| {
        u.conv_in
            .base
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_ne!(conv(pipe.unet().unwrap()), conv(&unet_plain));
}

#[test]
fn a_variant_no_component_has_is_diffusers_error() {
    let options = LoadOptions {
        variant: Some("bf16".into()),
        ..LoadOptions::default()
    };
    let err = load(&fixtures().join("tiny-sd"), &options).expect_err("no bf16 files");
    assert_eq!(
        err.to_string(),
        "You are trying to load the model files of the `variant=bf16`, but no such modeling files are available."
    );
}

/// A VAE folder holding both `diffusion_pytorch_model.safetensors` and `.bin`.
fn vae_with_both_formats(root: &Path) -> std::path::PathBuf {
    let vae = root.join("vae");
    copy_dir(&fixtures().join("tiny-sd/vae"), &vae);
    std::fs::copy(
        fixtures().join("format/bin-vae/vae/diffusion_pytorch_model.bin"),
        vae.join("diffusion_pytorch_model.bin"),
    )
    .unwrap();
    vae
}

#[test]
fn use_safetensors_false_loads_pickle_when_both_formats_are_present() {
    let tmp = tempfile::tempdir().unwrap();
    let vae = vae_with_both_formats(tmp.path());
    let device = burn::tensor::Device::default();
    let pick = |use_safetensors| {
        let options = ModelLoadOptions::new(&device).with_use_safetensors(use_safetensors);
        AutoencoderKL::from_pretrained(&vae, &options)
            .unwrap()
            .1
            .source
    };
    assert!(pick(None).ends_with("diffusion_pytorch_model.safetensors"));
    assert!(pick(Some(true)).ends_with("diffusion_pytorch_model.safetensors"));
    assert!(pick(Some(false)).ends_with("diffusion_pytorch_model.bin"));
}

#[test]
fn pipeline_use_safetensors_false_reaches_every_component() {
    // tiny-sd has safetensors only: with use_safetensors=false diffusers fails on the first
    // model, naming the pickle file it looked for.
    let err = load(
        &fixtures().join("tiny-sd"),
        &LoadOptions {
            use_safetensors: Some(false),
            ..LoadOptions::default()
        },
    )
    .expect_err("no pickle weights");
    let message = err.to_string();
    assert!(
        message.starts_with("Error no file named diffusion_pytorch_model.bin found in directory"),
        "{message}"
    );

    // With the other models passed in, the VAE folder holding both formats loads its pickle.
    let tiny = fixtures().join("tiny-sd");
    let base = load(&tiny, &LoadOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&tiny, tmp.path());
    std::fs::remove_dir_all(tmp.path().join("vae")).unwrap();
    vae_with_both_formats(tmp.path());
    let mut options = LoadOptions {
        use_safetensors: Some(false),
        ..LoadOptions::default()
    };
    options.components.unet = Passed::Replace(Arc::clone(base.unet().unwrap()));
    options.components.text_encoder = Passed::Replace(Arc::clone(base.text_encoder().unwrap()));
    options.components.safety_checker = Passed::Replace(Arc::clone(base.safety_checker().unwrap()));
    let pipe = load(tmp.path(), &options).expect("the VAE loads from pickle");
    let (from_bin, _) = AutoencoderKL::from_pretrained(
        &fixtures().join("format/bin-vae/vae"),
        &ModelLoadOptions::new(pipe.device()),
    )
    .unwrap();
    assert_eq!(first_values(pipe.vae().unwrap()), first_values(&from_bin));
}
