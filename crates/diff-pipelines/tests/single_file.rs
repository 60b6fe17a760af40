//! `DiffusionPipeline::from_single_file` against diffusers' own conversion of the same file.
//!
//! Every single-file case of `tests/fixtures/50-convert/single_file` and
//! `tests/fixtures/51-single-file` holds a tiny original-layout checkpoint, the config folder it
//! was converted with, and the folder diffusers 0.42.1 saved after `from_single_file(ckpt,
//! config=...)`. Loading the checkpoint with `from_single_file` must give the very tensors that
//! folder holds, so a generation from each must be identical: tolerance zero, every output value
//! compared bit for bit. Errors for a checkpoint without a VAE, an unknown architecture and a
//! missing config are checked for clear messages.

use diff_pipelines::single_file::SingleFileLoadOptions;
use diff_pipelines::{
    CallArgs, DType, DiffusionPipeline, Generators, Img2ImgArgs, InpaintArgs, LoadOptions,
    OutputType, Passed, PipelineClass, PipelineError,
};
use image::RgbImage;
use std::path::Path;
use std::sync::Arc;

mod common;
use common::{copy_dir, fixtures};

fn load_options(dtype: DType) -> LoadOptions {
    LoadOptions {
        dtype,
        local_files_only: true,
        ..LoadOptions::default()
    }
}

/// Two denoising steps at the default size with CFG; an init image and a mask for the classes
/// that take them.
fn generate(pipe: &DiffusionPipeline) -> Vec<f32> {
    let class = pipe.class();
    let img2img = matches!(
        class,
        PipelineClass::StableDiffusionImg2Img
            | PipelineClass::StableDiffusionXLImg2Img
            | PipelineClass::StableDiffusionInpaint
            | PipelineClass::StableDiffusionXLInpaint
    );
    let inpaint = matches!(
        class,
        PipelineClass::StableDiffusionInpaint | PipelineClass::StableDiffusionXLInpaint
    );
    let image = RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, ((x + y) * 8) as u8])
    });
    let mask = RgbImage::from_fn(16, 16, |x, _| {
        let v = if x >= 8 { 255 } else { 0 };
        image::Rgb([v, v, v])
    });
    let args = CallArgs {
        prompt: vec!["a photo of a cat".into()],
        negative_prompt: Some(vec!["blurry".into()]),
        num_inference_steps: 2,
        guidance_scale: Some(5.0),
        generator: Generators::Seed(7),
        img2img: Img2ImgArgs {
            image: img2img.then(|| vec![image]),
            strength: img2img.then_some(0.75),
            ..Img2ImgArgs::default()
        },
        inpaint: InpaintArgs {
            mask_image: inpaint.then(|| vec![mask]),
            ..InpaintArgs::default()
        },
        output_type: OutputType::Np,
        ..CallArgs::default()
    };
    let out = pipe.call(&args, None).expect("generation");
    out.images.expect("images").data
}

/// Loads `ckpt` with `from_single_file` and the diffusers-converted `expected` folder with
/// `from_pretrained`, and compares one generation of each bit for bit.
fn same_generation(case: &str, ckpt: &str, expected: &str, options: SingleFileLoadOptions) {
    let dir = fixtures().join(case);
    let options = SingleFileLoadOptions {
        config: Some(dir.join("config").display().to_string()),
        ..options
    };
    let single = DiffusionPipeline::from_single_file(dir.join(ckpt), &options)
        .unwrap_or_else(|e| panic!("{case}: from_single_file: {e}"));
    let folder = DiffusionPipeline::from_pretrained(
        &dir.join(expected).display().to_string(),
        &LoadOptions {
            pipeline_class: options.load.pipeline_class,
            components: PassedComponentsNoSafety::get(),
            ..load_options(options.load.dtype)
        },
    )
    .unwrap_or_else(|e| panic!("{case}: from_pretrained: {e}"));
    assert_eq!(single.class(), folder.class(), "{case}");
    assert_eq!(single.config(), folder.config(), "{case}: pipeline config");
    for name in ["unet", "vae", "text_encoder", "text_encoder_2", "scheduler"] {
        // transformers records the dtype a model was saved in (`"dtype": "float16"` in the
        // fp16 folder); the config folder says float32. Everything else must agree.
        let config = |pipe: &DiffusionPipeline| {
            pipe.component_config(name).map(|mut c| {
                c.remove("dtype");
                c
            })
        };
        assert_eq!(config(&single), config(&folder), "{case}: {name} config");
    }
    assert!(single.safety_checker().is_none(), "{case}");
    let a = generate(&single);
    let b = generate(&folder);
    assert_eq!(a.len(), b.len(), "{case}");
    // Tolerance zero: the same tensors must give the same bits.
    let differing = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(
        differing,
        0,
        "{case}: {differing} of {} values differ",
        a.len()
    );
}

