//! A burn-free view of the tensors stored in safetensors files: name -> dtype, shape, bytes.
//!
//! One [`TensorSource`] covers a single `.safetensors` file or every shard listed by a
//! `*.safetensors.index.json`. Files are memory-mapped, so opening a source reads only the
//! headers; tensor bytes are paged in when [`TensorSource::bytes`] is called, and
//! [`TensorSource::release`] hands those pages back to the kernel once a tensor has been
//! copied, which keeps the loader's peak RSS near the size of the model instead of twice it.
//!
//! The CONVERT engineer reuses this type, so it knows nothing about burn.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::ModelError;

/// The element type of a stored tensor, as named in the safetensors header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RawDType {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integers (e.g. `position_ids` buffers).
    I64,
    /// Signed 32-bit integers.
    I32,
    /// Booleans, one byte each.
    Bool,
    /// Unsigned bytes.
    U8,
    /// Any other safetensors dtype (kept by name for error messages).
    Other(&'static str),
}

impl RawDType {
    /// Bytes per element (0 for [`RawDType::Other`], whose size is not known here).
    pub fn size(self) -> usize {
        match self {
            RawDType::F16 | RawDType::BF16 => 2,
            RawDType::F32 | RawDType::I32 => 4,
            RawDType::F64 | RawDType::I64 => 8,
            RawDType::Bool | RawDType::U8 => 1,
            RawDType::Other(_) => 0,
        }
    }

    /// The safetensors name of the dtype (`F16`, `BF16`, `F32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RawDType::F16 => "F16",
            RawDType::BF16 => "BF16",
            RawDType::F32 => "F32",
            RawDType::F64 => "F64",
            RawDType::I64 => "I64",
            RawDType::I32 => "I32",
            RawDType::Bool => "BOOL",
            RawDType::U8 => "U8",
            RawDType::Other(name) => name,
        }
    }

    /// The dtype for a safetensors header dtype.
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Self {
        use safetensors::Dtype as D;
        match dtype {
            D::F16 => RawDType::F16,
            D::BF16 => RawDType::BF16,
            D::F32 => RawDType::F32,
            D::F64 => RawDType::F64,
            D::I64 => RawDType::I64,
            D::I32 => RawDType::I32,
            D::BOOL => RawDType::Bool,
            D::U8 => RawDType::U8,
            D::I8 => RawDType::Other("I8"),
            D::I16 => RawDType::Other("I16"),
            D::U16 => RawDType::Other("U16"),
            D::U32 => RawDType::Other("U32"),
            D::U64 => RawDType::Other("U64"),
            _ => RawDType::Other("unsupported"),
        }
    }
}

/// Where one tensor lives: its file, dtype, shape and byte range inside the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type on disk.
    pub dtype: RawDType,
    /// Shape on disk (PyTorch layout).
    pub shape: Vec<usize>,
    /// Index of the file in [`TensorSource::files`].
    pub file: usize,
    /// Byte range inside that file's mapping (absolute, header included).
    pub range: std::ops::Range<usize>,
}

struct MappedFile {
    path: PathBuf,
    /// Shared with the tensors of a model loaded with [`super::LoadOptions::map_weights`].
    mmap: std::sync::Arc<Mmap>,
}

/// The tensors of one checkpoint: a safetensors file or sharded index (memory-mapped), a
/// PyTorch pickle checkpoint read through `diff_format::pickle`'s restricted reader, or tensors
/// handed over in memory.
pub struct TensorSource {
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
    origin: PathBuf,
    pickle: Option<PickleBacking>,
    /// Tensors held in memory ([`TensorSource::from_memory`]); a tensor's buffer is freed by
    /// [`TensorSource::release`] once the loader has copied it.
    memory: Option<std::sync::Mutex<BTreeMap<String, Vec<u8>>>>,
}

/// A `.bin` checkpoint: tensors are materialised one at a time by the restricted reader.
struct PickleBacking {
    checkpoint: diff_format::pickle::PickleCheckpoint,
    infos: BTreeMap<String, diff_format::pickle::TensorInfo>,
}

impl std::fmt::Debug for TensorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorSource")
            .field("origin", &self.origin)
            .field(
                "files",
                &self.files.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::WeightFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Git LFS pointer files start with this line; diffusers gives a dedicated hint for them.
const LFS_POINTER_PREFIX: &[u8] = b"version https://git-lfs";

fn map_file(path: &Path) -> Result<MappedFile, ModelError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the mapping is read-only and private to this process. A concurrent writer that
    // truncates the file could make later reads fault; model files are treated as immutable
    // while loading, as safetensors' own `load_file` (mmap) assumes too.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    Ok(MappedFile {
        path: path.to_path_buf(),
        mmap: std::sync::Arc::new(mmap),
    })
}

