//! Re-saving pipelines whose transformers components carry configs written by old transformers
//! releases (4.22 / 4.25 / 4.33, `tests/fixtures/53-save-transformers/make_old_configs.py`)
//! against what diffusers 0.42.1 + transformers 5.23 wrote for them
//! (`tests/fixtures/53-save-transformers/generate.py`), including the 4.22 era's SD 1.x-shaped
//! `model_index.json`, scheduler and UNet configs that StableDiffusionPipeline's `__init__`
//! rewrites. Every comparison is exact: file lists, config bytes and weight-file bytes.

use diff_convert::SaveDtype;
use diff_convert::save::{SaveOptions, save_component_as, save_pipeline};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::{copy_tree, tree};

const ERAS: [&str; 3] = ["4.22.2", "4.25.1", "4.33.3"];
/// The components the fixture keeps of diffusers' outputs, with `model_index.json` and the
/// UNet's `config.json` (the diffusers components' weights are covered by 50-convert).
const KEPT: [&str; 5] = [
    "text_encoder",
    "safety_checker",
    "image_encoder",
    "feature_extractor",
    "scheduler",
];

fn fixtures() -> PathBuf {
    common::fixture_path("53-save-transformers")
}

/// The era's source pipeline: the shared diffusers components plus the era's own files.
fn assemble(root: &Path, era: &str) -> PathBuf {
    let src = root.join("src").join(era);
    copy_tree(&fixtures().join("base"), &src);
    copy_tree(&fixtures().join("src").join(era), &src);
    src
}

/// Our output restricted to what the fixture keeps, compared byte for byte with diffusers'.
fn assert_same_kept(ours: &Path, theirs: &Path) {
    let a: BTreeMap<String, Vec<u8>> = tree(ours)
        .into_iter()
        .filter(|(n, _)| {
            n == "model_index.json"
                || n == "unet/config.json"
                || KEPT.iter().any(|k| n.starts_with(&format!("{k}/")))
        })
        .collect();
    // `text_encoder_2` has no slot in a StableDiffusionPipeline: it is saved on its own
    // (`text_encoder_2_with_projection_resaves_like_transformers_5_23`).
    let b: BTreeMap<String, Vec<u8>> = tree(theirs)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("text_encoder_2/"))
        .collect();
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "file lists differ"
    );
    for (name, bytes) in &a {
        let expected = &b[name];
        assert!(
            bytes == expected,
            "{} differs (exact comparison):\nours:\n{}\ntheirs:\n{}",
            name,
            String::from_utf8_lossy(&bytes[..bytes.len().min(3000)]),
            String::from_utf8_lossy(&expected[..expected.len().min(3000)])
        );
    }
}

fn options(era: &str) -> SaveOptions {
    SaveOptions {
        name_or_path: Some(format!("src/{era}")),
        ..SaveOptions::default()
    }
}

fn fp16(era: &str) -> SaveOptions {
    SaveOptions {
        variant: Some("fp16".into()),
        dtype: Some(SaveDtype::F16),
        ..options(era)
    }
}

#[test]
fn old_transformers_configs_resave_like_transformers_5_23() {
    for era in ERAS {
        let tmp = tempfile::tempdir().unwrap();
        let src = assemble(tmp.path(), era);
        let out = tmp.path().join("plain");
        save_pipeline(&src, &out, &options(era)).unwrap();
        assert_same_kept(&out, &fixtures().join("plain").join(era));
    }
}

#[test]
fn fp16_variant_of_old_configs_matches_diffusers_byte_for_byte() {
    for era in ERAS {
        let tmp = tempfile::tempdir().unwrap();
        let src = assemble(tmp.path(), era);
        let out = tmp.path().join("variant");
        save_pipeline(&src, &out, &options(era)).unwrap();
        save_pipeline(&src, &out, &fp16(era)).unwrap();
        assert_same_kept(&out, &fixtures().join("variant").join(era));
    }
}

#[test]
fn text_encoder_2_with_projection_resaves_like_transformers_5_23() {
    let src = fixtures().join("src/4.33.3/text_encoder_2");
    let class = Some("CLIPTextModelWithProjection");
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    save_component_as(&src, &plain, &SaveOptions::default(), None, class).unwrap();
    assert_eq!(
        tree(&plain),
        tree(&fixtures().join("plain/4.33.3/text_encoder_2")),
        "plain save (exact bytes)"
    );
    let variant = tmp.path().join("variant");
    std::fs::create_dir_all(&variant).unwrap();
    save_component_as(&src, &variant, &SaveOptions::default(), None, class).unwrap();
    let half = SaveOptions {
        variant: Some("fp16".into()),
        dtype: Some(SaveDtype::F16),
        ..SaveOptions::default()
    };
    save_component_as(&src, &variant, &half, None, class).unwrap();
    assert_eq!(
        tree(&variant),
        tree(&fixtures().join("variant/4.33.3/text_encoder_2")),
        "fp16 variant beside the plain save (exact bytes)"
    );
}

