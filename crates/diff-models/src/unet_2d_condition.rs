//! `UNet2DConditionModel` (diffusers `models/unets/unet_2d_condition.py`), built from its
//! `config.json`: SD 1.x, SD 2.x (`use_linear_projection`, `upcast_attention`, per-block heads),
//! SDXL (`transformer_layers_per_block`, `addition_embed_type = "text_time"`), inpainting
//! (9 input channels), LCM (`time_cond_proj_dim`) and the class embeddings of the common repos.
//!
//! A config value outside that set is a [`ModelError::UnsupportedConfig`] naming the key.
//! `upcast_attention` needs no switch: attention scores and softmax are always computed in f32
//! (see [`crate::attention`]).

use burn::module::Module;
use burn::nn::{EmbeddingConfig, GroupNorm, Initializer, Linear};
use burn::tensor::{DType, Device, Int, Tensor};
use diff_format::configs::unet::{PerBlock, TransformerLayers, UNet2DConditionConfig};

use crate::ModelError;
use crate::attention::EncoderHiddenStates;
use crate::attention_processor::{AttnProcessorRef, AttnProcessorSetting};
pub use crate::embeddings::{ClassEmbedKind, ClassEmbedding, ClassLabels};
use crate::embeddings::{TimestepEmbedding, Timesteps};
use crate::lora::LoraConv2d;
use crate::named::{NamedLayer, NamedLayers, visit_fields};
use crate::resnet::{
    Activation, ResnetBlock2DConfig, TimeEmbeddingNorm, conv2d, group_norm, linear,
};
use crate::unet_2d_blocks::{
    BlockAttention, BlockResnets, DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D,
};

const MODEL: &str = "UNet2DConditionModel";

fn unsupported(key: &str, value: impl std::fmt::Debug, reason: &str) -> ModelError {
    ModelError::UnsupportedConfig {
        model: MODEL.to_owned(),
        key: key.to_owned(),
        value: format!("{value:?}"),
        reason: reason.to_owned(),
    }
}

fn invalid(reason: String) -> ModelError {
    ModelError::InvalidInput {
        model: MODEL.to_owned(),
        reason,
    }
}

/// ControlNet's `down_block_additional_residuals` added to the skip states, one per state,
/// each of the state's shape (shared by the 2D and the motion UNet).
pub(crate) fn add_down_residuals(
    skips: Vec<Tensor<4>>,
    res: Vec<Tensor<4>>,
    dtype: DType,
) -> Result<Vec<Tensor<4>>, ModelError> {
    if res.len() != skips.len() {
        return Err(invalid(format!(
            "{} `down_block_additional_residuals`, expected {}",
            res.len(),
            skips.len()
        )));
    }
    skips
        .into_iter()
        .zip(res)
        .map(|(s, r)| {
            if s.dims() == r.dims() {
                Ok(s + r.cast(dtype))
            } else {
                Err(invalid(format!(
                    "a down residual is {:?}, expected {:?}",
                    r.dims(),
                    s.dims()
                )))
            }
        })
        .collect()
}

/// ControlNet's `mid_block_additional_residual` added to the mid block's output.
pub(crate) fn add_mid_residual(
    h: Tensor<4>,
    r: Tensor<4>,
    dtype: DType,
) -> Result<Tensor<4>, ModelError> {
    if r.dims() != h.dims() {
        return Err(invalid(format!(
            "the mid residual is {:?}, expected {:?}",
            r.dims(),
            h.dims()
        )));
    }
    Ok(h + r.cast(dtype))
}

fn to_usize(key: &str, v: u64) -> Result<usize, ModelError> {
    usize::try_from(v).map_err(|_| unsupported(key, v, "does not fit in usize"))
}

