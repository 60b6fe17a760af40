//! Per-block scales of a UNet (diffusers `loaders/unet_loader_utils.py`,
//! `_maybe_expand_lora_scales`): InstantStyle's `{"down": {"block_2": [0.0, 1.0]}, "up": ...}`
//! form, expanded to one scale per transformer (`down_blocks.2.attentions.1`), as diffusers'
//! `set_ip_adapter_scale` and `set_adapters` (with dict weights) apply it.

use crate::ModelError;
use crate::attention_processor::IPAdapterAttnProcessor2_0;
use crate::unet_2d_condition::UNet2DConditionModel;

/// The scale of one block: one value for its transformers, or one per transformer.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockScale {
    /// `"block_1": 0.5`.
    All(f64),
    /// `"block_1": [0.0, 1.0]`: one per transformer of the block (a single value is repeated).
    PerLayer(Vec<f64>),
}

/// The scale of the down or up blocks.
#[derive(Debug, Clone, PartialEq)]
pub enum PartScale {
    /// `"down": 0.5`: every block with transformers.
    All(f64),
    /// `"down": {"block_1": ..., "block_2": ...}` by block index; blocks not named get the
    /// default scale (0 for IP-Adapters), blocks without transformers are ignored.
    Blocks(Vec<(usize, BlockScale)>),
}

/// A scale as diffusers' `set_ip_adapter_scale` / `set_adapters` take it for one adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleConfig {
    /// One scale for every layer.
    Uniform(f64),
    /// InstantStyle's per-part form; parts not given get the default scale.
    PerBlock {
        /// `"down"`.
        down: Option<PartScale>,
        /// `"mid"` (a list must hold one value).
        mid: Option<BlockScale>,
        /// `"up"`.
        up: Option<PartScale>,
    },
}

impl From<f64> for ScaleConfig {
    fn from(v: f64) -> Self {
        Self::Uniform(v)
    }
}

/// A [`ScaleConfig`] expanded over a model's transformers.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpandedScale {
    /// One scale for every layer.
    Uniform(f64),
    /// `(module prefix, scale)`: `mid_block`, `up_blocks.1.attentions.0`, ... A layer takes the
    /// scale of the last prefix its name starts with.
    Prefixes(Vec<(String, f64)>),
}

impl ExpandedScale {
    /// The scale of the layer `name` (a module or processor name), `None` when no prefix
    /// matches.
    pub fn scale_for(&self, name: &str) -> Option<f64> {
        match self {
            Self::Uniform(v) => Some(*v),
            Self::Prefixes(list) => list
                .iter()
                .rev()
                .find(|(p, _)| name == p || name.starts_with(&format!("{p}.")))
                .map(|(_, v)| *v),
        }
    }
}

fn invalid(reason: String) -> ModelError {
    ModelError::InvalidInput {
        model: "UNet2DConditionModel".to_owned(),
        reason,
    }
}

/// diffusers' `_maybe_expand_lora_scales_for_one_adapter`: `blocks` lists, per part, the
/// indices of the blocks with transformers and how many each holds.
fn expand_part(
    part: &str,
    scale: Option<&PartScale>,
    blocks: &[(usize, usize)],
    default_scale: f64,
    out: &mut Vec<(String, f64)>,
) -> Result<(), ModelError> {
    for &(index, layers) in blocks {
        let block = match scale {
            None => BlockScale::All(default_scale),
            Some(PartScale::All(v)) => BlockScale::All(*v),
            Some(PartScale::Blocks(list)) => list
                .iter()
                .find(|(i, _)| *i == index)
                .map_or(BlockScale::All(default_scale), |(_, s)| s.clone()),
        };
        let values = match block {
            BlockScale::All(v) => vec![v; layers],
            BlockScale::PerLayer(v) if v.len() == 1 => vec![v[0]; layers],
            BlockScale::PerLayer(v) if v.len() == layers => v,
            BlockScale::PerLayer(v) => {
                return Err(invalid(format!(
                    "expected {layers} scales for {part}.block_{index}, got {}",
                    v.len()
                )));
            }
        };
        for (layer, v) in values.into_iter().enumerate() {
            out.push((format!("{part}_blocks.{index}.attentions.{layer}"), v));
        }
    }
    Ok(())
}

/// Expands `config` over the UNet's transformers (diffusers' `_maybe_expand_lora_scales` for
/// one adapter, `default_scale` for the parts and blocks not given).
pub fn expand_scale(
    unet: &UNet2DConditionModel,
    config: &ScaleConfig,
    default_scale: f64,
) -> Result<ExpandedScale, ModelError> {
    let (down, mid, up) = match config {
        ScaleConfig::Uniform(v) => return Ok(ExpandedScale::Uniform(*v)),
        ScaleConfig::PerBlock { down, mid, up } => (down, mid, up),
    };
    let mut out = Vec::new();
    let mid = match mid {
        None => default_scale,
        Some(BlockScale::All(v)) => *v,
        Some(BlockScale::PerLayer(v)) if v.len() == 1 => v[0],
        Some(BlockScale::PerLayer(v)) => {
            return Err(invalid(format!(
                "expected 1 scale for mid, got {}",
                v.len()
            )));
        }
    };
    if unet
        .mid_block
        .as_ref()
        .is_none_or(|m| m.attentions.is_empty())
    {
        return Err(invalid(
            "can't set a scale for layer mid: it either doesn't exist in this unet or it has no attentions"
                .to_owned(),
        ));
    }
    out.push(("mid_block".to_owned(), mid));
    let with_transformers = |attentions: Vec<usize>| -> Vec<(usize, usize)> {
        attentions
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    let up_blocks = with_transformers(unet.up_blocks.iter().map(|b| b.attentions.len()).collect());
    let down_blocks = with_transformers(
        unet.down_blocks
            .iter()
            .map(|b| b.attentions.len())
            .collect(),
    );
    expand_part("up", up.as_ref(), &up_blocks, default_scale, &mut out)?;
    expand_part("down", down.as_ref(), &down_blocks, default_scale, &mut out)?;
    Ok(ExpandedScale::Prefixes(out))
}

/// IP-Adapter scales (diffusers' `set_ip_adapter_scale`).
impl UNet2DConditionModel {
    /// Sets the scale of every IP-Adapter processor: one config per loaded adapter, or one for
    /// all; InstantStyle's per-block form sets 0 where a part or block is not named. Fails when
    /// the number of configs differs from a processor's number of adapters.
    pub fn set_ip_adapter_scale(&self, scales: &[ScaleConfig]) -> Result<(), ModelError> {
        let expanded = scales
            .iter()
            .map(|s| expand_scale(self, s, 0.0))
            .collect::<Result<Vec<_>, _>>()?;
        for (name, processor) in self.attn_processors() {
            let Some(ip) = processor
                .as_any()
                .downcast_ref::<IPAdapterAttnProcessor2_0>()
            else {
                continue;
            };
            let n = ip.layers().len();
            let configs: Vec<&ExpandedScale> = match expanded.as_slice() {
                [one] => vec![one; n],
                many if many.len() == n => many.iter().collect(),
                many => {
                    return Err(invalid(format!(
                        "cannot assign {} scale configs to {n} IP-Adapters ({name})",
                        many.len()
                    )));
                }
            };
            let mut values = ip.scale();
            for (i, config) in configs.into_iter().enumerate() {
                if let (Some(slot), Some(v)) = (values.get_mut(i), config.scale_for(&name)) {
                    *slot = v;
                }
            }
            ip.set_scale(&values)?;
        }
        Ok(())
    }
}
