//! IP-Adapter image projections (diffusers `models/embeddings.py`: `ImageProjection`,
//! `IPAdapterFullImageProjection`, `IPAdapterPlusImageProjection`,
//! `MultiIPAdapterImageProjection`) and loading adapters into a UNet as diffusers'
//! `loaders/unet.py` does (`_convert_ip_adapter_image_proj_to_diffusers`,
//! `_convert_ip_adapter_attn_to_diffusers`, `_load_ip_adapter_weights`).
//!
//! The adapters are runtime state of a shared UNet, as diffusers' `unet.encoder_hid_proj` and
//! attention processors are: the projections live in the UNet's [`IpAdapterSlot`] (an
//! `Arc<RwLock<..>>` field marked `#[module(skip)]`), the `to_k_ip` / `to_v_ip` projections in
//! the cross-attention layers' [`IPAdapterAttnProcessor2_0`]s; every holder of the UNet's `Arc`
//! (pipelines made by `from_pipe`) sees a load or an unload.
//!
//! Loading is all or nothing: every key, shape and processor is checked and built before the
//! UNet is touched.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::ModelError;
use crate::attention::{linear_tokens, scaled_dot_product_attention};
use crate::attention_processor::{
    AttnProcessor2_0, AttnProcessorRef, AttnProcessorSetting, IPAdapterAttnProcessor2_0,
    IpAdapterLayer, attention_layers,
};
use crate::unet_2d_condition::UNet2DConditionModel;

/// One float tensor of an IP-Adapter state dict (row-major, PyTorch's layout).
#[derive(Debug, Clone, PartialEq)]
pub struct StateTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub values: Vec<f32>,
}

/// An IP-Adapter checkpoint as diffusers splits it: `image_proj` and `ip_adapter` (the
/// safetensors prefixes `image_proj.` / `ip_adapter.` removed, or a `.bin`'s two dictionaries).
#[derive(Debug, Clone, Default)]
pub struct IpAdapterStateDict {
    /// The image projection's tensors (`proj.weight`, `latents`, `proj.3.weight`, ...).
    pub image_proj: BTreeMap<String, StateTensor>,
    /// The cross-attention projections (`1.to_k_ip.weight`, `1.to_v_ip.weight`, `3.…`).
    pub ip_adapter: BTreeMap<String, StateTensor>,
    /// Where it came from (named in errors).
    pub source: String,
}

/// The IP-Adapter variant, from the `image_proj` keys (diffusers' detection order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpAdapterKind {
    /// `proj.weight`: `ImageProjection`, 4 tokens from the pooled image embedding.
    Plain,
    /// `proj.3.weight`: `IPAdapterFullImageProjection`, 257 tokens from the penultimate
    /// hidden states.
    Full,
    /// `perceiver_resampler.proj_in.weight`: IP-Adapter FaceID Plus (not supported yet).
    FaceIdPlus,
    /// `norm.weight` only: IP-Adapter FaceID (not supported yet).
    FaceId,
    /// Otherwise: `IPAdapterPlusImageProjection` (Resampler, `latents`).
    Plus,
}

impl IpAdapterKind {
    /// diffusers' detection from the `image_proj` keys.
    pub fn detect(image_proj: &BTreeMap<String, StateTensor>) -> Self {
        if image_proj.contains_key("proj.weight") {
            Self::Plain
        } else if image_proj.contains_key("proj.3.weight") {
            Self::Full
        } else if image_proj.contains_key("perceiver_resampler.proj_in.weight") {
            Self::FaceIdPlus
        } else if image_proj.contains_key("norm.weight") {
            Self::FaceId
        } else {
            Self::Plus
        }
    }
}