/// The inputs of [`UNet2DConditionModel::forward`], named as diffusers' `forward` arguments.
#[derive(Debug, Clone)]
pub struct UNet2DConditionInput {
    /// Noisy latents, `[batch, in_channels, height, width]`.
    pub sample: Tensor<4>,
    /// Timesteps, `[batch]` or `[1]` (broadcast to the batch).
    pub timestep: Tensor<1>,
    /// Text encoder states, `[batch, tokens, cross_attention_dim]`.
    pub encoder_hidden_states: Tensor<3>,
    /// Class labels, for UNets with a class embedding.
    pub class_labels: Option<ClassLabels>,
    /// Guidance embedding for `time_cond_proj_dim` (LCM), `[batch, time_cond_proj_dim]`.
    pub timestep_cond: Option<Tensor<2>>,
    /// 1 = keep, 0 = discard, per text token, `[batch, tokens]`.
    pub encoder_attention_mask: Option<Tensor<2>>,
    /// SDXL `added_cond_kwargs["text_embeds"]`: pooled text embedding, `[batch, dim]`.
    pub text_embeds: Option<Tensor<2>>,
    /// SDXL `added_cond_kwargs["time_ids"]`, `[batch, n]`.
    pub time_ids: Option<Tensor<2>>,
    /// ControlNet residuals added to the skip states, one per state.
    pub down_block_additional_residuals: Option<Vec<Tensor<4>>>,
    /// ControlNet residual added to the mid-block output.
    pub mid_block_additional_residual: Option<Tensor<4>>,
    /// IP-Adapter image-prompt tokens, one `[batch, tokens, cross_attention_dim]` tensor per
    /// loaded adapter, already projected (what diffusers' `encoder_hid_proj` makes of
    /// `added_cond_kwargs["image_embeds"]`); the attention layers receive them beside the text
    /// states (diffusers' `encoder_hidden_states = (text, image_embeds)`), and only an
    /// `IPAdapterAttnProcessor2_0` reads them.
    pub ip_hidden_states: Option<Vec<Tensor<3>>>,
}

impl UNet2DConditionInput {
    /// The three required inputs; every optional one `None`.
    pub fn new(sample: Tensor<4>, timestep: Tensor<1>, encoder_hidden_states: Tensor<3>) -> Self {
        Self {
            sample,
            timestep,
            encoder_hidden_states,
            class_labels: None,
            timestep_cond: None,
            encoder_attention_mask: None,
            text_embeds: None,
            time_ids: None,
            down_block_additional_residuals: None,
            mid_block_additional_residual: None,
            ip_hidden_states: None,
        }
    }
}

/// Values derived from the config that the forward pass needs.
#[derive(Debug, Clone)]
pub struct UNetSettings {
    /// `in_channels`.
    pub in_channels: usize,
    /// Width the text states must have (`encoder_hid_dim` or `cross_attention_dim[0]`).
    pub context_dim: usize,
    /// `center_input_sample`.
    pub center_input_sample: bool,
    /// The sinusoidal timestep projection.
    pub time_proj: Timesteps,
    /// The class embedding kind, if any.
    pub class_embed: Option<ClassEmbedKind>,
    /// `class_embeddings_concat`.
    pub class_embeddings_concat: bool,
    /// SDXL's projection of each time id (`addition_embed_type = "text_time"`).
    pub add_time_proj: Option<Timesteps>,
    /// `time_embedding_act_fn`.
    pub time_embed_act: Option<Activation>,
    /// `act_fn`, after `conv_norm_out`.
    pub conv_act: Activation,
    /// `time_cond_proj_dim`.
    pub time_cond_proj_dim: Option<usize>,
    /// Number of up blocks that upsample.
    pub num_upsamplers: usize,
    /// The dtype the model computes in.
    pub dtype: DType,
}

/// diffusers' `UNet2DConditionModel`.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    /// Input convolution.
    pub conv_in: LoraConv2d,
    /// Timestep MLP.
    pub time_embedding: TimestepEmbedding,
    /// Projection of the text states (`encoder_hid_dim_type = "text_proj"`).
    pub encoder_hid_proj: Option<Linear>,
    /// Class embedding.
    pub class_embedding: Option<ClassEmbedding>,
    /// SDXL's embedding of pooled text and time ids.
    pub add_embedding: Option<TimestepEmbedding>,
    /// Down blocks.
    pub down_blocks: Vec<DownBlock2D>,
    /// Mid block (absent when `mid_block_type` is null).
    pub mid_block: Option<UNetMidBlock2DCrossAttn>,
    /// Up blocks.
    pub up_blocks: Vec<UpBlock2D>,
    /// Output norm (absent when `norm_num_groups` is null).
    pub conv_norm_out: Option<GroupNorm>,
    /// Output convolution.
    pub conv_out: LoraConv2d,
    /// Values derived from the config.
    #[module(skip)]
    pub settings: UNetSettings,
    /// The config the model was built from (pipelines read `sample_size`, `in_channels`,
    /// `time_cond_proj_dim`, ... from it).
    #[module(skip)]
    pub config: UNet2DConditionConfig,
    /// The loaded IP-Adapters' image projections (runtime state shared by clones; see
    /// `ip_adapter`).
    #[module(skip)]
    pub ip_adapter_projection: crate::ip_adapter::IpAdapterSlot,
}

