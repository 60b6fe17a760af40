//! Layers that carry named low-rank adapters (LoRA), as peft's `LoraLayer` wraps a
//! `nn.Linear` / `nn.Conv2d` (peft 0.21 `tuners/lora/layer.py`), and the model-level controls
//! diffusers builds on them (`set_adapters`, `fuse_lora`, `unfuse_lora`, `delete_adapters`,
//! `enable_lora` / `disable_lora`).
//!
//! # Design
//! - [`LoraLinear`] and [`LoraConv2d`] hold the base layer as their `base` field; the weight
//!   loader skips that segment (`weights/apply.rs`), so state-dict keys stay `to_q.weight`,
//!   `conv1.bias`. The adapters live in a [`LoraAdapters`] handle, an `Arc<RwLock<..>>` field
//!   marked `#[module(skip)]`: `&self` methods change it, and every holder of a model shared by
//!   `Arc` (pipelines made by `from_pipe`) sees the same adapters, as diffusers' shared
//!   `nn.Module` does. Cloning a layer (burn's `Module::clone`) shares the handle too.
//! - With no adapter in effect (none loaded, none active, or disabled) the forward is the base
//!   layer's forward, the same code path and the same numbers as a plain `Linear` / `Conv2d`.
//! - Unfused, each active adapter adds `up(down(x)) * scaling` to the base output, in the order
//!   of the active set (peft: `result + lora_B(lora_A(x)) * scaling`). Linear: `down` is
//!   `x @ Aᵀ`, `up` is `@ Bᵀ`; Conv2d: `down` is a convolution with the base's kernel, stride,
//!   padding and dilation to `rank` channels, `up` a 1x1 convolution.
//! - `scaling` per adapter is peft's: `alpha / rank` (`alpha / sqrt(rank)` with rsLoRA), set to
//!   `weight * alpha / rank` by [`LoraAdapters::set_adapters`] (peft `set_scale`), multiplied by
//!   `lora_scale` on [`LoraLinear::fuse`] (peft `scale_layer`, which diffusers' `fuse_lora`
//!   calls and does not undo on unfuse).
//! - Fusing builds a fused copy of the layer (base weight + Σ `scaling · B·A`, added in order as
//!   peft's `merge` does) held in the handle; the base weight is never written, so unfusing drops
//!   the copy and the base weight is back bit for bit. While fused the layer costs its weight
//!   twice; unfused it costs only the adapters.
//! - DoRA (`use_dora`), LoRA biases (`lora_bias`) and dropout (inference only) are not
//!   implemented.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, TensorData};

use crate::ModelError;

/// The weights of one adapter in peft's layout (`lora_A.weight`, `lora_B.weight`).
///
/// # Shapes
/// - Linear: `lora_a` `[rank, in_features]`, `lora_b` `[out_features, rank]` (`D = 2`)
/// - Conv2d: `lora_a` `[rank, in_channels, kh, kw]` (the base kernel), `lora_b`
///   `[out_channels, rank, 1, 1]` (`D = 4`)
#[derive(Debug, Clone)]
pub struct LoraWeights<const D: usize> {
    /// `lora_A.weight`.
    pub lora_a: Tensor<D>,
    /// `lora_B.weight`.
    pub lora_b: Tensor<D>,
    /// `lora_alpha`.
    pub alpha: f64,
    /// rsLoRA: scale by `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub use_rslora: bool,
}

impl<const D: usize> LoraWeights<D> {
    /// Adapter weights with peft's default scaling (`alpha / rank`).
    pub fn new(lora_a: Tensor<D>, lora_b: Tensor<D>, alpha: f64) -> Self {
        Self {
            lora_a,
            lora_b,
            alpha,
            use_rslora: false,
        }
    }

    /// The rank (`r`): the first dimension of `lora_a`.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }
}

/// The `down` / `up` layers of one adapter.
#[derive(Debug, Clone)]
enum AdapterLayers {
    Linear { down: Linear, up: Linear },
    Conv2d { down: Conv2d, up: Conv2d },
}

/// One named adapter of a layer.
#[derive(Debug, Clone)]
struct Adapter {
    name: String,
    layers: AdapterLayers,
    rank: usize,
    alpha: f64,
    use_rslora: bool,
    /// peft's `scaling[adapter]`.
    scaling: f64,
}

