//! `from_single_file` parity for SD 2.x inpainting, SD 2.x epsilon (512-base), SDXL inpainting,
//! EMA checkpoints, fp16 checkpoints, separate VAEs and Hub-style config folders, against
//! diffusers 0.42.1 (`tests/fixtures/51-single-file/generate.py`): the same file list, the same
//! config bytes and the same weight-file bytes (so tensor names, shapes, dtypes and values are
//! exact; tolerance: none). Also family detection against diffusers'
//! `infer_diffusers_model_type` / `fetch_diffusers_config`, and the failure cases (typed error,
//! nothing written, a previous output left intact).

use diff_convert::single_file::{SingleFileOptions, convert_single_file_with, detect_model_type};
use diff_convert::tensors::RawTensor;
use diff_convert::{Checkpoint, ConvertError, SaveDtype, SaveOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::{copy_tree, tree};

fn fixtures() -> PathBuf {
    common::fixture_path("51-single-file")
}

/// The options `case.json` records for one expected folder.
fn options_for(case: &str, expected: &str) -> (Vec<String>, SingleFileOptions) {
    let dir = fixtures().join(case);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let spec = &info[expected];
    let checkpoints = spec["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let mut options = SingleFileOptions {
        extract_ema: spec["extract_ema"].as_bool().unwrap_or(false),
        ..SingleFileOptions::default()
    };
    if let Some(d) = spec["dtype"].as_str() {
        options.save.dtype = Some(SaveDtype::parse(d).unwrap());
    }
    if let Some(c) = spec["components"].as_object() {
        for (name, file) in c {
            options
                .components
                .insert(name.clone(), dir.join(file.as_str().unwrap()));
        }
    }
    (checkpoints, options)
}

/// Converts every checkpoint of `case` listed for `expected` and compares the folders byte for
/// byte.
fn check(case: &str, expected: &str) {
    let (checkpoints, options) = options_for(case, expected);
    check_with(case, expected, &checkpoints, &options);
}

fn check_with(case: &str, expected: &str, checkpoints: &[String], options: &SingleFileOptions) {
    let dir = fixtures().join(case);
    let theirs = tree(&dir.join(expected));
    let config = tree(&dir.join("config"));
    for checkpoint in checkpoints {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        convert_single_file_with(&dir.join(checkpoint), &dir.join("config"), &out, options)
            .unwrap_or_else(|e| panic!("{case}/{checkpoint}: {e}"));
        let ours = tree(&out);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{case}/{checkpoint}: file list"
        );
        for (name, bytes) in &ours {
            // transformers 5.23 adds its loading state (`is_local`, `local_files_only`) to a
            // re-saved tokenizer_config.json; we copy the config folder's file unchanged.
            let want = if name.ends_with("tokenizer_config.json") {
                &config[name]
            } else {
                &theirs[name]
            };
            assert!(
                bytes == want,
                "{case}/{checkpoint}: {name} differs from diffusers' from_single_file + save_pretrained ({expected})"
            );
        }
    }
}

#[test]
fn sd2_inpainting_ckpt_and_safetensors_convert_like_diffusers() {
    check("sd2_inpaint", "expected");
}

#[test]
fn sd2_512_base_epsilon_ckpt_and_safetensors_convert_like_diffusers() {
    check("sd2_base", "expected");
}

#[test]
fn sdxl_inpainting_ckpt_and_safetensors_convert_like_diffusers() {
    check("sdxl_inpaint", "expected");
}

#[test]
fn ema_checkpoint_converts_its_non_ema_weights_by_default_like_diffusers() {
    check("sd1_ema", "expected");
}

#[test]
fn extract_ema_takes_the_ema_unet_like_diffusers() {
    check("sd1_ema", "expected_ema");
}

#[test]
fn fp16_checkpoint_with_hub_style_model_index_converts_to_float32_like_diffusers() {
    check("sd1_fp16", "expected");
}

#[test]
fn fp16_checkpoint_with_f16_dtype_matches_torch_dtype_float16() {
    check("sd1_fp16", "expected_fp16");
}

