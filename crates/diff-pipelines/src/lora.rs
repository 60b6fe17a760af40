//! LoRA on a pipeline: diffusers' `StableDiffusionLoraLoaderMixin` /
//! `StableDiffusionXLLoraLoaderMixin` (`loaders/lora_pipeline.py`, `lora_base.py`) and the
//! PEFT helpers they call (`utils/peft_utils.py`).
//!
//! The file side (which file, which format, which layer gets which A and B with which rank and
//! alpha) is diff-lora's [`diff_lora::plan`], fed with tables built here from the pipeline's
//! own models; the adapters live inside the models' layers (`diff_models::LoraModel`), so a
//! model shared by `from_pipe` shows the same adapters to every pipeline holding it.
//!
//! Module names are diffusers': the UNet's as `named_modules` gives them, `text_encoder`'s
//! without `text_model.` (transformers 5 flattens `CLIPTextModel`), `text_encoder_2`'s with it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use diff_format::configs::unet::PerBlock;
use diff_lora::{Family, LoraError, ModelTable, ModuleShape, plan, read_state_dict};
use diff_models::block_scales::expand_scale;
use diff_models::{ExpandedScale, LoraLayerRef, LoraModel, ScaleConfig};

use crate::{DiffusionPipeline, PipelineError};

/// diffusers' `LORA_WEIGHT_NAME_SAFE`, the file a repo id is read from by default.
const LORA_WEIGHT_NAME_SAFE: &str = "pytorch_lora_weights.safetensors";

/// One adapter's weight as `set_adapters` takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterWeight {
    /// One weight for every component and layer (`adapter_weights=0.5`).
    Uniform(f64),
    /// Per component (`{"unet": {...}, "text_encoder": 0.5}`); a component not given gets 1.0.
    /// The UNet's part may be an InstantStyle per-block dictionary.
    PerComponent {
        /// `"unet"`: a weight or a per-block dictionary.
        unet: Option<ScaleConfig>,
        /// `"text_encoder"`.
        text_encoder: Option<f64>,
        /// `"text_encoder_2"` (SDXL).
        text_encoder_2: Option<f64>,
    },
}

impl From<f64> for AdapterWeight {
    fn from(v: f64) -> Self {
        Self::Uniform(v)
    }
}

/// The Hub keyword arguments of diffusers' `load_lora_weights` for a repo id.
#[derive(Debug, Clone, Default)]
pub struct LoraLoadOptions {
    /// Endpoint, cache folder, token and offline mode (`None`: the environment, as
    /// huggingface_hub reads it).
    pub hub: Option<diff_hub::HubConfig>,
    /// `revision` (`None`: `main`).
    pub revision: Option<String>,
    /// `local_files_only`: only the cache is looked at.
    pub local_files_only: bool,
}

/// A LoRA-loadable model of the pipeline (`_lora_loadable_modules`).
struct LoraComponent<'a> {
    name: &'static str,
    class: &'static str,
    model: &'a dyn LoraModel,
    /// `CLIPTextModel` in transformers 5 has no `text_model` attribute: diffusers' names lack
    /// the prefix our layer walk gives.
    strip_text_model: bool,
    /// Linear layers PyTorch lists that carry no adapters here (`text_projection`): in the
    /// table, so that a LoRA naming them is refused by name rather than ignored.
    plain: Vec<ModuleShape>,
}

impl<'a> LoraComponent<'a> {
    /// The model's adapter-capable layers under diffusers' names, in `named_modules` order.
    fn layers(&self) -> Vec<(String, LoraLayerRef<'a>)> {
        self.model
            .lora_layers()
            .into_iter()
            .map(|(name, layer)| {
                let name = match name.strip_prefix("text_model.") {
                    Some(rest) if self.strip_text_model => rest.to_owned(),
                    _ => name,
                };
                (name, layer)
            })
            .collect()
    }

    /// What diff-lora needs to know of the model.
    fn table(&self) -> ModelTable {
        ModelTable {
            component: self.name.to_owned(),
            class: self.class.to_owned(),
            has_text_model: self.name == "text_encoder_2",
            modules: self
                .layers()
                .into_iter()
                .map(|(name, layer)| ModuleShape {
                    name,
                    weight_shape: weight_shape(&layer),
                })
                .chain(self.plain.iter().cloned())
                .collect(),
        }
    }

