//! kohya-ss / A1111 LoRA files (`lora_unet_…`, `lora_te_…`, `lora_te1_…`, `lora_te2_…` with
//! `.lora_down.weight`, `.lora_up.weight`, `.alpha`) converted to diffusers' names as diffusers
//! 0.42.1 converts them (`lora_conversion_utils.py`): LDM block names remapped first for SDXL
//! (`_maybe_map_sgm_blocks_to_diffusers`, which needs the UNet's `layers_per_block`), then each
//! key renamed (`_convert_unet_lora_key`, `_convert_text_encoder_lora_key`) and the alphas
//! collected as `network_alphas`. Names diffusers gets "wrong" (attention alphas keyed under
//! `…processor.to_q_lora.down.weight.alpha`, which later match no module) are reproduced on
//! purpose: the fixture records what diffusers makes of them.

use std::collections::BTreeSet;

use crate::{LoraError, LoraTensor};

/// The key prefixes of a kohya file.
pub const KOHYA_PREFIXES: [&str; 4] = ["lora_te_", "lora_unet_", "lora_te1_", "lora_te2_"];

/// Whether every key is a kohya key (diffusers' test; true for an empty dict, as `all()` is).
pub fn is_kohya(tensors: &[(String, LoraTensor)]) -> bool {
    tensors
        .iter()
        .all(|(k, _)| KOHYA_PREFIXES.iter().any(|p| k.starts_with(p)))
}

/// `_maybe_map_sgm_blocks_to_diffusers` with `delimiter="_"`, `block_slice_pos=5`.
pub fn map_sgm_blocks(
    tensors: Vec<(String, LoraTensor)>,
    layers_per_block: usize,
) -> Result<Vec<(String, LoraTensor)>, LoraError> {
    const SGM: [&str; 3] = ["input_blocks", "middle_block", "output_blocks"];
    const NOT_SGM: [&str; 3] = ["down_blocks", "mid_block", "up_blocks"];
    let has = |k: &str, pats: &[&str]| pats.iter().any(|p| k.contains(p));
    let mut contains_sgm = false;
    let mut contains_not_sgm = false;
    for (k, _) in &tensors {
        if has(k, &SGM) {
            contains_sgm = true;
        } else if has(k, &NOT_SGM) {
            contains_not_sgm = true;
        }
    }
    if contains_sgm && contains_not_sgm {
        return Ok(tensors.into_iter().filter(|(k, _)| !has(k, &SGM)).collect());
    }
    if !contains_sgm {
        return Ok(tensors);
    }
    let lpb = layers_per_block + 1;
    let inner = ["resnets", "attentions", "upsamplers"];
    let conv_err = |k: &str, m: &str| LoraError::Conversion {
        key: k.to_string(),
        message: m.to_string(),
    };
    // Keys kept as they are come first (diffusers builds the new dict in that order: the text
    // and non-block keys during the scan, then input, middle and output blocks by block id).
    let mut passed = Vec::new();
    let mut blocks: [Vec<(usize, String, LoraTensor)>; 3] = Default::default();
    for (key, t) in tensors {
        if key.contains("text") || !has(&key, &SGM) || key.contains("input_blocks_0_0") {
            passed.push((key, t));
            continue;
        }
        let parts: Vec<&str> = key.split('_').collect();
        let id: usize = parts
            .get(..5)
            .and_then(|p| p.last())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| conv_err(&key, "no block number"))?;
        let which = SGM
            .iter()
            .position(|p| key.contains(p))
            .ok_or_else(|| conv_err(&key, "not supported"))?;
        blocks[which].push((id, key, t));
    }
    let mut out = passed;
    // Python iterates the set of ids; for small ints that is ascending order.
    for (which, block) in blocks.iter_mut().enumerate() {
        let ids: BTreeSet<usize> = block.iter().map(|(i, ..)| *i).collect();
        for id in ids {
            // Each id's keys in the order of the state dict (diffusers filters by substring
            // `input_blocks_{id}`, which also catches `input_blocks_{id}N`: reproduced).
            let prefix = format!("{}_{id}", SGM[which]);
            let mut taken = Vec::new();
            let mut rest = Vec::new();
            for entry in block.drain(..) {
                if entry.1.contains(&prefix) {
                    taken.push(entry);
                } else {
                    rest.push(entry);
                }
            }
            *block = rest;
            for (_, key, t) in taken {
                let parts: Vec<&str> = key.split('_').collect();
                if parts.get(4).and_then(|s| s.parse::<usize>().ok()) != Some(id) {
                    // diffusers selects by substring (`input_blocks_1` also catches
                    // `input_blocks_10`) and then fails popping the key a second time.
                    return Err(conv_err(&key, "matches more than one block number"));
                }
                if parts.len() < 6 {
                    return Err(conv_err(&key, "too few name parts"));
                }
                let new_parts: Vec<String> = match which {
                    0 | 2 => {
                        let (block_id, layer) = if which == 0 {
                            let i = id
                                .checked_sub(1)
                                .ok_or_else(|| conv_err(&key, "input block 0"))?;
                            (i / lpb, i % lpb)
                        } else {
                            (id / lpb, id % lpb)
                        };
                        let inner_id: usize = parts[5]
                            .parse()
                            .map_err(|_| conv_err(&key, "no inner block number"))?;
                        let (inner_name, layer_name) = if which == 0 && key.contains("op") {
                            ("downsamplers".to_string(), "0".to_string())
                        } else {
                            let name = inner
                                .get(inner_id)
                                .ok_or_else(|| conv_err(&key, "inner block number out of range"))?;
                            let layer = if which == 2 && inner_id >= 2 {
                                "0".to_string()
                            } else {
                                layer.to_string()
                            };
                            (name.to_string(), layer)
                        };
                        let mut v: Vec<String> = parts[..4].iter().map(|s| s.to_string()).collect();
                        v.extend([block_id.to_string(), inner_name, layer_name]);
                        v.extend(parts[6..].iter().map(|s| s.to_string()));
                        v
                    }
                    _ => {
                        let part = match id {
                            0 => ["resnets", "0"],
                            1 => ["attentions", "0"],
                            2 => ["resnets", "1"],
                            _ => {
                                return Err(conv_err(
                                    &key,
                                    &format!("Invalid middle block id {id}."),
                                ));
                            }
                        };
                        let mut v: Vec<String> = parts[..4].iter().map(|s| s.to_string()).collect();
                        v.extend(part.iter().map(|s| s.to_string()));
                        v.extend(parts[5..].iter().map(|s| s.to_string()));
                        v
                    }
                };
                out.push((new_parts.join("_"), t));
            }
        }
        if let Some((_, key, _)) = block.first() {
            return Err(conv_err(
                key,
                "At this point all state dict entries have to be converted.",
            ));
        }
    }
    Ok(out)
}