fn parse_header(
    file_index: usize,
    mapped: &MappedFile,
    out: &mut BTreeMap<String, TensorInfo>,
    only: Option<&dyn Fn(&str) -> bool>,
) -> Result<(), ModelError> {
    let path = &mapped.path;
    if mapped.mmap.starts_with(LFS_POINTER_PREFIX) {
        return Err(bad(
            path,
            "this is a git-lfs pointer, not the weights; the repository was cloned without git-lfs",
        ));
    }
    let (header_len, metadata) = SafeTensors::read_metadata(&mapped.mmap)
        .map_err(|e| bad(path, format!("corrupt safetensors header: {e}")))?;
    let data_start = header_len
        .checked_add(8)
        .ok_or_else(|| bad(path, "header length overflows"))?;
    for (name, info) in metadata.tensors() {
        if let Some(filter) = only
            && !filter(&name)
        {
            continue;
        }
        let dtype = RawDType::from_safetensors(info.dtype);
        let (begin, end) = info.data_offsets;
        let start = data_start
            .checked_add(begin)
            .ok_or_else(|| bad(path, format!("tensor `{name}`: offset overflows")))?;
        let stop = data_start
            .checked_add(end)
            .ok_or_else(|| bad(path, format!("tensor `{name}`: offset overflows")))?;
        if start > stop || stop > mapped.mmap.len() {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}`: byte range {start}..{stop} is outside the file of {} bytes",
                    mapped.mmap.len()
                ),
            ));
        }
        let numel = info
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(path, format!("tensor `{name}`: shape overflows")))?;
        if dtype.size() != 0 && numel.checked_mul(dtype.size()) != Some(stop - start) {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}`: shape {:?} of {} needs {} bytes, the file has {}",
                    info.shape,
                    dtype.name(),
                    numel.saturating_mul(dtype.size()),
                    stop - start
                ),
            ));
        }
        if out.contains_key(&name) {
            return Err(bad(path, format!("tensor `{name}` appears in two shards")));
        }
        out.insert(
            name,
            TensorInfo {
                dtype,
                shape: info.shape.clone(),
                file: file_index,
                range: start..stop,
            },
        );
    }
    Ok(())
}

/// The JSON layout of a shard index (`{"metadata": {...}, "weight_map": {key: shard}}`).
#[derive(serde::Deserialize)]
struct ShardIndex {
    #[allow(dead_code)]
    metadata: serde_json::Value,
    weight_map: BTreeMap<String, String>,
}

/// Whether a shard name from an index is a bare file name (diffusers >= 0.40 refuses any name
/// with a separator, `..` or an absolute path, so a hostile index cannot read outside the folder).
fn is_bare_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && !name.contains('\\')
        && name != "."
        && name != ".."
        && !name.contains("..")
        && !Path::new(name).is_absolute()
}

impl TensorSource {
    /// Opens one `.safetensors` file.
    pub fn open_file(path: &Path) -> Result<Self, ModelError> {
        let mapped = map_file(path)?;
        let mut tensors = BTreeMap::new();
        parse_header(0, &mapped, &mut tensors, None)?;
        Ok(Self {
            files: vec![mapped],
            tensors,
            origin: path.to_path_buf(),
            pickle: None,
            memory: None,
        })
    }

