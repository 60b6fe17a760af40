//! AnimateDiff's motion modules (diffusers `models/unets/unet_motion_model.py`:
//! `AnimateDiffTransformer3D`, `MotionModules`, `MotionAdapter`; `models/embeddings.py`:
//! `SinusoidalPositionalEmbedding`; `models/attention.py`: `BasicTransformerBlock` with
//! `double_self_attention` and sinusoidal positional embeddings).
//!
//! A motion module attends over the frame axis: each pixel of each video is a sequence of
//! `num_frames` tokens. Its output projection is zero-initialised in training, so an adapter
//! with untrained `proj_out` leaves the 2D UNet's output unchanged.
//!
//! The state-dict keys of a [`MotionAdapter`] are diffusers' (`down_blocks.0.motion_modules.1.
//! transformer_blocks.0.attn1.to_q.weight`, `...pos_embed.pe`), which are also the names of
//! those layers inside a `UNetMotionModel` (LoRA targets).

use burn::module::{Module, Param};
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig};
use burn::tensor::{DType, Device, Tensor, TensorData};
use diff_format::configs::motion_adapter::MotionAdapterConfig;
use diff_format::configs::unet::TransformerLayers;

use crate::ModelError;
use crate::attention::{Attention, AttentionConfig, FeedForward, lora_linear_tokens};
use crate::lora::LoraLinear;
use crate::named::{NamedLayer, NamedLayers, visit_fields};
use crate::resnet::{check_groups, group_norm, linear};

const MODEL: &str = "MotionAdapter";

fn unsupported(key: &str, value: impl std::fmt::Debug, reason: &str) -> ModelError {
    ModelError::UnsupportedConfig {
        model: MODEL.to_owned(),
        key: key.to_owned(),
        value: format!("{value:?}"),
        reason: reason.to_owned(),
    }
}

fn to_usize(key: &str, v: u64) -> Result<usize, ModelError> {
    usize::try_from(v).map_err(|_| unsupported(key, v, "does not fit in usize"))
}

/// diffusers' `SinusoidalPositionalEmbedding`: adds `pe[:, :seq_len]` to a token sequence.
/// `pe` is a persistent buffer, so it is read from the weight file (it equals the computed
/// table).
#[derive(Module, Debug)]
pub struct SinusoidalPositionalEmbedding {
    /// `[1, max_seq_length, dim]`: `sin` in even, `cos` in odd channels.
    pub pe: Param<Tensor<3>>,
}

impl SinusoidalPositionalEmbedding {
    /// The table diffusers builds: `pe[0, p, 2i] = sin(p * exp(2i * -ln(10000) / dim))`,
    /// `pe[0, p, 2i + 1] = cos(...)`, in float32.
    pub fn new(dim: usize, max_seq_length: usize, device: &Device) -> Self {
        let mut pe = vec![0f32; max_seq_length * dim];
        let factor = -(10000f32).ln() / dim as f32;
        for p in 0..max_seq_length {
            for i in (0..dim).step_by(2) {
                let angle = p as f32 * (i as f32 * factor).exp();
                pe[p * dim + i] = angle.sin();
                if i + 1 < dim {
                    pe[p * dim + i + 1] = angle.cos();
                }
            }
        }
        let t = Tensor::from_data(TensorData::new(pe, [1, max_seq_length, dim]), device);
        Self {
            pe: Param::from_tensor(t),
        }
    }

    /// The longest sequence the table covers.
    pub fn max_seq_length(&self) -> usize {
        self.pe.dims()[1]
    }

    /// # Shapes
    /// - `x`: `[batch, seq_len, dim]` with `seq_len <= max_seq_length` (checked by the caller)
    /// - output: same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let n = x.dims()[1];
        let pe = self.pe.val().narrow(1, 0, n).cast(x.dtype());
        x + pe
    }
}

