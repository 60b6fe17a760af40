//! Weight file names: diffusers and transformers prefixes, `.safetensors` / `.bin`, variants,
//! shards (current and legacy naming) and their index files.
//!
//! | | diffusers model | transformers model |
//! |---|---|---|
//! | safetensors | `diffusion_pytorch_model.safetensors` | `model.safetensors` |
//! | pickle | `diffusion_pytorch_model.bin` | `pytorch_model.bin` |
//! | index | `<weights name>.index.json` | `<weights name>.index.json` |
//!
//! A variant is inserted before the last dot-segment (diffusers' `_add_variant`):
//! `diffusion_pytorch_model.fp16.safetensors`, `model.safetensors.index.fp16.json`. Shards add
//! `-00001-of-00002` before the extension of the (variant) name:
//! `diffusion_pytorch_model.fp16-00001-of-00002.safetensors`. diffusers 0.29-0.30 wrote the legacy
//! form `diffusion_pytorch_model-00001-of-00002.fp16.safetensors` with the index
//! `diffusion_pytorch_model.safetensors.index.fp16.json`; the loader also knows the legacy index
//! `diffusion_pytorch_model.safetensors.fp16.index.json`.
//!
//! The `matches_*` functions reproduce the regular expressions of diffusers'
//! `pipelines/pipeline_loading_utils.py` (0.42.1) on a file's base name. One deliberate
//! difference: diffusers interpolates the variant into the regex unescaped, so a variant holding
//! regex metacharacters (`.`, `+` ...) matches more there; here the variant is matched literally.

/// Which library's naming a component follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `diffusion_pytorch_model.*` (diffusers `ModelMixin`).
    Diffusers,
    /// `model.safetensors` / `pytorch_model.bin` (transformers `PreTrainedModel`).
    Transformers,
}

/// The serialization format of a weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `.safetensors`.
    Safetensors,
    /// `.bin` (a PyTorch pickle; we never execute it).
    Bin,
}

impl WeightFormat {
    /// The extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::Bin => "bin",
        }
    }
}

/// The weight-file prefixes diffusers' regexes accept (any prefix with any extension).
pub const PREFIXES: [&str; 4] = [
    "diffusion_pytorch_model",
    "model",
    "weights",
    "pytorch_model",
];
/// The weight-file extensions diffusers' regexes accept.
pub const EXTENSIONS: [&str; 4] = ["bin", "safetensors", "onnx", "pb"];
/// Endings that make a file a "model file" (`filter_model_files`; an `endswith` test, no dot).
pub const MODEL_FILE_ENDINGS: [&str; 5] = ["bin", "safetensors", "onnx", "pb", "flashpack"];

/// The un-sharded, non-variant weights name for a library and format.
pub fn weights_name(naming: Naming, format: WeightFormat) -> &'static str {
    match (naming, format) {
        (Naming::Diffusers, WeightFormat::Safetensors) => "diffusion_pytorch_model.safetensors",
        (Naming::Diffusers, WeightFormat::Bin) => "diffusion_pytorch_model.bin",
        (Naming::Transformers, WeightFormat::Safetensors) => "model.safetensors",
        (Naming::Transformers, WeightFormat::Bin) => "pytorch_model.bin",
    }
}

/// diffusers' `_add_variant`: inserts `variant` before the last dot-segment.
pub fn add_variant(name: &str, variant: Option<&str>) -> String {
    match (variant, name.rsplit_once('.')) {
        (Some(variant), Some((stem, ext))) => format!("{stem}.{variant}.{ext}"),
        _ => name.to_owned(),
    }
}

/// The (variant) weights file name: `diffusion_pytorch_model.fp16.safetensors`.
pub fn variant_weights_name(naming: Naming, format: WeightFormat, variant: Option<&str>) -> String {
    add_variant(weights_name(naming, format), variant)
}

/// The (variant) index name: `diffusion_pytorch_model.safetensors.index.fp16.json`.
pub fn index_name(naming: Naming, format: WeightFormat, variant: Option<&str>) -> String {
    add_variant(
        &format!("{}.index.json", weights_name(naming, format)),
        variant,
    )
}

/// The legacy variant index name the loader also tries:
/// `diffusion_pytorch_model.safetensors.fp16.index.json`.
pub fn legacy_index_name(naming: Naming, format: WeightFormat, variant: &str) -> String {
    format!("{}.{variant}.index.json", weights_name(naming, format))
}

