//! `ResnetBlock2D` and the small layer helpers the UNet and VAE blocks share
//! (diffusers `models/resnet.py`, `models/activations.py`).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation;
use burn::tensor::{Device, Tensor};

use crate::ModelError;
use crate::lora::{LoraConv2d, LoraLinear};
use crate::named::{NamedLayer, NamedLayers, visit_fields};

/// An activation function named by a diffusers config (`act_fn`), as `get_activation` maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`: `x * sigmoid(x)`.
    Silu,
    /// `gelu`: the exact (erf) GELU.
    Gelu,
    /// `mish`: `x * tanh(softplus(x))`.
    Mish,
    /// `relu`.
    Relu,
}

impl Activation {
    /// Parses a diffusers activation name; `model` and `key` name the config entry in errors.
    pub fn from_name(name: &str, model: &str, key: &str) -> Result<Self, ModelError> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "gelu" => Ok(Self::Gelu),
            "mish" => Ok(Self::Mish),
            "relu" => Ok(Self::Relu),
            other => Err(ModelError::UnsupportedConfig {
                model: model.to_owned(),
                key: key.to_owned(),
                value: format!("\"{other}\""),
                reason: "expected one of silu, swish, gelu, mish, relu".to_owned(),
            }),
        }
    }

    /// Applies the activation element-wise.
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Silu => crate::precision::elementwise(x, activation::silu),
            Self::Gelu => crate::precision::elementwise(x, activation::gelu),
            Self::Mish => crate::precision::elementwise(x, activation::mish),
            Self::Relu => activation::relu(x),
        }
    }

    /// `self.forward(norm(x))`: on the CPU in float32 a SiLU is fused into the group norm's
    /// pass.
    pub(crate) fn after_group_norm<const D: usize>(
        self,
        norm: &GroupNorm,
        x: Tensor<D>,
    ) -> Tensor<D> {
        match self {
            Self::Silu => crate::precision::group_norm_silu(norm, x, true),
            other => other.forward(crate::precision::group_norm(norm, x)),
        }
    }
}

/// A `torch.nn.Conv2d` with a square kernel, symmetric padding and a bias.
pub(crate) fn conv2d(
    channels_in: usize,
    channels_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([channels_in, channels_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// A `torch.nn.Linear`.
pub(crate) fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// A `torch.nn.GroupNorm` with affine parameters.
pub(crate) fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// Checks that `channels` splits into `groups` groups, so that GroupNorm's init cannot panic.
pub(crate) fn check_groups(model: &str, groups: usize, channels: usize) -> Result<(), ModelError> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(ModelError::UnsupportedConfig {
            model: model.to_owned(),
            key: "norm_num_groups".to_owned(),
            value: groups.to_string(),
            reason: format!("{channels} channels do not split into {groups} groups"),
        });
    }
    Ok(())
}

/// How a resnet injects the time embedding (`resnet_time_scale_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeEmbeddingNorm {
    /// `default`: add the projected embedding before `norm2`.
    Default,
    /// `scale_shift`: `norm2(h) * (1 + scale) + shift`, the projection giving both halves.
    ScaleShift,
}

impl TimeEmbeddingNorm {
    /// Parses `resnet_time_scale_shift`.
    pub fn from_name(name: &str, model: &str) -> Result<Self, ModelError> {
        match name {
            "default" => Ok(Self::Default),
            "scale_shift" => Ok(Self::ScaleShift),
            other => Err(ModelError::UnsupportedConfig {
                model: model.to_owned(),
                key: "resnet_time_scale_shift".to_owned(),
                value: format!("\"{other}\""),
                reason: "expected \"default\" or \"scale_shift\"".to_owned(),
            }),
        }
    }
}

/// The settings of one [`ResnetBlock2D`].
#[derive(Debug, Clone)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the time embedding, or `None` for resnets without one (the VAE's).
    pub temb_channels: Option<usize>,
    /// Groups of both group norms.
    pub groups: usize,
    /// Epsilon of both group norms.
    pub eps: f64,
    /// Activation.
    pub act: Activation,
    /// How the time embedding enters.
    pub time_embedding_norm: TimeEmbeddingNorm,
    /// The output is divided by this.
    pub output_scale_factor: f64,
    /// Skip the activation before `time_emb_proj`.
    pub skip_time_act: bool,
}

