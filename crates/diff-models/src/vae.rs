//! The VAE's `Encoder`, `Decoder` and `DiagonalGaussianDistribution`
//! (diffusers `models/autoencoders/vae.py`).

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use crate::ModelError;
use crate::named::{NamedLayer, NamedLayers, visit_fields};
use crate::resnet::{Activation, ResnetBlock2DConfig, TimeEmbeddingNorm, conv2d, group_norm};
use crate::unet_2d_blocks::{BlockResnets, DownBlock2D, UNetMidBlock2D, UpBlock2D};

/// Settings shared by [`Encoder`] and [`Decoder`].
#[derive(Debug, Clone)]
pub struct CoderConfig {
    /// Channels in (image channels for the encoder, latent channels for the decoder).
    pub in_channels: usize,
    /// Channels out (`2 * latent_channels` for the encoder, image channels for the decoder).
    pub out_channels: usize,
    /// `block_out_channels`.
    pub block_out_channels: Vec<usize>,
    /// `layers_per_block`.
    pub layers_per_block: usize,
    /// `norm_num_groups`.
    pub norm_num_groups: usize,
    /// `act_fn`.
    pub act: Activation,
    /// `mid_block_add_attention`.
    pub mid_block_add_attention: bool,
}

impl CoderConfig {
    fn resnets(&self) -> BlockResnets {
        BlockResnets {
            temb_channels: None,
            groups: self.norm_num_groups,
            eps: 1e-6,
            template: ResnetBlock2DConfig {
                in_channels: 0,
                out_channels: 0,
                temb_channels: None,
                groups: self.norm_num_groups,
                eps: 1e-6,
                act: self.act,
                time_embedding_norm: TimeEmbeddingNorm::Default,
                output_scale_factor: 1.0,
                skip_time_act: false,
            },
        }
    }
}

/// diffusers' VAE `Encoder` (with `double_z = True`).
#[derive(Module, Debug)]
pub struct Encoder {
    /// Input convolution.
    pub conv_in: Conv2d,
    /// `DownEncoderBlock2D`s.
    pub down_blocks: Vec<DownBlock2D>,
    /// Mid block.
    pub mid_block: UNetMidBlock2D,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// Output convolution to mean and log-variance.
    pub conv_out: Conv2d,
    /// Activation.
    #[module(skip)]
    pub act: Activation,
}

impl Encoder {
    /// Builds the encoder; `model` names the owning model in errors.
    pub fn new(model: &str, c: &CoderConfig, device: &Device) -> Result<Self, ModelError> {
        let boc = &c.block_out_channels;
        let (Some(&first), Some(&last)) = (boc.first(), boc.last()) else {
            return Err(ModelError::UnsupportedConfig {
                model: model.to_owned(),
                key: "block_out_channels".to_owned(),
                value: "[]".to_owned(),
                reason: "needs at least one block".to_owned(),
            });
        };
        let resnets = c.resnets();
        let mut down_blocks = Vec::with_capacity(boc.len());
        let mut out_ch = first;
        for (i, &ch) in boc.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = ch;
            down_blocks.push(DownBlock2D::new(
                model,
                c.layers_per_block,
                in_ch,
                out_ch,
                &resnets,
                None,
                i + 1 < boc.len(),
                0,
                device,
            )?);
        }
        Ok(Self {
            conv_in: conv2d(c.in_channels, first, 3, 1, 1, device),
            down_blocks,
            mid_block: UNetMidBlock2D::new(
                model,
                last,
                &resnets,
                c.mid_block_add_attention,
                device,
            )?,
            conv_norm_out: group_norm(c.norm_num_groups, last, 1e-6, device),
            conv_out: conv2d(last, c.out_channels, 3, 1, 1, device),
            act: c.act,
        })
    }

    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`
    /// - output: `[batch, out_channels, h / 2^(blocks - 1), w / 2^(blocks - 1)]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let _span = tracing::debug_span!("Encoder").entered();
        let mut h = crate::precision::conv2d(&self.conv_in, x);
        for block in &self.down_blocks {
            h = block.forward(h, None, None, None).0;
        }
        h = self.mid_block.forward(h);
        h = self.act.after_group_norm(&self.conv_norm_out, h);
        crate::precision::conv2d(&self.conv_out, h)
    }
}

