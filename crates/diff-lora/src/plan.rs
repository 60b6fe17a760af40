//! `pipe.load_lora_weights(file, adapter_name=...)` for Stable Diffusion and SDXL pipelines,
//! up to the point where tensors go into layers: which layer of which model gets which A and B,
//! with which rank, alpha and scaling, and the warnings diffusers and peft print on the way.
//! The burn side then checks each layer's shapes and attaches the adapters, all or none.

use serde_json::{Map, Value};

use crate::config::AdapterConfig;
use crate::file::LoraStateDict;
use crate::{LoraError, LoraTensor, kohya, mappings};

/// The pipeline family a LoRA is loaded into (which mixin of diffusers does the loading).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `StableDiffusionLoraLoaderMixin`: `unet`, `text_encoder`.
    StableDiffusion,
    /// `StableDiffusionXLLoraLoaderMixin`: `unet`, `text_encoder`, `text_encoder_2`; LDM block
    /// names are remapped with the UNet's `layers_per_block`.
    StableDiffusionXL,
}

/// What the loader needs to know of one model: its LoRA-capable layers (`nn.Linear` and
/// `nn.Conv2d` in PyTorch) by module name, in `named_modules` order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTable {
    /// `unet`, `text_encoder` or `text_encoder_2`.
    pub component: String,
    /// The model's class name (for diffusers' warnings).
    pub class: String,
    /// Whether the model has a `text_model` attribute (transformers 5 flattens `CLIPTextModel`,
    /// so its module names have no `text_model.` prefix; `CLIPTextModelWithProjection` keeps it).
    pub has_text_model: bool,
    /// Linear and Conv2d layers, in `named_modules` order.
    pub modules: Vec<ModuleShape>,
}

/// A LoRA-capable layer: its module name and its weight's PyTorch shape (`[out, in]` for a
/// Linear, `[out, in, kh, kw]` for a Conv2d).
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleShape {
    /// Module name inside its model.
    pub name: String,
    /// The base weight's shape, as PyTorch stores it.
    pub weight_shape: Vec<usize>,
}

/// One wrapped layer's adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerLora {
    /// Module name inside its model (`down_blocks.0.attentions.0.proj_in`).
    pub module: String,
    /// Rank.
    pub r: usize,
    /// Alpha.
    pub alpha: f64,
    /// `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub scaling: f64,
    /// `lora_A.weight`: `[r, in]` or `[r, in, kh, kw]`.
    pub a: LoraTensor,
    /// `lora_B.weight`: `[out, r]` or `[out, r, 1, 1]`.
    pub b: LoraTensor,
}

/// The adapters of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentLora {
    /// `unet`, `text_encoder`, `text_encoder_2`.
    pub component: String,
    /// The config peft built.
    pub config: AdapterConfig,
    /// Wrapped layers, in `named_modules` order.
    pub layers: Vec<LayerLora>,
}

/// Everything `load_lora_weights` would put into the models.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPlan {
    /// Per model, those that receive layers.
    pub components: Vec<ComponentLora>,
    /// What diffusers / peft warn about (ignored keys, DoRA filtered, unused patterns).
    pub warnings: Vec<String>,
}

