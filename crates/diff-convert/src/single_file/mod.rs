//! `from_single_file`: original Stable Diffusion checkpoints (CompVis / LDM and SGM key layouts)
//! to a diffusers pipeline folder.
//!
//! # Flow (diffusers `FromSingleFileMixin.from_single_file`)
//! 1. Read the checkpoint ([`Checkpoint::open`]): `.safetensors`, or a PyTorch pickle (`.ckpt`,
//!    `.pt`, `.bin`) through the restricted reader, descending into `"state_dict"` as diffusers
//!    does for Lightning checkpoints. A truncated or corrupt file is an error before anything is
//!    written.
//! 2. Detect the family from keys and shapes ([`detect_model_type`]: diffusers'
//!    `infer_diffusers_model_type` for the SD families, in its order of checks, refusing other
//!    families and files without an SD UNet). The family only picks the default config repo
//!    ([`ModelType::default_config_repo`], diffusers' `DIFFUSERS_DEFAULT_PIPELINE_PATHS`); the
//!    conversion itself follows the config. SD 2.x 512-base (epsilon) and 768-v (v-prediction)
//!    checkpoints have the same keys and shapes: diffusers 0.42.1 takes the v-prediction repo
//!    for both unless `config=` says otherwise, and so do we.
//! 3. Plan the pipeline from the config folder's `model_index.json` as the pipeline class's
//!    `__init__` sees it ([`pipeline`]: the safety checker is skipped, absent optional components
//!    are `[null, null]`, registered parameters get their `__init__` defaults).
//! 4. For each component, in name order: convert the UNet ([`unet`], optionally from its EMA
//!    copy), VAE ([`vae`]) and text encoders ([`clip`]) from the checkpoint, or from a separate
//!    file or folder given for that component (diffusers' `vae=`); check the result against the
//!    config (`check`: essential tensors present, widths and channels as configured); copy
//!    tokenizers, scheduler and feature extractor from the config folder; save with
//!    [`crate::save`] (variant, dtype, sharding) into a temporary folder that replaces `out` only
//!    when everything succeeded.
//!
//! diffusers' `from_single_file` + `save_pretrained` writes the config folder's configs
//! unchanged (no `_name_or_path`), so we re-serialise them; with the same config folder the
//! result is byte-identical (tested per family against diffusers 0.42.1:
//! `tests/fixtures/50-convert/single_file`, `tests/fixtures/51-single-file`).

mod check;
pub mod clip;
pub mod pipeline;
pub mod unet;
pub mod vae;

use crate::ConvertError;
use crate::save::{
    Library, SaveOptions, atomic_folder, rewrite_config, save_component, save_weights,
};
use crate::tensors::{RawTensor, read_pickle, read_safetensors};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The tensors of a single-file checkpoint, by name.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Every tensor, by name.
    pub tensors: BTreeMap<String, RawTensor>,
}

impl Checkpoint {
    /// Reads a `.safetensors` file, or a pickle checkpoint (any other extension), without
    /// executing anything.
    pub fn open(path: &Path) -> Result<Self, ConvertError> {
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let tensors = if is_safetensors {
            read_safetensors(path)?.0
        } else {
            read_pickle(path)?.into_iter().collect()
        };
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }
}

/// The single-file families this crate converts (a subset of diffusers' model types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// SD 1.x (also the fallback, as in diffusers).
    V1,
    /// SD 2.x (OpenCLIP-H text encoder, 1024-d cross attention).
    V2,
    /// SD 1.x inpainting (9 input channels).
    Inpainting,
    /// SD 2.x inpainting.
    InpaintingV2,
    /// SDXL base.
    XlBase,
    /// SDXL refiner.
    XlRefiner,
    /// SDXL inpainting.
    XlInpaint,
}

impl ModelType {
    /// The repo diffusers takes configs from when none is given (`DIFFUSERS_DEFAULT_PIPELINE_PATHS`).
    pub fn default_config_repo(self) -> &'static str {
        match self {
            ModelType::V1 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
            ModelType::V2 => "stabilityai/stable-diffusion-2-1",
            ModelType::Inpainting => "stable-diffusion-v1-5/stable-diffusion-inpainting",
            ModelType::InpaintingV2 => "stabilityai/stable-diffusion-2-inpainting",
            ModelType::XlBase => "stabilityai/stable-diffusion-xl-base-1.0",
            ModelType::XlRefiner => "stabilityai/stable-diffusion-xl-refiner-1.0",
            ModelType::XlInpaint => "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        }
    }
}

