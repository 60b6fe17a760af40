//! `diff-models`: the networks of Stable Diffusion 1.x/2.x and SDXL on burn.
//!
//! Owns CLIP text and vision models, UNet2DConditionModel, AnimateDiff's MotionAdapter and
//! UNetMotionModel (sharing the 2D UNet by `Arc`), AutoencoderKL, the safety checker and
//! weight loading (safetensors, sharded indexes, restricted `.bin`), built from their
//! `config.json` and numerically equal to diffusers/transformers.
//!
//! A model loaded in float16 / bfloat16 rounds where torch's CPU kernels round (the private
//! `precision` module: each linear, convolution, norm and activation computed in float32 from the
//! half weights and rounded once, attention as torch's CPU flash kernel computes it), so half
//! precision outputs match diffusers' `torch_dtype=torch.float16 / bfloat16` on the CPU.
//!
//! Every model loads through one trait, [`FromPretrained`] (`from_pretrained(folder,
//! &ModelLoadOptions)`, `config()`), whose weight files come from diff-format's resolver with the
//! owning library's rules (diffusers or transformers).
//! Attention processors (`attention_processor`) and LoRA adapter layers (`lora`) are runtime
//! state inside the layers, behind `Arc<RwLock<..>>` fields marked `#[module(skip)]`: a model
//! shared by `Arc` shows the same processors and adapters to every holder, as diffusers' shared
//! `nn.Module`s do. With the default processor and no active adapter the forward runs the same
//! code as a plain layer.
//! IP-Adapters (`ip_adapter`) are the same kind of state: image projections in the UNet's slot
//! and `IPAdapterAttnProcessor2_0`s on its cross-attentions.
//!
//! **Must not know:** pipelines, schedulers, the Hub. Configs and file names come from
//! `diff-format`.
//!
//! Dependencies of the weight loader: `safetensors` (header parsing and validation only),
//! `memmap2` (weight files are mapped, not read, so peak RSS stays near the weights' size),
//! `half` (decoding f16/bf16 tensors to f32 where needed); `.bin` goes through
//! `diff_format::pickle`. Dev-only: `image` (decoding the PNG fixtures of the image processor
//! test), `tempfile` (corrupt-file tests).
//!
//! burn's flex CPU backend is built with its `simd` and `rayon` features (workspace-wide), so
//! kernels are vectorised and multi-threaded (`RAYON_NUM_THREADS` sets the thread count).
#![deny(missing_docs)]

mod error;
mod kernels;
mod precision;
mod pretrained;
pub mod weights;

// CLIP text/vision, safety checker, image preprocessing (WEIGHTS+CLIP engineer).
pub mod clip;
pub mod clip_vision;
pub mod image_processor;
pub mod safety_checker;

// UNet and VAE (UNET+VAE engineer).
pub mod attention;
pub mod attention_processor;
pub mod attention_processor_pag;
pub mod autoencoder_kl;
pub mod block_scales;
pub mod downsampling;
pub mod embeddings;
pub mod ip_adapter;
pub mod lora;
pub mod motion_adapter;
mod named;
pub mod offload;
pub mod resnet;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
pub mod unet_motion_model;
pub mod upsampling;
pub mod vae;

pub use attention_processor::{
    AttentionProcessor, AttnProcessor, AttnProcessor2_0, AttnProcessorRef, AttnProcessorSetting,
    CrossAttnStoreProcessor, IPAdapterAttnProcessor2_0, IpAdapterLayer,
};
pub use attention_processor_pag::{
    PAGCFGIdentitySelfAttnProcessor2_0, PAGIdentitySelfAttnProcessor2_0,
};
pub use autoencoder_kl::AutoencoderKL;
pub use block_scales::{BlockScale, ExpandedScale, PartScale, ScaleConfig};
pub use clip::{CLIPTextModel, CLIPTextModelWithProjection};
pub use clip_vision::{CLIPVisionModel, CLIPVisionModelWithProjection};
pub use error::ModelError;
pub use image_processor::CLIPImageProcessor;
pub use ip_adapter::{
    ImageEmbeds, IpAdapterKind, IpAdapterStateDict, IpImageProjection,
    MultiIPAdapterImageProjection, StateTensor,
};
pub use lora::{LoraAdapters, LoraConv2d, LoraLayerRef, LoraLinear, LoraModel, LoraWeights};
pub use motion_adapter::MotionAdapter;
pub use pretrained::{FromPretrained, ModelLoadOptions};
pub use safety_checker::StableDiffusionSafetyChecker;
pub use unet_2d_condition::{UNet2DConditionInput, UNet2DConditionModel};
pub use unet_motion_model::UNetMotionModel;
