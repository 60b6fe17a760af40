//! Loading diffusers/transformers checkpoints into burn modules.
//!
//! # Contract for model code
//! A module's field names are the PyTorch state-dict keys (`down_blocks.0.resnets.1.conv1.weight`):
//! build models from burn-nn layers (`Linear` with the default row layout, `Conv2d`,
//! `GroupNorm`, `LayerNorm`, `Embedding`) or plain `Param<Tensor<D>>` fields, and `Vec`s for
//! `nn.ModuleList`. The loader maps the two things that differ between PyTorch and burn, by layer
//! type and never by shape: `Linear.weight` is transposed (`[out, in]` -> `[in, out]`), and norm
//! `gamma`/`beta` are PyTorch's `weight`/`bias`. Enum wrappers add no path segment.
//!
//! # Files
//! [`load_component`] picks the files of a component folder with diff-format's resolver
//! ([`diff_format::model_files::resolve_model_files`]: diffusers' or transformers' rules, the
//! variant, `use_safetensors`) and reads a single `.safetensors` file or every shard of a
//! `.safetensors.index.json` ([`open_weights`]); F32, F16,
//! BF16 (and F64) on disk become the dtype asked for in [`LoadOptions::dtype`] on the module's
//! device. A single `.bin` pickle checkpoint is read through `diff_format::pickle`'s restricted
//! reader (tensor storage only; any other global is refused, nothing is executed); a sharded
//! pickle index gives [`ModelError::PickleNotSupported`].
//!
//! # Strictness
//! Strict by default: a missing, unexpected or mis-shaped key is a
//! [`ModelError::StateDictMismatch`] that lists them (with "did you mean" hints).
//! [`LoadOptions::lenient`] accepts missing and unexpected keys (missing ones keep their
//! random initialisation, as diffusers' warning says) and returns them in the [`LoadReport`];
//! shape mismatches still fail unless [`LoadOptions::ignore_mismatched_sizes`] is set.
//!
//! # Memory
//! Files are memory-mapped ([`source::TensorSource`]); nothing is read up front but the
//! headers. Each parameter is copied once, from the mapping into its own host buffer (converted
//! and, for Linear weights, transposed in that same pass), handed to the device, and the
//! mapping's pages for that tensor are released (`MADV_DONTNEED`) right away. burn parameters
//! of a freshly built module are lazy, and loading replaces them before they are ever
//! initialised, so no random weights are allocated either. Peak RSS therefore stays near the
//! size of the weights plus one tensor, not twice the weights.

mod apply;
pub mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::DType;

use crate::ModelError;
pub use diff_format::model_files::ModelWeights;
pub use diff_format::weights::Naming;
use diff_format::weights::WeightFormat;
pub use source::{RawDType, TensorInfo, TensorSource};

/// A checkpoint key rewrite, e.g. transformers' `PrefixChange(prefix_to_remove="text_model")`.
pub type KeyRename = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How to load a checkpoint.
#[derive(Clone)]
pub struct LoadOptions {
    /// The float dtype of the loaded parameters on the device (default `F32`).
    pub dtype: DType,
    /// Missing or unexpected keys are an error (default `true`).
    pub strict: bool,
    /// Shape mismatches leave the parameter as initialised instead of failing (default `false`),
    /// like diffusers' `ignore_mismatched_sizes=True`.
    pub ignore_mismatched_sizes: bool,
    /// Checkpoint keys (after renames) that are never reported as unexpected: a key is ignored
    /// when it ends with one of these strings (transformers' `_keys_to_ignore_on_load_unexpected`).
    pub ignore_unexpected: Vec<String>,
    /// Keep float parameters whose dtype on disk is [`LoadOptions::dtype`] in the
    /// memory-mapped safetensors file (CPU device only; others are copied as usual). The
    /// report's [`LoadReport::mapped`] then holds the mappings, for [`crate::offload`].
    pub map_weights: bool,
    renames: Vec<KeyRename>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("dtype", &self.dtype)
            .field("strict", &self.strict)
            .field("ignore_mismatched_sizes", &self.ignore_mismatched_sizes)
            .field("ignore_unexpected", &self.ignore_unexpected)
            .field("renames", &self.renames.len())
            .finish()
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            strict: true,
            ignore_mismatched_sizes: false,
            ignore_unexpected: Vec::new(),
            map_weights: false,
            renames: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// Strict f32 loading.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads parameters as `dtype` (F32, F16 or BF16).
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Accepts missing and unexpected keys and reports them instead of failing.
    pub fn lenient(mut self) -> Self {
        self.strict = false;
        self
    }