const KEY_V2: &str =
    "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight";
const KEY_XL_BASE: &str = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias";
const KEY_XL_REFINER: &str =
    "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias";
const KEY_INPAINTING: &str = "model.diffusion_model.input_blocks.0.0.weight";

/// Marker keys of families diffusers recognises (`CHECKPOINT_KEY_NAMES`) that this crate does
/// not convert, with the family name diffusers' model types start with.
const OTHER_FAMILIES: &[(&str, &str)] = &[
    ("edm_mean", "playground-v2-5"),
    (
        "model.diffusion_model.input_blocks.10.0.skip_connection.bias",
        "upscale",
    ),
    ("control_model.time_embed.0.weight", "controlnet"),
    ("controlnet_cond_embedding.conv_in.weight", "controlnet"),
    ("clip_txt_mapper.weight", "stable_cascade_stage_c"),
    (
        "down_blocks.1.0.channelwise.0.weight",
        "stable_cascade_stage_b",
    ),
    (
        "joint_blocks.0.context_block.adaLN_modulation.1.bias",
        "sd3",
    ),
    (
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias",
        "sd3",
    ),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "flux"),
    (
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale",
        "flux",
    ),
];

impl ModelType {
    /// diffusers' name for the family (`infer_diffusers_model_type`).
    pub fn diffusers_name(self) -> &'static str {
        match self {
            ModelType::V1 => "v1",
            ModelType::V2 => "v2",
            ModelType::Inpainting => "inpainting",
            ModelType::InpaintingV2 => "inpainting_v2",
            ModelType::XlBase => "xl_base",
            ModelType::XlRefiner => "xl_refiner",
            ModelType::XlInpaint => "xl_inpaint",
        }
    }
}

/// diffusers' `infer_diffusers_model_type`, for the Stable Diffusion families. Anything that is
/// not SD 2.x, SDXL or inpainting falls back to SD 1.x, as in diffusers; use
/// [`detect_model_type`] to reject checkpoints that are no Stable Diffusion at all.
pub fn infer_model_type(ckpt: &Checkpoint) -> ModelType {
    let is_v2 = ckpt.shape(KEY_V2).and_then(|s| s.last()) == Some(&1024);
    let has = |k: &str| ckpt.tensors.contains_key(k);
    if ckpt.shape(KEY_INPAINTING).and_then(|s| s.get(1)) == Some(&9) {
        if is_v2 {
            ModelType::InpaintingV2
        } else if has(KEY_XL_BASE) {
            ModelType::XlInpaint
        } else {
            ModelType::Inpainting
        }
    } else if is_v2 {
        ModelType::V2
    } else if has(KEY_XL_BASE) {
        ModelType::XlBase
    } else if has(KEY_XL_REFINER) {
        ModelType::XlRefiner
    } else {
        ModelType::V1
    }
}

