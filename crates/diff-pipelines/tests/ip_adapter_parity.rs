//! The IP-Adapter gate: each case of `tests/fixtures/47-ip-adapter` (diffusers 0.42.1's
//! `load_ip_adapter` + `set_ip_adapter_scale` + `ip_adapter_image` on the tiny SD and SDXL
//! pipelines, `output_type="np"`) replayed with the same seed: plain (`.bin` and
//! `.safetensors`), Plus (float16 file, Resampler), Full, two adapters at once, a per-block
//! scale, with and without CFG, text-to-image, img2img, inpaint, SAG and SDXL. Tolerances (from
//! `cases.json`): every pixel within 2/255, mean absolute error under 0.5/255. Also the
//! loading errors and all-or-nothing behaviour, `ip_adapter_image_embeds`, and unloading.

use diff_pipelines::ip_adapter::{
    EmbedsRepeat, LoadIpAdapter, distinct_parameter_bytes, parameter_bytes,
    prepare_ip_adapter_image_embeds, scales_from_json,
};
use diff_pipelines::{
    CallArgs, DiffusionPipeline, Generators, LoadOptions, OutputType, Passed, PassedComponents,
    PipelineClass,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[macro_use]
mod common;
use common::{case_named, compare, fixtures, read_tensor, tolerance};

fn dir() -> PathBuf {
    fixtures().join("47-ip-adapter")
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

fn repo() -> String {
    dir().join("repo").to_str().unwrap().to_string()
}

fn image(name: &str) -> image::RgbImage {
    diff_image::load_image(&dir().join(name)).unwrap()
}

/// `Class.from_pretrained(tiny-sd, safety_checker=None, requires_safety_checker=False)`, or the
/// tiny SDXL pipeline for SDXL classes.
fn load(class: PipelineClass) -> DiffusionPipeline {
    let mut options = LoadOptions {
        pipeline_class: Some(class),
        ..LoadOptions::default()
    };
    let folder = if class.is_xl() {
        "tiny-sdxl"
    } else {
        options.components.safety_checker = Passed::Drop;
        options
            .config
            .insert("requires_safety_checker".into(), Value::Bool(false));
        "tiny-sd"
    };
    let path = fixtures().join(folder);
    DiffusionPipeline::from_pretrained(path.to_str().unwrap(), &options).unwrap()
}

fn adapters(case: &Value) -> LoadIpAdapter {
    let list = case["adapters"].as_array().unwrap();
    let subs: Vec<&str> = list
        .iter()
        .map(|a| a["subfolder"].as_str().unwrap())
        .collect();
    let names: Vec<&str> = list
        .iter()
        .map(|a| a["weight_name"].as_str().unwrap())
        .collect();
    LoadIpAdapter::lists(&[&repo()], &subs, &names)
        .unwrap()
        .with_image_encoder_folder(Some("models/image_encoder"))
}

fn call_args(case: &Value) -> CallArgs {
    let call = &case["call"];
    let get = |k: &str| call.get(k);
    let xl = case["pipeline"]
        .as_str()
        .unwrap()
        .starts_with("StableDiffusionXL");
    let inpaint = case["pipeline"] == "StableDiffusionInpaintPipeline";
    let mut args = CallArgs {
        prompt: vec![case["prompt"].as_str().unwrap().to_string()],
        negative_prompt: get("negative_prompt")
            .and_then(Value::as_str)
            .map(|s| vec![s.to_string()]),
        num_inference_steps: call["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: get("guidance_scale")
            .and_then(Value::as_f64)
            .map(|v| v as f32),
        generator: Generators::Seed(case["seed"].as_u64().unwrap()),
        output_type: OutputType::Np,
        ..CallArgs::default()
    };
    if !inpaint {
        args.height = Some(32);
        args.width = Some(32);
    }
    let _ = xl;
    if let Some(s) = get("sag_scale").and_then(Value::as_f64) {
        args.sag.sag_scale = s as f32;
    }
    if let Some(s) = get("pag_scale").and_then(Value::as_f64) {
        args.pag.pag_scale = s as f32;
    }
    if let Some(s) = get("strength").and_then(Value::as_f64) {
        args.img2img.strength = Some(s as f32);
    }
    if let Some(i) = get("image").and_then(Value::as_str) {
        args.img2img.image = Some(vec![image(i)]);
    }
    if let Some(m) = get("mask_image").and_then(Value::as_str) {
        args.inpaint.mask_image = Some(vec![image(m)]);
    }
    let ip: Vec<Vec<image::RgbImage>> = case["ip_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|per| {
            per.as_array()
                .unwrap()
                .iter()
                .map(|n| image(n.as_str().unwrap()))
                .collect()
        })
        .collect();
    args.ip_adapter.ip_adapter_image = Some(ip);
    args
}

fn pipeline_for(case: &Value) -> DiffusionPipeline {
    let class = PipelineClass::from_name(case["pipeline"].as_str().unwrap()).unwrap();
    let mut pipe = load(class);
    pipe.load_ip_adapter(&adapters(case)).unwrap();
    pipe.set_ip_adapter_scale(&scales_from_json(&case["scale"]).unwrap())
        .unwrap();
    pipe
}

fn check_images(name: &str, out: &diff_pipelines::PipelineOutput) {
    let (max_tol, mean_tol) = tolerance(&meta());
    let (shape, want) = read_tensor(&dir().join(format!("{name}.safetensors")), "images");
    let imgs = out.images.as_ref().unwrap();
    assert_eq!(
        vec![imgs.count, imgs.height, imgs.width, 3],
        shape,
        "{name}: image shape"
    );
    let stats = compare(name, &imgs.data, &want, max_tol, mean_tol);
    eprintln!("{name}: {stats:?}");
    stats.unwrap();
}

fn run_case(name: &str) {
    let meta = meta();
    let case = case_named(&meta, "cases", name);
    let pipe = pipeline_for(&case);
    let out = pipe
        .call(&call_args(&case), None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    check_images(name, &out);
}

parity! {
    t2i_plain_bin_cfg => plain_bin_adapter_with_cfg_matches_diffusers;
    t2i_plain_safetensors_nocfg => plain_safetensors_adapter_without_cfg_matches_diffusers;
    t2i_plus_per_block_cfg => plus_adapter_with_a_per_block_scale_matches_diffusers;
    t2i_plus_nocfg_two_images => plus_adapter_with_two_images_matches_diffusers;
    t2i_full_cfg => full_adapter_matches_diffusers;
    t2i_multi_plain_plus_cfg => two_adapters_at_once_match_diffusers;
    img2img_plain_cfg => img2img_with_an_adapter_matches_diffusers;
    inpaint_plus_cfg => inpaint_with_an_adapter_matches_diffusers;
    sag_plain_cfg => sag_with_an_adapter_and_cfg_matches_diffusers;
    sag_plain_nocfg => sag_with_an_adapter_without_cfg_matches_diffusers;
    xl_t2i_plain_cfg => sdxl_with_an_adapter_and_cfg_matches_diffusers;
    xl_t2i_plain_nocfg => sdxl_with_an_adapter_without_cfg_matches_diffusers;
    pag_plain_cfg => pag_with_an_adapter_and_cfg_matches_diffusers;
    pag_plus_nocfg => pag_with_a_plus_adapter_without_cfg_matches_diffusers;
    xl_pag_plain_cfg => sdxl_pag_with_an_adapter_matches_diffusers;
}

#[test]
fn every_recorded_case_is_tested() {
    for case in meta()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        assert!(TESTED.contains(&name), "case {name} has no test");
    }
}

#[test]
fn precomputed_image_embeds_give_the_same_images() {
    let meta = meta();
    let case = case_named(&meta, "cases", "t2i_plain_bin_cfg");
    let pipe = pipeline_for(&case);
    let args = call_args(&case);
    let embeds = prepare_ip_adapter_image_embeds(
        &pipe,
        pipe.unet().unwrap().ip_image_projection(),
        &args.ip_adapter,
        EmbedsRepeat::PerPrompt(1),
        true,
    )
    .unwrap();
    let mut with_embeds = args.clone();
    with_embeds.ip_adapter.ip_adapter_image = None;
    with_embeds.ip_adapter.ip_adapter_image_embeds = Some(embeds);
    let out = pipe.call(&with_embeds, None).unwrap();
    check_images("t2i_plain_bin_cfg", &out);
    // Both at once is refused, as diffusers' check_inputs does.
    let mut both = args;
    both.ip_adapter.ip_adapter_image_embeds = with_embeds.ip_adapter.ip_adapter_image_embeds;
    let err = pipe.call(&both, None).unwrap_err().to_string();
    assert!(err.contains("Provide either `ip_adapter_image`"), "{err}");
}

#[test]
fn an_sdxl_adapter_on_an_sd_pipeline_is_a_clear_error_and_changes_nothing() {
    let mut pipe = load(PipelineClass::StableDiffusion);
    let before: Vec<String> = pipe
        .unet()
        .unwrap()
        .attn_processors()
        .iter()
        .map(|(_, p)| p.name().to_string())
        .collect();
    let load = LoadIpAdapter::new(&repo(), "sdxl_models", "ip-adapter_tiny_sdxl.safetensors")
        .with_image_encoder_folder(Some("models/image_encoder"));
    let err = pipe.load_ip_adapter(&load).unwrap_err().to_string();
    // diffusers: "to_k_ip.0.weight expected shape torch.Size([16, 16]), but got [32, 32]".
    assert!(err.contains("ip_adapter.1.to_k_ip.weight"), "{err}");
    assert!(
        err.contains("[32, 32]") && err.contains("[16, 16]"),
        "{err}"
    );
    assert!(err.contains("SDXL"), "{err}");
    // All or nothing: no processor, projection or image encoder was added.
    let after: Vec<String> = pipe
        .unet()
        .unwrap()
        .attn_processors()
        .iter()
        .map(|(_, p)| p.name().to_string())
        .collect();
    assert_eq!(before, after);
    assert!(pipe.unet().unwrap().ip_image_projection().is_none());
    assert!(pipe.image_encoder().is_none());
}

#[test]
fn loading_errors_name_the_file_and_faceid_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut pipe = load(PipelineClass::StableDiffusion);
    // A missing file.
    let err = pipe
        .load_ip_adapter(&LoadIpAdapter::new(&repo(), "models", "nope.bin"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.bin"), "{err}");
    // A corrupt safetensors file and a corrupt pickle.
    std::fs::create_dir_all(tmp.path().join("models")).unwrap();
    std::fs::write(
        tmp.path().join("models/bad.safetensors"),
        b"\x10\0\0\0\0\0\0\0{garbage",
    )
    .unwrap();
    std::fs::write(tmp.path().join("models/bad.bin"), b"not a pickle").unwrap();
    for name in ["bad.safetensors", "bad.bin"] {
        let load = LoadIpAdapter::new(tmp.path().to_str().unwrap(), "models", name);
        let err = pipe.load_ip_adapter(&load).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
    // A FaceID checkpoint: a clear "not supported yet".
    let faceid = tmp.path().join("models/faceid.safetensors");
    let t = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        (shape, vec![0u8; n * 4])
    };
    type Raw = (Vec<usize>, Vec<u8>);
    let tensors: Vec<(String, Raw)> = vec![
        ("image_proj.norm.weight".into(), t(vec![16])),
        ("image_proj.proj.0.weight".into(), t(vec![32, 16])),
        ("ip_adapter.1.to_k_ip.weight".into(), t(vec![16, 16])),
    ];
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (s, d))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &faceid).unwrap();
    let load = LoadIpAdapter::new(tmp.path().to_str().unwrap(), "models", "faceid.safetensors");
    let err = pipe.load_ip_adapter(&load).unwrap_err().to_string();
    assert!(
        err.contains("FaceID") && err.contains("not supported yet"),
        "{err}"
    );
    assert!(pipe.unet().unwrap().ip_image_projection().is_none());
}

#[test]
fn unload_restores_processors_and_is_seen_through_from_pipe() {
    let meta = meta();
    let case = case_named(&meta, "cases", "t2i_plain_bin_cfg");
    let mut sd = pipeline_for(&case);
    let sag = sd
        .from_pipe(
            PipelineClass::StableDiffusionSAG,
            &PassedComponents::default(),
            &BTreeMap::new(),
        )
        .unwrap();
    // from_pipe adds no parameters.
    let alone = distinct_parameter_bytes(&[&sd]);
    assert_eq!(distinct_parameter_bytes(&[&sd, &sag]), alone);
    let total: usize = parameter_bytes(&sd).iter().map(|(_, b)| b).sum();
    assert_eq!(total, alone);
    assert!(
        parameter_bytes(&sd)
            .iter()
            .any(|(n, b)| n == "unet.ip_adapter" && *b > 0)
    );
    sd.unload_ip_adapter().unwrap();
    // The shared UNet lost the adapters; SD keeps its feature extractor (it has a safety
    // checker slot) and drops the image encoder; SAG keeps its own image encoder, as diffusers.
    assert!(sd.image_encoder().is_none());
    assert!(sd.feature_extractor().is_some());
    assert!(sag.image_encoder().is_some());
    assert!(sag.unet().unwrap().ip_image_projection().is_none());
    assert!(
        sag.unet()
            .unwrap()
            .attn_processors()
            .iter()
            .all(|(_, p)| p.name() == "AttnProcessor2_0")
    );
    let err = sag.call(&call_args(&case), None).unwrap_err().to_string();
    assert!(err.contains("no IP-Adapter loaded"), "{err}");
}

#[test]
fn sdxl_unload_drops_the_feature_extractor_it_made() {
    let meta = meta();
    let case = case_named(&meta, "cases", "xl_t2i_plain_nocfg");
    let mut pipe = pipeline_for(&case);
    assert!(pipe.feature_extractor().is_some());
    pipe.unload_ip_adapter().unwrap();
    assert!(pipe.feature_extractor().is_none());
    assert!(pipe.image_encoder().is_none());
}

/// A repo id: `h94/IP-Adapter`'s layout served by the test Hub; the weight file and the image
/// encoder are downloaded into the cache, and the images are diffusers'.
#[test]
fn an_ip_adapter_repo_id_is_downloaded_from_the_hub() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    common::copy_dir(
        &dir().join("repo"),
        &root.path().join("tiny-org/IP-Adapter"),
    );
    let server =
        diff_hub_server::HubServer::start(diff_hub_server::ServerConfig::new(root.path())).unwrap();
    let cache_dir = cache.path().to_string_lossy().into_owned();
    let mut hub =
        diff_hub::HubConfig::from_lookup(|k| (k == "HF_HUB_CACHE").then(|| cache_dir.clone()))
            .unwrap();
    hub.endpoint = server.endpoint().to_string();
    hub.cache_dir = cache.path().to_path_buf();
    let meta = meta();
    let case = case_named(&meta, "cases", "t2i_plain_bin_cfg");
    let mut pipe = load(PipelineClass::StableDiffusion);
    let load =
        LoadIpAdapter::new("tiny-org/IP-Adapter", "models", "ip-adapter_tiny.bin").with_hub(hub);
    pipe.load_ip_adapter(&load).unwrap();
    let fetched: Vec<String> = server.requests().iter().map(|r| r.url.clone()).collect();
    for file in [
        "models/ip-adapter_tiny.bin",
        "models/image_encoder/model.safetensors",
    ] {
        assert!(
            fetched.iter().any(|u| u.contains(file)),
            "{file}: {fetched:?}"
        );
    }
    server.shutdown();
    pipe.set_ip_adapter_scale(&scales_from_json(&case["scale"]).unwrap())
        .unwrap();
    let out = pipe.call(&call_args(&case), None).unwrap();
    check_images("t2i_plain_bin_cfg", &out);
}
