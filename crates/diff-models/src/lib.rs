//! `diff-models`: the networks of Stable Diffusion 1.x/2.x and SDXL on burn.
//!
//! Owns CLIP text and vision models, UNet2DConditionModel, AutoencoderKL, the safety checker and
//! weight loading (safetensors, sharded indexes, restricted `.bin`), built from their
//! `config.json` and numerically equal to diffusers/transformers.
//!
//! **Must not know:** pipelines, schedulers, the Hub. Configs and file names come from
//! `diff-format`.
#![deny(missing_docs)]

mod error;

pub use error::ModelError;