/// diffusers' `BasicTransformerBlock` as motion modules configure it: two self-attentions
/// (`double_self_attention`), each after a layer norm and the sinusoidal position embedding,
/// then a GEGLU feed-forward; no bias on `to_q` / `to_k` / `to_v`.
#[derive(Module, Debug)]
pub struct MotionTransformerBlock {
    /// Norm before `attn1`.
    pub norm1: LayerNorm,
    /// First self-attention over the frames.
    pub attn1: Attention,
    /// Norm before `attn2`.
    pub norm2: LayerNorm,
    /// Second self-attention over the frames.
    pub attn2: Attention,
    /// Norm before `ff`.
    pub norm3: LayerNorm,
    /// Feed-forward.
    pub ff: FeedForward,
    /// The frame position embedding.
    pub pos_embed: SinusoidalPositionalEmbedding,
}

impl MotionTransformerBlock {
    fn new(dim: usize, heads: usize, max_seq_length: usize, device: &Device) -> Self {
        let attn = || {
            AttentionConfig {
                query_dim: dim,
                cross_attention_dim: None,
                heads,
                dim_head: dim / heads.max(1),
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
            attn1: attn(),
            norm2: norm(),
            attn2: attn(),
            norm3: norm(),
            ff: FeedForward::new(dim, device),
            pos_embed: SinusoidalPositionalEmbedding::new(dim, max_seq_length, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch * height * width, frames, dim]`, output: same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let _span = tracing::trace_span!("MotionTransformerBlock").entered();
        let h = crate::precision::layer_norm(&self.norm1, x.clone());
        let h = self.pos_embed.forward(h);
        let x = self.attn1.forward(h, None, None) + x;
        let h = crate::precision::layer_norm(&self.norm2, x.clone());
        let h = self.pos_embed.forward(h);
        let x = self.attn2.forward(h, None, None) + x;
        let h = crate::precision::layer_norm(&self.norm3, x.clone());
        self.ff.forward(h) + x
    }
}

impl NamedLayers for MotionTransformerBlock {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; attn1, attn2, ff);
    }
}

/// diffusers' `AnimateDiffTransformer3D`: group norm over each video, the frames of each pixel
/// as a token sequence, transformer blocks, projection back, residual.
#[derive(Module, Debug)]
pub struct AnimateDiffTransformer3D {
    /// Input group norm (eps 1e-6) over `[channels, frames, height, width]`.
    pub norm: GroupNorm,
    /// Projection to the transformer width.
    pub proj_in: LoraLinear,
    /// The blocks.
    pub transformer_blocks: Vec<MotionTransformerBlock>,
    /// Projection back to the channels (zero-initialised in training).
    pub proj_out: LoraLinear,
}

impl AnimateDiffTransformer3D {
    fn new(
        channels: usize,
        heads: usize,
        num_layers: usize,
        groups: usize,
        max_seq_length: usize,
        device: &Device,
    ) -> Self {
        Self {
            norm: group_norm(groups, channels, 1e-6, device),
            proj_in: linear(channels, channels, true, device).into(),
            transformer_blocks: (0..num_layers)
                .map(|_| MotionTransformerBlock::new(channels, heads, max_seq_length, device))
                .collect(),
            proj_out: linear(channels, channels, true, device).into(),
        }
    }

    /// Runs the module over the frames of each video; `groups` is the group count of the norm
    /// (a `UNetMotionModel` uses its UNet's `norm_num_groups`).
    ///
    /// # Shapes
    /// - `x`: `[batch * num_frames, channels, height, width]`, frames of a video consecutive
    /// - output: same
    pub fn forward(&self, x: Tensor<4>, num_frames: usize, groups: usize) -> Tensor<4> {
        let _span = tracing::trace_span!("AnimateDiffTransformer3D").entered();
        let [bf, c, h, w] = x.dims();
        let f = num_frames.max(1);
        let b = bf / f;
        let residual = x.clone();
        // [B, F, C, H, W] -> [B, C, F, H, W]; the group norm's statistics run over each group's
        // channels and all of F, H, W, which a [B, C, F * H, W] view gives as well.
        let video = x.reshape([b, f, c, h, w]).permute([0, 2, 1, 3, 4]);
        let flat = video.reshape([b, c, f * h, w]);
        let normed = if groups == self.norm.num_groups {
            crate::precision::group_norm(&self.norm, flat)
        } else {
            let mut norm = self.norm.clone();
            norm.num_groups = groups;
            crate::precision::group_norm(&norm, flat)
        };
        // [B, C, F, H, W] -> [B, H, W, F, C] -> [B * H * W, F, C]
        let tokens = normed
            .reshape([b, c, f, h, w])
            .permute([0, 3, 4, 2, 1])
            .reshape([b * h * w, f, c]);
        let mut tokens = lora_linear_tokens(&self.proj_in, tokens);
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens);
        }
        let tokens = lora_linear_tokens(&self.proj_out, tokens);
        // [B * H * W, F, C] -> [B, H, W, F, C] -> [B, F, C, H, W] -> [B * F, C, H, W]
        let out = tokens
            .reshape([b, h, w, f, c])
            .permute([0, 3, 4, 1, 2])
            .reshape([bf, c, h, w]);
        out + residual
    }
}

impl NamedLayers for AnimateDiffTransformer3D {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; proj_in, transformer_blocks, proj_out);
    }
}

/// diffusers' `MotionModules`: the motion modules of one UNet block.
#[derive(Module, Debug)]
pub struct MotionModules {
    /// One module after each resnet (and attention) of the block.
    pub motion_modules: Vec<AnimateDiffTransformer3D>,
}

impl NamedLayers for MotionModules {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; motion_modules);
    }
}

/// Values derived from the config.
#[derive(Debug, Clone)]
pub struct MotionAdapterSettings {
    /// `block_out_channels`.
    pub block_out_channels: Vec<usize>,
    /// Motion modules per down block (`motion_layers_per_block`, expanded).
    pub layers_per_block: Vec<usize>,
    /// `motion_max_seq_length`: the most frames a call may have.
    pub max_seq_length: usize,
    /// The dtype the weights are loaded as.
    pub dtype: DType,
}

/// diffusers' `MotionAdapter`: the motion modules of every down, mid and up block, without a
/// UNet (`UNetMotionModel::from_unet2d` puts them after the 2D blocks).
#[derive(Module, Debug)]
pub struct MotionAdapter {
    /// Motion modules of the down blocks.
    pub down_blocks: Vec<MotionModules>,
    /// Motion modules of the mid block (`use_motion_mid_block`).
    pub mid_block: Option<MotionModules>,
    /// Motion modules of the up blocks (one more per block than the down blocks).
    pub up_blocks: Vec<MotionModules>,
    /// Values derived from the config.
    #[module(skip)]
    pub settings: MotionAdapterSettings,
    /// The config the adapter was built from.
    #[module(skip)]
    pub config: MotionAdapterConfig,
}

/// Transformer layers of each motion module of a block, one entry per block.
fn transformer_layers(tl: &TransformerLayers, n: usize) -> Result<Vec<usize>, ModelError> {
    let key = "motion_transformer_layers_per_block";
    match tl {
        TransformerLayers::One(v) => Ok(vec![to_usize(key, *v)?; n]),
        TransformerLayers::PerBlock(v) if v.len() == n => {
            v.iter().map(|x| to_usize(key, *x)).collect()
        }
        other => Err(unsupported(
            key,
            other,
            &format!("expected one value or {n} values (one per block)"),
        )),
    }
}

impl MotionAdapter {
    /// Builds the adapter from its config on `device`, parameters uninitialised until weights
    /// load; `dtype` is the dtype the weights load as.
    pub fn from_config(
        config: &MotionAdapterConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let c = config;
        if let Some(ch) = c.conv_in_channels.filter(|ch| *ch > 0) {
            return Err(unsupported(
                "conv_in_channels",
                ch,
                "PIA motion adapters (their own conv_in) are not supported",
            ));
        }
        let boc: Vec<usize> = c
            .block_out_channels
            .iter()
            .map(|v| to_usize("block_out_channels", *v))
            .collect::<Result<_, _>>()?;
        let n = boc.len();
        if n == 0 {
            return Err(unsupported(
                "block_out_channels",
                &boc,
                "needs at least one block",
            ));
        }
        let expand = |key: &str, v: &diff_format::configs::unet::PerBlock<u64>| {
            v.expand(n)
                .ok_or_else(|| unsupported(key, v, &format!("expected one value or {n} values")))?
                .into_iter()
                .map(|x| to_usize(key, x))
                .collect::<Result<Vec<usize>, _>>()
        };
        let layers = expand("motion_layers_per_block", &c.motion_layers_per_block)?;
        let heads = expand("motion_num_attention_heads", &c.motion_num_attention_heads)?;
        let tl = transformer_layers(&c.motion_transformer_layers_per_block, n)?;
        let groups = to_usize("motion_norm_num_groups", c.motion_norm_num_groups)?;
        let max_seq = to_usize("motion_max_seq_length", c.motion_max_seq_length)?;
        if max_seq == 0 {
            return Err(unsupported("motion_max_seq_length", 0, "must be positive"));
        }
        for (ch, h) in boc.iter().zip(&heads) {
            check_groups(MODEL, groups, *ch)?;
            if *h == 0 || !ch.is_multiple_of(*h) {
                return Err(unsupported(
                    "motion_num_attention_heads",
                    &heads,
                    &format!("{ch} channels do not split into {h} heads"),
                ));
            }
        }
        let block = |ch: usize, h: usize, modules: usize, layers: &[usize]| MotionModules {
            motion_modules: (0..modules)
                .map(|j| {
                    let l = layers.get(j).or(layers.last()).copied().unwrap_or(1);
                    AnimateDiffTransformer3D::new(ch, h, l, groups, max_seq, device)
                })
                .collect(),
        };
        let down_blocks = (0..n)
            .map(|i| block(boc[i], heads[i], layers[i], &[tl[i]]))
            .collect();
        let mid_block = if c.use_motion_mid_block {
            let mid_layers = to_usize(
                "motion_mid_block_layers_per_block",
                c.motion_mid_block_layers_per_block,
            )?;
            let mid_tl = c
                .motion_transformer_layers_per_mid_block
                .expand(mid_layers)
                .ok_or_else(|| {
                    unsupported(
                        "motion_transformer_layers_per_mid_block",
                        &c.motion_transformer_layers_per_mid_block,
                        &format!("expected one value or {mid_layers} values"),
                    )
                })?
                .into_iter()
                .map(|x| to_usize("motion_transformer_layers_per_mid_block", x))
                .collect::<Result<Vec<_>, _>>()?;
            Some(block(boc[n - 1], heads[n - 1], mid_layers, &mid_tl))
        } else {
            None
        };
        let up_blocks = (0..n)
            .rev()
            .map(|i| block(boc[i], heads[i], layers[i] + 1, &[tl[i]]))
            .collect();
        Ok(Self {
            down_blocks,
            mid_block,
            up_blocks,
            settings: MotionAdapterSettings {
                block_out_channels: boc,
                layers_per_block: layers,
                max_seq_length: max_seq,
                dtype,
            },
            config: c.clone(),
        })
    }

    /// `motion_max_seq_length`: the most frames one call may generate.
    pub fn max_seq_length(&self) -> usize {
        self.settings.max_seq_length
    }

    /// The number of parameters (`sum(p.numel() for p in adapter.parameters())`, the position
    /// tables included as diffusers' buffers are in its state dict).
    pub fn parameter_count(&self) -> usize {
        self.num_params()
    }
}

impl NamedLayers for MotionAdapter {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; down_blocks, mid_block, up_blocks);
    }
}

crate::named::lora_model_from_named!(MotionAdapter);