/// diffusers' VAE `Decoder` (group-norm kind).
#[derive(Module, Debug)]
pub struct Decoder {
    /// Input convolution.
    pub conv_in: Conv2d,
    /// Mid block.
    pub mid_block: UNetMidBlock2D,
    /// `UpDecoderBlock2D`s.
    pub up_blocks: Vec<UpBlock2D>,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// Output convolution.
    pub conv_out: Conv2d,
    /// Activation.
    #[module(skip)]
    pub act: Activation,
}

impl Decoder {
    /// Builds the decoder; `model` names the owning model in errors.
    pub fn new(model: &str, c: &CoderConfig, device: &Device) -> Result<Self, ModelError> {
        let rboc: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let (Some(&top), Some(&bottom)) = (rboc.first(), rboc.last()) else {
            return Err(ModelError::UnsupportedConfig {
                model: model.to_owned(),
                key: "block_out_channels".to_owned(),
                value: "[]".to_owned(),
                reason: "needs at least one block".to_owned(),
            });
        };
        let resnets = c.resnets();
        let mut up_blocks = Vec::with_capacity(rboc.len());
        let mut out_ch = top;
        for (i, &ch) in rboc.iter().enumerate() {
            let prev = out_ch;
            out_ch = ch;
            up_blocks.push(UpBlock2D::new(
                model,
                c.layers_per_block + 1,
                prev,
                None,
                out_ch,
                &resnets,
                None,
                i + 1 < rboc.len(),
                device,
            )?);
        }
        Ok(Self {
            conv_in: conv2d(c.in_channels, top, 3, 1, 1, device),
            mid_block: UNetMidBlock2D::new(
                model,
                top,
                &resnets,
                c.mid_block_add_attention,
                device,
            )?,
            up_blocks,
            conv_norm_out: group_norm(c.norm_num_groups, bottom, 1e-6, device),
            conv_out: conv2d(bottom, c.out_channels, 3, 1, 1, device),
            act: c.act,
        })
    }

    /// # Shapes
    /// - `z`: `[batch, in_channels, h, w]`
    /// - output: `[batch, out_channels, h * 2^(blocks - 1), w * 2^(blocks - 1)]`
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let _span = tracing::debug_span!("Decoder").entered();
        let mut h = crate::precision::conv2d(&self.conv_in, z);
        h = self.mid_block.forward(h);
        for block in &self.up_blocks {
            h = block.forward(h, None, None, None, None, None);
        }
        h = self.act.after_group_norm(&self.conv_norm_out, h);
        crate::precision::conv2d(&self.conv_out, h)
    }
}

/// diffusers' `DiagonalGaussianDistribution`: the encoder's moments split into mean and
/// log-variance (clamped to [-30, 20]).
#[derive(Debug, Clone)]
pub struct DiagonalGaussianDistribution {
    /// Mean, `[batch, latent_channels, h, w]`.
    pub mean: Tensor<4>,
    /// Clamped log-variance, same shape.
    pub logvar: Tensor<4>,
    /// `exp(0.5 * logvar)`.
    pub std: Tensor<4>,
}

impl DiagonalGaussianDistribution {
    /// Splits `[batch, 2 * latent_channels, h, w]` moments.
    pub fn new(moments: Tensor<4>) -> Self {
        let c = moments.dims()[1] / 2;
        let mean = moments.clone().narrow(1, 0, c);
        let logvar = moments.narrow(1, c, c).clamp(-30.0, 20.0);
        let std = logvar.clone().mul_scalar(0.5).exp();
        Self { mean, logvar, std }
    }

    /// `mean + std * noise`, with `noise` a standard-normal tensor of the mean's shape (draw it
    /// with the torch-exact generator to reproduce diffusers' samples).
    ///
    /// Returns `None` when `noise` does not have the mean's shape.
    pub fn sample(&self, noise: Tensor<4>) -> Option<Tensor<4>> {
        if noise.dims() != self.mean.dims() {
            return None;
        }
        let noise = noise.cast(self.mean.dtype());
        Some(self.mean.clone() + self.std.clone() * noise)
    }

    /// The mode, which is the mean.
    pub fn mode(&self) -> Tensor<4> {
        self.mean.clone()
    }

    /// The variance, `exp(logvar)`.
    pub fn var(&self) -> Tensor<4> {
        self.logvar.clone().exp()
    }
}

// Children in diffusers' registration order (the decoder registers `up_blocks` before
// `mid_block`).
impl NamedLayers for Encoder {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; down_blocks, mid_block);
    }
}

impl NamedLayers for Decoder {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; up_blocks, mid_block);
    }
}
