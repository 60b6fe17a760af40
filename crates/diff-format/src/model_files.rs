//! Which weight files a diffusers model (`ModelMixin.from_pretrained`) loads from a local
//! component folder, for a `variant` and `use_safetensors` (diffusers 0.42.1,
//! `models/modeling_utils.py` and `models/model_loading_utils.py`):
//!
//! 1. `use_safetensors=None` means "safetensors, but pickle allowed".
//! 2. The index `diffusion_pytorch_model.<safetensors|bin>.index[.V].json` (the `.bin` index only
//!    when `use_safetensors=false`); with a variant and no such index, the legacy
//!    `diffusion_pytorch_model.<ext>.V.index.json`. An index means a sharded checkpoint: every
//!    shard it names must exist.
//! 3. Otherwise `diffusion_pytorch_model[.V].safetensors` (unless `use_safetensors=false`); if it
//!    is missing and pickle is allowed, fall through, else fail.
//! 4. Otherwise `diffusion_pytorch_model[.V].bin`, or fail with
//!    "Error no file named … found in directory …".
//!
//! There is no fallback from a variant name to the non-variant name at this level (the pipeline
//! decides per component whether to ask for the variant, see
//! [`crate::selection::identify_model_variants`]). Consequence checked against diffusers: a
//! folder holding only pickle shards loads only with `use_safetensors=false`.

use crate::error::FormatError;
use crate::shard_index::ShardIndex;
use crate::weights::{Naming, WeightFormat, index_name, legacy_index_name, variant_weights_name};
use std::path::{Path, PathBuf};

/// The files a diffusers model loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelWeights {
    /// The shard index, for a sharded checkpoint.
    pub index: Option<PathBuf>,
    /// Whether the index is the deprecated `….safetensors.V.index.json` form.
    pub legacy_index: bool,
    /// The weight files, in load order (shards sorted by name, as diffusers sorts them).
    pub files: Vec<PathBuf>,
}

/// Resolves the weight files of a diffusers model in `folder` (see the module doc).
pub fn resolve_diffusers_model_files(
    folder: &Path,
    variant: Option<&str>,
    use_safetensors: Option<bool>,
) -> Result<ModelWeights, FormatError> {
    let allow_pickle = use_safetensors.is_none();
    let use_safetensors = use_safetensors.unwrap_or(true);
    let format = if use_safetensors {
        WeightFormat::Safetensors
    } else {
        WeightFormat::Bin
    };
    let mut index = folder.join(index_name(Naming::Diffusers, format, variant));
    let mut legacy_index = false;
    if let Some(v) = variant
        && !index.is_file()
    {
        index = folder.join(legacy_index_name(Naming::Diffusers, format, v));
        legacy_index = true;
    }
    if index.is_file() {
        let shard_index = ShardIndex::load(&index)?;
        let mut files = Vec::new();
        for shard in shard_index.shard_files() {
            let path = folder.join(shard);
            if !path.exists() {
                return Err(FormatError::MissingShard {
                    index: index.clone(),
                    shard: shard.to_owned(),
                });
            }
            files.push(path);
        }
        return Ok(ModelWeights {
            index: Some(index),
            legacy_index,
            files,
        });
    }
    let mut tried = Vec::new();
    if use_safetensors {
        let name = variant_weights_name(Naming::Diffusers, WeightFormat::Safetensors, variant);
        let path = folder.join(&name);
        if path.is_file() {
            return Ok(ModelWeights {
                index: None,
                legacy_index: false,
                files: vec![path],
            });
        }
        tried.push(name.clone());
        if !allow_pickle {
            return Err(FormatError::WeightsNotFound {
                folder: folder.to_path_buf(),
                file: name,
                tried,
            });
        }
        tracing::warn!(
            folder = %folder.display(),
            "no safetensors weights; defaulting to unsafe serialization (pickle .bin)"
        );
    }
    let name = variant_weights_name(Naming::Diffusers, WeightFormat::Bin, variant);
    let path = folder.join(&name);
    if path.is_file() {
        return Ok(ModelWeights {
            index: None,
            legacy_index: false,
            files: vec![path],
        });
    }
    tried.push(name.clone());
    Err(FormatError::WeightsNotFound {
        folder: folder.to_path_buf(),
        file: name,
        tried,
    })
}
