//! `model_index.json`: the pipeline class and its components.
//!
//! Field forms, as diffusers 0.42.1 reads them (`pipelines/pipeline_utils.py`,
//! `pipeline_loading_utils.py`):
//!
//! - `_class_name`: a class name string, or `[module_file_stem, ClassName]` for a custom pipeline
//!   whose code lives in the repository (custom code: we refuse it, see [`ModelIndex::ensure_builtin`]);
//! - `_diffusers_version`, `_name_or_path`: strings, kept for re-save;
//! - `_ignore_files`: repo paths excluded from downloads (never written back by diffusers);
//! - component entries `"name": [library, ClassName]`, with `[null, null]` for a deliberately
//!   absent component; `library` is `diffusers`, `transformers`, a `diffusers.pipelines`
//!   sub-package (`["stable_diffusion", "StableDiffusionSafetyChecker"]`) or custom code;
//! - everything else that is not underscore-prefixed is scalar pipeline config
//!   (`requires_safety_checker`, `force_zeros_for_empty_prompt` ...), kept verbatim.
//!
//! Re-saving writes the raw object back with Python's JSON spelling, so a file diffusers wrote
//! re-saves byte for byte.

use crate::config::read_json_object;
use crate::error::{FormatError, describe};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file name of a pipeline's index.
pub const MODEL_INDEX_NAME: &str = "model_index.json";

/// Libraries diffusers loads with a known base class (`LOADABLE_CLASSES` keys).
pub const LOADABLE_LIBRARIES: [&str; 3] = ["diffusers", "transformers", "onnxruntime.training"];

/// Sub-packages of `diffusers.pipelines` in diffusers 0.42.1; a component library with one of
/// these names means "the class lives in that pipeline package" (e.g. the SD safety checker).
pub const PIPELINE_SUBPACKAGES: &[&str] = &[
    "ace_step",
    "allegro",
    "animatediff",
    "anyflow",
    "audioldm2",
    "aura_flow",
    "bria",
    "bria_fibo",
    "bria_fibo2",
    "chroma",
    "chronoedit",
    "cogvideo",
    "cogview3",
    "cogview4",
    "consisid",
    "consistency_models",
    "controlnet",
    "controlnet_hunyuandit",
    "controlnet_sd3",
    "cosmos",
    "ddim",
    "ddpm",
    "deepfloyd_if",
    "deprecated",
    "diffusion_gemma",
    "dit",
    "dreamlite",
    "easyanimate",
    "ernie_image",
    "flux",
    "flux2",
    "glm_image",
    "helios",
    "hidream_image",
    "hunyuan_image",
    "hunyuan_video",
    "hunyuan_video1_5",
    "hunyuandit",
    "ideogram4",
    "joyimage",
    "kandinsky",
    "kandinsky2_2",
    "kandinsky3",
    "kandinsky5",
    "kandinsky6",
    "kolors",
    "krea2",
    "latent_consistency_models",
    "latent_diffusion",
    "latte",
    "ledits_pp",
    "llada2",
    "longcat_audio_dit",
    "longcat_image",
    "ltx",
    "ltx2",
    "lucy",
    "lumina",
    "lumina2",
    "marigold",
    "mochi",
    "motif_video",
    "nucleusmoe_image",
    "omnigen",
    "ovis_image",
    "pag",
    "pixart_alpha",
    "prx",
    "qwenimage",
    "qwenimage21",
    "rfd4_proteina",
    "sana",
    "sana_video",
    "sana_wm",
    "shap_e",
    "skyreels_v2",
    "stable_audio",
    "stable_audio_3",
    "stable_cascade",
    "stable_diffusion",
    "stable_diffusion_3",
    "stable_diffusion_xl",
    "stable_video_diffusion",
    "t2i_adapter",
    "visualcloze",
    "wan",
    "z_image",
];

/// The `_class_name` of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineClass {
    /// A diffusers pipeline class, e.g. `StableDiffusionPipeline`.
    Builtin(String),
    /// `[module_file_stem, ClassName]`: a pipeline whose code is `<stem>.py` in the repository.
    Custom {
        /// The Python file stem.
        module: String,
        /// The class in that file.
        class_name: String,
    },
}

impl PipelineClass {
    /// The class name (for custom pipelines, the class inside the module).
    pub fn name(&self) -> &str {
        match self {
            PipelineClass::Builtin(name) => name,
            PipelineClass::Custom { class_name, .. } => class_name,
        }
    }
}

/// One `"name": [library, ClassName]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentEntry {
    /// `[null, null]`: the component is deliberately absent.
    Null,
    /// A component to load.
    Class {
        /// `diffusers`, `transformers`, a pipeline sub-package, or a custom module name.
        library: String,
        /// The class name within that library.
        class_name: String,
    },
}

impl ComponentEntry {
    /// Whether the library is one diffusers can load without repository code.
    pub fn is_builtin(&self) -> bool {
        match self {
            ComponentEntry::Null => true,
            ComponentEntry::Class { library, .. } => {
                LOADABLE_LIBRARIES.contains(&library.as_str())
                    || PIPELINE_SUBPACKAGES.contains(&library.as_str())
            }
        }
    }