#[test]
fn another_pipeline_class_changes_only_model_index_like_diffusers() {
    let dir = fixtures().join("sd1_fp16");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let options = SingleFileOptions {
        pipeline_class: Some("StableDiffusionImg2ImgPipeline".into()),
        ..SingleFileOptions::default()
    };
    convert_single_file_with(
        &dir.join("model.safetensors"),
        &dir.join("config"),
        &out,
        &options,
    )
    .unwrap();
    assert!(
        std::fs::read(out.join("model_index.json")).unwrap()
            == std::fs::read(dir.join("img2img_model_index.json")).unwrap(),
        "model_index.json differs from StableDiffusionImg2ImgPipeline.from_single_file's"
    );
    let ours = tree(&out);
    let theirs = tree(&dir.join("expected"));
    for (name, bytes) in &theirs {
        if name != "model_index.json" && !name.ends_with("tokenizer_config.json") {
            assert!(&ours[name] == bytes, "{name} (exact)");
        }
    }
}

#[test]
fn separate_original_vae_file_fills_in_the_missing_vae_like_diffusers() {
    check("sd1_vae", "expected");
}

#[test]
fn separate_vae_as_a_diffusers_folder_gives_the_same_pipeline() {
    // diffusers' `vae=AutoencoderKL.from_pretrained(folder)`: the folder used is the VAE that
    // diffusers itself saved for this case.
    let dir = fixtures().join("sd1_vae");
    let (checkpoints, mut options) = options_for("sd1_vae", "expected");
    options
        .components
        .insert("vae".into(), dir.join("expected/vae"));
    check_with("sd1_vae", "expected", &checkpoints, &options);
}

#[test]
fn checkpoint_without_vae_is_a_typed_error_and_writes_nothing() {
    let dir = fixtures().join("sd1_vae");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let err = convert_single_file_with(
        &dir.join("model.safetensors"),
        &dir.join("config"),
        &out,
        &SingleFileOptions::default(),
    )
    .unwrap_err();
    match &err {
        ConvertError::MissingKey {
            key, needed_for, ..
        } => {
            assert!(key.contains("first_stage_model."), "{err}");
            assert!(needed_for.contains("AutoencoderKL"), "{err}");
            assert!(needed_for.contains("--vae"), "{err}");
        }
        other => panic!("expected MissingKey, got {other}"),
    }
    assert!(
        !out.exists(),
        "a failed conversion must not leave an output folder"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no temporary folder may be left behind"
    );
}

/// A checkpoint holding only the named tensors with the given shapes (f16 zeros).
fn synthetic(keys: &serde_json::Map<String, serde_json::Value>) -> Checkpoint {
    Checkpoint {
        path: PathBuf::from("synthetic.safetensors"),
        tensors: keys
            .iter()
            .map(|(k, s)| {
                let shape: Vec<usize> = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let n: usize = shape.iter().product();
                let t = RawTensor::new(safetensors::Dtype::F16, shape, vec![0; n * 2]).unwrap();
                (k.clone(), t)
            })
            .collect(),
    }
}

