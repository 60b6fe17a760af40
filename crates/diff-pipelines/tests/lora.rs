//! LoRA on a pipeline against real diffusers 0.42.1 + peft: `tests/fixtures/25-lora-formats`
//! (one LoRA file per format, loaded with `load_lora_weights(file, adapter_name="style")` into
//! the bundled tiny SD / SDXL pipelines). Per case the images of diffusers are replayed:
//! `unfused` (the adapter at 1.0 right after loading), `weighted` (`set_adapters("style",
//! 0.5)`), `fused` (`set_adapters 1.0`, `fuse_lora(lora_scale=0.75)`), `unfused_again` (after
//! `unfuse_lora`). Tolerance: every pixel within 2/255 and mean absolute error under 0.5/255.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use diff_models::LoraModel;
use diff_pipelines::{
    AdapterWeight, CallArgs, DiffusionPipeline, Generators, LoadOptions, OutputType, Passed,
    PassedComponents, PipelineClass,
};
use serde_json::Value;

mod common;

fn cases_dir() -> PathBuf {
    common::fixtures().join("25-lora-formats")
}

fn expected(case: &str) -> Value {
    let text = std::fs::read_to_string(cases_dir().join(case).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's pipeline: tiny SD without safety checker, or tiny SDXL; DDIM swapped in.
fn load(pipeline: &str) -> DiffusionPipeline {
    let mut options = LoadOptions {
        local_files_only: true,
        ..LoadOptions::default()
    };
    let folder = if pipeline == "StableDiffusionPipeline" {
        options.components.safety_checker = Passed::Drop;
        options
            .config
            .insert("requires_safety_checker".into(), Value::Bool(false));
        common::fixtures().join("tiny-sd")
    } else {
        common::fixtures().join("tiny-sdxl")
    };
    let mut pipe = DiffusionPipeline::from_pretrained(folder.to_str().unwrap(), &options).unwrap();
    pipe.swap_scheduler("DDIMScheduler", &serde_json::Map::new())
        .unwrap();
    pipe
}

fn generate(pipe: &DiffusionPipeline, prompt: &str) -> Vec<f32> {
    let call = CallArgs {
        prompt: vec![prompt.to_owned()],
        num_inference_steps: 2,
        generator: Generators::Seed(0),
        output_type: OutputType::Np,
        ..CallArgs::default()
    };
    pipe.call(&call, None).unwrap().images.unwrap().data
}

fn lora_path(case: &str, e: &Value) -> PathBuf {
    cases_dir().join(case).join(e["file"].as_str().unwrap())
}

fn check(what: &str, got: &[f32], want: &[f32]) {
    let (max, mean) = common::compare(what, got, want, 2.0 / 255.0, 0.5 / 255.0)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{what}: max |diff| {max:.3e}, mean {mean:.3e}");
}

fn run_case(case: &str) {
    let e = expected(case);
    let pipe = load(e["pipeline"].as_str().unwrap());
    let prompt = e["prompt"].as_str().unwrap();
    let images = cases_dir().join(case).join("images.safetensors");
    let want = |key: &str| common::read_tensor(&images, key).1;
    let name = pipe
        .load_lora_weights(lora_path(case, &e).to_str().unwrap(), None, Some("style"))
        .unwrap();
    assert_eq!(name, "style");
    assert_eq!(pipe.get_active_adapters(), vec!["style".to_owned()]);
    check(
        &format!("{case} unfused"),
        &generate(&pipe, prompt),
        &want("unfused"),
    );
    pipe.set_adapters(
        &["style"],
        &[AdapterWeight::Uniform(e["weighted"].as_f64().unwrap())],
    )
    .unwrap();
    check(
        &format!("{case} weighted"),
        &generate(&pipe, prompt),
        &want("weighted"),
    );
    pipe.set_adapters(&["style"], &[1.0.into()]).unwrap();
    pipe.fuse_lora(e["fuse_lora_scale"].as_f64().unwrap(), None);
    check(
        &format!("{case} fused"),
        &generate(&pipe, prompt),
        &want("fused"),
    );
    pipe.unfuse_lora();
    check(
        &format!("{case} unfused_again"),
        &generate(&pipe, prompt),
        &want("unfused_again"),
    );
}

macro_rules! parity {
    ($($case:ident => $test:ident;)*) => {
        const TESTED: &[&str] = &[$(stringify!($case)),*];
        $(
            #[test]
            fn $test() {
                run_case(stringify!($case));
            }
        )*
    };
}

parity! {
    sd_peft_metadata => peft_lora_with_metadata_matches_diffusers;
    sd_peft_no_metadata => peft_lora_without_metadata_matches_diffusers;
    sd_attn_procs => attention_processor_lora_matches_diffusers;
    sd_kohya => kohya_lora_with_locon_and_text_encoder_matches_diffusers;
    sd_kohya_bin => kohya_lora_from_a_pickle_matches_diffusers;
    sd_kohya_dora => kohya_dora_lora_matches_diffusers;
    sdxl_kohya_ldm => sdxl_kohya_ldm_names_lora_matches_diffusers;
    sdxl_peft_metadata => sdxl_peft_lora_with_text_encoder_2_matches_diffusers;
}

#[test]
fn every_fixture_case_is_tested() {
    let mut cases: Vec<String> = std::fs::read_dir(cases_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|d| d.path().join("images.safetensors").is_file())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(cases, tested);
}

#[test]
fn model_tables_equal_the_ones_pytorch_recorded() {
    for case in ["sd_peft_metadata", "sdxl_peft_metadata"] {
        let e = expected(case);
        let pipe = load(e["pipeline"].as_str().unwrap());
        let tables = pipe.lora_model_tables();
        let models = e["models"].as_object().unwrap();
        assert_eq!(tables.len(), models.len(), "{case}: components");
        for table in &tables {
            let want = &models[&table.component];
            assert_eq!(table.class, want["class"].as_str().unwrap(), "{case}");
            assert_eq!(
                table.has_text_model,
                want["has_text_model"].as_bool().unwrap(),
                "{case}: {}",
                table.component
            );
            let want_modules: Vec<(String, Vec<usize>)> = want["modules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m[0].as_str().unwrap().to_owned(),
                        m[1].as_array()
                            .unwrap()
                            .iter()
                            .map(|d| d.as_u64().unwrap() as usize)
                            .collect(),
                    )
                })
                .collect();
            let got: Vec<(String, Vec<usize>)> = table
                .modules
                .iter()
                .map(|m| (m.name.clone(), m.weight_shape.clone()))
                .collect();
            assert_eq!(got, want_modules, "{case}: {} table", table.component);
        }
    }
}

