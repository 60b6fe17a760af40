//! `diff-pipelines`: diffusers' pipelines on burn.
//!
//! Owns `DiffusionPipeline` loading (`model_index.json` -> the pipeline its `_class_name`
//! names, components passed in or dropped, scheduler swapping, `from_pipe` sharing), the Stable
//! Diffusion / SDXL `__call__` flows (text-to-image, img2img, inpaint), the CLIP tokenizer and
//! diffusers' `VaeImageProcessor`.
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
//! - [`ClipTokenizer`]: transformers 5's `CLIPTokenizer`, id for id.
//! - [`VaeImageProcessor`] and [`outputs`]: images in and out, PNG and safetensors files;
//!   [`resample`]: Pillow's `Image.resize`, byte for byte (what diffusers resizes inputs with);
//!   [`jpeg`]: a JPEG decoder giving Pillow's (libjpeg-turbo's) bytes, used by
//!   `image_processor::load_image` (`tests/jpeg_parity.rs`, `tests/fixtures/44-jpeg`).
//! - [`DiffusionPipeline::from_single_file`] with [`SingleFileLoadOptions`]: an original
//!   single-file checkpoint (`.safetensors` / `.ckpt`) converted in memory by diff-convert and
//!   loaded as a pipeline, configs from `config=` or the family's default repo.
//! - [`DiffusionPipeline::prepare_latents`]: the initial latents of a text-to-image call, drawn
//!   in the pipeline's dtype as torch does.
//! - Half precision: with `LoadOptions::dtype` float16 / bfloat16 the denoising loop rounds to
//!   that dtype where torch does (latents, `scale_model_input`, [`guide`], the scheduler step,
//!   the VAE input and the denormalisation), and SDXL decodes with a float32 copy of a float16
//!   `force_upcast` VAE, as diffusers' `upcast_vae` does.
//! - [`validate::validate_pipeline`]: `validate ORIGINAL SAVED` (files and tensors through
//!   diff-convert, tokenizers, one forward of each model on fixed inputs, with a per-dtype
//!   tolerance).
//!
//! Parity: `tests/image_processor_parity.rs` and `tests/image_pipeline_parity.rs` replay
//! `tests/fixtures/41-image-processor` (Pillow's resize and diffusers' image processor exactly;
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
//! diff-format's file selection), weight file
//! layouts (diff-models loads them), scheduler math (diff-schedulers), the CLI.
//!
//! Dependencies: `diff-format` (model_index.json and configs), `diff-hub` (repo id -> folder;
//! `diff-hub-server` only as a dev-dependency, for the download test),
//! `diff-schedulers`, `diff-models`, `diff-convert` (the burn-free file and tensor half of
//! `validate`, and the key conversion of `from_single_file`; it sits below this crate and never
//! sees burn), `burn` (tensors), `image` (decode/encode PNG and JPEG, resize),
//! `serde`/`serde_json` (configs), `thiserror` (the typed error), `tracing` (warnings diffusers
//! prints, such as the truncated-prompt and safety-checker ones), `safetensors` and `half` (`--out-array` float images and `--latents` input files, as the
//! models' weights already use), `regex` (the CLIP
//! pre-tokenizer's Unicode-class split; already in the build through tracing-subscriber) and
//! `unicode-normalization` (NFC, the first step of CLIP's normalizer; small, no dependencies of
//! its own).
//!
//! The CLIP tokenizer is our own ~500-line BPE rather than the `tokenizers` crate: transformers 5's
//! CLIPTokenizer is a fixed tokenizers pipeline (NFC, whitespace, lower-case, one regex split,
//! byte-level BPE with `</w>`), so a direct implementation is short, checked id for id against
//! transformers on the fixture prompts, and avoids `tokenizers`' compile cost (onig or
//! fancy-regex, rayon, esaxx, several dozen crates).
#![deny(missing_docs)]

pub mod call;
pub mod clip_tokenizer;
pub mod components;
mod decode;
mod denoise;
pub mod device;
mod error;
mod flows;
pub mod image_processor;
mod inpaint_common;
pub mod jpeg;
mod latents;
pub mod outputs;
pub mod pipeline;
mod prompt;
pub mod resample;
pub mod single_file;
mod stable_diffusion;
mod stable_diffusion_xl;
mod timesteps;
pub mod validate;

/// burn's dtype and device types, re-exported for callers that pick them (the CLI).
pub use burn::tensor::{DType, Device};
pub use call::{
    CallArgs, Generators, Img2ImgArgs, InpaintArgs, OutputType, PipelineOutput, StepCallback,
    StepControl, StepInfo, XlArgs,
};
pub use clip_tokenizer::ClipTokenizer;
pub use denoise::guide;
pub use device::{DeviceChoice, DeviceError, default_device, parse_device};
pub use error::PipelineError;
pub use image_processor::{FloatImages, VaeImageProcessor};
pub use latents::noise_dtype;
pub use pipeline::{
    Components, DiffusionPipeline, LoadOptions, Passed, PassedComponents, PipelineClass,
    SUPPORTED_PIPELINES,
};
pub use prompt::XlEmbeds;
pub use single_file::SingleFileLoadOptions;
