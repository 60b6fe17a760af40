//! Original (CompVis) autoencoder keys to diffusers' `AutoencoderKL`
//! (diffusers `convert_ldm_vae_checkpoint`, `loaders/single_file_utils.py`).
//!
//! The original encoder has `down.{i}.block.{j}` resnets and `down.{i}.downsample`; the decoder
//! numbers its `up.{i}` blocks from the *lowest* resolution, so diffusers' `up_blocks.{i}` is
//! `up.{n-1-i}`. The mid block is `mid.block_1`, `mid.attn_1`, `mid.block_2`. The attention uses
//! 1×1 convolutions (`q, k, v, proj_out`) that become linear layers (`to_q, ...`), so their
//! weights lose the trailing unit dimensions.

use crate::CheckpointError;
use crate::family::Checkpoint;
use crate::tensors::{RawTensor, StateDict};
use serde_json::{Map, Value};

/// Prefixes of the VAE in full checkpoints (diffusers `LDM_VAE_KEYS`).
pub const LDM_VAE_KEYS: [&str; 2] = ["first_stage_model.", "vae."];

fn resnet(rest: &str) -> String {
    rest.replace("nin_shortcut", "conv_shortcut")
}

/// Drops trailing unit dimensions of a 1×1 convolution weight (`[c, c, 1, 1]` → `[c, c]`); the
/// data bytes are unchanged because the dropped dimensions have size 1.
fn conv_to_linear(t: &RawTensor) -> RawTensor {
    let mut t = t.clone();
    if t.shape.len() > 2 && t.shape[2..].iter().all(|&d| d == 1) {
        t.shape.truncate(2);
    }
    t
}

fn attention(rest: &str) -> Option<&'static str> {
    Some(match rest {
        "norm.weight" => "group_norm.weight",
        "norm.bias" => "group_norm.bias",
        "q.weight" => "to_q.weight",
        "q.bias" => "to_q.bias",
        "k.weight" => "to_k.weight",
        "k.bias" => "to_k.bias",
        "v.weight" => "to_v.weight",
        "v.bias" => "to_v.bias",
        "proj_out.weight" => "to_out.0.weight",
        "proj_out.bias" => "to_out.0.bias",
        _ => return None,
    })
}

/// Converts the VAE of an original checkpoint, using the diffusers VAE `config`.
pub fn convert_vae(
    ckpt: &Checkpoint,
    config: &Map<String, Value>,
) -> Result<StateDict, CheckpointError> {
    let count = |key: &str| config.get(key).and_then(Value::as_array).map(Vec::len);
    let num_down = count("down_block_types").unwrap_or(1);
    let num_up = count("up_block_types").unwrap_or(1);
    // As diffusers: the last prefix of the list that any key starts with (none: all keys).
    let prefix = LDM_VAE_KEYS
        .iter()
        .rev()
        .find(|p| ckpt.tensors.keys().any(|k| k.starts_with(*p)))
        .copied()
        .unwrap_or("");
    let mut out: StateDict = Vec::new();
    for (key, tensor) in ckpt.tensors.iter() {
        let Some(k) = key.strip_prefix(prefix) else {
            continue;
        };
        let Some((part, rest)) = k.split_once('.') else {
            continue;
        };
        let mut linear = false;
        let new = match (part, rest) {
            ("quant_conv" | "post_quant_conv", _) => Some(k.to_string()),
            ("encoder" | "decoder", r) => {
                if let Some(p) = r.strip_prefix("norm_out.") {
                    Some(format!("{part}.conv_norm_out.{p}"))
                } else if r.starts_with("conv_in.") || r.starts_with("conv_out.") {
                    Some(k.to_string())
                } else if let Some(s) = r.strip_prefix("mid.") {
                    if let Some(a) = s.strip_prefix("attn_1.") {
                        linear = true;
                        attention(a).map(|a| format!("{part}.mid_block.attentions.0.{a}"))
                    } else if let Some(b) = s.strip_prefix("block_1.") {
                        Some(format!("{part}.mid_block.resnets.0.{}", resnet(b)))
                    } else {
                        s.strip_prefix("block_2.")
                            .map(|b| format!("{part}.mid_block.resnets.1.{}", resnet(b)))
                    }
                } else if let (Some(s), "encoder") = (r.strip_prefix("down."), part) {
                    s.split_once('.').and_then(|(i, s)| {
                        let i: usize = i.parse().ok()?;
                        if i >= num_down {
                            return None;
                        }
                        if let Some(p) = s.strip_prefix("downsample.conv.") {
                            Some(format!("encoder.down_blocks.{i}.downsamplers.0.conv.{p}"))
                        } else {
                            let b = s.strip_prefix("block.")?;
                            Some(format!("encoder.down_blocks.{i}.resnets.{}", resnet(b)))
                        }
                    })
                } else if let (Some(s), "decoder") = (r.strip_prefix("up."), part) {
                    s.split_once('.').and_then(|(i, s)| {
                        let i: usize = i.parse().ok()?;
                        let block = num_up.checked_sub(1)?.checked_sub(i)?;
                        if let Some(p) = s.strip_prefix("upsample.conv.") {
                            Some(format!("decoder.up_blocks.{block}.upsamplers.0.conv.{p}"))
                        } else {
                            let b = s.strip_prefix("block.")?;
                            Some(format!("decoder.up_blocks.{block}.resnets.{}", resnet(b)))
                        }
                    })
                } else {
                    None
                }
            }
            _ => None,
        };
        match new {
            Some(n) => out.push((
                n,
                if linear {
                    conv_to_linear(tensor)
                } else {
                    tensor.clone()
                },
            )),
            None => {
                tracing::debug!(key = %key, "original VAE key has no diffusers counterpart; dropped")
            }
        }
    }
    Ok(out)
}
