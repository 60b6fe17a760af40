//! A restricted reader for PyTorch pickle checkpoints (`.bin`, `.ckpt`, `.pt`, `.pth`).
//!
//! # Threat model
//! A pickle is a program: Python's unpickler imports any `module.name` the file names and calls
//! it. A checkpoint downloaded from the Hub can therefore run arbitrary code when opened with
//! `torch.load(weights_only=False)`. This reader never executes anything. It is a small virtual
//! machine that knows only the opcodes a `torch.save`d state dict uses, and it resolves only an
//! allow-list of globals (the tensor rebuild functions, `collections.OrderedDict`, the storage
//! classes, `_codecs.encode`), each of which it *interprets* itself. Any other global (such as
//! `os.system` or `builtins.eval`) is refused with [`PickleError::ForbiddenGlobal`], naming it,
//! before anything else happens. This matches what diffusers accepts: it loads pickles with
//! `torch.load(weights_only=True)`, whose allow-list is a superset of this one for state dicts.
//!
//! # Formats
//! - The zip format of `torch.save` (torch ≥ 1.6): `<archive>/data.pkl` holds the object tree,
//!   `<archive>/data/<key>` holds each storage's raw bytes, `<archive>/byteorder` the endianness.
//! - The legacy format (torch < 1.6): three small pickles (magic number, protocol version,
//!   system info), the object pickle, a pickle listing the storage keys, then each storage as an
//!   8-byte element count followed by its bytes.
//!
//! The tar format of torch < 0.4 is not supported (diffusers never produced it).
//!
//! # Use
//! [`PickleCheckpoint::open`] parses the object tree without reading any tensor data;
//! [`PickleCheckpoint::state_dict`] finds the tensors (descending into `"state_dict"` as
//! diffusers' single-file loader does); [`PickleCheckpoint::read_tensor`] returns one tensor's
//! elements as contiguous little-endian bytes, whatever its strides and storage offset.

mod vm;
mod zip;

pub use vm::{StorageDtype, TensorInfo, Value};

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The pickle `MAGIC_NUMBER` that opens the legacy (non-zip) `torch.save` format.
const LEGACY_MAGIC: u128 = 0x1950_A86A_20F9_469C_FC6C;
/// The legacy format's `PROTOCOL_VERSION`.
const LEGACY_PROTOCOL_VERSION: i64 = 1001;
/// `data.pkl` larger than this is refused: real state dict pickles are a few MB.
const MAX_PICKLE_BYTES: u64 = 512 * 1024 * 1024;

