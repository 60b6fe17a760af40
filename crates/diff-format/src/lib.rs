//! `diff-format`: the diffusers file format, and nothing else.
//!
//! Owns `model_index.json`, component configs (diffusers and transformers), Python-faithful JSON
//! writing, weight file names (variants, shards, legacy names), shard indexes, safetensors header
//! inspection, the restricted reader for PyTorch pickle checkpoints, and diffusers' file
//! selection rules (which files a pipeline needs for a variant).
//!
//! **Must not know:** burn, tensors as math, the network. It reads and writes bytes and JSON.
//!
//! Entry points:
//! - [`json`]: `json.dumps(indent=2, sort_keys=True)` byte for byte.
//! - [`config`]: load any serde config struct from a file (typed errors, `_use_default_values`)
//!   and save it so a diffusers-written file re-saves byte-identically; [`configs`] holds the
//!   typed component configs built on it.
//! - [`model_index`]: `model_index.json` in every field form; custom code is refused.
//! - [`weights`]: weight/index/shard file names and diffusers' name-classifying regexes.
//! - [`selection`]: which files diffusers 0.42.1 downloads and loads for a `variant` and
//!   `use_safetensors` ([`download_plan`]), checked against decisions recorded from diffusers.
//! - [`model_files`]: which weight files a diffusers model loads from its folder.
//! - [`shard_index`]: shard index read/write, bare shard names only.
//! - [`safetensors_header`]: header inspection with full validation, no tensor data read.
//! - [`folder`]: a local folder listed like a Hub repository; [`fsutil`]: atomic writes.
//! - [`FormatError`]: the crate's error type.
//!
//! Dependencies: `serde`/`serde_json` (the format is JSON; serde_json's `float_roundtrip`
//! feature makes float parsing exact so re-saved floats keep their digits),
//! `serde_path_to_error` (one small crate: names the config key whose value has the wrong type),
//! `thiserror` (the typed error), `tracing` (debug/warn logs).
#![deny(missing_docs)]

pub mod config;
pub mod configs;
mod error;
pub mod folder;
pub mod fsutil;
pub mod json;
pub mod model_files;
pub mod model_index;
pub mod pickle;
pub mod safetensors_header;
pub mod selection;
pub mod shard_index;
pub mod weights;

pub use config::{ConfigFile, load_config};
pub use error::{FormatError, HeaderError, short_shape};
pub use model_index::{ComponentEntry, ModelIndex, PipelineClass};
pub use selection::{DownloadPlan, SelectionOptions, download_plan};

/// The diffusers version whose behaviour this crate reproduces and that it stamps into new configs.
pub const DIFFUSERS_VERSION: &str = "0.42.1";
