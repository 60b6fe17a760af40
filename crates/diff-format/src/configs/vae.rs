//! `AutoencoderKL`'s `config.json` (diffusers `models/autoencoders/autoencoder_kl.py`).
//!
//! Every field is an `__init__` argument of the Python class, named verbatim, with the Python
//! default. Keys this struct does not know stay in `extra`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

fn default_three() -> u64 {
    3
}
fn default_down_block_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".to_owned()]
}
fn default_up_block_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".to_owned()]
}
fn default_block_out_channels() -> Vec<u64> {
    vec![64]
}
fn default_one() -> u64 {
    1
}
fn default_silu() -> String {
    "silu".to_owned()
}
fn default_four() -> u64 {
    4
}
fn default_norm_num_groups() -> u64 {
    32
}
fn default_sample_size() -> Value {
    Value::from(32)
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}

/// The config of diffusers' `AutoencoderKL`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels in. Default 3.
    #[serde(default = "default_three")]
    pub in_channels: u64,
    /// Image channels out. Default 3.
    #[serde(default = "default_three")]
    pub out_channels: u64,
    /// Encoder block class names. Default `["DownEncoderBlock2D"]`.
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    /// Decoder block class names. Default `["UpDecoderBlock2D"]`.
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    /// Output channels of each block. Default `[64]`.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<u64>,
    /// Resnets per encoder block (decoder blocks have one more). Default 1.
    #[serde(default = "default_one")]
    pub layers_per_block: u64,
    /// Activation function. Default `"silu"`.
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Latent channels. Default 4.
    #[serde(default = "default_four")]
    pub latent_channels: u64,
    /// Groups of every group norm. Default 32.
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: u64,
    /// Image side the model was trained at; tiling derives its tile sizes from it. An int or
    /// `[height, width]` (kept as JSON so either form re-saves as read). Default 32.
    #[serde(default = "default_sample_size")]
    pub sample_size: Value,
    /// Latents are multiplied by this after encoding (and divided before decoding).
    /// Default 0.18215.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// Latents are shifted by this before scaling (SD 3, Flux). Default `None`.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean. Default `None`.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent standard deviation. Default `None`.
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// The VAE overflows in f16 and should run in f32. Default `true`.
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    /// Has a `quant_conv` after the encoder. Default `true`.
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    /// Has a `post_quant_conv` before the decoder. Default `true`.
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    /// The mid blocks have an attention layer. Default `true`.
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    /// Keys this struct does not know (`_class_name`, `_diffusers_version`, ...), kept for
    /// re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl AutoencoderKLConfig {
    /// `sample_size` as one side: the first entry when it is a list, as diffusers' tiling does.
    pub fn sample_size_side(&self) -> Option<u64> {
        match &self.sample_size {
            Value::Number(n) => n.as_u64(),
            Value::Array(a) => a.first().and_then(Value::as_u64),
            _ => None,
        }
    }
}

impl Default for AutoencoderKLConfig {
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
        let c = AutoencoderKLConfig::default();
        assert_eq!(c.block_out_channels, vec![64]);
        assert_eq!(c.latent_channels, 4);
        assert_eq!(c.scaling_factor, 0.18215);
        assert_eq!(c.sample_size_side(), Some(32));
        assert!(c.force_upcast && c.use_quant_conv && c.mid_block_add_attention);
        assert_eq!(c.shift_factor, None);
    }

    #[test]
    fn sd15_vae_config_keeps_unknown_keys() {
        let json = r#"{"_class_name":"AutoencoderKL","block_out_channels":[128,256,512,512],
            "down_block_types":["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D",
            "DownEncoderBlock2D"],"layers_per_block":2,"sample_size":512,"scaling_factor":0.13025}"#;
        let c: AutoencoderKLConfig = serde_json::from_str(json).expect("valid json");
        assert_eq!(c.layers_per_block, 2);
        assert_eq!(c.sample_size_side(), Some(512));
        assert_eq!(c.extra["_class_name"], "AutoencoderKL");
    }
}