/// Plans `load_lora_weights` of a read LoRA file for `family`.
pub fn plan(
    file: LoraStateDict,
    family: Family,
    layers_per_block: usize,
    models: &[ModelTable],
) -> Result<LoraPlan, LoraError> {
    let mut warnings = Vec::new();
    let LoraStateDict {
        mut tensors,
        metadata,
        ..
    } = file;
    // 1. lora_state_dict: DoRA scales are filtered out for SD / SDXL.
    if tensors.iter().any(|(k, _)| k.contains("dora_scale")) {
        warnings.push("It seems like you are using a DoRA checkpoint that is not compatible in Diffusers at the moment. So, we are going to filter out the keys associated to 'dora_scale` from the state dict.".into());
        tensors.retain(|(k, _)| !k.contains("dora_scale"));
    }
    let mut network_alphas: Option<Vec<(String, f32)>> = None;
    if kohya::is_kohya(&tensors) {
        if family == Family::StableDiffusionXL {
            tensors = kohya::map_sgm_blocks(tensors, layers_per_block)?;
        }
        let converted = kohya::convert_to_diffusers(tensors)?;
        tensors = converted.tensors;
        network_alphas = Some(converted.alphas);
    }
    // 2. load_lora_weights' format check.
    if let Some((key, _)) = tensors.iter().find(|(k, _)| !k.contains("lora")) {
        return Err(LoraError::NotLora { key: key.clone() });
    }
    let alphas_nonempty = network_alphas.as_ref().is_some_and(|a| !a.is_empty());
    if alphas_nonempty && metadata.is_some() {
        return Err(LoraError::Argument(
            "Both `network_alphas` and `metadata` cannot be specified.".into(),
        ));
    }
    let mut components = Vec::new();
    for table in models {
        let prefix = table.component.as_str();
        let part = with_prefix(&tensors, prefix);
        let meta = metadata.as_ref().map(|m| meta_with_prefix(m, prefix));
        let alphas = network_alphas.as_ref().map(|a| {
            a.iter()
                .filter(|(k, _)| {
                    if prefix == "unet" {
                        k.starts_with("unet.")
                    } else {
                        k.starts_with(prefix) && k.split('.').next() == Some(prefix)
                    }
                })
                .map(|(k, v)| (k[prefix.len() + 1..].to_string(), *v))
                .collect::<Vec<_>>()
        });
        if part.is_empty() {
            warnings.push(format!(
                "No LoRA keys associated to {} found with the prefix='{prefix}'. This is safe to ignore if LoRA state dict didn't originally have any {} related params.",
                table.class, table.class
            ));
            continue;
        }
        let (part, rank) = if prefix == "unet" {
            unet_state_dict(part)
        } else {
            text_encoder_state_dict(part, table)?
        };
        let config = match &meta {
            Some(m) => AdapterConfig::from_metadata(m)?,
            None => {
                AdapterConfig::from_state_dict(&rank, alphas.as_deref(), &part, prefix == "unet")?
            }
        };
        components.push(inject(table, config, part, &mut warnings)?);
    }
    Ok(LoraPlan {
        components,
        warnings,
    })
}

/// A state dict in Python's iteration order.
type Tensors = Vec<(String, LoraTensor)>;
/// diffusers' `rank` dict: `lora_B` key (or `^key` pattern) to rank, in insertion order.
type Ranks = Vec<(String, usize)>;

fn with_prefix(tensors: &[(String, LoraTensor)], prefix: &str) -> Vec<(String, LoraTensor)> {
    let p = format!("{prefix}.");
    tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(&p).map(|s| (s.to_string(), t.clone())))
        .collect()
}

fn meta_with_prefix(meta: &Map<String, Value>, prefix: &str) -> Map<String, Value> {
    let p = format!("{prefix}.");
    meta.iter()
        .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
        .collect()
}

/// `load_lora_adapter`'s key handling: non-PEFT keys converted, ranks from `lora_B`.
fn unet_state_dict(part: Vec<(String, LoraTensor)>) -> (Tensors, Ranks) {
    let part = if part.first().is_some_and(|(k, _)| !k.contains("lora_A")) {
        mappings::convert(part, mappings::UNET_TO_DIFFUSERS)
    } else {
        part
    };
    let rank = part
        .iter()
        .filter(|(k, t)| k.contains("lora_B") && t.ndim() > 1)
        .map(|(k, t)| (format!("^{k}"), t.shape[1]))
        .collect();
    (part, rank)
}

/// `_load_lora_into_text_encoder`'s key handling.
fn text_encoder_state_dict(
    part: Vec<(String, LoraTensor)>,
    table: &ModelTable,
) -> Result<(Tensors, Ranks), LoraError> {
    let infer = |key: &str| LoraError::Conversion {
        key: key.to_string(),
        message: "Could not automatically infer state dict type".into(),
    };
    let first = part.first().map(|(k, _)| k.clone()).unwrap_or_default();
    // convert_state_dict_to_diffusers
    let part = if part.iter().any(|(k, _)| k.contains("to_out_lora")) {
        mappings::convert(part, mappings::DIFFUSERS_OLD_TO_DIFFUSERS)
    } else if part.iter().any(|(k, _)| k.contains(".lora_A.weight")) {
        mappings::convert(part, mappings::PEFT_TO_DIFFUSERS)
    } else if part.iter().any(|(k, _)| k.contains("lora_linear_layer")) {
        part
    } else {
        return Err(infer(&first));
    };
    // convert_state_dict_to_peft
    let part = if part.iter().any(|(k, _)| k.contains("to_out_lora")) {
        mappings::convert(part, mappings::DIFFUSERS_OLD_TO_PEFT)
    } else if part.iter().any(|(k, _)| k.contains("lora_linear_layer")) {
        mappings::convert(part, mappings::DIFFUSERS_TO_PEFT)
    } else {
        return Err(infer(&first));
    };
    let part: Vec<(String, LoraTensor)> = if table.has_text_model {
        part
    } else {
        part.into_iter()
            .map(|(k, t)| {
                (
                    k.strip_prefix("text_model.")
                        .map(str::to_string)
                        .unwrap_or(k),
                    t,
                )
            })
            .collect()
    };
    let mut rank = Vec::new();
    for name in table.modules.iter().map(|m| &m.name) {
        if [".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            let key = format!("{name}.lora_B.weight");
            if let Some((_, t)) = part.iter().find(|(k, _)| *k == key)
                && t.ndim() > 1
            {
                rank.push((key, t.shape[1]));
            }
        }
    }
    Ok((part, rank))
}

