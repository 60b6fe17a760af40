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

/// Inserts the variant before the last dot-segment, as diffusers' `_add_variant` does
/// (`model.safetensors` + `fp16` -> `model.fp16.safetensors`).
pub fn add_variant(name: &str, variant: Option<&str>) -> String {
    match (variant, name.rsplit_once('.')) {
        (Some(v), Some((stem, ext))) => format!("{stem}.{v}.{ext}"),
        _ => name.to_string(),
    }
}

const PREFIXES: [&str; 2] = ["diffusion_pytorch_model", "model"];
const PICKLE_PREFIXES: [&str; 2] = ["diffusion_pytorch_model", "pytorch_model"];

/// Finds the weight file of a component folder for a variant; the error lists what was tried.
pub fn find_weight_files(folder: &Path, variant: Option<&str>) -> Result<WeightFiles, ModelError> {
    let mut tried = Vec::new();
    let mut probe = |name: String| {
        let path = folder.join(&name);
        tried.push(name);
        path.is_file().then_some(path)
    };
    for prefix in PREFIXES {
        if let Some(p) = probe(add_variant(&format!("{prefix}.safetensors"), variant)) {
            return Ok(WeightFiles::Safetensors(p));
        }
        if let Some(p) = probe(add_variant(
            &format!("{prefix}.safetensors.index.json"),
            variant,
        )) {
            return Ok(WeightFiles::SafetensorsIndex(p));
        }
        if let Some(v) = variant
            && let Some(p) = probe(format!("{prefix}.safetensors.{v}.index.json"))
        {
            return Ok(WeightFiles::SafetensorsIndex(p));
        }
    }
    for prefix in PICKLE_PREFIXES {
        if let Some(p) = probe(add_variant(&format!("{prefix}.bin"), variant)) {
            return Ok(WeightFiles::Pickle(p));
        }
        if let Some(p) = probe(add_variant(&format!("{prefix}.bin.index.json"), variant)) {
            return Ok(WeightFiles::Pickle(p));
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
