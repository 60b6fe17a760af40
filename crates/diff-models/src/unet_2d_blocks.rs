//! The down, mid and up blocks of the UNet and of the VAE's encoder/decoder
//! (diffusers `models/unets/unet_2d_blocks.py`).
//!
//! `CrossAttnDownBlock2D` and `DownBlock2D` share one struct, [`DownBlock2D`], whose
//! `attentions` list is empty for the plain kind (their state dicts differ exactly by the
//! `attentions.*` keys); the same holds for the up blocks. The VAE's `DownEncoderBlock2D` and
//! `UpDecoderBlock2D` are the plain kinds without a time embedding.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::ModelError;
use crate::attention::{
    Attention, AttentionConfig, EncoderHiddenStates, Transformer2DConfig, Transformer2DModel,
};
use crate::downsampling::Downsample2D;
use crate::named::{NamedLayer, NamedLayers, visit_fields};
use crate::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use crate::upsampling::Upsample2D;

/// Settings shared by the resnets of one block.
#[derive(Debug, Clone)]
pub struct BlockResnets {
    /// Width of the time embedding (`None` in the VAE).
    pub temb_channels: Option<usize>,
    /// Group-norm groups.
    pub groups: usize,
    /// Group-norm epsilon.
    pub eps: f64,
    /// Template for the resnets; channels are filled in per layer.
    pub template: ResnetBlock2DConfig,
}

impl BlockResnets {
    fn resnet(
        &self,
        model: &str,
        in_channels: usize,
        out_channels: usize,
        output_scale_factor: f64,
        device: &Device,
    ) -> Result<ResnetBlock2D, ModelError> {
        ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels: self.temb_channels,
            groups: self.groups,
            eps: self.eps,
            output_scale_factor,
            ..self.template.clone()
        }
        .init(model, device)
    }
}

/// Settings of the cross-attention transformers of one block.
#[derive(Debug, Clone)]
pub struct BlockAttention {
    /// Heads (the config's `attention_head_dim`, see diffusers issue 2011).
    pub num_attention_heads: usize,
    /// Transformer blocks in each `Transformer2DModel`, one entry per layer of the block.
    pub transformer_layers: Vec<usize>,
    /// Width of the text states.
    pub cross_attention_dim: usize,
    /// Linear projections (SD 2.x, SDXL).
    pub use_linear_projection: bool,
    /// `attn1` attends to the text too.
    pub only_cross_attention: bool,
}

impl BlockAttention {
    fn transformer(
        &self,
        model: &str,
        layer: usize,
        channels: usize,
        groups: usize,
        device: &Device,
    ) -> Result<Transformer2DModel, ModelError> {
        let heads = self.num_attention_heads;
        if heads == 0 || !channels.is_multiple_of(heads) {
            return Err(ModelError::UnsupportedConfig {
                model: model.to_owned(),
                key: "attention_head_dim".to_owned(),
                value: heads.to_string(),
                reason: format!("{channels} channels do not split into {heads} heads"),
            });
        }
        let num_layers = self.transformer_layers.get(layer).copied().ok_or_else(|| {
            ModelError::UnsupportedConfig {
                model: model.to_owned(),
                key: "transformer_layers_per_block".to_owned(),
                value: format!("{:?}", self.transformer_layers),
                reason: format!("no entry for layer {layer} of a block"),
            }
        })?;
        Ok(Transformer2DConfig {
            num_attention_heads: heads,
            attention_head_dim: channels / heads,
            in_channels: channels,
            num_layers,
            cross_attention_dim: self.cross_attention_dim,
            norm_num_groups: groups,
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: self.only_cross_attention,
        }
        .init(device))
    }
}

