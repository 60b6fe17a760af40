//! Raw tensors (dtype, shape, little-endian bytes) and reading them from weight files.
//!
//! Re-saving and converting never need tensor maths, so this crate moves bytes, not burn
//! tensors: a component is a list of [`RawTensor`]s in state-dict order.

use crate::CheckpointError;
use diff_format::pickle::{PickleCheckpoint, StorageDtype};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// One tensor: element type, shape and contiguous little-endian bytes (safetensors layout).
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// `numel × dtype size` bytes.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Builds a tensor, checking that `data` has exactly the bytes `shape` and `dtype` need.
    pub fn new(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<Self, String> {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("shape overflows")?;
        let size = element_size(dtype).ok_or("sub-byte dtypes are not supported")?;
        let need = numel.checked_mul(size).ok_or("size overflows")?;
        if need != data.len() {
            return Err(format!(
                "shape {shape:?} of {dtype:?} needs {need} bytes, got {}",
                data.len()
            ));
        }
        Ok(Self { dtype, shape, data })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len() / element_size(self.dtype).unwrap_or(1).max(1)
    }

    /// Whether the dtype is a floating-point type (the only ones a dtype cast touches).
    pub fn is_float(&self) -> bool {
        matches!(
            self.dtype,
            Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
        )
    }
}

/// Bytes per element, `None` for sub-byte types (packed fp4 and the like).
pub fn element_size(dtype: Dtype) -> Option<usize> {
    let bits = dtype.bitsize();
    bits.is_multiple_of(8).then_some(bits / 8)
}

/// A component's tensors in state-dict order.
pub type StateDict = Vec<(String, RawTensor)>;

/// Maps a pickle storage dtype to safetensors'.
pub fn dtype_from_storage(d: StorageDtype) -> Option<Dtype> {
    Some(match d {
        StorageDtype::F64 => Dtype::F64,
        StorageDtype::F32 => Dtype::F32,
        StorageDtype::F16 => Dtype::F16,
        StorageDtype::BF16 => Dtype::BF16,
        StorageDtype::I64 => Dtype::I64,
        StorageDtype::I32 => Dtype::I32,
        StorageDtype::I16 => Dtype::I16,
        StorageDtype::I8 => Dtype::I8,
        StorageDtype::U8 => Dtype::U8,
        StorageDtype::Bool => Dtype::BOOL,
        StorageDtype::F8E4M3 => Dtype::F8_E4M3,
        StorageDtype::F8E5M2 => Dtype::F8_E5M2,
        _ => return None,
    })
}

/// A safetensors file's `__metadata__` (string to string).
pub type Metadata = BTreeMap<String, String>;

/// Reads every tensor of one `.safetensors` file, sorted by name, with the file's metadata.
pub fn read_safetensors(
    path: &Path,
) -> Result<(BTreeMap<String, RawTensor>, Option<Metadata>), CheckpointError> {
    let file = std::fs::File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    // SAFETY: the mapping is read-only and private; weights files are treated as immutable
    // while they are read (safetensors' own `load_file` maps them the same way). Mapping instead
    // of reading keeps peak memory at one copy of the tensors (the copies made below).
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::BadWeights {
        path: path.to_path_buf(),
        reason: format!("corrupt safetensors file: {e}"),
    })?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| CheckpointError::BadWeights {
            path: path.to_path_buf(),
            reason: format!("corrupt safetensors header: {e}"),
        })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = RawTensor::new(view.dtype(), view.shape().to_vec(), view.data().to_vec()).map_err(
            |reason| CheckpointError::BadWeights {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}`: {reason}"),
            },
        )?;
        out.insert(name, t);
    }
    Ok((
        out,
        meta.metadata().clone().map(|m| m.into_iter().collect()),
    ))
}

/// Reads the state dict of a PyTorch pickle checkpoint (restricted reader, nothing executed), in
/// the file's order.
pub fn read_pickle(path: &Path) -> Result<StateDict, CheckpointError> {
    let ckpt = PickleCheckpoint::open(path)?;
    let mut out = Vec::new();
    for (name, info, data) in ckpt.read_state_dict()? {
        let dtype = dtype_from_storage(info.dtype).ok_or_else(|| CheckpointError::BadWeights {
            path: path.to_path_buf(),
            reason: format!("tensor `{name}` has unsupported dtype {:?}", info.dtype),
        })?;
        let t = RawTensor::new(dtype, info.shape.clone(), data).map_err(|reason| {
            CheckpointError::BadWeights {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}`: {reason}"),
            }
        })?;
        out.push((name, t));
    }
    Ok(out)
}

/// Reads every shard listed in a `*.index.json` (safetensors or pickle shards), by name.
pub fn read_index(index: &Path) -> Result<BTreeMap<String, RawTensor>, CheckpointError> {
    let text = std::fs::read_to_string(index).map_err(|e| CheckpointError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CheckpointError::BadJson {
            path: index.to_path_buf(),
            reason: format!("invalid JSON: {e}"),
        })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| CheckpointError::BadJson {
            path: index.to_path_buf(),
            reason: "no `weight_map` object".into(),
        })?;
    let folder = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    shards.sort_unstable();
    shards.dedup();
    let mut out = BTreeMap::new();
    for shard in shards {
        if shard.contains('/') || shard.contains('\\') || shard.contains("..") || shard.is_empty() {
            return Err(CheckpointError::BadJson {
                path: index.to_path_buf(),
                reason: format!("shard name `{shard}` must be a bare file name"),
            });
        }
        let path = folder.join(shard);
        let tensors: Vec<(String, RawTensor)> = if shard.ends_with(".safetensors") {
            read_safetensors(&path)?.0.into_iter().collect()
        } else {
            read_pickle(&path)?
        };
        for (name, t) in tensors {
            if map.get(&name).and_then(|v| v.as_str()) == Some(shard) {
                out.insert(name, t);
            }
        }
    }
    for key in map.keys() {
        if !out.contains_key(key) {
            return Err(CheckpointError::BadWeights {
                path: index.to_path_buf(),
                reason: format!("the index lists `{key}` but its shard does not hold it"),
            });
        }
    }
    Ok(out)
}