impl Adapter {
    /// peft's `scaling` for a weight of 1: `alpha / r` or `alpha / sqrt(r)`.
    fn base_scaling(&self, weight: f64) -> f64 {
        let r = self.rank as f64;
        if self.use_rslora {
            weight * self.alpha / r.sqrt()
        } else {
            weight * self.alpha / r
        }
    }
}

/// A fused copy of the layer and the adapters merged into it, in merge order.
#[derive(Debug, Clone)]
enum FusedLayer {
    Linear(Linear),
    Conv2d(Conv2d),
}

#[derive(Debug, Default)]
struct AdapterState {
    /// Adapters in the order they were added.
    adapters: Vec<Adapter>,
    /// The active set, in order (peft's `active_adapters`); names without an adapter in this
    /// layer are skipped at run time, as peft skips them.
    active: Vec<String>,
    /// `disable_adapters`.
    disabled: bool,
    fused: Option<FusedLayer>,
    merged: Vec<String>,
}

impl AdapterState {
    fn get(&self, name: &str) -> Option<&Adapter> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// True when the forward must leave the base layer's code path.
    fn in_effect(&self) -> bool {
        !self.disabled
            && (self.fused.is_some() || self.active.iter().any(|n| self.get(n).is_some()))
    }
}

/// The adapter state of one layer, shared by every clone of the layer (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct LoraAdapters {
    state: Arc<RwLock<AdapterState>>,
}

impl LoraAdapters {
    fn read(&self) -> RwLockReadGuard<'_, AdapterState> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is still
        // consistent (every write below is a single assignment or push).
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, AdapterState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether both handles are the same shared state.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// The adapter names, in the order they were added.
    pub fn names(&self) -> Vec<String> {
        self.read()
            .adapters
            .iter()
            .map(|a| a.name.clone())
            .collect()
    }

    /// Whether an adapter of that name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.read().get(name).is_some()
    }

    /// The active set, in order (peft's `active_adapters`).
    pub fn active_adapters(&self) -> Vec<String> {
        self.read().active.clone()
    }

    /// The current `scaling` of an adapter (peft's `scaling[name]`).
    pub fn scaling(&self, name: &str) -> Option<f64> {
        self.read().get(name).map(|a| a.scaling)
    }

    /// The rank and `alpha` of an adapter.
    pub fn rank_alpha(&self, name: &str) -> Option<(usize, f64)> {
        self.read().get(name).map(|a| (a.rank, a.alpha))
    }

    /// Activates `adapters` in this order with these weights (diffusers' `set_adapters` on one
    /// layer: peft's `set_adapter(names)` then `set_scale(name, weight)`, so `scaling =
    /// weight * alpha / rank`). Names this layer lacks stay in the active set and are skipped
    /// at run time, as in peft.
    pub fn set_adapters(&self, adapters: &[(&str, f64)]) {
        let mut state = self.write();
        state.active = adapters.iter().map(|(n, _)| (*n).to_owned()).collect();
        for (name, weight) in adapters {
            if let Some(a) = state.adapters.iter_mut().find(|a| a.name == *name) {
                a.scaling = a.base_scaling(*weight);
            }
        }
    }

    /// Multiplies the scaling of the active adapters by `scale` (peft's `scale_layer`).
    pub fn scale_layer(&self, scale: f64) {
        let mut state = self.write();
        let active = state.active.clone();
        for a in state
            .adapters
            .iter_mut()
            .filter(|a| active.contains(&a.name))
        {
            a.scaling *= scale;
        }
    }

    /// Resets the scaling of the active adapters to `alpha / rank` (`scale = None`) or
    /// divides it by `scale` (peft's `unscale_layer`).
    pub fn unscale_layer(&self, scale: Option<f64>) {
        let mut state = self.write();
        let active = state.active.clone();
        for a in state
            .adapters
            .iter_mut()
            .filter(|a| active.contains(&a.name))
        {
            a.scaling = match scale {
                None => a.base_scaling(1.0),
                Some(s) => a.scaling / s,
            };
        }
    }

    /// Turns the adapters back on after [`disable`](Self::disable).
    pub fn enable(&self) {
        self.write().disabled = false;
    }

    /// Runs the base layer only (peft's `disable_adapters`); a fused layer is unfused first,
    /// as peft's forward does when adapters are disabled.
    pub fn disable(&self) {
        let mut state = self.write();
        state.disabled = true;
        state.fused = None;
        state.merged.clear();
    }

    /// Whether adapters are enabled.
    pub fn is_enabled(&self) -> bool {
        !self.read().disabled
    }

    /// Whether a fused copy is in use (peft's `merged`).
    pub fn is_fused(&self) -> bool {
        self.read().fused.is_some()
    }

    /// The adapters merged into the fused copy, in merge order.
    pub fn merged_adapters(&self) -> Vec<String> {
        self.read().merged.clone()
    }

    /// Drops the fused copy: the forward uses the untouched base weight again (peft's
    /// `unmerge`, but exact).
    pub fn unfuse(&self) {
        let mut state = self.write();
        state.fused = None;
        state.merged.clear();
    }

    /// Removes every adapter, keeping a fused copy in use (diffusers' `unload_lora_weights`
    /// after `fuse_lora`: peft's base layer keeps the merged weight).
    pub fn unload(&self) {
        let mut state = self.write();
        state.adapters.clear();
        state.active.clear();
        state.merged.clear();
    }

    /// Deletes an adapter (peft's `delete_adapter`): it leaves the active set; when the active
    /// set becomes empty the first remaining adapter is activated, as peft does. Fails when the
    /// adapter is fused (unfuse first); deleting an absent name is a no-op returning `false`.
    pub fn delete(&self, name: &str) -> Result<bool, ModelError> {
        let mut state = self.write();
        if state.merged.iter().any(|m| m == name) {
            return Err(ModelError::Adapter {
                adapter: name.to_owned(),
                reason: "the adapter is fused into the layer; unfuse it before deleting it"
                    .to_owned(),
            });
        }
        let Some(pos) = state.adapters.iter().position(|a| a.name == name) else {
            return Ok(false);
        };
        state.adapters.remove(pos);
        if state.active.iter().any(|n| n == name) {
            state.active.retain(|n| n != name);
            if state.active.is_empty()
                && let Some(first) = state.adapters.first()
            {
                state.active = vec![first.name.clone()];
            }
        }
        Ok(true)
    }

    fn insert(&self, adapter: Adapter) {
        let mut state = self.write();
        match state.adapters.iter_mut().find(|a| a.name == adapter.name) {
            Some(slot) => *slot = adapter,
            None => state.adapters.push(adapter),
        }
    }
}