fn ip_error(source: &str, key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::IpAdapter {
        checkpoint: source.to_owned(),
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Builds modules from a state dict, strictly: each key taken once with its shape checked,
/// leftovers refused (`load_state_dict(strict=True)`).
struct Take<'a> {
    dict: BTreeMap<String, StateTensor>,
    source: &'a str,
    prefix: &'a str,
    device: &'a Device,
    dtype: DType,
}

impl Take<'_> {
    fn raw(&mut self, key: &str, shape: &[usize]) -> Result<StateTensor, ModelError> {
        let full = format!("{}{key}", self.prefix);
        let t = self
            .dict
            .remove(key)
            .ok_or_else(|| ip_error(self.source, &full, "missing"))?;
        if t.shape != shape {
            return Err(ip_error(
                self.source,
                &full,
                format!("shape {:?}, expected {shape:?}", t.shape),
            ));
        }
        Ok(t)
    }

    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Tensor<D>, ModelError> {
        let t = self.raw(key, &shape)?;
        Ok(Tensor::<D>::from_data(TensorData::new(t.values, shape), self.device).cast(self.dtype))
    }

    /// A torch `Linear(d_in, d_out)` (`weight` `[d_out, d_in]`).
    fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear, ModelError> {
        let w = self.tensor(&format!("{prefix}.weight"), [d_out, d_in])?;
        let b = if bias {
            Some(Param::from_tensor(
                self.tensor(&format!("{prefix}.bias"), [d_out])?,
            ))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(w.transpose()),
            bias: b,
        })
    }

    fn layer_norm(&mut self, prefix: &str, d: usize) -> Result<LayerNorm, ModelError> {
        let mut norm = LayerNormConfig::new(d).init(self.device);
        norm.gamma = Param::from_tensor(self.tensor(&format!("{prefix}.weight"), [d])?);
        norm.beta = Some(Param::from_tensor(
            self.tensor(&format!("{prefix}.bias"), [d])?,
        ));
        Ok(norm)
    }

    /// The first dimension of `key`'s shape, for sizes diffusers reads off the state dict.
    fn dim(&self, key: &str, axis: usize) -> Result<usize, ModelError> {
        self.dict
            .get(key)
            .and_then(|t| t.shape.get(axis).copied())
            .ok_or_else(|| {
                ip_error(
                    self.source,
                    &format!("{}{key}", self.prefix),
                    format!("missing (or has fewer than {} dimensions)", axis + 1),
                )
            })
    }

    fn finish(self) -> Result<(), ModelError> {
        match self.dict.keys().next() {
            None => Ok(()),
            Some(k) => Err(ip_error(
                self.source,
                &format!("{}{k}", self.prefix),
                format!("unexpected key ({} unexpected in all)", self.dict.len()),
            )),
        }
    }
}

/// diffusers' `ImageProjection`: `Linear(image_embed_dim, tokens * cross_attention_dim)`, then
/// `LayerNorm` over each token.
#[derive(Module, Debug)]
pub struct ImageProjection {
    /// `image_embeds` (the checkpoint's `proj`).
    pub image_embeds: Linear,
    /// `norm`.
    pub norm: LayerNorm,
    /// `num_image_text_embeds` (4).
    pub num_image_text_embeds: usize,
}

impl ImageProjection {
    /// # Shapes
    /// - `x`: `[n, image_embed_dim]`; output `[n, tokens, cross_attention_dim]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<3> {
        let n = x.dims()[0];
        let y = crate::precision::linear(&self.image_embeds, x);
        let y = y.reshape([n as i32, self.num_image_text_embeds as i32, -1]);
        crate::precision::layer_norm(&self.norm, y)
    }
}

/// diffusers' `IPAdapterFullImageProjection`: `FeedForward(gelu, mult=1)` then `LayerNorm`.
#[derive(Module, Debug)]
pub struct IPAdapterFullImageProjection {
    /// `ff.net.0.proj` (the checkpoint's `proj.0`).
    pub ff_in: Linear,
    /// `ff.net.2` (`proj.2`).
    pub ff_out: Linear,
    /// `norm` (`proj.3`).
    pub norm: LayerNorm,
}

impl IPAdapterFullImageProjection {
    /// # Shapes
    /// - `x`: `[n, seq, image_embed_dim]`; output `[n, seq, cross_attention_dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = linear_tokens(&self.ff_in, x);
        let h = crate::precision::elementwise(h, gelu);
        let h = linear_tokens(&self.ff_out, h);
        crate::precision::layer_norm(&self.norm, h)
    }
}