/// peft's `inject_adapter_in_model` + `set_peft_model_state_dict`, as a plan.
fn inject(
    table: &ModelTable,
    config: AdapterConfig,
    part: Vec<(String, LoraTensor)>,
    warnings: &mut Vec<String>,
) -> Result<ComponentLora, LoraError> {
    let mut layers = Vec::new();
    let mut used = vec![false; part.len()];
    let find = |key: &str| part.iter().position(|(k, _)| k == key);
    let mut wrapped: Vec<&str> = Vec::new();
    let matcher = config.matcher()?;
    for module in &table.modules {
        let name = &module.name;
        if !matcher.targets(name) {
            continue;
        }
        wrapped.push(name);
        let (r, alpha) = matcher.rank_and_alpha(name);
        let a_key = format!("{name}.lora_A.weight");
        let b_key = format!("{name}.lora_B.weight");
        let (Some(ia), Some(ib)) = (find(&a_key), find(&b_key)) else {
            warnings.push(format!(
                "Loading adapter weights from state_dict led to missing keys in the model: {a_key}, {b_key}."
            ));
            continue;
        };
        used[ia] = true;
        used[ib] = true;
        let (a, b) = (part[ia].1.clone(), part[ib].1.clone());
        let mismatch = |key: &str, message: String| LoraError::Mismatch {
            component: table.component.clone(),
            key: key.to_string(),
            message,
        };
        // What peft builds for this layer: A = [r, in(, kh, kw)], B = [out, r(, 1, 1)].
        let w = &module.weight_shape;
        let (want_a, want_b) = match w.len() {
            2 => (vec![r, w[1]], vec![w[0], r]),
            4 => (vec![r, w[1], w[2], w[3]], vec![w[0], r, 1, 1]),
            _ => {
                return Err(mismatch(
                    &a_key,
                    format!("the layer's weight has shape {w:?}"),
                ));
            }
        };
        if a.shape != want_a {
            return Err(mismatch(
                &a_key,
                format!(
                    "size mismatch: the file has {:?}, the layer needs {want_a:?}",
                    a.shape
                ),
            ));
        }
        if b.shape != want_b {
            return Err(mismatch(
                &b_key,
                format!(
                    "size mismatch: the file has {:?}, the layer needs {want_b:?}",
                    b.shape
                ),
            ));
        }
        layers.push(LayerLora {
            module: name.clone(),
            r,
            alpha,
            scaling: config.scaling(r, alpha),
            a,
            b,
        });
    }
    if wrapped.is_empty() {
        let names = match &config.target_modules {
            crate::config::Targets::Names(n) => n.join(", "),
            crate::config::Targets::Regex(r) => r.clone(),
        };
        return Err(LoraError::Mismatch {
            component: table.component.clone(),
            key: names.clone(),
            message: format!(
                "Target modules {{{names}}} not found in the base model ({}); was the LoRA made for another model family?",
                table.class
            ),
        });
    }
    let unexpected: Vec<&str> = part
        .iter()
        .zip(&used)
        .filter(|((k, _), u)| !**u && k.contains(".lora_"))
        .map(|((k, _), _)| k.as_str())
        .collect();
    if !unexpected.is_empty() {
        warnings.push(format!(
            "Loading adapter weights from state_dict led to unexpected keys found in the model: {}.",
            unexpected.join(", ")
        ));
    }
    let unused = matcher.unused_patterns(&wrapped);
    drop(matcher);
    if !unused.is_empty() {
        warnings.push(format!(
            "The following alpha_pattern / rank_pattern keys did not match any targeted module of {} and were ignored: {}.",
            table.component,
            unused.join(", ")
        ));
    }
    Ok(ComponentLora {
        component: table.component.clone(),
        config,
        layers,
    })
}