fn shape_error(name: &str, reason: String) -> ModelError {
    ModelError::Adapter {
        adapter: name.to_owned(),
        reason,
    }
}

fn linear_from(weight_in_out: Tensor<2>) -> Linear {
    Linear {
        weight: Param::from_tensor(weight_in_out),
        bias: None,
    }
}

/// A `Linear` that carries named LoRA adapters (peft's `lora.Linear`).
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// The base layer; its parameters load under the wrapper's own key (`to_q.weight`).
    pub base: Linear,
    /// The adapters (runtime state, shared by clones).
    #[module(skip)]
    pub adapters: LoraAdapters,
}

impl From<Linear> for LoraLinear {
    fn from(base: Linear) -> Self {
        Self {
            base,
            adapters: LoraAdapters::default(),
        }
    }
}

impl LoraLinear {
    /// `[in_features, out_features]`.
    pub fn dims(&self) -> [usize; 2] {
        self.base.weight.dims()
    }

    /// Adds (or replaces) the adapter `name`. The active set is left as it is (peft's
    /// `update_layer`); call [`LoraAdapters::set_adapters`] to activate it. The weights are
    /// cast to the base weight's dtype and moved to its device.
    pub fn add_adapter(&self, name: &str, weights: LoraWeights<2>) -> Result<(), ModelError> {
        let [d_in, d_out] = self.dims();
        let rank = weights.rank();
        let [ra, ia] = weights.lora_a.dims();
        let [ob, rb] = weights.lora_b.dims();
        if rank == 0 || ia != d_in || ob != d_out || rb != ra {
            return Err(shape_error(
                name,
                format!(
                    "expected lora_A [r, {d_in}] and lora_B [{d_out}, r] with r > 0, got lora_A \
                     [{ra}, {ia}] and lora_B [{ob}, {rb}]"
                ),
            ));
        }
        let base = self.base.weight.val();
        let (dtype, device) = (base.dtype(), base.device());
        let a = weights.lora_a.to_device(&device).cast(dtype);
        let b = weights.lora_b.to_device(&device).cast(dtype);
        let mut adapter = Adapter {
            name: name.to_owned(),
            layers: AdapterLayers::Linear {
                down: linear_from(a.transpose()),
                up: linear_from(b.transpose()),
            },
            rank,
            alpha: weights.alpha,
            use_rslora: weights.use_rslora,
            scaling: 0.0,
        };
        adapter.scaling = adapter.base_scaling(1.0);
        self.adapters.insert(adapter);
        Ok(())
    }