/// The attention of a Resampler block (diffusers' `Attention(query_dim, heads, dim_head=64,
/// out_bias=False)`, no biases).
#[derive(Module, Debug)]
pub struct ResamplerAttention {
    /// `to_q`.
    pub to_q: Linear,
    /// `to_k`.
    pub to_k: Linear,
    /// `to_v`.
    pub to_v: Linear,
    /// `to_out.0`.
    pub to_out: Linear,
    /// Number of heads (`to_q.weight.shape[0] // 64`).
    pub heads: usize,
}

/// diffusers' `IPAdapterPlusImageProjectionBlock`.
#[derive(Module, Debug)]
pub struct IPAdapterPlusImageProjectionBlock {
    /// `ln0` (over the image features).
    pub ln0: LayerNorm,
    /// `ln1` (over the latents).
    pub ln1: LayerNorm,
    /// `attn`.
    pub attn: ResamplerAttention,
    /// `ff.0` (LayerNorm).
    pub ff_norm: LayerNorm,
    /// `ff.1.net.0.proj` (no bias).
    pub ff_in: Linear,
    /// `ff.1.net.2` (no bias).
    pub ff_out: Linear,
}

impl IPAdapterPlusImageProjectionBlock {
    fn forward(&self, x: Tensor<3>, latents: Tensor<3>) -> Tensor<3> {
        let residual = latents.clone();
        let enc = crate::precision::layer_norm(&self.ln0, x);
        let latents = crate::precision::layer_norm(&self.ln1, latents);
        let enc = Tensor::cat(vec![enc, latents.clone()], 1);
        let a = &self.attn;
        let q = linear_tokens(&a.to_q, latents);
        let k = linear_tokens(&a.to_k, enc.clone());
        let v = linear_tokens(&a.to_v, enc);
        let out = scaled_dot_product_attention(q, k, v, a.heads, None);
        let latents = linear_tokens(&a.to_out, out) + residual;
        let h = crate::precision::layer_norm(&self.ff_norm, latents.clone());
        let h = crate::precision::elementwise(linear_tokens(&self.ff_in, h), gelu);
        linear_tokens(&self.ff_out, h) + latents
    }
}

/// diffusers' `IPAdapterPlusImageProjection` (IP-Adapter Plus's Resampler).
#[derive(Module, Debug)]
pub struct IPAdapterPlusImageProjection {
    /// `latents`, `[1, num_queries, hidden_dims]`.
    pub latents: Param<Tensor<3>>,
    /// `proj_in`.
    pub proj_in: Linear,
    /// `proj_out`.
    pub proj_out: Linear,
    /// `norm_out`.
    pub norm_out: LayerNorm,
    /// `layers`.
    pub layers: Vec<IPAdapterPlusImageProjectionBlock>,
}

impl IPAdapterPlusImageProjection {
    /// # Shapes
    /// - `x`: `[n, seq, embed_dims]`; output `[n, num_queries, output_dims]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let n = x.dims()[0];
        let [_, q, h] = self.latents.val().dims();
        let mut latents = self.latents.val().expand([n, q, h]);
        let x = linear_tokens(&self.proj_in, x);
        for block in &self.layers {
            latents = block.forward(x.clone(), latents);
        }
        let latents = linear_tokens(&self.proj_out, latents);
        crate::precision::layer_norm(&self.norm_out, latents)
    }
}

/// One adapter's image projection.
#[derive(Module, Debug)]
pub enum IpImageProjection {
    /// IP-Adapter (`ImageProjection`).
    Plain(ImageProjection),
    /// IP-Adapter Full (`IPAdapterFullImageProjection`).
    Full(IPAdapterFullImageProjection),
    /// IP-Adapter Plus (`IPAdapterPlusImageProjection`).
    Plus(IPAdapterPlusImageProjection),
}

/// The image embeddings of one adapter as the pipeline makes them.
#[derive(Debug, Clone)]
pub enum ImageEmbeds {
    /// The image encoder's `image_embeds`, `[batch, images, projection_dim]` (plain adapters).
    Pooled(Tensor<3>),
    /// The image encoder's penultimate hidden states, `[batch, images, seq, hidden]` (Plus and
    /// Full adapters).
    Hidden(Tensor<4>),
}

impl ImageEmbeds {
    /// The batch size.
    pub fn batch(&self) -> usize {
        match self {
            Self::Pooled(t) => t.dims()[0],
            Self::Hidden(t) => t.dims()[0],
        }
    }

