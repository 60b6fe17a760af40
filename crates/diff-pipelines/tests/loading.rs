//! `DiffusionPipeline::from_pretrained`, component access, scheduler swapping and `from_pipe`
//! on the bundled tiny pipelines.

use diff_pipelines::{
    CallArgs, DiffusionPipeline, Generators, LoadOptions, OutputType, Passed, PipelineClass,
    PipelineError, StepControl, StepInfo,
};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;
use common::copy_dir;

fn fixture(name: &str) -> PathBuf {
    common::fixtures().join(name)
}

fn no_checker() -> LoadOptions {
    let mut o = LoadOptions::default();
    o.components.safety_checker = Passed::Drop;
    o.config
        .insert("requires_safety_checker".into(), Value::Bool(false));
    o
}

fn load(name: &str, options: &LoadOptions) -> Result<DiffusionPipeline, PipelineError> {
    DiffusionPipeline::from_pretrained(fixture(name).to_str().unwrap(), options)
}

/// A copy of a tiny pipeline whose model_index.json is edited by `edit`; component folders
/// are symlinked, not copied.
fn edited_copy(name: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> tempfile::TempDir {
    let src = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            std::os::unix::fs::symlink(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    let mut index: Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(src.join("model_index.json")).unwrap())
            .unwrap();
    edit(&mut index);
    std::fs::write(
        tmp.path().join("model_index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    tmp
}

#[test]
fn class_name_picks_the_pipeline_and_components_expose_their_configs() {
    let sd = load("tiny-sd", &no_checker()).unwrap();
    assert_eq!(sd.class(), PipelineClass::StableDiffusion);
    assert_eq!(sd.component_config("unet").unwrap()["in_channels"], 4);
    assert_eq!(
        sd.component_config("vae").unwrap()["scaling_factor"],
        0.18215
    );
    assert_eq!(
        sd.component_config("scheduler").unwrap()["_class_name"],
        "PNDMScheduler"
    );
    assert_eq!(sd.tokenizer().unwrap().pad_token_id(), 49407);
    let xl = load("tiny-sdxl", &LoadOptions::default()).unwrap();
    assert_eq!(xl.class(), PipelineClass::StableDiffusionXL);
    assert_eq!(xl.tokenizer_2().unwrap().pad_token_id(), 0);
    assert_eq!(xl.config()["force_zeros_for_empty_prompt"], true);
}

#[test]
fn task_pipeline_ignores_class_name_of_a_text_to_image_checkpoint() {
    let options = LoadOptions {
        pipeline_class: Some(PipelineClass::StableDiffusionImg2Img),
        ..no_checker()
    };
    assert_eq!(
        load("tiny-sd", &options).unwrap().class(),
        PipelineClass::StableDiffusionImg2Img
    );
}

#[test]
fn unknown_class_name_is_a_typed_error_listing_supported_pipelines() {
    let dir = edited_copy("tiny-sd", |m| {
        m.insert("_class_name".into(), json!("FluxPipeline"));
    });
    let err = DiffusionPipeline::from_pretrained(dir.path().to_str().unwrap(), &no_checker())
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::UnknownPipeline { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("FluxPipeline") && msg.contains("StableDiffusionXLImg2ImgPipeline"),
        "{msg}"
    );
}

#[test]
fn unsupported_component_class_is_a_typed_error_naming_the_slot() {
    let dir = edited_copy("tiny-sd", |m| {
        m.insert("unet".into(), json!(["diffusers", "UNet2DModel"]));
    });
    let msg = DiffusionPipeline::from_pretrained(dir.path().to_str().unwrap(), &no_checker())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`unet`")
            && msg.contains("UNet2DModel")
            && msg.contains("UNet2DConditionModel"),
        "{msg}"
    );
}

#[test]
fn null_required_component_is_a_missing_component_error() {
    let dir = edited_copy("tiny-sd", |m| {
        m.insert("vae".into(), json!([null, null]));
    });
    let err = DiffusionPipeline::from_pretrained(dir.path().to_str().unwrap(), &no_checker())
        .unwrap_err();
    assert!(
        matches!(&err, PipelineError::MissingComponent { component, .. } if component == "vae"),
        "{err}"
    );
}

#[test]
fn dropping_the_safety_checker_keeps_requires_safety_checker_from_the_index() {
    let mut options = LoadOptions::default();
    options.components.safety_checker = Passed::Drop;
    let pipe = load("tiny-sd", &options).unwrap();
    // diffusers keeps `requires_safety_checker: true` (and warns) when only the checker is
    // dropped; passing `requires_safety_checker=False` records false.
    assert!(pipe.requires_safety_checker());
    assert!(
        !load("tiny-sd", &no_checker())
            .unwrap()
            .requires_safety_checker()
    );
}

#[test]
fn scheduler_swap_uses_the_current_config_plus_overrides() {
    let mut pipe = load("tiny-sd", &no_checker()).unwrap();
    assert!(
        pipe.scheduler()
            .unwrap()
            .compatibles()
            .contains(&"DDIMScheduler")
    );
    let mut overrides = Map::new();
    overrides.insert("beta_schedule".into(), json!("linear"));
    pipe.swap_scheduler("DDIMScheduler", &overrides).unwrap();
    let cfg = pipe.component_config("scheduler").unwrap();
    assert_eq!(cfg["_class_name"], "DDIMScheduler");
    assert_eq!(cfg["beta_schedule"], "linear");
    // Carried over from the PNDM config.
    assert_eq!(cfg["steps_offset"], 1);
    let err = pipe
        .swap_scheduler("NoSuchScheduler", &Map::new())
        .unwrap_err();
    assert!(err.to_string().contains("NoSuchScheduler"), "{err}");
}

fn weights_bytes(folder: &Path) -> u64 {
    ["unet", "vae", "text_encoder"]
        .iter()
        .filter_map(|c| std::fs::read_dir(folder.join(c)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".safetensors") && !n.contains(".fp16.")
        })
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn from_pipe_shares_components_without_copying_weights() {
    let sd = load("tiny-sd", &no_checker()).unwrap();
    let before = rss_bytes();
    let img2img = sd
        .from_pipe(
            PipelineClass::StableDiffusionImg2Img,
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
    let inpaint = sd
        .from_pipe(
            PipelineClass::StableDiffusionInpaint,
            &Default::default(),
            &Default::default(),
        )
        .unwrap();
    let grown = rss_bytes().saturating_sub(before);
    let weights = weights_bytes(&fixture("tiny-sd"));
    eprintln!(
        "from_pipe x2: resident memory grew by {grown} bytes; the shared weights are {weights} bytes"
    );
    for p in [&img2img, &inpaint] {
        assert!(Arc::ptr_eq(sd.unet().unwrap(), p.unet().unwrap()));
        assert!(Arc::ptr_eq(sd.vae().unwrap(), p.vae().unwrap()));
        assert!(Arc::ptr_eq(
            sd.text_encoder().unwrap(),
            p.text_encoder().unwrap()
        ));
        assert!(Arc::ptr_eq(sd.tokenizer().unwrap(), p.tokenizer().unwrap()));
        assert_eq!(p.config()["requires_safety_checker"], false);
    }
    assert_eq!(Arc::strong_count(sd.unet().unwrap()), 3);
    // Two more pipelines must not cost another copy of the weights (tolerance: half of them).
    assert!(
        grown < weights / 2,
        "grew {grown} bytes for {weights} bytes of weights"
    );
    // A passed component replaces the shared one.
    let passed = diff_pipelines::PassedComponents {
        tokenizer: Passed::Replace(Arc::new(
            diff_pipelines::ClipTokenizer::from_pretrained(
                fixture("tiny-sdxl").join("tokenizer_2"),
            )
            .unwrap(),
        )),
        ..Default::default()
    };
    let swapped = sd
        .from_pipe(PipelineClass::StableDiffusion, &passed, &Default::default())
        .unwrap();
    assert_eq!(swapped.tokenizer().unwrap().pad_token_id(), 0);
}

#[test]
fn fp16_variant_loads_and_generates_finite_images() {
    let options = LoadOptions {
        variant: Some("fp16".into()),
        ..no_checker()
    };
    let pipe = load("tiny-sd", &options).unwrap();
    let args = CallArgs {
        num_inference_steps: 2,
        height: Some(16),
        width: Some(16),
        generator: Generators::Seed(0),
        output_type: OutputType::Np,
        ..CallArgs::prompt("a cat")
    };
    let out = pipe.call(&args, None).unwrap();
    let images = out.images.unwrap();
    assert_eq!((images.count, images.height, images.width), (1, 16, 16));
    assert!(
        images
            .data
            .iter()
            .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
    );
}

#[test]
fn callback_sees_every_step_and_can_stop_early() {
    let pipe = load("tiny-sd", &no_checker()).unwrap();
    let args = CallArgs {
        num_inference_steps: 4,
        height: Some(16),
        width: Some(16),
        generator: Generators::Seed(1),
        output_type: OutputType::Latent,
        ..CallArgs::prompt("a cat")
    };
    let mut seen = Vec::new();
    let mut cb = |info: &StepInfo<'_>| {
        seen.push((info.step, info.timestep, info.latents.dims()));
        if info.step == 1 {
            StepControl::Stop
        } else {
            StepControl::Continue
        }
    };
    let out = pipe.call(&args, Some(&mut cb)).unwrap();
    assert!(out.interrupted && out.images.is_none());
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].2, [1, 4, 8, 8]);
    assert!(seen[0].1 > seen[1].1, "timesteps descend: {seen:?}");
}

