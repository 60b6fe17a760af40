//! Saving a pipeline whose weights changed in memory: diffusers' `pipe.fuse_lora()` then
//! `pipe.save_pretrained(dir)` writes the fused weights. The model-side half (reading the fused
//! weights out of the layers) is diff-pipelines'; this half takes them as raw float32 tensors
//! by component and state-dict key and writes them in place of the stored ones, in the stored
//! tensor's dtype (then [`SaveOptions::dtype`](super::SaveOptions) casts as for any tensor).

use crate::ConvertError;
use crate::cast::{SaveDtype, cast};
use crate::tensors::{RawTensor, StateDict};
use std::collections::BTreeMap;
use std::path::Path;

/// Replacement tensors by component folder name (`unet`, `text_encoder`, ...), then by
/// state-dict key (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`,
/// `text_model.encoder.layers.0.self_attn.q_proj.weight`).
pub type Replacements = BTreeMap<String, BTreeMap<String, RawTensor>>;

/// The stored key a replacement key names: itself, or the same key with or without the
/// `text_model.` prefix (transformers 5 saves `CLIPTextModel` without it, older files have it;
/// diffusers' module names carry it).
fn stored_key<'a>(tensors: &'a StateDict, key: &str) -> Option<&'a str> {
    let candidates = [
        Some(key.to_owned()),
        key.strip_prefix("text_model.").map(str::to_owned),
        Some(format!("text_model.{key}")),
    ];
    candidates.into_iter().flatten().find_map(|c| {
        tensors
            .iter()
            .find(|(n, _)| *n == c)
            .map(|(n, _)| n.as_str())
    })
}

/// Replaces tensors of a component's state dict. Every replacement must name a stored tensor
/// of the same shape; it is cast to the stored tensor's dtype.
pub(crate) fn apply(
    component: &Path,
    tensors: &mut StateDict,
    replace: &BTreeMap<String, RawTensor>,
) -> Result<(), ConvertError> {
    let index: BTreeMap<String, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), i))
        .collect();
    for (key, new) in replace {
        let stored = stored_key(tensors, key).ok_or_else(|| ConvertError::MissingKey {
            path: component.to_path_buf(),
            key: key.clone(),
            needed_for: "writing an in-memory (fused) weight in place of the stored one".into(),
        })?;
        let i = index[stored];
        let old = &tensors[i].1;
        if old.shape != new.shape {
            return Err(ConvertError::BadShape {
                path: component.to_path_buf(),
                key: stored.to_owned(),
                got: new.shape.clone(),
                expected: format!("{:?} (the stored tensor's shape)", old.shape),
            });
        }
        let target = match old.dtype {
            safetensors::Dtype::F16 => SaveDtype::F16,
            safetensors::Dtype::BF16 => SaveDtype::BF16,
            _ => SaveDtype::F32,
        };
        let name = stored.to_owned();
        tensors[i].1 = cast(&name, new.clone(), target)?;
    }
    Ok(())
}
