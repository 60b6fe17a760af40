//! Which weight files a model loads from a local component folder, for a `variant` and
//! `use_safetensors`: the one resolver the loader calls for every component. Two rule sets, as
//! the two libraries apply them; [`resolve_model_files`] picks by [`Naming`].
//!
//! # diffusers models (`ModelMixin.from_pretrained`, diffusers 0.42.1)
//! `models/modeling_utils.py` and `models/model_loading_utils.py`:
//!
//! 1. `use_safetensors=None` means "safetensors, but pickle allowed".
//! 2. The index `diffusion_pytorch_model.<safetensors|bin>.index[.V].json` (the `.bin` index only
//!    when `use_safetensors=false`); with a variant and no such index, the legacy
//!    `diffusion_pytorch_model.<ext>.V.index.json`. An index means a sharded checkpoint: every
//!    shard it names must exist. An index beats a single file.
//! 3. Otherwise `diffusion_pytorch_model[.V].safetensors` (unless `use_safetensors=false`); if it
//!    is missing and pickle is allowed, fall through, else fail.
//! 4. Otherwise `diffusion_pytorch_model[.V].bin`, or fail with
//!    "Error no file named … found in directory …".
//!
//! Consequence checked against diffusers: a folder holding only pickle shards loads only with
//! `use_safetensors=false`.
//!
//! # transformers models (`PreTrainedModel.from_pretrained`, transformers 5.23)
//! `modeling_utils._get_resolved_checkpoint_files` on a local folder, first match wins:
//!
//! 1. unless `use_safetensors=false`: `model[.V].safetensors`, then
//!    `model.safetensors.index[.V].json` (a single file beats an index; no legacy index name);
//! 2. unless `use_safetensors=true`: `pytorch_model[.V].bin`, then `pytorch_model.bin.index[.V].json`;
//! 3. fail: "Error no file named model[.V].safetensors found in directory …" when
//!    `use_safetensors=true`, else "Error no file named model[.V].safetensors, or
//!    pytorch_model[.V].bin, found in directory …".
//!
//! So transformers, unlike diffusers, reads a sharded pickle checkpoint with the default
//! `use_safetensors=None`.
//!
//! # Variants
//! There is no fallback from a variant name to the non-variant name at this level: the pipeline
//! decides per component whether to ask for the variant
//! ([`crate::selection::ComponentVariants`]). All of it is replayed against real diffusers and
//! transformers in `tests/fixtures/02-weight-resolution` (pipeline level) and
//! `tests/fixtures/00-pipelines` (`format/model_resolution.json`, diffusers models).

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
    /// The serialization of the files.
    pub format: WeightFormat,
}

impl ModelWeights {
    /// What the library opens: the index of a sharded checkpoint, else the single file.
    pub fn entry(&self) -> &Path {
        match &self.index {
            Some(index) => index,
            // A resolution always holds one file when it has no index.
            None => self.files.first().map_or(Path::new(""), PathBuf::as_path),
        }
    }

    fn single(path: PathBuf, format: WeightFormat) -> Self {
        Self {
            index: None,
            legacy_index: false,
            files: vec![path],
            format,
        }
    }

    /// A sharded checkpoint: the index and every shard it names, which must exist.
    fn sharded(
        folder: &Path,
        index: PathBuf,
        legacy_index: bool,
        format: WeightFormat,
    ) -> Result<Self, FormatError> {
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
        Ok(Self {
            index: Some(index),
            legacy_index,
            files,
            format,
        })
    }
}

/// Resolves the weight files of a model in `folder` with the rules of the library that owns
/// its class: diffusers' for [`Naming::Diffusers`], transformers' for [`Naming::Transformers`]
/// (see the module doc).
pub fn resolve_model_files(
    folder: &Path,
    naming: Naming,
    variant: Option<&str>,
    use_safetensors: Option<bool>,
) -> Result<ModelWeights, FormatError> {
    match naming {
        Naming::Diffusers => resolve_diffusers_model_files(folder, variant, use_safetensors),
        Naming::Transformers => resolve_transformers_model_files(folder, variant, use_safetensors),
    }
}

/// Resolves the weight files of a transformers model in `folder` (see the module doc).
pub fn resolve_transformers_model_files(
    folder: &Path,
    variant: Option<&str>,
    use_safetensors: Option<bool>,
) -> Result<ModelWeights, FormatError> {
    use WeightFormat::{Bin, Safetensors};
    let naming = Naming::Transformers;
    let mut tried = Vec::new();
    for format in [Safetensors, Bin] {
        let allowed = match format {
            Safetensors => use_safetensors != Some(false),
            Bin => use_safetensors != Some(true),
        };
        if !allowed {
            continue;
        }
        let name = variant_weights_name(naming, format, variant);
        let path = folder.join(&name);
        tried.push(name);
        if path.is_file() {
            return Ok(ModelWeights::single(path, format));
        }
        let name = index_name(naming, format, variant);
        let path = folder.join(&name);
        tried.push(name);
        if path.is_file() {
            return ModelWeights::sharded(folder, path, false, format);
        }
    }
    let safetensors = variant_weights_name(naming, Safetensors, variant);
    if use_safetensors == Some(true) {
        return Err(FormatError::WeightsNotFound {
            folder: folder.to_path_buf(),
            file: safetensors,
            tried,
        });
    }
    Err(FormatError::TransformersWeightsNotFound {
        folder: folder.to_path_buf(),
        safetensors,
        pickle: variant_weights_name(naming, Bin, variant),
    })
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
        return ModelWeights::sharded(folder, index, legacy_index, format);
    }
    let mut tried = Vec::new();
    if use_safetensors {
        let name = variant_weights_name(Naming::Diffusers, WeightFormat::Safetensors, variant);
        let path = folder.join(&name);
        if path.is_file() {
            return Ok(ModelWeights::single(path, WeightFormat::Safetensors));
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
        return Ok(ModelWeights::single(path, WeightFormat::Bin));
    }
    tried.push(name.clone());
    Err(FormatError::WeightsNotFound {
        folder: folder.to_path_buf(),
        file: name,
        tried,
    })
}
