//! `DiffusionPipeline`: loading a pipeline folder, its components and configs, swapping the
//! scheduler, and `from_pipe`.
//!
//! One [`DiffusionPipeline`] type serves the six pipeline classes; its [`PipelineClass`] decides
//! which `__call__` flow runs. Components are held in `Arc`s so that `from_pipe` shares them
//! without copying weights (the scheduler, small and stateful, is cloned as diffusers'
//! pipelines would each mutate their own timesteps).

use crate::clip_tokenizer::ClipTokenizer;
use crate::error::PipelineError;
use burn::tensor::{DType, Device};
use diff_format::model_index::{ComponentEntry, ModelIndex, PipelineClass as IndexClass};
use diff_models::weights::LoadOptions as ModelLoadOptions;
use diff_models::{
    AutoencoderKL, CLIPImageProcessor, CLIPTextModel, CLIPTextModelWithProjection,
    StableDiffusionSafetyChecker, UNet2DConditionModel,
};
use diff_schedulers::Scheduler;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The pipeline classes implemented here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipelineClass {
    /// `StableDiffusionPipeline` (text-to-image, SD 1.x / 2.x).
    StableDiffusion,
    /// `StableDiffusionImg2ImgPipeline`.
    StableDiffusionImg2Img,
    /// `StableDiffusionInpaintPipeline` (9-channel inpaint UNets and the legacy 4-channel path).
    StableDiffusionInpaint,
    /// `StableDiffusionXLPipeline`.
    StableDiffusionXL,
    /// `StableDiffusionXLImg2ImgPipeline` (also the refiner's class: `text_encoder_2` only,
    /// `requires_aesthetics_score`).
    StableDiffusionXLImg2Img,
    /// `StableDiffusionXLInpaintPipeline` (4-channel UNets such as the base's, and 9-channel
    /// inpainting UNets).
    StableDiffusionXLInpaint,
}

/// Every supported class, in the order listed in errors.
pub const SUPPORTED_PIPELINES: [PipelineClass; 6] = [
    PipelineClass::StableDiffusion,
    PipelineClass::StableDiffusionImg2Img,
    PipelineClass::StableDiffusionInpaint,
    PipelineClass::StableDiffusionXL,
    PipelineClass::StableDiffusionXLImg2Img,
    PipelineClass::StableDiffusionXLInpaint,
];

impl PipelineClass {
    /// The diffusers class name.
    pub fn name(self) -> &'static str {
        match self {
            PipelineClass::StableDiffusion => "StableDiffusionPipeline",
            PipelineClass::StableDiffusionImg2Img => "StableDiffusionImg2ImgPipeline",
            PipelineClass::StableDiffusionInpaint => "StableDiffusionInpaintPipeline",
            PipelineClass::StableDiffusionXL => "StableDiffusionXLPipeline",
            PipelineClass::StableDiffusionXLImg2Img => "StableDiffusionXLImg2ImgPipeline",
            PipelineClass::StableDiffusionXLInpaint => "StableDiffusionXLInpaintPipeline",
        }
    }

    /// The class for a diffusers class name.
    pub fn from_name(name: &str) -> Option<Self> {
        SUPPORTED_PIPELINES.into_iter().find(|c| c.name() == name)
    }

    /// Whether this is an SDXL pipeline (two text encoders, added time ids).
    pub fn is_xl(self) -> bool {
        matches!(
            self,
            PipelineClass::StableDiffusionXL
                | PipelineClass::StableDiffusionXLImg2Img
                | PipelineClass::StableDiffusionXLInpaint
        )
    }

    /// The components `__init__` takes, and whether each is optional (`_optional_components`).
    pub fn expected_components(self) -> &'static [(&'static str, bool)] {
        if self.is_xl() {
            &[
                ("vae", false),
                ("text_encoder", true),
                ("text_encoder_2", false),
                ("tokenizer", true),
                ("tokenizer_2", false),
                ("unet", false),
                ("scheduler", false),
                ("image_encoder", true),
                ("feature_extractor", true),
            ]
        } else {
            &[
                ("vae", false),
                ("text_encoder", false),
                ("tokenizer", false),
                ("unet", false),
                ("scheduler", false),
                ("safety_checker", true),
                ("feature_extractor", true),
                ("image_encoder", true),
            ]
        }
    }

    /// The scalar `__init__` arguments registered to the config, with their defaults.
    fn scalar_defaults(self) -> Vec<(&'static str, Value)> {
        match self {
            PipelineClass::StableDiffusion
            | PipelineClass::StableDiffusionImg2Img
            | PipelineClass::StableDiffusionInpaint => {
                vec![("requires_safety_checker", Value::Bool(true))]
            }
            PipelineClass::StableDiffusionXL => {
                vec![("force_zeros_for_empty_prompt", Value::Bool(true))]
            }
            PipelineClass::StableDiffusionXLImg2Img | PipelineClass::StableDiffusionXLInpaint => {
                vec![
                    ("requires_aesthetics_score", Value::Bool(false)),
                    ("force_zeros_for_empty_prompt", Value::Bool(true)),
                ]
            }
        }
    }
}

