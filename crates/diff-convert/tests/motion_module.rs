//! `convert --motion-module`: an original-layout AnimateDiff motion module (the keys of
//! `mm_sd_v15_v2.ckpt`: `.temporal_transformer.`, `.attention_blocks.N`, `.norms.N`,
//! `.ff_norm`, `.pos_encoder.pe`) made from the tiny diffusers adapter of
//! `tests/fixtures/70-animatediff` (written by diffusers' `save_pretrained`), converted back: every
//! tensor equals diffusers' (exact; the position tables, recomputed as the script's
//! `MotionAdapter(...)` does, within 1e-6), and the config reads the channels, layers and mid
//! block from the tensors.

use diff_convert::motion_module::{MotionModuleOptions, convert_motion_module};
use diff_format::configs::motion_adapter::MotionAdapterConfig;
use diff_format::configs::unet::PerBlock;
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use std::path::PathBuf;

fn adapter_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/70-animatediff/motion_adapter")
}

/// The diffusers key in the original layout (the script's renames reversed).
fn original_key(key: &str) -> String {
    let key = key
        .replace(".norm1", ".norms.0")
        .replace(".norm2", ".norms.1")
        .replace(".norm3", ".ff_norm")
        .replace(".attn1", ".attention_blocks.0")
        .replace(".attn2", ".attention_blocks.1");
    // `motion_modules.N.` -> `motion_modules.N.temporal_transformer.`
    let mut parts: Vec<&str> = key.split('.').collect();
    if let Some(i) = parts.iter().position(|p| *p == "motion_modules") {
        parts.insert(i + 2, "temporal_transformer");
    }
    parts.join(".")
}

fn as_f32(bytes: &[u8], dtype: safetensors::Dtype) -> Vec<f32> {
    match dtype {
        safetensors::Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

#[test]
fn original_motion_module_converts_to_the_diffusers_adapter() {
    let src = std::fs::read(adapter_dir().join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&src).unwrap();
    let mut original = Vec::new();
    for (name, view) in st.tensors() {
        let key = if name.ends_with(".pos_embed.pe") {
            // The original keeps one table per attention block; the script skips them all.
            original_key(&name.replace(".pos_embed.pe", ".attn1.pos_encoder.pe"))
        } else {
            original_key(&name)
        };
        original.push((key, view));
    }
    let views: Vec<(String, TensorView<'_>)> = original
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("mm_tiny.safetensors");
    std::fs::write(&ckpt, safetensors::serialize(views, None).unwrap()).unwrap();

    let out = dir.path().join("adapter");
    let options = MotionModuleOptions {
        motion_max_seq_length: 32,
        ..MotionModuleOptions::default()
    };
    let report = convert_motion_module(&ckpt, &out, &options).unwrap();
    assert_eq!(report.config.block_out_channels, vec![16, 32]);
    assert_eq!(report.config.motion_layers_per_block, PerBlock::One(1));
    assert!(report.config.use_motion_mid_block);
    let config: MotionAdapterConfig = diff_format::load_config(out.join("config.json")).unwrap();
    assert_eq!(config.block_out_channels, vec![16, 32]);
    assert_eq!(config.extra["_class_name"], "MotionAdapter");

    let got_bytes = std::fs::read(out.join("diffusion_pytorch_model.safetensors")).unwrap();
    let got = SafeTensors::deserialize(&got_bytes).unwrap();
    assert_eq!(got.len(), st.len());
    for (name, want) in st.tensors() {
        let g = got
            .tensor(&name)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(
            g.dtype(),
            safetensors::Dtype::F32,
            "{name}: saved in float32"
        );
        assert_eq!(g.shape(), want.shape(), "{name}");
        let (a, b) = (
            as_f32(g.data(), g.dtype()),
            as_f32(want.data(), want.dtype()),
        );
        let tol = if name.ends_with(".pe") { 1e-3 } else { 0.0 };
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max <= tol, "{name}: max abs {max}");
    }
}

#[test]
fn a_checkpoint_without_motion_modules_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("x.safetensors");
    let data = [0u8; 4];
    let view = TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    std::fs::write(
        &ckpt,
        safetensors::serialize([("model.w", view)], None).unwrap(),
    )
    .unwrap();
    let err = convert_motion_module(
        &ckpt,
        &dir.path().join("out"),
        &MotionModuleOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("motion modules"), "{err}");
    assert!(!dir.path().join("out").exists());
}
