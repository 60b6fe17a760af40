//! Parity of `UNet2DConditionModel` and `AutoencoderKL` with diffusers 0.42.1.
//!
//! The references come from `tests/fixtures/21-unet-vae/generate.py` (`cargo xtask fixtures
//! --only 21-unet-vae`): random float16 weights, float32 inputs and the float32 outputs of the
//! real diffusers models. Every comparison is `max |ours - ref| / max |ref|`, with the tolerance
//! stated where it is checked: 1e-4 for float32, 1e-2 for float16.

use diff_models::FromPretrained;
use std::path::PathBuf;

use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use diff_format::configs::unet::{PerBlock, UNet2DConditionConfig};
use diff_models::unet_2d_condition::ClassLabels;
use diff_models::weights::{LoadOptions, TensorSource, load_file};
use diff_models::{AutoencoderKL, ModelError, UNet2DConditionInput, UNet2DConditionModel};

const F32_TOL: f64 = 1e-4;
const F16_TOL: f64 = 1e-2;

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/21-unet-vae")
        .join(case)
}

fn io(case: &str) -> TensorSource {
    TensorSource::open_file(&case_dir(case).join("io.safetensors")).expect("fixture io")
}

fn has(src: &TensorSource, name: &str) -> bool {
    src.info(name).is_some()
}

fn tensor<const D: usize>(src: &TensorSource, name: &str, device: &Device) -> Tensor<D> {
    let shape = src.info(name).expect(name).shape.clone();
    let v = src.to_f32(name).expect(name);
    Tensor::from_data(TensorData::new(v, Shape::from(shape)), device)
}

/// `max |a - b| / max |b|`, after checking the shapes agree.
fn rel_err<const D: usize>(ours: Tensor<D>, reference: Tensor<D>) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "output shape");
    let a = ours
        .cast(DType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32");
    let b = reference.into_data().try_to_vec::<f32>().expect("f32");
    let scale = b.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    assert!(a.iter().all(|v| v.is_finite()), "non-finite output");
    err / scale.max(1e-12)
}

fn unet_input(src: &TensorSource, device: &Device) -> UNet2DConditionInput {
    let mut input = UNet2DConditionInput::new(
        tensor(src, "sample", device),
        tensor(src, "timestep", device),
        tensor(src, "encoder_hidden_states", device),
    );
    if has(src, "encoder_attention_mask") {
        input.encoder_attention_mask = Some(tensor(src, "encoder_attention_mask", device));
    }
    if has(src, "timestep_cond") {
        input.timestep_cond = Some(tensor(src, "timestep_cond", device));
    }
    if has(src, "text_embeds") {
        input.text_embeds = Some(tensor(src, "text_embeds", device));
        input.time_ids = Some(tensor(src, "time_ids", device));
    }
    if has(src, "class_labels") {
        let shape = &src.info("class_labels").expect("labels").shape;
        input.class_labels = Some(if shape.len() == 1 {
            ClassLabels::Labels(tensor(src, "class_labels", device))
        } else {
            ClassLabels::Embeds(tensor(src, "class_labels", device))
        });
    }
    if has(src, "mid_residual") {
        input.mid_block_additional_residual = Some(tensor(src, "mid_residual", device));
        let residuals = (0..)
            .map(|k| format!("down_residual_{k}"))
            .take_while(|name| has(src, name))
            .map(|name| tensor(src, &name, device))
            .collect();
        input.down_block_additional_residuals = Some(residuals);
    }
    input
}

/// Runs one UNet fixture at `dtype` and returns the relative error.
fn unet_error(case: &str, dtype: DType) -> f64 {
    let device = Device::default();
    let options = diff_models::ModelLoadOptions::new(&device).with_dtype(dtype);
    let (unet, report) =
        UNet2DConditionModel::from_pretrained(&case_dir(case), &options).expect("load unet");
    assert!(report.is_clean(), "{}", report.summary());
    let src = io(case);
    let out = unet.forward(unet_input(&src, &device)).expect("forward");
    let err = rel_err(out, tensor(&src, "out", &device));
    eprintln!("{case} {dtype:?}: max abs error / max |ref| = {err:.3e}");
    err
}