fn supported_list() -> String {
    SUPPORTED_PIPELINES
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A component given to `from_pretrained` / `from_pipe` in place of the loaded one.
#[derive(Debug, Clone, Default)]
pub enum Passed<T> {
    /// Load it (or, for `from_pipe`, share the source pipeline's).
    #[default]
    Default,
    /// Use this object instead.
    Replace(T),
    /// Do not load it (`name=None` in Python).
    Drop,
}

/// Components passed in to replace or drop loaded ones.
#[derive(Debug, Clone, Default)]
pub struct PassedComponents {
    /// `unet=`.
    pub unet: Passed<Arc<UNet2DConditionModel>>,
    /// `vae=`.
    pub vae: Passed<Arc<AutoencoderKL>>,
    /// `text_encoder=`.
    pub text_encoder: Passed<Arc<CLIPTextModel>>,
    /// `text_encoder_2=`.
    pub text_encoder_2: Passed<Arc<CLIPTextModelWithProjection>>,
    /// `tokenizer=`.
    pub tokenizer: Passed<Arc<ClipTokenizer>>,
    /// `tokenizer_2=`.
    pub tokenizer_2: Passed<Arc<ClipTokenizer>>,
    /// `scheduler=`.
    pub scheduler: Passed<Scheduler>,
    /// `safety_checker=`.
    pub safety_checker: Passed<Arc<StableDiffusionSafetyChecker>>,
    /// `feature_extractor=` (the CLIP image processor feeding the safety checker).
    pub feature_extractor: Passed<Arc<CLIPImageProcessor>>,
}

/// The keyword arguments of `from_pretrained`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Hub revision (branch, tag or commit); `None` = `main`. Only used for Hub repo ids.
    pub revision: Option<String>,
    /// Weight variant (`fp16`, ...): `name.<variant>.safetensors`.
    pub variant: Option<String>,
    /// dtype the models are loaded in (`torch_dtype` / `dtype`); default float32.
    pub dtype: DType,
    /// Device the models live on.
    pub device: Device,
    /// `use_safetensors`: `Some(true)` refuses pickle weights, `None` prefers safetensors.
    pub use_safetensors: Option<bool>,
    /// Never touch the network.
    pub local_files_only: bool,
    /// Components passed in.
    pub components: PassedComponents,
    /// Scalar config passed in (`requires_safety_checker`, `force_zeros_for_empty_prompt`).
    pub config: BTreeMap<String, Value>,
    /// The class to build (`StableDiffusionImg2ImgPipeline.from_pretrained(...)`); `None`
    /// reads `_class_name` (`DiffusionPipeline.from_pretrained`).
    pub pipeline_class: Option<PipelineClass>,
    /// Hub endpoint, token and cache for repo ids; `None` reads the environment (`HF_ENDPOINT`,
    /// `HF_TOKEN`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, ...) as huggingface_hub does.
    pub hub: Option<diff_hub::HubConfig>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            revision: None,
            variant: None,
            dtype: DType::F32,
            device: crate::device::default_device(),
            use_safetensors: None,
            local_files_only: false,
            components: PassedComponents::default(),
            config: BTreeMap::new(),
            pipeline_class: None,
            hub: None,
        }
    }
}

/// The loaded components of a pipeline, each with its config.
#[derive(Debug, Clone, Default)]
pub struct Components {
    /// `unet`.
    pub unet: Option<Arc<UNet2DConditionModel>>,
    /// `vae`.
    pub vae: Option<Arc<AutoencoderKL>>,
    /// `text_encoder`.
    pub text_encoder: Option<Arc<CLIPTextModel>>,
    /// `text_encoder_2` (SDXL).
    pub text_encoder_2: Option<Arc<CLIPTextModelWithProjection>>,
    /// `tokenizer`.
    pub tokenizer: Option<Arc<ClipTokenizer>>,
    /// `tokenizer_2` (SDXL).
    pub tokenizer_2: Option<Arc<ClipTokenizer>>,
    /// `scheduler`.
    pub scheduler: Option<Scheduler>,
    /// `safety_checker` (SD 1.x / 2.x).
    pub safety_checker: Option<Arc<StableDiffusionSafetyChecker>>,
    /// `feature_extractor`.
    pub feature_extractor: Option<Arc<CLIPImageProcessor>>,
    /// The `config.json` (or `scheduler_config.json`, `preprocessor_config.json`) of each
    /// component as read, by component name.
    pub configs: BTreeMap<String, Arc<Map<String, Value>>>,
    /// The `model_index.json` entry of each component, `None` for `[null, null]`.
    pub entries: BTreeMap<String, Option<(String, String)>>,
}

