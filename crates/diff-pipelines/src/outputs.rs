//! Reading and writing what the pipelines take and give: PNG images, float image arrays and
//! latents as safetensors. Every write goes to a temporary name in the target folder and is
//! renamed into place, so a failed run never leaves a half-written file.

use crate::error::PipelineError;
use crate::image_processor::FloatImages;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use std::path::Path;

/// Writes `bytes` to a user-named `path` by diff-format's rules: through a symbolic link to its
/// target, never over a folder, FIFO or device, the folder checked first, and atomically (a
/// temporary name in the same folder, then a rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    Ok(diff_format::fsutil::write_atomic(path, bytes)?)
}

/// Writes an RGB image as PNG (atomically; [`diff_image::save_png`]).
pub fn save_png(path: &Path, image: &RgbImage) -> Result<(), PipelineError> {
    Ok(diff_image::save_png(path, image)?)
}

/// Writes float images `[N, H, W, 3]` in `[0, 1]` as a safetensors file with one float32
/// tensor under the key `images` (what `--out-array` writes).
pub fn save_float_images(path: &Path, images: &FloatImages) -> Result<(), PipelineError> {
    let bytes: Vec<u8> = images.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = vec![images.count, images.height, images.width, 3];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
        .map_err(|e| {
            PipelineError::arg("images", format!("cannot build the `images` tensor: {e}"))
        })?;
    let data = safetensors::serialize([("images", view)], None).map_err(|e| {
        PipelineError::arg(
            "images",
            format!("cannot serialize {}: {e}", path.display()),
        )
    })?;
    write_atomic(path, &data)
}

/// Writes latents `[N, C, h, w]` as a safetensors file with one float32 tensor under the key
/// `latents` (what `generate --out-latents` writes and `--latents` / `--image-latents` read).
pub fn save_latents(path: &Path, latents: &Tensor<4>) -> Result<(), PipelineError> {
    let shape = latents.dims().to_vec();
    let values: Vec<f32> = latents
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PipelineError::arg("latents", format!("cannot read the latents: {e:?}")))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
        .map_err(|e| {
            PipelineError::arg("latents", format!("cannot build the `latents` tensor: {e}"))
        })?;
    let data = safetensors::serialize([("latents", view)], None).map_err(|e| {
        PipelineError::arg(
            "latents",
            format!("cannot serialize {}: {e}", path.display()),
        )
    })?;
    write_atomic(path, &data)
}

/// Reads initial latents `[N, C, h, w]` (float32, float16 or bfloat16) from a safetensors file:
/// the tensor named `latents`, or the only tensor in the file.
pub fn load_latents(path: &Path, device: &Device) -> Result<Tensor<4>, PipelineError> {
    let bytes = std::fs::read(path).map_err(|e| PipelineError::io(path, e))?;
    let bad = |message: String| PipelineError::Latents {
        path: path.to_path_buf(),
        message,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let names = st.names();
    let name = if names.contains(&"latents") {
        "latents".to_string()
    } else if names.len() == 1 {
        names.first().map(|n| n.to_string()).unwrap_or_default()
    } else {
        return Err(bad(format!(
            "expected a tensor named `latents` (or a single tensor), found {names:?}"
        )));
    };
    let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
    let shape: [usize; 4] = view.shape().try_into().map_err(|_| {
        bad(format!(
            "`{name}` has shape {:?}; expected 4 dimensions [N, C, h, w]",
            view.shape()
        ))
    })?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(bad(format!(
                "`{name}` has dtype {other:?}; expected F32, F16 or BF16"
            )));
        }
    };
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Reads float images `[N, H, W, 3]` (float32) from a safetensors file written by
/// [`save_float_images`] (the tensor `images`).
pub fn load_float_images(path: &Path) -> Result<FloatImages, PipelineError> {
    let bytes = std::fs::read(path).map_err(|e| PipelineError::io(path, e))?;
    let bad = |message: String| PipelineError::Latents {
        path: path.to_path_buf(),
        message,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let view = st
        .tensor("images")
        .map_err(|e| bad(format!("no float32 tensor `images`: {e}")))?;
    let (count, height, width) = match (view.dtype(), view.shape()) {
        (safetensors::Dtype::F32, [n, h, w, 3]) => (*n, *h, *w),
        (dtype, shape) => {
            return Err(bad(format!(
                "`images` is {dtype:?} {shape:?}; expected F32 [N, H, W, 3]"
            )));
        }
    };
    let data = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(FloatImages {
        count,
        height,
        width,
        data,
    })
}
