//! Attention processors against diffusers 0.42.1 (`tests/fixtures/23-attn-processors`): the
//! processor names and their order, the mid block's first self-attention probabilities kept by
//! `CrossAttnStoreProcessor` (diffusers' `Attention.get_attention_scores` inside the real
//! forward), the classic processor, IP-Adapter image-prompt attention, and the sharing of a
//! processor change between holders of one `Arc`.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use diff_format::configs::unet::UNet2DConditionConfig;
use diff_models::weights::{LoadOptions, TensorSource, load_file};
use diff_models::{
    AttnProcessor2_0, AttnProcessorRef, AttnProcessorSetting, BlockScale, CrossAttnStoreProcessor,
    IPAdapterAttnProcessor2_0, IpAdapterLayer, ModelError, PartScale, ScaleConfig,
    UNet2DConditionInput, UNet2DConditionModel,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn io() -> TensorSource {
    TensorSource::open_file(&root().join("tests/fixtures/23-attn-processors/io.safetensors"))
        .expect("fixture io")
}

fn tensor<const D: usize>(src: &TensorSource, name: &str, device: &Device) -> Tensor<D> {
    let shape = src.info(name).expect(name).shape.clone();
    let v = src.to_f32(name).expect(name);
    Tensor::from_data(TensorData::new(v, Shape::from(shape)), device)
}

/// `max |a - b| / max |b|`, after checking the shapes agree.
fn rel_err<const D: usize>(ours: Tensor<D>, reference: Tensor<D>) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "shape");
    let a: Vec<f32> = ours.cast(DType::F32).into_data().try_to_vec().expect("f32");
    let b: Vec<f32> = reference.into_data().try_to_vec().expect("f32");
    let scale = b.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    err / scale.max(1e-12)
}

fn tiny_unet(device: &Device) -> UNet2DConditionModel {
    let folder = root().join("tests/fixtures/tiny-sd/unet");
    let config: UNet2DConditionConfig =
        diff_format::load_config(folder.join("config.json")).expect("config");
    let model = UNet2DConditionModel::from_config(&config, device, DType::F32).expect("build");
    let (model, report) = load_file(
        model,
        &folder.join("diffusion_pytorch_model.safetensors"),
        &LoadOptions::new(),
    )
    .expect("load");
    assert!(report.is_clean(), "{}", report.summary());
    model
}

fn input(src: &TensorSource, device: &Device) -> UNet2DConditionInput {
    UNet2DConditionInput::new(
        tensor(src, "sample", device),
        tensor(src, "timestep", device),
        tensor(src, "encoder_hidden_states", device),
    )
}

fn names_json() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/23-attn-processors/names.json"))
        .expect("names.json");
    serde_json::from_str(&text).expect("json")
}

const MID_ATTN1: &str = "mid_block.attentions.0.transformer_blocks.0.attn1.processor";

#[test]
fn attn_processor_names_and_order_match_diffusers() {
    let device = Device::default();
    let unet = tiny_unet(&device);
    let names: Vec<String> = unet.attn_processors().into_iter().map(|(n, _)| n).collect();
    let want: Vec<String> = serde_json::from_value(names_json()["unet"].clone()).expect("list");
    assert_eq!(names, want);
    assert!(
        unet.attn_processors()
            .iter()
            .all(|(_, p)| p.name() == "AttnProcessor2_0")
    );
}

#[test]
fn vae_attn_processor_names_match_diffusers() {
    let device = Device::default();
    let folder = root().join("tests/fixtures/tiny-sd/vae");
    let config = diff_format::load_config(folder.join("config.json")).expect("config");
    let vae = diff_models::AutoencoderKL::from_config(&config, &device, DType::F32).expect("vae");
    let names: Vec<String> = vae.attn_processors().into_iter().map(|(n, _)| n).collect();
    let want: Vec<String> = serde_json::from_value(names_json()["vae"].clone()).expect("list");
    assert_eq!(names, want);
}

