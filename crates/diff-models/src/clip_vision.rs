//! transformers' CLIP image encoders: `CLIPVisionModel` and `CLIPVisionModelWithProjection`
//! (`modeling_clip.py`, transformers 5.23), used by the SD safety checker and IP-Adapter style
//! image encoders.
//!
//! Patch embedding (a stride-`patch_size` convolution without bias), a learned class token,
//! absolute position embeddings, `pre_layrnorm` (transformers' spelling), the shared
//! non-causal encoder from [`crate::clip`], and `post_layernorm` on the class token as the
//! pooled output. Inputs must be `image_size` square (no `interpolate_pos_encoding`).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::{Device, Int, Tensor};
use diff_format::configs::clip::CLIPVisionConfig;

use crate::ModelError;
use crate::clip::{CLIPEncoder, EncoderDims, HiddenAct, check_heads, to_usize};

const VISION: &str = "CLIPVisionModel";

/// `CLIPVisionEmbeddings`.
#[derive(Module, Debug)]
pub struct CLIPVisionEmbeddings {
    /// `class_embedding`, `[hidden]`.
    pub class_embedding: Param<Tensor<1>>,
    /// `patch_embedding` (no bias).
    pub patch_embedding: Conv2d,
    /// `position_embedding`, `num_patches + 1` rows.
    pub position_embedding: Embedding,
}

/// What [`CLIPVisionModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct CLIPVisionOutput {
    /// The encoder output (no final norm), `[batch, patches + 1, hidden]`.
    pub last_hidden_state: Tensor<3>,
    /// `post_layernorm` of the class token, `[batch, hidden]`.
    pub pooler_output: Tensor<2>,
    /// The (pre-normed) embeddings and every layer's output.
    pub hidden_states: Vec<Tensor<3>>,
}

/// transformers' `CLIPVisionModel` (transformers 5 keys: `embeddings.*`, `pre_layrnorm.*`,
/// `encoder.*`, `post_layernorm.*`; the transformers-4 `vision_model.` prefix is accepted by
/// its loading rules ([`crate::FromPretrained::load_options`])).
#[derive(Module, Debug)]
pub struct CLIPVisionModel {
    /// `embeddings`.
    pub embeddings: CLIPVisionEmbeddings,
    /// `pre_layrnorm`.
    pub pre_layrnorm: LayerNorm,
    /// `encoder`.
    pub encoder: CLIPEncoder,
    /// `post_layernorm`.
    pub post_layernorm: LayerNorm,
    /// `image_size` (square).
    pub image_size: usize,
    /// `patch_size` (square).
    pub patch_size: usize,
    /// The config the model was built from.
    #[module(skip)]
    pub config: CLIPVisionConfig,
}

fn square(
    value: &Option<diff_format::configs::clip::ImageSize>,
    key: &str,
    default: u64,
) -> Result<usize, ModelError> {
    let side = match value {
        None => default,
        Some(v) => v.square().ok_or_else(|| ModelError::UnsupportedConfig {
            model: VISION.to_string(),
            key: key.to_string(),
            value: format!("{v:?}"),
            reason: "only square sizes are supported".to_string(),
        })?,
    };
    to_usize(side, VISION, key)
}

impl CLIPVisionModel {
    /// Builds the model (uninitialised parameters) from its config on `device`.
    pub fn new(config: &CLIPVisionConfig, device: &Device) -> Result<Self, ModelError> {
        let dims = EncoderDims {
            hidden: to_usize(config.hidden_size, VISION, "hidden_size")?,
            intermediate: to_usize(config.intermediate_size, VISION, "intermediate_size")?,
            heads: to_usize(config.num_attention_heads, VISION, "num_attention_heads")?,
            layers: to_usize(config.num_hidden_layers, VISION, "num_hidden_layers")?,
            eps: config.layer_norm_eps,
            act: HiddenAct::parse(&config.hidden_act, VISION)?,
        };
        check_heads(&dims, VISION)?;
        let image_size = square(&config.image_size, "image_size", 224)?;
        let patch_size = square(&config.patch_size, "patch_size", 32)?;
        if patch_size == 0 || !image_size.is_multiple_of(patch_size) {
            return Err(ModelError::UnsupportedConfig {
                model: VISION.to_string(),
                key: "patch_size".to_string(),
                value: patch_size.to_string(),
                reason: format!("must divide image_size {image_size}"),
            });
        }
        let channels = to_usize(config.num_channels, VISION, "num_channels")?;
        let grid = image_size / patch_size;
        let norm = || {
            LayerNormConfig::new(dims.hidden)
                .with_epsilon(dims.eps)
                .init(device)
        };
        Ok(Self {
            embeddings: CLIPVisionEmbeddings {
                class_embedding: Param::from_tensor(Tensor::zeros([dims.hidden], device)),
                patch_embedding: Conv2dConfig::new(
                    [channels, dims.hidden],
                    [patch_size, patch_size],
                )
                .with_stride([patch_size, patch_size])
                .with_padding(PaddingConfig2d::Valid)
                .with_bias(false)
                .init(device),
                position_embedding: EmbeddingConfig::new(grid * grid + 1, dims.hidden).init(device),
            },
            pre_layrnorm: norm(),
            encoder: CLIPEncoder::new(&dims, device),
            post_layernorm: norm(),
            image_size,
            patch_size,
            config: config.clone(),
        })
    }