    /// The forward over the last dimension.
    ///
    /// # Shapes
    /// - `x`: `[..., in_features]`
    /// - output: `[..., out_features]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_with(x, crate::precision::linear)
    }

    /// [`forward`](Self::forward) with `base` computing the base (or fused) layer's output.
    pub(crate) fn forward_with<const D: usize>(
        &self,
        x: Tensor<D>,
        base: fn(&Linear, Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        let state = self.adapters.read();
        if !state.in_effect() {
            drop(state);
            return base(&self.base, x);
        }
        if let Some(FusedLayer::Linear(fused)) = &state.fused {
            return base(fused, x);
        }
        let mut result = base(&self.base, x.clone());
        for name in &state.active {
            let Some(adapter) = state.get(name) else {
                continue;
            };
            if let AdapterLayers::Linear { down, up } = &adapter.layers {
                let h = crate::precision::linear(down, x.clone());
                let h = crate::precision::linear(up, h);
                let scaling = adapter.scaling;
                result = result + crate::precision::elementwise(h, |t| t.mul_scalar(scaling));
            }
        }
        result
    }

    /// Fuses adapters into a copy of the base weight (diffusers' `fuse_lora` on this layer:
    /// peft's `scale_layer(lora_scale)` when it is not 1, then `merge(adapter_names)`, the
    /// active set when `None`). Fusing again merges more adapters into the fused copy, as
    /// peft does.
    pub fn fuse(&self, lora_scale: f64, adapter_names: Option<&[&str]>) {
        if lora_scale != 1.0 {
            self.adapters.scale_layer(lora_scale);
        }
        let mut state = self.adapters.write();
        let names = merge_names(&state, adapter_names);
        if names.is_empty() {
            return;
        }
        let mut weight = match &state.fused {
            Some(FusedLayer::Linear(f)) => f.weight.val(),
            _ => self.base.weight.val(),
        };
        for name in &names {
            if let Some(Adapter {
                layers: AdapterLayers::Linear { down, up },
                scaling,
                ..
            }) = state.get(name)
            {
                // peft: `weight += (B @ A) * scaling`, in torch's `[out, in]` layout; burn's
                // weights are the transposes (`down` holds Aᵀ, `up` holds Bᵀ).
                let b = up.weight.val().transpose();
                let a = down.weight.val().transpose();
                let delta = b.matmul(a).mul_scalar(*scaling).transpose();
                weight = weight + delta;
            }
        }
        let fused = Linear {
            weight: Param::from_tensor(weight),
            bias: self.base.bias.clone(),
        };
        state.fused = Some(FusedLayer::Linear(fused));
        state.merged.extend(names);
    }
}

/// The adapters to merge: the given names or the active set, those present and not yet merged.
fn merge_names(state: &AdapterState, adapter_names: Option<&[&str]>) -> Vec<String> {
    let requested: Vec<String> = match adapter_names {
        Some(names) => names.iter().map(|n| (*n).to_owned()).collect(),
        None => state.active.clone(),
    };
    requested
        .into_iter()
        .filter(|n| state.get(n).is_some() && !state.merged.contains(n))
        .collect()
}

/// A `Conv2d` that carries named LoRA adapters (peft's `lora.Conv2d`).
#[derive(Module, Debug)]
pub struct LoraConv2d {
    /// The base layer; its parameters load under the wrapper's own key (`conv1.weight`).
    pub base: Conv2d,
    /// The adapters (runtime state, shared by clones).
    #[module(skip)]
    pub adapters: LoraAdapters,
}

impl From<Conv2d> for LoraConv2d {
    fn from(base: Conv2d) -> Self {
        Self {
            base,
            adapters: LoraAdapters::default(),
        }
    }
}

