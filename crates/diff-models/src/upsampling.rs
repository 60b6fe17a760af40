//! `Upsample2D` (diffusers `models/upsampling.py`): nearest-neighbour x2, then a 3x3 convolution.

use burn::module::Module;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use crate::lora::LoraConv2d;
use crate::named::{NamedLayer, NamedLayers, visit_fields};
use crate::resnet::conv2d;

/// diffusers' `Upsample2D` with `use_conv=True`.
#[derive(Module, Debug)]
pub struct Upsample2D {
    /// The 3x3 convolution after interpolation.
    pub conv: LoraConv2d,
}

impl Upsample2D {
    /// Builds the layer.
    pub fn new(channels: usize, out_channels: usize, device: &Device) -> Self {
        Self {
            conv: conv2d(channels, out_channels, 3, 1, 1, device).into(),
        }
    }

    /// Doubles the spatial size (or resizes to `output_size`, which the UNet passes when the
    /// latent is not a multiple of its overall downsampling factor), then convolves.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`
    /// - output: `[batch, out_channels, 2 * height, 2 * width]` or `output_size`
    pub fn forward(&self, x: Tensor<4>, output_size: Option<[usize; 2]>) -> Tensor<4> {
        let _span = tracing::trace_span!("Upsample2D").entered();
        let [_, _, h, w] = x.dims();
        let size = output_size.unwrap_or([h * 2, w * 2]);
        let x = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
        );
        self.conv.forward(x)
    }
}

impl NamedLayers for Upsample2D {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; conv);
    }
}