#[test]
fn config_dtype_decides_plain_weights_dtype_as_transformers_auto_does() {
    // The 4.25 text encoder's config says "torch_dtype": "float16" over float32 weights:
    // transformers 5 loads (and diffusers re-saves) it in float16 when no dtype is asked for.
    let tmp = tempfile::tempdir().unwrap();
    let src = assemble(tmp.path(), "4.25.1");
    let out = tmp.path().join("plain");
    save_pipeline(&src, &out, &options("4.25.1")).unwrap();
    let (before, _) =
        diff_convert::tensors::read_safetensors(&src.join("text_encoder/model.safetensors"))
            .unwrap();
    let (after, _) =
        diff_convert::tensors::read_safetensors(&out.join("text_encoder/model.safetensors"))
            .unwrap();
    assert!(before.values().all(|t| t.dtype == safetensors::Dtype::F32));
    assert!(after.values().all(|t| t.dtype == safetensors::Dtype::F16));
    // An explicit dtype wins over the config's.
    let f32_opts = SaveOptions {
        dtype: Some(SaveDtype::F32),
        ..options("4.25.1")
    };
    let out32 = tmp.path().join("f32");
    save_pipeline(&src, &out32, &f32_opts).unwrap();
    let config = std::fs::read_to_string(out32.join("text_encoder/config.json")).unwrap();
    assert!(config.contains("\"dtype\": \"float32\""), "{config}");
    assert_eq!(
        std::fs::read(out32.join("text_encoder/model.safetensors")).unwrap(),
        std::fs::read(src.join("text_encoder/model.safetensors")).unwrap(),
        "float32 weights re-saved as float32 are unchanged (exact bytes)"
    );
}

#[test]
fn resaving_diffusers_own_output_changes_nothing() {
    // transformers 5.23's configs are a fixed point of the re-serialisation.
    for era in ERAS {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src").join(era);
        copy_tree(&fixtures().join("base"), &src);
        copy_tree(&fixtures().join("plain").join(era), &src);
        let out = tmp.path().join("again");
        save_pipeline(&src, &out, &options(era)).unwrap();
        assert_same_kept(&out, &fixtures().join("plain").join(era));
    }
}

#[test]
fn corrupt_clip_config_is_a_clear_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = assemble(tmp.path(), "4.22.2");
    std::fs::write(
        src.join("feature_extractor/preprocessor_config.json"),
        r#"{"feature_extractor_type": "CLIPFeatureExtractor", "size": "big"}"#,
    )
    .unwrap();
    let err = save_pipeline(&src, &tmp.path().join("out"), &options("4.22.2")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("preprocessor_config.json") && msg.contains("size"),
        "{msg}"
    );
    assert!(!tmp.path().join("out").exists(), "no half-written output");
}

/// transformers' name of a save dtype.
fn dtype_name(d: SaveDtype) -> &'static str {
    match d {
        SaveDtype::F32 => "float32",
        SaveDtype::F16 => "float16",
        SaveDtype::BF16 => "bfloat16",
    }
}

fn read_object(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap() {
        serde_json::Value::Object(m) => m,
        other => panic!("{}: not an object: {other}", path.display()),
    }
}

#[test]
fn config_cases_resave_like_transformers_5_23() {
    // Config-only cases: real-size configs written by transformers 4.22 / 4.25 / 4.33 and edge
    // cases, against transformers 5.23's re-save (exact bytes). The plain case has no weights,
    // so the load dtype is the config's, else float32 (generate.py does the same).
    use diff_convert::transformers_config as tc;
    let mut model_cases = 0;
    let mut processor_cases = 0;
    let root = fixtures().join("configs");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    for case in cases {
        let input = read_object(&case.join("in.json"));
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        if case.join("architecture.txt").is_file() {
            let architecture = std::fs::read_to_string(case.join("architecture.txt")).unwrap();
            let architecture = architecture.trim();
            assert!(tc::is_supported_model_config(&input), "{name}");
            let plain_dtype = tc::load_dtype(&input)
                .and_then(|d| SaveDtype::parse(&d))
                .map_or("float32", dtype_name);
            for (file, dtype) in [("plain.json", plain_dtype), ("fp16.json", "float16")] {
                let out = tc::resave_model_config(
                    input.clone(),
                    Some(architecture),
                    Some(dtype),
                    &case.join("in.json"),
                )
                .unwrap();
                let ours = diff_format::json::to_config_string(&serde_json::Value::Object(out));
                let theirs = std::fs::read_to_string(case.join(file)).unwrap();
                assert_eq!(ours, theirs, "{name}/{file} (exact bytes)");
            }
            model_cases += 1;
        } else {
            let out = tc::resave_image_processor_config(input, &case.join("in.json")).unwrap();
            let ours = diff_format::json::to_config_string(&serde_json::Value::Object(out));
            let theirs = std::fs::read_to_string(case.join("out.json")).unwrap();
            assert_eq!(ours, theirs, "{name}/out.json (exact bytes)");
            processor_cases += 1;
        }
    }
    assert_eq!((model_cases, processor_cases), (12, 5));
}

#[test]
fn validate_accepts_resaved_old_configs_and_their_fp16_variant() {
    use diff_convert::validate::validate_pipeline;
    for era in ERAS {
        let tmp = tempfile::tempdir().unwrap();
        let src = assemble(tmp.path(), era);
        let out = tmp.path().join("variant");
        save_pipeline(&src, &out, &options(era)).unwrap();
        save_pipeline(&src, &out, &fp16(era)).unwrap();
        for variant in [None, Some("fp16")] {
            let reports = validate_pipeline(&src, &out, variant).unwrap();
            assert!(
                reports.iter().all(|r| r.ok()),
                "{era} {variant:?}: {reports:#?}"
            );
        }
    }
}
