//! Attention processors (diffusers `models/attention_processor.py`): what an [`Attention`]
//! layer computes, chosen at run time as diffusers' `set_attn_processor` chooses it.
//!
//! Every [`Attention`] holds its processor in a [`ProcessorSlot`], an `Arc<RwLock<..>>` field
//! marked `#[module(skip)]`: `&self` methods replace it, and every holder of a model shared by
//! `Arc` (pipelines made by `from_pipe`) sees the change, as with diffusers' shared modules.
//!
//! Processors:
//! - [`AttnProcessor2_0`], the default: fused scaled-dot-product attention
//!   (`crate::precision::attention`), the code path and numbers every parity test pins;
//! - [`AttnProcessor`]: diffusers' classic processor, `softmax(q kᵀ · scale + mask) v` with the
//!   probabilities materialised (`get_attention_scores` then `bmm`), what
//!   `set_default_attn_processor` installs;
//! - [`CrossAttnStoreProcessor`]: [`AttnProcessor`] that also keeps the last probabilities
//!   (`[batch * heads, n, m]`, diffusers' `Attention.get_attention_scores`), what SAG sets on
//!   the mid block's first self-attention;
//! - [`IPAdapterAttnProcessor2_0`]: text attention plus, per IP-Adapter, `scale` times the
//!   attention of the same queries over the adapter's image tokens through its own `to_k_ip` /
//!   `to_v_ip` (diffusers' `IPAdapterAttnProcessor2_0`, without masks).
//!
//! A new processor is a type implementing [`AttentionProcessor`] in a file of its own; no
//! registration is needed (models list processors by the name the type reports).

use std::any::Any;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Tensor};

use crate::ModelError;
use crate::attention::{
    Attention, EncoderHiddenStates, linear_tokens, scaled_dot_product_attention,
};
use crate::named::{NamedLayer, NamedLayers};

/// What an attention layer computes (diffusers' processor `__call__`).
pub trait AttentionProcessor: Send + Sync + Debug {
    /// diffusers' class name of the processor (`AttnProcessor2_0`).
    fn name(&self) -> &str;

    /// The layer's output.
    ///
    /// # Shapes
    /// - `x`: `[batch, n, query_dim]`
    /// - `context`: `None` for self-attention
    /// - `bias`: additive mask broadcastable to `[batch, heads, n, m]`
    /// - output: `[batch, n, query_dim]`
    fn call(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        context: Option<&EncoderHiddenStates>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3>;

    /// For downcasting to the concrete processor (IP-Adapter scales, SAG's stored maps).
    fn as_any(&self) -> &dyn Any;
}

/// A shared processor: one object may serve many layers, as in diffusers.
pub type AttnProcessorRef = Arc<dyn AttentionProcessor>;

/// The processor of one [`Attention`], shared by every clone of the layer.
#[derive(Debug, Clone)]
pub struct ProcessorSlot(Arc<RwLock<AttnProcessorRef>>);

impl Default for ProcessorSlot {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Arc::new(AttnProcessor2_0))))
    }
}

impl ProcessorSlot {
    /// The processor in use.
    pub fn get(&self) -> AttnProcessorRef {
        // A poisoned lock still holds a valid `Arc` (the only write is one assignment).
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the processor.
    pub fn set(&self, processor: AttnProcessorRef) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = processor;
    }
}

/// The text/context states and the query input of one call, as every processor starts
/// (`residual`, group norm, projections).
struct Projected {
    residual: Tensor<3>,
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
}

fn project(attn: &Attention, x: Tensor<3>, context: Option<&Tensor<3>>) -> Projected {
    let residual = x.clone();
    let (h, strided) = attn.prepare_input(x);
    let q = attn.project(&attn.to_q, h.clone(), strided);
    let ctx = context.cloned().unwrap_or(h);
    let k = attn.project(&attn.to_k, ctx.clone(), strided);
    let v = attn.project(&attn.to_v, ctx, strided);
    Projected { residual, q, k, v }
}

/// diffusers' `AttnProcessor2_0`: fused scaled-dot-product attention (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnProcessor2_0;

impl AttentionProcessor for AttnProcessor2_0 {
    fn name(&self) -> &str {
        "AttnProcessor2_0"
    }

