//! Original AnimateDiff motion-module checkpoints (`mm_sd_v15_v2.ckpt` layout) to a diffusers
//! `MotionAdapter` folder, as diffusers' `scripts/convert_animatediff_motion_module_to_
//! diffusers.py` does:
//!
//! 1. keys renamed: `.norms.0` -> `.norm1`, `.norms.1` -> `.norm2`, `.ff_norm` -> `.norm3`,
//!    `.attention_blocks.0` -> `.attn1`, `.attention_blocks.1` -> `.attn2`,
//!    `.temporal_transformer` removed; a top-level `state_dict` entry is unwrapped (the
//!    restricted pickle reader already reads the tensors under it);
//! 2. the checkpoint's position tables (`pos_encoder.pe`) are skipped and each transformer
//!    block gets `pos_embed.pe`, the table `MotionAdapter(motion_max_seq_length=...)` computes
//!    (float32; torch's vectorised `exp` / `sin` may differ from ours in the last bit);
//! 3. the config: `MotionAdapter`'s defaults with `use_motion_mid_block` (the script's flag;
//!    here also set when the checkpoint has `mid_block.*` keys) and `motion_max_seq_length`
//!    (default 32), `block_out_channels` and `motion_layers_per_block` read from the tensors
//!    (the script's defaults for SD 1.5 modules);
//! 4. the weights saved in float32 (the adapter's parameters), or cast by `SaveOptions`.
//!
//! Moves bytes and JSON only, never burn tensors.

use crate::error::ConvertError;
use crate::save::{SaveOptions, atomic_folder, save_weights};
use crate::tensors::{RawTensor, StateDict};
use diff_checkpoint::Library;
use diff_format::configs::motion_adapter::MotionAdapterConfig;
use diff_format::configs::unet::PerBlock;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::Path;

/// What the conversion reads besides the checkpoint (the script's command-line flags).
#[derive(Debug, Clone)]
pub struct MotionModuleOptions {
    /// `--use_motion_mid_block` (also on when the checkpoint has a mid block).
    pub use_motion_mid_block: bool,
    /// `--motion_max_seq_length` (default 32).
    pub motion_max_seq_length: usize,
    /// Weight variant, dtype and shard size of the saved folder.
    pub save: SaveOptions,
}

impl Default for MotionModuleOptions {
    fn default() -> Self {
        Self {
            use_motion_mid_block: false,
            motion_max_seq_length: 32,
            save: SaveOptions::default(),
        }
    }
}

/// What was converted.
#[derive(Debug, Clone)]
pub struct MotionModuleReport {
    /// The config written.
    pub config: MotionAdapterConfig,
    /// Tensors written (position tables included).
    pub tensors: usize,
    /// Checkpoint keys skipped (the original position tables).
    pub skipped: usize,
}

/// The script's `convert_motion_module` key renames.
pub fn convert_key(key: &str) -> String {
    key.replace(".norms.0", ".norm1")
        .replace(".norms.1", ".norm2")
        .replace(".ff_norm", ".norm3")
        .replace(".attention_blocks.0", ".attn1")
        .replace(".attention_blocks.1", ".attn2")
        .replace(".temporal_transformer", "")
}

/// `SinusoidalPositionalEmbedding(dim, max_seq_length).pe` as torch computes it in float32.
pub fn position_table(dim: usize, max_seq_length: usize) -> Vec<f32> {
    let factor = (-(10000f64).ln() / dim as f64) as f32;
    let mut pe = vec![0f32; max_seq_length * dim];
    for p in 0..max_seq_length {
        for i in (0..dim).step_by(2) {
            let angle = p as f32 * ((i as f32) * factor).exp();
            pe[p * dim + i] = angle.sin();
            if i + 1 < dim {
                pe[p * dim + i + 1] = angle.cos();
            }
        }
    }
    pe
}

fn read_checkpoint(path: &Path) -> Result<StateDict, ConvertError> {
    let is_safetensors = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    Ok(if is_safetensors {
        crate::tensors::read_safetensors(path)?
            .0
            .into_iter()
            .collect()
    } else {
        crate::tensors::read_pickle(path)?
    })
}

