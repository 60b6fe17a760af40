//! Original text encoders to transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`
//! (diffusers `create_diffusers_clip_model_from_ldm`, `convert_ldm_clip_checkpoint`,
//! `convert_open_clip_checkpoint`, `loaders/single_file_utils.py`).
//!
//! - OpenAI CLIP (SD 1.x `cond_stage_model.transformer.`, SDXL's first encoder
//!   `conditioner.embedders.0.transformer.`) is already in transformers' layout; only the prefix
//!   goes.
//! - OpenCLIP (SD 2.x `cond_stage_model.model.`, SDXL's second encoder
//!   `conditioner.embedders.1.model.`, the refiner's `conditioner.embedders.0.model.`) is renamed
//!   (`resblocks` → `encoder.layers`, `ln_1` → `layer_norm1`, `c_fc` → `fc1`, ...), its fused
//!   `in_proj` is split into `q_proj, k_proj, v_proj`, and `text_projection` is transposed (it is
//!   applied as `x @ P` in OpenCLIP, as a linear layer in transformers).
//! - SD 2.x's last layer (`resblocks.23`) and `text_projection` are ignored: SD 2 uses the
//!   penultimate layer, and diffusers' text encoder config has 23 layers.
//!
//! transformers ≥ 5.6 flattened `CLIPTextModel` (no `text_model.` prefix in its state dict);
//! `CLIPTextModelWithProjection` keeps it. The result holds exactly the keys the model has: the
//! `position_ids` buffer (not persistent) and layers beyond `num_hidden_layers` are dropped.

use crate::CheckpointError;
use crate::convert::config_usize;
use crate::family::Checkpoint;
use crate::tensors::{RawTensor, StateDict};
use serde_json::{Map, Value};

const CLIP_POSITION: [(&str, &str); 2] = [
    (
        "cond_stage_model.transformer.",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    ),
    (
        "conditioner.embedders.0.transformer.",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
    ),
];
const OPEN_CLIP: &str = "cond_stage_model.model.";
const OPEN_CLIP_SDXL: &str = "conditioner.embedders.1.model.";
const OPEN_CLIP_SDXL_REFINER: &str = "conditioner.embedders.0.model.";

/// SD 2.x keys diffusers skips (`SD_2_TEXT_ENCODER_KEYS_TO_IGNORE`): the last layer and the
/// projection, which the penultimate-layer text encoder does not use.
fn sd2_ignored(key: &str) -> bool {
    key == "cond_stage_model.model.text_projection"
        || key.starts_with("cond_stage_model.model.transformer.resblocks.23.")
}

