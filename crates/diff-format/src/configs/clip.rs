//! transformers' CLIP configs (`models/clip/configuration_clip.py`, transformers 5.23):
//! `CLIPTextConfig` (SD text encoders), `CLIPVisionConfig` (image encoders) and `CLIPConfig` (the
//! SD safety checker's `config.json`).
//!
//! Fields are the JSON keys verbatim with the Python defaults; keys not modelled here
//! (`architectures`, `model_type`, `dtype`, `transformers_version`, `text_config_dict`, ...) stay
//! in `extra` so a load -> save round-trips them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `eos_token_id`: transformers accepts an int or a list of ints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One token id.
    One(i64),
    /// Several token ids.
    Many(Vec<i64>),
}

/// `image_size` / `patch_size`: an int or `[height, width]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    /// A square side.
    Square(u64),
    /// `[height, width]`.
    HeightWidth(Vec<u64>),
}

impl ImageSize {
    /// The side when the size is square (an int, or a list of two equal ints).
    pub fn square(&self) -> Option<u64> {
        match self {
            ImageSize::Square(s) => Some(*s),
            ImageSize::HeightWidth(v) => match v.as_slice() {
                [h, w] if h == w => Some(*h),
                _ => None,
            },
        }
    }
}

fn d_vocab_size() -> u64 {
    49408
}
fn d_text_hidden_size() -> u64 {
    512
}
fn d_text_intermediate_size() -> u64 {
    2048
}
fn d_projection_dim() -> Option<u64> {
    Some(512)
}
fn d_num_hidden_layers() -> u64 {
    12
}
fn d_text_heads() -> u64 {
    8
}
fn d_max_position_embeddings() -> u64 {
    77
}
fn d_hidden_act() -> String {
    "quick_gelu".to_string()
}
fn d_layer_norm_eps() -> Option<f64> {
    Some(1e-5)
}
fn d_attention_dropout() -> Option<f64> {
    Some(0.0)
}
fn d_initializer_range() -> f64 {
    0.02
}
fn d_initializer_factor() -> Option<f64> {
    Some(1.0)
}
fn d_pad_token_id() -> Option<i64> {
    Some(1)
}
fn d_bos_token_id() -> Option<i64> {
    Some(49406)
}
fn d_eos_token_id() -> Option<TokenIds> {
    Some(TokenIds::One(49407))
}

/// transformers' `CLIPTextConfig` (model type `clip_text_model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CLIPTextConfig {
    /// `vocab_size`, default 49408.
    #[serde(default = "d_vocab_size")]
    pub vocab_size: u64,
    /// `hidden_size`, default 512.
    #[serde(default = "d_text_hidden_size")]
    pub hidden_size: u64,
    /// `intermediate_size`, default 2048.
    #[serde(default = "d_text_intermediate_size")]
    pub intermediate_size: u64,
    /// `projection_dim` (used by `CLIPTextModelWithProjection`), default 512.
    #[serde(default = "d_projection_dim")]
    pub projection_dim: Option<u64>,
    /// `num_hidden_layers`, default 12.
    #[serde(default = "d_num_hidden_layers")]
    pub num_hidden_layers: u64,
    /// `num_attention_heads`, default 8.
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: u64,
    /// `max_position_embeddings`, default 77.
    #[serde(default = "d_max_position_embeddings")]
    pub max_position_embeddings: u64,
    /// `hidden_act`, default `"quick_gelu"` (SD 2.x and SDXL's second encoder use `"gelu"`).
    #[serde(default = "d_hidden_act")]
    pub hidden_act: String,
    /// `layer_norm_eps`, default 1e-5.
    #[serde(default = "d_layer_norm_eps")]
    pub layer_norm_eps: Option<f64>,
    /// `attention_dropout`, default 0.0 (inference ignores it).
    #[serde(default = "d_attention_dropout")]
    pub attention_dropout: Option<f64>,
    /// `initializer_range`, default 0.02 (training only).
    #[serde(default = "d_initializer_range")]
    pub initializer_range: f64,
    /// `initializer_factor`, default 1.0 (training only).
    #[serde(default = "d_initializer_factor")]
    pub initializer_factor: Option<f64>,
    /// `pad_token_id`, default 1.
    #[serde(default = "d_pad_token_id")]
    pub pad_token_id: Option<i64>,
    /// `bos_token_id`, default 49406.
    #[serde(default = "d_bos_token_id")]
    pub bos_token_id: Option<i64>,
    /// `eos_token_id`, default 49407. The value 2 (old configs, SD 1.x/2.x/SDXL) selects
    /// transformers' legacy pooling at `argmax(input_ids)`.
    #[serde(default = "d_eos_token_id")]
    pub eos_token_id: Option<TokenIds>,
    /// Keys not modelled above, kept for re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for CLIPTextConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default()))
            .unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