/// A loaded diffusers pipeline.
#[derive(Debug, Clone)]
pub struct DiffusionPipeline {
    class: PipelineClass,
    components: Components,
    config: BTreeMap<String, Value>,
    name_or_path: String,
    device: Device,
    dtype: DType,
}

/// The class to build: the one asked for (a task pipeline ignores `_class_name`, as diffusers
/// does), else the index's `_class_name`, which must be one of [`SUPPORTED_PIPELINES`].
pub(crate) fn pipeline_class(
    index: &ModelIndex,
    index_path: &Path,
    options: &LoadOptions,
) -> Result<PipelineClass, PipelineError> {
    if let Some(c) = options.pipeline_class {
        return Ok(c);
    }
    let name = match &index.class_name {
        IndexClass::Builtin(n) => n.clone(),
        IndexClass::Custom { module, class_name } => {
            format!("[{module}, {class_name}] (custom code)")
        }
    };
    PipelineClass::from_name(&name).ok_or_else(|| PipelineError::UnknownPipeline {
        class_name: name.clone(),
        path: index_path.to_path_buf(),
        supported: supported_list(),
    })
}

pub(crate) fn read_json_map(path: &Path) -> Result<Map<String, Value>, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::io(path, e))?;
    // diff-format's reader also takes Python's `-Infinity` (DPMSolverMultistep configs).
    match diff_format::json::loads(&text).map_err(|e| PipelineError::json(path, &e))? {
        Value::Object(map) => Ok(map),
        other => serde_json::from_value(other).map_err(|e| PipelineError::json(path, &e)),
    }
}

fn unsupported(
    component: &str,
    library: &str,
    class_name: &str,
    path: &Path,
    supported: &str,
) -> PipelineError {
    PipelineError::UnsupportedComponent {
        component: component.to_string(),
        library: library.to_string(),
        class_name: class_name.to_string(),
        path: path.to_path_buf(),
        supported: supported.to_string(),
    }
}

/// Resolves `repo_or_folder` to a local folder: a directory is used as is (diffusers'
/// `os.path.isdir`, never filtered); anything else is a Hub repo id, downloaded (or found in the
/// cache) by diff-hub with diffusers' file selection for the variant, `use_safetensors` and the
/// passed components. `local_files_only` (or `HF_HUB_OFFLINE=1`) uses the cache only.
pub fn resolve_folder(
    repo_or_folder: &str,
    options: &LoadOptions,
) -> Result<PathBuf, PipelineError> {
    let path = Path::new(repo_or_folder);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if repo_or_folder.matches('/').count() > 1 {
        return Err(PipelineError::arg(
            "pretrained_model_name_or_path",
            format!(
                "\"{repo_or_folder}\" is neither a valid local path nor a valid repo id (a repo id is `owner/name`)"
            ),
        ));
    }
    let mut config = match &options.hub {
        Some(c) => c.clone(),
        None => diff_hub::HubConfig::from_env()?,
    };
    if options.local_files_only {
        config.offline = true;
    }
    let api = diff_hub::HubApi::new(config);
    let passed = &options.components;
    let passed_components = [
        ("unet", !matches!(passed.unet, Passed::Default)),
        ("vae", !matches!(passed.vae, Passed::Default)),
        (
            "text_encoder",
            !matches!(passed.text_encoder, Passed::Default),
        ),
        (
            "text_encoder_2",
            !matches!(passed.text_encoder_2, Passed::Default),
        ),
        ("tokenizer", !matches!(passed.tokenizer, Passed::Default)),
        (
            "tokenizer_2",
            !matches!(passed.tokenizer_2, Passed::Default),
        ),
        ("scheduler", !matches!(passed.scheduler, Passed::Default)),
        (
            "safety_checker",
            !matches!(passed.safety_checker, Passed::Default),
        ),
        (
            "feature_extractor",
            !matches!(passed.feature_extractor, Passed::Default),
        ),
    ]
    .into_iter()
    .filter(|(_, p)| *p)
    .map(|(n, _)| n.to_string())
    .collect();
    let selection = diff_format::selection::SelectionOptions {
        variant: options.variant.clone(),
        use_safetensors: options.use_safetensors,
        passed_components,
        ..Default::default()
    };
    let revision = options.revision.as_deref().unwrap_or("main");
    Ok(api.resolve(repo_or_folder, revision, &selection, &diff_hub::NoProgress)?)
}

