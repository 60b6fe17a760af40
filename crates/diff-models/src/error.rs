//! The error type of diff-models.

/// What went wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A config value this implementation does not support.
    #[error("{model}: config key `{key}` = {value} is not supported: {reason}")]
    UnsupportedConfig {
        /// The model class, e.g. `UNet2DConditionModel`.
        model: String,
        /// The config key, verbatim.
        key: String,
        /// The offending value, as JSON.
        value: String,
        /// Why, or what is supported.
        reason: String,
    },
    /// A file could not be opened, mapped or read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file or folder involved.
        path: String,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A weight file or shard index is malformed (corrupt safetensors header, bad JSON,
    /// out-of-range offsets, a shard name that escapes the folder).
    #[error("invalid weight file `{path}`: {reason}")]
    WeightFile {
        /// The file involved.
        path: String,
        /// What is wrong, with expected vs got where it applies.
        reason: String,
    },
    /// No weight file to load in a component folder (the message is the owning library's:
    /// "Error no file named … found in directory …"), a variant no component has, or a shard
    /// an index names that is missing.
    #[error(transparent)]
    WeightFiles(#[from] diff_format::FormatError),
    /// A tensor in a weight file has a dtype the loader cannot convert to the model's dtype.
    #[error("tensor `{key}` in `{path}` has dtype {got}; expected one of {expected}")]
    UnsupportedDtype {
        /// The file involved.
        path: String,
        /// The tensor name.
        key: String,
        /// The dtype found on disk.
        got: String,
        /// The dtypes that are accepted.
        expected: String,
    },
    /// A sharded PyTorch pickle checkpoint (`*.bin.index.json`) was selected; only single
    /// `.bin` files are read.
    #[error(
        "`{path}` indexes sharded PyTorch pickle checkpoints, which are not supported (convert them to safetensors)"
    )]
    PickleNotSupported {
        /// The file involved.
        path: String,
    },
    /// The checkpoint's keys or shapes do not match the model (strict loading).
    #[error("cannot load {model} from `{path}`: {summary}")]
    StateDictMismatch {
        /// The model class.
        model: String,
        /// The component folder or weight file.
        path: String,
        /// Missing, unexpected and mis-shaped keys with expected vs got shapes and hints.
        summary: String,
    },
    /// A forward input has the wrong shape, length or value.
    #[error("{model}: invalid input: {reason}")]
    InvalidInput {
        /// The model class.
        model: String,
        /// What is wrong, with expected vs got.
        reason: String,
    },
    /// A LoRA adapter operation failed (wrong shapes, an unknown or fused adapter).
    #[error("adapter `{adapter}`: {reason}")]
    Adapter {
        /// The adapter name.
        adapter: String,
        /// What is wrong, with expected vs got.
        reason: String,
    },
    /// `set_attn_processor` got a map whose keys do not match the model's processors.
    #[error("{model}: attention processor `{key}`: {reason}")]
    AttnProcessor {
        /// The model class.
        model: String,
        /// The processor name (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor`).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An IP-Adapter checkpoint does not fit (a missing, unexpected or mis-shaped key, a
    /// variant not supported).
    #[error("IP-Adapter `{checkpoint}`: `{key}`: {reason}")]
    IpAdapter {
        /// The checkpoint (file or repo).
        checkpoint: String,
        /// The key (`ip_adapter.1.to_k_ip.weight`, `image_proj.proj.weight`).
        key: String,
        /// What is wrong, with expected vs got.
        reason: String,
    },
    /// A config file could not be parsed.
    #[error("invalid config `{path}`: {reason}")]
    Config {
        /// The config file.
        path: String,
        /// The parse error.
        reason: String,
    },
}