#[test]
fn a_generator_list_not_matching_the_batch_is_diffusers_error() {
    let pipe = load("tiny-sd", &no_checker()).unwrap();
    let args = CallArgs {
        num_inference_steps: 1,
        height: Some(16),
        width: Some(16),
        num_images_per_prompt: 2,
        generator: Generators::Seeds(vec![1, 2, 3]),
        output_type: OutputType::Latent,
        ..CallArgs::prompt("a cat")
    };
    let err = pipe.call(&args, None).unwrap_err().to_string();
    assert!(
        err.contains("list of generators of length 3") && err.contains("batch size of 2"),
        "{err}"
    );
}

#[test]
fn height_not_multiple_of_8_is_an_invalid_argument() {
    let pipe = load("tiny-sd", &no_checker()).unwrap();
    let args = CallArgs {
        num_inference_steps: 1,
        height: Some(100),
        width: Some(16),
        ..CallArgs::prompt("a cat")
    };
    let err = pipe.call(&args, None).unwrap_err();
    assert!(
        err.to_string().contains("divisible by 8") && err.to_string().contains("100"),
        "{err}"
    );
}

/// Issue 18: a UNet config whose `sample_size` asks for a huge default size (a stranger's repo)
/// is an invalid argument naming the limit, before any latents are allocated; a size given
/// over the limit too.
#[test]
fn a_default_size_over_the_pixel_limit_is_an_invalid_argument() {
    let dir = edited_copy("tiny-sd", |_| {});
    let unet = dir.path().join("unet");
    std::fs::remove_file(&unet).unwrap();
    std::fs::create_dir(&unet).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-sd/unet")).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), unet.join(entry.file_name())).unwrap();
    }
    let config = unet.join("config.json");
    let text = std::fs::read_to_string(fixture("tiny-sd/unet/config.json"))
        .unwrap()
        .replace("\"sample_size\": 8", "\"sample_size\": 1000000000");
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, text).unwrap();
    let pipe =
        DiffusionPipeline::from_pretrained(dir.path().to_str().unwrap(), &no_checker()).unwrap();
    let args = CallArgs {
        num_inference_steps: 1,
        ..CallArgs::prompt("a cat")
    };
    let err = pipe.call(&args, None).unwrap_err().to_string();
    assert!(
        err.contains("pixels") && err.contains("sample_size"),
        "{err}"
    );
    let pipe = load("tiny-sd", &no_checker()).unwrap();
    let args = CallArgs {
        num_inference_steps: 1,
        height: Some(100_000),
        width: Some(100_000),
        ..CallArgs::prompt("a cat")
    };
    let err = pipe.call(&args, None).unwrap_err().to_string();
    assert!(err.contains("pixels") && err.contains("limit"), "{err}");
}