#[test]
fn store_processor_keeps_mid_self_attention_probabilities_as_diffusers() {
    let device = Device::default();
    let unet = tiny_unet(&device);
    let src = io();

    // Tolerance: 1e-4 relative, as every float32 UNet parity test.
    let default_out = unet.forward(input(&src, &device)).expect("forward");
    let err = rel_err(default_out, tensor(&src, "out_default", &device));
    assert!(err <= 1e-4, "default output: {err:e}");

    let store = Arc::new(CrossAttnStoreProcessor::new());
    let (_, mid) = unet
        .attn_processors()
        .into_iter()
        .find(|(n, _)| n == MID_ATTN1)
        .expect("mid attn1");
    assert_eq!(mid.name(), "AttnProcessor2_0");
    let attn1 = &unet.mid_block.as_ref().expect("mid").attentions[0].transformer_blocks[0].attn1;
    attn1.set_processor(store.clone());
    let out = unet.forward(input(&src, &device)).expect("forward");

    let probs = store.attention_probs().expect("stored");
    // [batch * heads, n, m] = [2 * 2, 16, 16] on the 4x4 mid feature map.
    assert_eq!(probs.dims(), [4, 16, 16]);
    // Tolerance: 1e-6 absolute on probabilities (the scores are float32 sums of 16 products).
    let want = tensor::<3>(&src, "mid_attn1_probs", &device);
    let diff: Vec<f32> = (probs - want).abs().into_data().try_to_vec().expect("f32");
    let max = diff.iter().fold(0f32, |m, v| m.max(*v));
    eprintln!("mid attn1 probabilities: max abs error {max:e}");
    assert!(max <= 1e-6, "probabilities: {max:e}");

    // The processor does not change the output (tolerance 1e-4, as above).
    let err = rel_err(out.clone(), tensor(&src, "out_store", &device));
    assert!(err <= 1e-4, "output with the store processor: {err:e}");
    let err = rel_err(out, tensor(&src, "out_default", &device));
    assert!(err <= 1e-4, "store vs default: {err:e}");
}

#[test]
fn default_attn_processor_is_the_classic_one_and_matches_diffusers() {
    let device = Device::default();
    let unet = tiny_unet(&device);
    let src = io();
    unet.set_default_attn_processor().expect("default");
    assert!(
        unet.attn_processors()
            .iter()
            .all(|(_, p)| p.name() == "AttnProcessor")
    );
    let out = unet.forward(input(&src, &device)).expect("forward");
    // Tolerance: 1e-4 relative.
    let err = rel_err(out, tensor(&src, "out_classic", &device));
    assert!(err <= 1e-4, "classic processor: {err:e}");

    // A store processor is not one set_default_attn_processor replaces (diffusers refuses).
    unet.set_attn_processor(Arc::new(CrossAttnStoreProcessor::new()) as AttnProcessorRef)
        .expect("set all");
    let err = unet.set_default_attn_processor().expect_err("refused");
    assert!(err.to_string().contains("CrossAttnStoreProcessor"), "{err}");
}

/// Installs the fixture's IP-Adapter processors (scale 0.6) on every `attn2`.
fn install_ip_adapters(unet: &UNet2DConditionModel, src: &TensorSource, device: &Device) {
    let mut map = Vec::new();
    for (name, _) in unet.attn_processors() {
        let processor: AttnProcessorRef = if name.ends_with("attn1.processor") {
            Arc::new(AttnProcessor2_0)
        } else {
            let layer = IpAdapterLayer::from_torch(
                tensor(src, &format!("ip.{name}.to_k_ip"), device),
                tensor(src, &format!("ip.{name}.to_v_ip"), device),
                4,
            );
            let p = IPAdapterAttnProcessor2_0::new(vec![layer]);
            p.set_scale(&[0.6]).expect("scale");
            Arc::new(p)
        };
        map.push((name, processor));
    }
    unet.set_attn_processor(AttnProcessorSetting::ByName(map))
        .expect("by name");
}

#[test]
fn ip_adapter_processor_matches_diffusers() {
    let device = Device::default();
    let unet = tiny_unet(&device);
    let src = io();
    install_ip_adapters(&unet, &src, &device);

    // The image tokens as a separate tuple member (diffusers' form)...
    let mut inp = input(&src, &device);
    inp.ip_hidden_states = Some(vec![tensor(&src, "ip_image_embeds", &device)]);
    let out = unet.forward(inp).expect("forward");
    // Tolerance: 1e-4 relative.
    let err = rel_err(out, tensor(&src, "out_ip", &device));
    assert!(err <= 1e-4, "IP-Adapter output: {err:e}");

    // ... or appended to the text tokens (diffusers' deprecated form) give the same output.
    let mut inp = input(&src, &device);
    inp.encoder_hidden_states = Tensor::cat(
        vec![
            inp.encoder_hidden_states,
            tensor(&src, "ip_image_embeds", &device),
        ],
        1,
    );
    let out = unet.forward(inp).expect("forward");
    let err = rel_err(out, tensor(&src, "out_ip", &device));
    assert!(err <= 1e-4, "IP-Adapter output, appended tokens: {err:e}");

    // Scale 0 skips the image attention: the plain output again.
    for (_, p) in unet.attn_processors() {
        if let Some(ip) = p.as_any().downcast_ref::<IPAdapterAttnProcessor2_0>() {
            ip.set_scale(&[0.0]).expect("scale");
        }
    }
    let mut inp = input(&src, &device);
    inp.ip_hidden_states = Some(vec![tensor(&src, "ip_image_embeds", &device)]);
    let out = unet.forward(inp).expect("forward");
    let err = rel_err(out, tensor(&src, "out_default", &device));
    assert!(err <= 1e-4, "IP-Adapter at scale 0: {err:e}");
}