    /// `torch.cat([x] * n)` along the batch.
    pub fn repeat(&self, n: usize) -> Self {
        match self {
            Self::Pooled(t) => Self::Pooled(Tensor::cat(vec![t.clone(); n.max(1)], 0)),
            Self::Hidden(t) => Self::Hidden(Tensor::cat(vec![t.clone(); n.max(1)], 0)),
        }
    }

    /// `torch.cat([a, b])` along the batch (both of the same kind).
    pub fn cat(a: &Self, b: &Self) -> Option<Self> {
        match (a, b) {
            (Self::Pooled(a), Self::Pooled(b)) => {
                Some(Self::Pooled(Tensor::cat(vec![a.clone(), b.clone()], 0)))
            }
            (Self::Hidden(a), Self::Hidden(b)) => {
                Some(Self::Hidden(Tensor::cat(vec![a.clone(), b.clone()], 0)))
            }
            _ => None,
        }
    }

    /// `x.chunk(2)`: the first and second halves of the batch.
    pub fn chunk2(&self) -> (Self, Self) {
        match self {
            Self::Pooled(t) => {
                let h = t.dims()[0] / 2;
                (
                    Self::Pooled(t.clone().narrow(0, 0, h)),
                    Self::Pooled(t.clone().narrow(0, h, t.dims()[0] - h)),
                )
            }
            Self::Hidden(t) => {
                let h = t.dims()[0] / 2;
                (
                    Self::Hidden(t.clone().narrow(0, 0, h)),
                    Self::Hidden(t.clone().narrow(0, h, t.dims()[0] - h)),
                )
            }
        }
    }
}

impl IpImageProjection {
    /// Builds the projection of one adapter from its `image_proj` state dict as diffusers'
    /// `_convert_ip_adapter_image_proj_to_diffusers` does (key renames included), strictly.
    /// FaceID variants are refused with a clear error.
    pub fn from_state_dict(
        image_proj: &BTreeMap<String, StateTensor>,
        source: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let kind = check_supported(image_proj, source)?;
        let renamed = convert_image_proj_keys(kind, image_proj);
        let mut take = Take {
            dict: renamed,
            source,
            prefix: "image_proj.",
            device,
            dtype,
        };
        let out = match kind {
            IpAdapterKind::Plain => {
                let tokens = 4;
                let clip = take.dim("image_embeds.weight", 1)?;
                let cross = take.dim("image_embeds.weight", 0)? / tokens;
                Self::Plain(ImageProjection {
                    image_embeds: take.linear("image_embeds", clip, tokens * cross, true)?,
                    norm: take.layer_norm("norm", cross)?,
                    num_image_text_embeds: tokens,
                })
            }
            IpAdapterKind::Full => {
                let clip = take.dim("ff.net.0.proj.weight", 0)?;
                let cross = take.dim("norm.weight", 0)?;
                Self::Full(IPAdapterFullImageProjection {
                    ff_in: take.linear("ff.net.0.proj", clip, clip, true)?,
                    ff_out: take.linear("ff.net.2", clip, cross, true)?,
                    norm: take.layer_norm("norm", cross)?,
                })
            }
            _ => Self::Plus(plus_from(&mut take)?),
        };
        take.finish()?;
        Ok(out)
    }

    /// The number of image tokens per image (diffusers' `num_image_text_embeds`: 4, 257 for
    /// Full, `latents.shape[1]` for Plus).
    pub fn num_tokens(&self) -> usize {
        match self {
            Self::Plain(p) => p.num_image_text_embeds,
            Self::Full(_) => 257,
            Self::Plus(p) => p.latents.val().dims()[1],
        }
    }

