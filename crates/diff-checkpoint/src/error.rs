//! The error type of diff-checkpoint.

use std::path::PathBuf;

/// Why a checkpoint could not be read, recognised or converted. The messages are the ones
/// diff-convert's `ConvertError` prints for the same cases (it maps each variant to its own).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A weights file is corrupt or inconsistent.
    #[error("{path}: {reason}")]
    BadWeights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A JSON file (a shard index) is missing, malformed or of the wrong shape.
    #[error("{path}: {reason}")]
    BadJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading a PyTorch pickle checkpoint failed.
    #[error(transparent)]
    Pickle(#[from] diff_format::pickle::PickleError),
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
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }
}
