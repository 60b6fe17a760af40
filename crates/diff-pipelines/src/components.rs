//! The component table: every slot a pipeline can hold, in one place.
//!
//! A [`ComponentSlot`] owns what diffusers spreads over a pipeline's `__init__` signature,
//! `_optional_components`, `model_index.json` and `load_sub_model`: the slot's name (= the
//! sub-folder and the attribute), the `[library, class]` pairs it accepts, the config file its
//! folder holds, whether each pipeline family requires it, how it is loaded, how a passed-in
//! object replaces it ([`Passed::Replace`]) and how it is dropped ([`Passed::Drop`]).
//! `pipeline.rs` and `single_file.rs` walk [`COMPONENTS`] instead of matching on names.
//!
//! Adding a slot (an IP-Adapter `image_encoder` that loads, a `motion_adapter`) is a field in
//! [`Components`] and [`PassedComponents`] and one entry here.

use crate::clip_tokenizer::ClipTokenizer;
use crate::error::PipelineError;
use crate::pipeline::PipelineClass;
use burn::tensor::{DType, Device};
use diff_models::weights::{LoadReport, TensorSource};
use diff_models::{
    AutoencoderKL, CLIPImageProcessor, CLIPTextModel, CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection, FromPretrained, ModelLoadOptions, MotionAdapter,
    StableDiffusionSafetyChecker, UNet2DConditionModel, UNetMotionModel,
};
use diff_schedulers::Scheduler;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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

impl<T> Passed<T> {
    /// The state without the object.
    pub fn kind(&self) -> PassedKind {
        match self {
            Passed::Default => PassedKind::Default,
            Passed::Replace(_) => PassedKind::Replace,
            Passed::Drop => PassedKind::Drop,
        }
    }
}

/// What a caller did with a slot: [`Passed`] without the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassedKind {
    /// Left to loading (or sharing).
    Default,
    /// An object was passed in.
    Replace,
    /// `name=None`.
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
    /// `motion_adapter=` (AnimateDiff).
    pub motion_adapter: Passed<Arc<MotionAdapter>>,
    /// `image_encoder=` (the IP-Adapter image encoder).
    pub image_encoder: Passed<Arc<CLIPVisionModelWithProjection>>,
}

/// The loaded components of a pipeline. Each model carries its typed config (`unet.config`),
/// the scheduler its own.
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
    /// `motion_adapter` (AnimateDiff).
    pub motion_adapter: Option<Arc<MotionAdapter>>,
    /// AnimateDiff's `unet`: the 2D `unet` and the `motion_adapter` together, sharing both by
    /// `Arc` (made when an AnimateDiff pipeline is built, not a slot of its own).
    pub unet_motion: Option<Arc<UNetMotionModel>>,
    /// `image_encoder` (IP-Adapters; `load_ip_adapter` registers it).
    pub image_encoder: Option<Arc<CLIPVisionModelWithProjection>>,
    /// The `model_index.json` entry of each component, `None` for `[null, null]`.
    pub entries: BTreeMap<String, Option<(String, String)>>,
}

/// Whether a pipeline family takes a slot (`__init__`), and whether it may be absent
/// (`_optional_components`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The class does not take it.
    Absent,
    /// Required: loading fails without it.
    Required,
    /// Optional.
    Optional,
}

/// What loading one component needs.
#[derive(Debug, Clone, Copy)]
pub struct LoadContext<'a> {
    /// The component's sub-folder.
    pub folder: &'a Path,
    /// `model_index.json` (named in errors).
    pub index_path: &'a Path,
    /// The library of its `model_index.json` entry.
    pub library: &'a str,
    /// The class of its `model_index.json` entry.
    pub class_name: &'a str,
    /// The variant this component loads (the pipeline's choice per component).
    pub variant: Option<&'a str>,
    /// `use_safetensors`.
    pub use_safetensors: Option<bool>,
    /// The float dtype of the models.
    pub dtype: DType,
    /// The device of the models.
    pub device: &'a Device,
}

