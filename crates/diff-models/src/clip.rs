//! transformers' CLIP text encoders: `CLIPTextModel` (SD 1.x/2.x, SDXL's first encoder) and
//! `CLIPTextModelWithProjection` (SDXL's second encoder), plus the transformer encoder they share
//! with the vision model (`clip_vision.rs`).
//!
//! Numerics follow `transformers/models/clip/modeling_clip.py` (5.23): pre-norm encoder layers,
//! causal self-attention scaled by `head_dim^-0.5`, `hidden_act` from the config, a final layer
//! norm, and the pooled output taken at the EOS position the way transformers picks it (see
//! [`CLIPTextModel::eos_positions`]). `hidden_states` holds the embeddings and every layer's
//! output (before the final layer norm), so pipelines can take `hidden_states[-2]` (SDXL,
//! `clip_skip`).

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, gelu_approximate, relu, sigmoid, silu};
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use diff_format::configs::clip::{CLIPTextConfig, TokenIds};

use crate::ModelError;
use crate::lora::{LoraLayerRef, LoraLinear, LoraModel};
use crate::named::{NamedLayer, NamedLayers, join, visit_fields};

/// The activations transformers' `ACT2FN` offers that CLIP checkpoints use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// `gelu`: the exact erf GELU (OpenCLIP ViT-H/bigG: SD 2.x, SDXL).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl HiddenAct {
    /// Parses a `hidden_act` value; `model` names the class in the error.
    pub fn parse(value: &str, model: &str) -> Result<Self, ModelError> {
        Ok(match value {
            "quick_gelu" => HiddenAct::QuickGelu,
            "gelu" => HiddenAct::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => HiddenAct::GeluTanh,
            "relu" => HiddenAct::Relu,
            "silu" | "swish" => HiddenAct::Silu,
            other => {
                return Err(ModelError::UnsupportedConfig {
                    model: model.to_string(),
                    key: "hidden_act".to_string(),
                    value: format!("{other:?}"),
                    reason: "supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu, silu"
                        .to_string(),
                });
            }
        })
    }

    /// Applies the activation.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            // transformers' QuickGELU is three torch ops (`x * sigmoid(1.702 * x)`), each
            // rounded to a half dtype on its own.
            HiddenAct::QuickGelu => {
                let t = crate::precision::elementwise(x.clone(), |x| x * 1.702);
                x * crate::precision::elementwise(t, sigmoid)
            }
            HiddenAct::Gelu => crate::precision::elementwise(x, gelu),
            HiddenAct::GeluTanh => crate::precision::elementwise(x, gelu_approximate),
            HiddenAct::Relu => relu(x),
            HiddenAct::Silu => crate::precision::elementwise(x, silu),
        }
    }
}

/// The sizes the shared encoder needs, from a text or vision config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub eps: f64,
    pub act: HiddenAct,
}

pub(crate) fn to_usize(value: u64, model: &str, key: &str) -> Result<usize, ModelError> {
    usize::try_from(value).map_err(|_| ModelError::UnsupportedConfig {
        model: model.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        reason: "does not fit in usize".to_string(),
    })
}

pub(crate) fn check_heads(dims: &EncoderDims, model: &str) -> Result<(), ModelError> {
    if dims.heads == 0 || !dims.hidden.is_multiple_of(dims.heads) {
        return Err(ModelError::UnsupportedConfig {
            model: model.to_string(),
            key: "num_attention_heads".to_string(),
            value: dims.heads.to_string(),
            reason: format!("hidden_size {} must be a multiple of it", dims.hidden),
        });
    }
    Ok(())
}

/// `CLIPAttention`: multi-head self-attention with q/k/v/out projections.
#[derive(Module, Debug)]
pub struct CLIPAttention {
    /// `k_proj`.
    pub k_proj: LoraLinear,
    /// `v_proj`.
    pub v_proj: LoraLinear,
    /// `q_proj`.
    pub q_proj: LoraLinear,
    /// `out_proj`.
    pub out_proj: LoraLinear,
    /// Number of heads.
    pub num_heads: usize,
}