    /// diffusers' `get_adapter_name`: `default_{n}` with `n` the adapter count of the first
    /// layer that has adapters.
    fn default_adapter_name(&self) -> String {
        let count = self
            .layers()
            .iter()
            .map(|(_, l)| l.adapters().names().len())
            .find(|n| *n > 0)
            .unwrap_or(0);
        format!("default_{count}")
    }
}

/// The base weight's PyTorch shape (`[out, in]`, `[out, in, kh, kw]`).
fn weight_shape(layer: &LoraLayerRef<'_>) -> Vec<usize> {
    match layer {
        LoraLayerRef::Linear(l) => {
            let [d_in, d_out] = l.dims();
            vec![d_out, d_in]
        }
        LoraLayerRef::Conv2d(c) => c.base.weight.dims().to_vec(),
    }
}

/// The LoRA parameters `model`'s layers hold, every adapter counted (peft's `lora_A` /
/// `lora_B`: `r x in` and `out x r` for a linear layer, `r x in x kh x kw` and `out x r x 1 x 1`
/// for a convolution). The adapters live inside the model's layers, so a model shared by
/// `from_pipe` holds them once.
pub fn lora_num_params<M: LoraModel + ?Sized>(model: &M) -> usize {
    let mut total = 0;
    model.for_each_lora_layer(&mut |_, layer| {
        let shape = weight_shape(&layer);
        let (out, fan_in) = (shape[0], shape[1..].iter().product::<usize>());
        let adapters = layer.adapters();
        total += adapters
            .names()
            .iter()
            .filter_map(|n| adapters.rank_alpha(n))
            .map(|(r, _)| r * (fan_in + out))
            .sum::<usize>();
    });
    total
}

fn lora_err(e: LoraError) -> PipelineError {
    PipelineError::Lora(Box::new(e))
}

/// diffusers' `get_module_weight` (`utils/peft_utils.py`): the weight of one layer for an
/// expanded per-block dictionary: the first block name contained in the module name, else the
/// block's `attentions.{i}` entry named by the module path, else 1.0.
fn module_weight(scale: &ExpandedScale, module: &str) -> Result<f64, PipelineError> {
    let list = match scale {
        ExpandedScale::Uniform(v) => return Ok(*v),
        ExpandedScale::Prefixes(list) => list,
    };
    // diffusers' expanded dictionary names the mid block `mid_block.attentions.0`
    // (`_translate_into_actual_layer_name`), so the mid block's resnets fall through to 1.0.
    let list: Vec<(String, f64)> = list
        .iter()
        .map(|(block, w)| {
            let block = if block == "mid_block" {
                "mid_block.attentions.0".to_owned()
            } else {
                block.clone()
            };
            (block, *w)
        })
        .collect();
    if let Some((_, w)) = list
        .iter()
        .find(|(block, _)| module.contains(block.as_str()))
    {
        return Ok(*w);
    }
    let parts: Vec<&str> = module.split('.').collect();
    match (parts.first(), parts.get(1), parts.get(3)) {
        (Some(a), Some(b), Some(d)) => {
            let key = format!("{a}.{b}.attentions.{d}");
            Ok(list
                .iter()
                .find(|(block, _)| *block == key)
                .map_or(1.0, |(_, w)| *w))
        }
        // diffusers fails here with an IndexError; we name the layer.
        _ => Err(PipelineError::arg(
            "adapter_weights",
            format!(
                "a per-block weight dictionary cannot weight the UNet layer `{module}` (outside the down, mid and up blocks)"
            ),
        )),
    }
}