impl DiffusionPipeline {
    /// `DiffusionPipeline.from_pretrained(repo_or_folder, **options)`.
    pub fn from_pretrained(
        repo_or_folder: &str,
        options: &LoadOptions,
    ) -> Result<Self, PipelineError> {
        let folder = resolve_folder(repo_or_folder, options)?;
        Self::from_folder(
            &folder,
            repo_or_folder,
            options,
            &PassedComponents::default(),
        )
    }

    /// Builds the pipeline of a local diffusers `folder`. `preloaded` holds models already built
    /// elsewhere (`from_single_file`'s conversions): their configs are read from the folder as
    /// for a loaded model, but their weights are not looked for there.
    pub(crate) fn from_folder(
        folder: &Path,
        name_or_path: &str,
        options: &LoadOptions,
        preloaded: &PassedComponents,
    ) -> Result<Self, PipelineError> {
        let index_path = folder.join("model_index.json");
        let index = ModelIndex::load(&index_path)?;
        let class = pipeline_class(&index, &index_path, options)?;
        let _span = tracing::info_span!("DiffusionPipeline::from_pretrained", class = class.name(), folder = %folder.display()).entered();

        // Scalar config: passed > model_index.json > the class default.
        let mut config = BTreeMap::new();
        for (key, default) in class.scalar_defaults() {
            let value = options
                .config
                .get(key)
                .or_else(|| index.config.get(key))
                .cloned()
                .unwrap_or(default);
            config.insert(key.to_string(), value);
        }

        let variant = options.variant.as_deref();
        let device = &options.device;
        let passed = &options.components;
        let mut comps = Components::default();
        for (name, optional) in class.expected_components() {
            let entry = index.components.get(*name);
            let pair = match entry {
                Some(ComponentEntry::Class {
                    library,
                    class_name,
                }) => Some((library.clone(), class_name.clone())),
                _ => None,
            };
            comps.entries.insert((*name).to_string(), pair.clone());
            let sub = folder.join(name);
            let dropped = match *name {
                "unet" => matches!(passed.unet, Passed::Drop),
                "vae" => matches!(passed.vae, Passed::Drop),
                "text_encoder" => matches!(passed.text_encoder, Passed::Drop),
                "text_encoder_2" => matches!(passed.text_encoder_2, Passed::Drop),
                "tokenizer" => matches!(passed.tokenizer, Passed::Drop),
                "tokenizer_2" => matches!(passed.tokenizer_2, Passed::Drop),
                "scheduler" => matches!(passed.scheduler, Passed::Drop),
                "safety_checker" => matches!(passed.safety_checker, Passed::Drop),
                "feature_extractor" => matches!(passed.feature_extractor, Passed::Drop),
                _ => false,
            };
            if dropped {
                comps.entries.insert((*name).to_string(), None);
                continue;
            }
            let Some((library, class_name)) = pair else {
                if !optional && !is_passed(passed, name) {
                    return Err(PipelineError::MissingComponent {
                        pipeline: class.name().to_string(),
                        component: (*name).to_string(),
                    });
                }
                continue;
            };
            let config_file = match *name {
                "scheduler" => "scheduler_config.json",
                "tokenizer" | "tokenizer_2" => "tokenizer_config.json",
                "feature_extractor" => "preprocessor_config.json",
                _ => "config.json",
            };
            if sub.join(config_file).is_file() && !is_passed(passed, name) {
                comps.configs.insert(
                    (*name).to_string(),
                    Arc::new(read_json_map(&sub.join(config_file))?),
                );
            }
            if is_passed(preloaded, name) {
                continue;
            }
            load_component(
                &mut comps,
                name,
                &library,
                &class_name,
                &sub,
                &index_path,
                variant,
                device,
                options,
            )?;
        }
        apply_passed(&mut comps, preloaded);
        apply_passed(&mut comps, passed);
        record_passed_configs(&mut comps, passed);
        if !class.is_xl() {
            patch_outdated_scheduler(&mut comps)?;
        }
        let pipe = DiffusionPipeline {
            class,
            components: comps,
            config,
            name_or_path: name_or_path.to_string(),
            device: options.device.clone(),
            dtype: options.dtype,
        };
        pipe.check_required()?;
        if pipe.components.safety_checker.is_some() && pipe.components.feature_extractor.is_none() {
            return Err(PipelineError::arg(
                "feature_extractor",
                format!(
                    "Make sure to define a feature extractor when loading {} if you want to use the safety checker. If you do not want to use the safety checker, you can pass `safety_checker=None` instead.",
                    class.name()
                ),
            ));
        }
        pipe.warn_safety_checker();
        Ok(pipe)
    }

