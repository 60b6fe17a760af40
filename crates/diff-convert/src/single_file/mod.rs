//! `from_single_file`: original Stable Diffusion checkpoints (CompVis / LDM and SGM key layouts)
//! to a diffusers pipeline folder.
//!
//! # Flow (diffusers `FromSingleFileMixin.from_single_file`)
//! 1. Read the checkpoint ([`Checkpoint::open`]): `.safetensors`, or a PyTorch pickle (`.ckpt`,
//!    `.pt`, `.bin`) through the restricted reader, descending into `"state_dict"` as diffusers
//!    does for Lightning checkpoints.
//! 2. Detect the family from keys and shapes ([`infer_model_type`], diffusers'
//!    `infer_diffusers_model_type` for the SD families). The family only picks the default
//!    config repo ([`ModelType::default_config_repo`]); the conversion itself follows the config.
//! 3. Take the pipeline layout and every component config from a diffusers folder (`--config`,
//!    or the default repo downloaded by the caller), convert the UNet ([`unet`]), VAE ([`vae`])
//!    and text encoders ([`clip`]) from the checkpoint, copy tokenizers, scheduler and feature
//!    extractor configs from the config folder, and save with [`crate::save`] (variant, dtype,
//!    sharding, atomic).
//!
//! diffusers' `from_single_file` + `save_pretrained` writes the config folder's configs
//! unchanged (no `_name_or_path`), so we re-serialise them; with the same config folder the
//! result is byte-identical (tested per family against diffusers 0.42.1).

pub mod clip;
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

/// diffusers' `infer_diffusers_model_type`, for the Stable Diffusion families.
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
pub fn convert_component(
    ckpt: &Checkpoint,
    class_name: &str,
    config: &Map<String, Value>,
) -> Result<Option<(Library, crate::StateDict)>, ConvertError> {
    Ok(match class_name {
        "UNet2DConditionModel" => Some((Library::Diffusers, unet::convert_unet(ckpt, config)?)),
        "AutoencoderKL" => Some((Library::Diffusers, vae::convert_vae(ckpt, config)?)),
        "CLIPTextModel" | "CLIPTextModelWithProjection" => Some((
            Library::Transformers,
            clip::convert_clip(ckpt, class_name, config)?,
        )),
        _ => None,
    })
}

/// Converts the single-file checkpoint `ckpt_path` into a diffusers pipeline folder `out`, with
/// the layout and configs of the diffusers folder `config_dir` (see the module doc).
pub fn convert_single_file(
    ckpt_path: &Path,
    config_dir: &Path,
    out: &Path,
    options: &SaveOptions,
) -> Result<(), ConvertError> {
    let ckpt = Checkpoint::open(ckpt_path)?;
    tracing::info!(family = ?infer_model_type(&ckpt), tensors = ckpt.tensors.len(), "read single-file checkpoint");
    let index_path = config_dir.join("model_index.json");
    let mut index = read_object(&index_path)?;
    let components: Vec<(String, String)> = index
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .filter_map(|(k, v)| match v.as_array().map(Vec::as_slice) {
            Some([Value::String(_), Value::String(class)]) => Some((k.clone(), class.clone())),
            _ => None,
        })
        .collect();
    for (name, _) in &components {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(ConvertError::BadJson {
                path: index_path.clone(),
                reason: format!("component name `{name}` is not a plain folder name"),
            });
        }
    }
    // diffusers builds the models in the default dtype (float32) and loads the checkpoint into
    // them, so a half-precision checkpoint converts to float32 unless a dtype is asked for
    // (`torch_dtype=`). Checked against diffusers 0.42.1 with an fp16 checkpoint.
    let model_options = SaveOptions {
        dtype: Some(options.dtype.unwrap_or(crate::SaveDtype::F32)),
        ..options.clone()
    };
    atomic_folder(out, |tmp| {
        for (name, class) in &components {
            let from = config_dir.join(name);
            let to = tmp.join(name);
            std::fs::create_dir_all(&to).map_err(|e| ConvertError::io(&to, e))?;
            let config_file = from.join("config.json");
            let converted = if config_file.is_file() {
                convert_component(&ckpt, class, &read_object(&config_file)?)?
            } else {
                None
            };
            match converted {
                Some((library, tensors)) => {
                    if tensors.is_empty() {
                        return Err(ConvertError::UnknownArchitecture {
                            path: ckpt.path.clone(),
                            reason: format!("no tensors for component `{name}` ({class})"),
                        });
                    }
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
                    let mut tensors = tensors;
                    match library {
                        Library::Diffusers => crate::order::sort_state_dict_keys(&mut tensors),
                        Library::Transformers => crate::order::sort_transformers_keys(&mut tensors),
                    }
                    save_weights(&to, library, tensors, &model_options)?;
                }
                // Tokenizers, schedulers, feature extractors (and any component whose weights
                // the config folder carries) come from the config folder, as diffusers loads them.
                None => save_component(&from, &to, options, None)?,
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