impl DiffusionPipeline {
    /// The LoRA-loadable models present, in diffusers' `_lora_loadable_modules` order.
    fn lora_components(&self) -> Vec<LoraComponent<'_>> {
        let mut out = Vec::new();
        if let Some(motion) = self.unet_motion() {
            // AnimateDiff's `unet` is the motion UNet: the 2D layers and the motion modules'.
            out.push(LoraComponent {
                name: "unet",
                class: "UNetMotionModel",
                model: motion.as_ref(),
                strip_text_model: false,
                plain: Vec::new(),
            });
        } else if let Some(unet) = self.unet() {
            out.push(LoraComponent {
                name: "unet",
                class: "UNet2DConditionModel",
                model: unet.as_ref(),
                strip_text_model: false,
                plain: Vec::new(),
            });
        }
        if let Some(te) = self.text_encoder() {
            out.push(LoraComponent {
                name: "text_encoder",
                class: "CLIPTextModel",
                model: te.as_ref(),
                strip_text_model: true,
                plain: Vec::new(),
            });
        }
        if self.class().is_xl()
            && let Some(te2) = self.text_encoder_2()
        {
            out.push(LoraComponent {
                name: "text_encoder_2",
                class: "CLIPTextModelWithProjection",
                model: te2.as_ref(),
                strip_text_model: false,
                plain: vec![ModuleShape {
                    name: "text_projection".to_owned(),
                    weight_shape: {
                        let [d_in, d_out] = te2.text_projection.weight.dims();
                        vec![d_out, d_in]
                    },
                }],
            });
        }
        out
    }

    /// The tables of module names and base weight shapes diff-lora plans against (one per
    /// LoRA-loadable model: `unet`, `text_encoder`, and `text_encoder_2` for SDXL).
    pub fn lora_model_tables(&self) -> Vec<ModelTable> {
        self.lora_components()
            .iter()
            .map(LoraComponent::table)
            .collect()
    }

    /// `pipe.load_lora_weights(repo_or_folder_or_file, weight_name=..., adapter_name=...)`:
    /// reads a LoRA file in any format diff-lora knows, attaches an adapter to every layer it
    /// targets and makes it the active adapter of those models (peft's `set_adapter(name)`).
    /// Returns the adapter's name (`default_{n}` when `adapter_name` is `None`, as diffusers'
    /// `get_adapter_name`).
    ///
    /// All or nothing: every layer is checked before the first is changed, and a failure
    /// removes what was attached, so the pipeline is unchanged after an error.
    pub fn load_lora_weights(
        &self,
        repo_or_folder_or_file: &str,
        weight_name: Option<&str>,
        adapter_name: Option<&str>,
    ) -> Result<String, PipelineError> {
        let options = LoraLoadOptions::default();
        self.load_lora_weights_with(repo_or_folder_or_file, weight_name, adapter_name, &options)
    }

    /// [`load_lora_weights`](Self::load_lora_weights) with the Hub keyword arguments of
    /// diffusers' `load_lora_weights` for a repo id (`revision`, `local_files_only`, the
    /// endpoint, cache and token of a [`diff_hub::HubConfig`]); a local file or folder ignores
    /// them.
    pub fn load_lora_weights_with(
        &self,
        repo_or_folder_or_file: &str,
        weight_name: Option<&str>,
        adapter_name: Option<&str>,
        options: &LoraLoadOptions,
    ) -> Result<String, PipelineError> {
        let family = if self.class().is_xl() {
            Family::StableDiffusionXL
        } else {
            Family::StableDiffusion
        };
        let components = self.lora_components();
        let name = match adapter_name {
            Some(n) => n.to_owned(),
            None => components.first().map_or_else(
                || "default_0".to_owned(),
                LoraComponent::default_adapter_name,
            ),
        };
        if components
            .iter()
            .any(|c| c.model.list_adapters().contains(&name))
        {
            return Err(PipelineError::arg(
                "adapter_name",
                format!(
                    "Adapter name {name} already in use in the model - please select a new adapter name."
                ),
            ));
        }
        let path = resolve_lora_file(repo_or_folder_or_file, weight_name, options)?;
        let state_dict = read_state_dict(&path).map_err(lora_err)?;
        // SDXL's LDM block names are mapped with an integer `layers_per_block`.
        let layers_per_block = self.unet().map_or(1, |u| match &u.config.layers_per_block {
            PerBlock::One(n) => *n as usize,
            PerBlock::Many(v) => v.first().map_or(1, |n| *n as usize),
        });
        let tables: Vec<ModelTable> = components.iter().map(LoraComponent::table).collect();
        let planned = plan(state_dict, family, layers_per_block, &tables).map_err(lora_err)?;
        for warning in &planned.warnings {
            tracing::warn!("{warning}");
        }

        // 1. Validate: every planned layer exists and its A / B fit the base weight.
        let mut work = Vec::new();
        for part in &planned.components {
            let Some(component) = components.iter().find(|c| c.name == part.component) else {
                continue;
            };
            let layers: HashMap<String, LoraLayerRef<'_>> =
                component.layers().into_iter().collect();
            for layer in &part.layers {
                let key = format!("{}.{}.lora_A.weight", part.component, layer.module);
                let mismatch = |message: String| {
                    lora_err(LoraError::Mismatch {
                        component: part.component.clone(),
                        key: key.clone(),
                        message,
                    })
                };
                let Some(target) = layers.get(&layer.module) else {
                    return Err(mismatch(format!(
                        "the model has no adapter-capable layer `{}`",
                        layer.module
                    )));
                };
                check_shapes(&weight_shape(target), &layer.a.shape, &layer.b.shape)
                    .map_err(mismatch)?;
                work.push((component, *target, layer, key));
            }
        }
        // 2. Attach, removing everything attached on the first failure.
        let use_rslora = |component: &str| {
            planned
                .components
                .iter()
                .find(|c| c.component == component)
                .is_some_and(|c| c.config.use_rslora)
        };
        for (i, (component, target, layer, key)) in work.iter().enumerate() {
            let a = TensorData::new(layer.a.values.clone(), layer.a.shape.clone());
            let b = TensorData::new(layer.b.values.clone(), layer.b.shape.clone());
            if let Err(e) =
                target.add_adapter_data(&name, a, b, layer.alpha, use_rslora(component.name))
            {
                for (_, attached, _, _) in &work[..i] {
                    // The adapter is new and not fused, so deleting it cannot fail.
                    let _ = attached.adapters().delete(&name);
                }
                return Err(lora_err(LoraError::Mismatch {
                    component: component.name.to_owned(),
                    key: key.clone(),
                    message: e.to_string(),
                }));
            }
        }
        // 3. peft's `set_adapter(adapter_name)` after injection: the new adapter alone is active
        // in every layer of the models that received it.
        for component in &components {
            if work.iter().any(|(c, ..)| c.name == component.name) {
                component
                    .model
                    .for_each_lora_layer(&mut |_, l| l.adapters().set_adapters(&[(&name, 1.0)]));
            }
        }
        Ok(name)
    }

    /// `pipe.set_adapters(adapter_names, adapter_weights)`: activates these adapters, in this
    /// order, with one weight each (a float, or per component with a UNet per-block
    /// dictionary expanded as diffusers' `_maybe_expand_lora_scales`). `weights` empty means
    /// 1.0 each.
    pub fn set_adapters(
        &self,
        adapter_names: &[&str],
        weights: &[AdapterWeight],
    ) -> Result<(), PipelineError> {
        let weights: Vec<AdapterWeight> = if weights.is_empty() {
            vec![AdapterWeight::Uniform(1.0); adapter_names.len()]
        } else if weights.len() == 1 && adapter_names.len() > 1 {
            vec![weights[0].clone(); adapter_names.len()]
        } else {
            weights.to_vec()
        };
        if weights.len() != adapter_names.len() {
            return Err(PipelineError::arg(
                "adapter_weights",
                format!(
                    "Length of adapter names {} is not equal to the length of their weights {}.",
                    adapter_names.len(),
                    weights.len()
                ),
            ));
        }
        let components = self.lora_components();
        let present: Vec<String> = components
            .iter()
            .flat_map(|c| c.model.list_adapters())
            .collect();
        if let Some(missing) = adapter_names
            .iter()
            .find(|n| !present.iter().any(|p| p == *n))
        {
            return Err(PipelineError::arg(
                "adapter_names",
                format!(
                    "Adapter name(s) {{'{missing}'}} not in the list of present adapters: [{}].",
                    present.join(", ")
                ),
            ));
        }
        if !self.class().is_xl()
            && weights.iter().any(|w| {
                matches!(
                    w,
                    AdapterWeight::PerComponent {
                        text_encoder_2: Some(_),
                        ..
                    }
                )
            })
        {
            tracing::warn!(
                "The components ['text_encoder_2'] were not found in the pipeline's LoRA-loadable modules: ['unet', 'text_encoder']"
            );
        }
        // Everything is computed before any layer changes, so an error changes nothing.
        let mut plans = Vec::new();
        for component in &components {
            let mut per_adapter = Vec::new();
            for w in &weights {
                let expanded = match (w, component.name) {
                    (AdapterWeight::Uniform(v), _) => ExpandedScale::Uniform(*v),
                    (AdapterWeight::PerComponent { unet, .. }, "unet") => match (unet, self.unet())
                    {
                        (Some(cfg), Some(model)) => expand_scale(model, cfg, 1.0)?,
                        _ => ExpandedScale::Uniform(1.0),
                    },
                    (AdapterWeight::PerComponent { text_encoder, .. }, "text_encoder") => {
                        ExpandedScale::Uniform(text_encoder.unwrap_or(1.0))
                    }
                    (AdapterWeight::PerComponent { text_encoder_2, .. }, _) => {
                        ExpandedScale::Uniform(text_encoder_2.unwrap_or(1.0))
                    }
                };
                per_adapter.push(expanded);
            }
            let mut layers = Vec::new();
            for (module, layer) in component.layers() {
                if layer.adapters().names().is_empty() {
                    continue;
                }
                let mut pairs = Vec::with_capacity(adapter_names.len());
                for (name, scale) in adapter_names.iter().zip(&per_adapter) {
                    pairs.push((*name, module_weight(scale, &module)?));
                }
                layers.push((layer, pairs));
            }
            plans.push(layers);
        }
        for (layer, pairs) in plans.iter().flatten() {
            layer.adapters().set_adapters(pairs);
        }
        Ok(())
    }

    /// `pipe.fuse_lora(lora_scale=..., adapter_names=...)`: merges the adapters (the active
    /// ones when `None`), scaled by `lora_scale`, into a fused copy of each layer's weight;
    /// the base weights are kept for [`unfuse_lora`](Self::unfuse_lora).
    pub fn fuse_lora(&self, lora_scale: f64, adapter_names: Option<&[&str]>) {
        for c in self.lora_components() {
            c.model.fuse_lora(lora_scale, adapter_names);
        }
    }

    /// The weights `save_pretrained` writes after `fuse_lora`: for each LoRA-loadable
    /// component (`unet`, `text_encoder`, `text_encoder_2`), the fused weight of every layer
    /// with adapters fused into it, keyed `{module}.weight` with the module's full name
    /// (`text_model.encoder.layers.0.self_attn.q_proj.weight` for the text encoders), in
    /// PyTorch's layout and float32. Components with no fused layer are left out; the map is
    /// empty when nothing is fused.
    pub fn fused_lora_weights(&self) -> BTreeMap<String, Vec<(String, TensorData)>> {
        let mut out = BTreeMap::new();
        for c in self.lora_components() {
            let mut fused = Vec::new();
            c.model.for_each_lora_layer(&mut |name, layer| {
                if let Some(weight) = layer.fused_weight() {
                    fused.push((format!("{name}.weight"), weight));
                }
            });
            if !fused.is_empty() {
                out.insert(c.name.to_owned(), fused);
            }
        }
        out
    }

    /// `pipe.unfuse_lora()`: every layer runs its base weight (and the adapters) again.
    pub fn unfuse_lora(&self) {
        for c in self.lora_components() {
            c.model.unfuse_lora();
        }
    }

    /// `pipe.unload_lora_weights()`: removes every adapter. As in diffusers, weights fused
    /// before stay fused (`fuse_lora` then `unload_lora_weights` keeps the merged model).
    pub fn unload_lora_weights(&self) {
        for c in self.lora_components() {
            c.model
                .for_each_lora_layer(&mut |_, l| l.adapters().unload());
        }
    }

    /// `pipe.delete_adapters(adapter_names)`: deletes these adapters from every model that has
    /// them. Fails, changing nothing, when a name is in no model or an adapter is fused.
    pub fn delete_adapters(&self, adapter_names: &[&str]) -> Result<(), PipelineError> {
        let components = self.lora_components();
        let present: Vec<Vec<String>> =
            components.iter().map(|c| c.model.list_adapters()).collect();
        if let Some(missing) = adapter_names
            .iter()
            .find(|n| !present.iter().flatten().any(|p| p == *n))
        {
            return Err(PipelineError::arg(
                "adapter_names",
                format!(
                    "The following adapter(s) are not present and cannot be deleted: {missing}"
                ),
            ));
        }
        for c in &components {
            let mut fused = None;
            c.model.for_each_lora_layer(&mut |_, l| {
                let merged = l.adapters().merged_adapters();
                if let Some(n) = adapter_names
                    .iter()
                    .find(|n| merged.iter().any(|m| m == *n))
                {
                    fused = Some(*n);
                }
            });
            if let Some(n) = fused {
                return Err(PipelineError::arg(
                    "adapter_names",
                    format!("the adapter {n} is fused; call unfuse_lora before deleting it"),
                ));
            }
        }
        for (c, names) in components.iter().zip(&present) {
            let here: Vec<&str> = adapter_names
                .iter()
                .copied()
                .filter(|n| names.iter().any(|p| p == n))
                .collect();
            if !here.is_empty() {
                c.model.delete_adapters(&here)?;
            }
        }
        Ok(())
    }

    /// `pipe.disable_lora()`: every model runs its base weights.
    pub fn disable_lora(&self) {
        for c in self.lora_components() {
            c.model.disable_lora();
        }
    }

    /// `pipe.enable_lora()`: adapters take effect again.
    pub fn enable_lora(&self) {
        for c in self.lora_components() {
            c.model.enable_lora();
        }
    }

    /// `pipe.get_active_adapters()`: the UNet's active adapters (diffusers reads them from the
    /// first adapter layer of the `ModelMixin` models only).
    pub fn get_active_adapters(&self) -> Vec<String> {
        self.lora_components()
            .first()
            .map(|c| c.model.active_adapters())
            .unwrap_or_default()
    }

    /// `pipe.get_list_adapters()`: per LoRA-loadable model that has adapters, their names.
    pub fn get_list_adapters(&self) -> Vec<(String, Vec<String>)> {
        self.lora_components()
            .iter()
            .map(|c| (c.name.to_owned(), c.model.list_adapters()))
            .filter(|(_, names)| !names.is_empty())
            .collect()
    }
}