    fn check_required(&self) -> Result<(), PipelineError> {
        let c = &self.components;
        for (name, optional) in self.class.expected_components() {
            if *optional {
                continue;
            }
            let present = match *name {
                "unet" => c.unet.is_some(),
                "vae" => c.vae.is_some(),
                "text_encoder" => c.text_encoder.is_some(),
                "text_encoder_2" => c.text_encoder_2.is_some(),
                "tokenizer" => c.tokenizer.is_some(),
                "tokenizer_2" => c.tokenizer_2.is_some(),
                "scheduler" => c.scheduler.is_some(),
                _ => true,
            };
            if !present {
                return Err(PipelineError::MissingComponent {
                    pipeline: self.class.name().to_string(),
                    component: (*name).to_string(),
                });
            }
        }
        Ok(())
    }

    /// diffusers' SD `__init__` warning when the safety checker is absent but the config
    /// requires it.
    fn warn_safety_checker(&self) {
        if self.class.is_xl() {
            return;
        }
        let absent = self.components.safety_checker.is_none();
        if absent && self.requires_safety_checker() {
            tracing::warn!(
                "You have disabled the safety checker for {} by passing `safety_checker=None`. Ensure \
                 that you abide to the conditions of the Stable Diffusion license and do not expose \
                 unfiltered results in services or applications open to the public. Both the \
                 diffusers team and Hugging Face strongly recommend to keep the safety filter \
                 enabled in all public facing circumstances, disabling it only for use-cases that \
                 involve analyzing network behavior or auditing its results. For more information, \
                 please have a look at https://github.com/huggingface/diffusers/pull/254 .",
                self.class.name()
            );
        }
    }

    /// `requires_safety_checker` from the config (true by default).
    pub fn requires_safety_checker(&self) -> bool {
        self.config
            .get("requires_safety_checker")
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }

    /// The pipeline class.
    pub fn class(&self) -> PipelineClass {
        self.class
    }

    /// The scalar pipeline config (`requires_safety_checker`, `force_zeros_for_empty_prompt`).
    pub fn config(&self) -> &BTreeMap<String, Value> {
        &self.config
    }

    /// `name_or_path`: the string passed to `from_pretrained`.
    pub fn name_or_path(&self) -> &str {
        &self.name_or_path
    }

    /// The device the models live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the models were loaded in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// All components.
    pub fn components(&self) -> &Components {
        &self.components
    }

    /// The `config.json` of a component as read (`unet`, `vae`, `text_encoder`, ...), or the
    /// scheduler's current config.
    pub fn component_config(&self, name: &str) -> Option<Map<String, Value>> {
        if name == "scheduler" {
            return self.components.scheduler.as_ref()?.config_json().ok();
        }
        self.components.configs.get(name).map(|c| (**c).clone())
    }

    /// `pipe.unet`.
    pub fn unet(&self) -> Option<&Arc<UNet2DConditionModel>> {
        self.components.unet.as_ref()
    }

    /// `pipe.vae`.
    pub fn vae(&self) -> Option<&Arc<AutoencoderKL>> {
        self.components.vae.as_ref()
    }

    /// `pipe.text_encoder`.
    pub fn text_encoder(&self) -> Option<&Arc<CLIPTextModel>> {
        self.components.text_encoder.as_ref()
    }

    /// `pipe.text_encoder_2`.
    pub fn text_encoder_2(&self) -> Option<&Arc<CLIPTextModelWithProjection>> {
        self.components.text_encoder_2.as_ref()
    }

    /// `pipe.tokenizer`.
    pub fn tokenizer(&self) -> Option<&Arc<ClipTokenizer>> {
        self.components.tokenizer.as_ref()
    }

    /// `pipe.tokenizer_2`.
    pub fn tokenizer_2(&self) -> Option<&Arc<ClipTokenizer>> {
        self.components.tokenizer_2.as_ref()
    }

