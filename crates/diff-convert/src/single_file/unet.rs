//! Original (CompVis / SGM) UNet keys to diffusers' `UNet2DConditionModel`
//! (diffusers `convert_ldm_unet_checkpoint`, `loaders/single_file_utils.py`).
//!
//! Layout of the original `openaimodel.UNetModel` under `model.diffusion_model.`:
//! `input_blocks.0.0` is `conv_in`; then each down block has `layers_per_block` entries
//! `input_blocks.i.{0: resnet, 1: transformer}` followed (except the last block) by
//! `input_blocks.i.0.op` (the downsampler); `middle_block.{0,2}` are resnets and
//! `middle_block.1` the transformer; `output_blocks` mirror that with `layers_per_block + 1`
//! entries per up block, the upsampler being `.1.conv` (no transformer) or `.2.conv`.
//! Transformer keys are the same in both layouts; resnet keys are renamed (`in_layers.0` →
//! `norm1`, ...). Keys the conversion does not know are dropped, as diffusers drops them.

use super::{Checkpoint, config_str, config_usize};
use crate::ConvertError;
use crate::tensors::StateDict;
use serde_json::{Map, Value};

/// The original UNet's prefix in a full checkpoint.
pub const LDM_UNET_KEY: &str = "model.diffusion_model.";

const RESNET_RENAMES: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
];

fn resnet(rest: &str) -> String {
    RESNET_RENAMES
        .iter()
        .fold(rest.to_string(), |k, (old, new)| k.replace(old, new))
}

/// Splits `"<n>.<m>.<rest>"` into `(n, m, rest)`.
fn two_indices(s: &str) -> Option<(usize, usize, &str)> {
    let (a, s) = s.split_once('.')?;
    let (b, rest) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?, rest))
}

/// Converts the UNet of an original checkpoint, using the diffusers UNet `config`.
pub fn convert_unet(
    ckpt: &Checkpoint,
    config: &Map<String, Value>,
) -> Result<StateDict, ConvertError> {
    let layers = config_usize(config, "layers_per_block").unwrap_or(2);
    let per_block = layers.saturating_add(1);
    let text_time = config_str(config, "addition_embed_type") == Some("text_time");
    let class_embed = matches!(
        config_str(config, "class_embed_type"),
        Some("timestep" | "projection")
    );
    let mut out: StateDict = Vec::new();
    let mut label_emb_seen = false;
    for (key, tensor) in ckpt.tensors.iter() {
        let Some(k) = key.strip_prefix(LDM_UNET_KEY) else {
            continue;
        };
        let new = match k {
            "time_embed.0.weight" => Some("time_embedding.linear_1.weight".to_string()),
            "time_embed.0.bias" => Some("time_embedding.linear_1.bias".to_string()),
            "time_embed.2.weight" => Some("time_embedding.linear_2.weight".to_string()),
            "time_embed.2.bias" => Some("time_embedding.linear_2.bias".to_string()),
            "input_blocks.0.0.weight" => Some("conv_in.weight".to_string()),
            "input_blocks.0.0.bias" => Some("conv_in.bias".to_string()),
            "out.0.weight" => Some("conv_norm_out.weight".to_string()),
            "out.0.bias" => Some("conv_norm_out.bias".to_string()),
            "out.2.weight" => Some("conv_out.weight".to_string()),
            "out.2.bias" => Some("conv_out.bias".to_string()),
            "label_emb.weight" if config.get("num_class_embeds").is_some_and(|v| !v.is_null()) => {
                Some("class_embedding.weight".to_string())
            }
            _ => {
                if let Some(rest) = k.strip_prefix("label_emb.0.") {
                    label_emb_seen = true;
                    let target = if text_time {
                        "add_embedding"
                    } else if class_embed {
                        "class_embedding"
                    } else {
                        ""
                    };
                    let layer = match rest.split_once('.') {
                        Some(("0", p)) => Some(format!("linear_1.{p}")),
                        Some(("2", p)) => Some(format!("linear_2.{p}")),
                        _ => None,
                    };
                    match (target, layer) {
                        ("", _) | (_, None) => None,
                        (t, Some(l)) => Some(format!("{t}.{l}")),
                    }
                } else if let Some(s) = k.strip_prefix("input_blocks.") {
                    two_indices(s).and_then(|(i, j, rest)| {
                        if i == 0 {
                            return None;
                        }
                        let block = (i - 1) / per_block;
                        let layer = (i - 1) % per_block;
                        match j {
                            0 => match rest.strip_prefix("op.") {
                                Some(p @ ("weight" | "bias")) => {
                                    Some(format!("down_blocks.{block}.downsamplers.0.conv.{p}"))
                                }
                                Some(_) => None,
                                None => Some(format!(
                                    "down_blocks.{block}.resnets.{layer}.{}",
                                    resnet(rest)
                                )),
                            },
                            1 => Some(format!("down_blocks.{block}.attentions.{layer}.{rest}")),
                            _ => None,
                        }
                    })
                } else if let Some(s) = k.strip_prefix("middle_block.") {
                    s.split_once('.').and_then(|(n, rest)| {
                        let n: usize = n.parse().ok()?;
                        let id = n.saturating_sub(1);
                        Some(if n.is_multiple_of(2) {
                            format!("mid_block.resnets.{id}.{}", resnet(rest))
                        } else {
                            format!("mid_block.attentions.{id}.{rest}")
                        })
                    })
                } else if let Some(s) = k.strip_prefix("output_blocks.") {
                    two_indices(s).and_then(|(i, j, rest)| {
                        let block = i / per_block;
                        let layer = i % per_block;
                        match (j, rest.strip_prefix("conv.")) {
                            (0, _) => Some(format!(
                                "up_blocks.{block}.resnets.{layer}.{}",
                                resnet(rest)
                            )),
                            (1 | 2, Some(p @ ("weight" | "bias"))) => {
                                Some(format!("up_blocks.{block}.upsamplers.0.conv.{p}"))
                            }
                            (1, None) => {
                                Some(format!("up_blocks.{block}.attentions.{layer}.{rest}"))
                            }
                            _ => None,
                        }
                    })
                } else {
                    None
                }
            }
        };
        match new {
            Some(n) => out.push((n, tensor.clone())),
            None => {
                tracing::debug!(key = %key, "original UNet key has no diffusers counterpart; dropped")
            }
        }
    }
    if (text_time || class_embed) && !label_emb_seen {
        return Err(ConvertError::MissingKey {
            path: ckpt.path.clone(),
            key: format!("{LDM_UNET_KEY}label_emb.0.0.weight"),
            needed_for: "the UNet's add_embedding / class_embedding (the config asks for one)"
                .into(),
        });
    }
    Ok(out)
}