impl CLIPAttention {
    fn new(dims: &EncoderDims, device: &Device) -> Self {
        let lin = || LoraLinear::from(LinearConfig::new(dims.hidden, dims.hidden).init(device));
        Self {
            k_proj: lin(),
            v_proj: lin(),
            q_proj: lin(),
            out_proj: lin(),
            num_heads: dims.heads,
        }
    }

    /// `[batch, seq, hidden]` -> `[batch, seq, hidden]`; `causal` masks future positions and
    /// `key_mask` (`[batch, heads, seq, seq]`, true = masked) hides padding keys.
    pub fn forward(
        &self,
        x: Tensor<3>,
        causal: bool,
        key_mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let head_dim = h / self.num_heads;
        let split = |t: Tensor<3>| t.reshape([b, s, self.num_heads, head_dim]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let scale = (head_dim as f64).powf(-0.5);
        let out = crate::precision::attention(q, k, v, key_mask, None, Some(scale), causal);
        self.out_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, h]))
    }
}

/// `CLIPMLP`: `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct CLIPMLP {
    /// `fc1`.
    pub fc1: LoraLinear,
    /// `fc2`.
    pub fc2: LoraLinear,
    /// `hidden_act`.
    #[module(skip)]
    pub act: HiddenAct,
}

impl CLIPMLP {
    /// Applies the MLP.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(self.act.forward(self.fc1.forward(x)))
    }
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP, each with a residual.
#[derive(Module, Debug)]
pub struct CLIPEncoderLayer {
    /// `self_attn`.
    pub self_attn: CLIPAttention,
    /// `layer_norm1`.
    pub layer_norm1: LayerNorm,
    /// `mlp`.
    pub mlp: CLIPMLP,
    /// `layer_norm2`.
    pub layer_norm2: LayerNorm,
}

impl CLIPEncoderLayer {
    /// Applies the layer.
    pub fn forward(
        &self,
        x: Tensor<3>,
        causal: bool,
        key_mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self.self_attn.forward(
                crate::precision::layer_norm(&self.layer_norm1, x),
                causal,
                key_mask,
            );
        h.clone()
            + self
                .mlp
                .forward(crate::precision::layer_norm(&self.layer_norm2, h))
    }
}

/// `CLIPEncoder`: the stack of layers.
#[derive(Module, Debug)]
pub struct CLIPEncoder {
    /// `layers`.
    pub layers: Vec<CLIPEncoderLayer>,
}

impl CLIPEncoder {
    pub(crate) fn new(dims: &EncoderDims, device: &Device) -> Self {
        let layers = (0..dims.layers)
            .map(|_| CLIPEncoderLayer {
                self_attn: CLIPAttention::new(dims, device),
                layer_norm1: LayerNormConfig::new(dims.hidden)
                    .with_epsilon(dims.eps)
                    .init(device),
                mlp: CLIPMLP {
                    fc1: LinearConfig::new(dims.hidden, dims.intermediate)
                        .init(device)
                        .into(),
                    fc2: LinearConfig::new(dims.intermediate, dims.hidden)
                        .init(device)
                        .into(),
                    act: dims.act,
                },
                layer_norm2: LayerNormConfig::new(dims.hidden)
                    .with_epsilon(dims.eps)
                    .init(device),
            })
            .collect();
        Self { layers }
    }

    /// Runs every layer; returns the input followed by each layer's output.
    pub fn forward(
        &self,
        x: Tensor<3>,
        causal: bool,
        key_mask: Option<Tensor<4, Bool>>,
    ) -> Vec<Tensor<3>> {
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        let mut h = x;
        for layer in &self.layers {
            states.push(h.clone());
            h = layer.forward(h, causal, key_mask.clone());
        }
        states.push(h);
        states
    }
}

/// `CLIPTextEmbeddings`: token plus absolute position embeddings.
#[derive(Module, Debug)]
pub struct CLIPTextEmbeddings {
    /// `token_embedding`.
    pub token_embedding: Embedding,
    /// `position_embedding`.
    pub position_embedding: Embedding,
}