/// A shard name in the current form (`…fp16-00001-of-00002.safetensors`); `index` is 1-based.
pub fn shard_name(
    naming: Naming,
    format: WeightFormat,
    variant: Option<&str>,
    index: u32,
    count: u32,
) -> String {
    let full = variant_weights_name(naming, format, variant);
    let ext = format.extension();
    let stem = full.strip_suffix(&format!(".{ext}")).unwrap_or(&full);
    format!("{stem}-{index:05}-of-{count:05}.{ext}")
}

/// A shard name in the legacy (diffusers 0.29-0.30) form:
/// `diffusion_pytorch_model-00001-of-00002.fp16.safetensors`.
pub fn legacy_shard_name(
    naming: Naming,
    format: WeightFormat,
    variant: &str,
    index: u32,
    count: u32,
) -> String {
    let name = weights_name(naming, format);
    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
    format!("{stem}-{index:05}-of-{count:05}.{variant}.{ext}")
}

/// The base name of a repo-relative path (after the last `/`).
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `\d{5}-of-\d{5}`, exactly.
pub fn is_shard_suffix(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 14
        && b[..5].iter().all(u8::is_ascii_digit)
        && &b[5..9] == b"-of-"
        && b[9..].iter().all(u8::is_ascii_digit)
}

/// Parses a `-00001-of-00002` suffix into `(index, count)`.
pub fn parse_shard_suffix(s: &str) -> Option<(u32, u32)> {
    if !is_shard_suffix(s) {
        return None;
    }
    Some((s[..5].parse().ok()?, s[9..].parse().ok()?))
}

/// Splits `PREFIX.rest` for each known prefix that starts `name`.
fn after_prefix<'a>(name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    PREFIXES.iter().filter_map(move |p| name.strip_prefix(p))
}

fn is_extension(s: &str) -> bool {
    EXTENSIONS.contains(&s)
}

/// `PREFIX(-SHARD)?.EXT` (non-variant weights, possibly a shard).
pub fn matches_non_variant_file(name: &str) -> bool {
    let name = base_name(name);
    after_prefix(name).any(|rest| {
        let rest = match rest.strip_prefix('-') {
            Some(r) if r.len() > 14 && is_shard_suffix(&r[..14]) => &r[14..],
            Some(_) => return false,
            None => rest,
        };
        rest.strip_prefix('.').is_some_and(is_extension)
    })
}

/// `PREFIX.(V|V-SHARD).EXT` (current-form variant weights).
pub fn matches_variant_file(name: &str, variant: &str) -> bool {
    let name = base_name(name);
    after_prefix(name).any(|rest| {
        let Some(rest) = rest.strip_prefix('.').and_then(|r| r.strip_prefix(variant)) else {
            return false;
        };
        let rest = match rest.strip_prefix('-') {
            Some(r) if r.len() > 14 && is_shard_suffix(&r[..14]) => &r[14..],
            Some(_) => return false,
            None => rest,
        };
        rest.strip_prefix('.').is_some_and(is_extension)
    })
}

/// `PREFIX.EXT.index.V.json` (current-form variant index).
pub fn matches_variant_index(name: &str, variant: &str) -> bool {
    let name = base_name(name);
    after_prefix(name).any(|rest| {
        rest.strip_prefix('.')
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|r| r.strip_suffix(variant))
            .and_then(|r| r.strip_suffix(".index."))
            .is_some_and(is_extension)
    })
}

/// `.*-SHARD.V.[a-z]+` (legacy variant shard, any stem).
pub fn matches_legacy_variant_file(name: &str, variant: &str) -> bool {
    let name = base_name(name);
    let Some((rest, ext)) = name.rsplit_once('.') else {
        return false;
    };
    if ext.is_empty() || !ext.bytes().all(|b| b.is_ascii_lowercase()) {
        return false;
    }
    let Some(rest) = rest.strip_suffix(variant).and_then(|r| r.strip_suffix('.')) else {
        return false;
    };
    rest.len() >= 15 && rest.is_char_boundary(rest.len() - 15) && {
        let tail = &rest[rest.len() - 15..];
        tail.starts_with('-') && is_shard_suffix(&tail[1..])
    }
}

/// `PREFIX.EXT.V.index.json` (legacy variant index).
pub fn matches_legacy_variant_index(name: &str, variant: &str) -> bool {
    let name = base_name(name);
    after_prefix(name).any(|rest| {
        rest.strip_prefix('.')
            .and_then(|r| r.strip_suffix(".index.json"))
            .and_then(|r| r.strip_suffix(variant))
            .and_then(|r| r.strip_suffix('.'))
            .is_some_and(is_extension)
    })
}