/// `CrossAttnDownBlock2D`, `DownBlock2D` and the VAE's `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct DownBlock2D {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// One transformer after each resnet (empty for the plain kinds).
    pub attentions: Vec<Transformer2DModel>,
    /// The downsampler (empty in the last block).
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock2D {
    /// Builds a block of `num_layers` resnets.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &str,
        num_layers: usize,
        in_channels: usize,
        out_channels: usize,
        resnets: &BlockResnets,
        attention: Option<&BlockAttention>,
        add_downsample: bool,
        downsample_padding: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut rs = Vec::with_capacity(num_layers);
        let mut attns = Vec::new();
        for i in 0..num_layers {
            let cin = if i == 0 { in_channels } else { out_channels };
            rs.push(resnets.resnet(model, cin, out_channels, 1.0, device)?);
            if let Some(a) = attention {
                attns.push(a.transformer(model, i, out_channels, resnets.groups, device)?);
            }
        }
        let downsamplers = if add_downsample {
            vec![Downsample2D::new(
                out_channels,
                out_channels,
                downsample_padding,
                device,
            )]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets: rs,
            attentions: attns,
            downsamplers,
        })
    }

    /// Returns the output and the states the up blocks take as skip connections (one per
    /// resnet, then the downsampled one).
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`
    /// - output: `[batch, out_channels, h / 2, w / 2]` (or `h, w` in the last block)
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: Option<&Tensor<2>>,
        context: Option<&EncoderHiddenStates>,
        context_bias: Option<&Tensor<4>>,
    ) -> (Tensor<4>, Vec<Tensor<4>>) {
        let _span = tracing::trace_span!("DownBlock2D").entered();
        let mut h = x;
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(h, temb);
            if let (Some(attn), Some(ctx)) = (self.attentions.get(i), context) {
                h = attn.forward(h, ctx, context_bias);
            }
            states.push(h.clone());
        }
        for down in &self.downsamplers {
            h = down.forward(h);
            states.push(h.clone());
        }
        (h, states)
    }
}

/// `CrossAttnUpBlock2D`, `UpBlock2D` and the VAE's `UpDecoderBlock2D`.
#[derive(Module, Debug)]
pub struct UpBlock2D {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// One transformer after each resnet (empty for the plain kinds).
    pub attentions: Vec<Transformer2DModel>,
    /// The upsampler (empty in the last block).
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlock2D {
    /// Builds a UNet up block: resnet `i` takes the previous output concatenated with a skip
    /// state, as diffusers sizes them (`prev_output_channel` first, then `out_channels`; the
    /// last skip state has `in_channels`). With `skip_connections == false` (VAE decoder) the
    /// resnets take `in_channels` then `out_channels`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &str,
        num_layers: usize,
        in_channels: usize,
        prev_output_channel: Option<usize>,
        out_channels: usize,
        resnets: &BlockResnets,
        attention: Option<&BlockAttention>,
        add_upsample: bool,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut rs = Vec::with_capacity(num_layers);
        let mut attns = Vec::new();
        for i in 0..num_layers {
            let cin = match prev_output_channel {
                Some(prev) => {
                    let skip = if i + 1 == num_layers {
                        in_channels
                    } else {
                        out_channels
                    };
                    let first = if i == 0 { prev } else { out_channels };
                    first + skip
                }
                None => {
                    if i == 0 {
                        in_channels
                    } else {
                        out_channels
                    }
                }
            };
            rs.push(resnets.resnet(model, cin, out_channels, 1.0, device)?);
            if let Some(a) = attention {
                attns.push(a.transformer(model, i, out_channels, resnets.groups, device)?);
            }
        }
        let upsamplers = if add_upsample {
            vec![Upsample2D::new(out_channels, out_channels, device)]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets: rs,
            attentions: attns,
            upsamplers,
        })
    }

    /// Runs the block, popping one skip state per resnet from the end of `skips` (UNet); with
    /// `skips == None` (VAE) there is no concatenation.
    ///
    /// # Shapes
    /// - `x`: `[batch, prev_output_channel, h, w]`
    /// - output: `[batch, out_channels, 2h, 2w]` (or `upsample_size`; `h, w` in the last block)
    pub fn forward(
        &self,
        x: Tensor<4>,
        mut skips: Option<&mut Vec<Tensor<4>>>,
        temb: Option<&Tensor<2>>,
        context: Option<&EncoderHiddenStates>,
        context_bias: Option<&Tensor<4>>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<4> {
        let _span = tracing::trace_span!("UpBlock2D").entered();
        let mut h = x;
        for (i, resnet) in self.resnets.iter().enumerate() {
            if let Some(skip) = skips.as_mut().and_then(|s| s.pop()) {
                h = Tensor::cat(vec![h, skip], 1);
            }
            h = resnet.forward(h, temb);
            if let (Some(attn), Some(ctx)) = (self.attentions.get(i), context) {
                h = attn.forward(h, ctx, context_bias);
            }
        }
        for up in &self.upsamplers {
            h = up.forward(h, upsample_size);
        }
        h
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn {
    /// `1 + num_layers` resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// `num_layers` transformers.
    pub attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// Builds the block with one attention layer, as the UNet does.
    pub fn new(
        model: &str,
        channels: usize,
        resnets: &BlockResnets,
        attention: &BlockAttention,
        output_scale_factor: f64,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let first = resnets.resnet(model, channels, channels, output_scale_factor, device)?;
        let attn = attention.transformer(model, 0, channels, resnets.groups, device)?;
        let second = resnets.resnet(model, channels, channels, output_scale_factor, device)?;
        Ok(Self {
            resnets: vec![first, second],
            attentions: vec![attn],
        })
    }

    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`, output: same
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: Option<&Tensor<2>>,
        context: &EncoderHiddenStates,
        context_bias: Option<&Tensor<4>>,
    ) -> Tensor<4> {
        let _span = tracing::trace_span!("UNetMidBlock2DCrossAttn").entered();
        let mut resnets = self.resnets.iter();
        let mut h = match resnets.next() {
            Some(r) => r.forward(x, temb),
            None => x,
        };
        for (attn, resnet) in self.attentions.iter().zip(resnets) {
            h = attn.forward(h, context, context_bias);
            h = resnet.forward(h, temb);
        }
        h
    }
}