/// What [`convert_to_diffusers`] returns: the renamed state dict and `network_alphas`.
#[derive(Debug, Clone, Default)]
pub struct Converted {
    /// `unet.…`, `text_encoder.…`, `text_encoder_2.…` keys, in diffusers' order.
    pub tensors: Vec<(String, LoraTensor)>,
    /// `network_alphas`, in insertion order.
    pub alphas: Vec<(String, f32)>,
}

/// `_convert_non_diffusers_lora_to_diffusers`.
pub fn convert_to_diffusers(tensors: Vec<(String, LoraTensor)>) -> Result<Converted, LoraError> {
    let dora_unet = tensors
        .iter()
        .any(|(k, _)| k.contains("dora_scale") && k.contains("lora_unet_"));
    let dora_te = tensors.iter().any(|(k, _)| {
        k.contains("dora_scale")
            && (k.contains("lora_te_") || k.contains("lora_te1_") || k.contains("lora_te2_"))
    });
    let mut pool: Vec<Option<(String, LoraTensor)>> = tensors.into_iter().map(Some).collect();
    let index: std::collections::HashMap<String, usize> = pool
        .iter()
        .enumerate()
        .map(|(i, e)| (e.as_ref().map(|(k, _)| k.clone()).unwrap_or_default(), i))
        .collect();
    let mut take = |key: &str| -> Option<LoraTensor> {
        let i = *index.get(key)?;
        pool[i].take().map(|(_, t)| t)
    };
    let keys: Vec<String> = index.keys().cloned().collect::<Vec<_>>();
    let mut ordered: Vec<(usize, String)> = keys.into_iter().map(|k| (index[&k], k)).collect();
    ordered.sort();
    let mut unet = Vec::new();
    let mut te = Vec::new();
    let mut te2 = Vec::new();
    let mut alphas = Vec::new();
    for (_, key) in ordered {
        if !key.ends_with("lora_down.weight") {
            continue;
        }
        let lora_name = key.split('.').next().unwrap_or_default().to_string();
        let up_key = format!("{lora_name}.lora_up.weight");
        let alpha_key = format!("{lora_name}.alpha");
        let missing = |k: &str| LoraError::Conversion {
            key: k.to_string(),
            message: "has no matching tensor".into(),
        };
        let diffusers_name;
        if lora_name.starts_with("lora_unet_") {
            diffusers_name = unet_key(&key);
            let down = take(&key).ok_or_else(|| missing(&key))?;
            let up = take(&up_key).ok_or_else(|| missing(&up_key))?;
            unet.push((diffusers_name.clone(), down));
            unet.push((diffusers_name.replace(".down.", ".up."), up));
            if dora_unet {
                let from = if diffusers_name.contains("_lora.down.") {
                    "_lora.down."
                } else {
                    ".lora.down."
                };
                let dora_key = key.replace("lora_down.weight", "dora_scale");
                let scale = take(&dora_key).ok_or_else(|| missing(&dora_key))?;
                unet.push((
                    diffusers_name.replace(from, ".lora_magnitude_vector."),
                    scale,
                ));
            }
        } else if ["lora_te_", "lora_te1_", "lora_te2_"]
            .iter()
            .any(|p| lora_name.starts_with(p))
        {
            diffusers_name = text_encoder_key(&key, &lora_name);
            let second = lora_name.starts_with("lora_te2_");
            let target = if second { &mut te2 } else { &mut te };
            let down = take(&key).ok_or_else(|| missing(&key))?;
            let up = take(&up_key).ok_or_else(|| missing(&up_key))?;
            target.push((diffusers_name.clone(), down));
            target.push((diffusers_name.replace(".down.", ".up."), up));
            if dora_te {
                let from = if diffusers_name.contains("_lora.down.") {
                    "_lora.down."
                } else {
                    ".lora_linear_layer."
                };
                let dora_key = key.replace("lora_down.weight", "dora_scale");
                let scale = take(&dora_key).ok_or_else(|| missing(&dora_key))?;
                target.push((
                    diffusers_name.replace(from, ".lora_magnitude_vector."),
                    scale,
                ));
            }
        } else {
            continue;
        }
        if let Some(alpha) = take(&alpha_key) {
            let value = alpha.scalar().ok_or_else(|| LoraError::Conversion {
                key: alpha_key.clone(),
                message: "an alpha must hold one value".into(),
            })?;
            let prefix = if alpha_key.starts_with("lora_unet_") {
                "unet."
            } else if alpha_key.starts_with("lora_te_") || alpha_key.starts_with("lora_te1_") {
                "text_encoder."
            } else {
                "text_encoder_2."
            };
            let base = diffusers_name
                .split(".lora.")
                .next()
                .unwrap_or_default()
                .to_string();
            let name = format!("{prefix}{base}.alpha");
            // A Python dict update: a repeated name keeps its first position, takes the new value.
            match alphas
                .iter_mut()
                .find(|(k, _): &&mut (String, f32)| *k == name)
            {
                Some(entry) => entry.1 = value,
                None => alphas.push((name, value)),
            }
        }
    }
    let left: Vec<String> = pool.into_iter().flatten().map(|(k, _)| k).collect();
    if !left.is_empty() {
        return Err(LoraError::Conversion {
            key: left.join(", "),
            message: "The following keys have not been correctly renamed".into(),
        });
    }
    let mut out = Vec::new();
    out.extend(unet.into_iter().map(|(k, t)| (format!("unet.{k}"), t)));
    out.extend(
        te.into_iter()
            .map(|(k, t)| (format!("text_encoder.{k}"), t)),
    );
    out.extend(
        te2.into_iter()
            .map(|(k, t)| (format!("text_encoder_2.{k}"), t)),
    );
    Ok(Converted {
        tensors: dedup_last(out),
        alphas,
    })
}

