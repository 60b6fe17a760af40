//! The error type of diff-tokenizer.

use std::path::PathBuf;

/// Why a tokenizer folder could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot access `{path}`: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating-system error (in the message, not chained, so it prints once).
        error: std::io::Error,
    },
    /// A JSON file is malformed or does not have the expected shape.
    #[error("invalid JSON in `{path}`: {message}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// What serde reported (line, column, expected vs got).
        message: String,
    },
    /// A tokenizer folder is incomplete or its files disagree (a merge whose parts are not in
    /// the vocabulary, a tokenizer.json that is not a CLIP BPE, a missing vocabulary file).
    #[error("invalid tokenizer in `{path}`: {message}")]
    Invalid {
        /// The tokenizer folder or file.
        path: PathBuf,
        /// What is wrong, with expected vs got.
        message: String,
    },
}

impl TokenizerError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        TokenizerError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, err: &serde_json::Error) -> Self {
        TokenizerError::Json {
            path: path.into(),
            message: err.to_string(),
        }
    }
}