/// A's and B's shapes against the base weight's PyTorch shape.
fn check_shapes(weight: &[usize], a: &[usize], b: &[usize]) -> Result<(), String> {
    let fits = match (weight, a, b) {
        ([out, inp], [r, ia], [ob, rb]) => ia == inp && ob == out && rb == r && *r > 0,
        ([out, inp, kh, kw], [r, ia, ah, aw], [ob, rb, 1, 1]) => {
            ia == inp && ob == out && rb == r && *r > 0 && (ah, aw) == (kh, kw)
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "size mismatch: lora_A {a:?} and lora_B {b:?} do not fit the base weight {weight:?}"
        ))
    }
}

/// The LoRA file of a local file, a local folder or a Hub repo id.
fn resolve_lora_file(
    source: &str,
    weight_name: Option<&str>,
    options: &LoraLoadOptions,
) -> Result<PathBuf, PipelineError> {
    let path = Path::new(source);
    if path.exists() {
        return diff_lora::resolve_weight_file(path, weight_name).map_err(lora_err);
    }
    diff_hub::validate_repo_id(source).map_err(|_| {
        PipelineError::arg(
            "pretrained_model_name_or_path_or_dict",
            format!("\"{source}\" is neither a local file or folder nor a valid repo id"),
        )
    })?;
    let api = match &options.hub {
        Some(config) => diff_hub::HubApi::new(config.clone()),
        None => diff_hub::HubApi::from_env()?,
    };
    let revision = options
        .revision
        .clone()
        .unwrap_or_else(|| "main".to_owned());
    let offline = options.local_files_only || api.is_offline();
    let file = match weight_name {
        Some(w) => w.to_owned(),
        None if offline => LORA_WEIGHT_NAME_SAFE.to_owned(),
        None => best_guess_weight_name(&api, source, &revision)?,
    };
    let download = diff_hub::DownloadOptions {
        revision,
        local_files_only: options.local_files_only,
        ..diff_hub::DownloadOptions::default()
    };
    Ok(api.hf_hub_download(source, &file, &download)?)
}

