//! Which files a pipeline needs, decided exactly as diffusers 0.42.1's
//! `DiffusionPipeline.download` decides it (`pipelines/pipeline_utils.py`,
//! `pipelines/pipeline_loading_utils.py`).
//!
//! Steps, each a public function so callers can reuse them:
//!
//! 1. `allow_pickle = use_safetensors != Some(true)`; `use_safetensors` defaults to true.
//! 2. The file list minus `_ignore_files`.
//! 3. Component folders: every list-valued `model_index.json` key (null components included);
//!    model folders are those holding a model file ([`crate::weights::is_model_file`]).
//! 4. [`ignore_patterns`]: safetensors mode if every model folder has safetensors for the
//!    requested variant ([`is_safetensors_compatible`]), else `.bin` mode; an explicit
//!    `use_safetensors=true` without safetensors is [`FormatError::SafetensorsNotFound`].
//! 5. [`variant_compatible_siblings`]: per top-level folder, current-form variant files, else
//!    legacy variant files, else non-variant files (+ their index). No variant anywhere while one
//!    was requested is [`FormatError::NoSuchVariant`]; a mix is [`SelectionWarning::MixedVariant`].
//! 6. [`download_plan`]: allow patterns (selected weights, `<folder>/*` for weightless folders,
//!    `<model folder>/config.json`, root config names, transformers auxiliary files), ignore
//!    patterns with their `*.index.*json` forms, and the expected files matched with
//!    [`fnmatch`] (Python's `fnmatch.translate`: `*` crosses `/`, case-sensitive).
//!
//! Loading a local folder (no download) decides per component whether it loads the variant:
//! [`ComponentVariants`] (`_identify_model_variants`); the file each component then loads is
//! [`crate::model_files::resolve_model_files`].
//!
//! Sets are `BTreeSet`s where Python uses (unordered) sets; lists keep Python's order.

use crate::error::FormatError;
use crate::model_index::{ComponentEntry, ModelIndex, PipelineClass};
use crate::weights;
use std::collections::{BTreeMap, BTreeSet};

/// The caller's loading options that change the selection.
#[derive(Debug, Clone, Default)]
pub struct SelectionOptions {
    /// `variant=` (e.g. `fp16`, `non_ema`).
    pub variant: Option<String>,
    /// `use_safetensors=`: `None` prefers safetensors and falls back to `.bin`.
    pub use_safetensors: Option<bool>,
    /// Components the caller passes in, which are not downloaded.
    pub passed_components: Vec<String>,
    /// `use_onnx=`; `None` follows the pipeline class.
    pub use_onnx: Option<bool>,
    /// `use_flashpack=`.
    pub use_flashpack: bool,
}

/// Something diffusers logs as a warning while selecting files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectionWarning {
    /// Some folders use the variant and others do not ("A mixture of fp16 and non-fp16 filenames
    /// will be loaded").
    MixedVariant {
        /// The variant.
        variant: String,
        /// Files of the variant.
        variant_files: Vec<String>,
        /// Non-variant files loaded alongside.
        non_variant_files: Vec<String>,
    },
    /// The repository holds variant shards in the deprecated `name-00001-of-00002.fp16.ext` form.
    LegacyShardedVariant {
        /// The variant.
        variant: String,
    },
}

impl std::fmt::Display for SelectionWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectionWarning::MixedVariant {
                variant,
                variant_files,
                non_variant_files,
            } => write!(
                f,
                "A mixture of {variant} and non-{variant} filenames will be loaded. Loaded {variant} filenames: [{}]. Loaded non-{variant} filenames: [{}]. If this behavior is not expected, please check your folder structure.",
                variant_files.join(", "),
                non_variant_files.join(", ")
            ),
            SelectionWarning::LegacyShardedVariant { variant } => write!(
                f,
                "The repository contains sharded checkpoints for variant '{variant}' maybe in a deprecated format (e.g. diffusion_pytorch_model-00001-of-00002.{variant}.safetensors instead of diffusion_pytorch_model.{variant}-00001-of-00002.safetensors)."
            ),
        }
    }
}

