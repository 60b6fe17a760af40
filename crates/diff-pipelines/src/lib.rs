//! `diff-pipelines`: diffusers' pipelines on burn.
//!
//! Owns `DiffusionPipeline` loading (`model_index.json` -> the pipeline its `_class_name`
//! names, components passed in or dropped, scheduler swapping, `from_pipe` sharing), the Stable
//! Diffusion / SDXL `__call__` flows (text-to-image, img2img, inpaint), the tensor half of
//! diffusers' `VaeImageProcessor`, `from_single_file` and the forward half of `validate`.
//!
//! The flows follow diffusers' layout: one file per task (`stable_diffusion/{text2img,
//! img2img, inpaint}.rs`, the same under `stable_diffusion_xl/`), each `__call__` in diffusers'
//! numbered steps; the class -> flow registration is `flows.rs`; prompt encoding
//! (`prompt.rs`), timesteps (`timesteps.rs`), latents (`latents.rs`), the one denoising loop
//! with its per-step hook (`denoise.rs`), inpaint's shared parts (`inpaint_common.rs`) and the
//! decode (`decode.rs`) are shared by SD and SDXL. [`CallArgs`] is a shared core plus one part
//! per task family ([`Img2ImgArgs`], [`InpaintArgs`], [`XlArgs`]).
//!
//! Entry points:
//! - [`DiffusionPipeline::from_pretrained`] with [`LoadOptions`] (variant, dtype, device,
//!   `use_safetensors`, `local_files_only`, revision, components passed in or dropped with
//!   [`Passed`], the task class to build), then [`DiffusionPipeline::call`] with [`CallArgs`];
//!   `swap_scheduler` (`Class.from_config(pipe.scheduler.config, **overrides)`) and `from_pipe`.
//! - [`components`]: the component table ([`components::COMPONENTS`]): each slot's name,
//!   accepted `[library, class]`, config file, role per pipeline family, load dispatch, and how
//!   a passed-in object replaces it or `None` drops it. Models load through
//!   `diff_models::FromPretrained`, their weight files chosen by diff-format's resolver.
//! - [`VaeImageProcessor`] and [`outputs`]: images to tensors and back, PNG and safetensors
//!   files. The byte-level half (Pillow's resize, the JPEG decoder, `load_image`,
//!   `get_crop_region`) is diff-image's, re-exported as [`resample`], [`jpeg`] and in
//!   [`image_processor`]; the CLIP tokenizer is diff-tokenizer's ([`ClipTokenizer`]).
//! - [`DiffusionPipeline::from_single_file`] with [`SingleFileLoadOptions`]: an original
//!   single-file checkpoint (`.safetensors` / `.ckpt`) converted in memory by diff-checkpoint
//!   and loaded as a pipeline, configs from `config=` or the family's default repo.
//! - LoRA ([`lora`]): [`DiffusionPipeline::load_lora_weights`], `set_adapters` (with
//!   [`AdapterWeight`]), `fuse_lora` / `unfuse_lora`, `unload_lora_weights`, `delete_adapters`,
//!   `enable_lora` / `disable_lora`, `get_active_adapters`, `get_list_adapters`; the adapters
//!   live in the models, so `from_pipe` pipelines share them. Gate: `tests/lora.rs` on
//!   `tests/fixtures/25-lora-formats`.
//! - Perturbed-Attention Guidance ([`pag`]): the PAG classes (`StableDiffusion{,XL}PAG{,Img2Img,
//!   Inpaint}Pipeline`) run their base task's flow with PAG added in the loop (`pag::run_loop`), the PAG
//!   attention processors installed on `pag_applied_layers` for the call; [`PagArgs`]
//!   (`pag_scale`, `pag_adaptive_scale`). Gate: `tests/pag_parity.rs` on `tests/fixtures/56-pag`.
//! - AutoPipelines ([`auto_pipeline`], [`AutoTask`]): `from_pretrained` / `from_pipe` of
//!   `AutoPipelineFor{Text2Image,Image2Image,Inpainting}` with diffusers' mappings and
//!   `enable_pag`. Gate: `tests/auto_pipeline.rs` on `tests/fixtures/57-auto-pipeline`.
//! - AnimateDiff ([`animatediff`]): [`DiffusionPipeline::animatediff_from_pipe`] (a
//!   `MotionAdapter` on an SD pipeline's shared components; the `UNetMotionModel` holds the 2D
//!   UNet's `Arc`), `CallArgs::video` (`num_frames`, `decode_chunk_size`), frames, GIF and
//!   `[batch, F, H, W, 3]` outputs. Gate: `tests/animatediff_parity.rs` on
//!   `tests/fixtures/70-animatediff`.
//! - [`DiffusionPipeline::prepare_latents`]: the initial latents of a text-to-image call, drawn
//!   in the pipeline's dtype as torch does.
//! - Half precision: with `LoadOptions::dtype` float16 / bfloat16 the denoising loop rounds to
//!   that dtype where torch does (latents, `scale_model_input`, [`guide`], the scheduler step,
//!   the VAE input and the denormalisation), and SDXL decodes with a float32 copy of a float16
//!   `force_upcast` VAE, as diffusers' `upcast_vae` does.
//! - [`validate::forward_component`]: one forward of a model from two folders on fixed inputs,
//!   compared with a per-dtype tolerance (the `validate` command is the diff-validate crate,
//!   above this one and diff-convert).
//!
//! Parity: `tests/image_processor_parity.rs` and `tests/image_pipeline_parity.rs` replay
//! `tests/fixtures/41-image-processor` (diffusers' image processor exactly;
//! off-size inputs, `padding_mask_crop`, `masked_image_latents` within 2/255 per pixel, and
//! float16 / bfloat16 initial latents bit for bit).
//! `tests/pipeline_parity.rs` replays `tests/fixtures/40-pipeline-runs` (real diffusers
//! 0.42.1 on the bundled tiny pipelines) within 2/255 per pixel; `tests/sdxl_refiner_inpaint.rs`
//! replays `tests/fixtures/42-sdxl` (the SDXL refiner layout `tests/fixtures/tiny-sdxl-refiner`,
//! base -> refiner handoffs, SDXL inpaint with 4- and 9-channel UNets) with the same tolerances.
//! `tests/single_file.rs` loads every single-file fixture (`tests/fixtures/50-convert`,
//! `tests/fixtures/51-single-file`) with `from_single_file` and generates bit for bit as from
//! diffusers' converted folder; `tests/single_file_parity.rs` replays
//! `tests/fixtures/54-single-file-load` (diffusers' own `from_single_file` + generation, SD 1.x
//! and SDXL) within 2/255 per pixel.
//!
//! **Must not know:** the network protocol (diff-hub resolves repo ids to folders, with
//! diff-format's file selection), weight file layouts (diff-models loads them), scheduler math
//! (diff-schedulers), image bytes (diff-image), tokenization (diff-tokenizer), saving and
//! converting folders (diff-convert: this crate does not depend on it), the CLI.
//!
//! Dependencies: `diff-format` (model_index.json and configs), `diff-hub` (repo id -> folder,
//! [`diff_hub::HubApi::resolve`]; `diff-hub-server` only as a dev-dependency, for the download
//! test), `diff-schedulers`, `diff-models`, `diff-image` (Pillow-exact image bytes),
//! `diff-tokenizer` (the CLIP tokenizer), `diff-checkpoint` (the burn-free key conversion of
//! `from_single_file`), `diff-lora` (LoRA files read and planned as diffusers does, for
//! `load_lora_weights` in `lora.rs`; its pickle reader path also serves `load_ip_adapter`'s `.bin`
//! files through diff-format), `burn` (tensors), `image` (the `RgbImage` type of inputs and outputs),
//! `serde`/`serde_json` (configs), `thiserror` (the typed error), `tracing` (warnings diffusers
//! prints, such as the truncated-prompt and safety-checker ones), `safetensors` and `half`
//! (`--out-array` float images and `--latents` input files, as the models' weights already
//! use).
#![deny(missing_docs)]