/// `transformer_layers_per_block` of block `i` as one count per layer.
fn layers_of(
    tl: &TransformerLayers,
    i: usize,
    num_layers: usize,
) -> Result<Vec<usize>, ModelError> {
    let key = "transformer_layers_per_block";
    let v = match tl {
        TransformerLayers::One(n) => vec![to_usize(key, *n)?; num_layers],
        TransformerLayers::PerBlock(v) => {
            let n = v
                .get(i)
                .ok_or_else(|| unsupported(key, v, "fewer entries than blocks"))?;
            vec![to_usize(key, *n)?; num_layers]
        }
        TransformerLayers::PerLayer(vv) => {
            let row = vv
                .get(i)
                .ok_or_else(|| unsupported(key, vv, "fewer entries than blocks"))?;
            row.iter()
                .map(|n| to_usize(key, *n))
                .collect::<Result<_, _>>()?
        }
    };
    Ok(v)
}

fn per_block<T: Clone + std::fmt::Debug>(
    key: &str,
    v: &PerBlock<T>,
    n: usize,
) -> Result<Vec<T>, ModelError> {
    v.expand(n)
        .ok_or_else(|| unsupported(key, v, &format!("expected one value or {n} values")))
}

impl UNet2DConditionModel {
    /// Builds the model from its config on `device`, with parameters still uninitialised
    /// (lazy) until weights are loaded; `dtype` is the dtype the forward pass computes in and
    /// should equal the one weights are loaded as.
    pub fn from_config(
        config: &UNet2DConditionConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let c = config;
        // 1. Refuse what this implementation does not build, naming the key.
        if c.num_attention_heads.is_some() {
            return Err(unsupported(
                "num_attention_heads",
                &c.num_attention_heads,
                "diffusers refuses it too; heads are given by `attention_head_dim`",
            ));
        }
        if c.time_embedding_type != "positional" {
            return Err(unsupported(
                "time_embedding_type",
                &c.time_embedding_type,
                "only \"positional\" is supported",
            ));
        }
        if c.attention_type != "default" {
            return Err(unsupported(
                "attention_type",
                &c.attention_type,
                "only \"default\" is supported (no GLIGEN)",
            ));
        }
        if c.dual_cross_attention {
            return Err(unsupported(
                "dual_cross_attention",
                true,
                "dual cross-attention is not supported",
            ));
        }
        if c.cross_attention_norm.is_some() {
            return Err(unsupported(
                "cross_attention_norm",
                &c.cross_attention_norm,
                "only null is supported",
            ));
        }
        if c.resnet_out_scale_factor != 1.0 {
            return Err(unsupported(
                "resnet_out_scale_factor",
                c.resnet_out_scale_factor,
                "only 1.0 is supported",
            ));
        }
        let encoder_hid = match (c.encoder_hid_dim_type.as_deref(), c.encoder_hid_dim) {
            (None, None) => None,
            (None | Some("text_proj"), Some(d)) => Some(to_usize("encoder_hid_dim", d)?),
            (Some(t), _) => {
                return Err(unsupported(
                    "encoder_hid_dim_type",
                    t,
                    "only \"text_proj\" with `encoder_hid_dim` is supported",
                ));
            }
        };
        let groups = c.norm_num_groups.ok_or_else(|| {
            unsupported("norm_num_groups", "null", "the resnets need group norms")
        })?;
        let groups = to_usize("norm_num_groups", groups)?;
        let n = c.down_block_types.len();
        if n == 0 || c.up_block_types.len() != n || c.block_out_channels.len() != n {
            return Err(unsupported(
                "down_block_types",
                &c.down_block_types,
                &format!(
                    "needs as many entries as `up_block_types` ({}) and `block_out_channels` ({})",
                    c.up_block_types.len(),
                    c.block_out_channels.len()
                ),
            ));
        }
        let boc: Vec<usize> = c
            .block_out_channels
            .iter()
            .map(|v| to_usize("block_out_channels", *v))
            .collect::<Result<_, _>>()?;
        let heads = per_block("attention_head_dim", &c.attention_head_dim, n)?;
        let cross = per_block("cross_attention_dim", &c.cross_attention_dim, n)?;
        let layers = per_block("layers_per_block", &c.layers_per_block, n)?;
        let only_cross = per_block("only_cross_attention", &c.only_cross_attention, n)?;
        let mid_only_cross =
            c.mid_block_only_cross_attention
                .unwrap_or(match c.only_cross_attention {
                    PerBlock::One(b) => b,
                    PerBlock::Many(_) => false,
                });
        let act = Activation::from_name(&c.act_fn, MODEL, "act_fn")?;
        let tsn = TimeEmbeddingNorm::from_name(&c.resnet_time_scale_shift, MODEL)?;
        let ks = |key: &str, k: u64| -> Result<usize, ModelError> {
            if k.is_multiple_of(2) {
                return Err(unsupported(key, k, "the kernel must be odd"));
            }
            to_usize(key, k)
        };
        let conv_in_kernel = ks("conv_in_kernel", c.conv_in_kernel)?;
        let conv_out_kernel = ks("conv_out_kernel", c.conv_out_kernel)?;
        let in_channels = to_usize("in_channels", c.in_channels)?;
        let out_channels = to_usize("out_channels", c.out_channels)?;

        // 2. Time, class and additional embeddings.
        let c0 = boc[0];
        let time_embed_dim = match c.time_embedding_dim {
            Some(d) => to_usize("time_embedding_dim", d)?,
            None => c0 * 4,
        };
        let freq_shift = c.freq_shift as f64;
        let time_proj = Timesteps {
            num_channels: c0,
            flip_sin_to_cos: c.flip_sin_to_cos,
            downscale_freq_shift: freq_shift,
        };
        let post_act = c
            .timestep_post_act
            .as_deref()
            .map(|a| Activation::from_name(a, MODEL, "timestep_post_act"))
            .transpose()?;
        let time_cond_proj_dim = c
            .time_cond_proj_dim
            .map(|d| to_usize("time_cond_proj_dim", d))
            .transpose()?;
        let time_embedding = TimestepEmbedding::new(
            c0,
            time_embed_dim,
            act,
            post_act,
            time_cond_proj_dim,
            device,
        );
        let proj_in_dim = c
            .projection_class_embeddings_input_dim
            .map(|d| to_usize("projection_class_embeddings_input_dim", d))
            .transpose()?;
        let need_proj_dim = |kind: &str| {
            proj_in_dim.ok_or_else(|| {
                unsupported(
                    "projection_class_embeddings_input_dim",
                    "null",
                    &format!("`class_embed_type` \"{kind}\" needs it"),
                )
            })
        };
        let (class_embed, class_embedding) = match (
            c.class_embed_type.as_deref(),
            c.num_class_embeds,
        ) {
            (None, None) => (None, None),
            (None, Some(k)) => {
                let table = EmbeddingConfig::new(to_usize("num_class_embeds", k)?, time_embed_dim)
                    .with_initializer(Initializer::Zeros)
                    .init(device);
                (
                    Some(ClassEmbedKind::Table),
                    Some(ClassEmbedding::Table(table)),
                )
            }
            (Some("timestep"), _) => (
                Some(ClassEmbedKind::Timestep),
                Some(ClassEmbedding::Mlp(TimestepEmbedding::new(
                    c0,
                    time_embed_dim,
                    act,
                    None,
                    None,
                    device,
                ))),
            ),
            (Some("identity"), _) => (Some(ClassEmbedKind::Identity), None),
            (Some("projection"), _) => (
                Some(ClassEmbedKind::Projection),
                Some(ClassEmbedding::Mlp(TimestepEmbedding::new(
                    need_proj_dim("projection")?,
                    time_embed_dim,
                    Activation::Silu,
                    None,
                    None,
                    device,
                ))),
            ),
            (Some("simple_projection"), _) => (
                Some(ClassEmbedKind::SimpleProjection),
                Some(ClassEmbedding::Linear(linear(
                    need_proj_dim("simple_projection")?,
                    time_embed_dim,
                    true,
                    device,
                ))),
            ),
            (Some(other), _) => {
                return Err(unsupported(
                    "class_embed_type",
                    other,
                    "expected null, \"timestep\", \"identity\", \"projection\" or \"simple_projection\"",
                ));
            }
        };
        let (add_time_proj, add_embedding) = match c.addition_embed_type.as_deref() {
            None => (None, None),
            Some("text_time") => {
                let d = c.addition_time_embed_dim.ok_or_else(|| {
                    unsupported(
                        "addition_time_embed_dim",
                        "null",
                        "`addition_embed_type` \"text_time\" needs it",
                    )
                })?;
                let proj = Timesteps {
                    num_channels: to_usize("addition_time_embed_dim", d)?,
                    flip_sin_to_cos: c.flip_sin_to_cos,
                    downscale_freq_shift: freq_shift,
                };
                let emb = TimestepEmbedding::new(
                    need_proj_dim("text_time")?,
                    time_embed_dim,
                    Activation::Silu,
                    None,
                    None,
                    device,
                );
                (Some(proj), Some(emb))
            }
            Some(other) => {
                return Err(unsupported(
                    "addition_embed_type",
                    other,
                    "only null and \"text_time\" are supported",
                ));
            }
        };
        let time_embed_act = c
            .time_embedding_act_fn
            .as_deref()
            .map(|a| Activation::from_name(a, MODEL, "time_embedding_act_fn"))
            .transpose()?;
        let context_dim = to_usize("cross_attention_dim", cross[0])?;
        let encoder_hid_proj = encoder_hid.map(|d| linear(d, context_dim, true, device));

        // 3. Blocks.
        let blocks_temb = if c.class_embeddings_concat {
            time_embed_dim * 2
        } else {
            time_embed_dim
        };
        let resnets = BlockResnets {
            temb_channels: Some(blocks_temb),
            groups,
            eps: c.norm_eps,
            template: ResnetBlock2DConfig {
                in_channels: 0,
                out_channels: 0,
                temb_channels: Some(blocks_temb),
                groups,
                eps: c.norm_eps,
                act,
                time_embedding_norm: tsn,
                output_scale_factor: 1.0,
                skip_time_act: c.resnet_skip_time_act,
            },
        };
        let heads_of = |h: Option<u64>| -> Result<usize, ModelError> {
            let h = h.ok_or_else(|| {
                unsupported(
                    "attention_head_dim",
                    "null",
                    "cross-attention blocks need a head count",
                )
            })?;
            to_usize("attention_head_dim", h)
        };
        let attention_of = |heads: Option<u64>,
                            cross_dim: u64,
                            only: bool,
                            transformer_layers: Vec<usize>|
         -> Result<BlockAttention, ModelError> {
            Ok(BlockAttention {
                num_attention_heads: heads_of(heads)?,
                transformer_layers,
                cross_attention_dim: to_usize("cross_attention_dim", cross_dim)?,
                use_linear_projection: c.use_linear_projection,
                only_cross_attention: only,
            })
        };
        let downsample_padding = to_usize("downsample_padding", c.downsample_padding)?;
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = boc[0];
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = boc[i];
            let num_layers = to_usize("layers_per_block", layers[i])?;
            let attention = match kind.as_str() {
                "CrossAttnDownBlock2D" => Some(attention_of(
                    heads[i],
                    cross[i],
                    only_cross[i],
                    layers_of(&c.transformer_layers_per_block, i, num_layers)?,
                )?),
                "DownBlock2D" => None,
                other => {
                    return Err(unsupported(
                        "down_block_types",
                        other,
                        "expected CrossAttnDownBlock2D or DownBlock2D",
                    ));
                }
            };
            down_blocks.push(DownBlock2D::new(
                MODEL,
                num_layers,
                in_ch,
                out_ch,
                &resnets,
                attention.as_ref(),
                i + 1 < n,
                downsample_padding,
                device,
            )?);
        }

