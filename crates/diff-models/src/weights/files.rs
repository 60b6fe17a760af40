//! Which weight file of a component folder to read, for a variant.
//!
//! The names follow diffusers/transformers (`diffusion_pytorch_model[.variant].safetensors`,
//! `model[.variant].safetensors`, `*.safetensors.index[.variant].json`, the legacy
//! `*.safetensors.variant.index.json`, and the pickle names). Safetensors win over pickle, as
//! with diffusers' default `use_safetensors=None`; a single file wins over an index when a
//! folder has both, as in `_get_model_file`.

use std::path::{Path, PathBuf};

use crate::ModelError;

/// What was found for a component folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    /// One `.safetensors` file.
    Safetensors(PathBuf),
    /// A `.safetensors.index.json` naming shards beside it.
    SafetensorsIndex(PathBuf),
    /// A pickle checkpoint (`.bin`, or its index).
    Pickle(PathBuf),
}

pub use diff_format::weights::add_variant;
use diff_format::weights::{
    Naming, WeightFormat, index_name, legacy_index_name, variant_weights_name,
};

/// Finds the weight file of a component folder for a variant; the error lists what was tried.
///
/// Order: for diffusers then transformers naming, the single safetensors file, its index, the
/// legacy variant index; then the same for `.bin`. Names come from `diff_format::weights`.
pub fn find_weight_files(folder: &Path, variant: Option<&str>) -> Result<WeightFiles, ModelError> {
    let mut tried = Vec::new();
    let mut probe = |name: String| {
        let path = folder.join(&name);
        tried.push(name);
        path.is_file().then_some(path)
    };
    for format in [WeightFormat::Safetensors, WeightFormat::Bin] {
        for naming in [Naming::Diffusers, Naming::Transformers] {
            let wrap = |p: PathBuf, index: bool| match (format, index) {
                (WeightFormat::Bin, _) => WeightFiles::Pickle(p),
                (_, false) => WeightFiles::Safetensors(p),
                (_, true) => WeightFiles::SafetensorsIndex(p),
            };
            if let Some(p) = probe(variant_weights_name(naming, format, variant)) {
                return Ok(wrap(p, false));
            }
            if let Some(p) = probe(index_name(naming, format, variant)) {
                return Ok(wrap(p, true));
            }
            if let Some(v) = variant
                && let Some(p) = probe(legacy_index_name(naming, format, v))
            {
                return Ok(wrap(p, true));
            }
        }
    }
    Err(ModelError::NoWeights {
        folder: folder.display().to_string(),
        variant: variant.map(str::to_string),
        tried: tried.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_variant_inserts_before_the_extension_like_diffusers() {
        assert_eq!(
            add_variant("model.safetensors", Some("fp16")),
            "model.fp16.safetensors"
        );
        assert_eq!(
            add_variant(
                "diffusion_pytorch_model.safetensors.index.json",
                Some("fp16")
            ),
            "diffusion_pytorch_model.safetensors.index.fp16.json"
        );
        assert_eq!(add_variant("model.safetensors", None), "model.safetensors");
    }
}