/// Which original encoder feeds a text encoder of hidden size `hidden`, in diffusers' order.
enum Source {
    Clip,
    OpenClip(&'static str),
}

fn pick_source(ckpt: &Checkpoint, hidden: Option<usize>) -> Option<Source> {
    let dim_matches = |key: &str| {
        ckpt.tensors
            .get(key)
            .is_some_and(|t| hidden.is_none_or(|h| t.shape.last() == Some(&h)))
    };
    if ckpt.tensors.contains_key(CLIP_POSITION[0].1) {
        return Some(Source::Clip);
    }
    if dim_matches(CLIP_POSITION[1].1) {
        return Some(Source::Clip);
    }
    if ckpt
        .tensors
        .contains_key(&format!("{OPEN_CLIP}token_embedding.weight"))
    {
        return Some(Source::OpenClip(OPEN_CLIP));
    }
    if dim_matches(&format!("{OPEN_CLIP_SDXL}positional_embedding")) {
        return Some(Source::OpenClip(OPEN_CLIP_SDXL));
    }
    if ckpt
        .tensors
        .contains_key(&format!("{OPEN_CLIP_SDXL_REFINER}text_projection"))
    {
        return Some(Source::OpenClip(OPEN_CLIP_SDXL_REFINER));
    }
    None
}

/// Rows `from..to` of a row-major tensor (the split of OpenCLIP's fused `in_proj`).
fn rows(t: &RawTensor, from: usize, to: usize) -> Option<RawTensor> {
    let row: usize =
        t.shape.iter().skip(1).product::<usize>() * crate::tensors::element_size(t.dtype)?;
    let data = t.data.get(from * row..to * row)?.to_vec();
    let mut shape = t.shape.clone();
    *shape.first_mut()? = to - from;
    Some(RawTensor {
        dtype: t.dtype,
        shape,
        data,
    })
}

/// Transposes a 2-D tensor.
fn transpose(t: &RawTensor) -> Option<RawTensor> {
    let [r, c] = t.shape[..] else { return None };
    let e = crate::tensors::element_size(t.dtype)?;
    let mut data = vec![0u8; t.data.len()];
    for i in 0..r {
        for j in 0..c {
            let src = (i * c + j) * e;
            let dst = (j * r + i) * e;
            data.get_mut(dst..dst + e)?
                .copy_from_slice(t.data.get(src..src + e)?);
        }
    }
    Some(RawTensor {
        dtype: t.dtype,
        shape: vec![c, r],
        data,
    })
}

fn open_clip_rename(rest: &str) -> String {
    // diffusers applies these `str.replace`s in this order to every transformer key.
    const MAP: [(&str, &str); 6] = [
        ("resblocks.", "text_model.encoder.layers."),
        ("ln_1", "layer_norm1"),
        ("ln_2", "layer_norm2"),
        (".c_fc.", ".fc1."),
        (".c_proj.", ".fc2."),
        (".attn", ".self_attn"),
    ];
    MAP.iter()
        .fold(rest.to_string(), |k, (old, new)| k.replace(old, new))
}

fn convert_open_clip(
    ckpt: &Checkpoint,
    prefix: &str,
) -> Result<Vec<(String, RawTensor)>, CheckpointError> {
    let bad_shape = |key: &str, t: &RawTensor, expected: &str| CheckpointError::BadShape {
        path: ckpt.path.clone(),
        key: key.to_string(),
        got: t.shape.clone(),
        expected: expected.to_string(),
    };
    let proj_key = format!("{prefix}text_projection");
    let proj_dim = ckpt
        .tensors
        .get(&proj_key)
        .and_then(|t| t.shape.first().copied());
    let mut out = Vec::new();
    let simple = [
        (
            "positional_embedding",
            "text_model.embeddings.position_embedding.weight",
        ),
        (
            "token_embedding.weight",
            "text_model.embeddings.token_embedding.weight",
        ),
        ("ln_final.weight", "text_model.final_layer_norm.weight"),
        ("ln_final.bias", "text_model.final_layer_norm.bias"),
        ("text_projection", "text_projection.weight"),
    ];
    for (ldm, diffusers) in simple {
        let key = format!("{prefix}{ldm}");
        let Some(t) = ckpt.tensors.get(&key) else {
            continue;
        };
        if sd2_ignored(&key) {
            continue;
        }
        let t = if ldm == "text_projection" {
            transpose(t).ok_or_else(|| bad_shape(&key, t, "a 2-D projection"))?
        } else {
            t.clone()
        };
        out.push((diffusers.to_string(), t));
    }
    let transformer = format!("{prefix}transformer.");
    for (key, t) in ckpt.tensors.iter() {
        let Some(rest) = key.strip_prefix(&transformer) else {
            continue;
        };
        if sd2_ignored(key) {
            continue;
        }
        let name = open_clip_rename(rest);
        let fused = name
            .strip_suffix(".in_proj_weight")
            .map(|n| (n, "weight"))
            .or_else(|| name.strip_suffix(".in_proj_bias").map(|n| (n, "bias")));
        match fused {
            Some((base, kind)) => {
                let total = t.shape.first().copied().unwrap_or(0);
                let d = proj_dim.unwrap_or(total / 3);
                if d.checked_mul(3) != Some(total) {
                    return Err(bad_shape(key, t, &format!("3 × {d} rows (q, k, v)")));
                }
                for (i, q) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let part = rows(t, i * d, (i + 1) * d)
                        .ok_or_else(|| bad_shape(key, t, "a fused q/k/v"))?;
                    out.push((format!("{base}.{q}.{kind}"), part));
                }
            }
            None => out.push((name, t.clone())),
        }
    }
    Ok(out)
}

/// Whether `key` (transformers names, with `text_model.`) is a tensor of the model.
fn is_model_key(key: &str, layers: Option<usize>, projection: bool) -> bool {
    if key == "text_projection.weight" {
        return projection;
    }
    let Some(k) = key.strip_prefix("text_model.") else {
        return false;
    };
    if let Some(rest) = k.strip_prefix("encoder.layers.") {
        let index = rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
        return match (index, layers) {
            (Some(i), Some(n)) => i < n,
            (Some(_), None) => true,
            (None, _) => false,
        };
    }
    matches!(
        k,
        "embeddings.token_embedding.weight"
            | "embeddings.position_embedding.weight"
            | "final_layer_norm.weight"
            | "final_layer_norm.bias"
    )
}

/// Converts a text encoder of class `class_name` (`CLIPTextModel` or
/// `CLIPTextModelWithProjection`) described by the transformers `config`.
pub fn convert_clip(
    ckpt: &Checkpoint,
    class_name: &str,
    config: &Map<String, Value>,
) -> Result<StateDict, CheckpointError> {
    let projection = class_name == "CLIPTextModelWithProjection";
    let hidden = config_usize(config, "hidden_size");
    let layers = config_usize(config, "num_hidden_layers");
    let converted = match pick_source(ckpt, hidden) {
        Some(Source::Clip) => ckpt
            .tensors
            .iter()
            .filter_map(|(k, t)| {
                CLIP_POSITION
                    .iter()
                    .find_map(|(p, _)| k.strip_prefix(p))
                    .map(|rest| (rest.to_string(), t.clone()))
            })
            .collect(),
        Some(Source::OpenClip(prefix)) => convert_open_clip(ckpt, prefix)?,
        None => {
            return Err(CheckpointError::UnknownArchitecture {
                path: ckpt.path.clone(),
                reason: format!(
                    "the checkpoint does not contain a CLIP text encoder matching {class_name} (hidden size {hidden:?})"
                ),
            });
        }
    };
    let mut out: StateDict = Vec::new();
    for (key, t) in converted {
        if !is_model_key(&key, layers, projection) {
            tracing::debug!(key = %key, "text encoder key not in {class_name}; dropped");
            continue;
        }
        // transformers >= 5.6 flattened CLIPTextModel; the projection model keeps `text_model.`.
        let key = if projection {
            key
        } else {
            key.strip_prefix("text_model.")
                .map(str::to_string)
                .unwrap_or(key)
        };
        out.push((key, t));
    }
    Ok(out)
}