/// The family of a checkpoint, in diffusers' order of checks (`infer_diffusers_model_type`),
/// or an error when the checkpoint belongs to a family diffusers knows but this crate does not
/// convert (Playground, upscaler, ControlNet, InstructPix2Pix, SD3, Flux, Stable Cascade), or has
/// no Stable Diffusion UNet at all (diffusers would guess SD 1.x there and fail later, when the
/// UNet's weights turn out to be missing). The SD 2.x family covers both the 512 epsilon and the
/// 768 v-prediction models: the checkpoint cannot tell them apart, and diffusers 0.42.1 takes the
/// configs of `stabilityai/stable-diffusion-2-1` (v-prediction) for every SD 2.x checkpoint
/// unless `config=` names another folder (for 512-base:
/// `stabilityai/stable-diffusion-2-1-base`).
pub fn detect_model_type(ckpt: &Checkpoint) -> Result<ModelType, ConvertError> {
    let family = infer_model_type(ckpt);
    let unsupported = |name: &str, key: &str| ConvertError::UnknownArchitecture {
        path: ckpt.path.clone(),
        reason: format!(
            "key `{key}` marks a `{name}` checkpoint, a family diffusers knows but this converter does not (supported: SD 1.x, SD 2.x, SDXL base/refiner and their inpainting variants)"
        ),
    };
    if family != ModelType::V1 {
        if family == ModelType::XlBase || family == ModelType::XlRefiner {
            // Only the checks diffusers makes before SDXL can take precedence over it.
            if ckpt.tensors.contains_key("edm_mean") {
                return Err(unsupported("playground-v2-5", "edm_mean"));
            }
        }
        return Ok(family);
    }
    if ckpt.tensors.contains_key("edm_mean") {
        return Err(unsupported("playground-v2-5", "edm_mean"));
    }
    for (key, name) in OTHER_FAMILIES {
        if ckpt.tensors.contains_key(*key) {
            return Err(unsupported(name, key));
        }
    }
    match ckpt.shape(KEY_INPAINTING).and_then(|s| s.get(1)) {
        Some(4) => Ok(ModelType::V1),
        Some(8) => Err(unsupported("instruct-pix2pix", KEY_INPAINTING)),
        Some(n) => Err(ConvertError::UnknownArchitecture {
            path: ckpt.path.clone(),
            reason: format!(
                "the UNet's `{KEY_INPAINTING}` has {n} input channels; Stable Diffusion has 4 (text-to-image) or 9 (inpainting)"
            ),
        }),
        None => Err(ConvertError::UnknownArchitecture {
            path: ckpt.path.clone(),
            reason: format!(
                "no Stable Diffusion UNet: looked for `{KEY_INPAINTING}` (UNet conv_in, SD 1.x / inpainting), `{KEY_V2}` (SD 2.x), `{KEY_XL_BASE}` (SDXL base), `{KEY_XL_REFINER}` (SDXL refiner); the checkpoint has {} tensors{}",
                ckpt.tensors.len(),
                ckpt.tensors
                    .keys()
                    .next()
                    .map(|k| format!(", the first named `{k}`"))
                    .unwrap_or_default()
            ) + if ckpt.tensors.contains_key("encoder.conv_in.weight")
                && ckpt.tensors.contains_key("decoder.conv_out.weight")
            {
                "; it looks like a VAE alone (give it as the separate VAE of a full checkpoint)"
            } else {
                ""
            },
        }),
    }
}

pub(crate) fn config_usize(config: &Map<String, Value>, key: &str) -> Option<usize> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
}

pub(crate) fn config_str<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str)
}

fn read_object(path: &Path) -> Result<Map<String, Value>, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ConvertError::BadJson {
            path: path.to_path_buf(),
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(ConvertError::BadJson {
            path: path.to_path_buf(),
            reason: format!("invalid JSON: {e}"),
        }),
    }
}

/// Converts one model component; `None` for classes that are not converted from the checkpoint.
/// `extract_ema` takes the UNet from the checkpoint's EMA copy (diffusers' `extract_ema`).
/// The result is checked: the component's essential tensors must be there, with shapes that
/// agree with `config` (diffusers would fail to load such a model, or silently leave weights
/// uninitialised).
pub fn convert_component(
    ckpt: &Checkpoint,
    class_name: &str,
    config: &Map<String, Value>,
    extract_ema: bool,
) -> Result<Option<(Library, crate::StateDict)>, ConvertError> {
    let converted = match class_name {
        "UNet2DConditionModel" => (
            Library::Diffusers,
            if is_diffusers_layout(ckpt, "conv_in.weight", "time_embedding.linear_1.weight") {
                diffusers_layout(ckpt)
            } else {
                unet::convert_unet(ckpt, config, extract_ema)?
            },
        ),
        "AutoencoderKL" => (
            Library::Diffusers,
            if is_diffusers_layout(
                ckpt,
                "encoder.conv_in.weight",
                "encoder.conv_norm_out.weight",
            ) {
                diffusers_layout(ckpt)
            } else {
                vae::convert_vae(ckpt, config)?
            },
        ),
        "CLIPTextModel" | "CLIPTextModelWithProjection" => (
            Library::Transformers,
            clip::convert_clip(ckpt, class_name, config)?,
        ),
        _ => return Ok(None),
    };
    check::check_component(ckpt, class_name, config, &converted.1)?;
    Ok(Some(converted))
}

