//! LoRA adapter layers against peft 0.21 (`tests/fixtures/24-lora-layers`): one `Linear` and one
//! `Conv2d` (stride 2, padding 1) with two named adapters, weighted as diffusers'
//! `set_adapters(["a", "b"], [0.7, -0.4])` weights them; unfused forward, fused forward, unfuse
//! restoring the base weight bit for bit, delete, and two holders of one `Arc` seeing the same
//! adapters. The model-level name API is checked on the tiny UNet and CLIP text encoder.

use std::path::PathBuf;
use std::sync::Arc;

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use diff_format::configs::unet::UNet2DConditionConfig;
use diff_models::weights::TensorSource;
use diff_models::{LoraConv2d, LoraLinear, LoraModel, LoraWeights, UNet2DConditionModel};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn io() -> TensorSource {
    TensorSource::open_file(&root().join("tests/fixtures/24-lora-layers/io.safetensors"))
        .expect("fixture io")
}

fn tensor<const D: usize>(src: &TensorSource, name: &str, device: &Device) -> Tensor<D> {
    let shape = src.info(name).expect(name).shape.clone();
    let v = src.to_f32(name).expect(name);
    Tensor::from_data(TensorData::new(v, Shape::from(shape)), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().try_to_vec().expect("f32")
}

/// `max |a - b| / max |b|`.
fn rel_err<const D: usize>(ours: Tensor<D>, reference: Tensor<D>) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "shape");
    let (a, b) = (values(ours), values(reference));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    err / scale.max(1e-12)
}

const ADAPTERS: [(&str, f64); 2] = [("a", 3.0), ("b", 5.0)];
const WEIGHTS: [(&str, f64); 2] = [("a", 0.7), ("b", -0.4)];

fn linear_layer(src: &TensorSource, device: &Device) -> LoraLinear {
    // PyTorch stores `[out, in]`; burn's Linear holds `[in, out]`.
    let weight: Tensor<2> = tensor(src, "lin.weight", device);
    let layer = LoraLinear::from(Linear {
        weight: Param::from_tensor(weight.transpose()),
        bias: Some(Param::from_tensor(tensor(src, "lin.bias", device))),
    });
    for (name, alpha) in ADAPTERS {
        let w = LoraWeights::new(
            tensor(src, &format!("lin.{name}.lora_A"), device),
            tensor(src, &format!("lin.{name}.lora_B"), device),
            alpha,
        );
        layer.add_adapter(name, w).expect("add");
    }
    layer
}

fn conv_layer(src: &TensorSource, device: &Device) -> LoraConv2d {
    let mut conv = Conv2dConfig::new([3, 5], [3, 3])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device);
    conv.weight = Param::from_tensor(tensor(src, "conv.weight", device));
    conv.bias = Some(Param::from_tensor(tensor(src, "conv.bias", device)));
    let layer = LoraConv2d::from(conv);
    for (name, alpha) in ADAPTERS {
        let w = LoraWeights::new(
            tensor(src, &format!("conv.{name}.lora_A"), device),
            tensor(src, &format!("conv.{name}.lora_B"), device),
            alpha,
        );
        layer.add_adapter(name, w).expect("add");
    }
    layer
}

#[test]
fn linear_lora_matches_peft_unfused_fused_and_unfuses_bit_for_bit() {
    let device = Device::default();
    let src = io();
    let layer = linear_layer(&src, &device);
    let x: Tensor<3> = tensor(&src, "lin.x", &device);
    let base_before = values(layer.base.weight.val());

    // Adapters added but none active: the base layer's output.
    let plain = layer.forward(x.clone());
    assert_eq!(values(plain.clone()), values(layer.base.forward(x.clone())));

    // Tolerance: 1e-6 relative for every comparison with peft.
    layer.adapters.set_adapters(&[("a", 1.0)]);
    let err = rel_err(
        layer.forward(x.clone()),
        tensor(&src, "lin.only_a", &device),
    );
    assert!(err <= 1e-6, "only a: {err:e}");

    layer.adapters.set_adapters(&WEIGHTS);
    let unfused = layer.forward(x.clone());
    let err = rel_err(unfused.clone(), tensor(&src, "lin.unfused", &device));
    assert!(err <= 1e-6, "unfused: {err:e}");

    layer.fuse(1.0, None);
    assert!(layer.adapters.is_fused());
    assert_eq!(layer.adapters.merged_adapters(), ["a", "b"]);
    let fused = layer.forward(x.clone());
    let err = rel_err(fused.clone(), unfused.clone());
    assert!(err <= 1e-6, "fused vs unfused: {err:e}");
    let err = rel_err(fused, tensor(&src, "lin.fused", &device));
    assert!(err <= 1e-6, "fused vs peft: {err:e}");

    layer.adapters.unfuse();
    assert_eq!(
        values(layer.base.weight.val()),
        base_before,
        "base weight changed"
    );
    assert_eq!(values(layer.forward(x.clone())), values(unfused));

    // Disabled: the base output, bit for bit.
    layer.adapters.disable();
    assert_eq!(values(layer.forward(x.clone())), values(plain.clone()));
    layer.adapters.enable();

    // Deleting `a` leaves `b` active with its weight.
    assert!(layer.adapters.delete("a").expect("delete"));
    assert_eq!(layer.adapters.names(), ["b"]);
    assert_eq!(layer.adapters.active_adapters(), ["b"]);
    assert!(!layer.adapters.delete("a").expect("absent"));
    layer.adapters.set_adapters(&[]);
    assert_eq!(values(layer.forward(x)), values(plain));
}