    /// `pipe.safety_checker`.
    pub fn safety_checker(&self) -> Option<&Arc<StableDiffusionSafetyChecker>> {
        self.components.safety_checker.as_ref()
    }

    /// `pipe.feature_extractor`.
    pub fn feature_extractor(&self) -> Option<&Arc<CLIPImageProcessor>> {
        self.components.feature_extractor.as_ref()
    }

    /// `pipe.scheduler`.
    pub fn scheduler(&self) -> Option<&Scheduler> {
        self.components.scheduler.as_ref()
    }

    /// `pipe.scheduler = scheduler`.
    pub fn set_scheduler(&mut self, scheduler: Scheduler) {
        self.components.scheduler = Some(scheduler);
    }

    /// `pipe.scheduler = Class.from_config(pipe.scheduler.config, **overrides)`.
    pub fn swap_scheduler(
        &mut self,
        class_name: &str,
        overrides: &Map<String, Value>,
    ) -> Result<(), PipelineError> {
        let current = self
            .scheduler()
            .ok_or_else(|| PipelineError::MissingComponent {
                pipeline: self.class.name().to_string(),
                component: "scheduler".into(),
            })?;
        let config = current.config_json().map_err(PipelineError::from)?;
        let new = Scheduler::from_config_as(class_name, &config, overrides)?;
        self.components.scheduler = Some(new);
        Ok(())
    }

    /// `NewPipeline.from_pipe(pipe, **kwargs)`: a pipeline of `class` built from this one's
    /// components, shared (`Arc` clones, no weight copies); `passed` replaces or drops some,
    /// `config` overrides scalar config (passed > this pipeline's config > the new class's
    /// default).
    pub fn from_pipe(
        &self,
        class: PipelineClass,
        passed: &PassedComponents,
        config: &BTreeMap<String, Value>,
    ) -> Result<Self, PipelineError> {
        let mut comps = self.components.clone();
        apply_passed(&mut comps, passed);
        record_passed_configs(&mut comps, passed);
        let mut merged = BTreeMap::new();
        for (key, default) in class.scalar_defaults() {
            let value = config
                .get(key)
                .or_else(|| self.config.get(key))
                .cloned()
                .unwrap_or(default);
            merged.insert(key.to_string(), value);
        }
        // Keep what the new class does not consume under an underscore key, as diffusers
        // stashes it for a round trip back.
        for (key, value) in &self.config {
            if !merged.contains_key(key) {
                let stashed = if key.starts_with('_') {
                    key.clone()
                } else {
                    format!("_{key}")
                };
                merged.insert(stashed, value.clone());
            }
        }
        let pipe = DiffusionPipeline {
            class,
            components: comps,
            config: merged,
            name_or_path: self.name_or_path.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
        };
        pipe.check_required()?;
        Ok(pipe)
    }

    pub(crate) fn require<'a, T>(
        &self,
        value: Option<&'a T>,
        name: &str,
    ) -> Result<&'a T, PipelineError> {
        value.ok_or_else(|| PipelineError::MissingComponent {
            pipeline: self.class.name().to_string(),
            component: name.to_string(),
        })
    }

    /// `2 ** (len(vae.config.block_out_channels) - 1)` (8 when there is no VAE config).
    pub fn vae_scale_factor(&self) -> usize {
        self.components
            .configs
            .get("vae")
            .and_then(|c| c.get("block_out_channels"))
            .and_then(Value::as_array)
            .map_or(8, |a| 1usize << a.len().saturating_sub(1).min(16))
    }
}

/// SD's `__init__` fixes outdated scheduler configs in memory: `steps_offset != 1` becomes 1 and
/// `clip_sample: true` becomes false, each with diffusers' deprecation warning.
fn patch_outdated_scheduler(comps: &mut Components) -> Result<(), PipelineError> {
    let Some(scheduler) = &comps.scheduler else {
        return Ok(());
    };
    let mut config = scheduler.config_json()?;
    let mut overrides = Map::new();
    if let Some(offset) = config
        .get("steps_offset")
        .and_then(Value::as_i64)
        .filter(|o| *o != 1)
    {
        tracing::warn!(
            "The configuration file of this scheduler: {} is outdated. `steps_offset` should be set to 1 instead of {offset}.",
            scheduler.class_name()
        );
        overrides.insert("steps_offset".into(), Value::from(1));
    }
    if config.get("clip_sample") == Some(&Value::Bool(true)) {
        tracing::warn!(
            "The configuration file of this scheduler: {} has not set the configuration `clip_sample`. `clip_sample` should be set to False in the configuration file.",
            scheduler.class_name()
        );
        overrides.insert("clip_sample".into(), Value::Bool(false));
    }
    if !overrides.is_empty() {
        // diffusers edits the config dict itself, so a foreign key (PNDM's `clip_sample`) is
        // patched too: write the values into the config rather than pass them as overrides.
        config.extend(overrides);
        comps.scheduler = Some(Scheduler::from_config_as(
            scheduler.class_name(),
            &config,
            &Map::new(),
        )?);
    }
    Ok(())
}