fn d_vision_hidden_size() -> u64 {
    768
}
fn d_vision_intermediate_size() -> u64 {
    3072
}
fn d_vision_projection_dim() -> u64 {
    512
}
fn d_vision_heads() -> u64 {
    12
}
fn d_num_channels() -> u64 {
    3
}
fn d_image_size() -> Option<ImageSize> {
    Some(ImageSize::Square(224))
}
fn d_patch_size() -> Option<ImageSize> {
    Some(ImageSize::Square(32))
}
fn d_vision_layer_norm_eps() -> f64 {
    1e-5
}
fn d_vision_initializer_factor() -> f64 {
    1.0
}

/// transformers' `CLIPVisionConfig` (model type `clip_vision_model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CLIPVisionConfig {
    /// `hidden_size`, default 768.
    #[serde(default = "d_vision_hidden_size")]
    pub hidden_size: u64,
    /// `intermediate_size`, default 3072.
    #[serde(default = "d_vision_intermediate_size")]
    pub intermediate_size: u64,
    /// `projection_dim`, default 512.
    #[serde(default = "d_vision_projection_dim")]
    pub projection_dim: u64,
    /// `num_hidden_layers`, default 12.
    #[serde(default = "d_num_hidden_layers")]
    pub num_hidden_layers: u64,
    /// `num_attention_heads`, default 12.
    #[serde(default = "d_vision_heads")]
    pub num_attention_heads: u64,
    /// `num_channels`, default 3.
    #[serde(default = "d_num_channels")]
    pub num_channels: u64,
    /// `image_size`, default 224.
    #[serde(default = "d_image_size")]
    pub image_size: Option<ImageSize>,
    /// `patch_size`, default 32.
    #[serde(default = "d_patch_size")]
    pub patch_size: Option<ImageSize>,
    /// `hidden_act`, default `"quick_gelu"`.
    #[serde(default = "d_hidden_act")]
    pub hidden_act: String,
    /// `layer_norm_eps`, default 1e-5.
    #[serde(default = "d_vision_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// `attention_dropout`, default 0.0 (inference ignores it).
    #[serde(default = "d_attention_dropout")]
    pub attention_dropout: Option<f64>,
    /// `initializer_range`, default 0.02 (training only).
    #[serde(default = "d_initializer_range")]
    pub initializer_range: f64,
    /// `initializer_factor`, default 1.0 (training only).
    #[serde(default = "d_vision_initializer_factor")]
    pub initializer_factor: f64,
    /// Keys not modelled above, kept for re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for CLIPVisionConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default()))
            .unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}

fn d_logit_scale_init_value() -> Option<f64> {
    Some(2.6592)
}

/// transformers' `CLIPConfig` (model type `clip`), the config class of diffusers'
/// `StableDiffusionSafetyChecker`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CLIPConfig {
    /// `text_config`, default `None` (a default `CLIPTextConfig`).
    #[serde(default)]
    pub text_config: Option<CLIPTextConfig>,
    /// `vision_config`, default `None` (a default `CLIPVisionConfig`).
    #[serde(default)]
    pub vision_config: Option<CLIPVisionConfig>,
    /// `projection_dim`, default 512.
    #[serde(default = "d_projection_dim")]
    pub projection_dim: Option<u64>,
    /// `logit_scale_init_value`, default 2.6592.
    #[serde(default = "d_logit_scale_init_value")]
    pub logit_scale_init_value: Option<f64>,
    /// `initializer_factor`, default 1.0.
    #[serde(default = "d_initializer_factor")]
    pub initializer_factor: Option<f64>,
    /// Keys not modelled above (including the legacy `text_config_dict` / `vision_config_dict`),
    /// kept for re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl CLIPConfig {
    /// The vision config the model is built from. As in `CLIPConfig.__post_init__`, a legacy
    /// `vision_config_dict` (SD 1.x safety checkers carry one) is expanded with the
    /// `CLIPVisionConfig` defaults and every one of its keys overrides `vision_config`.
    pub fn effective_vision_config(&self) -> Result<CLIPVisionConfig, serde_json::Error> {
        effective(&self.vision_config, self.extra.get("vision_config_dict"))
    }

    /// The text config, with a legacy `text_config_dict` applied the same way.
    pub fn effective_text_config(&self) -> Result<CLIPTextConfig, serde_json::Error> {
        effective(&self.text_config, self.extra.get("text_config_dict"))
    }
}

