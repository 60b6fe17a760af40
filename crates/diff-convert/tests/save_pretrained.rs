//! Re-saving a pipeline against what diffusers 0.42.1 / transformers 5.23 saved for the same
//! pipeline (`tests/fixtures/50-convert/gen_save.py`). Every comparison is exact: file lists,
//! config bytes and weight-file bytes must be identical.

use diff_convert::save::{SaveOptions, save_pipeline};
use diff_convert::{SaveDtype, cast};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::tree;

fn fixtures() -> PathBuf {
    common::fixture_path("50-convert/save")
}

/// Compares our output with diffusers'. transformers 5.23 adds its loading state
/// (`"is_local": true, "local_files_only": true`) to `tokenizer_config.json` when it re-saves a
/// tokenizer loaded from a folder; we copy tokenizer files unchanged, so that one file is
/// compared with the source instead.
fn assert_same_tree(ours: &Path, theirs: &Path) {
    assert_same_tree_from(ours, theirs, &fixtures().join("src"));
}

fn assert_same_tree_from(ours: &Path, theirs: &Path, source: &Path) {
    let a = tree(ours);
    let b = tree(theirs);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "file lists differ"
    );
    let src = tree(source);
    for (name, bytes) in &a {
        let expected = if name == "tokenizer/tokenizer_config.json" {
            &src[name]
        } else {
            &b[name]
        };
        assert!(
            bytes == expected,
            "{name} differs (exact comparison):\nours:\n{}\ntheirs:\n{}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(600)]),
            String::from_utf8_lossy(&expected[..expected.len().min(600)])
        );
    }
}

fn options() -> SaveOptions {
    SaveOptions {
        name_or_path: Some("src".into()),
        ..SaveOptions::default()
    }
}

#[test]
fn plain_save_matches_diffusers_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("plain");
    save_pipeline(&fixtures().join("src"), &out, &options()).unwrap();
    assert_same_tree(&out, &fixtures().join("plain"));
}

#[test]
fn fp16_variant_is_written_beside_the_full_weights_without_touching_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("variant");
    save_pipeline(&fixtures().join("src"), &out, &options()).unwrap();
    let before = tree(&out);
    let fp16 = SaveOptions {
        variant: Some("fp16".into()),
        dtype: Some(SaveDtype::F16),
        ..options()
    };
    save_pipeline(&fixtures().join("src"), &out, &fp16).unwrap();
    let after = tree(&out);
    for (name, bytes) in &before {
        if name.ends_with(".safetensors") {
            assert_eq!(
                &after[name], bytes,
                "{name} was modified by the variant save"
            );
        }
    }
    assert_same_tree(&out, &fixtures().join("variant"));
}

#[test]
fn sharded_save_matches_diffusers_shards_and_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sharded");
    let opts = options().with_max_shard_size("20KB").unwrap();
    save_pipeline(&fixtures().join("src"), &out, &opts).unwrap();
    assert_same_tree(&out, &fixtures().join("sharded"));
}

#[test]
fn resharding_a_sharded_folder_reproduces_it() {
    // Reading shards back loses the state-dict order; `diff_convert::order` restores it.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("again");
    let opts = SaveOptions {
        name_or_path: Some("src".into()),
        ..SaveOptions::default()
    }
    .with_max_shard_size("20KB")
    .unwrap();
    save_pipeline(&fixtures().join("sharded"), &out, &opts).unwrap();
    assert_same_tree_from(
        &out,
        &fixtures().join("sharded"),
        &fixtures().join("sharded"),
    );
}

#[test]
fn unsharded_save_over_sharded_folder_leaves_no_stale_index() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let sharded = options().with_max_shard_size("20KB").unwrap();
    save_pipeline(&fixtures().join("src"), &out, &sharded).unwrap();
    assert!(
        out.join("unet/diffusion_pytorch_model.safetensors.index.json")
            .is_file()
    );
    save_pipeline(&fixtures().join("src"), &out, &options()).unwrap();
    // diffusers would leave the index behind, pointing at deleted shards; we remove it.
    assert_same_tree(&out, &fixtures().join("plain"));
}

#[test]
fn failed_save_leaves_previous_folder_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    save_pipeline(&fixtures().join("src"), &out, &options()).unwrap();
    let before = tree(&out);
    // A source whose VAE weights are corrupt: the save fails after other components were
    // already written to the temporary folder.
    let bad = tmp.path().join("bad");
    for (name, bytes) in tree(&fixtures().join("src")) {
        let p = bad.join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes = if name == "vae/diffusion_pytorch_model.safetensors" {
            bytes[..100].to_vec()
        } else {
            bytes
        };
        std::fs::write(p, bytes).unwrap();
    }
    let err =
        save_pipeline(&bad, &out, &options().with_max_shard_size("20KB").unwrap()).unwrap_err();
    assert!(err.to_string().contains("vae"), "{err}");
    assert_eq!(tree(&out), before, "the previous folder changed");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
}

#[test]
fn invalid_variant_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SaveOptions {
        variant: Some("../x".into()),
        ..options()
    };
    let err = save_pipeline(&fixtures().join("src"), &tmp.path().join("o"), &opts).unwrap_err();
    assert!(matches!(err, diff_convert::ConvertError::InvalidVariant(_)));
}

