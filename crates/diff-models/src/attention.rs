//! Attention layers (diffusers `models/attention_processor.py`, `models/attention.py` and
//! `models/transformers/transformer_2d.py`): `Attention`, `FeedForward` with GEGLU,
//! `BasicTransformerBlock` and the continuous-input `Transformer2DModel` the UNet blocks use.
//!
//! Scaled dot-product attention goes through `crate::precision::attention`: burn's fused
//! `attention` op in float32 (on flex it tiles over the keys with an online softmax, memory
//! linear in the sequence), torch's CPU flash-attention arithmetic for float16 / bfloat16 on
//! flex. Both compute scores and softmax in f32, which is what `upcast_attention` /
//! `upcast_softmax` ask for. Linears, norms and convolutions go through `crate::precision` too,
//! so half-precision models round where torch rounds.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, GroupNorm, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::attention_processor::{AttnProcessorRef, ProcessorSlot};
use crate::lora::{LoraConv2d, LoraLinear};
use crate::named::{NamedLayer, NamedLayers, join, visit_fields};
use crate::resnet::{conv2d, group_norm, linear};

/// A linear layer over `[batch, n, d_in]` tokens run as one `[batch * n, d_in]` matmul: burn-flex
/// runs a rank-3 `linear` as a batched matmul against the broadcast weight, which measured about
/// 20% slower than the folded form for the UNet's shapes.
pub fn linear_tokens(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, n, d] = x.dims();
    let y = crate::precision::linear(layer, x.reshape([b * n, d]));
    let out = y.dims()[1];
    y.reshape([b, n, out])
}

/// [`linear_tokens`] for an adapter-capable layer (its adapters, when any are in effect).
pub fn lora_linear_tokens(layer: &LoraLinear, x: Tensor<3>) -> Tensor<3> {
    let [b, n, d] = x.dims();
    let y = layer.forward_with(x.reshape([b * n, d]), crate::precision::linear);
    let out = y.dims()[1];
    y.reshape([b, n, out])
}

/// [`lora_linear_tokens`] for tokens that torch holds as a transposed (non-contiguous) view,
/// where its half-precision `F.linear` rounds the product and the bias addition separately.
fn lora_linear_tokens_strided(layer: &LoraLinear, x: Tensor<3>) -> Tensor<3> {
    let [b, n, d] = x.dims();
    let y = layer.forward_with(x.reshape([b * n, d]), crate::precision::linear_strided);
    let out = y.dims()[1];
    y.reshape([b, n, out])
}

/// The states an attention layer attends to: diffusers' `encoder_hidden_states`, which the UNet
/// turns into the tuple `(text, image_embeds)` when IP-Adapters are loaded.
#[derive(Debug, Clone)]
pub struct EncoderHiddenStates {
    /// The text states, `[batch, m, cross_attention_dim]`.
    pub hidden_states: Tensor<3>,
    /// The projected image-prompt tokens, one `[batch, tokens, cross_attention_dim]` tensor per
    /// IP-Adapter (the tuple's second member); empty without IP-Adapters.
    pub ip_hidden_states: Vec<Tensor<3>>,
}

impl From<Tensor<3>> for EncoderHiddenStates {
    fn from(hidden_states: Tensor<3>) -> Self {
        Self {
            hidden_states,
            ip_hidden_states: Vec::new(),
        }
    }
}

/// `softmax(q kᵀ / sqrt(d)) v` per head.
///
/// # Shapes
/// - `q`: `[batch, n, heads * head_dim]`, `k` and `v`: `[batch, m, heads * head_dim]`
/// - `bias`: additive, broadcastable to `[batch, heads, n, m]`
/// - output: `[batch, n, heads * head_dim]`
pub fn scaled_dot_product_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    bias: Option<Tensor<4>>,
) -> Tensor<3> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let head_dim = inner / heads.max(1);
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, head_dim]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n), split(k, m), split(v, m));
    let bias = bias.map(|b4| b4.expand([b, heads, n, m]));
    let out = crate::precision::attention(q, k, v, None, bias, None, false);
    out.swap_dims(1, 2).reshape([b, n, inner])
}

/// diffusers' `Attention` as SD's UNets and VAEs configure it.
#[derive(Module, Debug)]
pub struct Attention {
    /// Group norm of the VAE mid-block attention (over channels, before the projections).
    pub group_norm: Option<GroupNorm>,
    /// Query projection.
    pub to_q: LoraLinear,
    /// Key projection.
    pub to_k: LoraLinear,
    /// Value projection.
    pub to_v: LoraLinear,
    /// Output projection (`to_out.0`; `to_out.1` is a dropout without weights).
    pub to_out: Vec<LoraLinear>,
    /// Number of heads.
    pub heads: usize,
    /// Add the input back (the VAE's form).
    pub residual_connection: bool,
    /// The output is divided by this.
    pub rescale_output_factor: f64,
    /// The attention processor (runtime state shared by clones; see `attention_processor`).
    #[module(skip)]
    pub processor: ProcessorSlot,
}