#[test]
fn unet_sd15_structure_matches_diffusers() {
    assert!(unet_error("unet-sd15-structure", DType::F32) <= F32_TOL);
}

#[test]
fn unet_sdxl_structure_text_time_matches_diffusers() {
    assert!(unet_error("unet-sdxl-structure", DType::F32) <= F32_TOL);
}

#[test]
fn unet_sd21_linear_projection_upcast_mask_and_odd_latent_match_diffusers() {
    assert!(unet_error("unet-sd21-tiny", DType::F32) <= F32_TOL);
}

#[test]
fn unet_inpaint_nine_channels_matches_diffusers() {
    assert!(unet_error("unet-inpaint-tiny", DType::F32) <= F32_TOL);
}

#[test]
fn unet_lcm_time_cond_proj_matches_diffusers() {
    assert!(unet_error("unet-lcm-tiny", DType::F32) <= F32_TOL);
}

#[test]
fn unet_class_embedding_table_matches_diffusers() {
    assert!(unet_error("unet-class-table-tiny", DType::F32) <= F32_TOL);
}

#[test]
fn unet_class_projection_scale_shift_matches_diffusers() {
    assert!(unet_error("unet-class-projection-tiny", DType::F32) <= F32_TOL);
}

#[test]
fn unet_text_proj_time_acts_centred_input_timestep_class_concat_and_controlnet_residuals_match_diffusers()
 {
    assert!(unet_error("unet-misc-tiny", DType::F32) <= F32_TOL);
}

#[test]
fn unet_f16_on_cpu_stays_within_1e2() {
    assert!(unet_error("unet-sd15-structure", DType::F16) <= F16_TOL);
    assert!(unet_error("unet-sdxl-structure", DType::F16) <= F16_TOL);
}

fn load_vae(case: &str, dtype: DType) -> AutoencoderKL {
    let device = Device::default();
    let options = diff_models::ModelLoadOptions::new(&device).with_dtype(dtype);
    let (vae, report) =
        AutoencoderKL::from_pretrained(&case_dir(case), &options).expect("load vae");
    assert!(report.is_clean(), "{}", report.summary());
    vae
}

/// Encode (mean, std, sample with given noise) and decode errors.
fn vae_errors(case: &str, dtype: DType) -> [f64; 4] {
    let device = Device::default();
    let vae = load_vae(case, dtype);
    let src = io(case);
    let dist = vae.encode(tensor(&src, "x", &device)).expect("encode");
    let mean = rel_err(dist.mean.clone(), tensor(&src, "mean", &device));
    let std = rel_err(dist.std.clone(), tensor(&src, "std", &device));
    let sample = dist
        .sample(tensor(&src, "noise", &device))
        .expect("noise shape");
    let sample = rel_err(sample, tensor(&src, "latent_sample", &device));
    let decoded = vae.decode(tensor(&src, "z", &device)).expect("decode");
    let decoded = rel_err(decoded, tensor(&src, "decoded", &device));
    eprintln!(
        "{case} {dtype:?}: mean {mean:.3e} std {std:.3e} sample {sample:.3e} decode {decoded:.3e}"
    );
    [mean, std, sample, decoded]
}

#[test]
fn vae_sd_structure_encode_and_decode_match_diffusers() {
    for e in vae_errors("vae-sd-structure", DType::F32) {
        assert!(e <= F32_TOL);
    }
}

#[test]
fn vae_f16_on_cpu_stays_within_1e2() {
    for e in vae_errors("vae-sd-structure", DType::F16) {
        assert!(e <= F16_TOL);
    }
}