/// What to download / load for a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPlan {
    /// Patterns passed to `snapshot_download(allow_patterns=…)`, in diffusers' order.
    pub allow_patterns: Vec<String>,
    /// Patterns passed to `snapshot_download(ignore_patterns=…)` (with the `.index.*json` forms).
    pub ignore_patterns: Vec<String>,
    /// Weight and index files selected by `variant_compatible_siblings`.
    pub model_filenames: BTreeSet<String>,
    /// The subset of `model_filenames` that are variant files.
    pub variant_filenames: BTreeSet<String>,
    /// Repository files matching an allow pattern and no ignore pattern.
    pub expected_files: BTreeSet<String>,
    /// Warnings diffusers would log.
    pub warnings: Vec<SelectionWarning>,
}

/// Python's `fnmatch.fnmatchcase` / `re.match(fnmatch.translate(pattern), name)`: `*` matches
/// any run (including `/`), `?` one character, `[seq]` / `[!seq]` a class; whole-string match.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative wildcard matching with single-star backtracking (linear in practice).
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = match_class(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        // An unterminated `[` is a literal, as in fnmatch.translate.
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns (matched, index after
/// the class), or `None` when the class is unterminated.
fn match_class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && p[i] == '!';
    if negate {
        i += 1;
    }
    // A `]` right after `[` or `[!` is a literal member.
    let first = i;
    let mut matched = false;
    while i < p.len() {
        if p[i] == ']' && i > first {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

fn split_two(path: &str) -> Option<(&str, &str)> {
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) => Some((a, b)),
        _ => None,
    }
}

/// diffusers' `is_safetensors_compatible`: every component folder (among `folder_names`, minus
/// passed components) has a safetensors file among its variant files (when `variant` is set
/// and any exist) or else its non-variant files; a flat repo is checked at the root.
pub fn is_safetensors_compatible(
    filenames: &BTreeSet<String>,
    passed_components: &[String],
    folder_names: Option<&BTreeSet<String>>,
    variant: Option<&str>,
) -> bool {
    let mut files: Vec<&String> = filenames
        .iter()
        .filter(|f| weights::is_model_file(f))
        .collect();
    if let Some(folders) = folder_names.filter(|f| !f.is_empty()) {
        files.retain(|f| {
            let parent = f.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            folders.contains(parent)
        });
    }
    let mut components: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in &files {
        let Some((component, file)) = split_two(f) else {
            continue;
        };
        if passed_components.iter().any(|p| p == component) {
            continue;
        }
        components.entry(component).or_default().push(file);
    }
    let pick = |names: &[&str]| -> Vec<String> {
        let mut chosen: Vec<String> = Vec::new();
        if let Some(v) = variant {
            chosen = names
                .iter()
                .filter(|n| weights::matches_variant_file(n, v))
                .map(|n| n.to_string())
                .collect();
        }
        if chosen.is_empty() {
            chosen = names
                .iter()
                .filter(|n| weights::matches_non_variant_file(n))
                .map(|n| n.to_string())
                .collect();
        }
        chosen
    };
    if components.is_empty() {
        let names: Vec<&str> = files.iter().map(|s| s.as_str()).collect();
        return pick(&names).iter().any(|f| f.contains(".safetensors"));
    }
    components.values().all(|names| {
        pick(names).iter().any(|f| {
            f.rsplit_once('.')
                .is_some_and(|(_, ext)| ext == "safetensors")
        })
    })
}

/// diffusers' `_get_ignore_patterns`.
#[allow(clippy::too_many_arguments)]
pub fn ignore_patterns(
    filenames: &BTreeSet<String>,
    passed_components: &[String],
    model_folder_names: &BTreeSet<String>,
    use_safetensors: bool,
    allow_pickle: bool,
    use_onnx: Option<bool>,
    is_onnx: bool,
    use_flashpack: bool,
    variant: Option<&str>,
    source_name: &str,
) -> Result<Vec<String>, FormatError> {
    let compatible = is_safetensors_compatible(
        filenames,
        passed_components,
        Some(model_folder_names),
        variant,
    );
    if use_safetensors && !allow_pickle && !compatible {
        return Err(FormatError::SafetensorsNotFound {
            source_name: source_name.to_owned(),
            files: filenames.iter().cloned().collect(),
            variant: variant.map(str::to_owned),
        });
    }
    let onnx = use_onnx.unwrap_or(is_onnx);
    let mut patterns: Vec<String> = if use_safetensors && compatible {
        vec!["*.bin".into(), "*.msgpack".into()]
    } else if use_flashpack {
        return Ok(["*.bin", "*.safetensors", "*.onnx", "*.pb", "*.msgpack"]
            .map(String::from)
            .to_vec());
    } else {
        vec!["*.safetensors".into(), "*.msgpack".into()]
    };
    if !onnx {
        patterns.push("*.onnx".into());
        patterns.push("*.pb".into());
    }
    Ok(patterns)
}

/// The result of [`variant_compatible_siblings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Siblings {
    /// All selected weight and index files.
    pub usable: BTreeSet<String>,
    /// The selected variant files.
    pub variant: BTreeSet<String>,
    /// The mixed-variant warning, if any.
    pub warning: Option<SelectionWarning>,
}

/// diffusers' `variant_compatible_siblings` (0.33+ per-folder rule).
pub fn variant_compatible_siblings(
    filenames: &BTreeSet<String>,
    variant: Option<&str>,
    ignore_patterns: &[String],
    source_name: &str,
) -> Result<Siblings, FormatError> {
    // Python strips leading `*` and `.` characters and tests `endswith`.
    let endings: Vec<&str> = ignore_patterns
        .iter()
        .map(|p| p.trim_start_matches(['*', '.']))
        .collect();
    let mut groups: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for f in filenames {
        let key = split_two(f).map(|(c, _)| c).unwrap_or("");
        groups.entry(key).or_default().push(f);
    }
    let mut usable = BTreeSet::new();
    let mut variant_files = BTreeSet::new();
    for files in groups.values() {
        let files: Vec<&String> = files
            .iter()
            .copied()
            .filter(|f| !endings.iter().any(|e| f.ends_with(e)))
            .collect();
        let select = |test: &dyn Fn(&str) -> bool| -> BTreeSet<String> {
            files
                .iter()
                .filter(|f| test(f))
                .map(|f| (*f).clone())
                .collect()
        };
        if let Some(v) = variant {
            let current = select(&|f| weights::matches_variant_file(f, v));
            let legacy = select(&|f| weights::matches_legacy_variant_file(f, v));
            if !current.is_empty() {
                variant_files.extend(current);
                variant_files.extend(select(&|f| weights::matches_variant_index(f, v)));
                continue;
            }
            if !legacy.is_empty() {
                variant_files.extend(legacy);
                variant_files.extend(select(&|f| weights::matches_legacy_variant_index(f, v)));
                continue;
            }
        }
        usable.extend(select(&|f| weights::matches_non_variant_file(f)));
        usable.extend(select(&|f| weights::matches_non_variant_index(f)));
    }
    usable.extend(variant_files.iter().cloned());
    if let Some(v) = variant
        && variant_files.is_empty()
    {
        return Err(FormatError::NoSuchVariant {
            variant: v.to_owned(),
            source_name: source_name.to_owned(),
        });
    }
    let warning = match variant {
        Some(v) if usable != variant_files => Some(SelectionWarning::MixedVariant {
            variant: v.to_owned(),
            variant_files: variant_files.iter().cloned().collect(),
            non_variant_files: usable.difference(&variant_files).cloned().collect(),
        }),
        _ => None,
    };
    Ok(Siblings {
        usable,
        variant: variant_files,
        warning,
    })
}

/// Root files every download allows (`scheduler_config.json`, `config.json`, `model_index.json`,
/// `pipeline.py`), followed in diffusers' order by the transformers auxiliary files.
const ROOT_ALLOW: [&str; 4] = [
    "scheduler_config.json",
    "config.json",
    "model_index.json",
    "pipeline.py",
];
/// diffusers' `TRANSFORMERS_COMPONENT_AUX_FILES` (0.40+).
const TRANSFORMERS_AUX: [&str; 6] = [
    "chat_template.jinja",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];
/// Pipelines whose `_load_connected_pipes` is true (they also download `README.md`).
const CONNECTED_PIPES: [&str; 8] = [
    "KandinskyCombinedPipeline",
    "KandinskyImg2ImgCombinedPipeline",
    "KandinskyInpaintCombinedPipeline",
    "KandinskyV22CombinedPipeline",
    "KandinskyV22Img2ImgCombinedPipeline",
    "KandinskyV22InpaintCombinedPipeline",
    "WuerstchenCombinedPipeline",
    "StableCascadeCombinedPipeline",
];

/// The whole of `DiffusionPipeline.download`'s decision for a repository listing
/// (repo-relative paths with `/`). Custom-code pipelines and components are refused first.
pub fn download_plan(
    filenames: &BTreeSet<String>,
    model_index: &ModelIndex,
    options: &SelectionOptions,
    source_name: &str,
) -> Result<DownloadPlan, FormatError> {
    let all: Vec<String> = filenames.iter().cloned().collect();
    model_index.ensure_builtin(&all)?;
    let variant = options.variant.as_deref();
    let allow_pickle = options.use_safetensors != Some(true);
    let use_safetensors = options.use_safetensors.unwrap_or(true);
    let mut warnings = Vec::new();
    if let Some(v) = variant
        && filenames
            .iter()
            .any(|f| weights::matches_legacy_variant_file(f, v))
    {
        warnings.push(SelectionWarning::LegacyShardedVariant {
            variant: v.to_owned(),
        });
    }
    let ignored: BTreeSet<&String> = model_index.ignore_files.iter().collect();
    let filenames: BTreeSet<String> = filenames
        .iter()
        .filter(|f| !ignored.contains(f))
        .cloned()
        .collect();
    let folder_names: Vec<&String> = model_index.components.keys().collect();
    let model_folder_names: BTreeSet<String> = filenames
        .iter()
        .filter(|f| weights::is_model_file(f))
        .map(|f| f.rsplit_once('/').map(|(p, _)| p).unwrap_or("").to_owned())
        .filter(|p| folder_names.contains(&p))
        .collect();
    let class = match &model_index.class_name {
        PipelineClass::Builtin(name)
        | PipelineClass::Custom {
            class_name: name, ..
        } => name,
    };
    let is_onnx = class.starts_with("Onnx");
    let ignore = ignore_patterns(
        &filenames,
        &options.passed_components,
        &model_folder_names,
        use_safetensors,
        allow_pickle,
        options.use_onnx,
        is_onnx,
        options.use_flashpack,
        variant,
        source_name,
    )?;
    let siblings = variant_compatible_siblings(&filenames, variant, &ignore, source_name)?;
    warnings.extend(siblings.warning.clone());

    let mut allow: Vec<String> = siblings.usable.iter().cloned().collect();
    for name in &folder_names {
        if !model_folder_names.contains(*name) {
            allow.push(format!("{name}/*"));
        }
    }
    for name in &model_folder_names {
        allow.push(format!("{name}/config.json"));
    }
    allow.extend(ROOT_ALLOW.iter().map(|s| s.to_string()));
    let passed = &options.passed_components;
    allow.retain(|p| match split_two(p) {
        Some((first, _)) => !passed.iter().any(|c| c == first),
        None => true,
    });
    allow.extend(TRANSFORMERS_AUX.iter().map(|s| s.to_string()));
    if CONNECTED_PIPES.contains(&class.as_str()) {
        allow.push("README.md".into());
    }
    let mut ignore_all = ignore.clone();
    ignore_all.extend(ignore.iter().map(|p| format!("{p}.index.*json")));
    let expected_files = filenames
        .iter()
        .filter(|f| !ignore_all.iter().any(|p| fnmatch(p, f)))
        .filter(|f| allow.iter().any(|p| fnmatch(p, f)))
        .cloned()
        .collect();
    Ok(DownloadPlan {
        allow_patterns: allow,
        ignore_patterns: ignore_all,
        model_filenames: siblings.usable,
        variant_filenames: siblings.variant,
        expected_files,
        warnings,
    })
}

/// The weight files of one component folder within a plan: index files separated from the
/// weight files they list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentFiles {
    /// Selected weight files (`.safetensors` / `.bin` / shards), repo-relative.
    pub weights: Vec<String>,
    /// Selected index files, repo-relative.
    pub indexes: Vec<String>,
}