/// What [`CLIPTextModel::forward`] returns (transformers' `BaseModelOutputWithPooling` with
/// `output_hidden_states=True`).
#[derive(Debug, Clone)]
pub struct CLIPTextOutput {
    /// The final-layer-normed output, `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<3>,
    /// The final state at each row's EOS position, `[batch, hidden]`.
    pub pooler_output: Tensor<2>,
    /// The embeddings and every layer's output (`num_hidden_layers + 1` tensors, the last one
    /// before the final layer norm), as transformers' `hidden_states`.
    pub hidden_states: Vec<Tensor<3>>,
}

/// transformers' `CLIPTextModel`.
///
/// State-dict keys are those transformers 5 uses (`embeddings.*`, `encoder.layers.N.*`,
/// `final_layer_norm.*`); its loading rules ([`crate::FromPretrained::load_options`]) also accept checkpoints written by
/// transformers 4 with the `text_model.` prefix (every SD text encoder on the Hub).
#[derive(Module, Debug)]
pub struct CLIPTextModel {
    /// `embeddings`.
    pub embeddings: CLIPTextEmbeddings,
    /// `encoder`.
    pub encoder: CLIPEncoder,
    /// `final_layer_norm`.
    pub final_layer_norm: LayerNorm,
    /// `eos_token_id` from the config.
    pub eos_token_id: i64,
    /// `vocab_size`, to validate token ids.
    pub vocab_size: usize,
    /// The config the model was built from.
    #[module(skip)]
    pub config: CLIPTextConfig,
}

const TEXT: &str = "CLIPTextModel";

impl CLIPTextModel {
    /// Builds the model (uninitialised parameters) from its config on `device`.
    pub fn new(config: &CLIPTextConfig, device: &Device) -> Result<Self, ModelError> {
        let dims = EncoderDims {
            hidden: to_usize(config.hidden_size, TEXT, "hidden_size")?,
            intermediate: to_usize(config.intermediate_size, TEXT, "intermediate_size")?,
            heads: to_usize(config.num_attention_heads, TEXT, "num_attention_heads")?,
            layers: to_usize(config.num_hidden_layers, TEXT, "num_hidden_layers")?,
            eps: config.layer_norm_eps.unwrap_or(1e-5),
            act: HiddenAct::parse(&config.hidden_act, TEXT)?,
        };
        check_heads(&dims, TEXT)?;
        let eos_token_id = match &config.eos_token_id {
            Some(TokenIds::One(id)) => *id,
            other => {
                return Err(ModelError::UnsupportedConfig {
                    model: TEXT.to_string(),
                    key: "eos_token_id".to_string(),
                    value: format!("{other:?}"),
                    reason: "the pooled output needs a single EOS token id".to_string(),
                });
            }
        };
        let vocab_size = to_usize(config.vocab_size, TEXT, "vocab_size")?;
        let max_pos = to_usize(
            config.max_position_embeddings,
            TEXT,
            "max_position_embeddings",
        )?;
        Ok(Self {
            embeddings: CLIPTextEmbeddings {
                token_embedding: EmbeddingConfig::new(vocab_size, dims.hidden).init(device),
                position_embedding: EmbeddingConfig::new(max_pos, dims.hidden).init(device),
            },
            encoder: CLIPEncoder::new(&dims, device),
            final_layer_norm: LayerNormConfig::new(dims.hidden)
                .with_epsilon(dims.eps)
                .init(device),
            eos_token_id,
            vocab_size,
            config: config.clone(),
        })
    }