    /// Whether the pipeline feeds it the image encoder's penultimate hidden states
    /// (`not isinstance(layer, ImageProjection)`), rather than `image_embeds`.
    pub fn uses_hidden_states(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    /// The width of the tokens it makes (the UNet's `cross_attention_dim`).
    pub fn output_dim(&self) -> usize {
        match self {
            Self::Plain(p) => p.norm.gamma.val().dims()[0],
            Self::Full(p) => p.norm.gamma.val().dims()[0],
            Self::Plus(p) => p.norm_out.gamma.val().dims()[0],
        }
    }

    /// The dtype of its weights (inputs are cast to it, as `image_embeds.to(weight.dtype)`).
    pub fn dtype(&self) -> DType {
        match self {
            Self::Plain(p) => p.image_embeds.weight.val().dtype(),
            Self::Full(p) => p.ff_in.weight.val().dtype(),
            Self::Plus(p) => p.proj_in.weight.val().dtype(),
        }
    }

    /// The width of the embeddings it takes.
    pub fn input_dim(&self) -> usize {
        match self {
            Self::Plain(p) => p.image_embeds.weight.val().dims()[0],
            Self::Full(p) => p.ff_in.weight.val().dims()[0],
            Self::Plus(p) => p.proj_in.weight.val().dims()[0],
        }
    }
}

/// The variant of an `image_proj` state dict, refusing the FaceID variants with a clear error.
pub fn check_supported(
    image_proj: &BTreeMap<String, StateTensor>,
    source: &str,
) -> Result<IpAdapterKind, ModelError> {
    let kind = IpAdapterKind::detect(image_proj);
    let (key, variant) = match kind {
        IpAdapterKind::FaceId => ("image_proj.norm.weight", "FaceID"),
        IpAdapterKind::FaceIdPlus => (
            "image_proj.perceiver_resampler.proj_in.weight",
            "FaceID Plus",
        ),
        _ => return Ok(kind),
    };
    Err(ip_error(
        source,
        key,
        format!(
            "this is an IP-Adapter {variant} checkpoint; FaceID variants are not supported yet (plain, Plus and Full IP-Adapters are)"
        ),
    ))
}

fn plus_from(take: &mut Take<'_>) -> Result<IPAdapterPlusImageProjection, ModelError> {
    let q = take.dim("latents", 1)?;
    let hidden = take.dim("latents", 2)?;
    let embed = take.dim("proj_in.weight", 1)?;
    let output = take.dim("proj_out.weight", 0)?;
    let heads = take.dim("layers.0.attn.to_q.weight", 0)? / 64;
    let inner = heads * 64;
    let latents = take.tensor("latents", [1, q, hidden])?;
    let proj_in = take.linear("proj_in", embed, hidden, true)?;
    let proj_out = take.linear("proj_out", hidden, output, true)?;
    let norm_out = take.layer_norm("norm_out", output)?;
    let mut layers = Vec::new();
    let mut i = 0;
    while take
        .dict
        .keys()
        .any(|k| k.starts_with(&format!("layers.{i}.")))
    {
        let p = format!("layers.{i}");
        let ffn = take.dim(&format!("{p}.ff.1.net.0.proj.weight"), 0)?;
        layers.push(IPAdapterPlusImageProjectionBlock {
            ln0: take.layer_norm(&format!("{p}.ln0"), hidden)?,
            ln1: take.layer_norm(&format!("{p}.ln1"), hidden)?,
            attn: ResamplerAttention {
                to_q: take.linear(&format!("{p}.attn.to_q"), hidden, inner, false)?,
                to_k: take.linear(&format!("{p}.attn.to_k"), hidden, inner, false)?,
                to_v: take.linear(&format!("{p}.attn.to_v"), hidden, inner, false)?,
                to_out: take.linear(&format!("{p}.attn.to_out.0"), inner, hidden, false)?,
                heads: heads.max(1),
            },
            ff_norm: take.layer_norm(&format!("{p}.ff.0"), hidden)?,
            ff_in: take.linear(&format!("{p}.ff.1.net.0.proj"), hidden, ffn, false)?,
            ff_out: take.linear(&format!("{p}.ff.1.net.2"), ffn, hidden, false)?,
        });
        i += 1;
    }
    Ok(IPAdapterPlusImageProjection {
        latents: Param::from_tensor(latents),
        proj_in,
        proj_out,
        norm_out,
        layers,
    })
}

/// The key renames of `_convert_ip_adapter_image_proj_to_diffusers`, in its order (the Plus
/// branch splits `to_kv` into `to_k` and `to_v`).
fn convert_image_proj_keys(
    kind: IpAdapterKind,
    dict: &BTreeMap<String, StateTensor>,
) -> BTreeMap<String, StateTensor> {
    let mut out = BTreeMap::new();
    for (key, value) in dict {
        match kind {
            IpAdapterKind::Plain => {
                out.insert(key.replace("proj", "image_embeds"), value.clone());
            }
            IpAdapterKind::Full => {
                let k = key
                    .replace("proj.0", "ff.net.0.proj")
                    .replace("proj.2", "ff.net.2")
                    .replace("proj.3", "norm");
                out.insert(k, value.clone());
            }
            _ => convert_plus_key(key, value, &mut out),
        }
    }
    out
}

fn convert_plus_key(key: &str, value: &StateTensor, out: &mut BTreeMap<String, StateTensor>) {
    let mut name = key.replace("0.to", "2.to");
    for i in 0..4 {
        name = name
            .replace(&format!("{i}.0.norm1"), &format!("{i}.ln0"))
            .replace(&format!("{i}.0.norm2"), &format!("{i}.ln1"));
    }
    let with_attn = |name: &str| {
        let mut parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            parts[2] = "attn";
        }
        parts.join(".")
    };
    if name.contains("to_kv") {
        let name = with_attn(&name);
        let (k, v) = chunk_rows(value);
        out.insert(name.replace("to_kv", "to_k"), k);
        out.insert(name.replace("to_kv", "to_v"), v);
    } else if name.contains("to_q") {
        out.insert(with_attn(&name), value.clone());
    } else if name.contains("to_out") {
        out.insert(
            with_attn(&name).replace("to_out", "to_out.0"),
            value.clone(),
        );
    } else {
        for i in 0..4 {
            name = name
                .replace(&format!("{i}.1.0"), &format!("{i}.ff.0"))
                .replace(&format!("{i}.1.1"), &format!("{i}.ff.1.net.0.proj"))
                .replace(&format!("{i}.1.3"), &format!("{i}.ff.1.net.2"));
        }
        out.insert(name, value.clone());
    }
}