impl DownloadPlan {
    /// The selected files under `<component>/`, split into weights and indexes.
    pub fn component_files(&self, component: &str) -> ComponentFiles {
        let prefix = format!("{component}/");
        let mut out = ComponentFiles::default();
        for f in &self.model_filenames {
            if let Some(rest) = f.strip_prefix(&prefix) {
                if rest.contains('/') {
                    continue;
                }
                if weights::is_index_file(rest) {
                    out.indexes.push(f.clone());
                } else {
                    out.weights.push(f.clone());
                }
            }
        }
        out
    }
}

/// diffusers' `_identify_model_variants` for a local folder: the components (top-level folders
/// named in `model_index.json`) with at least one file whose second dot-segment starts with the
/// variant. `listing` maps each component folder to the names of the files in it.
pub fn identify_model_variants(
    listing: &BTreeMap<String, Vec<String>>,
    model_index: &ModelIndex,
    variant: &str,
) -> BTreeSet<String> {
    identify_model_variants_in(
        listing,
        |name| model_index.components.contains_key(name),
        variant,
    )
}

/// Which components of a local pipeline folder load the requested variant: diffusers'
/// `DiffusionPipeline.from_pretrained` step 2 (`_identify_model_variants`, then
/// `load_sub_model`'s `model_variants.pop(name, None)`). A component folder with a variant file
/// gets the variant; the others load their non-variant files. No component with the variant is
/// [`FormatError::NoVariantModelFiles`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentVariants {
    variant: Option<String>,
    with_variant: BTreeSet<String>,
}

