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

use crate::CheckpointError;
use crate::convert::{config_str, config_usize};
use crate::family::Checkpoint;
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

/// The name CompVis' `LitEma` gives the EMA copy of `key` (a `model.diffusion_model.*` key):
/// `model_ema.` and the key without its first segment and without dots, as diffusers looks it up.
pub fn ema_key(key: &str) -> String {
    let rest: String = key.split('.').skip(1).collect();
    format!("model_ema.{rest}")
}

/// How many `model_ema*` keys make a checkpoint an EMA checkpoint for diffusers (more than this).
pub const EMA_MIN_KEYS: usize = 100;

/// The UNet tensors of the checkpoint, as (name without `model.diffusion_model.`, key of the
/// tensor to take): the `model.diffusion_model.*` ones, or with `extract_ema` and an EMA
/// checkpoint, their EMA copies (diffusers `extract_ema`).
fn unet_source(
    ckpt: &Checkpoint,
    extract_ema: bool,
) -> Result<Vec<(&str, String)>, CheckpointError> {
    let ema_keys = ckpt
        .tensors
        .keys()
        .filter(|k| k.starts_with("model_ema"))
        .count();
    let use_ema = extract_ema && ema_keys > EMA_MIN_KEYS;
    if extract_ema && !use_ema {
        tracing::warn!(
            ema_keys,
            "extract_ema asked for, but the checkpoint has no EMA weights (diffusers needs more than {EMA_MIN_KEYS} `model_ema` keys); using the plain weights"
        );
    } else if !extract_ema && ema_keys > EMA_MIN_KEYS {
        tracing::info!(
            "the checkpoint has EMA weights too; converting the non-EMA ones (extract_ema takes the EMA ones)"
        );
    }
    let mut out = Vec::new();
    for key in ckpt.tensors.keys() {
        let Some(k) = key.strip_prefix(LDM_UNET_KEY) else {
            continue;
        };
        if use_ema {
            let ema = ema_key(key);
            if !ckpt.tensors.contains_key(&ema) {
                return Err(CheckpointError::MissingKey {
                    path: ckpt.path.clone(),
                    key: ema,
                    needed_for: format!("the EMA copy of `{key}` (extract_ema)"),
                });
            }
            out.push((k, ema));
        } else {
            out.push((k, key.clone()));
        }
    }
    Ok(out)
}

/// Converts the UNet of an original checkpoint, using the diffusers UNet `config`; with
/// `extract_ema`, from its EMA weights when it has them. The tensors are copied; see
/// [`take_unet`] to move them out instead.
pub fn convert_unet(
    ckpt: &Checkpoint,
    config: &Map<String, Value>,
    extract_ema: bool,
) -> Result<StateDict, CheckpointError> {
    unet_renames(ckpt, config, extract_ema)?
        .into_iter()
        .map(|(new, old)| match ckpt.tensors.get(&old) {
            Some(t) => Ok((new, t.clone())),
            None => Err(missing_source(ckpt, &old)),
        })
        .collect()
}

/// [`convert_unet`], moving the tensors out of `ckpt` (a full-size UNet is then held once, not
/// twice, while it is converted and saved).
pub fn take_unet(
    ckpt: &mut Checkpoint,
    config: &Map<String, Value>,
    extract_ema: bool,
) -> Result<StateDict, CheckpointError> {
    let renames = unet_renames(ckpt, config, extract_ema)?;
    let mut out = Vec::with_capacity(renames.len());
    for (new, old) in renames {
        match ckpt.tensors.remove(&old) {
            Some(t) => out.push((new, t)),
            None => return Err(missing_source(ckpt, &old)),
        }
    }
    Ok(out)
}

/// Each original key feeds at most one diffusers key; a key asked for twice (or vanished) is a
/// conversion bug reported as a missing key rather than a panic.
fn missing_source(ckpt: &Checkpoint, key: &str) -> CheckpointError {
    CheckpointError::MissingKey {
        path: ckpt.path.clone(),
        key: key.to_string(),
        needed_for: "the UNet conversion".into(),
    }
}

/// The diffusers name of each UNet tensor and the checkpoint key it comes from, in checkpoint
/// key order.
fn unet_renames(
    ckpt: &Checkpoint,
    config: &Map<String, Value>,
    extract_ema: bool,
) -> Result<Vec<(String, String)>, CheckpointError> {
    let layers = config_usize(config, "layers_per_block").unwrap_or(2);
    let per_block = layers.saturating_add(1);
    let text_time = config_str(config, "addition_embed_type") == Some("text_time");
    let class_embed = matches!(
        config_str(config, "class_embed_type"),
        Some("timestep" | "projection")
    );
    let mut out: Vec<(String, String)> = Vec::new();
    let mut label_emb_seen = false;
    for (k, source) in unet_source(ckpt, extract_ema)? {
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
            Some(n) => out.push((n, source)),
            None => {
                tracing::debug!(key = %k, "original UNet key has no diffusers counterpart; dropped")
            }
        }
    }
    if (text_time || class_embed) && !label_emb_seen {
        return Err(CheckpointError::MissingKey {
            path: ckpt.path.clone(),
            key: format!("{LDM_UNET_KEY}label_emb.0.0.weight"),
            needed_for: "the UNet's add_embedding / class_embedding (the config asks for one)"
                .into(),
        });
    }
    Ok(out)
}