    /// Adds a checkpoint key rewrite; rewrites apply in the order added, each to the result of
    /// the previous one, and `None` keeps the key.
    pub fn with_rename(mut self, rename: KeyRename) -> Self {
        self.renames.push(rename);
        self
    }

    /// Removes `prefix.` from checkpoint keys that start with it (transformers' `PrefixChange`).
    pub fn strip_prefix(self, prefix: &str) -> Self {
        let with_dot = format!("{prefix}.");
        self.with_rename(Arc::new(move |key: &str| {
            key.strip_prefix(with_dot.as_str()).map(str::to_string)
        }))
    }

    /// Never reports checkpoint keys ending with `suffix` as unexpected.
    pub fn ignore_unexpected_suffix(mut self, suffix: &str) -> Self {
        self.ignore_unexpected.push(suffix.to_string());
        self
    }

    pub(crate) fn rename_key(&self, key: &str) -> String {
        let mut key = key.to_string();
        for rename in &self.renames {
            if let Some(new) = rename(&key) {
                key = new;
            }
        }
        key
    }

    pub(crate) fn is_ignored_unexpected(&self, key: &str) -> bool {
        self.ignore_unexpected
            .iter()
            .any(|s| key.ends_with(s.as_str()))
    }
}

/// A key whose checkpoint shape differs from the model's (both in PyTorch layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The state-dict key.
    pub key: String,
    /// The shape the model expects.
    pub expected: Vec<usize>,
    /// The shape in the checkpoint.
    pub found: Vec<usize>,
}

/// What a load did: how many tensors were loaded and which keys did not match.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The file or index loaded from.
    pub source: PathBuf,
    /// Number of parameters loaded.
    pub loaded: usize,
    /// Model keys the checkpoint lacks.
    pub missing: Vec<String>,
    /// Checkpoint keys the model does not have.
    pub unexpected: Vec<String>,
    /// Keys present in both with different shapes.
    pub mismatched: Vec<ShapeMismatch>,
    /// The mappings parameters were left in ([`LoadOptions::map_weights`]); empty otherwise.
    pub mapped: crate::offload::MappedWeights,
}

impl LoadReport {
    /// Whether every key matched.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// A readable description of the mismatches, with "did you mean" hints pairing each missing
    /// key with the closest unexpected one. At most [`LoadReport::LISTED`] keys of each kind are
    /// named (the fields keep them all), so a wholly wrong checkpoint still gives a readable
    /// message quickly.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            let items: Vec<String> = self
                .missing
                .iter()
                .take(Self::LISTED)
                .map(|k| match closest(k, &self.unexpected) {
                    Some(hint) => format!("`{k}` (did you mean `{hint}`?)"),
                    None => format!("`{k}`"),
                })
                .collect();
            parts.push(format!(
                "{} missing key(s): {}{}",
                self.missing.len(),
                items.join(", "),
                more(self.missing.len())
            ));
        }
        if !self.unexpected.is_empty() {
            let items: Vec<String> = self
                .unexpected
                .iter()
                .take(Self::LISTED)
                .map(|k| format!("`{k}`"))
                .collect();
            parts.push(format!(
                "{} unexpected key(s): {}{}",
                self.unexpected.len(),
                items.join(", "),
                more(self.unexpected.len())
            ));
        }
        if !self.mismatched.is_empty() {
            let items: Vec<String> = self
                .mismatched
                .iter()
                .take(Self::LISTED)
                .map(|m| {
                    format!(
                        "`{}` expected shape {:?}, found {:?} in the checkpoint",
                        m.key, m.expected, m.found
                    )
                })
                .collect();
            parts.push(format!(
                "{} shape mismatch(es): {}{}",
                self.mismatched.len(),
                items.join(", "),
                more(self.mismatched.len())
            ));
        }
        if parts.is_empty() {
            "all keys matched".to_string()
        } else {
            parts.join("; ")
        }
    }

    /// How many keys of each kind [`LoadReport::summary`] names.
    pub const LISTED: usize = 20;
}