/// diffusers' saved folders have `safety_checker: [null, null]`; nothing to drop, but a folder
/// pipeline is built with the same (absent) checker either way.
struct PassedComponentsNoSafety;

impl PassedComponentsNoSafety {
    fn get() -> diff_pipelines::PassedComponents {
        diff_pipelines::PassedComponents {
            safety_checker: Passed::Drop,
            ..Default::default()
        }
    }
}

fn plain(dtype: DType) -> SingleFileLoadOptions {
    SingleFileLoadOptions {
        load: load_options(dtype),
        ..SingleFileLoadOptions::default()
    }
}

#[test]
fn sd1_ckpt_generates_as_the_diffusers_converted_folder() {
    same_generation(
        "50-convert/single_file/sd1",
        "model.ckpt",
        "expected",
        plain(DType::F32),
    );
}

#[test]
fn sd1_inpaint_safetensors_generates_as_the_diffusers_converted_folder() {
    same_generation(
        "50-convert/single_file/sd1_inpaint",
        "model.safetensors",
        "expected",
        plain(DType::F32),
    );
}

#[test]
fn sd2_v_prediction_ckpt_generates_as_the_diffusers_converted_folder() {
    same_generation(
        "50-convert/single_file/sd2_v",
        "model.ckpt",
        "expected",
        plain(DType::F32),
    );
}

#[test]
fn sd2_base_and_inpaint_generate_as_the_diffusers_converted_folders() {
    for ckpt in ["model.ckpt", "model.safetensors"] {
        same_generation(
            "51-single-file/sd2_base",
            ckpt,
            "expected",
            plain(DType::F32),
        );
        same_generation(
            "51-single-file/sd2_inpaint",
            ckpt,
            "expected",
            plain(DType::F32),
        );
    }
}

#[test]
fn sdxl_base_refiner_and_inpaint_generate_as_the_diffusers_converted_folders() {
    same_generation(
        "50-convert/single_file/sdxl_base",
        "model.safetensors",
        "expected",
        plain(DType::F32),
    );
    same_generation(
        "50-convert/single_file/sdxl_refiner",
        "model.safetensors",
        "expected",
        plain(DType::F32),
    );
    same_generation(
        "51-single-file/sdxl_inpaint",
        "model.ckpt",
        "expected",
        plain(DType::F32),
    );
}

#[test]
fn ema_extraction_generates_as_diffusers_extract_ema() {
    same_generation(
        "51-single-file/sd1_ema",
        "model.ckpt",
        "expected",
        plain(DType::F32),
    );
    same_generation(
        "51-single-file/sd1_ema",
        "model.ckpt",
        "expected_ema",
        SingleFileLoadOptions {
            extract_ema: true,
            ..plain(DType::F32)
        },
    );
}

#[test]
fn half_precision_checkpoint_loads_as_f32_and_f16() {
    // An fp16 file: float32 models by default (as diffusers without torch_dtype), float16 ones
    // with the dtype asked for (diffusers' torch_dtype=torch.float16 folder).
    same_generation(
        "51-single-file/sd1_fp16",
        "model.safetensors",
        "expected",
        plain(DType::F32),
    );
    same_generation(
        "51-single-file/sd1_fp16",
        "model.safetensors",
        "expected_fp16",
        plain(DType::F16),
    );
}

#[test]
fn task_class_is_built_from_a_text_to_image_checkpoint() {
    let mut options = plain(DType::F32);
    options.load.pipeline_class = Some(PipelineClass::StableDiffusionImg2Img);
    same_generation(
        "51-single-file/sd1_fp16",
        "model.safetensors",
        "expected",
        options,
    );
}

#[test]
fn checkpoint_without_vae_needs_one_passed_in() {
    let dir = fixtures().join("51-single-file/sd1_vae");
    let mut options = SingleFileLoadOptions {
        config: Some(dir.join("config").display().to_string()),
        ..plain(DType::F32)
    };
    let err = DiffusionPipeline::from_single_file(dir.join("model.safetensors"), &options)
        .expect_err("a checkpoint without VAE must not load");
    let msg = err.to_string();
    assert!(
        matches!(err, PipelineError::SingleFileComponent { ref component, .. } if component == "vae"),
        "{msg}"
    );
    assert!(
        msg.contains("model.safetensors") && msg.contains("pass it in"),
        "{msg}"
    );
    // The separate original-layout VAE file, converted as diffusers'
    // `AutoencoderKL.from_single_file(vae, config=config, subfolder="vae")` and passed in
    // (`vae=vae`): diffusers' saved folder holds that VAE.
    let vae = diff_pipelines::single_file::autoencoder_kl_from_single_file(
        dir.join("vae.safetensors"),
        &dir.join("config").display().to_string(),
        "vae",
        &options.load,
    )
    .unwrap();
    options.load.components.vae = Passed::Replace(Arc::new(vae));
    let single =
        DiffusionPipeline::from_single_file(dir.join("model.safetensors"), &options).unwrap();
    let folder = DiffusionPipeline::from_pretrained(
        &dir.join("expected").display().to_string(),
        &load_options(DType::F32),
    )
    .unwrap();
    assert_eq!(generate(&single), generate(&folder));
}

