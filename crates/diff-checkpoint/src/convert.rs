//! One component of a single-file checkpoint to diffusers / transformers keys, checked against
//! its config.

use crate::family::Checkpoint;
use crate::tensors::StateDict;
use crate::{CheckpointError, check, clip, unet, vae};
use serde_json::{Map, Value};

/// Which library a model folder belongs to decides file names and index metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    /// diffusers `ModelMixin` (`diffusion_pytorch_model*.safetensors`).
    Diffusers,
    /// transformers `PreTrainedModel` (`model*.safetensors`).
    Transformers,
}

/// `config[key]` as a `usize`, when it is a non-negative integer.
pub fn config_usize(config: &Map<String, Value>, key: &str) -> Option<usize> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
}

/// `config[key]` as a string.
pub fn config_str<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str)
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
) -> Result<Option<(Library, StateDict)>, CheckpointError> {
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
) -> Result<Option<(Library, StateDict)>, CheckpointError> {
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

fn diffusers_layout(ckpt: &Checkpoint) -> StateDict {
    ckpt.tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect()
}
