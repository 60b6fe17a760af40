//! `UNet2DConditionModel`'s `config.json` (diffusers `models/unets/unet_2d_condition.py`).
//!
//! Every field is an `__init__` argument of the Python class, named verbatim, with the Python
//! default. Arguments that Python accepts either as one value or as one value per block
//! (`attention_head_dim`, `layers_per_block`, ...) are [`PerBlock`] so a re-save writes back the
//! form that was read. Keys this struct does not know stay in `extra`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A value given once for all blocks or once per block, as Python's `int | tuple[int]` arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// One value shared by every block.
    One(T),
    /// One value per block, in `down_block_types` order.
    Many(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// Expands to one value per block, as diffusers does with `(value,) * len(down_block_types)`.
    ///
    /// Returns `None` when a per-block list does not have `n` entries.
    pub fn expand(&self, n: usize) -> Option<Vec<T>> {
        match self {
            PerBlock::One(v) => Some(vec![v.clone(); n]),
            PerBlock::Many(v) if v.len() == n => Some(v.clone()),
            PerBlock::Many(_) => None,
        }
    }
}

/// `sample_size`: one side or `[height, width]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// A square sample of this side.
    Square(u64),
    /// `[height, width]`.
    HeightWidth(Vec<u64>),
}

/// `transformer_layers_per_block`: an int, one int per block, or (asymmetric UNets) one list of
/// per-layer counts per block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TransformerLayers {
    /// The same number of transformer layers in every attention of every block.
    One(u64),
    /// One count per block.
    PerBlock(Vec<u64>),
    /// One count per attention layer of each block (asymmetric UNets such as SDXL-refiner
    /// variants); needs `reverse_transformer_layers_per_block`.
    PerLayer(Vec<Vec<u64>>),
}