/// The block index of `down_blocks.{i}.` / `up_blocks.{i}.` keys, and the module index after
/// `.motion_modules.`.
fn indices(key: &str, prefix: &str) -> Option<(usize, usize)> {
    let rest = key.strip_prefix(prefix)?;
    let (block, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("motion_modules.")?;
    let (module, _) = rest.split_once('.')?;
    Some((block.parse().ok()?, module.parse().ok()?))
}

/// The config diffusers' script would write for these tensors.
fn infer_config(
    path: &Path,
    tensors: &BTreeMap<String, RawTensor>,
    options: &MotionModuleOptions,
) -> Result<MotionAdapterConfig, ConvertError> {
    let mut channels: BTreeMap<usize, u64> = BTreeMap::new();
    let mut layers: BTreeMap<usize, usize> = BTreeMap::new();
    for (key, t) in tensors {
        if let Some((block, module)) = indices(key, "down_blocks.") {
            let n = layers.entry(block).or_default();
            *n = (*n).max(module + 1);
            if key.ends_with(".proj_in.weight") && module == 0 {
                channels.insert(block, t.shape.first().copied().unwrap_or(0) as u64);
            }
        }
    }
    let n = layers.len();
    if n == 0 || channels.len() != n || layers.keys().copied().ne(0..n) {
        return Err(ConvertError::UnknownArchitecture {
            path: path.to_path_buf(),
            reason: "no AnimateDiff motion modules (`down_blocks.N.motion_modules.M.temporal_transformer.proj_in.weight`) found".into(),
        });
    }
    let per_block: Vec<u64> = layers.values().map(|l| *l as u64).collect();
    let mut config = MotionAdapterConfig {
        block_out_channels: channels.values().copied().collect(),
        use_motion_mid_block: options.use_motion_mid_block
            || tensors.keys().any(|k| k.starts_with("mid_block.")),
        motion_max_seq_length: options.motion_max_seq_length as u64,
        ..MotionAdapterConfig::default()
    };
    config.motion_layers_per_block = if per_block.iter().all(|l| *l == per_block[0]) {
        PerBlock::One(per_block[0])
    } else {
        PerBlock::Many(per_block)
    };
    Ok(config)
}

/// Converts the motion-module checkpoint `ckpt` (`.ckpt` / `.pt` through the restricted pickle
/// reader, or `.safetensors`) into a `MotionAdapter` folder `out` (replaced atomically).
pub fn convert_motion_module(
    ckpt: &Path,
    out: &Path,
    options: &MotionModuleOptions,
) -> Result<MotionModuleReport, ConvertError> {
    if options.motion_max_seq_length == 0 || options.motion_max_seq_length > 4096 {
        return Err(ConvertError::Mismatch(format!(
            "motion_max_seq_length {} is outside 1..=4096",
            options.motion_max_seq_length
        )));
    }
    let mut skipped = 0;
    let mut tensors = BTreeMap::new();
    for (key, t) in read_checkpoint(ckpt)? {
        let key = key.strip_prefix("state_dict.").unwrap_or(&key).to_owned();
        if key.contains("pos_encoder") {
            skipped += 1;
            continue;
        }
        tensors.insert(convert_key(&key), t);
    }
    let config = infer_config(ckpt, &tensors, options)?;
    // Every transformer block gets the table of its width.
    let blocks: Vec<(String, usize)> = tensors
        .iter()
        .filter_map(|(k, t)| {
            let prefix = k.strip_suffix(".norm1.weight")?;
            prefix.contains(".transformer_blocks.").then(|| {
                (
                    format!("{prefix}.pos_embed.pe"),
                    t.shape.first().copied().unwrap_or(0),
                )
            })
        })
        .collect();
    let seq = options.motion_max_seq_length;
    for (key, dim) in blocks {
        let bytes: Vec<u8> = position_table(dim, seq)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t =
            RawTensor::new(Dtype::F32, vec![1, seq, dim], bytes).map_err(ConvertError::Mismatch)?;
        tensors.insert(key, t);
    }
    // MotionAdapter's parameters are float32: a float16 checkpoint is widened on load.
    let mut save = options.save.clone();
    if save.dtype.is_none() {
        save.dtype = Some(crate::cast::SaveDtype::F32);
    }
    let count = tensors.len();
    let mut state_dict: StateDict = tensors.into_iter().collect();
    crate::order::sort_state_dict_keys(&mut state_dict);
    let file = diff_format::ConfigFile::new(config.clone(), "MotionAdapter");
    atomic_folder(out, |dir| {
        save_weights(dir, Library::Diffusers, state_dict, &save)?;
        file.save(dir.join("config.json"))
            .map_err(|e| ConvertError::BadJson {
                path: dir.join("config.json"),
                reason: e.to_string(),
            })?;
        Ok(())
    })?;
    Ok(MotionModuleReport {
        config,
        tensors: count,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_renamed_as_diffusers_script() {
        assert_eq!(
            convert_key(
                "down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight"
            ),
            "down_blocks.0.motion_modules.1.transformer_blocks.0.attn2.to_q.weight"
        );
        assert_eq!(
            convert_key(
                "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.norms.0.bias"
            ),
            "up_blocks.3.motion_modules.2.transformer_blocks.0.norm1.bias"
        );
        assert_eq!(
            convert_key(
                "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.weight"
            ),
            "mid_block.motion_modules.0.transformer_blocks.0.norm3.weight"
        );
    }

    #[test]
    fn position_table_starts_with_sin_zero_cos_one() {
        let pe = position_table(4, 3);
        assert_eq!(&pe[..4], &[0.0, 1.0, 0.0, 1.0]);
        assert!((pe[4] - 1f32.sin()).abs() < 1e-7);
    }
}