/// Settings of an [`Attention`].
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Width of the queries and of the output.
    pub query_dim: usize,
    /// Width of the keys/values source; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
    /// Bias on `to_q`, `to_k`, `to_v`.
    pub bias: bool,
    /// Group norm `(groups, eps)` before the projections (VAE).
    pub group_norm: Option<(usize, f64)>,
    /// Add the input back.
    pub residual_connection: bool,
    /// The output is divided by this.
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// Builds the layer.
    pub fn init(&self, device: &Device) -> Attention {
        let inner = self.heads * self.dim_head;
        let kv_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        Attention {
            group_norm: self
                .group_norm
                .map(|(g, eps)| group_norm(g, self.query_dim, eps, device)),
            to_q: linear(self.query_dim, inner, self.bias, device).into(),
            to_k: linear(kv_dim, inner, self.bias, device).into(),
            to_v: linear(kv_dim, inner, self.bias, device).into(),
            to_out: vec![linear(inner, self.query_dim, true, device).into()],
            heads: self.heads,
            residual_connection: self.residual_connection,
            rescale_output_factor: self.rescale_output_factor,
            processor: ProcessorSlot::default(),
        }
    }
}

impl Attention {
    /// Attention over a token sequence through the layer's processor (diffusers'
    /// `Attention.forward`, which calls `self.processor(...)`).
    ///
    /// # Shapes
    /// - `x`: `[batch, n, query_dim]`
    /// - `context`: `[batch, m, cross_attention_dim]` (plus image-prompt tokens), or `None`
    ///   for self-attention
    /// - `bias`: additive mask broadcastable to `[batch, heads, n, m]`
    /// - output: `[batch, n, query_dim]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: Option<&EncoderHiddenStates>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        let _span = tracing::trace_span!("Attention").entered();
        self.processor.get().call(self, x, context, bias)
    }

    /// The processor in use (diffusers' `get_processor`).
    pub fn get_processor(&self) -> AttnProcessorRef {
        self.processor.get()
    }

    /// Replaces the processor (diffusers' `set_processor`); every holder of this layer sees it.
    pub fn set_processor(&self, processor: AttnProcessorRef) {
        self.processor.set(processor);
    }

    /// The width of one head (`inner_dim / heads`).
    pub fn head_dim(&self) -> usize {
        self.to_q.dims()[1] / self.heads.max(1)
    }

    /// diffusers' `Attention.scale`: `dim_head ** -0.5`.
    pub fn scale(&self) -> f64 {
        (self.head_dim() as f64).powf(-0.5)
    }

    /// The input of the projections: the group-normalised tokens when the layer has a group
    /// norm (the VAE's form), else `x`; and whether torch holds them as a transposed view
    /// (diffusers' processor feeds the projections a transposed view when it group-normalises,
    /// and torch rounds such a half-precision linear twice).
    pub fn prepare_input(&self, x: Tensor<3>) -> (Tensor<3>, bool) {
        match &self.group_norm {
            Some(norm) => (
                crate::precision::group_norm(norm, x.swap_dims(1, 2)).swap_dims(1, 2),
                true,
            ),
            None => (x, false),
        }
    }

    /// One of the projections over tokens (`strided` as [`prepare_input`](Self::prepare_input)
    /// returns it).
    pub fn project(&self, layer: &LoraLinear, t: Tensor<3>, strided: bool) -> Tensor<3> {
        if strided {
            lora_linear_tokens_strided(layer, t)
        } else {
            lora_linear_tokens(layer, t)
        }
    }

    /// `to_out.0`, then the residual and the output rescaling.
    pub fn finish(&self, out: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let mut out = match self.to_out.first() {
            Some(proj) => lora_linear_tokens(proj, out),
            None => out,
        };
        if self.residual_connection {
            out = out + residual;
        }
        if self.rescale_output_factor != 1.0 {
            out = out.div_scalar(self.rescale_output_factor);
        }
        out
    }

    /// Attention over the pixels of a feature map (the VAE mid block's form).
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`
    /// - output: same
    pub fn forward_spatial(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let seq = x.reshape([b, c, h * w]).swap_dims(1, 2);
        let out = self.forward(seq, None, None);
        out.swap_dims(1, 2).reshape([b, c, h, w])
    }
}

impl NamedLayers for Attention {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        f(prefix, NamedLayer::Attention(self));
        visit_fields!(self, prefix, f; to_q, to_k, to_v, to_out);
    }
}

/// diffusers' `GEGLU`: one projection to twice the width, halves multiplied as `a * gelu(b)`.
#[derive(Module, Debug)]
pub struct Geglu {
    /// The projection to `2 * inner_dim`.
    pub proj: LoraLinear,
}

impl Geglu {
    /// # Shapes
    /// - `x`: `[batch, n, dim]`
    /// - output: `[batch, n, inner_dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let _span = tracing::trace_span!("GEGLU").entered();
        let h = lora_linear_tokens(&self.proj, x);
        let width = h.dims()[2] / 2;
        let hidden = h.clone().narrow(2, 0, width);
        let gate = h.narrow(2, width, width);
        hidden * crate::precision::elementwise(gate, gelu)
    }
}

