//! Timestep and class embeddings (diffusers `models/embeddings.py`): the sinusoidal `Timesteps`
//! projection, the `TimestepEmbedding` MLP and the UNet's class embeddings.

use burn::module::Module;
use burn::nn::{Embedding, Linear};

use crate::lora::LoraLinear;
use crate::named::{NamedLayer, NamedLayers, visit_fields};
use burn::tensor::{Device, Tensor, TensorData};

use crate::resnet::{Activation, linear};

/// diffusers' `get_timestep_embedding` with `scale = 1` and `max_period = 10000`.
///
/// The frequencies are computed in f32 in the order PyTorch does (`-ln(10000) * i`, divided by
/// `half - shift`, then `exp`), so that they match bit for bit; the products with the timesteps
/// and the sines run on the device in f32, and the result is cast to `dtype`.
///
/// # Shapes
/// - `timesteps`: `[n]`
/// - output: `[n, dim]`
pub fn timestep_embedding(
    timesteps: Tensor<1>,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
) -> Tensor<2> {
    let device = timesteps.device();
    let dtype = timesteps.dtype();
    let half = dim / 2;
    let log_period = -(10000f64.ln()) as f32;
    let denom = (half as f64 - downscale_freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((log_period * i as f32) / denom).exp())
        .collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &device);
    let t = timesteps.cast(burn::tensor::DType::F32);
    let args = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0);
    let (first, second) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(vec![second, first], 1)
    } else {
        Tensor::cat(vec![first, second], 1)
    };
    // An odd width gets one zero column, as diffusers pads it.
    let emb = if dim % 2 == 1 {
        emb.pad([(0, 0), (0, 1)], burn::tensor::ops::PadMode::Constant(0.0))
    } else {
        emb
    };
    emb.cast(dtype)
}

/// diffusers' `Timesteps`: the parameter-free sinusoidal projection.
#[derive(Debug, Clone, Copy)]
pub struct Timesteps {
    /// Output width.
    pub num_channels: usize,
    /// Cosine first.
    pub flip_sin_to_cos: bool,
    /// Frequency shift.
    pub downscale_freq_shift: f64,
}

impl Timesteps {
    /// # Shapes
    /// - `timesteps`: `[n]`
    /// - output: `[n, num_channels]`
    pub fn forward(&self, timesteps: Tensor<1>) -> Tensor<2> {
        let _span = tracing::trace_span!("Timesteps").entered();
        timestep_embedding(
            timesteps,
            self.num_channels,
            self.flip_sin_to_cos,
            self.downscale_freq_shift,
        )
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(act(linear_1(x + cond_proj(cond))))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// First projection.
    pub linear_1: LoraLinear,
    /// Second projection.
    pub linear_2: LoraLinear,
    /// Projection of a condition added to the input (LCM's guidance embedding).
    pub cond_proj: Option<Linear>,
    /// Activation between the projections.
    #[module(skip)]
    pub act: Activation,
    /// Activation after `linear_2` (`timestep_post_act`).
    #[module(skip)]
    pub post_act: Option<Activation>,
}

impl TimestepEmbedding {
    /// Builds the MLP.
    pub fn new(
        in_channels: usize,
        time_embed_dim: usize,
        act: Activation,
        post_act: Option<Activation>,
        cond_proj_dim: Option<usize>,
        device: &Device,
    ) -> Self {
        Self {
            linear_1: linear(in_channels, time_embed_dim, true, device).into(),
            linear_2: linear(time_embed_dim, time_embed_dim, true, device).into(),
            cond_proj: cond_proj_dim.map(|d| linear(d, in_channels, false, device)),
            act,
            post_act,
        }
    }

    /// # Shapes
    /// - `sample`: `[batch, in_channels]`
    /// - `condition`: `[batch, cond_proj_dim]`, used only when the model has `cond_proj`
    /// - output: `[batch, time_embed_dim]`
    pub fn forward(&self, sample: Tensor<2>, condition: Option<Tensor<2>>) -> Tensor<2> {
        let _span = tracing::trace_span!("TimestepEmbedding").entered();
        let sample = match (&self.cond_proj, condition) {
            (Some(p), Some(c)) => sample + crate::precision::linear(p, c),
            _ => sample,
        };
        let h = self.linear_1.forward(sample);
        let h = self.act.forward(h);
        let h = self.linear_2.forward(h);
        match self.post_act {
            Some(a) => a.forward(h),
            None => h,
        }
    }
}

/// How the class embedding is computed (`class_embed_type`, `num_class_embeds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassEmbedKind {
    /// A learned table indexed by integer labels (`num_class_embeds` without a type).
    Table,
    /// `timestep`: labels go through the sinusoidal projection, then an MLP.
    Timestep,
    /// `identity`: the labels are the embedding.
    Identity,
    /// `projection`: an MLP from `projection_class_embeddings_input_dim`.
    Projection,
    /// `simple_projection`: one linear layer.
    SimpleProjection,
}

/// The class-embedding layer (`class_embedding.*`).
// One per model, so the size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ClassEmbedding {
    /// `nn.Embedding`.
    Table(Embedding),
    /// `TimestepEmbedding`.
    Mlp(TimestepEmbedding),
    /// `nn.Linear`.
    Linear(Linear),
}

/// Class labels for UNets with a class embedding.
#[derive(Debug, Clone)]
pub enum ClassLabels {
    /// Integer labels (`Table`) or timestep-like values (`Timestep`), `[batch]`.
    Labels(Tensor<1>),
    /// Label vectors (`Identity`, `Projection`, `SimpleProjection`), `[batch, dim]`.
    Embeds(Tensor<2>),
}

impl NamedLayers for TimestepEmbedding {
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        visit_fields!(self, prefix, f; linear_1, linear_2);
    }
}