fn more(total: usize) -> String {
    if total > LoadReport::LISTED {
        format!(" and {} more", total - LoadReport::LISTED)
    } else {
        String::new()
    }
}

/// The closest of at most 2000 candidates (edit distance), if it is reasonably close.
fn closest<'a>(key: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .take(2000)
        .map(|c| (levenshtein(key, c), c))
        .filter(|(d, _)| *d <= key.len().max(4) / 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The weight files a component folder loads, as the library named by `naming` resolves them
/// for `variant` and `use_safetensors` (diff-format's resolver; its error names the folder and
/// the file looked for, in the library's words).
pub fn resolve_weights(
    folder: &Path,
    naming: Naming,
    variant: Option<&str>,
    use_safetensors: Option<bool>,
) -> Result<ModelWeights, ModelError> {
    Ok(diff_format::model_files::resolve_model_files(
        folder,
        naming,
        variant,
        use_safetensors,
    )?)
}

/// Opens resolved weight files: one `.safetensors` or `.bin` file, or the shards of a
/// `.safetensors` index. A sharded pickle checkpoint is [`ModelError::PickleNotSupported`].
pub fn open_weights(weights: &ModelWeights) -> Result<TensorSource, ModelError> {
    match (&weights.index, weights.format) {
        (Some(index), WeightFormat::Safetensors) => TensorSource::open_index(index),
        (Some(index), WeightFormat::Bin) => Err(ModelError::PickleNotSupported {
            path: index.display().to_string(),
        }),
        (None, WeightFormat::Safetensors) => TensorSource::open_file(weights.entry()),
        (None, WeightFormat::Bin) => TensorSource::open_pickle(weights.entry()),
    }
}

/// Loads the weights of a component folder (`unet/`, `text_encoder/`, ...) into `module`, which
/// must already live on the target device: the files are those [`resolve_weights`] chooses.
pub fn load_component<M: Module>(
    module: M,
    folder: &Path,
    naming: Naming,
    variant: Option<&str>,
    use_safetensors: Option<bool>,
    options: &LoadOptions,
) -> Result<(M, LoadReport), ModelError> {
    let _span =
        tracing::info_span!("load_component", folder = %folder.display(), variant = ?variant)
            .entered();
    let weights = resolve_weights(folder, naming, variant, use_safetensors)?;
    let source = open_weights(&weights)?;
    load_source(module, &source, options)
}

/// Loads one `.safetensors` file, `.safetensors.index.json` or `.bin` checkpoint into `module`.
pub fn load_file<M: Module>(
    module: M,
    path: &Path,
    options: &LoadOptions,
) -> Result<(M, LoadReport), ModelError> {
    let source = TensorSource::open(path)?;
    load_source(module, &source, options)
}

/// Loads from an already opened [`TensorSource`] into `module`.
pub fn load_source<M: Module>(
    module: M,
    source: &TensorSource,
    options: &LoadOptions,
) -> Result<(M, LoadReport), ModelError> {
    let _span = tracing::info_span!("load_weights", source = %source.origin().display()).entered();
    let (module, report) = apply::apply(module, source, options)?;
    tracing::debug!(loaded = report.loaded, "weights loaded");
    Ok((module, report))
}