/// [`convert_component`], moving the UNet's tensors out of `ckpt` instead of copying them: the
/// UNet is most of a checkpoint, so converting it (and saving or loading the result) then holds
/// it once, not twice. Other classes are converted as [`convert_component`] does (copied; they
/// are small), with the same checks against `config`.
pub fn take_component(
    ckpt: &mut Checkpoint,
    class_name: &str,
    config: &Map<String, Value>,
    extract_ema: bool,
) -> Result<Option<(Library, crate::StateDict)>, ConvertError> {
    if class_name == "UNet2DConditionModel"
        && !is_diffusers_layout(ckpt, "conv_in.weight", "time_embedding.linear_1.weight")
    {
        let tensors = unet::take_unet(ckpt, config, extract_ema)?;
        check::check_component(ckpt, class_name, config, &tensors)?;
        return Ok(Some((Library::Diffusers, tensors)));
    }
    convert_component(ckpt, class_name, config, extract_ema)
}

/// A single-file component already in the diffusers layout (a `diffusion_pytorch_model`
/// renamed, say): diffusers then loads its keys unchanged (`_should_convert_state_dict_to_diffusers`).
fn is_diffusers_layout(ckpt: &Checkpoint, a: &str, b: &str) -> bool {
    ckpt.tensors.contains_key(a) && ckpt.tensors.contains_key(b)
}

fn diffusers_layout(ckpt: &Checkpoint) -> crate::StateDict {
    ckpt.tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect()
}