/// A Python dict built by assignment: a repeated key keeps its first position, the last value.
fn dedup_last(entries: Vec<(String, LoraTensor)>) -> Vec<(String, LoraTensor)> {
    let mut out: Vec<(String, LoraTensor)> = Vec::with_capacity(entries.len());
    let mut pos = std::collections::HashMap::new();
    for (k, t) in entries {
        match pos.get(&k) {
            Some(&i) => out[i] = (k, t),
            None => {
                pos.insert(k.clone(), out.len());
                out.push((k, t));
            }
        }
    }
    out
}

/// `_convert_unet_lora_key`.
pub fn unet_key(key: &str) -> String {
    let mut n = key.replacen("lora_unet_", "", usize::MAX).replace('_', ".");
    let pairs: &[(&str, &str)] = &[
        ("input.blocks.0.0", "conv_in"),
        ("out.2", "conv_out"),
        ("input.blocks", "down_blocks"),
        ("down.blocks", "down_blocks"),
        ("middle.block", "mid_block"),
        ("mid.block", "mid_block"),
        ("output.blocks", "up_blocks"),
        ("up.blocks", "up_blocks"),
        ("transformer.blocks", "transformer_blocks"),
        ("to.q.lora", "to_q_lora"),
        ("to.k.lora", "to_k_lora"),
        ("to.v.lora", "to_v_lora"),
        ("to.out.0.lora", "to_out_lora"),
        ("proj.in", "proj_in"),
        ("proj.out", "proj_out"),
        ("emb.layers", "time_emb_proj"),
        ("conv.in", "conv_in"),
        ("conv.out", "conv_out"),
        ("time.embed.0", "time_embedding.linear_1"),
        ("time.embed.2", "time_embedding.linear_2"),
        ("label.emb.0.0", "add_embedding.linear_1"),
        ("label.emb.0.2", "add_embedding.linear_2"),
        ("time.embedding.linear.1", "time_embedding.linear_1"),
        ("time.embedding.linear.2", "time_embedding.linear_2"),
    ];
    for (from, to) in pairs {
        n = n.replace(from, to);
    }
    // SDXL: drop the last `.N` followed by no digit up to the end (`\.\d+(?=\D*$)`).
    if n.contains("emb") && !n.contains("time.emb.proj") {
        n = strip_last_index(&n);
    }
    if n.contains(".in.") {
        n = n.replace("in.layers.2", "conv1");
    }
    if n.contains(".out.") {
        n = n.replace("out.layers.3", "conv2");
    }
    if n.contains("downsamplers") || n.contains("upsamplers") {
        n = n.replace("op", "conv");
    }
    if n.contains("skip") {
        n = n.replace("skip.connection", "conv_shortcut");
    }
    if n.contains("time.emb.proj") {
        n = n.replace("time.emb.proj", "time_emb_proj");
    }
    if n.contains("conv.shortcut") {
        n = n.replace("conv.shortcut", "conv_shortcut");
    }
    if n.contains("transformer_blocks") && (n.contains("attn1") || n.contains("attn2")) {
        n = n.replace("attn1", "attn1.processor");
        n = n.replace("attn2", "attn2.processor");
    }
    n
}