/// `UNetMidBlock2D` as the VAE uses it: resnet, then (spatial self-attention, resnet) pairs.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D {
    /// `1 + num_layers` resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// Single-head self-attentions with group norm (empty when `mid_block_add_attention` is
    /// false).
    pub attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    /// Builds the VAE's mid block: one attention layer with `attention_head_dim == channels`.
    pub fn new(
        model: &str,
        channels: usize,
        resnets: &BlockResnets,
        add_attention: bool,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let first = resnets.resnet(model, channels, channels, 1.0, device)?;
        let second = resnets.resnet(model, channels, channels, 1.0, device)?;
        let attentions = if add_attention {
            vec![
                AttentionConfig {
                    query_dim: channels,
                    cross_attention_dim: None,
                    heads: 1,
                    dim_head: channels,
                    bias: true,
                    group_norm: Some((resnets.groups, resnets.eps)),
                    residual_connection: true,
                    rescale_output_factor: 1.0,
                }
                .init(device),
            ]
        } else {
            Vec::new()
        };
        Ok(Self {
            resnets: vec![first, second],
            attentions,
        })
    }

    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`, output: same
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let _span = tracing::trace_span!("UNetMidBlock2D").entered();
        let mut resnets = self.resnets.iter();
        let mut h = match resnets.next() {
            Some(r) => r.forward(x, None),
            None => x,
        };
        for (i, resnet) in resnets.enumerate() {
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward_spatial(h);
            }
            h = resnet.forward(h, None);
        }
        h
    }
}

// Children in the order diffusers' blocks register them: `attentions` before `resnets`.
impl NamedLayers for DownBlock2D {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; attentions, resnets, downsamplers);
    }
}

impl NamedLayers for UpBlock2D {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; attentions, resnets, upsamplers);
    }
}

impl NamedLayers for UNetMidBlock2DCrossAttn {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; attentions, resnets);
    }
}

impl NamedLayers for UNetMidBlock2D {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; attentions, resnets);
    }
}
