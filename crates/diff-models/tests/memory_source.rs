//! `TensorSource::from_memory`: tensors handed over in memory load exactly as the same tensors
//! read from their file, each buffer is freed once copied, and bad buffers are clear errors.

use burn::tensor::{DType, Device, Int, Tensor};
use diff_models::CLIPTextModel;
use diff_models::FromPretrained;
use diff_models::weights::{RawDType, TensorSource, load_source};
use std::path::{Path, PathBuf};

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/50-convert/single_file/sd1/expected/text_encoder")
}

#[test]
fn memory_source_loads_exactly_as_the_file() {
    let device = Device::default();
    let file = TensorSource::open_file(&folder().join("model.safetensors")).unwrap();
    let tensors: Vec<_> = file
        .tensors()
        .iter()
        .map(|(name, info)| {
            let bytes = file.read(name).unwrap().into_owned();
            (name.clone(), info.dtype, info.shape.clone(), bytes)
        })
        .collect();
    let count = tensors.len();
    let memory = TensorSource::from_memory(Path::new("<converted>"), tensors).unwrap();
    assert_eq!(memory.tensors().len(), count);
    assert_eq!(memory.total_bytes(), file.total_bytes());

    let config = diff_format::load_config(folder().join("config.json")).unwrap();
    let model = CLIPTextModel::new(&config, &device).unwrap();
    let (from_memory, report) = load_source(
        model,
        &memory,
        &CLIPTextModel::load_options(&diff_models::ModelLoadOptions::new(&device)),
    )
    .unwrap();
    assert!(report.is_clean(), "{}", report.summary());
    let (from_file, _) = CLIPTextModel::from_pretrained(
        &folder(),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(DType::F32),
    )
    .unwrap();
    let ids = Tensor::<2, Int>::from_data([[518i64, 5, 17, 519, 1, 1]], &device);
    let a = from_memory.forward(ids.clone()).unwrap().last_hidden_state;
    let b = from_file.forward(ids).unwrap().last_hidden_state;
    // Tolerance zero: the same bytes in the same parameters.
    assert_eq!(
        a.into_data().try_to_vec::<f32>().unwrap(),
        b.into_data().try_to_vec::<f32>().unwrap()
    );

    // Loaded tensors were released: their buffers are gone, and saying so is an error.
    let loaded = memory
        .tensors()
        .keys()
        .find(|k| k.ends_with("final_layer_norm.weight"))
        .unwrap()
        .clone();
    let err = memory.read(&loaded).unwrap_err().to_string();
    assert!(
        err.contains(&loaded) && err.contains("released") && err.contains("<converted>"),
        "{err}"
    );
}

#[test]
fn memory_source_refuses_bad_buffers() {
    let origin = Path::new("ckpt.safetensors");
    let err = TensorSource::from_memory(
        origin,
        [("w".to_string(), RawDType::F32, vec![2, 3], vec![0u8; 20])],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`w`") && err.contains("24 bytes") && err.contains("got 20"),
        "{err}"
    );
    let twice = || ("w".to_string(), RawDType::F16, vec![1], vec![0u8; 2]);
    let err = TensorSource::from_memory(origin, [twice(), twice()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("given twice"), "{err}");
    let err = TensorSource::from_memory(
        origin,
        [(
            "w".to_string(),
            RawDType::F32,
            vec![usize::MAX, 4],
            Vec::new(),
        )],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("overflows"), "{err}");
}
