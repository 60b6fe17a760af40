//! `MotionAdapter`'s `config.json` (diffusers `models/unets/unet_motion_model.py`), the
//! AnimateDiff motion modules of guoyww/animatediff-motion-adapter-v1-5-2 and the like.
//!
//! Every field is an `__init__` argument of the Python class, named verbatim, with the Python
//! default. Keys this struct does not know stay in `extra`.

use crate::configs::unet::{PerBlock, TransformerLayers};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

fn default_block_out_channels() -> Vec<u64> {
    vec![320, 640, 1280, 1280]
}
fn default_two() -> PerBlock<u64> {
    PerBlock::One(2)
}
fn default_transformer_layers() -> TransformerLayers {
    TransformerLayers::One(1)
}
fn default_one() -> u64 {
    1
}
fn default_one_per_block() -> PerBlock<u64> {
    PerBlock::One(1)
}
fn default_heads() -> PerBlock<u64> {
    PerBlock::One(8)
}
fn default_groups() -> u64 {
    32
}
fn default_max_seq_length() -> u64 {
    32
}
fn default_true() -> bool {
    true
}

/// The config of diffusers' `MotionAdapter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotionAdapterConfig {
    /// Output channels of each UNet block the motion modules follow. Default
    /// `[320, 640, 1280, 1280]`.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<u64>,
    /// Motion modules per down block (the up blocks have one more). Default 2.
    #[serde(default = "default_two")]
    pub motion_layers_per_block: PerBlock<u64>,
    /// Transformer blocks in each motion module, per block (or per layer). Default 1.
    #[serde(default = "default_transformer_layers")]
    pub motion_transformer_layers_per_block: TransformerLayers,
    /// Motion modules of the mid block. Default 1.
    #[serde(default = "default_one")]
    pub motion_mid_block_layers_per_block: u64,
    /// Transformer blocks in each motion module of the mid block. Default 1.
    #[serde(default = "default_one_per_block")]
    pub motion_transformer_layers_per_mid_block: PerBlock<u64>,
    /// Attention heads of the motion modules, per block. Default 8.
    #[serde(default = "default_heads")]
    pub motion_num_attention_heads: PerBlock<u64>,
    /// Groups of the motion modules' group norms. Default 32.
    #[serde(default = "default_groups")]
    pub motion_norm_num_groups: u64,
    /// The most frames the sinusoidal position embedding covers. Default 32.
    #[serde(default = "default_max_seq_length")]
    pub motion_max_seq_length: u64,
    /// Whether the mid block has motion modules (v1-5-2 and later). Default `true`.
    #[serde(default = "default_true")]
    pub use_motion_mid_block: bool,
    /// Input channels of PIA's own `conv_in`. Default `None`.
    #[serde(default)]
    pub conv_in_channels: Option<u64>,
    /// Keys this struct does not know (`_class_name`, `_diffusers_version`, ...), kept for
    /// re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for MotionAdapterConfig {
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
        let c = MotionAdapterConfig::default();
        assert_eq!(c.block_out_channels, vec![320, 640, 1280, 1280]);
        assert_eq!(c.motion_layers_per_block, PerBlock::One(2));
        assert_eq!(c.motion_num_attention_heads, PerBlock::One(8));
        assert_eq!(c.motion_max_seq_length, 32);
        assert!(c.use_motion_mid_block);
        assert_eq!(c.conv_in_channels, None);
    }

    #[test]
    fn v1_5_2_config_reads() {
        let json = r#"{"_class_name":"MotionAdapter","block_out_channels":[320,640,1280,1280],
            "motion_layers_per_block":2,"motion_mid_block_layers_per_block":1,
            "motion_norm_num_groups":32,"motion_num_attention_heads":8,
            "motion_max_seq_length":32,"use_motion_mid_block":true}"#;
        let c: MotionAdapterConfig = serde_json::from_str(json).expect("valid json");
        assert_eq!(c.extra["_class_name"], "MotionAdapter");
        assert_eq!(
            c.motion_transformer_layers_per_block,
            TransformerLayers::One(1)
        );
    }
}