impl LoraConv2d {
    /// Adds (or replaces) the adapter `name` (see [`LoraLinear::add_adapter`]). `lora_a` must
    /// have the base kernel's size; `lora_b` is 1x1.
    pub fn add_adapter(&self, name: &str, weights: LoraWeights<4>) -> Result<(), ModelError> {
        let [c_out, c_in, kh, kw] = self.base.weight.dims();
        let rank = weights.rank();
        let a_dims = weights.lora_a.dims();
        let b_dims = weights.lora_b.dims();
        let groups_ok = self.base.groups == 1;
        if rank == 0 || !groups_ok || a_dims[1..] != [c_in, kh, kw] || b_dims != [c_out, rank, 1, 1]
        {
            return Err(shape_error(
                name,
                format!(
                    "expected lora_A [r, {c_in}, {kh}, {kw}] and lora_B [{c_out}, r, 1, 1] with \
                     r > 0 on an ungrouped convolution, got lora_A {a_dims:?} and lora_B \
                     {b_dims:?}"
                ),
            ));
        }
        let base = self.base.weight.val();
        let (dtype, device) = (base.dtype(), base.device());
        let a = weights.lora_a.to_device(&device).cast(dtype);
        let b = weights.lora_b.to_device(&device).cast(dtype);
        let down = Conv2d {
            weight: Param::from_tensor(a),
            bias: None,
            stride: self.base.stride,
            kernel_size: self.base.kernel_size,
            dilation: self.base.dilation,
            groups: 1,
            padding: self.base.padding.clone(),
        };
        let up = Conv2d {
            weight: Param::from_tensor(b),
            bias: None,
            stride: [1, 1],
            kernel_size: [1, 1],
            dilation: [1, 1],
            groups: 1,
            padding: burn::nn::PaddingConfig2d::Valid,
        };
        let mut adapter = Adapter {
            name: name.to_owned(),
            layers: AdapterLayers::Conv2d { down, up },
            rank,
            alpha: weights.alpha,
            use_rslora: weights.use_rslora,
            scaling: 0.0,
        };
        adapter.scaling = adapter.base_scaling(1.0);
        self.adapters.insert(adapter);
        Ok(())
    }

    /// # Shapes
    /// - `x`: `[batch, in_channels, height, width]`
    /// - output: `[batch, out_channels, height', width']`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let state = self.adapters.read();
        if !state.in_effect() {
            drop(state);
            return crate::precision::conv2d(&self.base, x);
        }
        if let Some(FusedLayer::Conv2d(fused)) = &state.fused {
            return crate::precision::conv2d(fused, x);
        }
        let mut result = crate::precision::conv2d(&self.base, x.clone());
        for name in &state.active {
            let Some(adapter) = state.get(name) else {
                continue;
            };
            if let AdapterLayers::Conv2d { down, up } = &adapter.layers {
                let h = crate::precision::conv2d(down, x.clone());
                let h = crate::precision::conv2d(up, h);
                let scaling = adapter.scaling;
                result = result + crate::precision::elementwise(h, |t| t.mul_scalar(scaling));
            }
        }
        result
    }

    /// Fuses adapters into a copy of the base weight (see [`LoraLinear::fuse`]); the delta is
    /// peft's `B·A` over the rank (a 1x1 `B` applied to every kernel tap of `A`).
    pub fn fuse(&self, lora_scale: f64, adapter_names: Option<&[&str]>) {
        if lora_scale != 1.0 {
            self.adapters.scale_layer(lora_scale);
        }
        let mut state = self.adapters.write();
        let names = merge_names(&state, adapter_names);
        if names.is_empty() {
            return;
        }
        let mut weight = match &state.fused {
            Some(FusedLayer::Conv2d(f)) => f.weight.val(),
            _ => self.base.weight.val(),
        };
        let [c_out, c_in, kh, kw] = weight.dims();
        for name in &names {
            if let Some(Adapter {
                layers: AdapterLayers::Conv2d { down, up },
                scaling,
                rank,
                ..
            }) = state.get(name)
            {
                let b = up.weight.val().reshape([c_out, *rank]);
                let a = down.weight.val().reshape([*rank, c_in * kh * kw]);
                let delta = b
                    .matmul(a)
                    .reshape([c_out, c_in, kh, kw])
                    .mul_scalar(*scaling);
                weight = weight + delta;
            }
        }
        let mut fused = self.base.clone();
        fused.weight = Param::from_tensor(weight);
        state.fused = Some(FusedLayer::Conv2d(fused));
        state.merged.extend(names);
    }
}