    /// Opens every shard named by a `*.safetensors.index.json`, resolved beside the index.
    ///
    /// The set of tensors is the index's `weight_map` (as diffusers does); a key the index
    /// names but its shard lacks is an error, and shard tensors the index does not list are
    /// ignored.
    pub fn open_index(index_path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(index_path).map_err(|e| io_err(index_path, e))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| bad(index_path, format!("not a shard index: {e}")))?;
        let folder = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&String> = index.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut files = Vec::with_capacity(shard_names.len());
        let mut tensors = BTreeMap::new();
        for (i, shard) in shard_names.iter().enumerate() {
            if !is_bare_file_name(shard) {
                return Err(bad(
                    index_path,
                    format!("shard name `{shard}` must be a bare file name inside the folder"),
                ));
            }
            let mapped = map_file(&folder.join(shard))?;
            let wanted = |key: &str| index.weight_map.get(key).is_some_and(|s| s == *shard);
            parse_header(i, &mapped, &mut tensors, Some(&wanted))?;
            files.push(mapped);
        }
        for (key, shard) in &index.weight_map {
            if !tensors.contains_key(key) {
                return Err(bad(
                    index_path,
                    format!(
                        "the index maps `{key}` to `{shard}`, but that shard has no such tensor"
                    ),
                ));
            }
        }
        Ok(Self {
            files,
            tensors,
            origin: index_path.to_path_buf(),
            pickle: None,
            memory: None,
        })
    }

    /// Opens a PyTorch pickle checkpoint (`.bin`, `.ckpt`, `.pt`) with the restricted reader:
    /// only tensor storage is accepted, any other global (code) is refused. Nothing is
    /// executed; tensors are read when asked for.
    pub fn open_pickle(path: &Path) -> Result<Self, ModelError> {
        let checkpoint = diff_format::pickle::PickleCheckpoint::open(path)
            .map_err(|e| bad(path, e.to_string()))?;
        let state = checkpoint
            .state_dict()
            .map_err(|e| bad(path, e.to_string()))?;
        let mut tensors = BTreeMap::new();
        let mut infos = BTreeMap::new();
        for (name, info) in state {
            use diff_format::pickle::StorageDtype as S;
            let dtype = match info.dtype {
                S::F64 => RawDType::F64,
                S::F32 => RawDType::F32,
                S::F16 => RawDType::F16,
                S::BF16 => RawDType::BF16,
                S::I64 => RawDType::I64,
                S::I32 => RawDType::I32,
                S::U8 => RawDType::U8,
                S::Bool => RawDType::Bool,
                _ => RawDType::Other("other"),
            };
            tensors.insert(
                name.clone(),
                TensorInfo {
                    dtype,
                    shape: info.shape.clone(),
                    file: 0,
                    range: 0..0,
                },
            );
            infos.insert(name, info);
        }
        Ok(Self {
            files: Vec::new(),
            tensors,
            origin: path.to_path_buf(),
            pickle: Some(PickleBacking { checkpoint, infos }),
            memory: None,
        })
    }

    /// A source over tensors already in memory, as `(name, dtype, shape, little-endian bytes)`
    /// (a single-file checkpoint converted to the diffusers layout, say); `origin` names where
    /// they came from in messages. The buffers are moved in, not copied, and each is freed as
    /// soon as the loader has copied it ([`TensorSource::release`]), so loading from memory
    /// holds one tensor twice at most. A buffer whose length disagrees with its shape and
    /// dtype, or a name given twice, is an error.
    pub fn from_memory(
        origin: &Path,
        tensors: impl IntoIterator<Item = (String, RawDType, Vec<usize>, Vec<u8>)>,
    ) -> Result<Self, ModelError> {
        let mut infos = BTreeMap::new();
        let mut buffers = BTreeMap::new();
        for (name, dtype, shape, data) in tensors {
            let numel = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(origin, format!("tensor `{name}`: shape overflows")))?;
            if dtype.size() != 0 && numel.checked_mul(dtype.size()) != Some(data.len()) {
                return Err(bad(
                    origin,
                    format!(
                        "tensor `{name}`: shape {shape:?} of {} needs {} bytes, got {}",
                        dtype.name(),
                        numel.saturating_mul(dtype.size()),
                        data.len()
                    ),
                ));
            }
            if infos.contains_key(&name) {
                return Err(bad(origin, format!("tensor `{name}` is given twice")));
            }
            infos.insert(
                name.clone(),
                TensorInfo {
                    dtype,
                    shape,
                    file: 0,
                    range: 0..data.len(),
                },
            );
            buffers.insert(name, data);
        }
        Ok(Self {
            files: Vec::new(),
            tensors: infos,
            origin: origin.to_path_buf(),
            pickle: None,
            memory: Some(std::sync::Mutex::new(buffers)),
        })
    }

    /// Opens a `.safetensors` file, a `.safetensors.index.json`, or a pickle checkpoint
    /// (`.bin`, `.ckpt`, `.pt`, `.pth`), by its name.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") && name.contains(".bin.") {
            Err(ModelError::PickleNotSupported {
                path: path.display().to_string(),
            })
        } else if name.ends_with(".json") {
            Self::open_index(path)
        } else if [".bin", ".ckpt", ".pt", ".pth"]
            .iter()
            .any(|e| name.ends_with(e))
        {
            Self::open_pickle(path)
        } else {
            Self::open_file(path)
        }
    }

    /// The raw little-endian bytes of a tensor, row-major: borrowed from the mapping for
    /// safetensors, materialised by the restricted reader for pickle checkpoints, copied for
    /// in-memory sources (an error once [`TensorSource::release`] has freed it).
    pub fn read(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>, ModelError> {
        if let Some(p) = &self.pickle {
            let info = p
                .infos
                .get(name)
                .ok_or_else(|| bad(&self.origin, format!("no tensor named `{name}`")))?;
            let bytes = p
                .checkpoint
                .read_tensor(name, info)
                .map_err(|e| bad(&self.origin, e.to_string()))?;
            return Ok(std::borrow::Cow::Owned(bytes));
        }
        if let Some(memory) = &self.memory {
            // A poisoned lock only means another reader panicked; the buffers are intact.
            let buffers = memory.lock().unwrap_or_else(|e| e.into_inner());
            return buffers
                .get(name)
                .map(|b| std::borrow::Cow::Owned(b.clone()))
                .ok_or_else(|| {
                    let why = if self.tensors.contains_key(name) {
                        "was already loaded and released"
                    } else {
                        "does not exist"
                    };
                    bad(&self.origin, format!("tensor `{name}` {why}"))
                });
        }
        self.bytes(name)
            .map(std::borrow::Cow::Borrowed)
            .ok_or_else(|| bad(&self.origin, format!("no tensor named `{name}`")))
    }

    /// The file or index this source was opened from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The mapped files, in the order [`TensorInfo::file`] indexes.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Tensor names with their info, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The info of one tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.range.len()).sum()
    }

    /// The raw little-endian bytes of a tensor, borrowed from the mapping (`None` for pickle
    /// checkpoints and in-memory sources, whose tensors [`TensorSource::read`] hands out).
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensors.get(name)?;
        self.files.get(info.file)?.mmap.get(info.range.clone())
    }

    /// The bytes of a safetensors tensor as a buffer that borrows the mapping (no copy; the
    /// buffer keeps the mapping alive), or `None` for pickle and in-memory sources and for a
    /// tensor whose start is not aligned to `align` bytes.
    pub fn mapped(&self, name: &str, align: usize) -> Option<burn::tensor::Bytes> {
        if self.pickle.is_some() || self.memory.is_some() {
            return None;
        }
        let info = self.tensors.get(name)?;
        let file = self.files.get(info.file)?;
        file.mmap.get(info.range.clone())?;
        if !(file.mmap.as_ptr() as usize + info.range.start).is_multiple_of(align.max(1)) {
            return None;
        }
        let owner = MappedRange {
            mmap: std::sync::Arc::clone(&file.mmap),
            range: info.range.clone(),
        };
        Some(burn::tensor::Bytes::from_shared(
            bytes::Bytes::from_owner(owner),
            burn::tensor::AllocationProperty::File,
        ))
    }

    /// The memory mappings of this source's files (empty for pickle and in-memory sources).
    pub fn mappings(&self) -> crate::offload::MappedWeights {
        if self.pickle.is_some() || self.memory.is_some() {
            return crate::offload::MappedWeights::default();
        }
        crate::offload::MappedWeights::new(
            self.files
                .iter()
                .map(|f| std::sync::Arc::clone(&f.mmap))
                .collect(),
        )
    }

    /// Decodes a floating-point tensor to `f32` (F16, BF16, F32 and F64 on disk).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| bad(&self.origin, format!("no tensor named `{name}`")))?;
        let bytes = self.read(name)?;
        decode_f32(&bytes, info.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
            path: self.origin.display().to_string(),
            key: name.to_string(),
            got: info.dtype.name().to_string(),
            expected: "F16, BF16, F32, F64".to_string(),
        })
    }

    /// Tells the kernel the pages of a tensor are no longer needed, so a tensor already copied
    /// into its own buffer stops counting twice in the resident set. Harmless if it fails:
    /// the pages are file-backed and would be evicted under pressure anyway. For an in-memory
    /// source ([`TensorSource::from_memory`]) the tensor's buffer is freed.
    pub fn release(&self, name: &str) {
        if let Some(memory) = &self.memory {
            memory
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            return;
        }
        let Some(info) = self.tensors.get(name) else {
            return;
        };
        let Some(file) = self.files.get(info.file) else {
            return;
        };
        // madvise needs a page-aligned start; round inward so neighbouring tensors that share
        // a page keep it.
        const PAGE: usize = 4096;
        let start = info.range.start.div_ceil(PAGE) * PAGE;
        let end = info.range.end / PAGE * PAGE;
        if end > start {
            release_range(&file.mmap, start, end - start);
        }
    }
}

/// A byte range of a shared mapping, owned by a tensor buffer.
struct MappedRange {
    mmap: std::sync::Arc<Mmap>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        // The range was checked against the mapping when this was made.
        self.mmap.get(self.range.clone()).unwrap_or(&[])
    }
}

#[cfg(unix)]
fn release_range(mmap: &Mmap, offset: usize, len: usize) {
    // SAFETY: the mapping is a read-only, file-backed mapping; MADV_DONTNEED on it only drops
    // clean page-cache pages from this process, and later reads fault them back in from the
    // file with identical contents. No Rust reference into the range is alive here: callers
    // release a tensor only after copying its bytes.
    let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) };
}

#[cfg(not(unix))]
fn release_range(_mmap: &Mmap, _offset: usize, _len: usize) {}

/// Decodes little-endian floating-point bytes of `dtype` into `f32`; `None` for other dtypes.
pub fn decode_f32(bytes: &[u8], dtype: RawDType) -> Option<Vec<f32>> {
    Some(match dtype {
        RawDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        RawDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        RawDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        RawDType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    })
}