#[test]
fn unknown_architecture_and_missing_config_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // A VAE alone: no Stable Diffusion UNet, and no config to fall back on.
    let vae_only = fixtures().join("51-single-file/sd1_vae/vae.safetensors");
    let err = DiffusionPipeline::from_single_file(&vae_only, &plain(DType::F32))
        .expect_err("a VAE alone is no pipeline");
    let msg = err.to_string();
    assert!(
        matches!(err, PipelineError::Convert(_))
            && msg.contains("no Stable Diffusion UNet")
            && msg.contains("vae.safetensors"),
        "{msg}"
    );
    // A config folder without model_index.json.
    let ckpt = fixtures().join("50-convert/single_file/sd1/model.ckpt");
    let options = SingleFileLoadOptions {
        config: Some(tmp.path().display().to_string()),
        ..plain(DType::F32)
    };
    let msg = DiffusionPipeline::from_single_file(&ckpt, &options)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("model_index.json"), "{msg}");
    // A config that is neither a folder nor a repo id.
    let options = SingleFileLoadOptions {
        config: Some("no/such/config/folder".into()),
        ..plain(DType::F32)
    };
    let msg = DiffusionPipeline::from_single_file(&ckpt, &options)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("neither a valid local path nor a valid repo id"),
        "{msg}"
    );
    // No config given and the default repo not in the (empty) cache, offline.
    let options = SingleFileLoadOptions {
        load: LoadOptions {
            hub: Some({
                let cache = tmp.path().join("cache").display().to_string();
                let mut hub = diff_hub::HubConfig::from_lookup(|k| {
                    (k == "HF_HUB_CACHE").then(|| cache.clone())
                })
                .unwrap();
                hub.offline = true;
                hub
            }),
            ..load_options(DType::F32)
        },
        ..SingleFileLoadOptions::default()
    };
    let msg = DiffusionPipeline::from_single_file(&ckpt, &options)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("stable-diffusion-v1-5/stable-diffusion-v1-5"),
        "{msg}"
    );
    // A missing file and a corrupt one.
    let msg = DiffusionPipeline::from_single_file(tmp.path().join("nope.safetensors"), &options)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope.safetensors"), "{msg}");
    let corrupt = tmp.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\0\0\0\0\0\0\0{not json").unwrap();
    let msg = DiffusionPipeline::from_single_file(&corrupt, &options)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("corrupt.safetensors"), "{msg}");
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn config_repo_is_fetched_without_its_weights_then_used_offline() {
    // A Hub repo holding a full diffusers pipeline (weights included) serves as `config`:
    // only its config and tokenizer files are downloaded, as diffusers' allow patterns say.
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let case = fixtures().join("50-convert/single_file/sd1");
    copy_dir(&case.join("expected"), &root.path().join("tiny-org/sd1"));
    let server =
        diff_hub_server::HubServer::start(diff_hub_server::ServerConfig::new(root.path())).unwrap();
    let cache_dir = cache.path().display().to_string();
    let mut hub =
        diff_hub::HubConfig::from_lookup(|k| (k == "HF_HUB_CACHE").then(|| cache_dir.clone()))
            .unwrap();
    hub.endpoint = server.endpoint().to_string();
    hub.cache_dir = cache.path().to_path_buf();
    let mut options = SingleFileLoadOptions {
        config: Some("tiny-org/sd1".into()),
        load: LoadOptions {
            hub: Some(hub),
            ..LoadOptions::default()
        },
        ..SingleFileLoadOptions::default()
    };
    let pipe = DiffusionPipeline::from_single_file(case.join("model.ckpt"), &options).unwrap();
    let cached = files_under(cache.path());
    assert!(
        cached.iter().any(|f| f.ends_with("unet/config.json")),
        "{cached:?}"
    );
    assert!(
        !cached.iter().any(|f| f.ends_with(".safetensors")),
        "weights were downloaded: {cached:?}"
    );
    assert_eq!(
        pipe.name_or_path(),
        case.join("model.ckpt").display().to_string()
    );
    // The cache alone serves it now.
    drop(server);
    options.load.local_files_only = true;
    let offline = DiffusionPipeline::from_single_file(case.join("model.ckpt"), &options).unwrap();
    let local = DiffusionPipeline::from_single_file(
        case.join("model.ckpt"),
        &SingleFileLoadOptions {
            config: Some(case.join("config").display().to_string()),
            ..plain(DType::F32)
        },
    )
    .unwrap();
    assert_eq!(generate(&offline), generate(&local));
}
