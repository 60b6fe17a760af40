//! CLIP text encoders against transformers 5.23 (`tests/fixtures/20-clip/text_*`).
//! Gate: f32 max abs error <= 1e-4 x max |ref|; f16 on CPU <= 1e-2 x max |ref|.

#[path = "common/clip_fixtures.rs"]
mod common;

use burn::tensor::{DType, Device, Tensor};
use common::{check, fixture, int_tensor, io};
use diff_models::FromPretrained;
use diff_models::{CLIPTextModel, CLIPTextModelWithProjection, ModelError};

const F32_TOL: f32 = 1e-4;
const F16_TOL: f32 = 1e-2;

fn f32_of<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.cast(DType::F32)
}

fn text_model_case(case: &str, folder: &str, dtype: DType, tol: f32) {
    let device = Device::default();
    let (model, report) = CLIPTextModel::from_pretrained(
        &fixture(folder),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(dtype),
    )
    .expect("load");
    assert!(report.is_clean(), "{}", report.summary());
    let src = io(case);
    let out = model
        .forward(int_tensor::<2>(&src, "input_ids", &device))
        .expect("forward");
    let tag = format!("{case} {dtype:?}");
    check(
        &format!("{tag} last_hidden_state"),
        f32_of(out.last_hidden_state),
        &src,
        "last_hidden_state",
        tol,
    );
    check(
        &format!("{tag} pooler_output"),
        f32_of(out.pooler_output),
        &src,
        "pooler_output",
        tol,
    );
    let stacked: Tensor<4> = Tensor::stack(out.hidden_states.into_iter().map(f32_of).collect(), 0);
    check(
        &format!("{tag} hidden_states"),
        stacked,
        &src,
        "hidden_states",
        tol,
    );
}

fn projection_case(case: &str, dtype: DType, tol: f32) {
    let device = Device::default();
    let (model, report) = CLIPTextModelWithProjection::from_pretrained(
        &fixture(case),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(dtype),
    )
    .expect("load");
    assert!(report.is_clean(), "{}", report.summary());
    let src = io(case);
    let ids = int_tensor::<2>(&src, "input_ids", &device);
    let pooled = model
        .text_model
        .forward(ids.clone())
        .expect("forward")
        .pooler_output;
    let out = model.forward(ids).expect("forward");
    let tag = format!("{case} {dtype:?}");
    check(
        &format!("{tag} text_embeds"),
        f32_of(out.text_embeds),
        &src,
        "text_embeds",
        tol,
    );
    check(
        &format!("{tag} pooler_output"),
        f32_of(pooled),
        &src,
        "pooler_output",
        tol,
    );
    check(
        &format!("{tag} last_hidden_state"),
        f32_of(out.last_hidden_state),
        &src,
        "last_hidden_state",
        tol,
    );
    let stacked: Tensor<4> = Tensor::stack(out.hidden_states.into_iter().map(f32_of).collect(), 0);
    check(
        &format!("{tag} hidden_states"),
        stacked,
        &src,
        "hidden_states",
        tol,
    );
}

#[test]
fn quick_gelu_text_model_with_legacy_eos_2_matches_transformers() {
    text_model_case(
        "text_quick_gelu_eos2",
        "text_quick_gelu_eos2",
        DType::F32,
        F32_TOL,
    );
}

#[test]
fn text_model_loads_transformers_4_keys_with_text_model_prefix() {
    text_model_case(
        "text_quick_gelu_eos2",
        "text_quick_gelu_eos2/legacy_keys",
        DType::F32,
        F32_TOL,
    );
}

#[test]
fn gelu_text_model_with_projection_pools_at_first_eos_like_transformers() {
    projection_case("text_gelu_projection", DType::F32, F32_TOL);
}

#[test]
fn sd15_structure_text_encoder_matches_transformers() {
    text_model_case("text_sd15", "text_sd15", DType::F32, F32_TOL);
}

#[test]
fn sdxl_structure_second_text_encoder_matches_transformers() {
    projection_case("text_sdxl_2", DType::F32, F32_TOL);
}

#[test]
fn text_encoders_in_f16_on_cpu_stay_within_1e2() {
    text_model_case("text_sd15", "text_sd15", DType::F16, F16_TOL);
    projection_case("text_gelu_projection", DType::F16, F16_TOL);
    projection_case("text_sdxl_2", DType::F16, F16_TOL);
}

#[test]
fn too_long_prompts_and_out_of_vocabulary_ids_are_errors() {
    let device = Device::default();
    let (model, _) = CLIPTextModel::from_pretrained(
        &fixture("text_quick_gelu_eos2"),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(DType::F32),
    )
    .expect("load");
    let long = Tensor::<2, burn::tensor::Int>::zeros([1, 17], &device);
    let err = model.forward(long).expect_err("17 > 16 positions");
    assert!(matches!(err, ModelError::InvalidInput { .. }));
    assert!(
        err.to_string().contains("max_position_embeddings 16"),
        "{err}"
    );
    let oov = Tensor::<2, burn::tensor::Int>::full([1, 3], 99, &device);
    let err = model.forward(oov).expect_err("id 99 with vocab 99");
    assert!(err.to_string().contains("token id 99"), "{err}");
}

#[test]
fn padding_attention_mask_combines_with_the_causal_mask_like_transformers() {
    let device = Device::default();
    let (model, _) = CLIPTextModel::from_pretrained(
        &fixture("text_quick_gelu_eos2"),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(DType::F32),
    )
    .expect("load");
    let src = io("text_quick_gelu_eos2");
    let out = model
        .forward_with_mask(
            int_tensor::<2>(&src, "input_ids", &device),
            Some(int_tensor::<2>(&src, "attention_mask", &device)),
        )
        .expect("forward");
    check(
        "text_quick_gelu_eos2 masked last_hidden_state",
        out.last_hidden_state,
        &src,
        "masked_last_hidden_state",
        F32_TOL,
    );
    check(
        "text_quick_gelu_eos2 masked pooler_output",
        out.pooler_output,
        &src,
        "masked_pooler_output",
        F32_TOL,
    );
}