/// One entry of `FeedForward.net`, whose state-dict keys are `net.0.proj.*` and `net.2.*`.
#[derive(Module, Debug)]
pub enum FeedForwardLayer {
    /// `net.0`: the GEGLU input projection.
    Geglu(Geglu),
    /// `net.1`: a dropout, without weights.
    Dropout(Dropout),
    /// `net.2`: the output projection.
    Linear(LoraLinear),
}

/// diffusers' `FeedForward` with the default `geglu` activation and `mult = 4`.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `[GEGLU, Dropout, Linear]`, indexed as in PyTorch's `ModuleList`.
    pub net: Vec<FeedForwardLayer>,
}

impl FeedForward {
    /// Builds the layer for width `dim`.
    pub fn new(dim: usize, device: &Device) -> Self {
        let inner = dim * 4;
        Self {
            net: vec![
                FeedForwardLayer::Geglu(Geglu {
                    proj: linear(dim, inner * 2, true, device).into(),
                }),
                FeedForwardLayer::Dropout(DropoutConfig::new(0.0).init()),
                FeedForwardLayer::Linear(linear(inner, dim, true, device).into()),
            ],
        }
    }

    /// # Shapes
    /// - `x`: `[batch, n, dim]`
    /// - output: `[batch, n, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let _span = tracing::trace_span!("FeedForward").entered();
        self.net.iter().fold(x, |h, layer| match layer {
            FeedForwardLayer::Geglu(g) => g.forward(h),
            FeedForwardLayer::Dropout(_) => h,
            FeedForwardLayer::Linear(l) => lora_linear_tokens(l, h),
        })
    }
}

impl NamedLayers for FeedForward {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        let net = join(prefix, "net");
        for (i, layer) in self.net.iter().enumerate() {
            let name = join(&net, &i.to_string());
            match layer {
                FeedForwardLayer::Geglu(g) => g.proj.visit_named(&join(&name, "proj"), f),
                FeedForwardLayer::Dropout(_) => {}
                FeedForwardLayer::Linear(l) => l.visit_named(&name, f),
            }
        }
    }
}

/// diffusers' `BasicTransformerBlock` with `norm_type = "layer_norm"`: self-attention,
/// cross-attention and a GEGLU feed-forward, each pre-normed and residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    /// Norm before `attn1`.
    pub norm1: LayerNorm,
    /// Self-attention (cross-attention when `only_cross_attention`).
    pub attn1: Attention,
    /// Norm before `attn2`.
    pub norm2: LayerNorm,
    /// Cross-attention to the text states.
    pub attn2: Attention,
    /// Norm before `ff`.
    pub norm3: LayerNorm,
    /// Feed-forward.
    pub ff: FeedForward,
    /// `attn1` attends to the text states too.
    pub only_cross_attention: bool,
}

impl BasicTransformerBlock {
    /// Builds the block.
    pub fn new(
        dim: usize,
        heads: usize,
        dim_head: usize,
        cross_attention_dim: usize,
        only_cross_attention: bool,
        device: &Device,
    ) -> Self {
        let attn = |cross: Option<usize>| {
            AttentionConfig {
                query_dim: dim,
                cross_attention_dim: cross,
                heads,
                dim_head,
                bias: false,
                group_norm: None,
                residual_connection: false,
                rescale_output_factor: 1.0,
            }
            .init(device)
        };
        let norm = || LayerNormConfig::new(dim).with_epsilon(1e-5).init(device);
        Self {
            norm1: norm(),
            attn1: attn(only_cross_attention.then_some(cross_attention_dim)),
            norm2: norm(),
            attn2: attn(Some(cross_attention_dim)),
            norm3: norm(),
            ff: FeedForward::new(dim, device),
            only_cross_attention,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, n, dim]`
    /// - `context`: `[batch, m, cross_attention_dim]`
    /// - `context_bias`: additive mask over the context tokens, broadcastable to
    ///   `[batch, heads, n, m]`
    /// - output: `[batch, n, dim]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: &EncoderHiddenStates,
        context_bias: Option<&Tensor<4>>,
    ) -> Tensor<3> {
        let _span = tracing::trace_span!("BasicTransformerBlock").entered();
        let h = crate::precision::layer_norm(&self.norm1, x.clone());
        let h = if self.only_cross_attention {
            self.attn1.forward(h, Some(context), context_bias.cloned())
        } else {
            self.attn1.forward(h, None, None)
        };
        let x = h + x;
        let h = crate::precision::layer_norm(&self.norm2, x.clone());
        let x = self.attn2.forward(h, Some(context), context_bias.cloned()) + x;
        let h = crate::precision::layer_norm(&self.norm3, x.clone());
        self.ff.forward(h) + x
    }
}