#[test]
fn state_dict_order_matches_torch() {
    let order: BTreeMap<String, Vec<String>> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("order.json")).unwrap())
            .unwrap();
    for (model, keys) in order {
        let mut items: Vec<(String, ())> = keys.iter().map(|k| (k.clone(), ())).collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        diff_convert::order::sort_state_dict_keys(&mut items);
        let got: Vec<String> = items.into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, keys, "{model}: state_dict order");
    }
}

#[test]
fn dtype_cast_matches_torch_bit_for_bit() {
    let (t, _) =
        diff_convert::tensors::read_safetensors(&fixtures().join("cast.safetensors")).unwrap();
    for (src, to, expected) in [
        ("f32", SaveDtype::F16, "f16"),
        ("f32", SaveDtype::BF16, "bf16"),
        ("f64", SaveDtype::F16, "f64_to_f16"),
        ("f64", SaveDtype::BF16, "f64_to_bf16"),
        ("f16", SaveDtype::F32, "f32_from_f16"),
    ] {
        if expected == "f32_from_f16" {
            // Widening is exact: f16 -> f32 -> f16 must give the same bits back.
            let wide = cast::cast(src, t[src].clone(), to).unwrap();
            let back = cast::cast(src, wide, SaveDtype::F16).unwrap();
            assert_eq!(back.data, t[src].data);
            continue;
        }
        let got = cast::cast(src, t[src].clone(), to).unwrap();
        assert_eq!(got.dtype, t[expected].dtype);
        assert_eq!(got.data, t[expected].data, "{src} -> {to:?} (exact)");
    }
}

#[test]
fn validate_accepts_faithful_saves_and_reports_a_changed_tensor() {
    use diff_convert::validate::validate_pipeline;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("variant");
    let fp16 = SaveOptions {
        variant: Some("fp16".into()),
        dtype: Some(SaveDtype::F16),
        ..options()
    };
    save_pipeline(&fixtures().join("src"), &out, &fp16).unwrap();
    let reports = validate_pipeline(&fixtures().join("src"), &out, Some("fp16")).unwrap();
    assert!(reports.iter().all(|r| r.ok()), "{reports:#?}");
    let unet = reports.iter().find(|r| r.name == "unet").unwrap();
    assert_eq!((unet.tensors, unet.cast), (208, 208));
    // diffusers' own saves validate too (plain: exact).
    let plain =
        validate_pipeline(&fixtures().join("src"), &fixtures().join("plain"), None).unwrap();
    assert!(plain.iter().all(|r| r.ok()), "{plain:#?}");
    // One changed value is reported, naming the tensor.
    let copy = tmp.path().join("copy");
    save_pipeline(&fixtures().join("src"), &copy, &options()).unwrap();
    let (mut t, _) = diff_convert::tensors::read_safetensors(
        &copy.join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    t.get_mut("quant_conv.bias").unwrap().data[0] ^= 1;
    let views: Vec<_> = t
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        copy.join("vae/diffusion_pytorch_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let reports = validate_pipeline(&fixtures().join("src"), &copy, None).unwrap();
    let vae = reports.iter().find(|r| r.name == "vae").unwrap();
    assert_eq!(vae.problems.len(), 1, "{vae:#?}");
    assert!(vae.problems[0].contains("quant_conv.bias"), "{vae:#?}");
}

#[test]
fn old_configs_with_few_keys_are_filled_like_diffusers() {
    for name in [
        "unet",
        "vae",
        "scheduler_pndm",
        "scheduler_ddim",
        "scheduler_euler",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let component = format!("minimal_src/{name}");
        diff_convert::save_component(
            &fixtures().join(&component),
            tmp.path(),
            &SaveOptions::default(),
            Some(&component),
        )
        .unwrap();
        let file = if name.starts_with("scheduler") {
            "scheduler_config.json"
        } else {
            "config.json"
        };
        let mut ours = std::fs::read_to_string(tmp.path().join(file)).unwrap();
        if name == "unet" {
            // FIXME(FORMAT): diff_format's UNet2DConditionConfig fills `mid_block_scale_factor`
            // from an f64 field, writing `1.0`; diffusers writes its Python default, the int `1`.
            // This asserts today's behaviour so the test fails (and this block can go) once the
            // typed config keeps Python's int default.
            assert!(ours.contains("\"mid_block_scale_factor\": 1.0,"), "{ours}");
            ours = ours.replace(
                "\"mid_block_scale_factor\": 1.0,",
                "\"mid_block_scale_factor\": 1,",
            );
        }
        let theirs =
            std::fs::read_to_string(fixtures().join("minimal_plain").join(name).join(file))
                .unwrap();
        assert_eq!(ours, theirs, "{name}: exact bytes");
    }
}

#[test]
fn pickle_bin_weights_resave_as_the_same_safetensors() {
    // `bin_src` holds the same tensors as `src`, as torch.save pickles (read by the restricted
    // reader); the re-save must equal diffusers' re-save of `src` byte for byte.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("from_bin");
    save_pipeline(&fixtures().join("bin_src"), &out, &options()).unwrap();
    assert_same_tree(&out, &fixtures().join("plain"));
}