    /// Where transformers pools each row: with `eos_token_id == 2` (configs older than
    /// transformers PR #24773) the position of the largest id (the first one on ties, as
    /// `torch.argmax`); otherwise the first position holding `eos_token_id` (0 if absent).
    pub fn eos_positions(&self, ids: &[i64], seq_len: usize) -> Vec<usize> {
        ids.chunks(seq_len.max(1))
            .map(|row| {
                if self.eos_token_id == 2 {
                    let mut best = 0;
                    for (i, v) in row.iter().enumerate() {
                        if row.get(best).is_some_and(|b| v > b) {
                            best = i;
                        }
                    }
                    best
                } else {
                    row.iter()
                        .position(|&v| v == self.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect()
    }

    /// Encodes `input_ids` (`[batch, seq]`, seq <= `max_position_embeddings`).
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> Result<CLIPTextOutput, ModelError> {
        self.forward_with_mask(input_ids, None)
    }

    /// Encodes `input_ids` with an optional padding `attention_mask` (`[batch, seq]`, 1 for
    /// tokens, 0 for padding), combined with the causal mask as transformers does. Pipelines
    /// pass one only when the text encoder's config has `use_attention_mask`.
    pub fn forward_with_mask(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Result<CLIPTextOutput, ModelError> {
        let _span =
            tracing::debug_span!("CLIPTextModel::forward", dims = ?input_ids.dims()).entered();
        crate::offload::enter(self);
        let [b, s] = input_ids.dims();
        let max_pos = self.embeddings.position_embedding.weight.dims()[0];
        if s > max_pos || s == 0 {
            return Err(ModelError::InvalidInput {
                model: TEXT.to_string(),
                reason: format!(
                    "sequence length {s} must be between 1 and max_position_embeddings {max_pos}"
                ),
            });
        }
        let ids = ids_to_host(input_ids.clone())?;
        if let Some(bad) = ids
            .iter()
            .find(|&&v| v < 0 || v as u64 >= self.vocab_size as u64)
        {
            return Err(ModelError::InvalidInput {
                model: TEXT.to_string(),
                reason: format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.vocab_size
                ),
            });
        }
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..s as i64, &device)
            .reshape([1, s])
            .expand([b, s]);
        let h = self.embeddings.token_embedding.forward(input_ids)
            + self.embeddings.position_embedding.forward(positions);
        let key_mask = match attention_mask {
            None => None,
            Some(mask) => {
                if mask.dims() != [b, s] {
                    return Err(ModelError::InvalidInput {
                        model: TEXT.to_string(),
                        reason: format!(
                            "attention_mask has shape {:?}, expected [{b}, {s}]",
                            mask.dims()
                        ),
                    });
                }
                let heads = self
                    .encoder
                    .layers
                    .first()
                    .map(|l| l.self_attn.num_heads)
                    .unwrap_or(1);
                Some(
                    mask.equal_elem(0)
                        .reshape([b, 1, 1, s])
                        .expand([b, heads, s, s]),
                )
            }
        };
        let hidden_states = self.encoder.forward(h, true, key_mask);
        let last = hidden_states
            .last()
            .cloned()
            .ok_or_else(|| ModelError::InvalidInput {
                model: TEXT.to_string(),
                reason: "encoder produced no output".to_string(),
            })?;
        let last_hidden_state = crate::precision::layer_norm(&self.final_layer_norm, last);
        let positions = self.eos_positions(&ids, s);
        let pooler_output = gather_rows(last_hidden_state.clone(), &positions);
        Ok(CLIPTextOutput {
            last_hidden_state,
            pooler_output,
            hidden_states,
        })
    }
}

/// Picks `x[i, positions[i], :]` for each row `i`.
fn gather_rows(x: Tensor<3>, positions: &[usize]) -> Tensor<2> {
    let [_, _, h] = x.dims();
    let rows: Vec<Tensor<2>> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| x.clone().slice([i..i + 1, p..p + 1, 0..h]).reshape([1, h]))
        .collect();
    Tensor::cat(rows, 0)
}

fn ids_to_host(ids: Tensor<2, Int>) -> Result<Vec<i64>, ModelError> {
    let data: TensorData =
        ids.into_data()
            .try_cast(DType::I64)
            .map_err(|e| ModelError::InvalidInput {
                model: TEXT.to_string(),
                reason: format!("input_ids could not be read as int64: {e}"),
            })?;
    data.try_to_vec::<i64>()
        .map_err(|e| ModelError::InvalidInput {
            model: TEXT.to_string(),
            reason: format!("input_ids could not be read as int64: {e:?}"),
        })
}

pub(crate) fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    diff_format::load_config(path).map_err(|e| ModelError::Config {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// What [`CLIPTextModelWithProjection::forward`] returns (transformers' `CLIPTextModelOutput`).
#[derive(Debug, Clone)]
pub struct CLIPTextModelWithProjectionOutput {
    /// `text_projection(pooler_output)`, `[batch, projection_dim]`.
    pub text_embeds: Tensor<2>,
    /// The final-layer-normed output, `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<3>,
    /// The embeddings and every layer's output, as in [`CLIPTextOutput::hidden_states`].
    pub hidden_states: Vec<Tensor<3>>,
}

/// transformers' `CLIPTextModelWithProjection` (keys `text_model.*`, `text_projection.weight`).
#[derive(Module, Debug)]
pub struct CLIPTextModelWithProjection {
    /// `text_model`.
    pub text_model: CLIPTextModel,
    /// `text_projection` (no bias).
    pub text_projection: Linear,
}

impl CLIPTextModelWithProjection {
    /// Builds the model (uninitialised parameters) from its config on `device`.
    pub fn new(config: &CLIPTextConfig, device: &Device) -> Result<Self, ModelError> {
        let text_model = CLIPTextModel::new(config, device)?;
        let hidden = to_usize(config.hidden_size, TEXT, "hidden_size")?;
        let proj = to_usize(config.projection_dim.unwrap_or(512), TEXT, "projection_dim")?;
        Ok(Self {
            text_model,
            text_projection: LinearConfig::new(hidden, proj)
                .with_bias(false)
                .init(device),
        })
    }

    /// Encodes `input_ids` and projects the pooled output.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
    ) -> Result<CLIPTextModelWithProjectionOutput, ModelError> {
        self.forward_with_mask(input_ids, None)
    }

    /// [`Self::forward`] with an optional padding `attention_mask` (see
    /// [`CLIPTextModel::forward_with_mask`]).
    pub fn forward_with_mask(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
    ) -> Result<CLIPTextModelWithProjectionOutput, ModelError> {
        let _span = tracing::debug_span!("CLIPTextModelWithProjection::forward").entered();
        crate::offload::enter(self);
        let out = self
            .text_model
            .forward_with_mask(input_ids, attention_mask)?;
        Ok(CLIPTextModelWithProjectionOutput {
            text_embeds: crate::precision::linear(&self.text_projection, out.pooler_output),
            last_hidden_state: out.last_hidden_state,
            hidden_states: out.hidden_states,
        })
    }
}

impl NamedLayers for CLIPAttention {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; k_proj, v_proj, q_proj, out_proj);
    }
}

impl NamedLayers for CLIPMLP {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; fc1, fc2);
    }
}