pub mod animatediff;
pub mod auto_pipeline;
pub mod call;
pub mod components;
mod decode;
mod denoise;
pub mod device;
mod error;
mod flows;
pub mod image_processor;
mod inpaint_common;
pub mod ip_adapter;
mod latents;
pub mod lora;
pub mod outputs;
pub mod pag;
pub mod pipeline;
pub mod progress;
mod prompt;
pub mod single_file;
mod stable_diffusion;
mod stable_diffusion_xl;
mod timesteps;
pub mod validate;

pub use auto_pipeline::AutoTask;
/// burn's dtype and device types, re-exported for callers that pick them (the CLI).
pub use burn::tensor::{DType, Device};
pub use call::{
    CallArgs, Generators, Img2ImgArgs, InpaintArgs, OutputType, PipelineOutput, SagArgs,
    StepCallback, StepControl, StepInfo, XlArgs,
};
pub use denoise::guide;
pub use device::{DeviceChoice, DeviceError, default_device, parse_device};
/// Pillow-exact JPEG decoding and resizing (diff-image), under their former paths.
pub use diff_image::{jpeg, resample};
/// The CLIP tokenizer (diff-tokenizer), under its former path.
pub use diff_tokenizer::clip as clip_tokenizer;
pub use diff_tokenizer::{ClipTokenizer, TokenizerError};
pub use error::PipelineError;
pub use image_processor::{FloatImages, VaeImageProcessor};
pub use ip_adapter::{IpAdapterArgs, IpAdapterSource, LoadIpAdapter};
pub use latents::noise_dtype;
pub use lora::AdapterWeight;
pub use pag::PagArgs;
pub use pipeline::{
    Components, DiffusionPipeline, LoadOptions, Passed, PassedComponents, PipelineClass,
    SUPPORTED_PIPELINES,
};
pub use progress::LoadProgress;
pub use prompt::XlEmbeds;
pub use single_file::SingleFileLoadOptions;
