//! The one error type of `diff-format`.
//!
//! Every message names the file (or the origin string the caller gave for in-memory text), the
//! key involved, and what was expected versus what was found, so a user can fix their folder
//! without reading our source.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing the diffusers file format.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Reading or writing a file failed at the operating-system level.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file that must hold JSON does not parse as JSON.
    #[error("{} is not a valid JSON file: {message} (line {line}, column {column})", path.display())]
    InvalidJson {
        /// The file (or origin) involved.
        path: PathBuf,
        /// serde_json's description of the problem.
        message: String,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// 1-based column of the problem (0 when unknown).
        column: usize,
    },

    /// The JSON document has the wrong shape at its top level or at one key.
    #[error("{}: key `{key}`: expected {expected}, got {got}", path.display())]
    UnexpectedJson {
        /// The file (or origin) involved.
        path: PathBuf,
        /// The key (a dotted path; `.` for the document itself).
        key: String,
        /// What the format requires there.
        expected: String,
        /// What the file holds there.
        got: String,
    },

    /// A config parsed as JSON but a key holds a value of the wrong type for the typed struct.
    #[error("{}: config key `{key}`: {message}", path.display())]
    ConfigValue {
        /// The file (or origin) involved.
        path: PathBuf,
        /// The key whose value was rejected (a dotted path, `.` when serde could not tell).
        key: String,
        /// serde's description, which says the expected type and what was found.
        message: String,
    },

    /// A typed config could not be turned back into JSON (it did not serialize to an object).
    #[error("config for {what} does not serialize to a JSON object: {message}")]
    ConfigSerialize {
        /// What was being written (file name or class name).
        what: String,
        /// Why.
        message: String,
    },

    /// The pipeline or one of its components needs custom Python code, which we cannot run.
    #[error(
        "{}: custom code is not supported: {what} (only the built-in diffusers/transformers classes can be loaded)",
        path.display()
    )]
    CustomCode {
        /// The `model_index.json` (or folder) that asks for custom code.
        path: PathBuf,
        /// Which entry asks for it, e.g. `_class_name = ["pipeline", "MyPipeline"]`.
        what: String,
    },

    /// A `variant` was requested but no component in the repository has files for it.
    #[error(
        "You are trying to load model files of the `variant={variant}`, but no such modeling files are available in {source_name}."
    )]
    NoSuchVariant {
        /// The requested variant, e.g. `fp16`.
        variant: String,
        /// The folder or repository that was searched.
        source_name: String,
    },

    /// `use_safetensors=true` was requested but some component has no safetensors weights.
    #[error(
        "Could not find the necessary `safetensors` weights in {files:?} (variant={variant:?}) of {source_name}"
    )]
    SafetensorsNotFound {
        /// The folder or repository that was searched.
        source_name: String,
        /// The model files that were considered (diffusers prints these).
        files: Vec<String>,
        /// The requested variant, if any.
        variant: Option<String>,
    },

    /// A shard index names a shard that is not a bare file name (path traversal attempt).
    #[error(
        "{}: shard file name `{name}` for tensor `{tensor}` must be a bare file name (no `/`, `\\`, `..` or absolute path)",
        path.display()
    )]
    UnsafeShardName {
        /// The index file.
        path: PathBuf,
        /// The tensor whose shard name was rejected.
        tensor: String,
        /// The rejected shard name.
        name: String,
    },

    /// A shard index names a shard file that does not exist.
    #[error(
        "{} names shard `{shard}`, which does not exist beside it (required according to the checkpoint index)",
        index.display()
    )]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The missing shard's file name.
        shard: String,
    },

    /// None of the weight files a model may load exists in its folder.
    #[error("Error no file named {file} found in directory {}.", folder.display())]
    WeightsNotFound {
        /// The component folder.
        folder: PathBuf,
        /// The last file name tried (the one diffusers names).
        file: String,
        /// Every file name tried, in order.
        tried: Vec<String>,
    },

    /// None of the weight files a transformers model may load exists in its folder, pickle
    /// allowed (transformers' message names both formats).
    #[error("Error no file named {safetensors}, or {pickle}, found in directory {}.", folder.display())]
    TransformersWeightsNotFound {
        /// The component folder.
        folder: PathBuf,
        /// The safetensors name looked for (`model[.V].safetensors`).
        safetensors: String,
        /// The pickle name looked for (`pytorch_model[.V].bin`).
        pickle: String,
    },

    /// A pipeline was asked for a `variant` that no component folder has a file of
    /// (`DiffusionPipeline.from_pretrained` on a local folder).
    #[error(
        "You are trying to load the model files of the `variant={variant}`, but no such modeling files are available."
    )]
    NoVariantModelFiles {
        /// The requested variant, e.g. `fp16`.
        variant: String,
        /// The pipeline folder.
        folder: PathBuf,
    },

    /// An output path cannot be written safely: its folder is missing, or something other than
    /// a regular file (a folder, a FIFO, a device, a socket) is already there.
    #[error("cannot write {}: {reason}", path.display())]
    OutputPath {
        /// The path as given.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },

    /// A safetensors header is malformed; `kind` says how.
    #[error("{}: invalid safetensors header: {kind}", path.display())]
    SafetensorsHeader {
        /// The safetensors file.
        path: PathBuf,
        /// What is wrong.
        kind: HeaderError,
    },
}