/// Errors of the restricted pickle reader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The checkpoint.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is neither a zip archive nor a legacy `torch.save` stream.
    #[error("{path} is not a PyTorch checkpoint: {reason}")]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The zip structure is damaged or inconsistent.
    #[error("{path}: corrupt zip archive: {reason}")]
    CorruptArchive {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A zip entry is compressed; `torch.save` only writes stored entries.
    #[error(
        "{path}: zip entry `{entry}` uses compression method {method}; only stored (0) entries are supported, as torch.save writes them"
    )]
    UnsupportedCompression {
        /// The checkpoint.
        path: PathBuf,
        /// The entry name.
        entry: String,
        /// The zip compression method found.
        method: u16,
    },
    /// The pickle names a global outside the allow-list; nothing was executed.
    #[error(
        "{path}: the pickle refers to the global `{module}.{name}`, which is not allowed in a weights-only checkpoint (it could run code); refusing to load"
    )]
    ForbiddenGlobal {
        /// The checkpoint.
        path: PathBuf,
        /// The module part, e.g. `os`.
        module: String,
        /// The name part, e.g. `system`.
        name: String,
    },
    /// The pickle uses an opcode this reader does not implement.
    #[error("{path}: unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnsupportedOpcode {
        /// The checkpoint.
        path: PathBuf,
        /// The opcode byte.
        opcode: u8,
        /// Its offset in the pickle stream.
        offset: u64,
    },
    /// The pickle program is malformed (stack underflow, bad argument types, truncated, ...).
    #[error("{path}: malformed pickle at byte {offset}: {reason}")]
    Malformed {
        /// The checkpoint.
        path: PathBuf,
        /// Offset in the pickle stream.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A storage class names a dtype this reader cannot represent.
    #[error("{path}: unsupported storage type `torch.{storage}`")]
    UnsupportedStorage {
        /// The checkpoint.
        path: PathBuf,
        /// The storage class name, e.g. `ComplexFloatStorage`.
        storage: String,
    },
    /// A tensor refers to a storage key with no data in the file.
    #[error("{path}: storage `{key}` of tensor `{tensor}` is missing from the file")]
    MissingStorage {
        /// The checkpoint.
        path: PathBuf,
        /// The storage key.
        key: String,
        /// The tensor name.
        tensor: String,
    },
    /// A tensor's shape, strides and offset reach outside its storage.
    #[error(
        "{path}: tensor `{tensor}` ({layout}) needs {needed} elements but its storage `{key}` has {available}"
    )]
    TensorOutOfBounds {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Its shape, strides and storage offset, e.g. `shape [2, 3], stride [3, 1], offset 0`.
        layout: String,
        /// The storage key.
        key: String,
        /// Elements needed.
        needed: u64,
        /// Elements present.
        available: u64,
    },
    /// Reading the tensors would produce far more bytes than the file holds: stride-0
    /// (broadcast) views or many tensors over one small storage, each materialised as a copy.
    #[error(
        "{path}: tensor `{tensor}` would bring the bytes materialised from this checkpoint to {needed}, above its budget of {budget} (see PickleCheckpoint::materialize_limit: stride-0 views or tensors aliasing one storage?)"
    )]
    MaterializeBudget {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor that would exceed the budget.
        tensor: String,
        /// Bytes materialised including this tensor.
        needed: u64,
        /// The budget in bytes.
        budget: u64,
    },
    /// No dictionary of tensors was found where one was expected.
    #[error("{path}: no state dict found: {reason}")]
    NoStateDict {
        /// The checkpoint.
        path: PathBuf,
        /// What the top-level object is.
        reason: String,
    },
    /// The tensor name asked for is not in the checkpoint.
    #[error("{path}: no tensor named `{name}`")]
    NoSuchTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The requested name.
        name: String,
    },
}

/// Where storages live in the file.
#[derive(Debug, Clone)]
enum Layout {
    /// Zip archive: storage key → entry.
    Zip(BTreeMap<String, zip::Entry>),
    /// Legacy stream: storage key → (offset of the first byte, byte length).
    Legacy(BTreeMap<String, (u64, u64)>),
}

/// An opened PyTorch checkpoint: its object tree, and where each storage's bytes are.
#[derive(Debug, Clone)]
pub struct PickleCheckpoint {
    path: PathBuf,
    root: Value,
    layout: Layout,
    big_endian: bool,
    /// The whole checkpoint, for checkpoints parsed from memory ([`Self::from_bytes`]).
    memory: Option<std::sync::Arc<Vec<u8>>>,
    /// The file's size in bytes.
    file_len: u64,
    /// Bytes the tensors may materialise, all together ([`Self::materialize_limit`]).
    limit: u64,
}

/// The default materialisation budget for a checkpoint of `file_len` bytes: four times the file
/// plus 64 MiB. Real checkpoints materialise about their own size (each storage once, plus the
/// odd tied weight); a few hundred bytes of stride-0 views asking for gigabytes are refused.
pub fn default_materialize_limit(file_len: u64) -> u64 {
    file_len.saturating_mul(4).saturating_add(64 << 20)
}