fn is_passed(passed: &PassedComponents, name: &str) -> bool {
    match name {
        "unet" => matches!(passed.unet, Passed::Replace(_)),
        "vae" => matches!(passed.vae, Passed::Replace(_)),
        "text_encoder" => matches!(passed.text_encoder, Passed::Replace(_)),
        "text_encoder_2" => matches!(passed.text_encoder_2, Passed::Replace(_)),
        "tokenizer" => matches!(passed.tokenizer, Passed::Replace(_)),
        "tokenizer_2" => matches!(passed.tokenizer_2, Passed::Replace(_)),
        "scheduler" => matches!(passed.scheduler, Passed::Replace(_)),
        "safety_checker" => matches!(passed.safety_checker, Passed::Replace(_)),
        "feature_extractor" => matches!(passed.feature_extractor, Passed::Replace(_)),
        _ => false,
    }
}

fn apply_passed(comps: &mut Components, passed: &PassedComponents) {
    fn apply<T: Clone>(slot: &mut Option<T>, p: &Passed<T>) {
        match p {
            Passed::Default => {}
            Passed::Replace(v) => *slot = Some(v.clone()),
            Passed::Drop => *slot = None,
        }
    }
    apply(&mut comps.unet, &passed.unet);
    apply(&mut comps.vae, &passed.vae);
    apply(&mut comps.text_encoder, &passed.text_encoder);
    apply(&mut comps.text_encoder_2, &passed.text_encoder_2);
    apply(&mut comps.tokenizer, &passed.tokenizer);
    apply(&mut comps.tokenizer_2, &passed.tokenizer_2);
    apply(&mut comps.scheduler, &passed.scheduler);
    apply(&mut comps.safety_checker, &passed.safety_checker);
    apply(&mut comps.feature_extractor, &passed.feature_extractor);
    if matches!(passed.safety_checker, Passed::Drop) {
        comps.entries.insert("safety_checker".into(), None);
    }
}

