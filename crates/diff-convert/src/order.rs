//! PyTorch `state_dict()` order for the model families this project knows, from the key names.
//!
//! Shard boundaries depend on the order tensors are visited, which is the order modules were
//! registered in `__init__` (see `huggingface_hub.split_state_dict_into_shards_factory`).
//! safetensors files do not keep that order (they sort by dtype and name), so re-sharding a saved
//! model needs it back. Within one parent module every attribute name below appears in the order
//! diffusers / transformers register it (e.g. UNet: `down_blocks` and `up_blocks` are created
//! before `mid_block` is assigned; blocks register `attentions` before `resnets`; CLIP attention
//! registers `k_proj, v_proj, q_proj`). Keys are compared segment by segment: numbers
//! numerically, names by their rank here, unknown names after known ones, alphabetically.
//! `order_matches_torch_state_dict` checks this against `state_dict()` of diffusers and
//! transformers models.

use std::cmp::Ordering;

/// Attribute names in registration order, across the UNet, VAE and CLIP families.
const RANK: &[&str] = &[
    // Top-level models.
    "text_model",
    "vision_model",
    // CLIP's `embeddings` come before its `encoder`; the VAE's `encoder` before its `decoder`.
    "embeddings",
    "encoder",
    "decoder",
    "quant_conv",
    "post_quant_conv",
    // UNet / VAE bodies.
    "conv_in",
    "time_proj",
    "time_embedding",
    "encoder_hid_proj",
    "class_embedding",
    "add_time_proj",
    "add_embedding",
    "time_embed_act",
    "down_blocks",
    "up_blocks",
    "mid_block",
    "conv_norm_out",
    "conv_act",
    "conv_out",
    // Blocks.
    "attentions",
    "resnets",
    "downsamplers",
    "upsamplers",
    // Transformer2DModel.
    "norm",
    "proj_in",
    "transformer_blocks",
    "proj_out",
    // BasicTransformerBlock and ResnetBlock2D (norm1 < attn1/conv1 < norm2 < ...).
    "norm1",
    "attn1",
    "conv1",
    "time_emb_proj",
    "norm2",
    "attn2",
    "dropout",
    "conv2",
    "norm3",
    "ff",
    "conv_shortcut",
    // Attention.
    "group_norm",
    "spatial_norm",
    "norm_q",
    "norm_k",
    "norm_cross",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    // FeedForward / GEGLU / TimestepEmbedding.
    "net",
    "proj",
    "linear_1",
    "linear_2",
    "conv",
    "op",
    // CLIP.
    "token_embedding",
    "patch_embedding",
    "position_embedding",
    "pre_layrnorm",
    "layers",
    "self_attn",
    "k_proj",
    "v_proj",
    "q_proj",
    "out_proj",
    "layer_norm1",
    "mlp",
    "fc1",
    "fc2",
    "layer_norm2",
    "final_layer_norm",
    "post_layernorm",
    "text_projection",
    "visual_projection",
    // Parameters: Linear, Conv and norms register weight then bias.
    "weight",
    "bias",
];

fn rank(segment: &str) -> Option<usize> {
    RANK.iter().position(|r| *r == segment)
}

fn compare_segment(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => return x.cmp(&y),
        (Ok(_), Err(_)) => return Ordering::Less,
        (Err(_), Ok(_)) => return Ordering::Greater,
        _ => {}
    }
    match (rank(a), rank(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Compares two state-dict keys by (estimated) PyTorch registration order.
pub fn compare_keys(a: &str, b: &str) -> Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(p), Some(q)) => match compare_segment(p, q) {
                Ordering::Equal => continue,
                other => return other,
            },
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (None, None) => return Ordering::Equal,
        }
    }
}

/// Sorts names into PyTorch `state_dict()` order (stable for names it cannot tell apart).
pub fn sort_state_dict_keys<T>(items: &mut [(String, T)]) {
    items.sort_by(|(a, _), (b, _)| compare_keys(a, b));
}

/// One segment of transformers' `dot_natural_key`: `(0, int)` for digits, `(1, text[, int])`
/// for names, where trailing digits are split off and compared numerically.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum NaturalPart<'a> {
    Number(u128),
    Text(&'a str, Option<u128>),
}

fn natural_parts(key: &str) -> Vec<NaturalPart<'_>> {
    key.split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                // Longer digit runs than u128 holds never occur in state dicts; saturate.
                NaturalPart::Number(part.parse().unwrap_or(u128::MAX))
            } else {
                let text = part.trim_end_matches(|c: char| c.is_ascii_digit());
                let digits = &part[text.len()..];
                NaturalPart::Text(
                    text,
                    (!digits.is_empty()).then(|| digits.parse().unwrap_or(u128::MAX)),
                )
            }
        })
        .collect()
}

/// transformers' `dot_natural_key` order. transformers 5 sorts a model's state dict this way
/// before saving whenever the model has weight-conversion mappings (`revert_weight_conversion`,
/// `core_model_loading.py`), which is the case for the CLIP text encoders; shards are filled in
/// this order.
pub fn sort_transformers_keys<T>(items: &mut [(String, T)]) {
    items.sort_by(|(a, _), (b, _)| natural_parts(a).cmp(&natural_parts(b)));
}
