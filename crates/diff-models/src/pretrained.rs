//! The one loading entry point every model implements: [`FromPretrained`].
//!
//! `X::from_pretrained(folder, &options)` reads the component folder's `config.json` into the
//! model's typed config, builds the model on `options.device` and loads the weights the owning
//! library would load: the file is chosen by diff-format's resolver
//! ([`diff_format::model_files::resolve_model_files`]) with diffusers' rules for diffusers models
//! and transformers' rules for transformers models ([`FromPretrained::NAMING`]), for
//! `options.variant` and `options.use_safetensors`. Which components of a pipeline get the
//! variant is the pipeline's decision ([`diff_format::selection::ComponentVariants`]).
//!
//! Each class adds its own loading rules (key renames, ignored buffers) in
//! [`FromPretrained::load_options`], used by both `from_pretrained` and
//! [`FromPretrained::from_source`] (tensors already in memory, e.g. a converted single file).

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{DType, Device};
use diff_format::configs::clip::{CLIPConfig, CLIPTextConfig, CLIPVisionConfig};
use diff_format::configs::motion_adapter::MotionAdapterConfig;
use diff_format::configs::unet::UNet2DConditionConfig;
use diff_format::configs::vae::AutoencoderKLConfig;
use diff_format::weights::Naming;
use serde::de::DeserializeOwned;

use crate::weights::{LoadOptions, LoadReport, TensorSource, load_component, load_source};
use crate::{
    AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModel,
    CLIPVisionModelWithProjection, ModelError, MotionAdapter, StableDiffusionSafetyChecker,
    UNet2DConditionModel,
};

/// The keyword arguments of a model's `from_pretrained` (diffusers' and transformers' names).
#[derive(Debug, Clone)]
pub struct ModelLoadOptions {
    /// `variant=`: load `name.<variant>.safetensors` (no fallback to the plain name).
    pub variant: Option<String>,
    /// `use_safetensors=`: `None` prefers safetensors and allows pickle, `Some(true)` refuses
    /// pickle, `Some(false)` loads pickle only (see `diff_format::model_files`).
    pub use_safetensors: Option<bool>,
    /// `torch_dtype=`: the float dtype of the parameters (default `F32`).
    pub dtype: DType,
    /// The device the model is built on.
    pub device: Device,
    /// Missing or unexpected keys are an error (default `true`).
    pub strict: bool,
    /// `ignore_mismatched_sizes=` (default `false`).
    pub ignore_mismatched_sizes: bool,
    /// Keep float parameters in the memory-mapped safetensors files instead of copying them
    /// (CPU device, dtype as on disk; see [`crate::offload`]). Default `false`.
    pub map_weights: bool,
}

impl ModelLoadOptions {
    /// Strict float32 loading of the plain (non-variant) files on `device`, safetensors
    /// preferred.
    pub fn new(device: &Device) -> Self {
        Self {
            variant: None,
            use_safetensors: None,
            dtype: DType::F32,
            device: device.clone(),
            strict: true,
            ignore_mismatched_sizes: false,
            map_weights: crate::offload::map_weights_default(),
        }
    }

    /// Loads the parameters as `dtype`.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Loads the files of `variant`.
    pub fn with_variant(mut self, variant: Option<&str>) -> Self {
        self.variant = variant.map(str::to_owned);
        self
    }

    /// Sets `use_safetensors`.
    pub fn with_use_safetensors(mut self, use_safetensors: Option<bool>) -> Self {
        self.use_safetensors = use_safetensors;
        self
    }

    /// Accepts missing and unexpected keys, reporting them in the [`LoadReport`].
    pub fn lenient(mut self) -> Self {
        self.strict = false;
        self
    }

    /// The loader's options for these settings, before a class adds its rules.
    pub fn weights(&self) -> LoadOptions {
        let mut options = LoadOptions::new().with_dtype(self.dtype);
        options.strict = self.strict;
        options.ignore_mismatched_sizes = self.ignore_mismatched_sizes;
        options.map_weights = self.map_weights;
        options
    }
}

