//! `DiffusionPipeline`: loading a pipeline folder, its components and configs, swapping the
//! scheduler, and `from_pipe`.
//!
//! One [`DiffusionPipeline`] type serves every pipeline class; its [`PipelineClass`] decides
//! which `__call__` flow runs. Components are held in `Arc`s so that `from_pipe` shares them
//! without copying weights (the scheduler, small and stateful, is cloned as diffusers'
//! pipelines would each mutate their own timesteps). What each slot is, accepts and loads is the
//! component table ([`crate::components::COMPONENTS`]); which components load the requested
//! variant is diff-format's [`ComponentVariants`], which file each loads is diff-format's
//! resolver, called by the models' [`diff_models::FromPretrained`].

use crate::clip_tokenizer::ClipTokenizer;
use crate::components::{COMPONENTS, LoadContext, PassedKind, Role, apply_passed};
pub use crate::components::{Components, Passed, PassedComponents};
use crate::error::PipelineError;
use burn::tensor::{DType, Device};
use diff_format::model_index::{ComponentEntry, ModelIndex, PipelineClass as IndexClass};
use diff_format::selection::ComponentVariants;
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
    /// `StableDiffusionSAGPipeline` (self-attention guidance, diffusers'
    /// `pipelines/deprecated/stable_diffusion_sag/`; SD components).
    StableDiffusionSAG,
    /// `StableDiffusionPAGPipeline` (text-to-image with Perturbed-Attention Guidance,
    /// diffusers' `pipelines/pag/`; SD components).
    StableDiffusionPAG,
    /// `StableDiffusionPAGImg2ImgPipeline`.
    StableDiffusionPAGImg2Img,
    /// `StableDiffusionXLPAGPipeline`.
    StableDiffusionXLPAG,
    /// `StableDiffusionXLPAGImg2ImgPipeline`.
    StableDiffusionXLPAGImg2Img,
    /// `StableDiffusionPAGInpaintPipeline`.
    StableDiffusionPAGInpaint,
    /// `StableDiffusionXLPAGInpaintPipeline`.
    StableDiffusionXLPAGInpaint,
    /// `AnimateDiffPipeline` (text-to-video: SD components without the safety checker, plus a
    /// `motion_adapter`; its `unet` is a `UNetMotionModel` sharing the 2D UNet).
    AnimateDiff,
}

/// Every supported class, in the order listed in errors.
pub const SUPPORTED_PIPELINES: [PipelineClass; 14] = [
    PipelineClass::StableDiffusion,
    PipelineClass::StableDiffusionImg2Img,
    PipelineClass::StableDiffusionInpaint,
    PipelineClass::StableDiffusionXL,
    PipelineClass::StableDiffusionXLImg2Img,
    PipelineClass::StableDiffusionXLInpaint,
    PipelineClass::StableDiffusionSAG,
    PipelineClass::StableDiffusionPAG,
    PipelineClass::StableDiffusionPAGImg2Img,
    PipelineClass::StableDiffusionXLPAG,
    PipelineClass::StableDiffusionXLPAGImg2Img,
    PipelineClass::StableDiffusionPAGInpaint,
    PipelineClass::StableDiffusionXLPAGInpaint,
    PipelineClass::AnimateDiff,
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
            PipelineClass::StableDiffusionSAG => "StableDiffusionSAGPipeline",
            PipelineClass::StableDiffusionPAG => "StableDiffusionPAGPipeline",
            PipelineClass::StableDiffusionPAGImg2Img => "StableDiffusionPAGImg2ImgPipeline",
            PipelineClass::StableDiffusionXLPAG => "StableDiffusionXLPAGPipeline",
            PipelineClass::StableDiffusionXLPAGImg2Img => "StableDiffusionXLPAGImg2ImgPipeline",
            PipelineClass::StableDiffusionPAGInpaint => "StableDiffusionPAGInpaintPipeline",
            PipelineClass::StableDiffusionXLPAGInpaint => "StableDiffusionXLPAGInpaintPipeline",
            PipelineClass::AnimateDiff => "AnimateDiffPipeline",
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
                | PipelineClass::StableDiffusionXLPAG
                | PipelineClass::StableDiffusionXLPAGImg2Img
                | PipelineClass::StableDiffusionXLPAGInpaint
        )
    }

    /// Whether this is a Perturbed-Attention Guidance class (`PAGMixin`: `pag_applied_layers`,
    /// `pag_scale`).
    pub fn is_pag(self) -> bool {
        matches!(
            self,
            PipelineClass::StableDiffusionPAG
                | PipelineClass::StableDiffusionPAGImg2Img
                | PipelineClass::StableDiffusionXLPAG
                | PipelineClass::StableDiffusionXLPAGImg2Img
                | PipelineClass::StableDiffusionPAGInpaint
                | PipelineClass::StableDiffusionXLPAGInpaint
        )
    }

    /// The components `__init__` takes, and whether each is optional (`_optional_components`),
    /// from the component table.
    pub fn expected_components(self) -> Vec<(&'static str, bool)> {
        COMPONENTS
            .iter()
            .filter_map(|slot| match slot.role(self) {
                Role::Absent => None,
                role => Some((slot.name, role == Role::Optional)),
            })
            .collect()
    }

    /// The scalar `__init__` arguments registered to the config, with their defaults.
    fn scalar_defaults(self) -> Vec<(&'static str, Value)> {
        match self {
            PipelineClass::StableDiffusion
            | PipelineClass::StableDiffusionImg2Img
            | PipelineClass::StableDiffusionInpaint
            | PipelineClass::StableDiffusionSAG
            | PipelineClass::StableDiffusionPAG
            | PipelineClass::StableDiffusionPAGImg2Img
            | PipelineClass::StableDiffusionPAGInpaint => {
                vec![("requires_safety_checker", Value::Bool(true))]
            }
            PipelineClass::StableDiffusionXL | PipelineClass::StableDiffusionXLPAG => {
                vec![("force_zeros_for_empty_prompt", Value::Bool(true))]
            }
            PipelineClass::StableDiffusionXLImg2Img
            | PipelineClass::StableDiffusionXLInpaint
            | PipelineClass::StableDiffusionXLPAGImg2Img
            | PipelineClass::StableDiffusionXLPAGInpaint => {
                vec![
                    ("requires_aesthetics_score", Value::Bool(false)),
                    ("force_zeros_for_empty_prompt", Value::Bool(true)),
                ]
            }
            PipelineClass::AnimateDiff => Vec::new(),
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

/// The keyword arguments of `from_pretrained`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Hub revision (branch, tag or commit); `None` = `main`. Only used for Hub repo ids.
    pub revision: Option<String>,
    /// Weight variant (`fp16`, ...): `name.<variant>.safetensors`, loaded by the components whose
    /// folder has it; the others load their plain files (diffusers' per-component choice).
    pub variant: Option<String>,
    /// dtype the models are loaded in (`torch_dtype` / `dtype`); default float32.
    pub dtype: DType,
    /// Device the models live on.
    pub device: Device,
    /// `use_safetensors`: `None` prefers safetensors and allows pickle, `Some(true)` refuses
    /// pickle, `Some(false)` loads pickle only; each model applies it with its library's rules.
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
    /// Where the download of a repo id and each component's load are reported (progress bars);
    /// `None` reports nothing.
    pub progress: Option<Arc<dyn crate::progress::LoadProgress>>,
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
            progress: None,
        }
    }
}