impl ComponentVariants {
    /// Lists `folder`'s component folders (those named in `model_index.json`, as keys of
    /// diffusers' config dict) and decides per component. `variant=None` asks no component for
    /// a variant.
    ///
    /// One deliberate difference: diffusers raises `IndexError` on a file name without a dot in
    /// a component folder (`p.split(".")[1]`); here such a file simply has no variant.
    pub fn for_folder(
        folder: &std::path::Path,
        model_index: &ModelIndex,
        variant: Option<&str>,
    ) -> Result<Self, FormatError> {
        let Some(variant) = variant else {
            return Ok(Self::default());
        };
        let mut listing = BTreeMap::new();
        let entries = std::fs::read_dir(folder).map_err(|e| FormatError::io(folder, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_component = model_index.components.contains_key(&name)
                || model_index.config.contains_key(&name);
            if !is_component || !entry.path().is_dir() {
                continue;
            }
            let files: Vec<String> = std::fs::read_dir(entry.path())
                .map_err(|e| FormatError::io(entry.path(), e))?
                .flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect();
            listing.insert(name, files);
        }
        let with_variant = identify_model_variants_in(
            &listing,
            |name| {
                model_index.components.contains_key(name) || model_index.config.contains_key(name)
            },
            variant,
        );
        if with_variant.is_empty() {
            return Err(FormatError::NoVariantModelFiles {
                variant: variant.to_owned(),
                folder: folder.to_path_buf(),
            });
        }
        Ok(Self {
            variant: Some(variant.to_owned()),
            with_variant,
        })
    }

    /// The variant `component` loads: the requested one if its folder has it, else `None`.
    pub fn variant_for(&self, component: &str) -> Option<&str> {
        self.variant
            .as_deref()
            .filter(|_| self.with_variant.contains(component))
    }

    /// The components that load the variant.
    pub fn with_variant(&self) -> &BTreeSet<String> {
        &self.with_variant
    }
}

fn identify_model_variants_in(
    listing: &BTreeMap<String, Vec<String>>,
    is_component: impl Fn(&str) -> bool,
    variant: &str,
) -> BTreeSet<String> {
    listing
        .iter()
        .filter(|(folder, _)| is_component(folder))
        .filter(|(_, files)| has_variant_file(files, variant))
        .map(|(folder, _)| folder.clone())
        .collect()
}

/// diffusers' per-folder variant test (`_identify_model_variants`): some file name's second
/// dot-segment starts with `variant` (`model.fp16.safetensors`, and the legacy
/// `model-00001-of-00002.fp16.safetensors`).
pub fn has_variant_file(names: &[String], variant: &str) -> bool {
    names
        .iter()
        .any(|f| f.split('.').nth(1).is_some_and(|s| s.starts_with(variant)))
}

/// Component names that are loadable (not `[null, null]`), in `model_index.json` order.
pub fn loadable_components(model_index: &ModelIndex) -> Vec<(&String, &ComponentEntry)> {
    model_index
        .components
        .iter()
        .filter(|(_, e)| !matches!(e, ComponentEntry::Null))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_model_variants_uses_the_second_dot_segment_prefix() {
        let index = ModelIndex::from_json_str(
            r#"{"_class_name": "P", "unet": ["diffusers", "U"], "vae": ["diffusers", "V"], "text_encoder": ["transformers", "T"]}"#,
            "model_index.json",
        )
        .unwrap();
        let mut listing = BTreeMap::new();
        listing.insert(
            "unet".to_owned(),
            vec!["diffusion_pytorch_model.fp16.safetensors".to_owned()],
        );
        // The legacy shard form matches too: its second dot-segment is `fp16`.
        listing.insert(
            "vae".to_owned(),
            vec!["diffusion_pytorch_model-00001-of-00002.fp16.safetensors".to_owned()],
        );
        listing.insert(
            "text_encoder".to_owned(),
            vec!["model.safetensors".to_owned(), "config.json".to_owned()],
        );
        listing.insert(
            "stray".to_owned(),
            vec!["model.fp16.safetensors".to_owned()],
        );
        let got: Vec<String> = identify_model_variants(&listing, &index, "fp16")
            .into_iter()
            .collect();
        assert_eq!(got, ["unet", "vae"]);
    }

    #[test]
    fn fnmatch_follows_python_translate() {
        assert!(fnmatch("*.bin", "unet/diffusion_pytorch_model.bin"));
        assert!(fnmatch("unet/*", "unet/a/b.json"));
        assert!(!fnmatch("unet/*", "unet"));
        assert!(fnmatch(
            "*.bin.index.*json",
            "text_encoder/pytorch_model.bin.index.json"
        ));
        assert!(fnmatch("a?c", "abc"));
        assert!(fnmatch("[!x]b", "ab"));
        assert!(!fnmatch("[!a]b", "ab"));
        assert!(fnmatch("[a-c]", "b"));
        assert!(fnmatch("[", "["));
        assert!(!fnmatch("*.BIN", "x.bin"));
        assert!(fnmatch("model_index.json", "model_index.json"));
        assert!(!fnmatch("model_index.json", "sub/model_index.json"));
    }
}