/// Whether a component folder holds weights (any variant, sharded or not).
fn has_weights(folder: &Path) -> Result<bool, ConvertError> {
    for entry in std::fs::read_dir(folder).map_err(|e| ConvertError::io(folder, e))? {
        let entry = entry.map_err(|e| ConvertError::io(folder, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights_stem = ["diffusion_pytorch_model", "model", "pytorch_model"]
            .iter()
            .any(|p| name.starts_with(&format!("{p}.")) || name.starts_with(&format!("{p}-")));
        if weights_stem && (name.ends_with(".safetensors") || name.ends_with(".bin")) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Options of [`convert_single_file_with`].
#[derive(Debug, Clone, Default)]
pub struct SingleFileOptions {
    /// How to save (variant, dtype, shard size). Without a dtype, models are saved in float32
    /// whatever the checkpoint holds, as diffusers builds them without `torch_dtype`.
    pub save: SaveOptions,
    /// Take the UNet from the EMA weights (`model_ema.*`) when the checkpoint has them
    /// (diffusers' `extract_ema=True`; it needs more than 100 `model_ema` keys, as diffusers).
    pub extract_ema: bool,
    /// The pipeline class to build (default: the config folder's `_class_name`), as the class
    /// `from_single_file` is called on.
    pub pipeline_class: Option<String>,
    /// Components that come from elsewhere, by name (diffusers' `vae=...` arguments): a
    /// single-file checkpoint of that component alone (original or diffusers key layout,
    /// converted with the config folder's config, as `AutoencoderKL.from_single_file(file,
    /// config=..., subfolder="vae")`) or a diffusers component folder (`from_pretrained`).
    pub components: BTreeMap<String, PathBuf>,
}

/// Converts the single-file checkpoint `ckpt_path` into a diffusers pipeline folder `out`, with
/// the layout and configs of the diffusers folder `config_dir` (see the module doc).
pub fn convert_single_file(
    ckpt_path: &Path,
    config_dir: &Path,
    out: &Path,
    options: &SaveOptions,
) -> Result<(), ConvertError> {
    let options = SingleFileOptions {
        save: options.clone(),
        ..SingleFileOptions::default()
    };
    convert_single_file_with(ckpt_path, config_dir, out, &options)
}

/// [`convert_single_file`] with EMA extraction, a pipeline class and replacement components.
/// Nothing is written unless everything converts: `out` is replaced atomically.
pub fn convert_single_file_with(
    ckpt_path: &Path,
    config_dir: &Path,
    out: &Path,
    options: &SingleFileOptions,
) -> Result<(), ConvertError> {
    let mut ckpt = Checkpoint::open(ckpt_path)?;
    match detect_model_type(&ckpt) {
        Ok(family) => {
            tracing::info!(
                family = family.diffusers_name(),
                tensors = ckpt.tensors.len(),
                "read single-file checkpoint"
            )
        }
        // The configs decide the conversion; a family we cannot name is not fatal by itself
        // (the component checks catch checkpoints that do not fit the configs).
        Err(e) => tracing::warn!("{e}"),
    }
    let index_path = config_dir.join("model_index.json");
    let config_index = read_object(&index_path)?;
    let plan = pipeline::plan(
        &config_index,
        &index_path,
        options.pipeline_class.as_deref(),
    )?;
    for (name, _) in &plan.load {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(ConvertError::BadJson {
                path: index_path.clone(),
                reason: format!("component name `{name}` is not a plain folder name"),
            });
        }
    }
    for name in options.components.keys() {
        if !plan.load.iter().any(|(n, _)| n == name) {
            return Err(ConvertError::BadJson {
                path: index_path.clone(),
                reason: format!(
                    "a replacement was given for `{name}`, which the pipeline does not load (it loads: {})",
                    plan.load
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    // diffusers builds the models in the default dtype (float32) and loads the checkpoint into
    // them, so a half-precision checkpoint converts to float32 unless a dtype is asked for
    // (`torch_dtype=`). Checked against diffusers 0.42.1 with an fp16 checkpoint.
    let model_options = SaveOptions {
        dtype: Some(options.save.dtype.unwrap_or(crate::SaveDtype::F32)),
        ..options.save.clone()
    };
    let mut index = plan.index;
    atomic_folder(out, |tmp| {
        for (name, class) in &plan.load {
            let from = config_dir.join(name);
            let to = tmp.join(name);
            std::fs::create_dir_all(&to).map_err(|e| ConvertError::io(&to, e))?;
            let replacement = options.components.get(name);
            if let Some(dir) = replacement.filter(|p| p.is_dir()) {
                // A diffusers component folder: loaded and re-saved as it is.
                save_component(dir, &to, &model_options, None)?;
                continue;
            }
            let config_file = from.join("config.json");
            let converted = if config_file.is_file() {
                let config = read_object(&config_file)?;
                match replacement {
                    Some(file) => {
                        let part = Checkpoint::open(file)?;
                        let converted = convert_component(&part, class, &config, false)?;
                        if converted.is_none() {
                            return Err(ConvertError::UnknownArchitecture {
                                path: file.clone(),
                                reason: format!(
                                    "`{name}` ({class}) cannot be converted from a single file; pass a diffusers folder"
                                ),
                            });
                        }
                        converted
                    }
                    None => take_component(&mut ckpt, class, &config, options.extract_ema)?,
                }
            } else {
                None
            };
            match converted {
                Some((library, mut tensors)) => {
                    for entry in std::fs::read_dir(&from).map_err(|e| ConvertError::io(&from, e))? {
                        let entry = entry.map_err(|e| ConvertError::io(&from, e))?;
                        let file = entry.file_name().to_string_lossy().into_owned();
                        if file.ends_with(".json")
                            && !file.contains(".index")
                            && entry.path().is_file()
                        {
                            rewrite_config(
                                &entry.path(),
                                &to.join(&file),
                                None,
                                model_options.dtype,
                            )?;
                        }
                    }
                    match library {
                        Library::Diffusers => crate::order::sort_state_dict_keys(&mut tensors),
                        Library::Transformers => crate::order::sort_transformers_keys(&mut tensors),
                    }
                    save_weights(&to, library, tensors, &model_options)?;
                }
                // Tokenizers, schedulers, feature extractors (and any model whose weights the
                // config folder carries) come from the config folder, as diffusers loads them.
                // A model (a folder with `config.json`) without weights there is an error, as
                // diffusers' SingleFileComponentError: nothing would be saved for it.
                None => {
                    if config_file.is_file() && !has_weights(&from)? {
                        return Err(ConvertError::NoWeights {
                            folder: from.clone(),
                            looked_for: format!(
                                "`{name}` ({class}) is not converted from single files and the config folder holds no diffusion_pytorch_model / model weights for it; pass it as a diffusers folder"
                            ),
                        });
                    }
                    save_component(&from, &to, &options.save, None)?
                }
            }
        }
        index.insert(
            "_diffusers_version".into(),
            Value::String(diff_format::DIFFUSERS_VERSION.into()),
        );
        let text = diff_format::json::to_config_string(&Value::Object(index.clone()));
        crate::save::write_file(&tmp.join("model_index.json"), text.as_bytes())
    })
}
