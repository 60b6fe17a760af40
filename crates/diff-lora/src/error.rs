//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong reading or converting a LoRA file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoraError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The safetensors file is malformed.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The pickle checkpoint could not be read (or was refused).
    #[error(transparent)]
    Pickle(#[from] diff_format::pickle::PickleError),
    /// A tensor has a dtype a LoRA cannot hold.
    #[error("{path}: tensor `{key}` has dtype {dtype}; LoRA weights must be floating point")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// Its dtype.
        dtype: String,
    },
    /// No weight file was found where one was expected.
    #[error("{path}: no LoRA weight file found ({message})")]
    NoWeightFile {
        /// The folder or file looked at.
        path: PathBuf,
        /// What was looked for.
        message: String,
    },
    /// The `lora_adapter_metadata` of the file is not valid JSON of the expected shape.
    #[error("{path}: invalid `lora_adapter_metadata`: {message}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The state dict is not a LoRA (diffusers' check: every key contains `lora`).
    #[error(
        "Invalid LoRA checkpoint. Make sure all LoRA param names contain `'lora'` substring (key `{key}` does not)."
    )]
    NotLora {
        /// The first key without `lora`.
        key: String,
    },
    /// A kohya / LDM key could not be converted.
    #[error("LoRA key `{key}` could not be converted: {message}")]
    Conversion {
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
    /// The LoRA does not fit the model it is loaded into.
    #[error("{component}: LoRA key `{key}`: {message}")]
    Mismatch {
        /// `unet`, `text_encoder`, `text_encoder_2`.
        component: String,
        /// The offending key.
        key: String,
        /// What does not fit.
        message: String,
    },
    /// A feature of the file this implementation does not support yet.
    #[error("{what} is not supported yet")]
    Unsupported {
        /// The feature.
        what: String,
    },
    /// An argument is wrong (adapter name in use, both alphas and metadata, ...).
    #[error("{0}")]
    Argument(String),
}
