//! The error type of diff-pipelines.

use std::path::PathBuf;

/// What went wrong while loading or running a pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A file could not be read or written.
    #[error("cannot access `{path}`: {error}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The operating-system error (in the message, not chained, so it prints once).
        error: std::io::Error,
    },
    /// A latents file (`--latents`, `--image-latents`) is not one 4-dimensional float tensor.
    #[error("invalid latents file `{path}`: {message}")]
    Latents {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it (format, tensor names, dtype, shape).
        message: String,
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
    Tokenizer {
        /// The tokenizer folder or file.
        path: PathBuf,
        /// What is wrong, with expected vs got.
        message: String,
    },
    /// An image file could not be decoded or encoded.
    #[error("cannot decode or encode image `{path}`: {message}")]
    Image {
        /// The image file (or `<memory>` for in-memory data).
        path: PathBuf,
        /// What the decoder reported.
        message: String,
    },
    /// A call argument is out of range or inconsistent (height not a multiple of 8, a
    /// generator list whose length is not the batch size, a negative prompt list of the wrong
    /// length, strength outside [0, 1]).
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument {
        /// The argument, named as in diffusers' `__call__`.
        name: String,
        /// Expected vs got.
        message: String,
    },
    /// `model_index.json` names a pipeline class this crate does not implement.
    #[error("unknown pipeline class `{class_name}` in `{path}`; supported classes: {supported}")]
    UnknownPipeline {
        /// The `_class_name` found.
        class_name: String,
        /// The model_index.json involved.
        path: PathBuf,
        /// The supported class names, comma separated.
        supported: String,
    },
    /// A component entry names a class this crate cannot load for that slot.
    #[error(
        "component `{component}` of `{path}` is `[{library}, {class_name}]`; supported: {supported}"
    )]
    UnsupportedComponent {
        /// The component name (`unet`, `scheduler`, ...).
        component: String,
        /// The library string of the entry.
        library: String,
        /// The class name of the entry.
        class_name: String,
        /// The model_index.json involved.
        path: PathBuf,
        /// The supported classes for that slot, comma separated.
        supported: String,
    },
    /// A component the pipeline needs is absent (`[null, null]` or dropped, and not passed in).
    #[error(
        "pipeline {pipeline} expected component `{component}`, but it was not loaded or passed"
    )]
    MissingComponent {
        /// The pipeline class.
        pipeline: String,
        /// The missing component.
        component: String,
    },
    /// A folder or repo could not be found, or lacks what was asked for.
    #[error("cannot load `{what}`: {message}")]
    NotFound {
        /// The folder, repo id or file involved.
        what: String,
        /// What was looked for.
        message: String,
    },
    /// An input image is refused before decoding (from diff-image: Pillow's
    /// decompression-bomb limit). Other image errors map to [`PipelineError::Io`],
    /// [`PipelineError::Image`] and [`PipelineError::InvalidArgument`].
    #[error(transparent)]
    ImageInput(Box<diff_image::ImageError>),
    /// A Hub repo could not be resolved or downloaded (from diff-hub).
    #[error(transparent)]
    Hub(Box<diff_hub::HubError>),
    /// A scheduler could not be built or stepped (from diff-schedulers).
    #[error(transparent)]
    Scheduler(Box<diff_schedulers::SchedulerError>),
    /// A diffusers-format file could not be read (from diff-format).
    #[error(transparent)]
    Format(Box<diff_format::FormatError>),
    /// A model could not be built, loaded or run (from diff-models).
    #[error(transparent)]
    Model(Box<diff_models::ModelError>),
    /// A LoRA file could not be read, converted or attached (diff-lora's error, naming the
    /// file or key).
    #[error(transparent)]
    Lora(Box<diff_lora::LoraError>),
    /// A single-file checkpoint could not be read, recognised or converted (from
    /// diff-checkpoint: a corrupt file, an unknown architecture, a tensor the conversion needs).
    #[error(transparent)]
    Convert(Box<diff_checkpoint::CheckpointError>),
    /// A component of a single-file checkpoint could not be converted (diffusers'
    /// `SingleFileComponentError`): typically the checkpoint does not contain it (a file
    /// without its VAE), and it has to be loaded separately and passed in.
    #[error(
        "cannot load `{component}` ({class_name}) from the single file `{path}`: {reason}. Load it separately and pass it in (`PassedComponents::{component}`, diffusers' `{component}=...`)"
    )]
    SingleFileComponent {
        /// The component name (`vae`, `text_encoder`, ...).
        component: String,
        /// Its class in the config's model_index.json.
        class_name: String,
        /// The checkpoint.
        path: PathBuf,
        /// What the conversion reported.
        reason: String,
    },
}

impl From<diff_checkpoint::CheckpointError> for PipelineError {
    fn from(e: diff_checkpoint::CheckpointError) -> Self {
        PipelineError::Convert(Box::new(e))
    }
}

impl From<diff_image::ImageError> for PipelineError {
    fn from(e: diff_image::ImageError) -> Self {
        use diff_image::ImageError as E;
        match e {
            E::Io { path, error } => PipelineError::Io { path, error },
            E::Decode { path, message } => PipelineError::Image { path, message },
            E::InvalidArgument { name, message } => {
                PipelineError::InvalidArgument { name, message }
            }
            other => PipelineError::ImageInput(Box::new(other)),
        }
    }
}

impl From<diff_tokenizer::TokenizerError> for PipelineError {
    fn from(e: diff_tokenizer::TokenizerError) -> Self {
        use diff_tokenizer::TokenizerError as E;
        match e {
            E::Io { path, error } => PipelineError::Io { path, error },
            E::Json { path, message } => PipelineError::Json { path, message },
            E::Invalid { path, message } => PipelineError::Tokenizer { path, message },
            other => PipelineError::Tokenizer {
                path: std::path::PathBuf::new(),
                message: other.to_string(),
            },
        }
    }
}

// The wrapped errors are boxed to keep `Result<_, PipelineError>` small.
impl From<diff_hub::HubError> for PipelineError {
    fn from(e: diff_hub::HubError) -> Self {
        PipelineError::Hub(Box::new(e))
    }
}

impl From<diff_schedulers::SchedulerError> for PipelineError {
    fn from(e: diff_schedulers::SchedulerError) -> Self {
        PipelineError::Scheduler(Box::new(e))
    }
}

impl From<diff_format::FormatError> for PipelineError {
    fn from(e: diff_format::FormatError) -> Self {
        PipelineError::Format(Box::new(e))
    }
}

impl From<diff_models::ModelError> for PipelineError {
    fn from(e: diff_models::ModelError) -> Self {
        PipelineError::Model(Box::new(e))
    }
}

impl PipelineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PipelineError::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, err: &serde_json::Error) -> Self {
        PipelineError::Json {
            path: path.into(),
            message: err.to_string(),
        }
    }

    pub(crate) fn arg(name: &str, message: impl Into<String>) -> Self {
        PipelineError::InvalidArgument {
            name: name.to_string(),
            message: message.into(),
        }
    }
}