/// Removes the first `.<digits>` after which no digit follows (Python's
/// `re.sub(r"\.\d+(?=\D*$)", "", s, count=1)`).
fn strip_last_index(s: &str) -> String {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if !b[j..].iter().any(u8::is_ascii_digit) {
                return format!("{}{}", &s[..i], &s[j..]);
            }
        }
        i += 1;
    }
    s.to_string()
}

/// `_convert_text_encoder_lora_key`.
pub fn text_encoder_key(key: &str, lora_name: &str) -> String {
    let prefix = if lora_name.starts_with("lora_te_") {
        "lora_te_"
    } else if lora_name.starts_with("lora_te1_") {
        "lora_te1_"
    } else {
        "lora_te2_"
    };
    let mut n = key.replace(prefix, "").replace('_', ".");
    for (from, to) in [
        ("text.model", "text_model"),
        ("self.attn", "self_attn"),
        ("q.proj.lora", "to_q_lora"),
        ("k.proj.lora", "to_k_lora"),
        ("v.proj.lora", "to_v_lora"),
        ("out.proj.lora", "to_out_lora"),
        ("text.projection", "text_projection"),
    ] {
        n = n.replace(from, to);
    }
    if !(n.contains("self_attn") || n.contains("text_projection")) && n.contains("mlp") {
        n = n.replace(".lora.", ".lora_linear_layer.");
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unet_keys_as_diffusers_names_them() {
        assert_eq!(
            unet_key(
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
            ),
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"
        );
        assert_eq!(
            unet_key("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"),
            "down_blocks.0.resnets.0.conv1.lora.down.weight"
        );
        assert_eq!(
            unet_key("lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight"),
            "down_blocks.0.resnets.0.time_emb_proj.lora.down.weight"
        );
        assert_eq!(
            strip_last_index("a.label.emb.0.lora.down.weight"),
            "a.label.emb.lora.down.weight"
        );
    }

    #[test]
    fn text_encoder_keys_as_diffusers_names_them() {
        let k = "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight";
        assert_eq!(
            text_encoder_key(k, "lora_te_text_model_encoder_layers_0_mlp_fc1"),
            "text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight"
        );
        let k = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight";
        assert_eq!(
            text_encoder_key(k, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"),
            "text_model.encoder.layers.0.self_attn.to_q_lora.down.weight"
        );
    }
}