/// A UNet or VAE passed in (`unet=` / `vae=`) brings its own config, which diffusers reads as
/// `pipe.unet.config`: record it, so that `component_config` and what is sized from the configs
/// (the VAE scale factor, the UNet's input channels) describe the model in use. A dropped
/// component has no config.
fn record_passed_configs(comps: &mut Components, passed: &PassedComponents) {
    fn record<C: serde::Serialize>(comps: &mut Components, name: &str, config: &C) {
        match serde_json::to_value(config) {
            Ok(Value::Object(map)) => {
                comps.configs.insert(name.to_string(), Arc::new(map));
            }
            _ => tracing::warn!("{name}: the passed model's config could not be recorded"),
        }
    }
    match &passed.unet {
        Passed::Replace(unet) => record(comps, "unet", &unet.config),
        Passed::Drop => {
            comps.configs.remove("unet");
        }
        Passed::Default => {}
    }
    match &passed.vae {
        Passed::Replace(vae) => record(comps, "vae", &vae.config),
        Passed::Drop => {
            comps.configs.remove("vae");
        }
        Passed::Default => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn load_component(
    comps: &mut Components,
    name: &str,
    library: &str,
    class_name: &str,
    sub: &Path,
    index_path: &Path,
    variant: Option<&str>,
    device: &Device,
    options: &LoadOptions,
) -> Result<(), PipelineError> {
    if is_passed(&options.components, name) {
        return Ok(());
    }
    let dtype = options.dtype;
    if options.use_safetensors == Some(true)
        && matches!(name, "unet" | "vae" | "text_encoder" | "text_encoder_2")
    {
        let has_safetensors = std::fs::read_dir(sub)
            .map_err(|e| PipelineError::io(sub, e))?
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name().to_string_lossy().ends_with(".safetensors")
                    || e.file_name()
                        .to_string_lossy()
                        .ends_with(".safetensors.index.json")
            });
        if !has_safetensors {
            return Err(PipelineError::NotFound {
                what: sub.display().to_string(),
                message: "use_safetensors=true but the folder has no .safetensors weights".into(),
            });
        }
    }
    match (name, library, class_name) {
        ("unet", "diffusers", "UNet2DConditionModel") => {
            let opts = ModelLoadOptions::new().with_dtype(dtype);
            let (m, report) = UNet2DConditionModel::from_pretrained(sub, variant, device, &opts)?;
            log_report(name, &report);
            comps.unet = Some(Arc::new(m));
        }
        ("unet", ..) => {
            return Err(unsupported(
                name,
                library,
                class_name,
                index_path,
                "[diffusers, UNet2DConditionModel]",
            ));
        }
        ("vae", "diffusers", "AutoencoderKL") => {
            let opts = ModelLoadOptions::new().with_dtype(dtype);
            let (m, report) = AutoencoderKL::from_pretrained(sub, variant, device, &opts)?;
            log_report(name, &report);
            comps.vae = Some(Arc::new(m));
        }
        ("vae", ..) => {
            return Err(unsupported(
                name,
                library,
                class_name,
                index_path,
                "[diffusers, AutoencoderKL]",
            ));
        }
        ("text_encoder", "transformers", "CLIPTextModel") => {
            let (m, report) = CLIPTextModel::from_pretrained(sub, variant, device, dtype)?;
            log_report(name, &report);
            comps.text_encoder = Some(Arc::new(m));
        }
        ("text_encoder", ..) => {
            return Err(unsupported(
                name,
                library,
                class_name,
                index_path,
                "[transformers, CLIPTextModel]",
            ));
        }
        ("text_encoder_2", "transformers", "CLIPTextModelWithProjection") => {
            let (m, report) =
                CLIPTextModelWithProjection::from_pretrained(sub, variant, device, dtype)?;
            log_report(name, &report);
            comps.text_encoder_2 = Some(Arc::new(m));
        }
        ("text_encoder_2", ..) => {
            return Err(unsupported(
                name,
                library,
                class_name,
                index_path,
                "[transformers, CLIPTextModelWithProjection]",
            ));
        }
        ("tokenizer" | "tokenizer_2", "transformers", "CLIPTokenizer" | "CLIPTokenizerFast") => {
            let tok = Arc::new(ClipTokenizer::from_pretrained(sub)?);
            if name == "tokenizer" {
                comps.tokenizer = Some(tok);
            } else {
                comps.tokenizer_2 = Some(tok);
            }
        }
        ("tokenizer" | "tokenizer_2", ..) => {
            return Err(unsupported(
                name,
                library,
                class_name,
                index_path,
                "[transformers, CLIPTokenizer], [transformers, CLIPTokenizerFast]",
            ));
        }
        ("scheduler", "diffusers", _) => {
            let path = sub.join("scheduler_config.json");
            let mut config = read_json_map(&path)?;
            config.insert("_class_name".into(), Value::String(class_name.to_string()));
            let scheduler = Scheduler::from_config(&config).map_err(|e| match e {
                diff_schedulers::SchedulerError::UnknownClass(_) => unsupported(
                    name,
                    library,
                    class_name,
                    index_path,
                    &diff_schedulers::SCHEDULER_CLASSES.join(", "),
                ),
                other => PipelineError::from(other),
            })?;
            comps.scheduler = Some(scheduler);
        }
        ("scheduler", ..) => {
            return Err(unsupported(
                name,
                library,
                class_name,
                index_path,
                "[diffusers, <scheduler class>]",
            ));
        }
        ("safety_checker", "stable_diffusion", "StableDiffusionSafetyChecker") => {
            let (m, report) =
                StableDiffusionSafetyChecker::from_pretrained(sub, variant, device, dtype)?;
            log_report(name, &report);
            comps.safety_checker = Some(Arc::new(m));
        }
        ("safety_checker", ..) => {
            return Err(unsupported(
                name,
                library,
                class_name,
                index_path,
                "[stable_diffusion, StableDiffusionSafetyChecker]",
            ));
        }
        ("feature_extractor", "transformers", "CLIPImageProcessor" | "CLIPFeatureExtractor") => {
            comps.feature_extractor = Some(Arc::new(CLIPImageProcessor::from_pretrained(sub)?));
        }
        ("feature_extractor", ..) => {
            return Err(unsupported(
                name,
                library,
                class_name,
                index_path,
                "[transformers, CLIPImageProcessor]",
            ));
        }
        // Feature extractor / image encoder: configs only (read above).
        _ => {}
    }
    Ok(())
}

fn log_report(name: &str, report: &diff_models::weights::LoadReport) {
    if !report.is_clean() {
        tracing::warn!("{name}: {}", report.summary());
    }
}