impl NamedLayers for CLIPEncoderLayer {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; self_attn, mlp);
    }
}

impl NamedLayers for CLIPEncoder {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; layers);
    }
}

/// Forwards each adapter-capable layer of a walk to a [`LoraModel`] callback.
fn lora_only<'a>(
    f: &mut dyn FnMut(&str, LoraLayerRef<'a>),
) -> impl FnMut(&str, NamedLayer<'a>) + '_ {
    move |name, layer| match layer {
        NamedLayer::Linear(l) => f(name, LoraLayerRef::Linear(l)),
        NamedLayer::Conv2d(c) => f(name, LoraLayerRef::Conv2d(c)),
        NamedLayer::Attention(_) => {}
    }
}

/// transformers' names: `CLIPTextModel` holds its transformer as `text_model`, so layers are
/// `text_model.encoder.layers.0.self_attn.q_proj` (the names peft and diffusers' LoRA keys use).
impl LoraModel for CLIPTextModel {
    fn for_each_lora_layer<'a>(&'a self, f: &mut dyn FnMut(&str, LoraLayerRef<'a>)) {
        self.encoder
            .visit_named(&join("text_model", "encoder"), &mut lora_only(f));
    }
}

/// `text_model.encoder.layers.0.self_attn.q_proj`, as for [`CLIPTextModel`].
impl LoraModel for CLIPTextModelWithProjection {
    fn for_each_lora_layer<'a>(&'a self, f: &mut dyn FnMut(&str, LoraLayerRef<'a>)) {
        self.text_model.for_each_lora_layer(f);
    }
}