/// A slot's field plumbing: what the caller passed, putting it in place, presence.
type SlotFields = (
    fn(&PassedComponents) -> PassedKind,
    fn(&mut Components, &PassedComponents),
    fn(&Components) -> bool,
);
type LoadFn = fn(&mut Components, &LoadContext<'_>) -> Result<(), PipelineError>;
type ConvertFn =
    fn(&mut PassedComponents, &Path, &TensorSource, &ModelLoadOptions) -> Result<(), PipelineError>;

/// One component slot (see the module doc).
pub struct ComponentSlot {
    /// The attribute and sub-folder name (`unet`, `text_encoder_2`, ...).
    pub name: &'static str,
    /// The `[library, class]` pairs this slot loads; empty = any (configs only).
    pub classes: &'static [(&'static str, &'static str)],
    /// The config file of its sub-folder.
    pub config_file: &'static str,
    /// Its role in the SD 1.x / 2.x classes.
    pub sd: Role,
    /// Its role in the SDXL classes.
    pub xl: Role,
    /// The key prefixes of its weights in an original single-file checkpoint (freed once no
    /// later slot to convert reads them).
    pub checkpoint_prefixes: &'static [&'static str],
    load: Option<LoadFn>,
    convert: Option<ConvertFn>,
    passed: fn(&PassedComponents) -> PassedKind,
    apply: fn(&mut Components, &PassedComponents),
    present: fn(&Components) -> bool,
    config: fn(&Components) -> Option<Map<String, Value>>,
}

impl std::fmt::Debug for ComponentSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentSlot")
            .field("name", &self.name)
            .field("classes", &self.classes)
            .field("config_file", &self.config_file)
            .field("sd", &self.sd)
            .field("xl", &self.xl)
            .finish()
    }
}

impl ComponentSlot {
    /// Its role in `class`.
    pub fn role(&self, class: PipelineClass) -> Role {
        if class == PipelineClass::AnimateDiff {
            // AnimateDiffPipeline: SD's components without the safety checker, plus the
            // motion adapter.
            return match self.name {
                "safety_checker" => Role::Absent,
                "motion_adapter" => Role::Required,
                _ => self.sd,
            };
        }
        if class.is_xl() { self.xl } else { self.sd }
    }

    /// Whether the slot loads `[library, class_name]`.
    pub fn accepts(&self, library: &str, class_name: &str) -> bool {
        self.classes.is_empty()
            || self
                .classes
                .iter()
                .any(|(l, c)| *l == library && (*c == "*" || *c == class_name))
    }

