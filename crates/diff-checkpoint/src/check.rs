//! Sanity checks of a converted component against its config.
//!
//! diffusers loads converted weights into a model built from the config: a missing tensor stays
//! uninitialised (on the meta device, so saving fails later) and a shape mismatch raises. We move
//! bytes without building the model, so these checks stand in for that load: the essential
//! tensors must exist, and the shapes that encode the config (input channels, cross-attention
//! width, hidden size, number of layers) must agree with it. The errors name the original key
//! (or the converted one for text encoders) and what was expected.

use crate::CheckpointError;
use crate::convert::config_usize;
use crate::family::Checkpoint;
use crate::tensors::StateDict;
use serde_json::{Map, Value};

/// Where a component lives in an original checkpoint, for messages.
fn origin(class: &str) -> &'static str {
    match class {
        "UNet2DConditionModel" => "model.diffusion_model.*",
        "AutoencoderKL" => "first_stage_model.* (or vae.*)",
        _ => "cond_stage_model.* (SD 1.x/2.x) or conditioner.embedders.* (SDXL)",
    }
}

/// Checks the converted tensors of one component (see the module doc).
pub(crate) fn check_component(
    ckpt: &Checkpoint,
    class: &str,
    config: &Map<String, Value>,
    tensors: &StateDict,
) -> Result<(), CheckpointError> {
    if tensors.is_empty() {
        return Err(CheckpointError::MissingKey {
            path: ckpt.path.clone(),
            key: origin(class).to_string(),
            needed_for: format!(
                "the {class}: the checkpoint holds no weights for it; pass that component separately (CLI `--vae FILE_OR_DIR` for the VAE; diffusers' `{}=`)",
                if class == "AutoencoderKL" {
                    "vae"
                } else {
                    "<component>"
                }
            ),
        });
    }
    let get = |k: &str| tensors.iter().find(|(n, _)| n == k).map(|(_, t)| t);
    let missing = |key: &str, original: &str| CheckpointError::MissingKey {
        path: ckpt.path.clone(),
        key: original.to_string(),
        needed_for: format!("the {class}'s `{key}`"),
    };
    let bad = |key: &str, shape: &[usize], expected: String| CheckpointError::BadShape {
        path: ckpt.path.clone(),
        key: key.to_string(),
        got: shape.to_vec(),
        expected,
    };
    match class {
        "UNet2DConditionModel" => {
            for (key, original) in [
                (
                    "conv_in.weight",
                    "model.diffusion_model.input_blocks.0.0.weight",
                ),
                (
                    "time_embedding.linear_1.weight",
                    "model.diffusion_model.time_embed.0.weight",
                ),
                ("conv_out.weight", "model.diffusion_model.out.2.weight"),
            ] {
                if get(key).is_none() {
                    return Err(missing(key, original));
                }
            }
            let in_channels = config_usize(config, "in_channels").unwrap_or(4);
            if let Some(t) = get("conv_in.weight")
                && t.shape.get(1) != Some(&in_channels)
            {
                return Err(bad(
                    "model.diffusion_model.input_blocks.0.0.weight",
                    &t.shape,
                    format!(
                        "{in_channels} input channels (the UNet config's `in_channels`; inpainting checkpoints have 9 and need an inpainting config)"
                    ),
                ));
            }
            if let Some(width) = config_usize(config, "cross_attention_dim")
                && let Some((key, t)) = tensors
                    .iter()
                    .find(|(k, _)| k.ends_with("attn2.to_k.weight"))
                && t.shape.last() != Some(&width)
            {
                return Err(bad(
                    key,
                    &t.shape,
                    format!(
                        "a last dimension of {width} (the UNet config's `cross_attention_dim`: 768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL)"
                    ),
                ));
            }
        }
        "AutoencoderKL" => {
            for key in ["encoder.conv_in.weight", "decoder.conv_out.weight"] {
                if get(key).is_none() {
                    return Err(missing(key, &format!("first_stage_model.{key}")));
                }
            }
            let in_channels = config_usize(config, "in_channels").unwrap_or(3);
            if let Some(t) = get("encoder.conv_in.weight")
                && t.shape.get(1) != Some(&in_channels)
            {
                return Err(bad(
                    "first_stage_model.encoder.conv_in.weight",
                    &t.shape,
                    format!("{in_channels} input channels (the VAE config's `in_channels`)"),
                ));
            }
        }
        _ => {
            let prefix = if class == "CLIPTextModelWithProjection" {
                "text_model."
            } else {
                ""
            };
            let token = format!("{prefix}embeddings.token_embedding.weight");
            for key in [token.clone(), format!("{prefix}final_layer_norm.weight")] {
                if get(&key).is_none() {
                    return Err(missing(&key, &format!("{key} (after conversion)")));
                }
            }
            if let (Some(hidden), Some(t)) = (config_usize(config, "hidden_size"), get(&token))
                && t.shape.get(1) != Some(&hidden)
            {
                return Err(bad(
                    &token,
                    &t.shape,
                    format!("width {hidden} (the text encoder config's `hidden_size`)"),
                ));
            }
            if let Some(layers) = config_usize(config, "num_hidden_layers") {
                for i in 0..layers {
                    let layer = format!("{prefix}encoder.layers.{i}.");
                    if !tensors.iter().any(|(k, _)| k.starts_with(&layer)) {
                        return Err(missing(
                            &format!("{layer}*"),
                            &format!(
                                "{layer}* (after conversion; the config's `num_hidden_layers` is {layers})"
                            ),
                        ));
                    }
                }
            }
            // Checked last: a text encoder of the wrong family lacks it too, and its width
            // mismatch above is the more telling error.
            if class == "CLIPTextModelWithProjection" && get("text_projection.weight").is_none() {
                return Err(missing(
                    "text_projection.weight",
                    "text_projection (after conversion; OpenCLIP `text_projection`)",
                ));
            }
        }
    }
    Ok(())
}