/// A loaded diffusers pipeline.
#[derive(Debug, Clone)]
pub struct DiffusionPipeline {
    class: PipelineClass,
    pub(crate) components: Components,
    config: BTreeMap<String, Value>,
    name_or_path: String,
    device: Device,
    dtype: DType,
    /// `pag_applied_layers` (the PAG classes' attribute; see `pag.rs`).
    pub(crate) pag_applied_layers: Vec<String>,
    /// Model offload (`enable_model_cpu_offload`, `offload.rs`).
    offload: crate::offload::OffloadState,
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
    let passed_components = COMPONENTS
        .iter()
        .filter(|slot| slot.passed(&options.components) != PassedKind::Default)
        .map(|slot| slot.name.to_string())
        .collect();
    let selection = diff_format::selection::SelectionOptions {
        variant: options.variant.clone(),
        use_safetensors: options.use_safetensors,
        passed_components,
        ..Default::default()
    };
    let revision = options.revision.as_deref().unwrap_or("main");
    let progress = crate::progress::hub_progress(options.progress.as_deref());
    Ok(api.resolve(repo_or_folder, revision, &selection, progress)?)
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
    /// elsewhere (`from_single_file`'s conversions, built from the folder's configs): they take
    /// their slots as passed-in objects do, and the folder's weights are not looked for.
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