    fn call(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        context: Option<&EncoderHiddenStates>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let p = project(attn, x, context.map(|c| &c.hidden_states));
        let out = scaled_dot_product_attention(p.q, p.k, p.v, attn.heads, bias);
        attn.finish(out, p.residual)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// diffusers' `Attention.get_attention_scores`: `softmax(scale · q kᵀ + mask)` per head.
///
/// # Shapes
/// - `q`: `[batch, n, heads * head_dim]`, `k`: `[batch, m, heads * head_dim]`
/// - `bias`: broadcastable to `[batch, heads, n, m]`
/// - output: `[batch * heads, n, m]` (diffusers' `head_to_batch_dim` order: batch-major)
pub fn get_attention_scores(
    q: Tensor<3>,
    k: Tensor<3>,
    heads: usize,
    scale: f64,
    bias: Option<Tensor<4>>,
) -> Tensor<3> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let heads = heads.max(1);
    let head_dim = inner / heads;
    let dtype = q.dtype();
    let to_batch = |t: Tensor<3>, len: usize| {
        t.reshape([b, len, heads, head_dim])
            .swap_dims(1, 2)
            .reshape([b * heads, len, head_dim])
    };
    // `baddbmm(mask, q, kᵀ, beta=1, alpha=scale)`: float32 accumulation, rounded once for
    // half inputs; the softmax likewise.
    let (q, k) = (to_batch(q, n), to_batch(k, m));
    let wide = |t: Tensor<3>| {
        if crate::precision::is_half(dtype) {
            t.cast(DType::F32)
        } else {
            t
        }
    };
    let mut scores = wide(q).matmul(wide(k).swap_dims(1, 2)).mul_scalar(scale);
    if let Some(bias) = bias {
        let wide_dtype = scores.dtype();
        scores = scores + wide_bias(bias, b, heads, n, m, wide_dtype);
    }
    let scores = scores.cast(dtype);
    crate::precision::elementwise(scores, |s| softmax(s, 2))
}

fn wide_bias(
    bias: Tensor<4>,
    b: usize,
    heads: usize,
    n: usize,
    m: usize,
    dtype: DType,
) -> Tensor<3> {
    bias.cast(dtype)
        .expand([b, heads, n, m])
        .reshape([b * heads, n, m])
}

/// `probs · v` back to `[batch, n, heads * head_dim]` (diffusers' `bmm` + `batch_to_head_dim`).
fn apply_probabilities(probs: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let [b, m, inner] = v.dims();
    let heads = heads.max(1);
    let head_dim = inner / heads;
    let n = probs.dims()[1];
    let dtype = v.dtype();
    let v = v
        .reshape([b, m, heads, head_dim])
        .swap_dims(1, 2)
        .reshape([b * heads, m, head_dim]);
    let out = if crate::precision::is_half(dtype) {
        probs
            .cast(DType::F32)
            .matmul(v.cast(DType::F32))
            .cast(dtype)
    } else {
        probs.matmul(v)
    };
    out.reshape([b, heads, n, head_dim])
        .swap_dims(1, 2)
        .reshape([b, n, inner])
}

/// The classic processor's body; returns the output and the probabilities.
fn classic(
    attn: &Attention,
    x: Tensor<3>,
    context: Option<&EncoderHiddenStates>,
    bias: Option<Tensor<4>>,
) -> (Tensor<3>, Tensor<3>) {
    let p = project(attn, x, context.map(|c| &c.hidden_states));
    let probs = get_attention_scores(p.q, p.k, attn.heads, attn.scale(), bias);
    let out = apply_probabilities(probs.clone(), p.v, attn.heads);
    (attn.finish(out, p.residual), probs)
}

/// diffusers' `AttnProcessor`: the probabilities materialised, then `bmm` with the values.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnProcessor;

impl AttentionProcessor for AttnProcessor {
    fn name(&self) -> &str {
        "AttnProcessor"
    }