        let last = n - 1;
        let mid_block = match c.mid_block_type.as_deref() {
            None => None,
            Some("UNetMidBlock2DCrossAttn") => {
                let tl = layers_of(&c.transformer_layers_per_block, last, 1)?;
                let attention = attention_of(heads[last], cross[last], mid_only_cross, tl)?;
                let mid_resnets = BlockResnets {
                    template: ResnetBlock2DConfig {
                        output_scale_factor: c.mid_block_scale_factor,
                        ..resnets.template.clone()
                    },
                    ..resnets.clone()
                };
                Some(UNetMidBlock2DCrossAttn::new(
                    MODEL,
                    boc[last],
                    &mid_resnets,
                    &attention,
                    c.mid_block_scale_factor,
                    device,
                )?)
            }
            Some(other) => {
                return Err(unsupported(
                    "mid_block_type",
                    other,
                    "expected UNetMidBlock2DCrossAttn or null",
                ));
            }
        };

        let rboc: Vec<usize> = boc.iter().rev().copied().collect();
        let rheads: Vec<Option<u64>> = heads.iter().rev().copied().collect();
        let rcross: Vec<u64> = cross.iter().rev().copied().collect();
        let rlayers: Vec<u64> = layers.iter().rev().copied().collect();
        let ronly: Vec<bool> = only_cross.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        let mut num_upsamplers = 0;
        let mut out_ch = rboc[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let is_final = i == last;
            let prev = out_ch;
            out_ch = rboc[i];
            let in_ch = rboc[(i + 1).min(last)];
            if !is_final {
                num_upsamplers += 1;
            }
            let num_layers = to_usize("layers_per_block", rlayers[i])? + 1;
            let tl = match (
                &c.reverse_transformer_layers_per_block,
                &c.transformer_layers_per_block,
            ) {
                (Some(rev), _) => {
                    layers_of(&TransformerLayers::PerLayer(rev.clone()), i, num_layers)?
                }
                (None, TransformerLayers::PerBlock(v)) => {
                    let r: Vec<u64> = v.iter().rev().copied().collect();
                    layers_of(&TransformerLayers::PerBlock(r), i, num_layers)?
                }
                (None, TransformerLayers::PerLayer(_)) => {
                    return Err(unsupported(
                        "reverse_transformer_layers_per_block",
                        "null",
                        "needed when `transformer_layers_per_block` lists per-layer counts",
                    ));
                }
                (None, one) => layers_of(one, i, num_layers)?,
            };
            let attention = match kind.as_str() {
                "CrossAttnUpBlock2D" => Some(attention_of(rheads[i], rcross[i], ronly[i], tl)?),
                "UpBlock2D" => None,
                other => {
                    return Err(unsupported(
                        "up_block_types",
                        other,
                        "expected CrossAttnUpBlock2D or UpBlock2D",
                    ));
                }
            };
            up_blocks.push(UpBlock2D::new(
                MODEL,
                num_layers,
                in_ch,
                Some(prev),
                out_ch,
                &resnets,
                attention.as_ref(),
                !is_final,
                device,
            )?);
        }