    /// The accepted pairs, for error messages.
    pub fn supported(&self) -> String {
        self.classes
            .iter()
            .map(|(l, c)| match *c {
                "*" => format!("[{l}, <scheduler class>]"),
                c => format!("[{l}, {c}]"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the slot is built from a single-file checkpoint by `from_single_file` (the
    /// models); the others come from the config folder.
    pub fn converts_from_single_file(&self) -> bool {
        self.convert.is_some()
    }

    /// What the caller did with this slot.
    pub fn passed(&self, passed: &PassedComponents) -> PassedKind {
        (self.passed)(passed)
    }

    /// Whether `components` holds this slot.
    pub fn is_present(&self, components: &Components) -> bool {
        (self.present)(components)
    }

    /// The typed config of the held object, as JSON (a model's `config`, the scheduler's
    /// current config, the image processor's); `None` when absent or config-less.
    pub fn config_json(&self, components: &Components) -> Option<Map<String, Value>> {
        (self.config)(components)
    }

    /// Loads the slot's object from `ctx.folder` into `components`, after checking the
    /// `[library, class]` pair. A config-only slot (`image_encoder`) loads nothing.
    pub fn load(
        &self,
        components: &mut Components,
        ctx: &LoadContext<'_>,
    ) -> Result<(), PipelineError> {
        if !self.accepts(ctx.library, ctx.class_name) {
            return Err(PipelineError::UnsupportedComponent {
                component: self.name.to_string(),
                library: ctx.library.to_string(),
                class_name: ctx.class_name.to_string(),
                path: ctx.index_path.to_path_buf(),
                supported: self.supported(),
            });
        }
        match self.load {
            Some(load) => load(components, ctx),
            None => Ok(()),
        }
    }

    /// Builds the slot's model from its `config_path` and converted tensors, into
    /// `preloaded` as a passed-in object (`from_single_file`). Nothing for non-model slots.
    pub fn convert(
        &self,
        preloaded: &mut PassedComponents,
        config_path: &Path,
        source: &TensorSource,
        options: &ModelLoadOptions,
    ) -> Result<(), PipelineError> {
        match self.convert {
            Some(convert) => convert(preloaded, config_path, source, options),
            None => Ok(()),
        }
    }
}

/// Replaces or drops every slot the caller passed (the table's `apply` per slot), and marks a
/// dropped safety checker `[null, null]` as diffusers records it.
pub fn apply_passed(components: &mut Components, passed: &PassedComponents) {
    for slot in &COMPONENTS {
        (slot.apply)(components, passed);
    }
    if matches!(passed.safety_checker, Passed::Drop) {
        components.entries.insert("safety_checker".into(), None);
    }
}

/// The slot named `name`.
pub fn slot(name: &str) -> Option<&'static ComponentSlot> {
    COMPONENTS.iter().find(|s| s.name == name)
}

fn put<T: Clone>(slot: &mut Option<T>, passed: &Passed<T>) {
    match passed {
        Passed::Default => {}
        Passed::Replace(v) => *slot = Some(v.clone()),
        Passed::Drop => *slot = None,
    }
}

fn to_map<C: serde::Serialize>(config: &C) -> Option<Map<String, Value>> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

fn log_report(name: &str, report: &LoadReport) {
    if !report.is_clean() {
        tracing::warn!("{name}: {}", report.summary());
    }
}

/// `M.from_pretrained(folder, variant=..., use_safetensors=..., torch_dtype=...)`.
fn load_model<M: FromPretrained>(ctx: &LoadContext<'_>) -> Result<Arc<M>, PipelineError> {
    let options = ModelLoadOptions::new(ctx.device)
        .with_dtype(ctx.dtype)
        .with_variant(ctx.variant)
        .with_use_safetensors(ctx.use_safetensors);
    let (model, report) = M::from_pretrained(ctx.folder, &options)?;
    log_report(M::CLASS_NAME, &report);
    Ok(Arc::new(model))
}

/// `M` from its `config.json` and tensors in memory.
fn convert_model<M: FromPretrained>(
    config_path: &Path,
    source: &TensorSource,
    options: &ModelLoadOptions,
) -> Result<Arc<M>, PipelineError> {
    let config: M::Config = diff_format::load_config(config_path)?;
    let (model, report) = M::from_source(&config, source, options)?;
    log_report(M::CLASS_NAME, &report);
    Ok(Arc::new(model))
}

fn load_scheduler(c: &mut Components, ctx: &LoadContext<'_>) -> Result<(), PipelineError> {
    let path = ctx.folder.join("scheduler_config.json");
    let mut config = crate::pipeline::read_json_map(&path)?;
    config.insert(
        "_class_name".into(),
        Value::String(ctx.class_name.to_string()),
    );
    let scheduler = Scheduler::from_config(&config).map_err(|e| match e {
        diff_schedulers::SchedulerError::UnknownClass(_) => PipelineError::UnsupportedComponent {
            component: "scheduler".into(),
            library: ctx.library.to_string(),
            class_name: ctx.class_name.to_string(),
            path: ctx.index_path.to_path_buf(),
            supported: diff_schedulers::SCHEDULER_CLASSES.join(", "),
        },
        other => PipelineError::from(other),
    })?;
    c.scheduler = Some(scheduler);
    Ok(())
}

/// The table's per-field plumbing for a slot held as `Components::$field` /
/// `PassedComponents::$field`.
macro_rules! slot_fields {
    ($field:ident) => {
        (
            |p: &PassedComponents| p.$field.kind(),
            |c: &mut Components, p: &PassedComponents| put(&mut c.$field, &p.$field),
            |c: &Components| c.$field.is_some(),
        )
    };
}

#[allow(clippy::too_many_arguments)]
const fn slot_of(
    name: &'static str,
    classes: &'static [(&'static str, &'static str)],
    config_file: &'static str,
    (sd, xl): (Role, Role),
    checkpoint_prefixes: &'static [&'static str],
    fields: SlotFields,
    load: Option<LoadFn>,
    convert: Option<ConvertFn>,
    config: fn(&Components) -> Option<Map<String, Value>>,
) -> ComponentSlot {
    ComponentSlot {
        name,
        classes,
        config_file,
        sd,
        xl,
        checkpoint_prefixes,
        load,
        convert,
        passed: fields.0,
        apply: fields.1,
        present: fields.2,
        config,
    }
}

use Role::{Absent, Optional, Required};

/// Every slot, in the order components load (diffusers' `__init__` order; SDXL lists
/// `image_encoder` before `feature_extractor`, which changes nothing: both are optional). The
/// UNet comes after the VAE and text encoders: `from_single_file` converts in this order, and
/// moves the UNet (most of a checkpoint) out last rather than copying it.
pub static COMPONENTS: [ComponentSlot; 11] = [
    slot_of(
        "vae",
        &[("diffusers", "AutoencoderKL")],
        "config.json",
        (Required, Required),
        &["first_stage_model."],
        slot_fields!(vae),
        Some(|c, ctx| {
            c.vae = Some(load_model(ctx)?);
            Ok(())
        }),
        Some(|p, path, source, options| {
            p.vae = Passed::Replace(convert_model(path, source, options)?);
            Ok(())
        }),
        |c| to_map(&c.vae.as_ref()?.config),
    ),
    slot_of(
        "text_encoder",
        &[("transformers", "CLIPTextModel")],
        "config.json",
        (Required, Optional),
        &["cond_stage_model.", "conditioner."],
        slot_fields!(text_encoder),
        Some(|c, ctx| {
            c.text_encoder = Some(load_model(ctx)?);
            Ok(())
        }),
        Some(|p, path, source, options| {
            p.text_encoder = Passed::Replace(convert_model(path, source, options)?);
            Ok(())
        }),
        |c| to_map(c.text_encoder.as_ref()?.config()),
    ),
    slot_of(
        "text_encoder_2",
        &[("transformers", "CLIPTextModelWithProjection")],
        "config.json",
        (Absent, Required),
        &["conditioner."],
        slot_fields!(text_encoder_2),
        Some(|c, ctx| {
            c.text_encoder_2 = Some(load_model(ctx)?);
            Ok(())
        }),
        Some(|p, path, source, options| {
            p.text_encoder_2 = Passed::Replace(convert_model(path, source, options)?);
            Ok(())
        }),
        |c| to_map(c.text_encoder_2.as_ref()?.config()),
    ),
    slot_of(
        "tokenizer",
        &[
            ("transformers", "CLIPTokenizer"),
            ("transformers", "CLIPTokenizerFast"),
        ],
        "tokenizer_config.json",
        (Required, Optional),
        &[],
        slot_fields!(tokenizer),
        Some(|c, ctx| {
            c.tokenizer = Some(Arc::new(ClipTokenizer::from_pretrained(ctx.folder)?));
            Ok(())
        }),
        None,
        |_| None,
    ),
    slot_of(
        "tokenizer_2",
        &[
            ("transformers", "CLIPTokenizer"),
            ("transformers", "CLIPTokenizerFast"),
        ],
        "tokenizer_config.json",
        (Absent, Required),
        &[],
        slot_fields!(tokenizer_2),
        Some(|c, ctx| {
            c.tokenizer_2 = Some(Arc::new(ClipTokenizer::from_pretrained(ctx.folder)?));
            Ok(())
        }),
        None,
        |_| None,
    ),
    slot_of(
        "unet",
        &[("diffusers", "UNet2DConditionModel")],
        "config.json",
        (Required, Required),
        &["model.diffusion_model."],
        slot_fields!(unet),
        Some(|c, ctx| {
            c.unet = Some(load_model(ctx)?);
            Ok(())
        }),
        Some(|p, path, source, options| {
            p.unet = Passed::Replace(convert_model(path, source, options)?);
            Ok(())
        }),
        |c| to_map(&c.unet.as_ref()?.config),
    ),
    slot_of(
        "scheduler",
        &[("diffusers", "*")],
        "scheduler_config.json",
        (Required, Required),
        &[],
        slot_fields!(scheduler),
        Some(load_scheduler),
        None,
        |c| c.scheduler.as_ref()?.config_json().ok(),
    ),
    slot_of(
        "safety_checker",
        &[("stable_diffusion", "StableDiffusionSafetyChecker")],
        "config.json",
        (Optional, Absent),
        &[],
        slot_fields!(safety_checker),
        Some(|c, ctx| {
            c.safety_checker = Some(load_model(ctx)?);
            Ok(())
        }),
        None,
        |c| to_map(c.safety_checker.as_ref()?.config()),
    ),
    slot_of(
        "feature_extractor",
        &[
            ("transformers", "CLIPImageProcessor"),
            ("transformers", "CLIPFeatureExtractor"),
        ],
        "preprocessor_config.json",
        (Optional, Optional),
        &[],
        slot_fields!(feature_extractor),
        Some(|c, ctx| {
            c.feature_extractor = Some(Arc::new(CLIPImageProcessor::from_pretrained(ctx.folder)?));
            Ok(())
        }),
        None,
        |c| to_map(&c.feature_extractor.as_ref()?.config),
    ),
    // AnimateDiff's motion modules (their role in AnimateDiffPipeline is set in `role`).
    slot_of(
        "motion_adapter",
        &[("diffusers", "MotionAdapter")],
        "config.json",
        (Absent, Absent),
        &[],
        slot_fields!(motion_adapter),
        Some(|c, ctx| {
            c.motion_adapter = Some(load_model(ctx)?);
            Ok(())
        }),
        None,
        |c| to_map(&c.motion_adapter.as_ref()?.config),
    ),
    slot_of(
        "image_encoder",
        &[("transformers", "CLIPVisionModelWithProjection")],
        "config.json",
        (Optional, Optional),
        &[],
        slot_fields!(image_encoder),
        Some(|c, ctx| {
            c.image_encoder = Some(load_model(ctx)?);
            Ok(())
        }),
        None,
        |c| to_map(&c.image_encoder.as_ref()?.vision_model.config),
    ),
];