    fn call(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        context: Option<&EncoderHiddenStates>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        classic(attn, x, context, bias).0
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// diffusers' `CrossAttnStoreProcessor` (the SAG pipeline's): [`AttnProcessor`] that keeps the
/// probabilities of its last call.
#[derive(Debug, Default)]
pub struct CrossAttnStoreProcessor {
    attention_probs: Mutex<Option<Tensor<3>>>,
}

impl CrossAttnStoreProcessor {
    /// A processor with nothing stored yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The probabilities of the last call, `[batch * heads, n, m]`.
    pub fn attention_probs(&self) -> Option<Tensor<3>> {
        self.attention_probs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl AttentionProcessor for CrossAttnStoreProcessor {
    fn name(&self) -> &str {
        "CrossAttnStoreProcessor"
    }

    fn call(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        context: Option<&EncoderHiddenStates>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let (out, probs) = classic(attn, x, context, bias);
        *self
            .attention_probs
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(probs);
        out
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The image-prompt projections of one IP-Adapter in one attention layer.
#[derive(Debug, Clone)]
pub struct IpAdapterLayer {
    /// `to_k_ip.{i}`: image tokens to keys (no bias).
    pub to_k_ip: Linear,
    /// `to_v_ip.{i}`: image tokens to values (no bias).
    pub to_v_ip: Linear,
    /// The adapter's number of image tokens (diffusers' `num_tokens`), used to split appended
    /// tokens off the text states when no separate image states are given.
    pub num_tokens: usize,
}

impl IpAdapterLayer {
    /// From weights in PyTorch's layout (`to_k_ip.{i}.weight`, `[hidden_size,
    /// cross_attention_dim]`), transposed here to burn's.
    pub fn from_torch(to_k_ip: Tensor<2>, to_v_ip: Tensor<2>, num_tokens: usize) -> Self {
        let linear = |w: Tensor<2>| Linear {
            weight: Param::from_tensor(w.transpose()),
            bias: None,
        };
        Self {
            to_k_ip: linear(to_k_ip),
            to_v_ip: linear(to_v_ip),
            num_tokens,
        }
    }
}

/// diffusers' `IPAdapterAttnProcessor2_0` (without `ip_adapter_masks`): the text attention
/// plus, for each IP-Adapter `i`, `scale[i] · attention(q, to_k_ip[i](img_i), to_v_ip[i](img_i))`,
/// skipped when the scale is 0, before `to_out`.
///
/// The image tokens come from [`EncoderHiddenStates::ip_hidden_states`] (diffusers' tuple form);
/// when that is empty the last `num_tokens[0]` tokens of the text states are the image tokens
/// of the first adapter (diffusers' deprecated appended form).
#[derive(Debug)]
pub struct IPAdapterAttnProcessor2_0 {
    layers: Vec<IpAdapterLayer>,
    scale: RwLock<Vec<f64>>,
}

impl IPAdapterAttnProcessor2_0 {
    /// One processor for the given adapters, each with scale 1 (diffusers' default).
    pub fn new(layers: Vec<IpAdapterLayer>) -> Self {
        let scale = vec![1.0; layers.len()];
        Self {
            layers,
            scale: RwLock::new(scale),
        }
    }

    /// The adapters' layers.
    pub fn layers(&self) -> &[IpAdapterLayer] {
        &self.layers
    }

    /// The per-adapter scales (diffusers' `scale`).
    pub fn scale(&self) -> Vec<f64> {
        self.scale.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the per-adapter scales; one value sets every adapter (diffusers'
    /// `set_ip_adapter_scale` on one processor, after InstantStyle's per-block expansion).
    pub fn set_scale(&self, scale: &[f64]) -> Result<(), ModelError> {
        let n = self.layers.len();
        let values = match scale {
            [one] => vec![*one; n],
            many if many.len() == n => many.to_vec(),
            other => {
                return Err(ModelError::InvalidInput {
                    model: "IPAdapterAttnProcessor2_0".to_owned(),
                    reason: format!(
                        "{} scales for {n} IP-Adapters; pass one or one per adapter",
                        other.len()
                    ),
                });
            }
        };
        *self.scale.write().unwrap_or_else(|e| e.into_inner()) = values;
        Ok(())
    }
}

impl AttentionProcessor for IPAdapterAttnProcessor2_0 {
    fn name(&self) -> &str {
        "IPAdapterAttnProcessor2_0"
    }

    fn call(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        context: Option<&EncoderHiddenStates>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        // 1. Separate the image tokens from the text states.
        let (text, images): (Option<Tensor<3>>, Vec<Tensor<3>>) = match context {
            None => (None, Vec::new()),
            Some(c) if !c.ip_hidden_states.is_empty() => {
                (Some(c.hidden_states.clone()), c.ip_hidden_states.clone())
            }
            Some(c) => {
                let [_, m, _] = c.hidden_states.dims();
                let tokens = self.layers.first().map_or(0, |l| l.num_tokens).min(m);
                let end = m - tokens;
                (
                    Some(c.hidden_states.clone().narrow(1, 0, end)),
                    vec![c.hidden_states.clone().narrow(1, end, tokens)],
                )
            }
        };
        // 2. Text attention, as the default processor.
        let p = project(attn, x, text.as_ref());
        let mut out = scaled_dot_product_attention(p.q.clone(), p.k, p.v, attn.heads, bias);
        // 3. Each adapter's attention over its image tokens, scaled and added.
        let scales = self.scale();
        for ((image, layer), scale) in images.into_iter().zip(&self.layers).zip(scales) {
            if scale == 0.0 {
                continue;
            }
            let k = linear_tokens(&layer.to_k_ip, image.clone());
            let v = linear_tokens(&layer.to_v_ip, image);
            let ip = scaled_dot_product_attention(p.q.clone(), k, v, attn.heads, None);
            out = out + crate::precision::elementwise(ip, |t| t.mul_scalar(scale));
        }
        attn.finish(out, p.residual)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// What `set_attn_processor` installs: one processor everywhere, or one per processor name.
#[derive(Debug, Clone)]
pub enum AttnProcessorSetting {
    /// The same processor object on every attention layer.
    All(AttnProcessorRef),
    /// One per name (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor`); the
    /// names must be exactly the model's.
    ByName(Vec<(String, AttnProcessorRef)>),
}

impl From<AttnProcessorRef> for AttnProcessorSetting {
    fn from(p: AttnProcessorRef) -> Self {
        Self::All(p)
    }
}

/// The attention layers of a model by processor name (`<module>.processor`), in diffusers'
/// `attn_processors` order.
pub(crate) fn attention_layers<M: NamedLayers>(model: &M) -> Vec<(String, &Attention)> {
    let mut out = Vec::new();
    model.visit_named("", &mut |name, layer| {
        if let NamedLayer::Attention(a) = layer {
            out.push((format!("{name}.processor"), a));
        }
    });
    out
}

/// diffusers' `attn_processors`.
pub(crate) fn attn_processors<M: NamedLayers>(model: &M) -> Vec<(String, AttnProcessorRef)> {
    attention_layers(model)
        .into_iter()
        .map(|(name, a)| (name, a.get_processor()))
        .collect()
}

/// diffusers' `set_attn_processor`: checks a map's names against the model's first (nothing is
/// changed when they differ).
pub(crate) fn set_attn_processor<M: NamedLayers>(
    model_name: &str,
    model: &M,
    setting: AttnProcessorSetting,
) -> Result<(), ModelError> {
    let layers = attention_layers(model);
    match setting {
        AttnProcessorSetting::All(p) => {
            for (_, a) in layers {
                a.set_processor(p.clone());
            }
        }
        AttnProcessorSetting::ByName(map) => {
            let error = |key: &str, reason: String| ModelError::AttnProcessor {
                model: model_name.to_owned(),
                key: key.to_owned(),
                reason,
            };
            for (key, _) in &map {
                if !layers.iter().any(|(n, _)| n == key) {
                    return Err(error(key, "no attention layer has this name".to_owned()));
                }
                if map.iter().filter(|(k, _)| k == key).count() > 1 {
                    return Err(error(key, "given twice".to_owned()));
                }
            }
            if let Some((missing, _)) = layers
                .iter()
                .find(|(n, _)| !map.iter().any(|(k, _)| k == n))
            {
                return Err(error(
                    missing,
                    format!(
                        "missing: a map of processors must name all {} attention layers, got {}",
                        layers.len(),
                        map.len()
                    ),
                ));
            }
            for (name, a) in layers {
                if let Some((_, p)) = map.iter().find(|(k, _)| *k == name) {
                    a.set_processor(p.clone());
                }
            }
        }
    }
    Ok(())
}

/// diffusers' `set_default_attn_processor`: [`AttnProcessor`] everywhere, refused (naming the
/// layer) when a processor is not a cross-attention processor diffusers knows to replace.
pub(crate) fn set_default_attn_processor<M: NamedLayers>(
    model_name: &str,
    model: &M,
) -> Result<(), ModelError> {
    let layers = attention_layers(model);
    const REPLACEABLE: [&str; 4] = [
        "AttnProcessor",
        "AttnProcessor2_0",
        "IPAdapterAttnProcessor",
        "IPAdapterAttnProcessor2_0",
    ];
    if let Some((name, a)) = layers
        .iter()
        .find(|(_, a)| !REPLACEABLE.contains(&a.get_processor().name()))
    {
        return Err(ModelError::AttnProcessor {
            model: model_name.to_owned(),
            key: name.clone(),
            reason: format!(
                "cannot call set_default_attn_processor when attention processors are of type {}",
                a.get_processor().name()
            ),
        });
    }
    let default: AttnProcessorRef = Arc::new(AttnProcessor);
    for (_, a) in layers {
        a.set_processor(default.clone());
    }
    Ok(())
}

impl NamedLayers for crate::AutoencoderKL {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        crate::named::visit_fields!(self, prefix, f; encoder, decoder);
    }
}

/// Attention processors of the VAE's mid-block attentions (diffusers' `AttentionMixin` on
/// `AutoencoderKL`: `encoder.mid_block.attentions.0.processor`,
/// `decoder.mid_block.attentions.0.processor`).
impl crate::AutoencoderKL {
    /// Every attention layer's processor by name, in diffusers' order.
    pub fn attn_processors(&self) -> Vec<(String, AttnProcessorRef)> {
        attn_processors(self)
    }

    /// diffusers' `set_attn_processor` (see `UNet2DConditionModel::set_attn_processor`).
    pub fn set_attn_processor(
        &self,
        processor: impl Into<AttnProcessorSetting>,
    ) -> Result<(), ModelError> {
        set_attn_processor("AutoencoderKL", self, processor.into())
    }

    /// diffusers' `set_default_attn_processor`.
    pub fn set_default_attn_processor(&self) -> Result<(), ModelError> {
        set_default_attn_processor("AutoencoderKL", self)
    }
}