#[test]
fn a_lora_for_another_family_names_a_key_and_leaves_the_pipeline_unchanged() {
    let case = "sd_wrong_family";
    let e = expected(case);
    let pipe = load("StableDiffusionPipeline");
    let before = generate(&pipe, "a red circle");
    let err = pipe
        .load_lora_weights(lora_path(case, &e).to_str().unwrap(), None, Some("style"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora_"), "the error names a key: {err}");
    assert!(err.contains("size mismatch"), "{err}");
    assert!(pipe.get_list_adapters().is_empty());
    assert_eq!(generate(&pipe, "a red circle"), before);
}

#[test]
fn default_names_count_up_and_the_new_adapter_becomes_the_active_one() {
    let pipe = load("StableDiffusionPipeline");
    let file = cases_dir().join("sd_kohya/lora.safetensors");
    let file = file.to_str().unwrap();
    assert_eq!(
        pipe.load_lora_weights(file, None, None).unwrap(),
        "default_0"
    );
    assert_eq!(
        pipe.load_lora_weights(file, None, None).unwrap(),
        "default_1"
    );
    assert_eq!(pipe.get_active_adapters(), vec!["default_1".to_owned()]);
    assert_eq!(
        pipe.get_list_adapters(),
        vec![
            (
                "unet".to_owned(),
                vec!["default_0".to_owned(), "default_1".to_owned()]
            ),
            (
                "text_encoder".to_owned(),
                vec!["default_0".to_owned(), "default_1".to_owned()]
            ),
        ]
    );
    let err = pipe
        .load_lora_weights(file, None, Some("default_0"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already in use"), "{err}");
    let err = pipe
        .set_adapters(&["nope"], &[1.0.into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    pipe.set_adapters(&["default_0", "default_1"], &[0.5.into(), 0.25.into()])
        .unwrap();
    assert_eq!(pipe.get_active_adapters(), vec!["default_0", "default_1"]);
    pipe.delete_adapters(&["default_0"]).unwrap();
    assert_eq!(pipe.get_active_adapters(), vec!["default_1"]);
    pipe.unload_lora_weights();
    assert!(pipe.get_list_adapters().is_empty());
}

#[test]
fn a_pipeline_made_by_from_pipe_shares_the_adapters() {
    let a = load("StableDiffusionPipeline");
    let file = cases_dir().join("sd_peft_metadata/pytorch_lora_weights.safetensors");
    a.load_lora_weights(file.to_str().unwrap(), None, Some("style"))
        .unwrap();
    let b = a
        .from_pipe(
            PipelineClass::StableDiffusionImg2Img,
            &PassedComponents::default(),
            &Default::default(),
        )
        .unwrap();
    assert_eq!(b.get_list_adapters(), a.get_list_adapters());
    assert_eq!(b.get_active_adapters(), vec!["style".to_owned()]);
    b.set_adapters(&["style"], &[0.5.into()]).unwrap();
    let unet = a.unet().unwrap();
    let (_, layer) = unet
        .lora_layers()
        .into_iter()
        .find(|(_, l)| l.adapters().contains("style"))
        .unwrap();
    let (r, alpha) = layer.adapters().rank_alpha("style").unwrap();
    let scaling = layer.adapters().scaling("style").unwrap();
    assert!((scaling - 0.5 * alpha / r as f64).abs() < 1e-12);
    b.disable_lora();
    assert!(!layer.adapters().is_enabled());
    a.enable_lora();
    assert!(layer.adapters().is_enabled());
}

#[test]
fn per_component_and_per_block_weights_reach_the_layers() {
    use diff_models::{BlockScale, PartScale, ScaleConfig};
    let pipe = load("StableDiffusionPipeline");
    let file = cases_dir().join("sd_kohya/lora.safetensors");
    pipe.load_lora_weights(file.to_str().unwrap(), None, Some("style"))
        .unwrap();
    let weight = AdapterWeight::PerComponent {
        unet: Some(ScaleConfig::PerBlock {
            down: Some(PartScale::Blocks(vec![(0, BlockScale::All(0.25))])),
            mid: Some(BlockScale::All(0.5)),
            up: None,
        }),
        text_encoder: Some(0.75),
        text_encoder_2: None,
    };
    pipe.set_adapters(&["style"], &[weight]).unwrap();
    let unet = pipe.unet().unwrap();
    let weight_of = |layer: diff_models::LoraLayerRef<'_>| {
        let (r, alpha) = layer.adapters().rank_alpha("style").unwrap();
        layer.adapters().scaling("style").unwrap() / (alpha / r as f64)
    };
    for (name, layer) in unet.lora_layers() {
        if !layer.adapters().contains("style") {
            continue;
        }
        let want = if name.starts_with("mid_block.attentions.0") {
            // The mid block's resnets keep 1.0: diffusers keys the mid weight as
            // `mid_block.attentions.0`.
            0.5
        } else if name.starts_with("down_blocks.0.") {
            // Resnets and downsamplers of a block take its `attentions.{i}` weight, as
            // diffusers' `get_module_weight` falls back to (block 1 has no transformers, so
            // its layers keep 1.0).
            0.25
        } else {
            1.0
        };
        let got = weight_of(layer);
        assert!((got - want).abs() < 1e-12, "{name}: {got} != {want}");
    }
    let te = pipe.text_encoder().unwrap();
    for (_, layer) in te.lora_layers() {
        if layer.adapters().contains("style") {
            assert!((weight_of(layer) - 0.75).abs() < 1e-12);
        }
    }
}

#[test]
fn loading_and_fusing_leave_the_base_weights_untouched() {
    let pipe = load("StableDiffusionPipeline");
    let unet: Arc<_> = pipe.unet().unwrap().clone();
    let base = |name: &str| {
        let layer = unet.lora_layer(name).unwrap();
        match layer {
            diff_models::LoraLayerRef::Linear(l) => {
                (l.base.weight.id, l.base.weight.val().into_data())
            }
            diff_models::LoraLayerRef::Conv2d(c) => {
                (c.base.weight.id, c.base.weight.val().into_data())
            }
        }
    };
    let names = [
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.resnets.0.conv1",
    ];
    let before: Vec<_> = names.iter().map(|n| base(n)).collect();
    let file = cases_dir().join("sd_kohya/lora.safetensors");
    pipe.load_lora_weights(file.to_str().unwrap(), None, Some("style"))
        .unwrap();
    for (n, b) in names.iter().zip(&before) {
        assert!(
            unet.lora_layer(n).unwrap().adapters().contains("style"),
            "{n}"
        );
        assert_eq!(
            &base(n),
            b,
            "{n}: loading keeps the base parameter and its bytes"
        );
    }
    pipe.fuse_lora(0.75, None);
    pipe.unfuse_lora();
    for (n, b) in names.iter().zip(&before) {
        assert_eq!(
            &base(n),
            b,
            "{n}: fuse + unfuse restores the base weight exactly"
        );
    }
}

#[test]
fn a_missing_lora_file_is_a_clear_error() {
    let pipe = load("StableDiffusionPipeline");
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-lora-dir/x");
    let err = pipe
        .load_lora_weights(missing.to_str().unwrap(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-lora-dir"), "{err}");
}

/// `tests/fixtures/26-lora-mix`: two adapters ("a": kohya with LoCon and a text-encoder part,
/// "b": PEFT) mixed by `set_adapters` weights (two seeds), and a per-component dictionary with
/// a UNet per-block weight (`{"unet": {"down": {"block_0": 0.25}, "mid": 0.5},
/// "text_encoder": 0.75}`), against diffusers' images; same tolerance.
#[test]
fn two_adapters_mixed_and_per_block_weights_match_diffusers() {
    use diff_models::{BlockScale, PartScale, ScaleConfig};
    let dir = common::fixtures().join("26-lora-mix");
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let pipe = load("StableDiffusionPipeline");
    for pair in e["loras"].as_array().unwrap() {
        let path = common::fixtures().join(pair[1].as_str().unwrap());
        pipe.load_lora_weights(path.to_str().unwrap(), None, pair[0].as_str())
            .unwrap();
    }
    let prompt = e["prompt"].as_str().unwrap();
    let images = dir.join("images.safetensors");
    for case in e["cases"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let names: Vec<&str> = case["adapter_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let weights: Vec<AdapterWeight> = case["adapter_weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| match w {
                Value::Number(n) => AdapterWeight::Uniform(n.as_f64().unwrap()),
                // The one dictionary the generator records.
                _ => {
                    assert_eq!(
                        w,
                        &serde_json::json!({"unet": {"down": {"block_0": 0.25}, "mid": 0.5}, "text_encoder": 0.75})
                    );
                    AdapterWeight::PerComponent {
                        unet: Some(ScaleConfig::PerBlock {
                            down: Some(PartScale::Blocks(vec![(0, BlockScale::All(0.25))])),
                            mid: Some(BlockScale::All(0.5)),
                            up: None,
                        }),
                        text_encoder: Some(0.75),
                        text_encoder_2: None,
                    }
                }
            })
            .collect();
        pipe.set_adapters(&names, &weights).unwrap();
        let call = CallArgs {
            prompt: vec![prompt.to_owned()],
            num_inference_steps: e["steps"].as_u64().unwrap() as usize,
            generator: Generators::Seed(case["seed"].as_u64().unwrap()),
            output_type: OutputType::Np,
            ..CallArgs::default()
        };
        let got = pipe.call(&call, None).unwrap().images.unwrap().data;
        check(
            &format!("26-lora-mix {key}"),
            &got,
            &common::read_tensor(&images, key).1,
        );
    }
}

/// `fuse_lora` then `unload_lora_weights` keeps the merged weights, as in diffusers (peft's base
/// layer holds the merged weight when the wrappers are removed).
#[test]
fn unloading_after_fusing_keeps_the_fused_model() {
    let case = "sd_kohya";
    let e = expected(case);
    let pipe = load("StableDiffusionPipeline");
    pipe.load_lora_weights(lora_path(case, &e).to_str().unwrap(), None, Some("style"))
        .unwrap();
    pipe.fuse_lora(e["fuse_lora_scale"].as_f64().unwrap(), None);
    pipe.unload_lora_weights();
    assert!(pipe.get_list_adapters().is_empty());
    let images = cases_dir().join(case).join("images.safetensors");
    check(
        "fused then unloaded",
        &generate(&pipe, e["prompt"].as_str().unwrap()),
        &common::read_tensor(&images, "fused").1,
    );
}

/// A `set_adapters` weight as the fixtures record it (JSON as diffusers takes it).
fn adapter_weight(w: &Value) -> AdapterWeight {
    use diff_models::{BlockScale, PartScale, ScaleConfig};
    let block = |v: &Value| match v {
        Value::Array(a) => BlockScale::PerLayer(a.iter().map(|x| x.as_f64().unwrap()).collect()),
        v => BlockScale::All(v.as_f64().unwrap()),
    };
    let part = |v: &Value| match v {
        Value::Object(m) => PartScale::Blocks(
            m.iter()
                .map(|(k, v)| (k.trim_start_matches("block_").parse().unwrap(), block(v)))
                .collect(),
        ),
        v => PartScale::All(v.as_f64().unwrap()),
    };
    match w {
        Value::Number(n) => AdapterWeight::Uniform(n.as_f64().unwrap()),
        Value::Object(m) => AdapterWeight::PerComponent {
            unet: m.get("unet").map(|u| match u {
                Value::Object(parts) => ScaleConfig::PerBlock {
                    down: parts.get("down").map(part),
                    mid: parts.get("mid").map(block),
                    up: parts.get("up").map(part),
                },
                v => ScaleConfig::Uniform(v.as_f64().unwrap()),
            }),
            text_encoder: m.get("text_encoder").and_then(Value::as_f64),
            text_encoder_2: m.get("text_encoder_2").and_then(Value::as_f64),
        },
        other => panic!("unexpected adapter weight {other}"),
    }
}

/// `tests/fixtures/27-lora-mix-sdxl`: on tiny SDXL, two adapters ("a": kohya with LDM names and
/// `lora_te1_` / `lora_te2_` parts, "b": PEFT on the UNet and both text encoders) mixed by
/// `set_adapters` weights (two seeds), a per-component dictionary with UNet per-block weights
/// (one a per-transformer list) and both text encoders, the mix fused with `lora_scale=0.8`, and
/// the same mix unfused again; against diffusers' images, same tolerance.
#[test]
fn sdxl_two_adapters_per_block_and_fused_mix_match_diffusers() {
    let dir = common::fixtures().join("27-lora-mix-sdxl");
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let pipe = load("StableDiffusionXLPipeline");
    for pair in e["loras"].as_array().unwrap() {
        let path = common::fixtures().join(pair[1].as_str().unwrap());
        pipe.load_lora_weights(path.to_str().unwrap(), None, pair[0].as_str())
            .unwrap();
    }
    let prompt = e["prompt"].as_str().unwrap();
    let images = dir.join("images.safetensors");
    for case in e["cases"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let names: Vec<&str> = case["adapter_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        let weights: Vec<AdapterWeight> = case["adapter_weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(adapter_weight)
            .collect();
        pipe.set_adapters(&names, &weights).unwrap();
        let fuse = case["fuse_lora_scale"].as_f64();
        if let Some(scale) = fuse {
            pipe.fuse_lora(scale, None);
        }
        let call = CallArgs {
            prompt: vec![prompt.to_owned()],
            num_inference_steps: e["steps"].as_u64().unwrap() as usize,
            generator: Generators::Seed(case["seed"].as_u64().unwrap()),
            output_type: OutputType::Np,
            ..CallArgs::default()
        };
        let got = pipe.call(&call, None).unwrap().images.unwrap().data;
        if fuse.is_some() {
            pipe.unfuse_lora();
        }
        check(
            &format!("27-lora-mix-sdxl {key}"),
            &got,
            &common::read_tensor(&images, key).1,
        );
    }
}

/// `load_lora_weights("user/repo", weight_name=...)` against the local Hub server: the named
/// file, and without a name diffusers' best guess from the repo's file listing (the one
/// `.safetensors` at the root, here not named `pytorch_lora_weights`), give the images of the
/// same file loaded from disk. A missing file is a clear error and leaves the pipeline as it
/// was.
#[test]
fn a_lora_from_a_hub_repo_id_matches_the_local_file() {
    use diff_pipelines::LoraLoadOptions;
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let case = "sd_peft_metadata";
    let e = expected(case);
    let file = lora_path(case, &e);
    std::fs::create_dir_all(root.path().join("someone/tiny-lora")).unwrap();
    std::fs::copy(
        &file,
        root.path().join("someone/tiny-lora/my_style.safetensors"),
    )
    .unwrap();
    std::fs::write(root.path().join("someone/tiny-lora/README.md"), "a LoRA\n").unwrap();
    let server =
        diff_hub_server::HubServer::start(diff_hub_server::ServerConfig::new(root.path())).unwrap();
    let cache_dir = cache.path().to_string_lossy().into_owned();
    let mut hub =
        diff_hub::HubConfig::from_lookup(|k| (k == "HF_HUB_CACHE").then(|| cache_dir.clone()))
            .unwrap();
    hub.endpoint = server.endpoint().to_string();
    hub.cache_dir = cache.path().to_path_buf();
    let options = LoraLoadOptions {
        hub: Some(hub),
        ..LoraLoadOptions::default()
    };
    let prompt = e["prompt"].as_str().unwrap();
    let local = load("StableDiffusionPipeline");
    local
        .load_lora_weights(file.to_str().unwrap(), None, Some("style"))
        .unwrap();
    let want = generate(&local, prompt);
    for weight_name in [Some("my_style.safetensors"), None] {
        let pipe = load("StableDiffusionPipeline");
        let name = pipe
            .load_lora_weights_with("someone/tiny-lora", weight_name, Some("style"), &options)
            .unwrap();
        assert_eq!(name, "style");
        assert_eq!(generate(&pipe, prompt), want, "weight_name {weight_name:?}");
    }
    let pipe = load("StableDiffusionPipeline");
    let err = pipe
        .load_lora_weights_with(
            "someone/tiny-lora",
            Some("absent.safetensors"),
            None,
            &options,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
    assert!(pipe.get_list_adapters().is_empty());
    server.shutdown();
}