#[test]
fn sd_init_fixes_outdated_scheduler_config_in_memory() {
    let dir = edited_copy("tiny-sd", |_| {});
    let sched = dir.path().join("scheduler");
    std::fs::remove_file(&sched).unwrap();
    std::fs::create_dir(&sched).unwrap();
    let mut cfg: Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-sd/scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    cfg.insert("_class_name".into(), json!("DDIMScheduler"));
    cfg.insert("steps_offset".into(), json!(0));
    cfg.insert("clip_sample".into(), json!(true));
    std::fs::write(
        sched.join("scheduler_config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let pipe = DiffusionPipeline::from_pretrained(
        dir.path().to_str().unwrap(),
        &LoadOptions {
            // model_index.json still names PNDMScheduler; the entry's class is what is built.
            ..no_checker()
        },
    )
    .unwrap();
    let loaded = pipe.component_config("scheduler").unwrap();
    assert_eq!(loaded["steps_offset"], 1);
    // PNDM has no clip_sample argument, but the foreign key is kept in its config and patched
    // like diffusers' `hasattr(scheduler.config, "clip_sample")` check does.
    assert_eq!(loaded["clip_sample"], false);
    assert_eq!(loaded["_class_name"], "PNDMScheduler");
    // SDXL pipelines do not patch.
    let xl = load("tiny-sdxl", &LoadOptions::default()).unwrap();
    assert_eq!(
        xl.component_config("scheduler").unwrap()["steps_offset"],
        fixture_scheduler_value("tiny-sdxl", "steps_offset")
    );
}

fn fixture_scheduler_value(pipeline: &str, key: &str) -> Value {
    let cfg: Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture(pipeline).join("scheduler/scheduler_config.json"))
            .unwrap(),
    )
    .unwrap();
    cfg.get(key).cloned().unwrap_or(Value::Null)
}