fn effective<T>(base: &Option<T>, legacy: Option<&Value>) -> Result<T, serde_json::Error>
where
    T: Serialize + serde::de::DeserializeOwned + Default + Clone,
{
    let base = base.clone().unwrap_or_default();
    let Some(Value::Object(overrides)) = legacy else {
        return Ok(base);
    };
    let expanded: T = serde_json::from_value(Value::Object(overrides.clone()))?;
    let mut merged = serde_json::to_value(&base)?;
    if let (Value::Object(m), Value::Object(o)) = (&mut merged, serde_json::to_value(&expanded)?) {
        for (k, v) in o {
            if k != "transformers_version" {
                m.insert(k, v);
            }
        }
    }
    serde_json::from_value(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_config_defaults_match_transformers() {
        let c = CLIPTextConfig::default();
        assert_eq!(c.vocab_size, 49408);
        assert_eq!(c.hidden_act, "quick_gelu");
        assert_eq!(c.eos_token_id, Some(TokenIds::One(49407)));
        assert_eq!(c.layer_norm_eps, Some(1e-5));
    }

    #[test]
    fn legacy_vision_config_dict_overrides_vision_config_with_defaults() {
        let json = r#"{
            "vision_config": {"hidden_size": 768, "projection_dim": 768, "patch_size": 32},
            "vision_config_dict": {"hidden_size": 1024, "patch_size": 14},
            "projection_dim": 768
        }"#;
        let c: CLIPConfig = serde_json::from_str(json).expect("parse");
        let v = c.effective_vision_config().expect("vision");
        assert_eq!(v.hidden_size, 1024);
        assert_eq!(v.patch_size, Some(ImageSize::Square(14)));
        // The dict is expanded with CLIPVisionConfig defaults before overriding.
        assert_eq!(v.projection_dim, 512);
        assert!(c.extra.contains_key("vision_config_dict"));
    }
}

/// `size` / `crop_size` of an image processor: an int (legacy) or a dict
/// (`{"shortest_edge": n}`, `{"height": h, "width": w}`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// A bare int: `shortest_edge` for `size`, a square for `crop_size` (transformers'
    /// `get_size_dict` with `default_to_square=False` / `True`).
    Int(u64),
    /// A size dict, keys as written.
    Dict(BTreeMap<String, Value>),
}

impl SizeSpec {
    fn key(&self, name: &str) -> Option<u64> {
        match self {
            SizeSpec::Int(_) => None,
            SizeSpec::Dict(map) => map.get(name).and_then(Value::as_u64),
        }
    }

    /// `shortest_edge` of a `size` (an int counts as one).
    pub fn shortest_edge(&self) -> Option<u64> {
        match self {
            SizeSpec::Int(n) => Some(*n),
            SizeSpec::Dict(_) => self.key("shortest_edge"),
        }
    }

    /// `(height, width)` when both are given (an int counts as a square when `square_int`).
    pub fn height_width(&self, square_int: bool) -> Option<(u64, u64)> {
        match self {
            SizeSpec::Int(n) if square_int => Some((*n, *n)),
            SizeSpec::Int(_) => None,
            SizeSpec::Dict(_) => Some((self.key("height")?, self.key("width")?)),
        }
    }
}

fn d_size() -> Option<SizeSpec> {
    Some(SizeSpec::Dict(BTreeMap::from([(
        "shortest_edge".to_string(),
        Value::from(224),
    )])))
}
fn d_crop_size() -> Option<SizeSpec> {
    Some(SizeSpec::Dict(BTreeMap::from([
        ("height".to_string(), Value::from(224)),
        ("width".to_string(), Value::from(224)),
    ])))
}
fn d_resample() -> u64 {
    3
}
fn d_true() -> bool {
    true
}
fn d_rescale_factor() -> f64 {
    1.0 / 255.0
}
fn d_image_mean() -> Vec<f64> {
    vec![0.48145466, 0.4578275, 0.40821073]
}
fn d_image_std() -> Vec<f64> {
    vec![0.26862954, 0.26130258, 0.27577711]
}

/// transformers' `CLIPImageProcessor` settings (`feature_extractor/preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CLIPImageProcessorConfig {
    /// `do_resize`, default true.
    #[serde(default = "d_true")]
    pub do_resize: bool,
    /// `size`, default `{"shortest_edge": 224}`.
    #[serde(default = "d_size")]
    pub size: Option<SizeSpec>,
    /// `resample` (PIL code: 0 nearest, 2 bilinear, 3 bicubic), default 3.
    #[serde(default = "d_resample")]
    pub resample: u64,
    /// `do_center_crop`, default true.
    #[serde(default = "d_true")]
    pub do_center_crop: bool,
    /// `crop_size`, default `{"height": 224, "width": 224}`.
    #[serde(default = "d_crop_size")]
    pub crop_size: Option<SizeSpec>,
    /// `do_rescale`, default true.
    #[serde(default = "d_true")]
    pub do_rescale: bool,
    /// `rescale_factor`, default 1/255.
    #[serde(default = "d_rescale_factor")]
    pub rescale_factor: f64,
    /// `do_normalize`, default true.
    #[serde(default = "d_true")]
    pub do_normalize: bool,
    /// `image_mean`, default OpenAI CLIP's mean.
    #[serde(default = "d_image_mean")]
    pub image_mean: Vec<f64>,
    /// `image_std`, default OpenAI CLIP's std.
    #[serde(default = "d_image_std")]
    pub image_std: Vec<f64>,
    /// `do_convert_rgb`, default true.
    #[serde(default = "d_true")]
    pub do_convert_rgb: bool,
    /// Keys not modelled above (`feature_extractor_type`, `image_processor_type`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for CLIPImageProcessorConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Default::default()))
            .unwrap_or_else(|_| unreachable!("every field has a default"))
    }
}