/// diffusers' `_best_guess_weight_name` on a Hub repo: the root-level `.safetensors` files
/// (`.bin` when there are none) without `scheduler`, `optimizer` or `checkpoint` in the name,
/// `pytorch_lora_weights.*` preferred, the first when several remain.
fn best_guess_weight_name(
    api: &diff_hub::HubApi,
    repo: &str,
    revision: &str,
) -> Result<String, PipelineError> {
    let entries = api.list_repo_tree(repo, revision)?;
    let files: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == "file" && !e.path.contains('/'))
        .map(|e| e.path.as_str())
        .collect();
    for (ext, default) in [
        (".safetensors", LORA_WEIGHT_NAME_SAFE),
        (".bin", "pytorch_lora_weights.bin"),
    ] {
        let candidates: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| f.ends_with(ext))
            .filter(|f| {
                !["scheduler", "optimizer", "checkpoint"]
                    .iter()
                    .any(|s| f.contains(s))
            })
            .collect();
        if candidates.contains(&default) {
            return Ok(default.to_owned());
        }
        if let Some(first) = candidates.first() {
            if candidates.len() > 1 {
                tracing::warn!(
                    "Provided path contains more than one weights file in the {ext} format. `{first}` is going to be loaded, for precise control, specify a `weight_name` in `load_lora_weights`."
                );
            }
            return Ok((*first).to_owned());
        }
    }
    Err(lora_err(LoraError::NoWeightFile {
        path: PathBuf::from(repo),
        message: "no .safetensors or .bin file at the repo's root".into(),
    }))
}
