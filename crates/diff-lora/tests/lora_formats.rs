//! Replays `tests/fixtures/25-lora-formats`: for each LoRA file, the layers that real diffusers
//! 0.42.1 with peft wraps, with their rank, alpha, scaling and A / B weights, must be what
//! [`diff_lora::plan`] plans, in the same order; the warnings diffusers logged must be among ours.

use std::path::{Path, PathBuf};

use diff_lora::{Family, ModelTable, ModuleShape, plan, read_state_dict, resolve_weight_file};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/25-lora-formats")
}

fn tables(expected: &Value) -> Vec<ModelTable> {
    let models = expected["models"].as_object().expect("models");
    ["unet", "text_encoder", "text_encoder_2"]
        .iter()
        .filter_map(|c| models.get(*c).map(|m| (c, m)))
        .map(|(c, m)| ModelTable {
            component: c.to_string(),
            class: m["class"].as_str().unwrap().to_string(),
            has_text_model: m["has_text_model"].as_bool().unwrap(),
            modules: m["modules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| ModuleShape {
                    name: v[0].as_str().unwrap().to_string(),
                    weight_shape: v[1]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

fn read_expected_tensors(path: &Path) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

#[test]
fn every_format_plans_what_diffusers_loads() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "fixture cases missing: {cases:?}");
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap())
                .unwrap();
        let family = match expected["pipeline"].as_str().unwrap() {
            "StableDiffusionPipeline" => Family::StableDiffusion,
            _ => Family::StableDiffusionXL,
        };
        // Load the folder when the file has the default name (exercises the weight-name
        // choice), the file otherwise.
        let file = expected["file"].as_str().unwrap();
        let path = if file == "pytorch_lora_weights.safetensors" {
            resolve_weight_file(&case, None).unwrap()
        } else {
            resolve_weight_file(&case.join(file), None).unwrap()
        };
        assert_eq!(
            path.file_name().unwrap(),
            file,
            "{name}: weight file choice"
        );
        let lpb = expected["layers_per_block"].as_u64().unwrap() as usize;
        let result = plan(
            read_state_dict(&path).unwrap(),
            family,
            lpb,
            &tables(&expected),
        );
        if let Some(err) = expected.get("error") {
            assert!(
                result.is_err(),
                "{name}: diffusers refused it ({err}), we accepted"
            );
            continue;
        }
        let planned = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let tensors = read_expected_tensors(&case.join("expected.safetensors"));
        let layers: Vec<_> = planned
            .components
            .iter()
            .flat_map(|c| c.layers.iter().map(move |l| (c.component.as_str(), l)))
            .collect();
        let want = expected["layers"].as_array().unwrap();
        let got_names: Vec<String> = layers
            .iter()
            .map(|(c, l)| format!("{c}.{}", l.module))
            .collect();
        let want_names: Vec<String> = want
            .iter()
            .map(|l| {
                format!(
                    "{}.{}",
                    l["component"].as_str().unwrap(),
                    l["module"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(got_names, want_names, "{name}: wrapped layers");
        for ((component, layer), w) in layers.iter().zip(want) {
            let id = format!("{name}: {component}.{}", layer.module);
            assert_eq!(layer.r as u64, w["r"].as_u64().unwrap(), "{id}: r");
            assert_eq!(
                layer.alpha,
                w["lora_alpha"].as_f64().unwrap(),
                "{id}: alpha"
            );
            assert!(
                (layer.scaling - w["scaling"].as_f64().unwrap()).abs() < 1e-12,
                "{id}: scaling"
            );
            for (which, t) in [("lora_A", &layer.a), ("lora_B", &layer.b)] {
                let (shape, values) = &tensors[&format!("{component}.{}.{which}", layer.module)];
                assert_eq!(&t.shape, shape, "{id}: {which} shape");
                assert_eq!(&t.values, values, "{id}: {which} values");
            }
        }
        for warning in expected["warnings"].as_array().unwrap() {
            let head: String = warning.as_str().unwrap().chars().take(40).collect();
            assert!(
                planned.warnings.iter().any(|w| w.starts_with(&head)),
                "{name}: diffusers warned `{head}…`; ours: {:?}",
                planned.warnings
            );
        }
    }
}

#[test]
fn a_lora_for_another_family_names_a_key() {
    // `sd_wrong_family` (an SDXL LoRA into the SD pipeline) is refused by diffusers; ours names
    // the first key that does not fit.
    let case = fixtures().join("sd_wrong_family");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap())
            .unwrap();
    assert!(
        expected["error"]
            .as_str()
            .unwrap()
            .contains("size mismatch")
    );
    let path = case.join("pytorch_lora_weights.safetensors");
    let err = plan(
        read_state_dict(&path).unwrap(),
        Family::StableDiffusion,
        1,
        &tables(&expected),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("size mismatch") && text.contains("lora_"),
        "{text}"
    );
}

#[test]
fn not_a_lora_is_refused() {
    let dir = std::env::temp_dir().join(format!("diff-lora-notlora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.safetensors");
    let data = 1.0f32.to_le_bytes();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    safetensors::serialize_to_file([("unet.conv_in.weight", view)], None, &path).unwrap();
    let sd_expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("sd_peft_no_metadata/expected.json")).unwrap(),
    )
    .unwrap();
    let err = plan(
        read_state_dict(&path).unwrap(),
        Family::StableDiffusion,
        1,
        &tables(&sd_expected),
    )
    .unwrap_err();
    assert!(err.to_string().contains("unet.conv_in.weight"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