#[test]
fn set_attn_processor_map_names_unknown_and_missing_keys() {
    let device = Device::default();
    let unet = tiny_unet(&device);
    let default: AttnProcessorRef = Arc::new(AttnProcessor2_0);
    let mut map: Vec<(String, AttnProcessorRef)> = unet.attn_processors();
    map.pop();
    let err = unet
        .set_attn_processor(AttnProcessorSetting::ByName(map.clone()))
        .expect_err("missing");
    assert!(
        matches!(&err, ModelError::AttnProcessor { key, .. } if key == "mid_block.attentions.0.transformer_blocks.0.attn2.processor"),
        "{err}"
    );
    map.push(("mid_block.attentions.0.attn9.processor".to_owned(), default));
    let err = unet
        .set_attn_processor(AttnProcessorSetting::ByName(map))
        .expect_err("unknown");
    assert!(
        matches!(&err, ModelError::AttnProcessor { key, .. } if key == "mid_block.attentions.0.attn9.processor"),
        "{err}"
    );
}

#[test]
fn a_processor_set_through_one_arc_is_seen_by_every_holder() {
    let device = Device::default();
    let unet = Arc::new(tiny_unet(&device));
    let other = Arc::clone(&unet);
    let store = Arc::new(CrossAttnStoreProcessor::new());
    let (name, _) = unet.attn_processors().swap_remove(6);
    assert_eq!(name, MID_ATTN1);
    unet.mid_block.as_ref().expect("mid").attentions[0].transformer_blocks[0]
        .attn1
        .set_processor(store.clone());
    let seen = other
        .attn_processors()
        .into_iter()
        .find(|(n, _)| n == MID_ATTN1)
        .expect("mid")
        .1;
    assert_eq!(seen.name(), "CrossAttnStoreProcessor");
    let src = io();
    other.forward(input(&src, &device)).expect("forward");
    assert!(store.attention_probs().is_some());
}

#[test]
fn instantstyle_block_scales_set_ip_adapter_scales_as_diffusers() {
    let device = Device::default();
    let unet = tiny_unet(&device);
    let src = io();
    install_ip_adapters(&unet, &src, &device);
    // {"down": {"block_0": 0.3}, "up": {"block_1": [0.0, 1.0]}}
    let config = ScaleConfig::PerBlock {
        down: Some(PartScale::Blocks(vec![(0, BlockScale::All(0.3))])),
        mid: None,
        up: Some(PartScale::Blocks(vec![(
            1,
            BlockScale::PerLayer(vec![0.0, 1.0]),
        )])),
    };
    unet.set_ip_adapter_scale(&[config]).expect("scale");
    let want: std::collections::BTreeMap<String, Vec<f64>> =
        serde_json::from_value(names_json()["instantstyle_scales"].clone()).expect("map");
    let mut got = std::collections::BTreeMap::new();
    for (name, p) in unet.attn_processors() {
        if let Some(ip) = p.as_any().downcast_ref::<IPAdapterAttnProcessor2_0>() {
            got.insert(name, ip.scale());
        }
    }
    assert_eq!(got, want);
    let mut inp = input(&src, &device);
    inp.ip_hidden_states = Some(vec![tensor(&src, "ip_image_embeds", &device)]);
    let out = unet.forward(inp).expect("forward");
    // Tolerance: 1e-4 relative.
    let err = rel_err(out, tensor(&src, "out_ip_instantstyle", &device));
    assert!(err <= 1e-4, "InstantStyle output: {err:e}");

    // A block list of the wrong length is refused.
    let bad = ScaleConfig::PerBlock {
        down: None,
        mid: None,
        up: Some(PartScale::Blocks(vec![(
            1,
            BlockScale::PerLayer(vec![1.0; 3]),
        )])),
    };
    let err = unet.set_ip_adapter_scale(&[bad]).expect_err("wrong length");
    assert!(err.to_string().contains("up.block_1"), "{err}");
}