impl PickleCheckpoint {
    /// Opens and parses `path` (zip or legacy format). Reads the object pickle, not tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PickleError> {
        let path = path.as_ref();
        let io = |source| PickleError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Self::parse(path, &mut BufReader::new(file), len)
    }

    /// Parses a checkpoint held in memory; `name` names it in errors. Tensor reads come from
    /// the same bytes.
    pub fn from_bytes(bytes: Vec<u8>, name: impl AsRef<Path>) -> Result<Self, PickleError> {
        let len = bytes.len() as u64;
        let bytes = std::sync::Arc::new(bytes);
        let mut cursor = std::io::Cursor::new(bytes.as_slice());
        let mut ckpt = Self::parse(name.as_ref(), &mut cursor, len)?;
        ckpt.memory = Some(bytes);
        Ok(ckpt)
    }

    fn parse<R: Read + Seek>(path: &Path, file: &mut R, len: u64) -> Result<Self, PickleError> {
        let io = |source| PickleError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut head = [0u8; 4];
        let got = read_up_to(file, &mut head).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        if got == 4 && head == *b"PK\x03\x04" {
            Self::open_zip(path, file, len)
        } else if got >= 2 && head[0] == 0x80 && head[1] <= 5 {
            Self::open_legacy(path, file, len)
        } else {
            Err(PickleError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: format!("it starts with bytes {:02x?}", &head[..got]),
            })
        }
    }

    fn open_zip<R: Read + Seek>(path: &Path, file: &mut R, len: u64) -> Result<Self, PickleError> {
        let index = zip::read_index(file, path, len)?;
        // The archive's top folder is named after the file it was saved as, so find it from
        // `data.pkl` rather than assuming `archive/`.
        let (pkl_name, pkl) = index
            .entries
            .iter()
            .filter(|(name, _)| name.ends_with("data.pkl"))
            .min_by_key(|(name, _)| name.len())
            .ok_or_else(|| PickleError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "zip archive without a data.pkl entry".into(),
            })?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
        if pkl.len > MAX_PICKLE_BYTES {
            return Err(zip_corrupt(path, format!("data.pkl is {} bytes", pkl.len)));
        }
        let pickle = zip::read_entry(file, path, *pkl)?;
        let mut cursor = std::io::Cursor::new(pickle);
        let root = vm::Machine::new(path).run(&mut cursor)?;
        let big_endian = match index.entries.get(&format!("{prefix}byteorder")) {
            Some(e) => {
                let bytes = zip::read_entry(file, path, *e)?;
                match bytes.as_slice() {
                    b"little" => false,
                    b"big" => true,
                    other => {
                        return Err(zip_corrupt(
                            path,
                            format!("byteorder record is {:?}", String::from_utf8_lossy(other)),
                        ));
                    }
                }
            }
            // Archives written before the record existed are little-endian.
            None => false,
        };
        let data_prefix = format!("{prefix}data/");
        let storages = index
            .entries
            .iter()
            .filter_map(|(name, e)| name.strip_prefix(&data_prefix).map(|k| (k.to_string(), *e)))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            root,
            layout: Layout::Zip(storages),
            big_endian,
            memory: None,
            file_len: len,
            limit: default_materialize_limit(len),
        })
    }

    fn open_legacy<R: Read + Seek>(
        path: &Path,
        file: &mut R,
        len: u64,
    ) -> Result<Self, PickleError> {
        let mut counting = CountingReader {
            inner: file,
            count: 0,
        };
        let magic = vm::Machine::new(path).run(&mut counting)?;
        if magic.as_big_int() != Some(LEGACY_MAGIC as i128) {
            return Err(PickleError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "a pickle that does not start with torch's magic number".into(),
            });
        }
        let version = vm::Machine::new(path).run(&mut counting)?;
        if version.as_int() != Some(LEGACY_PROTOCOL_VERSION) {
            return Err(PickleError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "legacy protocol version {version:?}, expected {LEGACY_PROTOCOL_VERSION}"
                ),
            });
        }
        let sys_info = vm::Machine::new(path).run(&mut counting)?;
        let big_endian = matches!(sys_info.get("little_endian"), Some(Value::Bool(false)));
        let mut machine = vm::Machine::new(path);
        let root = machine.run(&mut counting)?;
        let storage_sizes = machine.storage_sizes().clone();
        let keys = vm::Machine::new(path).run(&mut counting)?;
        let Value::List(keys) = keys else {
            return Err(PickleError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "legacy storage key list is not a list".into(),
            });
        };
        // Storages follow back to back: an 8-byte little-endian element count, then the bytes.
        let mut offset = counting.count;
        let mut storages = BTreeMap::new();
        for key in keys {
            let Value::Str(key) = key else {
                return Err(legacy_corrupt(path, offset, "storage key is not a string"));
            };
            let (dtype, numel) = storage_sizes.get(&key).copied().ok_or_else(|| {
                legacy_corrupt(
                    path,
                    offset,
                    format!("storage `{key}` is listed but never used"),
                )
            })?;
            file_seek(counting.inner, path, offset)?;
            let mut n = [0u8; 8];
            counting
                .inner
                .read_exact(&mut n)
                .map_err(|source| PickleError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            let stored = u64::from_le_bytes(n);
            if stored != numel {
                return Err(legacy_corrupt(
                    path,
                    offset,
                    format!("storage `{key}` holds {stored} elements, the pickle says {numel}"),
                ));
            }
            let bytes = numel
                .checked_mul(dtype.size() as u64)
                .ok_or_else(|| legacy_corrupt(path, offset, "storage size overflows"))?;
            let start = offset
                .checked_add(8)
                .ok_or_else(|| legacy_corrupt(path, offset, "storage offset overflows"))?;
            offset = start
                .checked_add(bytes)
                .ok_or_else(|| legacy_corrupt(path, offset, "storage size overflows"))?;
            storages.insert(key, (start, bytes));
        }
        Ok(Self {
            path: path.to_path_buf(),
            root,
            layout: Layout::Legacy(storages),
            big_endian,
            memory: None,
            file_len: len,
            limit: default_materialize_limit(len),
        })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many bytes [`Self::read_state_dict`] may materialise in all, and
    /// [`Self::read_tensor`] for one tensor: by default [`default_materialize_limit`] of the
    /// file size.
    pub fn materialize_limit(&self) -> u64 {
        self.limit
    }

    /// Sets the materialisation budget, e.g. to the expected parameters' bytes of the model being
    /// loaded when that is known and larger than the default (a checkpoint whose tensors share
    /// storages on purpose).
    pub fn with_materialize_limit(mut self, bytes: u64) -> Self {
        self.limit = bytes;
        self
    }

    /// The file's size in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Refuses a tensor that would bring the bytes materialised to more than the budget.
    fn charge(&self, name: &str, info: &TensorInfo, spent: &mut u64) -> Result<(), PickleError> {
        let bytes = info
            .numel()
            .and_then(|n| n.checked_mul(info.dtype.size()))
            .map_or(u64::MAX, |b| b as u64);
        let needed = spent.saturating_add(bytes);
        if needed > self.limit {
            return Err(PickleError::MaterializeBudget {
                path: self.path.clone(),
                tensor: name.to_string(),
                needed,
                budget: self.limit,
            });
        }
        *spent = needed;
        Ok(())
    }

    /// The whole unpickled object tree (tensors appear as [`Value::Tensor`]).
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The state dict: the tensors of the top-level dictionary in file order, after descending
    /// into `"state_dict"` entries as long as there are any (as diffusers'
    /// `load_single_file_checkpoint` does for Lightning `.ckpt` files). Entries that are not
    /// tensors (training counters, `_extra_state`) are skipped.
    pub fn state_dict(&self) -> Result<Vec<(String, TensorInfo)>, PickleError> {
        let mut node = &self.root;
        while let Some(inner) = node.get("state_dict") {
            node = inner;
        }
        let Value::Dict(items) = node else {
            return Err(PickleError::NoStateDict {
                path: self.path.clone(),
                reason: format!("the top-level object is {}", node.kind()),
            });
        };
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => out.push((k.clone(), t.clone())),
                (k, v) => tracing::debug!(
                    path = %self.path.display(),
                    "skipping non-tensor state dict entry {:?} ({})",
                    k,
                    v.kind()
                ),
            }
        }
        Ok(out)
    }

    /// Reads one tensor's elements as contiguous, row-major, little-endian bytes (the layout
    /// safetensors stores), applying its storage offset and strides.
    pub fn read_tensor(&self, name: &str, info: &TensorInfo) -> Result<Vec<u8>, PickleError> {
        self.charge(name, info, &mut 0)?;
        let storage = self.read_storage(name, info)?;
        vm::materialize(&self.path, name, info, &storage, self.big_endian)
    }

    /// Reads all tensors of [`state_dict`](Self::state_dict), in file order, reading each
    /// storage once. Storages are visited one at a time and dropped once their tensors are
    /// copied out, so peak memory is the tensors plus one storage.
    pub fn read_state_dict(&self) -> Result<Vec<(String, TensorInfo, Vec<u8>)>, PickleError> {
        let tensors = self.state_dict()?;
        let mut by_storage: Vec<(String, Vec<usize>)> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        for (i, (_, info)) in tensors.iter().enumerate() {
            match position.get(&info.storage_key) {
                Some(&p) => by_storage[p].1.push(i),
                None => {
                    position.insert(info.storage_key.clone(), by_storage.len());
                    by_storage.push((info.storage_key.clone(), vec![i]));
                }
            }
        }
        // The whole budget is checked before any storage is read.
        let mut spent = 0u64;
        for (name, info) in &tensors {
            self.charge(name, info, &mut spent)?;
        }
        let mut data: Vec<Option<Vec<u8>>> = vec![None; tensors.len()];
        for (_, members) in &by_storage {
            let (first_name, first_info) = &tensors[members[0]];
            let storage = self.read_storage(first_name, first_info)?;
            for &i in members {
                let (name, info) = &tensors[i];
                data[i] = Some(vm::materialize(
                    &self.path,
                    name,
                    info,
                    &storage,
                    self.big_endian,
                )?);
            }
        }
        Ok(tensors
            .into_iter()
            .zip(data)
            .map(|((name, info), bytes)| (name, info, bytes.unwrap_or_default()))
            .collect())
    }

    fn read_storage(&self, name: &str, info: &TensorInfo) -> Result<Vec<u8>, PickleError> {
        let missing = || PickleError::MissingStorage {
            path: self.path.clone(),
            key: info.storage_key.clone(),
            tensor: name.to_string(),
        };
        let io = |source| PickleError::Io {
            path: self.path.clone(),
            source,
        };
        match &self.memory {
            Some(bytes) => {
                let mut cursor = std::io::Cursor::new(bytes.as_slice());
                self.read_storage_from(&mut cursor, &info.storage_key, missing)
            }
            None => {
                let mut file = BufReader::new(File::open(&self.path).map_err(io)?);
                self.read_storage_from(&mut file, &info.storage_key, missing)
            }
        }
    }

    fn read_storage_from<R: Read + Seek>(
        &self,
        file: &mut R,
        key: &str,
        missing: impl Fn() -> PickleError,
    ) -> Result<Vec<u8>, PickleError> {
        let io = |source| PickleError::Io {
            path: self.path.clone(),
            source,
        };
        match &self.layout {
            Layout::Zip(entries) => {
                let entry = entries.get(key).ok_or_else(&missing)?;
                zip::read_entry(file, &self.path, *entry)
            }
            Layout::Legacy(storages) => {
                let (offset, len) = storages.get(key).ok_or_else(missing)?;
                file.seek(SeekFrom::Start(*offset)).map_err(io)?;
                let mut buf = Vec::new();
                file.take(*len).read_to_end(&mut buf).map_err(io)?;
                if buf.len() as u64 != *len {
                    return Err(legacy_corrupt(
                        &self.path,
                        *offset,
                        "the file ends inside a storage",
                    ));
                }
                Ok(buf)
            }
        }
    }
}

fn zip_corrupt(path: &Path, reason: String) -> PickleError {
    PickleError::CorruptArchive {
        path: path.to_path_buf(),
        reason,
    }
}

fn legacy_corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> PickleError {
    PickleError::Malformed {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn file_seek<R: Seek>(r: &mut R, path: &Path, offset: u64) -> Result<(), PickleError> {
    r.seek(SeekFrom::Start(offset))
        .map(|_| ())
        .map_err(|source| PickleError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Counts the bytes read so the legacy format knows where the storages start.
struct CountingReader<'a, R> {
    inner: &'a mut R,
    count: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
