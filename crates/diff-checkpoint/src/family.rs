//! Single-file checkpoints in memory and their family (diffusers' `infer_diffusers_model_type`).

use crate::CheckpointError;
use crate::tensors::{RawTensor, read_pickle, read_safetensors};
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
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
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

    pub(crate) fn shape(&self, key: &str) -> Option<&[usize]> {
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
pub fn detect_model_type(ckpt: &Checkpoint) -> Result<ModelType, CheckpointError> {
    let family = infer_model_type(ckpt);
    let unsupported = |name: &str, key: &str| CheckpointError::UnknownArchitecture {
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
        Some(n) => Err(CheckpointError::UnknownArchitecture {
            path: ckpt.path.clone(),
            reason: format!(
                "the UNet's `{KEY_INPAINTING}` has {n} input channels; Stable Diffusion has 4 (text-to-image) or 9 (inpainting)"
            ),
        }),
        None => Err(CheckpointError::UnknownArchitecture {
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
