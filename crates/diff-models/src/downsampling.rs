//! `Downsample2D` (diffusers `models/downsampling.py`): a stride-2 3x3 convolution.

use burn::module::Module;
use burn::nn::Initializer;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Device, Tensor};

use crate::lora::LoraConv2d;
use crate::named::{NamedLayer, NamedLayers, visit_fields};

/// diffusers' `Downsample2D` with `use_conv=True`, the form every SD UNet and VAE uses.
#[derive(Module, Debug)]
pub struct Downsample2D {
    /// The stride-2 convolution.
    pub conv: LoraConv2d,
}

impl Downsample2D {
    /// Builds the layer. With `padding == 0` diffusers pads one column on the right and one row
    /// at the bottom before the convolution (the VAE encoder's form); here that asymmetric
    /// padding is the convolution's own, which gives the same result.
    pub fn new(channels: usize, out_channels: usize, padding: usize, device: &Device) -> Self {
        let pad = if padding == 0 {
            PaddingConfig2d::Explicit(0, 0, 1, 1)
        } else {
            PaddingConfig2d::Explicit(padding, padding, padding, padding)
        };
        let conv = Conv2dConfig::new([channels, out_channels], [3, 3])
            .with_stride([2, 2])
            .with_padding(pad)
            .with_initializer(Initializer::Zeros)
            .init(device);
        Self { conv: conv.into() }
    }

    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`
    /// - output: `[batch, out_channels, ceil(height / 2), ceil(width / 2)]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let _span = tracing::trace_span!("Downsample2D").entered();
        self.conv.forward(x)
    }
}

impl NamedLayers for Downsample2D {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; conv);
    }
}