        let conv_pad = |k: usize| (k - 1) / 2;
        Ok(Self {
            conv_in: conv2d(
                in_channels,
                c0,
                conv_in_kernel,
                1,
                conv_pad(conv_in_kernel),
                device,
            )
            .into(),
            time_embedding,
            encoder_hid_proj,
            class_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: Some(group_norm(groups, c0, c.norm_eps, device)),
            conv_out: conv2d(
                c0,
                out_channels,
                conv_out_kernel,
                1,
                conv_pad(conv_out_kernel),
                device,
            )
            .into(),
            settings: UNetSettings {
                in_channels,
                context_dim: encoder_hid.unwrap_or(context_dim),
                center_input_sample: c.center_input_sample,
                time_proj,
                class_embed,
                class_embeddings_concat: c.class_embeddings_concat,
                add_time_proj,
                time_embed_act,
                conv_act: act,
                time_cond_proj_dim,
                num_upsamplers,
                dtype,
            },
            config: c.clone(),
            ip_adapter_projection: Default::default(),
        })
    }

    fn check_inputs(&self, input: &UNet2DConditionInput) -> Result<(), ModelError> {
        let s = &self.settings;
        let [b, c, _, _] = input.sample.dims();
        if c != s.in_channels {
            return Err(invalid(format!(
                "`sample` has {c} channels, expected in_channels = {}",
                s.in_channels
            )));
        }
        let [eb, _, ed] = input.encoder_hidden_states.dims();
        if eb != b || ed != s.context_dim {
            return Err(invalid(format!(
                "`encoder_hidden_states` is [{eb}, _, {ed}], expected [{b}, _, {}]",
                s.context_dim
            )));
        }
        if let Some(bad) = input
            .ip_hidden_states
            .iter()
            .flatten()
            .find(|ip| ip.dims()[0] != b)
        {
            return Err(invalid(format!(
                "`ip_hidden_states` holds {:?}, expected batch size {b}",
                bad.dims()
            )));
        }
        let t = input.timestep.dims()[0];
        if t != 1 && t != b {
            return Err(invalid(format!(
                "`timestep` has {t} entries, expected 1 or the batch size {b}"
            )));
        }
        if let Some(d) = s.time_cond_proj_dim
            && let Some(tc) = &input.timestep_cond
            && tc.dims() != [b, d]
        {
            return Err(invalid(format!(
                "`timestep_cond` is {:?}, expected [{b}, {d}]",
                tc.dims()
            )));
        }
        if s.add_time_proj.is_some() {
            match (&input.text_embeds, &input.time_ids) {
                (Some(te), Some(ti)) => {
                    if te.dims()[0] != b || ti.dims()[0] != b {
                        return Err(invalid(format!(
                            "`text_embeds` {:?} and `time_ids` {:?} must have batch size {b}",
                            te.dims(),
                            ti.dims()
                        )));
                    }
                }
                _ => {
                    return Err(invalid(
                        "addition_embed_type \"text_time\" needs `text_embeds` and `time_ids`"
                            .to_owned(),
                    ));
                }
            }
        }
        if s.class_embed.is_some() && input.class_labels.is_none() {
            return Err(invalid(
                "this UNet has a class embedding and needs `class_labels`".to_owned(),
            ));
        }
        if let Some(m) = &input.encoder_attention_mask {
            let [mb, mt] = m.dims();
            let tokens = input.encoder_hidden_states.dims()[1];
            if mb != b || mt != tokens {
                return Err(invalid(format!(
                    "`encoder_attention_mask` is [{mb}, {mt}], expected [{b}, {tokens}]"
                )));
            }
        }
        Ok(())
    }

    /// The noise (or v / sample) prediction.
    ///
    /// Inputs are cast to the model's dtype. Errors name a wrong input shape or a missing input.
    ///
    /// # Shapes
    /// - `input.sample`: `[batch, in_channels, height, width]`
    /// - output: `[batch, out_channels, height, width]`
    pub fn forward(&self, input: UNet2DConditionInput) -> Result<Tensor<4>, ModelError> {
        let _span = tracing::debug_span!("UNet2DConditionModel::forward").entered();
        crate::offload::enter(self);
        self.check_inputs(&input)?;
        let s = &self.settings;
        let dtype = s.dtype;
        let mut sample = input.sample.cast(dtype);
        let [b, _, height, width] = sample.dims();
        let factor = 1usize << s.num_upsamplers;
        let forward_upsample_size = height % factor != 0 || width % factor != 0;

        let context_bias: Option<Tensor<4>> = input.encoder_attention_mask.map(|m| {
            let m = m.cast(dtype);
            m.neg()
                .add_scalar(1.0)
                .mul_scalar(-10000.0)
                .unsqueeze_dims::<4>(&[1, 2])
        });
        if s.center_input_sample {
            sample = sample.mul_scalar(2.0).sub_scalar(1.0);
        }

        // 1. Time embedding.
        let timesteps = if input.timestep.dims()[0] == b {
            input.timestep
        } else {
            input.timestep.expand([b])
        };
        let t_emb = s.time_proj.forward(timesteps.cast(DType::F32)).cast(dtype);
        let mut emb = self
            .time_embedding
            .forward(t_emb, input.timestep_cond.map(|t| t.cast(dtype)));

        // 2. Class embedding.
        if let (Some(kind), Some(labels)) = (s.class_embed, input.class_labels) {
            let class_emb = match (kind, labels, &self.class_embedding) {
                (ClassEmbedKind::Table, ClassLabels::Labels(l), Some(ClassEmbedding::Table(t))) => {
                    // An out-of-range label would make the table lookup panic: check on the host
                    // (one value per sample).
                    let n = t.weight.dims()[0];
                    let values = l
                        .clone()
                        .cast(DType::F32)
                        .into_data()
                        .try_to_vec::<f32>()
                        .map_err(|e| invalid(format!("cannot read `class_labels`: {e:?}")))?;
                    if let Some(bad) = values
                        .iter()
                        .find(|v| !(v.fract() == 0.0 && **v >= 0.0 && (**v as usize) < n))
                    {
                        return Err(invalid(format!(
                            "class label {bad} is not an integer in 0..{n} (num_class_embeds)"
                        )));
                    }
                    let idx: Tensor<2, Int> = l.int().unsqueeze_dim(1);
                    let e = t.forward(idx);
                    let d = e.dims()[2];
                    e.reshape([b, d]).cast(dtype)
                }
                (
                    ClassEmbedKind::Timestep,
                    ClassLabels::Labels(l),
                    Some(ClassEmbedding::Mlp(m)),
                ) => {
                    let p = s.time_proj.forward(l.cast(DType::F32)).cast(dtype);
                    m.forward(p, None)
                }
                (ClassEmbedKind::Identity, ClassLabels::Embeds(e), _) => e.cast(dtype),
                (
                    ClassEmbedKind::Projection,
                    ClassLabels::Embeds(e),
                    Some(ClassEmbedding::Mlp(m)),
                ) => m.forward(e.cast(dtype), None),
                (
                    ClassEmbedKind::SimpleProjection,
                    ClassLabels::Embeds(e),
                    Some(ClassEmbedding::Linear(l)),
                ) => crate::precision::linear(l, e.cast(dtype)),
                (kind, _, _) => {
                    return Err(invalid(format!(
                        "class embedding {kind:?} takes {} class labels",
                        match kind {
                            ClassEmbedKind::Table | ClassEmbedKind::Timestep =>
                                "`ClassLabels::Labels`",
                            _ => "`ClassLabels::Embeds`",
                        }
                    )));
                }
            };
            if class_emb.dims()[0] != b {
                return Err(invalid(format!(
                    "class labels give {:?}, expected batch {b}",
                    class_emb.dims()
                )));
            }
            emb = if s.class_embeddings_concat {
                Tensor::cat(vec![emb, class_emb], 1)
            } else {
                emb + class_emb
            };
        }

        // 3. SDXL's pooled-text and size/crop conditioning.
        if let (Some(proj), Some(add), Some(text), Some(ids)) = (
            &s.add_time_proj,
            &self.add_embedding,
            input.text_embeds,
            input.time_ids,
        ) {
            let n_ids = ids.dims()[1];
            let time_embeds = proj
                .forward(ids.reshape([b * n_ids]).cast(DType::F32))
                .reshape([b, n_ids * proj.num_channels]);
            let add_embeds = Tensor::cat(vec![text.cast(dtype), time_embeds.cast(dtype)], 1);
            let want = add.linear_1.dims()[0];
            if add_embeds.dims()[1] != want {
                return Err(invalid(format!(
                    "`text_embeds` ({} wide) and {n_ids} `time_ids` give {} features, expected projection_class_embeddings_input_dim = {want}",
                    add_embeds.dims()[1] - n_ids * proj.num_channels,
                    add_embeds.dims()[1]
                )));
            }
            emb = emb + add.forward(add_embeds, None);
        }
        if let Some(a) = s.time_embed_act {
            emb = a.forward(emb);
        }
        let mut context = input.encoder_hidden_states.cast(dtype);
        if let Some(p) = &self.encoder_hid_proj {
            context = crate::precision::linear(p, context);
        }
        let context = EncoderHiddenStates {
            hidden_states: context,
            ip_hidden_states: input
                .ip_hidden_states
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.cast(dtype))
                .collect(),
        };

        // 4. Down.
        let mut h = self.conv_in.forward(sample);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(h, Some(&emb), Some(&context), context_bias.as_ref());
            h = out;
            skips.extend(states);
        }
        if let Some(res) = input.down_block_additional_residuals {
            skips = add_down_residuals(skips, res, dtype)?;
        }

        // 5. Mid.
        if let Some(mid) = &self.mid_block {
            h = mid.forward(h, Some(&emb), &context, context_bias.as_ref());
        }
        if let Some(r) = input.mid_block_additional_residual {
            h = add_mid_residual(h, r, dtype)?;
        }

        // 6. Up: each block consumes one skip state per resnet from the end of the list.
        let n_up = self.up_blocks.len();
        for (i, block) in self.up_blocks.iter().enumerate() {
            let take = block.resnets.len();
            let upsample_size = if i + 1 < n_up && forward_upsample_size {
                skips
                    .len()
                    .checked_sub(take + 1)
                    .and_then(|j| skips.get(j))
                    .map(|t| {
                        let [_, _, hh, ww] = t.dims();
                        [hh, ww]
                    })
            } else {
                None
            };
            h = block.forward(
                h,
                Some(&mut skips),
                Some(&emb),
                Some(&context),
                context_bias.as_ref(),
                upsample_size,
            );
        }

        // 7. Out.
        if let Some(norm) = &self.conv_norm_out {
            h = s.conv_act.after_group_norm(norm, h);
        }
        Ok(self.conv_out.forward(h))
    }
}

