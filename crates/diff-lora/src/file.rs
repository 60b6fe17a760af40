//! Reading a LoRA file: which file of a folder, its tensors in the order Python sees them, and
//! its `lora_adapter_metadata`.

use std::path::{Path, PathBuf};

use diff_format::pickle::{PickleCheckpoint, StorageDtype};
use serde_json::{Map, Value};

use crate::LoraError;

/// diffusers' default LoRA file name (`LORA_WEIGHT_NAME_SAFE`).
pub const LORA_WEIGHT_NAME_SAFE: &str = "pytorch_lora_weights.safetensors";
/// The pickle form of it (`LORA_WEIGHT_NAME`).
pub const LORA_WEIGHT_NAME: &str = "pytorch_lora_weights.bin";
/// The safetensors metadata key diffusers writes the adapter configs under.
pub const LORA_ADAPTER_METADATA_KEY: &str = "lora_adapter_metadata";

/// One LoRA tensor, as float32 (LoRA factors are small; float16 / bfloat16 convert exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTensor {
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub values: Vec<f32>,
}

impl LoraTensor {
    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The single value of a one-element tensor (kohya's `.alpha`).
    pub fn scalar(&self) -> Option<f32> {
        (self.values.len() == 1).then(|| self.values[0])
    }
}

/// A LoRA state dict in the order Python iterates it, with the file's adapter metadata.
#[derive(Debug, Clone, Default)]
pub struct LoraStateDict {
    /// `(key, tensor)` in load order: data-offset order for safetensors (what
    /// `safetensors.torch.load_file` returns), file order for pickles.
    pub tensors: Vec<(String, LoraTensor)>,
    /// The parsed `lora_adapter_metadata` (`{"unet.r": 4, ...}`), safetensors files only.
    pub metadata: Option<Map<String, Value>>,
    /// The file it came from.
    pub path: PathBuf,
}

/// Where to find the LoRA file, as `load_lora_weights(path, weight_name=...)` decides for a
/// local file or folder: a file is used as is; in a folder `weight_name` if given, else the one
/// `_best_guess_weight_name` picks (safetensors first, then `.bin`; names containing
/// `scheduler`, `optimizer` or `checkpoint` are skipped; `pytorch_lora_weights.*` wins; with
/// several candidates the first listed is taken, with diffusers' warning).
pub fn resolve_weight_file(path: &Path, weight_name: Option<&str>) -> Result<PathBuf, LoraError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(LoraError::NoWeightFile {
            path: path.to_path_buf(),
            message: "neither a file nor a folder".into(),
        });
    }
    if let Some(name) = weight_name {
        let file = path.join(name);
        return if file.is_file() {
            Ok(file)
        } else {
            Err(LoraError::NoWeightFile {
                path: path.to_path_buf(),
                message: format!("no file named {name}"),
            })
        };
    }
    let mut listing: Vec<String> = std::fs::read_dir(path)
        .map_err(|source| LoraError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // `os.listdir` order is the file system's; sort for a reproducible choice.
    listing.sort();
    for (ext, default) in [
        (".safetensors", LORA_WEIGHT_NAME_SAFE),
        (".bin", LORA_WEIGHT_NAME),
    ] {
        let mut candidates: Vec<&String> = listing
            .iter()
            .filter(|f| f.ends_with(ext))
            .filter(|f| {
                !["scheduler", "optimizer", "checkpoint"]
                    .iter()
                    .any(|s| f.contains(s))
            })
            .collect();
        if candidates.iter().any(|f| f.ends_with(LORA_WEIGHT_NAME))
            || candidates.iter().any(|f| f.ends_with(default))
        {
            let preferred = if candidates.iter().any(|f| f.ends_with(LORA_WEIGHT_NAME)) {
                LORA_WEIGHT_NAME
            } else {
                default
            };
            candidates.retain(|f| f.ends_with(preferred));
        }
        if let Some(first) = candidates.first() {
            if candidates.len() > 1 {
                tracing::warn!(
                    "Provided path contains more than one weights file in the {ext} format. `{first}` is going to be loaded, for precise control, specify a `weight_name` in `load_lora_weights`."
                );
            }
            return Ok(path.join(first));
        }
    }
    Err(LoraError::NoWeightFile {
        path: path.to_path_buf(),
        message: "no .safetensors or .bin file".into(),
    })
}

/// Reads a LoRA file: `.safetensors` (with its metadata) or a pickle checkpoint through
/// diff-format's restricted reader (never executed).
pub fn read_state_dict(path: &Path) -> Result<LoraStateDict, LoraError> {
    let bytes = std::fs::read(path).map_err(|source| LoraError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if looks_like_safetensors(&bytes) {
        read_safetensors(path, &bytes)
    } else {
        drop(bytes);
        read_pickle(path)
    }
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[8] == b'{'
}

fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<LoraStateDict, LoraError> {
    let bad = |message: String| LoraError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let mut entries: Vec<(usize, String)> = header
        .tensors()
        .iter()
        .map(|(name, info)| (info.data_offsets.0, name.clone()))
        .collect();
    entries.sort();
    let mut tensors = Vec::with_capacity(entries.len());
    for (_, name) in entries {
        let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
        let values = floats(view.dtype(), view.data()).ok_or_else(|| LoraError::Dtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        tensors.push((
            name,
            LoraTensor {
                shape: view.shape().to_vec(),
                values,
            },
        ));
    }
    let metadata = match header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(LORA_ADAPTER_METADATA_KEY))
    {
        Some(raw) if !raw.is_empty() => match diff_format::json::loads(raw) {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) => {
                return Err(LoraError::Metadata {
                    path: path.to_path_buf(),
                    message: "not a JSON object".into(),
                });
            }
            Err(e) => {
                return Err(LoraError::Metadata {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                });
            }
        },
        _ => None,
    };
    Ok(LoraStateDict {
        tensors,
        metadata,
        path: path.to_path_buf(),
    })
}

fn read_pickle(path: &Path) -> Result<LoraStateDict, LoraError> {
    let ckpt = PickleCheckpoint::open(path)?;
    let mut tensors = Vec::new();
    for (name, info, data) in ckpt.read_state_dict()? {
        let dtype = match info.dtype {
            StorageDtype::F32 => safetensors::Dtype::F32,
            StorageDtype::F16 => safetensors::Dtype::F16,
            StorageDtype::BF16 => safetensors::Dtype::BF16,
            StorageDtype::F64 => safetensors::Dtype::F64,
            other => {
                return Err(LoraError::Dtype {
                    path: path.to_path_buf(),
                    key: name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        let values = floats(dtype, &data).ok_or_else(|| LoraError::Dtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: format!("{dtype:?}"),
        })?;
        tensors.push((
            name,
            LoraTensor {
                shape: info.shape.clone(),
                values,
            },
        ));
    }
    Ok(LoraStateDict {
        tensors,
        metadata: None,
        path: path.to_path_buf(),
    })
}

/// Little-endian float bytes to f32 (`None` for non-float dtypes or a ragged length).
fn floats(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype;
    let out = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    };
    let size = dtype.bitsize() / 8;
    (size > 0 && data.len().is_multiple_of(size)).then_some(out)
}