#[test]
fn conv_lora_matches_peft_unfused_fused_and_unfuses_bit_for_bit() {
    let device = Device::default();
    let src = io();
    let layer = conv_layer(&src, &device);
    let x: Tensor<4> = tensor(&src, "conv.x", &device);
    let base_before = values(layer.base.weight.val());

    // Tolerance: 1e-6 relative for every comparison with peft.
    layer.adapters.set_adapters(&[("a", 1.0)]);
    let err = rel_err(
        layer.forward(x.clone()),
        tensor(&src, "conv.only_a", &device),
    );
    assert!(err <= 1e-6, "only a: {err:e}");

    layer.adapters.set_adapters(&WEIGHTS);
    let unfused = layer.forward(x.clone());
    let err = rel_err(unfused.clone(), tensor(&src, "conv.unfused", &device));
    assert!(err <= 1e-6, "unfused: {err:e}");

    layer.fuse(1.0, None);
    let fused = layer.forward(x.clone());
    let err = rel_err(fused.clone(), unfused.clone());
    assert!(err <= 1e-6, "fused vs unfused: {err:e}");
    let err = rel_err(fused, tensor(&src, "conv.fused", &device));
    assert!(err <= 1e-6, "fused vs peft: {err:e}");

    // A fused adapter cannot be deleted.
    assert!(layer.adapters.delete("a").is_err());

    layer.adapters.unfuse();
    assert_eq!(
        values(layer.base.weight.val()),
        base_before,
        "base weight changed"
    );
    assert_eq!(values(layer.forward(x)), values(unfused));
    assert!(layer.adapters.delete("a").expect("delete"));
}

#[test]
fn two_holders_of_one_arc_see_the_same_adapters() {
    let device = Device::default();
    let src = io();
    let first = Arc::new(linear_layer(&src, &device));
    let second = Arc::clone(&first);
    let x: Tensor<3> = tensor(&src, "lin.x", &device);
    first.adapters.set_adapters(&WEIGHTS);
    assert_eq!(second.adapters.active_adapters(), ["a", "b"]);
    let err = rel_err(
        second.forward(x.clone()),
        tensor(&src, "lin.unfused", &device),
    );
    assert!(err <= 1e-6, "{err:e}");
    first.fuse(1.0, None);
    assert!(second.adapters.is_fused());
    second.adapters.unfuse();
    second.adapters.delete("b").expect("delete");
    assert_eq!(first.adapters.names(), ["a"]);
}

#[test]
fn unet_layers_are_reached_by_diffusers_names_and_keep_their_outputs() {
    let device = Device::default();
    let folder = root().join("tests/fixtures/tiny-sd/unet");
    let config: UNet2DConditionConfig =
        diff_format::load_config(folder.join("config.json")).expect("config");
    let unet =
        Arc::new(UNet2DConditionModel::from_config(&config, &device, DType::F32).expect("build"));
    let names: Vec<String> = unet.lora_layers().into_iter().map(|(n, _)| n).collect();
    for want in [
        "conv_in",
        "time_embedding.linear_1",
        "down_blocks.0.attentions.0.proj_in",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
        "down_blocks.0.resnets.0.conv1",
        "down_blocks.0.resnets.0.time_emb_proj",
        "down_blocks.0.downsamplers.0.conv",
        "up_blocks.0.resnets.0.conv_shortcut",
        "up_blocks.0.upsamplers.0.conv",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_k",
        "conv_out",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    // An adapter attached by name through one holder is seen by another.
    let other = Arc::clone(&unet);
    let to_q = unet
        .lora_layer("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
        .expect("to_q");
    let [d_in, d_out] = match to_q {
        diff_models::LoraLayerRef::Linear(l) => l.dims(),
        diff_models::LoraLayerRef::Conv2d(_) => panic!("to_q is linear"),
    };
    to_q.add_adapter_data(
        "style",
        TensorData::new(vec![0.5f32; 2 * d_in], [2, d_in]),
        TensorData::new(vec![0.25f32; d_out * 2], [d_out, 2]),
        2.0,
        false,
    )
    .expect("add");
    assert_eq!(other.list_adapters(), ["style"]);
    other.set_adapters(&[("style", 0.5)]).expect("set");
    assert_eq!(unet.active_adapters(), ["style"]);
    let err = unet.set_adapters(&[("nope", 1.0)]).expect_err("unknown");
    assert!(err.to_string().contains("nope"), "{err}");
    unet.delete_adapters(&["style"]).expect("delete");
    assert!(other.list_adapters().is_empty());
}

#[test]
fn clip_text_layers_use_transformers_names() {
    let device = Device::default();
    let folder = root().join("tests/fixtures/tiny-sd/text_encoder");
    let config = diff_format::load_config(folder.join("config.json")).expect("config");
    let clip = diff_models::CLIPTextModel::new(&config, &device).expect("build");
    let names: Vec<String> = clip.lora_layers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        &names[..6],
        [
            "text_model.encoder.layers.0.self_attn.k_proj",
            "text_model.encoder.layers.0.self_attn.v_proj",
            "text_model.encoder.layers.0.self_attn.q_proj",
            "text_model.encoder.layers.0.self_attn.out_proj",
            "text_model.encoder.layers.0.mlp.fc1",
            "text_model.encoder.layers.0.mlp.fc2",
        ]
    );
}