impl NamedLayers for UNet2DConditionModel {
    /// Children in the order diffusers' `__init__` registers them: `up_blocks` before
    /// `mid_block`, which is what `attn_processors` lists.
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; conv_in, time_embedding, add_embedding, down_blocks, up_blocks, mid_block, conv_out);
    }
}

crate::named::lora_model_from_named!(UNet2DConditionModel);

/// Attention processors (diffusers' `AttentionMixin` on the UNet).
impl UNet2DConditionModel {
    /// Every attention layer's processor by name
    /// (`down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor`), in diffusers'
    /// `attn_processors` order (down blocks, up blocks, mid block).
    pub fn attn_processors(&self) -> Vec<(String, AttnProcessorRef)> {
        crate::attention_processor::attn_processors(self)
    }

    /// Sets one processor on every attention layer, or one per name (diffusers'
    /// `set_attn_processor`); a map must name every layer and nothing else, and an error names
    /// the first unknown or missing key (nothing changes then).
    pub fn set_attn_processor(
        &self,
        processor: impl Into<AttnProcessorSetting>,
    ) -> Result<(), ModelError> {
        crate::attention_processor::set_attn_processor(MODEL, self, processor.into())
    }

    /// diffusers' `set_default_attn_processor`: the classic `AttnProcessor` everywhere.
    pub fn set_default_attn_processor(&self) -> Result<(), ModelError> {
        crate::attention_processor::set_default_attn_processor(MODEL, self)
    }
}