impl ResnetBlock2DConfig {
    /// Builds the block; `model` names the owning model in errors.
    pub fn init(&self, model: &str, device: &Device) -> Result<ResnetBlock2D, ModelError> {
        check_groups(model, self.groups, self.in_channels)?;
        check_groups(model, self.groups, self.out_channels)?;
        let time_emb_proj = self.temb_channels.map(|t| {
            let out = match self.time_embedding_norm {
                TimeEmbeddingNorm::Default => self.out_channels,
                TimeEmbeddingNorm::ScaleShift => self.out_channels * 2,
            };
            LoraLinear::from(linear(t, out, true, device))
        });
        // diffusers adds a 1x1 shortcut exactly when the channel count changes.
        let conv_shortcut = (self.in_channels != self.out_channels)
            .then(|| conv2d(self.in_channels, self.out_channels, 1, 1, 0, device).into());
        Ok(ResnetBlock2D {
            norm1: group_norm(self.groups, self.in_channels, self.eps, device),
            conv1: conv2d(self.in_channels, self.out_channels, 3, 1, 1, device).into(),
            time_emb_proj,
            norm2: group_norm(self.groups, self.out_channels, self.eps, device),
            conv2: conv2d(self.out_channels, self.out_channels, 3, 1, 1, device).into(),
            conv_shortcut,
            act: self.act,
            scale_shift: self.time_embedding_norm == TimeEmbeddingNorm::ScaleShift,
            output_scale_factor: self.output_scale_factor,
            skip_time_act: self.skip_time_act,
        })
    }
}

/// diffusers' `ResnetBlock2D`: two 3x3 convolutions with group norms, the time embedding
/// injected between them, and a (1x1 when the width changes) shortcut.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// First norm.
    pub norm1: GroupNorm,
    /// First convolution.
    pub conv1: LoraConv2d,
    /// Projection of the time embedding.
    pub time_emb_proj: Option<LoraLinear>,
    /// Second norm.
    pub norm2: GroupNorm,
    /// Second convolution.
    pub conv2: LoraConv2d,
    /// 1x1 shortcut when input and output widths differ.
    pub conv_shortcut: Option<LoraConv2d>,
    /// Activation.
    #[module(skip)]
    pub act: Activation,
    /// `resnet_time_scale_shift == "scale_shift"`.
    pub scale_shift: bool,
    /// The output is divided by this.
    pub output_scale_factor: f64,
    /// Skip the activation before `time_emb_proj`.
    pub skip_time_act: bool,
}

impl ResnetBlock2D {
    /// # Shapes
    /// - `x`: `[batch, in_channels, height, width]`
    /// - `temb`: `[batch, temb_channels]` (ignored when the block has no time projection)
    /// - output: `[batch, out_channels, height, width]`
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let _span = tracing::trace_span!("ResnetBlock2D").entered();
        let h = self.act.after_group_norm(&self.norm1, x.clone());
        let mut h = self.conv1.forward(h);

        let temb = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(t)) => {
                let t = if self.skip_time_act {
                    t.clone()
                } else {
                    self.act.forward(t.clone())
                };
                let t: Tensor<4> = proj.forward(t).unsqueeze_dims(&[2, 3]);
                Some(t)
            }
            _ => None,
        };

        if self.scale_shift {
            h = crate::precision::group_norm(&self.norm2, h);
            if let Some(t) = temb {
                let mut halves = t.chunk(2, 1).into_iter();
                if let (Some(scale), Some(shift)) = (halves.next(), halves.next()) {
                    h = h.clone() * scale.add_scalar(1.0) + shift;
                }
            }
        } else {
            if let Some(t) = temb {
                h = h + t;
            }
            h = self.act.after_group_norm(&self.norm2, h);
        }
        let h = if self.scale_shift {
            self.act.forward(h)
        } else {
            h
        };
        let h = self.conv2.forward(h);

        let x = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        let out = x + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out.div_scalar(self.output_scale_factor)
        }
    }
}

impl NamedLayers for ResnetBlock2D {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; conv1, time_emb_proj, conv2, conv_shortcut);
    }
}
