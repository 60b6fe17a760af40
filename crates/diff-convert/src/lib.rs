//! `diff-convert`: from a diffusers folder or an original single-file checkpoint to a saved
//! diffusers folder.
//!
//! Owns:
//! - [`save`]: `save_pretrained` at the raw-tensor level (weights, variants, dtype cast, sharding,
//!   shard index, the stale-index trap, atomic folder replacement) for models and pipelines;
//! - [`shard`]: huggingface_hub's size parsing and shard assignment, diffusers' file names;
//! - [`cast`]: f32/f16/bf16 casts bit-identical to torch;
//! - [`single_file`]: `convert` of original SD 1.x / 2.x / SDXL (base, refiner) and inpainting
//!   checkpoints (`.safetensors` or `.ckpt`) to a diffusers folder (the model_index diffusers
//!   writes, configs, the atomic write); the family detection and the key conversion are
//!   diff-checkpoint's, shared with diff-pipelines' `from_single_file`;
//! - [`card`]: the `README.md` model card (Hub metadata, usage), keeping an existing card;
//! - [`publish`]: `push_to_hub` (save to a temporary folder, model card, one commit or PR);
//! - [`validate`]: compares an original and a saved pipeline (configs and every tensor, exact or
//!   exact-after-cast); the `validate` command (this check, tokenizers and one forward per
//!   model) is the diff-validate crate, above this one and diff-pipelines;
//! - [`transformers_config`]: transformers 5.23's re-serialisation of CLIP model configs and
//!   `CLIPImageProcessor` configs (old Hub configs are rewritten on save, as diffusers does);
//! - [`order`]: PyTorch `state_dict()` order of the known model families (shard boundaries);
//! - [`tensors`]: raw tensors read from safetensors files, shard indexes and pickle checkpoints
//!   (diff-checkpoint's, re-exported).
//!
//! **Must not know:** the network (publishing goes through `diff-hub`), burn's maths: saving and
//! converting move bytes and JSON only.
//!
//! Dependencies: `diff-format` (JSON writer byte-identical to Python's `json.dumps`, the pickle
//! reader, config constants), `safetensors` (reading and writing weights, the same Rust code the
//! Python `safetensors` package binds), `half` (f16 rounding identical to torch), `memmap2` (weights
//! are mapped, not read, so a re-save holds one copy of a component), `serde`/`serde_json`
//! (configs and indexes, through diff-format's typed configs), `thiserror` (the typed [`ConvertError`]), `tracing` (logs).
//! `diff-hub` (repo creation, model-card download, folder upload for `push_to_hub`),
//! `diff-checkpoint` (raw tensors, the family detection and key conversion of single files).
//! Forward-pass validation needs burn and the models, so it lives in `diff-pipelines`, and the
//! `validate` command that joins both halves in `diff-validate`: saving, converting and
//! publishing compile without burn.
#![deny(missing_docs)]

pub mod card;
pub mod cast;
mod error;
pub mod motion_module;
pub mod order;
pub mod publish;
pub mod save;
pub mod shard;
pub mod single_file;
/// Raw tensors and their readers (diff-checkpoint), under their former path.
pub use diff_checkpoint::tensors;
pub mod transformers_config;
pub mod validate;

pub use cast::SaveDtype;
pub use error::ConvertError;
pub use save::{
    Library, Replacements, SaveOptions, save_component, save_component_as, save_pipeline,
    save_pipeline_with, save_weights,
};
pub use single_file::{
    Checkpoint, ModelType, SingleFileOptions, convert_single_file, convert_single_file_with,
    detect_model_type, infer_model_type,
};
pub use tensors::{RawTensor, StateDict};