impl NamedLayers for BasicTransformerBlock {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; attn1, attn2, ff);
    }
}

/// `proj_in` / `proj_out` of a [`Transformer2DModel`]: a 1x1 convolution (SD 1.x) or a linear
/// layer (`use_linear_projection`, SD 2.x and SDXL).
#[derive(Module, Debug)]
pub enum Projection {
    /// 1x1 convolution over the feature map.
    Conv(LoraConv2d),
    /// Linear layer over the token sequence.
    Linear(LoraLinear),
}

impl NamedLayers for Projection {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        match self {
            Self::Conv(c) => c.visit_named(prefix, f),
            Self::Linear(l) => l.visit_named(prefix, f),
        }
    }
}

/// Settings of a [`Transformer2DModel`].
#[derive(Debug, Clone)]
pub struct Transformer2DConfig {
    /// Heads.
    pub num_attention_heads: usize,
    /// Width of one head.
    pub attention_head_dim: usize,
    /// Channels of the feature map.
    pub in_channels: usize,
    /// Stacked transformer blocks.
    pub num_layers: usize,
    /// Width of the text states.
    pub cross_attention_dim: usize,
    /// Groups of the input norm.
    pub norm_num_groups: usize,
    /// Linear instead of 1x1 conv projections.
    pub use_linear_projection: bool,
    /// `attn1` attends to the text states too.
    pub only_cross_attention: bool,
}

impl Transformer2DConfig {
    /// Builds the model.
    pub fn init(&self, device: &Device) -> Transformer2DModel {
        let inner = self.num_attention_heads * self.attention_head_dim;
        let proj = |a: usize, b: usize| {
            if self.use_linear_projection {
                Projection::Linear(linear(a, b, true, device).into())
            } else {
                Projection::Conv(conv2d(a, b, 1, 1, 0, device).into())
            }
        };
        Transformer2DModel {
            norm: group_norm(self.norm_num_groups, self.in_channels, 1e-6, device),
            proj_in: proj(self.in_channels, inner),
            transformer_blocks: (0..self.num_layers)
                .map(|_| {
                    BasicTransformerBlock::new(
                        inner,
                        self.num_attention_heads,
                        self.attention_head_dim,
                        self.cross_attention_dim,
                        self.only_cross_attention,
                        device,
                    )
                })
                .collect(),
            proj_out: proj(inner, self.in_channels),
        }
    }
}

/// diffusers' `Transformer2DModel` for continuous inputs: norm, project to tokens, transformer
/// blocks, project back, add the input.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    /// Input group norm (eps 1e-6).
    pub norm: GroupNorm,
    /// Projection to the transformer width.
    pub proj_in: Projection,
    /// The blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// Projection back to the channels.
    pub proj_out: Projection,
}

impl Transformer2DModel {
    /// # Shapes
    /// - `x`: `[batch, in_channels, height, width]`
    /// - `context`: `[batch, m, cross_attention_dim]`
    /// - output: same as `x`
    pub fn forward(
        &self,
        x: Tensor<4>,
        context: &EncoderHiddenStates,
        context_bias: Option<&Tensor<4>>,
    ) -> Tensor<4> {
        let _span = tracing::trace_span!("Transformer2DModel").entered();
        let [b, _, h, w] = x.dims();
        let residual = x.clone();
        let x = crate::precision::group_norm(&self.norm, x);
        let to_tokens = |t: Tensor<4>| {
            let c = t.dims()[1];
            t.permute([0, 2, 3, 1]).reshape([b, h * w, c])
        };
        let to_map = |t: Tensor<3>| {
            let c = t.dims()[2];
            t.reshape([b, h, w, c]).permute([0, 3, 1, 2])
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(c) => to_tokens(c.forward(x)),
            Projection::Linear(l) => lora_linear_tokens(l, to_tokens(x)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context, context_bias);
        }
        let out = match &self.proj_out {
            Projection::Conv(c) => c.forward(to_map(tokens)),
            Projection::Linear(l) => to_map(lora_linear_tokens(l, tokens)),
        };
        out + residual
    }
}

impl NamedLayers for Transformer2DModel {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; proj_in, transformer_blocks, proj_out);
    }
}
