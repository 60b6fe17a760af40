//! The crate's error type.

use std::path::PathBuf;

/// Errors of saving, conversion and validation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The output folder of a save cannot be used: a file is there, or it lies inside the
    /// folder being saved.
    #[error("output folder {path}: {reason}")]
    OutputFolder {
        /// The output path as given.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A `max_shard_size` string could not be parsed (huggingface_hub's `parse_size_to_int` rules).
    #[error(
        "invalid max_shard_size `{value}`: {reason} (expected e.g. \"10GB\", \"200KB\" or a number of bytes)"
    )]
    InvalidSize {
        /// The string given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A weights file is corrupt or inconsistent.
    #[error("{path}: {reason}")]
    BadWeights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A component folder has no weights file this crate can read.
    #[error("{folder}: no weights found (looked for {looked_for})")]
    NoWeights {
        /// The component folder.
        folder: PathBuf,
        /// The names tried.
        looked_for: String,
    },
    /// A JSON file is missing, malformed or of the wrong shape.
    #[error("{path}: {reason}")]
    BadJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor cannot be cast to the requested dtype.
    #[error("tensor `{tensor}`: cannot cast {from} to {to}")]
    UnsupportedCast {
        /// The tensor name.
        tensor: String,
        /// Its dtype.
        from: String,
        /// The dtype asked for.
        to: String,
    },
    /// A variant name that would escape the folder or break file-name parsing.
    #[error(
        "invalid variant `{0}`: it must be non-empty and contain only letters, digits, `_` and `-`"
    )]
    InvalidVariant(String),
    /// Reading a PyTorch pickle checkpoint failed.
    #[error(transparent)]
    Pickle(#[from] diff_format::pickle::PickleError),
    /// Writing safetensors failed.
    #[error("writing {path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors error.
        reason: String,
    },
    /// The single-file checkpoint does not look like any supported architecture.
    #[error("{path}: cannot detect the model family: {reason}")]
    UnknownArchitecture {
        /// The checkpoint.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// A key the conversion needs is absent from the checkpoint.
    #[error("{path}: checkpoint key `{key}` is missing (needed for {needed_for})")]
    MissingKey {
        /// The checkpoint.
        path: PathBuf,
        /// The LDM key.
        key: String,
        /// What it was needed for.
        needed_for: String,
    },
    /// A tensor has a shape the conversion cannot handle.
    #[error("{path}: tensor `{key}` has shape {got:?}, expected {expected}")]
    BadShape {
        /// The checkpoint.
        path: PathBuf,
        /// The key.
        key: String,
        /// Its shape.
        got: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A Hub operation (create, download, upload) failed.
    #[error("hub: {0}")]
    Hub(String),
    /// Saved and original differ (validation).
    #[error("validation failed: {0}")]
    Mismatch(String),
}

impl ConvertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ConvertError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<diff_checkpoint::CheckpointError> for ConvertError {
    fn from(e: diff_checkpoint::CheckpointError) -> Self {
        use diff_checkpoint::CheckpointError as E;
        match e {
            E::Io { path, source } => ConvertError::Io { path, source },
            E::BadWeights { path, reason } => ConvertError::BadWeights { path, reason },
            E::BadJson { path, reason } => ConvertError::BadJson { path, reason },
            E::Pickle(e) => ConvertError::Pickle(e),
            E::UnknownArchitecture { path, reason } => {
                ConvertError::UnknownArchitecture { path, reason }
            }
            E::MissingKey {
                path,
                key,
                needed_for,
            } => ConvertError::MissingKey {
                path,
                key,
                needed_for,
            },
            E::BadShape {
                path,
                key,
                got,
                expected,
            } => ConvertError::BadShape {
                path,
                key,
                got,
                expected,
            },
            other => ConvertError::BadWeights {
                path: std::path::PathBuf::new(),
                reason: other.to_string(),
            },
        }
    }
}