#[test]
fn family_detection_matches_diffusers_infer_diffusers_model_type() {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("detect.json")).unwrap())
            .unwrap();
    let supported = [
        "v1",
        "v2",
        "inpainting",
        "inpainting_v2",
        "xl_base",
        "xl_refiner",
        "xl_inpaint",
    ];
    let mut checked = 0;
    for row in &rows {
        let name = row["name"].as_str().unwrap();
        let theirs = row["model_type"].as_str().unwrap();
        let ckpt = synthetic(row["keys"].as_object().unwrap());
        // Same order of checks as diffusers: the raw inference agrees for the SD families.
        let inferred = diff_convert::infer_model_type(&ckpt);
        match detect_model_type(&ckpt) {
            Ok(ours) => {
                assert_eq!(ours.diffusers_name(), theirs, "{name}");
                assert_eq!(inferred, ours, "{name}");
                assert_eq!(
                    ours.default_config_repo(),
                    row["default_config"].as_str().unwrap(),
                    "{name}: default config repo"
                );
            }
            Err(ConvertError::UnknownArchitecture { reason, .. }) => {
                if supported.contains(&theirs) {
                    // diffusers falls back to SD 1.x for anything it cannot place; we refuse a
                    // checkpoint without a Stable Diffusion UNet and name the keys looked for.
                    assert_eq!(theirs, "v1", "{name}");
                    assert!(
                        reason.contains("model.diffusion_model.input_blocks.0.0.weight")
                            && reason.contains("conditioner.embedders.1.model"),
                        "{name}: {reason}"
                    );
                } else {
                    let family = reason
                        .split('`')
                        .nth(3)
                        .unwrap_or_else(|| panic!("{name}: {reason}"));
                    assert!(
                        theirs.starts_with(family),
                        "{name}: diffusers says {theirs}, we say {family}"
                    );
                }
            }
            Err(other) => panic!("{name}: unexpected error {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 15, "every detection case is checked");
}

#[test]
fn fixture_checkpoints_are_detected_as_diffusers_detects_them() {
    // The tiny models are too narrow for the 1024-wide SD 2.x test and too shallow for the
    // SDXL key (`resblocks.9`), so diffusers places them by conv_in alone; so must we.
    for case in [
        "sd2_inpaint",
        "sd2_base",
        "sdxl_inpaint",
        "sd1_ema",
        "sd1_fp16",
        "sd1_vae",
    ] {
        let dir = fixtures().join(case);
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        for checkpoint in info["expected"]["checkpoints"].as_array().unwrap() {
            let ckpt = Checkpoint::open(&dir.join(checkpoint.as_str().unwrap())).unwrap();
            let family = detect_model_type(&ckpt).unwrap();
            assert_eq!(family.diffusers_name(), info["model_type"], "{case}");
            assert_eq!(
                family.default_config_repo(),
                info["default_config"],
                "{case}"
            );
        }
    }
}

#[test]
fn sd1_checkpoint_with_sdxl_config_is_a_shape_error_naming_the_tensor() {
    // An SD 1.x checkpoint converted with an SDXL config: its one CLIP text encoder is what
    // diffusers would load into `text_encoder_2` too (`is_clip_model`), and the widths differ
    // (16 vs 24 here; 768 vs 1280 in real models). diffusers fails with a size mismatch; we
    // name the tensor and the config key, and write nothing.
    let tmp = tempfile::tempdir().unwrap();
    let err = convert_single_file_with(
        &fixtures().join("sd1_ema/model.ckpt"),
        &fixtures().join("sdxl_inpaint/config"),
        &tmp.path().join("out"),
        &SingleFileOptions::default(),
    )
    .unwrap_err();
    match &err {
        ConvertError::BadShape {
            key, got, expected, ..
        } => {
            assert_eq!(key, "text_model.embeddings.token_embedding.weight", "{err}");
            assert_eq!(got.get(1), Some(&16), "{err}");
            assert!(
                expected.contains("hidden_size") && expected.contains("24"),
                "{err}"
            );
        }
        other => panic!("expected BadShape, got {other}"),
    }
    assert!(!tmp.path().join("out").exists());
}

fn write_safetensors(path: &Path, tensors: &BTreeMap<String, RawTensor>) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn extract_ema_with_a_missing_ema_copy_names_the_key() {
    let dir = fixtures().join("sd1_ema");
    let ckpt = Checkpoint::open(&dir.join("model.ckpt")).unwrap();
    let mut tensors = ckpt.tensors.clone();
    // Remove the EMA copy of conv_in (CompVis names: no dots after `model_ema.`).
    let conv_in_ema = "model_ema.diffusion_modelinput_blocks00weight";
    assert!(tensors.remove(conv_in_ema).is_some(), "{conv_in_ema}");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ema.safetensors");
    write_safetensors(&file, &tensors);
    let options = SingleFileOptions {
        extract_ema: true,
        ..SingleFileOptions::default()
    };
    let err = convert_single_file_with(
        &file,
        &dir.join("config"),
        &tmp.path().join("out"),
        &options,
    )
    .unwrap_err();
    match &err {
        ConvertError::MissingKey { key, .. } => assert_eq!(key, conv_in_ema),
        other => panic!("expected MissingKey, got {other}"),
    }
    assert!(!tmp.path().join("out").exists());
}

fn previous_output(root: &Path) -> PathBuf {
    let out = root.join("out");
    std::fs::create_dir_all(out.join("unet")).unwrap();
    std::fs::write(out.join("unet/config.json"), b"previous").unwrap();
    out
}

#[test]
fn truncated_safetensors_is_a_clear_error_and_keeps_the_previous_output() {
    let dir = fixtures().join("sd2_inpaint");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("truncated.safetensors");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let out = previous_output(tmp.path());
    let err = convert_single_file_with(
        &file,
        &dir.join("config"),
        &out,
        &SingleFileOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConvertError::BadWeights { .. }), "{err}");
    assert!(err.to_string().contains("truncated.safetensors"), "{err}");
    assert_eq!(
        std::fs::read(out.join("unet/config.json")).unwrap(),
        b"previous"
    );
    assert_eq!(tree(&out).len(), 1, "the previous output is untouched");
}

#[test]
fn truncated_ckpt_is_a_clear_error_and_keeps_the_previous_output() {
    let dir = fixtures().join("sd2_inpaint");
    let bytes = std::fs::read(dir.join("model.ckpt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("truncated.ckpt");
    std::fs::write(&file, &bytes[..bytes.len() * 3 / 4]).unwrap();
    let out = previous_output(tmp.path());
    let err = convert_single_file_with(
        &file,
        &dir.join("config"),
        &out,
        &SingleFileOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConvertError::Pickle(_)), "{err}");
    assert_eq!(
        std::fs::read(out.join("unet/config.json")).unwrap(),
        b"previous"
    );
}

#[test]
fn replacement_for_a_component_the_pipeline_lacks_is_refused() {
    let dir = fixtures().join("sd1_vae");
    let tmp = tempfile::tempdir().unwrap();
    let mut options = SingleFileOptions::default();
    options
        .components
        .insert("vae_2".into(), dir.join("vae.safetensors"));
    let err = convert_single_file_with(
        &dir.join("model.safetensors"),
        &dir.join("config"),
        &tmp.path().join("out"),
        &options,
    )
    .unwrap_err();
    assert!(err.to_string().contains("vae_2"), "{err}");
}

#[test]
fn converted_output_saves_as_fp16_variant_shards() {
    let dir = fixtures().join("sdxl_inpaint");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let options = SingleFileOptions {
        save: SaveOptions {
            variant: Some("fp16".into()),
            dtype: Some(SaveDtype::F16),
            ..SaveOptions::default()
        }
        .with_max_shard_size("20KB")
        .unwrap(),
        ..SingleFileOptions::default()
    };
    convert_single_file_with(
        &dir.join("model.safetensors"),
        &dir.join("config"),
        &out,
        &options,
    )
    .unwrap();
    for (component, index) in [
        (
            "unet",
            "diffusion_pytorch_model.safetensors.index.fp16.json",
        ),
        ("text_encoder_2", "model.safetensors.index.fp16.json"),
    ] {
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(component).join(index)).unwrap(),
        )
        .unwrap();
        let shards: std::collections::BTreeSet<&str> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(shards.len() > 1, "{component}: {shards:?}");
        for shard in shards {
            assert!(shard.contains(".fp16-0000"), "{shard}");
            let (tensors, _) =
                diff_convert::tensors::read_safetensors(&out.join(component).join(shard)).unwrap();
            assert!(
                tensors
                    .values()
                    .all(|t| !t.is_float() || t.dtype == safetensors::Dtype::F16),
                "{component}/{shard}: every float tensor is f16"
            );
        }
    }
}

