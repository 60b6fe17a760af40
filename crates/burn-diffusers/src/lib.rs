//! burn-diffusers: Hugging Face diffusers' pipeline system on burn.
//!
//! This crate only re-exports the sub-crates; depend on those directly when you need less.
#![deny(missing_docs)]

pub use diff_checkpoint as checkpoint;
pub use diff_convert as convert;
pub use diff_format as format;
pub use diff_hub as hub;
pub use diff_image as image;
pub use diff_lora as lora;
pub use diff_models as models;
pub use diff_pipelines as pipelines;
pub use diff_schedulers as schedulers;
pub use diff_tokenizer as tokenizer;
pub use diff_validate as validate;