#[test]
fn vae_tiled_encode_decode_and_sliced_decode_match_diffusers() {
    let device = Device::default();
    let mut vae = load_vae("vae-tiny", DType::F32);
    let src = io("vae-tiny");
    for e in vae_errors("vae-tiny", DType::F32) {
        assert!(e <= F32_TOL);
    }
    vae.set_tiling(true);
    let dist = vae
        .encode(tensor(&src, "tiled_x", &device))
        .expect("encode");
    let mean = rel_err(dist.mean.clone(), tensor(&src, "tiled_mean", &device));
    let std = rel_err(dist.std, tensor(&src, "tiled_std", &device));
    let dec = vae
        .decode(tensor(&src, "tiled_z", &device))
        .expect("decode");
    let dec = rel_err(dec, tensor(&src, "tiled_decoded", &device));
    vae.set_tiling(false);
    vae.set_slicing(true);
    let sliced = vae.decode(tensor(&src, "z", &device)).expect("decode");
    let sliced = rel_err(sliced, tensor(&src, "sliced_decoded", &device));
    eprintln!(
        "vae-tiny tiled: mean {mean:.3e} std {std:.3e} decode {dec:.3e}; sliced {sliced:.3e}"
    );
    for e in [mean, std, dec, sliced] {
        assert!(e <= F32_TOL);
    }
}

fn tiny_config() -> UNet2DConditionConfig {
    let text =
        std::fs::read_to_string(case_dir("unet-lcm-tiny").join("config.json")).expect("config");
    serde_json::from_str(&text).expect("config json")
}

#[test]
fn unet_weights_with_wrong_shapes_are_a_mismatch_error_naming_the_key() {
    let device = Device::default();
    let mut config = tiny_config();
    // The checkpoint's cross-attention keys are 24 wide; a 16-wide model must refuse them.
    config.cross_attention_dim = PerBlock::One(16);
    let model = UNet2DConditionModel::from_config(&config, &device, DType::F32).expect("build");
    let weights = case_dir("unet-lcm-tiny").join("diffusion_pytorch_model.safetensors");
    let err = load_file(model, &weights, &LoadOptions::new()).expect_err("mismatch");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, ModelError::StateDictMismatch { .. }));
    assert!(msg.contains("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"));
    assert!(msg.contains("expected shape [32, 16], found [32, 24]"));
}

#[test]
fn unet_weights_missing_a_layer_are_a_missing_key_error() {
    let device = Device::default();
    let mut config = tiny_config();
    // Two resnets per down block where the checkpoint has one.
    config.layers_per_block = PerBlock::One(2);
    let model = UNet2DConditionModel::from_config(&config, &device, DType::F32).expect("build");
    let weights = case_dir("unet-lcm-tiny").join("diffusion_pytorch_model.safetensors");
    let err = load_file(model, &weights, &LoadOptions::new()).expect_err("missing");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("96 missing key(s): `down_blocks.0.attentions.1.norm.bias`"));
    // The lenient report lists every missing key.
    let model = UNet2DConditionModel::from_config(&config, &device, DType::F32).expect("build");
    let mut options = LoadOptions::new().lenient();
    options.ignore_mismatched_sizes = true;
    let (_, report) = load_file(model, &weights, &options).expect("lenient load");
    assert_eq!(report.missing.len(), 96);
    assert!(
        report
            .missing
            .iter()
            .any(|k| k == "down_blocks.0.resnets.1.conv1.weight")
    );
}

#[test]
fn unet_unsupported_config_value_names_the_key() {
    let device = Device::default();
    let mut config = tiny_config();
    config.addition_embed_type = Some("image".to_owned());
    let err = UNet2DConditionModel::from_config(&config, &device, DType::F32).expect_err("refused");
    assert!(
        err.to_string().contains("config key `addition_embed_type`"),
        "{err}"
    );
    let mut config = tiny_config();
    config.down_block_types[0] = "SimpleCrossAttnDownBlock2D".to_owned();
    let err = UNet2DConditionModel::from_config(&config, &device, DType::F32).expect_err("refused");
    assert!(err.to_string().contains("`down_block_types`"), "{err}");
}