/// `value.chunk(2, dim=0)`.
fn chunk_rows(value: &StateTensor) -> (StateTensor, StateTensor) {
    let rows = value.shape.first().copied().unwrap_or(0);
    let first = rows.div_ceil(2);
    let row_len: usize = value.shape.iter().skip(1).product();
    let split = (first * row_len).min(value.values.len());
    let shape = |r: usize| {
        let mut s = value.shape.clone();
        if let Some(d) = s.first_mut() {
            *d = r;
        }
        s
    };
    (
        StateTensor {
            shape: shape(first),
            values: value.values[..split].to_vec(),
        },
        StateTensor {
            shape: shape(rows - first),
            values: value.values[split..].to_vec(),
        },
    )
}

/// diffusers' `MultiIPAdapterImageProjection`: one projection per loaded adapter.
#[derive(Module, Debug)]
pub struct MultiIPAdapterImageProjection {
    /// `image_projection_layers`.
    pub image_projection_layers: Vec<IpImageProjection>,
}

impl MultiIPAdapterImageProjection {
    /// `num_ip_adapters`.
    pub fn num_ip_adapters(&self) -> usize {
        self.image_projection_layers.len()
    }

    /// Projects each adapter's embeddings to its image tokens, flattened over the images:
    /// `[batch, images * tokens, cross_attention_dim]` (what the processors attend to).
    pub fn forward(&self, image_embeds: &[ImageEmbeds]) -> Result<Vec<Tensor<3>>, ModelError> {
        let n = self.image_projection_layers.len();
        if image_embeds.len() != n {
            return Err(ModelError::InvalidInput {
                model: "MultiIPAdapterImageProjection".to_owned(),
                reason: format!(
                    "image_embeds must have the same length as image_projection_layers, got {} and {n}",
                    image_embeds.len()
                ),
            });
        }
        let bad = |i: usize, reason: String| ModelError::InvalidInput {
            model: "MultiIPAdapterImageProjection".to_owned(),
            reason: format!("IP-Adapter {i}: {reason}"),
        };
        let mut out = Vec::with_capacity(n);
        for (i, (embeds, layer)) in image_embeds
            .iter()
            .zip(&self.image_projection_layers)
            .enumerate()
        {
            let want = layer.input_dim();
            let dtype = layer.dtype();
            let hidden = |t: &Tensor<4>, f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
                let [b, m, s, d] = t.dims();
                if d != want {
                    return Err(bad(
                        i,
                        format!("hidden states are {d} wide, the projection takes {want}"),
                    ));
                }
                let y = f(t.clone().reshape([b * m, s, d]).cast(dtype));
                let [_, tok, c] = y.dims();
                Ok(y.reshape([b, m * tok, c]))
            };
            let projected = match (layer, embeds) {
                (IpImageProjection::Plain(p), ImageEmbeds::Pooled(t)) => {
                    let [b, m, d] = t.dims();
                    if d != want {
                        return Err(bad(
                            i,
                            format!("image embeds are {d} wide, the projection takes {want}"),
                        ));
                    }
                    let y = p.forward(t.clone().reshape([b * m, d]).cast(dtype));
                    let [_, tok, c] = y.dims();
                    y.reshape([b, m * tok, c])
                }
                (IpImageProjection::Full(p), ImageEmbeds::Hidden(t)) => {
                    hidden(t, &|x| p.forward(x))?
                }
                (IpImageProjection::Plus(p), ImageEmbeds::Hidden(t)) => {
                    hidden(t, &|x| p.forward(x))?
                }
                (IpImageProjection::Plain(_), ImageEmbeds::Hidden(t)) => {
                    return Err(bad(
                        i,
                        format!(
                            "a plain IP-Adapter takes pooled image embeds [batch, images, dim], got hidden states {:?}",
                            t.dims()
                        ),
                    ));
                }
                (_, ImageEmbeds::Pooled(t)) => {
                    return Err(bad(
                        i,
                        format!(
                            "this IP-Adapter takes the image encoder's hidden states [batch, images, seq, dim], got {:?}",
                            t.dims()
                        ),
                    ));
                }
            };
            out.push(projected);
        }
        Ok(out)
    }
}