#[test]
fn precomputed_prompt_embeds_give_the_same_latents_as_the_prompt() {
    let pipe = load("tiny-sd", &no_checker()).unwrap();
    let args = CallArgs {
        num_inference_steps: 2,
        height: Some(16),
        width: Some(16),
        negative_prompt: Some(vec!["blurry".into()]),
        generator: Generators::Seed(3),
        output_type: OutputType::Latent,
        ..CallArgs::prompt("a cat")
    };
    let from_text = pipe.call(&args, None).unwrap().latents;
    let (cond, uncond) = pipe.encode_prompt(&args, true).unwrap();
    let embeds = CallArgs {
        prompt: Vec::new(),
        negative_prompt: None,
        prompt_embeds: Some(cond),
        negative_prompt_embeds: uncond,
        ..args.clone()
    };
    let from_embeds = pipe.call(&embeds, None).unwrap().latents;
    // Same computation: exactly equal (tolerance 0).
    assert_eq!(
        from_text.into_data().try_to_vec::<f32>().unwrap(),
        from_embeds.into_data().try_to_vec::<f32>().unwrap()
    );
}

#[test]
fn passed_scheduler_replaces_the_loaded_one() {
    let base = load("tiny-sd", &no_checker()).unwrap();
    let config = base.component_config("scheduler").unwrap();
    let ddim =
        diff_schedulers::Scheduler::from_config_as("DDIMScheduler", &config, &Map::new()).unwrap();
    let mut options = no_checker();
    options.components.scheduler = Passed::Replace(ddim);
    let pipe = load("tiny-sd", &options).unwrap();
    assert_eq!(pipe.scheduler().unwrap().class_name(), "DDIMScheduler");
}

#[test]
fn repo_id_is_downloaded_from_the_hub_then_loads_offline_from_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-sd"), &root.path().join("tiny-org/tiny-sd"));
    let server =
        diff_hub_server::HubServer::start(diff_hub_server::ServerConfig::new(root.path())).unwrap();
    let cache_dir = cache.path().to_string_lossy().into_owned();
    let mut hub =
        diff_hub::HubConfig::from_lookup(|k| (k == "HF_HUB_CACHE").then(|| cache_dir.clone()))
            .unwrap();
    hub.endpoint = server.endpoint().to_string();
    hub.cache_dir = cache.path().to_path_buf();
    let options = LoadOptions {
        hub: Some(hub),
        variant: Some("fp16".into()),
        ..no_checker()
    };
    let pipe = DiffusionPipeline::from_pretrained("tiny-org/tiny-sd", &options).unwrap();
    assert_eq!(pipe.name_or_path(), "tiny-org/tiny-sd");
    // diffusers' selection: with variant fp16, the fp32 UNet weights are not downloaded.
    let fetched: Vec<String> = server.requests().iter().map(|r| r.url.clone()).collect();
    assert!(
        fetched
            .iter()
            .any(|p| p.contains("unet/diffusion_pytorch_model.fp16.safetensors")),
        "{fetched:?}"
    );
    assert!(
        !fetched
            .iter()
            .any(|p| p.ends_with("unet/diffusion_pytorch_model.safetensors")),
        "{fetched:?}"
    );
    server.shutdown();
    let offline = LoadOptions {
        local_files_only: true,
        ..options
    };
    let again = DiffusionPipeline::from_pretrained("tiny-org/tiny-sd", &offline).unwrap();
    assert_eq!(again.class(), PipelineClass::StableDiffusion);
}