    /// The library that defines the on-disk naming: `transformers` for transformers classes and
    /// for the pipeline-package classes that are transformers models (the SD safety checker).
    pub fn library(&self) -> Option<&str> {
        match self {
            ComponentEntry::Null => None,
            ComponentEntry::Class { library, .. } => Some(library),
        }
    }

    /// The class name, if any.
    pub fn class_name(&self) -> Option<&str> {
        match self {
            ComponentEntry::Null => None,
            ComponentEntry::Class { class_name, .. } => Some(class_name),
        }
    }
}

/// A parsed `model_index.json`.
#[derive(Debug, Clone)]
pub struct ModelIndex {
    /// `_class_name`.
    pub class_name: PipelineClass,
    /// `_diffusers_version`, if present.
    pub diffusers_version: Option<String>,
    /// `_name_or_path`, if present.
    pub name_or_path: Option<String>,
    /// `_ignore_files` (empty when absent).
    pub ignore_files: Vec<String>,
    /// Component entries by name (= sub-folder name), `[null, null]` included.
    pub components: BTreeMap<String, ComponentEntry>,
    /// Scalar pipeline config (`requires_safety_checker`, `force_zeros_for_empty_prompt` ...).
    pub config: BTreeMap<String, Value>,
    /// The whole object as read, for faithful re-saving.
    raw: Map<String, Value>,
    /// Where it was read from.
    path: PathBuf,
}

