//! Helpers shared by the WEIGHTS+CLIP integration tests: fixture paths, reading reference
//! tensors from `io.safetensors`, and error measures.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Shape, Tensor, TensorData};
use diff_models::weights::{RawDType, TensorSource};

/// `tests/fixtures/20-clip/<rel>` from the repository root.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/20-clip")
        .join(rel)
}

/// Opens `<case>/io.safetensors`.
pub fn io(case: &str) -> TensorSource {
    TensorSource::open_file(&fixture(&format!("{case}/io.safetensors"))).expect("fixture io")
}

/// A float reference tensor as (values, shape).
pub fn floats(src: &TensorSource, name: &str) -> (Vec<f32>, Vec<usize>) {
    let shape = src.info(name).expect(name).shape.clone();
    (src.to_f32(name).expect(name), shape)
}

/// A float reference tensor on the device.
pub fn tensor<const D: usize>(src: &TensorSource, name: &str, device: &Device) -> Tensor<D> {
    let (v, shape) = floats(src, name);
    Tensor::from_data(TensorData::new(v, Shape::from(shape)), device)
}

/// An int64 reference tensor on the device.
pub fn int_tensor<const D: usize>(
    src: &TensorSource,
    name: &str,
    device: &Device,
) -> Tensor<D, Int> {
    let info = src.info(name).expect(name);
    assert_eq!(info.dtype, RawDType::I64);
    let bytes = src.bytes(name).expect(name);
    let v: Vec<i64> = bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Tensor::from_data(TensorData::new(v, Shape::from(info.shape.clone())), device)
}

/// The raw int64 values of a reference tensor.
pub fn ints(src: &TensorSource, name: &str) -> Vec<i64> {
    src.bytes(name)
        .expect(name)
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Values of a device tensor as f32.
pub fn values<const D: usize>(t: Tensor<D>) -> (Vec<f32>, Vec<usize>) {
    let shape = t.shape().to_vec();
    let data = t.into_data().convert::<f32>();
    (data.try_to_vec::<f32>().expect("f32"), shape)
}

/// max |a - b| / max |b| (the gate's "max abs error relative to the output's scale").
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    err / scale
}

/// Compares a device tensor with a reference (shape and relative error); returns the error.
pub fn check<const D: usize>(
    what: &str,
    got: Tensor<D>,
    src: &TensorSource,
    name: &str,
    tol: f32,
) -> f32 {
    let (g, gs) = values(got);
    let (w, ws) = floats(src, name);
    assert_eq!(gs, ws, "{what}: shape");
    let e = rel_err(&g, &w);
    eprintln!("{what}: max abs err / max |ref| = {e:.3e} (tolerance {tol:.0e})");
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
    e
}