/// The ways a safetensors header can be corrupt. Each names the tensor and numbers involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file is shorter than the 8-byte length prefix.
    #[error("file is {len} bytes, too short for the 8-byte header length")]
    TooShort {
        /// File length in bytes.
        len: u64,
    },
    /// The header length prefix is larger than the cap or than the file.
    #[error("header length {header_len} exceeds {limit} (cap or file size)")]
    HeaderTooLarge {
        /// The length written in the file.
        header_len: u64,
        /// The largest acceptable length.
        limit: u64,
    },
    /// The header bytes are not UTF-8 JSON.
    #[error("header is not valid JSON: {0}")]
    Json(String),
    /// The header JSON is valid but not the expected shape.
    #[error("header entry `{key}`: expected {expected}")]
    Shape {
        /// The tensor name or `__metadata__`.
        key: String,
        /// What the entry should look like.
        expected: String,
    },
    /// A tensor's dtype string is unknown.
    #[error("tensor `{tensor}`: unknown dtype `{dtype}`")]
    BadDtype {
        /// The tensor name.
        tensor: String,
        /// The dtype string found.
        dtype: String,
    },
    /// Multiplying out a tensor's shape and element size overflows 64 bits.
    #[error(
        "tensor `{tensor}`: shape {} overflows when computing its byte size",
        short_shape(shape)
    )]
    Overflow {
        /// The tensor name.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// A tensor's byte range does not match its shape and dtype.
    #[error(
        "tensor `{tensor}`: byte range {begin}..{end} holds {got} bytes, but shape and dtype need {expected}"
    )]
    SizeMismatch {
        /// The tensor name.
        tensor: String,
        /// Start offset in the data section.
        begin: u64,
        /// End offset in the data section.
        end: u64,
        /// Bytes implied by shape × dtype.
        expected: u64,
        /// Bytes in the range.
        got: u64,
    },
    /// A tensor's byte range is reversed or beyond the data section.
    #[error(
        "tensor `{tensor}`: byte range {begin}..{end} is outside the data section of {data_len} bytes"
    )]
    OutOfRange {
        /// The tensor name.
        tensor: String,
        /// Start offset.
        begin: u64,
        /// End offset.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two tensors' byte ranges overlap, or leave a gap.
    #[error(
        "tensor `{tensor}` starts at {begin}, but the previous tensor ends at {expected_begin} (overlap or gap)"
    )]
    NotContiguous {
        /// The tensor name.
        tensor: String,
        /// Its start offset.
        begin: u64,
        /// Where it should start.
        expected_begin: u64,
    },
    /// The tensors do not cover the whole data section.
    #[error("tensors cover {covered} bytes but the data section holds {data_len}")]
    NotCovering {
        /// Bytes covered by tensors.
        covered: u64,
        /// Bytes in the data section.
        data_len: u64,
    },
}

impl FormatError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a serde_json parse error with the file it concerns.
    pub fn json(path: impl Into<PathBuf>, err: &serde_json::Error) -> Self {
        FormatError::InvalidJson {
            path: path.into(),
            message: err.to_string(),
            line: err.line(),
            column: err.column(),
        }
    }
}

/// A shape for a message: in full up to 8 dimensions, else its first 8 and the count, so a
/// hostile 100,000-dimension shape gives a one-line message rather than 300 KB.
pub fn short_shape<T: std::fmt::Debug>(shape: &[T]) -> String {
    const SHOWN: usize = 8;
    if shape.len() <= SHOWN {
        return format!("{shape:?}");
    }
    let head: Vec<String> = shape[..SHOWN].iter().map(|d| format!("{d:?}")).collect();
    format!("[{}, ... ({} dimensions)]", head.join(", "), shape.len())
}

/// Describes a JSON value's type in words for error messages ("a string", "an array" ...).
pub(crate) fn describe(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(a) => format!("an array of {} elements", a.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}