    /// Encodes `pixel_values` (`[batch, channels, image_size, image_size]`).
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<CLIPVisionOutput, ModelError> {
        let _span =
            tracing::debug_span!("CLIPVisionModel::forward", dims = ?pixel_values.dims()).entered();
        let [b, _, h, w] = pixel_values.dims();
        if h != self.image_size || w != self.image_size {
            return Err(ModelError::InvalidInput {
                model: VISION.to_string(),
                reason: format!(
                    "input image size ({h}*{w}) doesn't match model ({0}*{0})",
                    self.image_size
                ),
            });
        }
        let dtype = self.embeddings.patch_embedding.weight.val().dtype();
        let patches = self
            .embeddings
            .patch_embedding
            .forward(pixel_values.cast(dtype));
        let [_, hidden, gh, gw] = patches.dims();
        let patches = patches.reshape([b, hidden, gh * gw]).swap_dims(1, 2);
        let class = self
            .embeddings
            .class_embedding
            .val()
            .reshape([1, 1, hidden])
            .expand([b, 1, hidden]);
        let x = Tensor::cat(vec![class, patches], 1);
        let n = gh * gw + 1;
        let device = x.device();
        let positions = Tensor::<1, Int>::arange(0..n as i64, &device).reshape([1, n]);
        let x = x + self.embeddings.position_embedding.forward(positions);
        let x = self.pre_layrnorm.forward(x);
        let hidden_states = self.encoder.forward(x, false, None);
        let last_hidden_state =
            hidden_states
                .last()
                .cloned()
                .ok_or_else(|| ModelError::InvalidInput {
                    model: VISION.to_string(),
                    reason: "encoder produced no output".to_string(),
                })?;
        let cls = last_hidden_state
            .clone()
            .slice([0..b, 0..1, 0..hidden])
            .reshape([b, hidden]);
        let pooler_output = self.post_layernorm.forward(cls);
        Ok(CLIPVisionOutput {
            last_hidden_state,
            pooler_output,
            hidden_states,
        })
    }
}

/// What [`CLIPVisionModelWithProjection::forward`] returns.
#[derive(Debug, Clone)]
pub struct CLIPVisionModelWithProjectionOutput {
    /// `visual_projection(pooler_output)`, `[batch, projection_dim]`.
    pub image_embeds: Tensor<2>,
    /// The encoder output, `[batch, patches + 1, hidden]`.
    pub last_hidden_state: Tensor<3>,
    /// The embeddings and every layer's output.
    pub hidden_states: Vec<Tensor<3>>,
}

/// transformers' `CLIPVisionModelWithProjection` (keys `vision_model.*`,
/// `visual_projection.weight`).
#[derive(Module, Debug)]
pub struct CLIPVisionModelWithProjection {
    /// `vision_model`.
    pub vision_model: CLIPVisionModel,
    /// `visual_projection` (no bias).
    pub visual_projection: Linear,
}

impl CLIPVisionModelWithProjection {
    /// Builds the model (uninitialised parameters) from its config on `device`.
    pub fn new(config: &CLIPVisionConfig, device: &Device) -> Result<Self, ModelError> {
        let hidden = to_usize(config.hidden_size, VISION, "hidden_size")?;
        let proj = to_usize(config.projection_dim, VISION, "projection_dim")?;
        Ok(Self {
            vision_model: CLIPVisionModel::new(config, device)?,
            visual_projection: LinearConfig::new(hidden, proj)
                .with_bias(false)
                .init(device),
        })
    }

    /// Encodes and projects `pixel_values`.
    pub fn forward(
        &self,
        pixel_values: Tensor<4>,
    ) -> Result<CLIPVisionModelWithProjectionOutput, ModelError> {
        let _span = tracing::debug_span!("CLIPVisionModelWithProjection::forward").entered();
        crate::offload::enter(self);
        let out = self.vision_model.forward(pixel_values)?;
        Ok(CLIPVisionModelWithProjectionOutput {
            image_embeds: self.visual_projection.forward(out.pooler_output),
            last_hidden_state: out.last_hidden_state,
            hidden_states: out.hidden_states,
        })
    }
}