        let mut comps = load_components(folder, &index, &index_path, class, options, preloaded)?;
        if !class.is_xl() {
            patch_outdated_scheduler(&mut comps)?;
        }
        crate::animatediff::attach_motion_unet(&mut comps, class)?;
        let from_folder = COMPONENTS
            .iter()
            .filter(|s| {
                s.passed(&options.components) == PassedKind::Default
                    && s.passed(preloaded) == PassedKind::Default
            })
            .map(|s| s.name.to_string());
        let pipe = DiffusionPipeline {
            class,
            components: comps,
            config,
            name_or_path: name_or_path.to_string(),
            device: options.device.clone(),
            dtype: options.dtype,
            pag_applied_layers: crate::pag::applied_layers_from(&options.config)?
                .unwrap_or_else(crate::pag::default_applied_layers),
            offload: crate::offload::OffloadState::from_folder(folder, options, from_folder),
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
        for slot in &COMPONENTS {
            if slot.role(self.class) == Role::Required && !slot.is_present(&self.components) {
                return Err(PipelineError::MissingComponent {
                    pipeline: self.class.name().to_string(),
                    component: slot.name.to_string(),
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

    pub(crate) fn offload_state(&self) -> &crate::offload::OffloadState {
        &self.offload
    }

    pub(crate) fn offload_state_mut(&mut self) -> &mut crate::offload::OffloadState {
        &mut self.offload
    }

    pub(crate) fn components_mut(&mut self) -> &mut Components {
        &mut self.components
    }

    /// All components.
    pub fn components(&self) -> &Components {
        &self.components
    }

    /// The typed config of a component as JSON: a model's `config` (`unet`, `vae`,
    /// `text_encoder`, ...), the scheduler's current config, the image processor's; `None` for
    /// an absent component or one without a config (tokenizers).
    pub fn component_config(&self, name: &str) -> Option<Map<String, Value>> {
        crate::components::slot(name)?.config_json(&self.components)
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
    /// default) and may hold `pag_applied_layers` for a PAG class (default `["mid"]`, as
    /// diffusers does not carry it over). `name_or_path` is kept; config the new class does not
    /// take is kept under an underscore key (`_requires_safety_checker`) and taken back by a
    /// class that does. A component the new class takes that this pipeline does not have at all
    /// (SD -> SDXL: `text_encoder_2`) must be passed, unless the new class's `__init__` has a
    /// default for it or it is one of this pipeline's optional components, as diffusers checks.
    /// The dtype is kept (diffusers casts to its `torch_dtype` argument, float32 by default;
    /// shared models cannot be cast here).
    pub fn from_pipe(
        &self,
        class: PipelineClass,
        passed: &PassedComponents,
        config: &BTreeMap<String, Value>,
    ) -> Result<Self, PipelineError> {
        self.check_from_pipe(class, passed, crate::auto_pipeline::FromPipeRule::Pipeline)?;
        self.share_into(class, passed, config)
    }

    /// `from_pipe` without the missing-component rule (the AutoPipelines check their own).
    pub(crate) fn share_into(
        &self,
        class: PipelineClass,
        passed: &PassedComponents,
        config: &BTreeMap<String, Value>,
    ) -> Result<Self, PipelineError> {
        let mut comps = self.components.clone();
        apply_passed(&mut comps, passed);
        crate::animatediff::attach_motion_unet(&mut comps, class)?;
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
        let mut pipe = DiffusionPipeline {
            class,
            components: comps,
            config: merged,
            name_or_path: self.name_or_path.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
            pag_applied_layers: crate::pag::applied_layers_from(config)?
                .unwrap_or_else(crate::pag::default_applied_layers),
            offload: self.offload.for_pipe(),
        };
        pipe.check_required()?;
        pipe.reapply_offload(self)?;
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

    /// `2 ** (len(vae.config.block_out_channels) - 1)` (8 when there is no VAE).
    pub fn vae_scale_factor(&self) -> usize {
        self.components
            .vae
            .as_ref()
            .map_or(8, |vae| vae.vae_scale_factor())
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

/// Loads every component `class` takes from `folder`, in the table's order: each slot's
/// `model_index.json` entry is recorded; a dropped slot is `[null, null]`; a missing required
/// one is an error unless passed in; passed-in and `preloaded` objects are not loaded; the rest
/// load with the variant [`ComponentVariants`] gives them. Passed objects are applied last.
fn load_components(
    folder: &Path,
    index: &ModelIndex,
    index_path: &Path,
    class: PipelineClass,
    options: &LoadOptions,
    preloaded: &PassedComponents,
) -> Result<Components, PipelineError> {
    let variants = ComponentVariants::for_folder(folder, index, options.variant.as_deref())?;
    let passed = &options.components;
    let mut comps = Components::default();
    for slot in &COMPONENTS {
        let role = slot.role(class);
        if role == Role::Absent {
            continue;
        }
        let pair = match index.components.get(slot.name) {
            Some(ComponentEntry::Class {
                library,
                class_name,
            }) => Some((library.clone(), class_name.clone())),
            _ => None,
        };
        let given = slot.passed(passed);
        comps.entries.insert(
            slot.name.to_string(),
            pair.clone().filter(|_| given != PassedKind::Drop),
        );
        match (given, pair) {
            (PassedKind::Drop, _) | (PassedKind::Replace, _) => continue,
            (PassedKind::Default, None) if role == Role::Required => {
                return Err(PipelineError::MissingComponent {
                    pipeline: class.name().to_string(),
                    component: slot.name.to_string(),
                });
            }
            (PassedKind::Default, None) => continue,
            (PassedKind::Default, Some(_)) if slot.passed(preloaded) == PassedKind::Replace => {}
            (PassedKind::Default, Some((library, class_name))) => {
                let ctx = LoadContext {
                    folder: &folder.join(slot.name),
                    index_path,
                    library: &library,
                    class_name: &class_name,
                    variant: variants.variant_for(slot.name),
                    use_safetensors: options.use_safetensors,
                    dtype: options.dtype,
                    device: &options.device,
                };
                let progress = options.progress.as_deref();
                if let Some(p) = progress {
                    p.on_component_start(slot.name, &class_name);
                }
                slot.load(&mut comps, &ctx)?;
                if let Some(p) = progress {
                    p.on_component_done(slot.name);
                }
            }
        }
    }
    apply_passed(&mut comps, preloaded);
    apply_passed(&mut comps, passed);
    Ok(comps)
}
