//! `diff-format`: the diffusers file format, and nothing else.
//!
//! Owns `model_index.json`, component configs (diffusers and transformers), Python-faithful JSON
//! writing, weight file names (variants, shards, legacy names), shard indexes, safetensors header
//! inspection, the restricted reader for PyTorch pickle checkpoints, and diffusers' file
//! selection rules (which files a pipeline needs for a variant).
//!
//! **Must not know:** burn, tensors as math, the network. It reads and writes bytes and JSON.
#![deny(missing_docs)]

pub mod configs;