/// The UNet's IP-Adapter image projections (diffusers' `unet.encoder_hid_proj` when
/// `encoder_hid_dim_type == "ip_image_proj"`), shared by every clone and `Arc` holder.
#[derive(Debug, Clone, Default)]
pub struct IpAdapterSlot(Arc<RwLock<Option<Arc<MultiIPAdapterImageProjection>>>>);

impl IpAdapterSlot {
    /// The projections, `None` when no IP-Adapter is loaded.
    pub fn get(&self) -> Option<Arc<MultiIPAdapterImageProjection>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the projections.
    pub fn set(&self, value: Option<Arc<MultiIPAdapterImageProjection>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// IP-Adapter loading and unloading (diffusers' `UNet2DConditionLoadersMixin`).
impl UNet2DConditionModel {
    /// The loaded IP-Adapters' image projections (`encoder_hid_proj`), `None` without any.
    pub fn ip_image_projection(&self) -> Option<Arc<MultiIPAdapterImageProjection>> {
        self.ip_adapter_projection.get()
    }

    /// diffusers' `_load_ip_adapter_weights`: one `IPAdapterAttnProcessor2_0` per
    /// cross-attention layer (in `attn_processors` order, weights `{key_id}.to_k_ip.weight`
    /// with `key_id` 1, 3, 5, ...), each holding every adapter of `state_dicts`, scale 1; the
    /// self-attention processors are kept; the projections replace `encoder_hid_proj`.
    /// Replaces adapters loaded before. Nothing changes when any key or shape is wrong.
    pub fn load_ip_adapter_weights(
        &self,
        state_dicts: &[IpAdapterStateDict],
    ) -> Result<(), ModelError> {
        if state_dicts.is_empty() {
            return Err(ModelError::InvalidInput {
                model: "UNet2DConditionModel".to_owned(),
                reason: "no IP-Adapter state dict given".to_owned(),
            });
        }
        let dtype = self.settings.dtype;
        let device = self.conv_out.base.weight.val().device();
        // Projections first (their kinds give the processors' token counts).
        let mut projections = Vec::with_capacity(state_dicts.len());
        for sd in state_dicts {
            let p = IpImageProjection::from_state_dict(&sd.image_proj, &sd.source, &device, dtype)?;
            projections.push(p);
        }
        let mut setting = Vec::new();
        let mut key_id = 1usize;
        for (name, attn) in attention_layers(self) {
            if name.ends_with("attn1.processor") {
                setting.push((name, attn.get_processor()));
                continue;
            }
            let hidden = attn.to_q.base.weight.val().dims()[0];
            let cross = attn.to_k.base.weight.val().dims()[0];
            let mut layers = Vec::with_capacity(state_dicts.len());
            for (sd, proj) in state_dicts.iter().zip(&projections) {
                let mut take = Take {
                    dict: BTreeMap::new(),
                    source: &sd.source,
                    prefix: "ip_adapter.",
                    device: &device,
                    dtype,
                };
                for part in ["to_k_ip", "to_v_ip"] {
                    let key = format!("{key_id}.{part}.weight");
                    if let Some(t) = sd.ip_adapter.get(&key) {
                        take.dict.insert(key, t.clone());
                    }
                }
                let mut weight = |part: &str| -> Result<Tensor<2>, ModelError> {
                    let key = format!("{key_id}.{part}.weight");
                    take.tensor(&key, [hidden, cross]).map_err(|e| match e {
                        ModelError::IpAdapter { checkpoint, key, reason } => ModelError::IpAdapter {
                            checkpoint,
                            key,
                            reason: format!(
                                "{reason} (for {name}: hidden size {hidden}, cross_attention_dim {cross}; is this IP-Adapter made for another base model, e.g. SDXL vs SD 1.5?)"
                            ),
                        },
                        other => other,
                    })
                };
                let k = weight("to_k_ip")?;
                let v = weight("to_v_ip")?;
                layers.push(IpAdapterLayer::from_torch(k, v, proj.num_tokens()));
            }
            let processor: AttnProcessorRef = Arc::new(IPAdapterAttnProcessor2_0::new(layers));
            setting.push((name, processor));
            key_id += 2;
        }
        for (sd, proj) in state_dicts.iter().zip(&projections) {
            if proj.output_dim() != self.settings.context_dim {
                return Err(ip_error(
                    &sd.source,
                    "image_proj",
                    format!(
                        "the image projection makes {}-wide tokens, this UNet's cross_attention_dim is {} (an IP-Adapter for another base model?)",
                        proj.output_dim(),
                        self.settings.context_dim
                    ),
                ));
            }
        }
        self.set_attn_processor(AttnProcessorSetting::ByName(setting))?;
        self.ip_adapter_projection
            .set(Some(Arc::new(MultiIPAdapterImageProjection {
                image_projection_layers: projections,
            })));
        Ok(())
    }

    /// The UNet half of diffusers' `unload_ip_adapter`: `encoder_hid_proj = None`, and every
    /// IP-Adapter processor replaced by `AttnProcessor2_0` (the others kept).
    pub fn unload_ip_adapter(&self) -> Result<(), ModelError> {
        self.ip_adapter_projection.set(None);
        let default: AttnProcessorRef = Arc::new(AttnProcessor2_0);
        let setting = self
            .attn_processors()
            .into_iter()
            .map(|(name, p)| {
                if p.as_any().is::<IPAdapterAttnProcessor2_0>() {
                    (name, default.clone())
                } else {
                    (name, p)
                }
            })
            .collect();
        self.set_attn_processor(AttnProcessorSetting::ByName(setting))
    }

    /// Number of parameters of the loaded IP-Adapters (projections and every processor's
    /// `to_k_ip` / `to_v_ip`), which live outside the UNet's module tree.
    pub fn ip_adapter_num_params(&self) -> usize {
        let proj = self.ip_image_projection().map_or(0, |p| p.num_params());
        let layers: usize = self
            .attn_processors()
            .iter()
            .filter_map(|(_, p)| {
                p.as_any()
                    .downcast_ref::<IPAdapterAttnProcessor2_0>()
                    .map(|ip| {
                        ip.layers()
                            .iter()
                            .map(|l| l.to_k_ip.num_params() + l.to_v_ip.num_params())
                            .sum::<usize>()
                    })
            })
            .sum();
        proj + layers
    }
}