fn default_in_channels() -> u64 {
    4
}
fn default_true() -> bool {
    true
}
fn default_down_block_types() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".to_owned())
}
fn default_up_block_types() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_only_cross_attention() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn default_block_out_channels() -> Vec<u64> {
    vec![320, 640, 1280, 1280]
}
fn default_layers_per_block() -> PerBlock<u64> {
    PerBlock::One(2)
}
fn default_one_u64() -> u64 {
    1
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_silu() -> String {
    "silu".to_owned()
}
fn default_norm_num_groups() -> Option<u64> {
    Some(32)
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_cross_attention_dim() -> PerBlock<u64> {
    PerBlock::One(1280)
}
fn default_transformer_layers() -> TransformerLayers {
    TransformerLayers::One(1)
}
fn default_attention_head_dim() -> PerBlock<Option<u64>> {
    PerBlock::One(Some(8))
}
fn default_resnet_time_scale_shift() -> String {
    "default".to_owned()
}
fn default_time_embedding_type() -> String {
    "positional".to_owned()
}
fn default_kernel() -> u64 {
    3
}
fn default_attention_type() -> String {
    "default".to_owned()
}
fn default_addition_embed_type_num_heads() -> u64 {
    64
}

/// The config of diffusers' `UNet2DConditionModel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionConfig {
    /// Height/width of the latent sample. Default `None`.
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// Input channels (9 for inpainting UNets). Default 4.
    #[serde(default = "default_in_channels")]
    pub in_channels: u64,
    /// Output channels. Default 4.
    #[serde(default = "default_in_channels")]
    pub out_channels: u64,
    /// Map the input from [0, 1] to [-1, 1] first. Default `false`.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Put cosine before sine in the timestep embedding. Default `true`.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep embedding. Default 0.
    #[serde(default)]
    pub freq_shift: i64,
    /// Down block class names. Default SD 1.x's three `CrossAttnDownBlock2D` and a `DownBlock2D`.
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    /// Mid block class name, or `None` for no mid block. Default `UNetMidBlock2DCrossAttn`.
    #[serde(default = "default_mid_block_type")]
    pub mid_block_type: Option<String>,
    /// Up block class names. Default SD 1.x's `UpBlock2D` and three `CrossAttnUpBlock2D`.
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    /// Drop self-attention in favour of cross-attention only. Default `false`.
    #[serde(default = "default_only_cross_attention")]
    pub only_cross_attention: PerBlock<bool>,
    /// Output channels of each block. Default `[320, 640, 1280, 1280]`.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<u64>,
    /// Resnets per down block (up blocks have one more). Default 2.
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: PerBlock<u64>,
    /// Padding of the downsampling convolution. Default 1.
    #[serde(default = "default_one_u64")]
    pub downsample_padding: u64,
    /// Output scale factor of the mid block's resnets. Default 1.0.
    #[serde(default = "default_one_f64")]
    pub mid_block_scale_factor: f64,
    /// Dropout probability (unused at inference). Default 0.0.
    #[serde(default)]
    pub dropout: f64,
    /// Activation function. Default `"silu"`.
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Groups of every group norm; `None` skips the output norm. Default 32.
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: Option<u64>,
    /// Epsilon of the norms. Default 1e-5.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Dimension of the text encoder states. Default 1280.
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: PerBlock<u64>,
    /// Transformer layers in each attention of a block. Default 1.
    #[serde(default = "default_transformer_layers")]
    pub transformer_layers_per_block: TransformerLayers,
    /// Transformer layers of the up blocks of asymmetric UNets. Default `None`.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<Vec<u64>>>,
    /// Dimension of the input of `encoder_hid_proj`. Default `None`.
    #[serde(default)]
    pub encoder_hid_dim: Option<u64>,
    /// Kind of `encoder_hid_proj`. Default `None`.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Historically misnamed: the number of attention heads (see diffusers issue 2011).
    /// Default 8.
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: PerBlock<Option<u64>>,
    /// Number of attention heads; diffusers refuses it as of 0.42. Default `None`.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<u64>>,
    /// Two cross-attentions (Versatile Diffusion). Default `false`.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Linear instead of 1x1 conv projections in transformers (SD 2.x). Default `false`.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Class embedding kind: `timestep`, `identity`, `projection`, `simple_projection`.
    /// Default `None`.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Additional embedding kind (`text_time` for SDXL). Default `None`.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of the sinusoidal embedding of each SDXL time id. Default `None`.
    #[serde(default)]
    pub addition_time_embed_dim: Option<u64>,
    /// Number of classes of a class-embedding table. Default `None`.
    #[serde(default)]
    pub num_class_embeds: Option<u64>,
    /// Compute attention scores in f32 (SD 2.1). Default `false`.
    #[serde(default)]
    pub upcast_attention: bool,
    /// How resnets use the time embedding: `default` or `scale_shift`. Default `"default"`.
    #[serde(default = "default_resnet_time_scale_shift")]
    pub resnet_time_scale_shift: String,
    /// Skip the activation before the resnets' time projection. Default `false`.
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// Output scale factor of the resnets. Default 1.0.
    #[serde(default = "default_one_f64")]
    pub resnet_out_scale_factor: f64,
    /// `positional` or `fourier`. Default `"positional"`.
    #[serde(default = "default_time_embedding_type")]
    pub time_embedding_type: String,
    /// Width of the time embedding. Default `None` (4 x `block_out_channels[0]`).
    #[serde(default)]
    pub time_embedding_dim: Option<u64>,
    /// Activation applied once to the time embedding. Default `None`.
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// Activation after the time embedding MLP. Default `None`.
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// Width of the guidance embedding added to the timestep (LCM). Default `None`.
    #[serde(default)]
    pub time_cond_proj_dim: Option<u64>,
    /// Kernel of `conv_in`. Default 3.
    #[serde(default = "default_kernel")]
    pub conv_in_kernel: u64,
    /// Kernel of `conv_out`. Default 3.
    #[serde(default = "default_kernel")]
    pub conv_out_kernel: u64,
    /// Input width of the `projection` class embedding and of SDXL's `add_embedding`.
    /// Default `None`.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<u64>,
    /// `default`, `gated` or `gated-text-image` (GLIGEN). Default `"default"`.
    #[serde(default = "default_attention_type")]
    pub attention_type: String,
    /// Concatenate instead of add the class embedding. Default `false`.
    #[serde(default)]
    pub class_embeddings_concat: bool,
    /// `only_cross_attention` of the mid block. Default `None`.
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Norm of the cross-attention inputs. Default `None`.
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Heads of the `text` addition embedding. Default 64.
    #[serde(default = "default_addition_embed_type_num_heads")]
    pub addition_embed_type_num_heads: u64,
    /// Keys this struct does not know (`_class_name`, `_diffusers_version`, ...), kept for
    /// re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        // An empty JSON object takes every serde default, which are the Python defaults.
        serde_json::from_value(Value::Object(Default::default()))
            .unwrap_or_else(|_| unreachable!("every field has a serde default"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_equal_python_init_defaults() {
        let c = UNet2DConditionConfig::default();
        assert_eq!(c.in_channels, 4);
        assert_eq!(c.block_out_channels, vec![320, 640, 1280, 1280]);
        assert_eq!(c.attention_head_dim, PerBlock::One(Some(8)));
        assert_eq!(c.cross_attention_dim, PerBlock::One(1280));
        assert_eq!(c.norm_num_groups, Some(32));
        assert_eq!(c.mid_block_type.as_deref(), Some("UNetMidBlock2DCrossAttn"));
        assert_eq!(c.transformer_layers_per_block, TransformerLayers::One(1));
        assert!(c.flip_sin_to_cos);
    }

    #[test]
    fn sdxl_config_round_trips_per_block_forms_and_unknown_keys() {
        let json = r#"{"_class_name":"UNet2DConditionModel","_diffusers_version":"0.19.0",
            "addition_embed_type":"text_time","addition_time_embed_dim":256,
            "attention_head_dim":[5,10,20],"transformer_layers_per_block":[1,2,10],
            "sample_size":128,"use_linear_projection":true,
            "projection_class_embeddings_input_dim":2816,"cross_attention_dim":2048}"#;
        let c: UNet2DConditionConfig = serde_json::from_str(json).expect("valid json");
        assert_eq!(
            c.attention_head_dim,
            PerBlock::Many(vec![Some(5), Some(10), Some(20)])
        );
        assert_eq!(
            c.transformer_layers_per_block,
            TransformerLayers::PerBlock(vec![1, 2, 10])
        );
        assert_eq!(c.extra["_class_name"], "UNet2DConditionModel");
        let back = serde_json::to_value(&c).expect("serialisable");
        assert_eq!(back["attention_head_dim"], serde_json::json!([5, 10, 20]));
        assert_eq!(back["_diffusers_version"], "0.19.0");
        assert_eq!(back["sample_size"], 128);
    }
}
