//! Putting checkpoint tensors into a burn module, by state-dict key.
//!
//! A module's parameter path (field names joined by `.`, `Vec` indices included) is its
//! PyTorch state-dict key, with two layout rules that depend on the burn layer type, never on
//! tensor shapes:
//! - a `Linear`'s `weight` is `[out, in]` in PyTorch and `[in, out]` in burn: transposed on load,
//!   square ones too;
//! - a `LayerNorm`'s / `GroupNorm`'s `gamma` / `beta` are PyTorch's `weight` / `bias`.
//!
//! Enum wrappers are transparent (burn adds the variant name to the path; PyTorch has no such
//! level), and so is the `base` field of the adapter-capable `LoraLinear` / `LoraConv2d` (their
//! adapters are runtime state, not parameters; a `Linear` weight under them is still transposed). Parameters are loaded one at a time into still-lazy burn params, so the random
//! initialisation of a freshly built module never runs for a loaded key. Only float parameters
//! are loaded; int and bool parameters (none of our models has any) keep their values.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor, TensorData};

use super::source::{RawDType, TensorSource};
use super::{LoadOptions, LoadReport, ShapeMismatch};
use crate::ModelError;

/// How a burn parameter maps to a checkpoint tensor.
#[derive(Debug, Clone)]
struct Slot {
    /// burn shape of the parameter.
    shape: Vec<usize>,
    /// Whether the checkpoint stores it transposed (Linear weights).
    transpose: bool,
}

impl Slot {
    /// The shape the checkpoint must have.
    fn torch_shape(&self) -> Vec<usize> {
        if self.transpose {
            self.shape.iter().rev().copied().collect()
        } else {
            self.shape.clone()
        }
    }
}

/// Tracks the module path while burn walks a module.
#[derive(Default)]
struct PathTracker {
    names: Vec<String>,
    containers: Vec<String>,
}

impl PathTracker {
    fn enter(&mut self, name: &str, container: &str) {
        self.names.push(name.to_string());
        self.containers.push(container.to_string());
    }

    fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }

    /// The state-dict key of the current parameter and whether it is stored transposed.
    fn key(&self) -> (String, bool) {
        let last = self.names.len().saturating_sub(1);
        let parent = self.containers.last().map(String::as_str).unwrap_or("");
        let mut parts: Vec<&str> = Vec::with_capacity(self.names.len());
        for (i, (name, container)) in self.names.iter().zip(&self.containers).enumerate() {
            if container.starts_with("Enum:") || is_transparent(container, name) {
                continue;
            }
            let name = name.as_str();
            let renamed = if i == last && is_norm(parent) {
                match name {
                    "gamma" => "weight",
                    "beta" => "bias",
                    other => other,
                }
            } else {
                name
            };
            parts.push(renamed);
        }
        let transpose =
            parent == "Struct:Linear" && self.names.last().is_some_and(|n| n == "weight");
        (parts.join("."), transpose)
    }
}

/// The `base` field of an adapter-capable layer (`crate::lora`): its parameters are the
/// wrapped layer's, under the wrapper's own key (`to_q.weight`, not `to_q.base.weight`).
fn is_transparent(container: &str, name: &str) -> bool {
    name == "base" && matches!(container, "Struct:LoraLinear" | "Struct:LoraConv2d")
}

fn is_norm(container: &str) -> bool {
    matches!(
        container,
        "Struct:LayerNorm" | "Struct:GroupNorm" | "Struct:InstanceNorm" | "Struct:RmsNorm"
    )
}

/// Collects the float parameters a module expects, by state-dict key.
#[derive(Default)]
struct Collector {
    path: PathTracker,
    slots: BTreeMap<String, Slot>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (key, transpose) = self.path.key();
        let shape = param.lazy_shape().to_vec();
        self.slots.insert(key, Slot { shape, transpose });
    }
}