#[test]
fn unet_wrong_input_channels_is_an_input_error() {
    let device = Device::default();
    let model =
        UNet2DConditionModel::from_config(&tiny_config(), &device, DType::F32).expect("build");
    let input = UNet2DConditionInput::new(
        Tensor::zeros([1, 9, 8, 8], &device),
        Tensor::zeros([1], &device),
        Tensor::zeros([1, 7, 24], &device),
    );
    let err = model.forward(input).expect_err("bad channels");
    assert!(
        err.to_string()
            .contains("`sample` has 9 channels, expected in_channels = 4"),
        "{err}"
    );
}

/// Counts parameters and parameter tensors without initialising the (lazy) parameters.
#[derive(Default)]
struct Counter {
    params: usize,
    tensors: usize,
}

impl burn::module::ModuleVisitor for Counter {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        self.params += param.lazy_shape().num_elements();
        self.tensors += 1;
    }
}

#[test]
fn real_unet_and_vae_structures_have_diffusers_parameter_counts() {
    use burn::module::Module;
    use diff_format::configs::vae::AutoencoderKLConfig;
    let device = Device::default();
    let path = case_dir("real_structures.json");
    let text = std::fs::read_to_string(&path).expect("real_structures.json");
    let table: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).expect("json");
    assert!(table.len() >= 8);
    for (name, entry) in &table {
        let config = entry["config"].clone();
        let mut counter = Counter::default();
        if entry["kind"] == "unet" {
            let config: UNet2DConditionConfig = serde_json::from_value(config).expect("config");
            UNet2DConditionModel::from_config(&config, &device, DType::F32)
                .expect(name)
                .visit(&mut counter);
        } else {
            let config: AutoencoderKLConfig = serde_json::from_value(config).expect("config");
            AutoencoderKL::from_config(&config, &device, DType::F32)
                .expect(name)
                .visit(&mut counter);
        }
        assert_eq!(
            (counter.params as u64, counter.tensors as u64),
            (
                entry["params"].as_u64().expect("params"),
                entry["tensors"].as_u64().expect("tensors")
            ),
            "{name}: (params, tensors) ours vs diffusers"
        );
    }
}

#[test]
fn unet_out_of_range_class_label_is_an_input_error() {
    let device = Device::default();
    let text = std::fs::read_to_string(case_dir("unet-class-table-tiny").join("config.json"))
        .expect("config");
    let config: UNet2DConditionConfig = serde_json::from_str(&text).expect("config json");
    let model = UNet2DConditionModel::from_config(&config, &device, DType::F32).expect("build");
    let mut input = UNet2DConditionInput::new(
        Tensor::zeros([1, 4, 8, 8], &device),
        Tensor::zeros([1], &device),
        Tensor::zeros([1, 7, 24], &device),
    );
    input.class_labels = Some(ClassLabels::Labels(Tensor::from_floats([10.0], &device)));
    let err = model.forward(input).expect_err("label 10 of 10");
    assert!(
        err.to_string()
            .contains("class label 10 is not an integer in 0..10"),
        "{err}"
    );
}

#[test]
fn vae_sample_with_wrong_noise_shape_is_refused() {
    let device = Device::default();
    let vae = load_vae("vae-tiny", DType::F32);
    let dist = vae
        .encode(Tensor::zeros([1, 3, 16, 16], &device))
        .expect("encode");
    assert!(dist.sample(Tensor::zeros([1, 4, 4, 4], &device)).is_none());
    assert!(dist.sample(Tensor::zeros([1, 4, 8, 8], &device)).is_some());
}

/// bf16 keeps 8 mantissa bits (f16 keeps 11), so its bound is 5e-2 rather than 1e-2.
const BF16_TOL: f64 = 5e-2;

#[test]
fn unet_and_vae_bf16_on_cpu_stay_within_5e2() {
    assert!(unet_error("unet-sd15-structure", DType::BF16) <= BF16_TOL);
    for e in vae_errors("vae-sd-structure", DType::BF16) {
        assert!(e <= BF16_TOL);
    }
}