impl ModelIndex {
    /// Reads `model_index.json` from a file (or from `<folder>/model_index.json` for a folder).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join(MODEL_INDEX_NAME);
        }
        let raw = read_json_object(&path)?;
        Self::from_object(raw, &path)
    }

    /// Parses text; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: impl AsRef<Path>) -> Result<Self, FormatError> {
        let origin = origin.as_ref();
        let raw = crate::config::parse_json_object(text, origin)?;
        Self::from_object(raw, origin)
    }

    /// Interprets an already parsed object.
    pub fn from_object(raw: Map<String, Value>, origin: &Path) -> Result<Self, FormatError> {
        let bad = |key: &str, expected: &str, got: &Value| FormatError::UnexpectedJson {
            path: origin.to_path_buf(),
            key: key.to_owned(),
            expected: expected.to_owned(),
            got: describe(got),
        };
        let class_name = match raw.get("_class_name") {
            Some(Value::String(s)) => PipelineClass::Builtin(s.clone()),
            Some(Value::Array(items)) => match items.as_slice() {
                [Value::String(module), Value::String(class_name)] => PipelineClass::Custom {
                    module: module.clone(),
                    class_name: class_name.clone(),
                },
                _ => {
                    return Err(bad(
                        "_class_name",
                        "a class name or a [module, ClassName] pair",
                        &raw["_class_name"],
                    ));
                }
            },
            Some(other) => {
                return Err(bad(
                    "_class_name",
                    "a class name or a [module, ClassName] pair",
                    other,
                ));
            }
            None => {
                return Err(FormatError::UnexpectedJson {
                    path: origin.to_path_buf(),
                    key: "_class_name".to_owned(),
                    expected: "the pipeline class name".to_owned(),
                    got: "nothing (key missing)".to_owned(),
                });
            }
        };
        let optional_string = |key: &str| -> Result<Option<String>, FormatError> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(key, "a string", other)),
            }
        };
        let diffusers_version = optional_string("_diffusers_version")?;
        let name_or_path = optional_string("_name_or_path")?;
        let ignore_files = match raw.get("_ignore_files") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(bad("_ignore_files", "a list of file paths", other)),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(bad("_ignore_files", "a list of file paths", other)),
        };
        let mut components = BTreeMap::new();
        let mut config = BTreeMap::new();
        for (key, value) in &raw {
            if key.starts_with('_') {
                continue;
            }
            match value {
                // diffusers treats every list-valued key as a component folder.
                Value::Array(items) => {
                    let entry = match items.as_slice() {
                        [Value::Null, Value::Null] => ComponentEntry::Null,
                        [Value::String(library), Value::String(class_name)] => {
                            ComponentEntry::Class {
                                library: library.clone(),
                                class_name: class_name.clone(),
                            }
                        }
                        _ => {
                            return Err(bad(
                                key,
                                "a [library, ClassName] pair or [null, null]",
                                value,
                            ));
                        }
                    };
                    components.insert(key.clone(), entry);
                }
                other => {
                    config.insert(key.clone(), other.clone());
                }
            }
        }
        Ok(ModelIndex {
            class_name,
            diffusers_version,
            name_or_path,
            ignore_files,
            components,
            config,
            raw,
            path: origin.to_path_buf(),
        })
    }

    /// The file this index was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The object as read.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// Refuses pipelines and components that need Python code from the repository or from a
    /// module outside diffusers/transformers, naming the entry. `repo_files` (repo-relative, `/`
    /// separated) lets it name the `.py` file that would be used, as diffusers checks for it.
    pub fn ensure_builtin(&self, repo_files: &[String]) -> Result<(), FormatError> {
        if let PipelineClass::Custom { module, class_name } = &self.class_name {
            return Err(FormatError::CustomCode {
                path: self.path.clone(),
                what: format!(
                    "_class_name = [\"{module}\", \"{class_name}\"] (pipeline code in {module}.py)"
                ),
            });
        }
        for (name, entry) in &self.components {
            if let ComponentEntry::Class {
                library,
                class_name,
            } = entry
            {
                if entry.is_builtin() {
                    continue;
                }
                let file = format!("{name}/{library}.py");
                let detail = if repo_files.iter().any(|f| f == &file) {
                    format!(
                        "component `{name}` = [\"{library}\", \"{class_name}\"] is defined in {file}"
                    )
                } else {
                    format!(
                        "component `{name}` = [\"{library}\", \"{class_name}\"]: {file} does not exist and `{library}` is not a diffusers library or pipeline package"
                    )
                };
                return Err(FormatError::CustomCode {
                    path: self.path.clone(),
                    what: detail,
                });
            }
        }
        Ok(())
    }

    /// The JSON diffusers would write when re-saving this index unchanged: the object as read,
    /// without `_ignore_files` (popped before init and never written back).
    pub fn to_json_value(&self) -> Value {
        let mut out = self.raw.clone();
        out.remove("_ignore_files");
        Value::Object(out)
    }

    /// The file contents for [`Self::to_json_value`], in diffusers' JSON spelling.
    pub fn to_json_string(&self) -> String {
        crate::json::to_config_string(&self.to_json_value())
    }

    /// Writes the index atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), FormatError> {
        crate::fsutil::write_atomic(path.as_ref(), self.to_json_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDXL: &str = r#"{
      "_class_name": "StableDiffusionXLPipeline",
      "_diffusers_version": "0.19.0.dev0",
      "force_zeros_for_empty_prompt": true,
      "add_watermarker": null,
      "scheduler": ["diffusers", "EulerDiscreteScheduler"],
      "text_encoder": ["transformers", "CLIPTextModel"],
      "image_encoder": [null, null],
      "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
      "_ignore_files": ["unet/x.bin"]
    }"#;

    #[test]
    fn parses_every_field_form() {
        let index = ModelIndex::from_json_str(SDXL, "model_index.json").unwrap();
        assert_eq!(
            index.class_name,
            PipelineClass::Builtin("StableDiffusionXLPipeline".into())
        );
        assert_eq!(index.diffusers_version.as_deref(), Some("0.19.0.dev0"));
        assert_eq!(index.ignore_files, ["unet/x.bin"]);
        assert_eq!(index.components["image_encoder"], ComponentEntry::Null);
        assert_eq!(
            index.components["scheduler"],
            ComponentEntry::Class {
                library: "diffusers".into(),
                class_name: "EulerDiscreteScheduler".into()
            }
        );
        assert_eq!(
            index.config["force_zeros_for_empty_prompt"],
            Value::Bool(true)
        );
        assert_eq!(index.config["add_watermarker"], Value::Null);
        index.ensure_builtin(&[]).unwrap();
        assert!(!index.to_json_string().contains("_ignore_files"));
    }

    #[test]
    fn custom_pipeline_class_is_refused_naming_the_file() {
        let text = r#"{"_class_name": ["pipeline", "MyPipeline"], "unet": ["diffusers", "UNet2DConditionModel"]}"#;
        let index = ModelIndex::from_json_str(text, "repo/model_index.json").unwrap();
        let err = index.ensure_builtin(&[]).unwrap_err().to_string();
        assert!(err.contains("repo/model_index.json"), "{err}");
        assert!(err.contains("custom code is not supported"), "{err}");
        assert!(err.contains("pipeline.py"), "{err}");
    }

    #[test]
    fn custom_component_is_refused_naming_its_python_file() {
        let text = r#"{"_class_name": "StableDiffusionPipeline", "vae": ["autoencoder_kl", "AutoencoderKL"]}"#;
        let index = ModelIndex::from_json_str(text, "model_index.json").unwrap();
        let err = index
            .ensure_builtin(&["vae/autoencoder_kl.py".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("vae/autoencoder_kl.py"), "{err}");
    }

    #[test]
    fn malformed_component_entry_is_a_typed_error() {
        for text in [
            r#"{"_class_name": "P", "unet": ["diffusers"]}"#,
            r#"{"_class_name": "P", "unet": [null, "X"]}"#,
            r#"{"_class_name": 3}"#,
            r#"{"unet": ["diffusers", "U"]}"#,
            r#"{"_class_name": "P", "_ignore_files": "x"}"#,
        ] {
            let err = ModelIndex::from_json_str(text, "m.json").unwrap_err();
            assert!(
                matches!(err, FormatError::UnexpectedJson { .. }),
                "{text}: {err}"
            );
        }
    }
}