/// Replaces each planned parameter with the checkpoint's tensor.
struct Loader<'a> {
    path: PathTracker,
    source: &'a TensorSource,
    /// burn key -> checkpoint key, for keys that load.
    plan: &'a BTreeMap<String, (String, Slot)>,
    dtype: DType,
    error: Option<ModelError>,
    loaded: usize,
    /// Leave parameters in the mapping where possible.
    map_weights: bool,
    /// Parameters left in the mapping.
    mapped: usize,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let (key, _) = self.path.key();
        let Some((ckpt_key, slot)) = self.plan.get(&key) else {
            return param;
        };
        let device = param.lazy_device();
        let mapped = (self.map_weights && device == burn::tensor::Device::flex())
            .then(|| mapped_data(self.source, ckpt_key, slot, self.dtype))
            .flatten();
        if let Some(data) = mapped {
            let id = param.id;
            let mut tensor = Tensor::<D>::from_data(data, (&device, self.dtype));
            if slot.transpose {
                tensor = tensor.transpose();
            }
            // The pages stay mapped; they become resident when a forward reads them.
            self.source.release(ckpt_key);
            self.loaded += 1;
            self.mapped += 1;
            return param.transform_for_load(tensor, id);
        }
        match tensor_data(self.source, ckpt_key, slot, self.dtype) {
            Ok(data) => {
                let id = param.id;
                let mut tensor = Tensor::<D>::from_data(data, (&device, self.dtype));
                if slot.transpose {
                    // PyTorch stores Linear weights [out, in]; burn's Linear wants [in, out].
                    // The device transposes (optimised backend code, no extra host copy).
                    tensor = tensor.transpose();
                }
                self.source.release(ckpt_key);
                self.loaded += 1;
                param.transform_for_load(tensor, id)
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// A checkpoint tensor as host data that borrows the file mapping, when its dtype on disk is
/// `dtype` and its start is aligned for it; `None` otherwise (the caller copies).
fn mapped_data(source: &TensorSource, key: &str, slot: &Slot, dtype: DType) -> Option<TensorData> {
    let info = source.info(key)?;
    let disk = match info.dtype {
        RawDType::F32 => DType::F32,
        RawDType::F16 => DType::F16,
        RawDType::BF16 => DType::BF16,
        _ => return None,
    };
    if disk != dtype {
        return None;
    }
    let bytes = source.mapped(key, dtype.size())?;
    TensorData::try_from_bytes(bytes, slot.torch_shape(), dtype).ok()
}

/// Reads one checkpoint tensor into host data of `dtype`, in the checkpoint's (PyTorch) layout.
fn tensor_data(
    source: &TensorSource,
    key: &str,
    slot: &Slot,
    dtype: DType,
) -> Result<TensorData, ModelError> {
    let origin = source.origin().display().to_string();
    let info = source.info(key).ok_or_else(|| ModelError::WeightFile {
        path: origin.clone(),
        reason: format!("tensor `{key}` disappeared from the source"),
    })?;
    // Owned bytes (pickle and in-memory sources) are moved, borrowed ones copied once.
    let owned = source.read(key)?.into_owned();
    let disk = match info.dtype {
        RawDType::F32 => DType::F32,
        RawDType::F16 => DType::F16,
        RawDType::BF16 => DType::BF16,
        RawDType::F64 => DType::F64,
        other => {
            return Err(ModelError::UnsupportedDtype {
                path: origin,
                key: key.to_string(),
                got: other.name().to_string(),
                expected: "F16, BF16, F32, F64".to_string(),
            });
        }
    };
    let data = TensorData::try_from_bytes_vec(owned, slot.torch_shape(), disk).map_err(|e| {
        ModelError::WeightFile {
            path: origin.clone(),
            reason: format!("tensor `{key}`: {e}"),
        }
    })?;
    data.try_cast(dtype)
        .map_err(|e| ModelError::UnsupportedDtype {
            path: origin,
            key: key.to_string(),
            got: format!("{} ({e})", info.dtype.name()),
            expected: format!("a dtype convertible to {dtype:?}"),
        })
}

/// Loads `source` into `module` following `options`; returns the module and the report.
pub(super) fn apply<M: Module>(
    module: M,
    source: &TensorSource,
    options: &LoadOptions,
) -> Result<(M, LoadReport), ModelError> {
    let mut collector = Collector::default();
    module.visit(&mut collector);

    // Checkpoint keys after the renames (e.g. transformers' prefix changes).
    let mut by_model_key: BTreeMap<String, String> = BTreeMap::new();
    for key in source.tensors().keys() {
        by_model_key.insert(options.rename_key(key), key.clone());
    }

    let mut plan = BTreeMap::new();
    let mut report = LoadReport {
        source: source.origin().to_path_buf(),
        ..LoadReport::default()
    };
    let mut used = BTreeSet::new();
    for (key, slot) in &collector.slots {
        match by_model_key.get(key) {
            None => report.missing.push(key.clone()),
            Some(ckpt_key) => {
                used.insert(key.clone());
                let found = source
                    .info(ckpt_key)
                    .map(|i| i.shape.clone())
                    .unwrap_or_default();
                if found != slot.torch_shape() {
                    report.mismatched.push(ShapeMismatch {
                        key: key.clone(),
                        expected: slot.torch_shape(),
                        found,
                    });
                } else {
                    plan.insert(key.clone(), (ckpt_key.clone(), slot.clone()));
                }
            }
        }
    }
    for (key, ckpt_key) in &by_model_key {
        if !used.contains(key) && !options.is_ignored_unexpected(key) {
            report.unexpected.push(ckpt_key.clone());
        }
    }

    let model = short_type_name::<M>();
    let fatal = (!report.mismatched.is_empty() && !options.ignore_mismatched_sizes)
        || (options.strict && (!report.missing.is_empty() || !report.unexpected.is_empty()));
    if fatal {
        return Err(ModelError::StateDictMismatch {
            model,
            path: source.origin().display().to_string(),
            summary: report.summary(),
        });
    }
    if !report.is_clean() {
        tracing::warn!(model = %model, "partial load: {}", report.summary());
    }

    let mut loader = Loader {
        path: PathTracker::default(),
        source,
        plan: &plan,
        dtype: options.dtype,
        error: None,
        loaded: 0,
        map_weights: options.map_weights,
        mapped: 0,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    report.loaded = loader.loaded;
    if loader.mapped > 0 {
        report.mapped = source.mappings();
    }
    Ok((module, report))
}

fn short_type_name<M>() -> String {
    let full = std::any::type_name::<M>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}