#[test]
fn model_component_with_neither_checkpoint_nor_folder_weights_is_an_error() {
    // An image encoder listed in model_index.json is no single-file component: diffusers loads
    // it from the config folder and raises SingleFileComponentError when the folder has no
    // weights (`_is_model_weights_in_cached_folder`). We refuse too instead of saving a
    // config without weights.
    let dir = fixtures().join("sd1_ema");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    copy_tree(&dir.join("config"), &config);
    let index_path = config.join("model_index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["image_encoder"] = serde_json::json!(["transformers", "CLIPVisionModelWithProjection"]);
    std::fs::write(&index_path, index.to_string()).unwrap();
    std::fs::create_dir_all(config.join("image_encoder")).unwrap();
    std::fs::write(config.join("image_encoder/config.json"), "{}").unwrap();
    let out = tmp.path().join("out");
    let err = convert_single_file_with(
        &dir.join("model.ckpt"),
        &config,
        &out,
        &SingleFileOptions::default(),
    )
    .unwrap_err();
    match &err {
        ConvertError::NoWeights { folder, looked_for } => {
            assert!(folder.ends_with("image_encoder"), "{err}");
            assert!(
                looked_for.contains("CLIPVisionModelWithProjection"),
                "{err}"
            );
        }
        other => panic!("expected NoWeights, got {other}"),
    }
    assert!(!out.exists());
}