/// `PREFIX.EXT.index.json` — like diffusers, anchored only at the start, so
/// `model.safetensors.index.json.bak` matches too.
pub fn matches_non_variant_index(name: &str) -> bool {
    let name = base_name(name);
    after_prefix(name).any(|rest| {
        rest.strip_prefix('.').is_some_and(|r| {
            EXTENSIONS.iter().any(|ext| {
                r.strip_prefix(ext)
                    .is_some_and(|r| r.starts_with(".index.json"))
            })
        })
    })
}

/// diffusers' `filter_model_files` test: the path ends with a model-file ending (no dot needed).
pub fn is_model_file(path: &str) -> bool {
    MODEL_FILE_ENDINGS.iter().any(|e| path.ends_with(e))
}

/// Whether a (base) name is an index file of either form.
pub fn is_index_file(name: &str) -> bool {
    let name = base_name(name);
    name.ends_with(".json") && name.contains(".index")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_diffusers_and_transformers_conventions() {
        use Naming::*;
        use WeightFormat::*;
        assert_eq!(
            variant_weights_name(Diffusers, Safetensors, Some("fp16")),
            "diffusion_pytorch_model.fp16.safetensors"
        );
        assert_eq!(
            variant_weights_name(Transformers, Bin, Some("fp16")),
            "pytorch_model.fp16.bin"
        );
        assert_eq!(
            variant_weights_name(Transformers, Safetensors, None),
            "model.safetensors"
        );
        assert_eq!(
            index_name(Diffusers, Safetensors, Some("fp16")),
            "diffusion_pytorch_model.safetensors.index.fp16.json"
        );
        assert_eq!(
            index_name(Transformers, Bin, None),
            "pytorch_model.bin.index.json"
        );
        assert_eq!(
            legacy_index_name(Diffusers, Safetensors, "fp16"),
            "diffusion_pytorch_model.safetensors.fp16.index.json"
        );
        assert_eq!(
            shard_name(Diffusers, Safetensors, Some("fp16"), 1, 2),
            "diffusion_pytorch_model.fp16-00001-of-00002.safetensors"
        );
        assert_eq!(
            shard_name(Transformers, Safetensors, None, 3, 12),
            "model-00003-of-00012.safetensors"
        );
        assert_eq!(
            legacy_shard_name(Diffusers, Safetensors, "fp16", 1, 2),
            "diffusion_pytorch_model-00001-of-00002.fp16.safetensors"
        );
        assert_eq!(add_variant("x.non_ema.y", Some("v")), "x.non_ema.v.y");
    }

    #[test]
    fn classification_matches_diffusers_regexes() {
        assert!(matches_non_variant_file(
            "unet/diffusion_pytorch_model.safetensors"
        ));
        assert!(matches_non_variant_file("model-00001-of-00002.safetensors"));
        assert!(matches_non_variant_file("weights.bin"));
        assert!(!matches_non_variant_file("model.fp16.safetensors"));
        assert!(!matches_non_variant_file("model-0001-of-00002.safetensors"));
        assert!(!matches_non_variant_file("v1-5-pruned.safetensors"));
        assert!(matches_variant_file("model.fp16.safetensors", "fp16"));
        assert!(matches_variant_file(
            "diffusion_pytorch_model.fp16-00001-of-00002.bin",
            "fp16"
        ));
        assert!(!matches_variant_file(
            "diffusion_pytorch_model-00001-of-00002.fp16.bin",
            "fp16"
        ));
        assert!(matches_legacy_variant_file(
            "diffusion_pytorch_model-00001-of-00002.fp16.safetensors",
            "fp16"
        ));
        assert!(matches_legacy_variant_file(
            "anything-00001-of-00002.fp16.bin",
            "fp16"
        ));
        assert!(!matches_legacy_variant_file(
            "x-00001-of-00002.fp16.Bin",
            "fp16"
        ));
        assert!(matches_variant_index(
            "model.safetensors.index.fp16.json",
            "fp16"
        ));
        assert!(matches_legacy_variant_index(
            "diffusion_pytorch_model.safetensors.fp16.index.json",
            "fp16"
        ));
        assert!(matches_non_variant_index("model.safetensors.index.json"));
        assert!(matches_non_variant_index(
            "model.safetensors.index.json.bak"
        ));
        assert!(!matches_non_variant_index(
            "model.safetensors.index.fp16.json"
        ));
        assert!(is_model_file("foo.xbin"));
        assert_eq!(parse_shard_suffix("00002-of-00010"), Some((2, 10)));
    }
}