/// A reference to one adapter-capable layer of a model.
#[derive(Debug, Clone, Copy)]
pub enum LoraLayerRef<'a> {
    /// A linear layer.
    Linear(&'a LoraLinear),
    /// A 2-d convolution.
    Conv2d(&'a LoraConv2d),
}

impl LoraLayerRef<'_> {
    /// The layer's adapter handle.
    pub fn adapters(&self) -> &LoraAdapters {
        match self {
            Self::Linear(l) => &l.adapters,
            Self::Conv2d(c) => &c.adapters,
        }
    }

    /// The fused weight when adapters are fused into this layer (what diffusers'
    /// `save_pretrained` writes after `fuse_lora`), in PyTorch's layout (`[out, in]` for a
    /// linear layer, `[out, in, kh, kw]` for a convolution) and float32; `None` when the layer
    /// runs its base weight. The bias is never changed by fusing.
    pub fn fused_weight(&self) -> Option<TensorData> {
        let state = self.adapters().read();
        let data = match (&state.fused, self) {
            (Some(FusedLayer::Linear(l)), Self::Linear(_)) => {
                l.weight.val().transpose().into_data()
            }
            (Some(FusedLayer::Conv2d(c)), Self::Conv2d(_)) => c.weight.val().into_data(),
            _ => return None,
        };
        Some(data.convert::<f32>())
    }

    /// Adds an adapter from host data in peft's layout (`lora_A.weight`, `lora_B.weight` as a
    /// checkpoint stores them: rank 2 for a linear layer, rank 4 for a convolution), built on
    /// the base weight's device and dtype.
    pub fn add_adapter_data(
        &self,
        name: &str,
        lora_a: TensorData,
        lora_b: TensorData,
        alpha: f64,
        use_rslora: bool,
    ) -> Result<(), ModelError> {
        let rank_error = |what: &str, got: usize, want: usize| {
            shape_error(
                name,
                format!("{what} has {got} dimensions, the layer needs {want}"),
            )
        };
        match self {
            Self::Linear(l) => {
                let device = l.base.weight.val().device();
                let (ra, rb) = (lora_a.shape().len(), lora_b.shape().len());
                if ra != 2 {
                    return Err(rank_error("lora_A", ra, 2));
                }
                if rb != 2 {
                    return Err(rank_error("lora_B", rb, 2));
                }
                let weights = LoraWeights {
                    lora_a: Tensor::<2>::from_data(lora_a, &device),
                    lora_b: Tensor::<2>::from_data(lora_b, &device),
                    alpha,
                    use_rslora,
                };
                l.add_adapter(name, weights)
            }
            Self::Conv2d(c) => {
                let device = c.base.weight.val().device();
                let (ra, rb) = (lora_a.shape().len(), lora_b.shape().len());
                if ra != 4 {
                    return Err(rank_error("lora_A", ra, 4));
                }
                if rb != 4 {
                    return Err(rank_error("lora_B", rb, 4));
                }
                let weights = LoraWeights {
                    lora_a: Tensor::<4>::from_data(lora_a, &device),
                    lora_b: Tensor::<4>::from_data(lora_b, &device),
                    alpha,
                    use_rslora,
                };
                c.add_adapter(name, weights)
            }
        }
    }

    /// Fuses adapters into the layer (see [`LoraLinear::fuse`]).
    pub fn fuse(&self, lora_scale: f64, adapter_names: Option<&[&str]>) {
        match self {
            Self::Linear(l) => l.fuse(lora_scale, adapter_names),
            Self::Conv2d(c) => c.fuse(lora_scale, adapter_names),
        }
    }
}