/// A model that loads from a diffusers / transformers component folder.
pub trait FromPretrained: Module + Sized {
    /// The typed config (`config.json`).
    type Config: DeserializeOwned + Clone;

    /// The class name, as in `model_index.json`.
    const CLASS_NAME: &'static str;

    /// Whose file names and resolution rules the weights follow.
    const NAMING: Naming;

    /// Builds the model from its config on `device`, parameters uninitialised until loaded.
    fn from_config(
        config: &Self::Config,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError>;

    /// The config the model was built from (`model.config` in Python).
    fn config(&self) -> &Self::Config;

    /// The weight-loading options of this class: `options`' dtype and strictness plus the key
    /// renames and ignored keys the owning library applies to it.
    fn load_options(options: &ModelLoadOptions) -> LoadOptions {
        options.weights()
    }

    /// Reads `config.json` of a component folder.
    fn load_config(folder: &Path) -> Result<Self::Config, ModelError> {
        let path = folder.join("config.json");
        diff_format::load_config(&path).map_err(|e| ModelError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// `Class.from_pretrained(folder, variant=..., use_safetensors=..., torch_dtype=...)`.
    fn from_pretrained(
        folder: &Path,
        options: &ModelLoadOptions,
    ) -> Result<(Self, LoadReport), ModelError> {
        let _span = tracing::info_span!("from_pretrained", class = Self::CLASS_NAME, folder = %folder.display(), variant = ?options.variant).entered();
        let config = Self::load_config(folder)?;
        let model = Self::from_config(&config, &options.device, options.dtype)?;
        load_component(
            model,
            folder,
            Self::NAMING,
            options.variant.as_deref(),
            options.use_safetensors,
            &Self::load_options(options),
        )
    }

    /// Builds the model from `config` and loads it from tensors already opened (in memory, or
    /// a file chosen by the caller).
    fn from_source(
        config: &Self::Config,
        source: &TensorSource,
        options: &ModelLoadOptions,
    ) -> Result<(Self, LoadReport), ModelError> {
        let model = Self::from_config(config, &options.device, options.dtype)?;
        load_source(model, source, &Self::load_options(options))
    }
}

impl FromPretrained for UNet2DConditionModel {
    type Config = UNet2DConditionConfig;
    const CLASS_NAME: &'static str = "UNet2DConditionModel";
    const NAMING: Naming = Naming::Diffusers;

    fn from_config(
        config: &Self::Config,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        UNet2DConditionModel::from_config(config, device, dtype)
    }

    fn config(&self) -> &Self::Config {
        &self.config
    }
}

impl FromPretrained for AutoencoderKL {
    type Config = AutoencoderKLConfig;
    const CLASS_NAME: &'static str = "AutoencoderKL";
    const NAMING: Naming = Naming::Diffusers;

    fn from_config(
        config: &Self::Config,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        AutoencoderKL::from_config(config, device, dtype)
    }

    fn config(&self) -> &Self::Config {
        &self.config
    }

    /// diffusers renames the attention weights of old checkpoints (`query` / `key` / `value` /
    /// `proj_attn`) to `to_q` / `to_k` / `to_v` / `to_out.0`.
    fn load_options(options: &ModelLoadOptions) -> LoadOptions {
        options
            .weights()
            .with_rename(Arc::new(crate::autoencoder_kl::rename_deprecated_attention))
    }
}

impl FromPretrained for CLIPTextModel {
    type Config = CLIPTextConfig;
    const CLASS_NAME: &'static str = "CLIPTextModel";
    const NAMING: Naming = Naming::Transformers;

    fn from_config(
        config: &Self::Config,
        device: &Device,
        _dtype: DType,
    ) -> Result<Self, ModelError> {
        CLIPTextModel::new(config, device)
    }

    fn config(&self) -> &Self::Config {
        &self.config
    }

    /// transformers' rules: keys lose a leading `text_model.`
    /// (`PrefixChange(prefix_to_remove="text_model")`), and the non-persistent `position_ids`
    /// buffer of old checkpoints is ignored.
    fn load_options(options: &ModelLoadOptions) -> LoadOptions {
        options
            .weights()
            .strip_prefix("text_model")
            .ignore_unexpected_suffix("position_ids")
    }
}

impl FromPretrained for CLIPTextModelWithProjection {
    type Config = CLIPTextConfig;
    const CLASS_NAME: &'static str = "CLIPTextModelWithProjection";
    const NAMING: Naming = Naming::Transformers;

    fn from_config(
        config: &Self::Config,
        device: &Device,
        _dtype: DType,
    ) -> Result<Self, ModelError> {
        CLIPTextModelWithProjection::new(config, device)
    }

    fn config(&self) -> &Self::Config {
        &self.text_model.config
    }

    /// The `position_ids` buffer of old checkpoints is ignored.
    fn load_options(options: &ModelLoadOptions) -> LoadOptions {
        options.weights().ignore_unexpected_suffix("position_ids")
    }
}

impl FromPretrained for CLIPVisionModel {
    type Config = CLIPVisionConfig;
    const CLASS_NAME: &'static str = "CLIPVisionModel";
    const NAMING: Naming = Naming::Transformers;

    fn from_config(
        config: &Self::Config,
        device: &Device,
        _dtype: DType,
    ) -> Result<Self, ModelError> {
        CLIPVisionModel::new(config, device)
    }

    fn config(&self) -> &Self::Config {
        &self.config
    }

    /// transformers' rule: a leading `vision_model.` is removed; `position_ids` is ignored.
    fn load_options(options: &ModelLoadOptions) -> LoadOptions {
        options
            .weights()
            .strip_prefix("vision_model")
            .ignore_unexpected_suffix("position_ids")
    }
}

impl FromPretrained for CLIPVisionModelWithProjection {
    type Config = CLIPVisionConfig;
    const CLASS_NAME: &'static str = "CLIPVisionModelWithProjection";
    const NAMING: Naming = Naming::Transformers;

    fn from_config(
        config: &Self::Config,
        device: &Device,
        _dtype: DType,
    ) -> Result<Self, ModelError> {
        CLIPVisionModelWithProjection::new(config, device)
    }

    fn config(&self) -> &Self::Config {
        &self.vision_model.config
    }

    /// The `position_ids` buffer of old checkpoints is ignored.
    fn load_options(options: &ModelLoadOptions) -> LoadOptions {
        options.weights().ignore_unexpected_suffix("position_ids")
    }
}

impl FromPretrained for StableDiffusionSafetyChecker {
    type Config = CLIPConfig;
    const CLASS_NAME: &'static str = "StableDiffusionSafetyChecker";
    /// A transformers `PreTrainedModel` subclass: `model.safetensors` / `pytorch_model.bin`.
    const NAMING: Naming = Naming::Transformers;

    fn from_config(
        config: &Self::Config,
        device: &Device,
        _dtype: DType,
    ) -> Result<Self, ModelError> {
        StableDiffusionSafetyChecker::new(config, device)
    }

    fn config(&self) -> &Self::Config {
        &self.config
    }

    /// transformers-4 checkpoints (every SD repo) nest the vision tower as
    /// `vision_model.vision_model.*`; transformers 5 writes `vision_model.*`. Both load.
    fn load_options(options: &ModelLoadOptions) -> LoadOptions {
        options
            .weights()
            .with_rename(Arc::new(|key: &str| {
                key.strip_prefix("vision_model.vision_model.")
                    .map(|rest| format!("vision_model.{rest}"))
            }))
            .ignore_unexpected_suffix("position_ids")
    }
}

impl FromPretrained for MotionAdapter {
    type Config = MotionAdapterConfig;
    const CLASS_NAME: &'static str = "MotionAdapter";
    const NAMING: Naming = Naming::Diffusers;

    fn from_config(
        config: &Self::Config,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        MotionAdapter::from_config(config, device, dtype)
    }

    fn config(&self) -> &Self::Config {
        &self.config
    }
}
