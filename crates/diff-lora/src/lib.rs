//! `diff-lora`: LoRA files as diffusers 0.42.1 reads them, without burn.
//!
//! Owns the file side of `pipe.load_lora_weights(...)`: which file of a folder is read
//! ([`resolve_weight_file`]), reading `.safetensors` (with `lora_adapter_metadata`) and `.bin`
//! (through diff-format's restricted pickle reader, never executed) ([`read_state_dict`]), the
//! formats people share — diffusers / PEFT (`unet.<module>.lora_A.weight`), the older diffusers
//! attention-processor format (`…processor.to_q_lora.down.weight`), kohya / A1111
//! (`lora_unet_…`, `lora_te_…`, `lora_te1_` / `lora_te2_`, `.alpha`, LoCon convolutions, LDM
//! block names for SDXL, DoRA scales filtered as diffusers filters them) ([`kohya`]) — and the
//! adapter config peft builds per model: `r`, `lora_alpha`, `rank_pattern`, `alpha_pattern`,
//! `target_modules` from the metadata or derived as diffusers' `get_peft_kwargs` derives them,
//! matched with peft's pattern rules ([`AdapterConfig`]). The result is a [`LoraPlan`]: per model
//! the layers that get an adapter, with A, B, rank, alpha and scaling.
//!
//! Quirks of diffusers are reproduced on purpose, since the gate is what diffusers does with the
//! same file: kohya alphas of attention layers are keyed under names that match no module (so
//! those layers get the config's default alpha), text-encoder alphas are keyed with a
//! `text_model.` prefix that transformers 5's flattened `CLIPTextModel` lacks, and so on.
//! `tests/fixtures/25-lora-formats` records, for each format, what real diffusers + peft put into
//! every layer; `tests/lora_formats.rs` replays it.
//!
//! **Must not know:** burn, tensors as math (A and B are plain `f32` arrays here), pipelines.
//! The burn side (checking shapes against the layers, attaching, `set_adapters`, fusing) lives
//! with the models and pipelines.
//!
//! Dependencies: `diff-format` (the pickle reader, Python-faithful JSON for the metadata),
//! `safetensors` (the file format), `half` (float16 / bfloat16 weights to f32), `regex` (peft's
//! patterns are regular expressions), `serde_json`, `thiserror`, `tracing`.
#![deny(missing_docs)]

pub mod config;
mod error;
pub mod file;
pub mod kohya;
mod mappings;
pub mod plan;

pub use config::{AdapterConfig, Targets};
pub use error::LoraError;
pub use file::{LoraStateDict, LoraTensor, read_state_dict, resolve_weight_file};
pub use plan::{ComponentLora, Family, LayerLora, LoraPlan, ModelTable, ModuleShape, plan};