/// A model whose layers carry LoRA adapters, reached by diffusers' module names
/// (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`,
/// `text_model.encoder.layers.0.self_attn.q_proj`), with diffusers' model-level controls.
pub trait LoraModel {
    /// Calls `f` for every adapter-capable layer with its module name, in state-dict order.
    fn for_each_lora_layer<'a>(&'a self, f: &mut dyn FnMut(&str, LoraLayerRef<'a>));

    /// Every adapter-capable layer with its module name.
    fn lora_layers(&self) -> Vec<(String, LoraLayerRef<'_>)> {
        let mut out = Vec::new();
        self.for_each_lora_layer(&mut |name, layer| out.push((name.to_owned(), layer)));
        out
    }

    /// The layer of that module name, if it is adapter-capable.
    fn lora_layer(&self, name: &str) -> Option<LoraLayerRef<'_>> {
        let mut found = None;
        self.for_each_lora_layer(&mut |n, layer| {
            if found.is_none() && n == name {
                found = Some(layer);
            }
        });
        found
    }

    /// The adapter names present in any layer, in first-seen order (diffusers'
    /// `get_list_adapters` for one model).
    fn list_adapters(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        self.for_each_lora_layer(&mut |_, layer| {
            for n in layer.adapters().names() {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        });
        names
    }

    /// The active set of the first layer that has adapters (diffusers' `active_adapters`).
    fn active_adapters(&self) -> Vec<String> {
        let mut active = None;
        self.for_each_lora_layer(&mut |_, layer| {
            if active.is_none() && !layer.adapters().names().is_empty() {
                active = Some(layer.adapters().active_adapters());
            }
        });
        active.unwrap_or_default()
    }

    /// Activates adapters with weights on every layer (diffusers' `set_adapters`). Fails,
    /// naming it, when an adapter is in no layer of the model.
    fn set_adapters(&self, adapters: &[(&str, f64)]) -> Result<(), ModelError> {
        let present = self.list_adapters();
        if let Some((missing, _)) = adapters
            .iter()
            .find(|(n, _)| !present.iter().any(|p| p == n))
        {
            return Err(ModelError::Adapter {
                adapter: (*missing).to_owned(),
                reason: format!(
                    "not in the list of present adapters: [{}]",
                    present.join(", ")
                ),
            });
        }
        self.for_each_lora_layer(&mut |_, layer| layer.adapters().set_adapters(adapters));
        Ok(())
    }

    /// Turns adapters on in every layer (diffusers' `enable_lora`).
    fn enable_lora(&self) {
        self.for_each_lora_layer(&mut |_, layer| layer.adapters().enable());
    }

    /// Runs every layer on its base weights (diffusers' `disable_lora`).
    fn disable_lora(&self) {
        self.for_each_lora_layer(&mut |_, layer| layer.adapters().disable());
    }

    /// Fuses adapters into every layer (diffusers' `fuse_lora(lora_scale, adapter_names)`).
    fn fuse_lora(&self, lora_scale: f64, adapter_names: Option<&[&str]>) {
        self.for_each_lora_layer(&mut |_, layer| layer.fuse(lora_scale, adapter_names));
    }

    /// Restores every layer's base weights (diffusers' `unfuse_lora`).
    fn unfuse_lora(&self) {
        self.for_each_lora_layer(&mut |_, layer| layer.adapters().unfuse());
    }

    /// Deletes adapters from every layer (diffusers' `delete_adapters`). Fails, naming it,
    /// when an adapter is in no layer or is fused.
    fn delete_adapters(&self, names: &[&str]) -> Result<(), ModelError> {
        let present = self.list_adapters();
        if let Some(missing) = names.iter().find(|n| !present.iter().any(|p| p == *n)) {
            return Err(ModelError::Adapter {
                adapter: (*missing).to_owned(),
                reason: format!(
                    "not in the list of present adapters: [{}]",
                    present.join(", ")
                ),
            });
        }
        // Checked on every layer first, so that a failure deletes nothing.
        let mut fused = None;
        self.for_each_lora_layer(&mut |_, layer| {
            let merged = layer.adapters().merged_adapters();
            if fused.is_none() {
                fused = names
                    .iter()
                    .find(|n| merged.iter().any(|m| m == *n))
                    .copied();
            }
        });
        if let Some(name) = fused {
            return Err(ModelError::Adapter {
                adapter: name.to_owned(),
                reason: "the adapter is fused; call unfuse_lora before deleting it".to_owned(),
            });
        }
        let mut error = None;
        self.for_each_lora_layer(&mut |_, layer| {
            for name in names {
                if let Err(e) = layer.adapters().delete(name)
                    && error.is_none()
                {
                    error = Some(e);
                }
            }
        });
        error.map_or(Ok(()), Err)
    }
}
