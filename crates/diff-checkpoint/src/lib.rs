//! `diff-checkpoint`: original single-file Stable Diffusion checkpoints, in memory, as
//! diffusers state dicts.
//!
//! Owns:
//! - [`tensors`]: raw tensors (dtype, shape, little-endian bytes) read from safetensors files,
//!   shard indexes and PyTorch pickles (through `diff_format::pickle`, the restricted reader:
//!   nothing is executed);
//! - [`Checkpoint`], [`ModelType`], [`infer_model_type`] / [`detect_model_type`]: the
//!   checkpoint's tensors and its family, in diffusers' `infer_diffusers_model_type` order;
//! - [`unet`], [`vae`], [`clip`]: LDM / SGM keys to diffusers / transformers keys (SD 1.x/2.x,
//!   SDXL base and refiner, inpainting; EMA extraction), and [`convert_component`] /
//!   [`take_component`], which convert one component and check it against its config.
//!
//! Both writers of diffusers folders use it: diff-convert (`convert` to a folder, byte-identical
//! to diffusers, gates `tests/fixtures/50-convert`, `tests/fixtures/51-single-file`) and
//! diff-pipelines (`from_single_file`, loading the converted tensors straight into models, gate
//! `tests/fixtures/54-single-file-load`). Keeping it below both is what lets diff-pipelines load
//! a single file without depending on diff-convert's saving and publishing.
//!
//! **Must not know:** burn or tensors' maths (bytes and names only), saving, the Hub,
//! pipelines.
//!
//! Dependencies: `diff-format` (the pickle reader), `safetensors` (reading weights),
//! `memmap2` (weights are mapped, not read), `serde_json` (configs and shard indexes),
//! `thiserror` (the typed [`CheckpointError`]), `tracing` (the keys a conversion drops, EMA use).
#![deny(missing_docs)]

mod check;
pub mod clip;
mod convert;
mod error;
mod family;
pub mod tensors;
pub mod unet;
pub mod vae;

pub use convert::{Library, config_str, config_usize, convert_component, take_component};
pub use error::CheckpointError;
pub use family::{Checkpoint, ModelType, detect_model_type, infer_model_type};
pub use tensors::{RawTensor, StateDict};
