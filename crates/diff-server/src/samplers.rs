//! Sampler names: AUTOMATIC1111's (`Euler a`, `DPM++ 2M Karras`, ...) mapped to diffusers'
//! scheduler classes and `from_config` overrides, as diffusers' documentation pairs them
//! ("A1111/k-diffusion -> diffusers" table); a diffusers class name is accepted as is.

use crate::error::ApiError;
use crate::request::{SchedulerChoice, printable};
use burn_diffusers::schedulers::SCHEDULER_CLASSES;
use serde_json::{Map, Value};

/// The flow-matching scheduler, which the Stable Diffusion pipelines cannot drive.
const FLOW_MATCH: &str = "FlowMatchEulerDiscreteScheduler";

/// One sampler: A1111's name, the diffusers class, and `from_config` overrides as
/// `(key, JSON value)` pairs.
pub type Sampler = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// A1111 sampler name, diffusers class, and the overrides as `(key, value)` pairs.
pub const A1111_SAMPLERS: &[Sampler] = &[
    ("Euler a", "EulerAncestralDiscreteScheduler", &[]),
    ("Euler", "EulerDiscreteScheduler", &[]),
    ("LMS", "LMSDiscreteScheduler", &[]),
    (
        "LMS Karras",
        "LMSDiscreteScheduler",
        &[("use_karras_sigmas", "true")],
    ),
    ("Heun", "HeunDiscreteScheduler", &[]),
    ("DPM2", "KDPM2DiscreteScheduler", &[]),
    (
        "DPM2 Karras",
        "KDPM2DiscreteScheduler",
        &[("use_karras_sigmas", "true")],
    ),
    ("DPM2 a", "KDPM2AncestralDiscreteScheduler", &[]),
    (
        "DPM2 a Karras",
        "KDPM2AncestralDiscreteScheduler",
        &[("use_karras_sigmas", "true")],
    ),
    ("DPM++ 2M", "DPMSolverMultistepScheduler", &[]),
    (
        "DPM++ 2M Karras",
        "DPMSolverMultistepScheduler",
        &[("use_karras_sigmas", "true")],
    ),
    (
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        &[("algorithm_type", "\"sde-dpmsolver++\"")],
    ),
    (
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        &[
            ("algorithm_type", "\"sde-dpmsolver++\""),
            ("use_karras_sigmas", "true"),
        ],
    ),
    ("DPM++ SDE", "DPMSolverSinglestepScheduler", &[]),
    (
        "DPM++ SDE Karras",
        "DPMSolverSinglestepScheduler",
        &[("use_karras_sigmas", "true")],
    ),
    ("DDIM", "DDIMScheduler", &[]),
    ("PLMS", "PNDMScheduler", &[]),
    ("UniPC", "UniPCMultistepScheduler", &[]),
    ("DEIS", "DEISMultistepScheduler", &[]),
    ("LCM", "LCMScheduler", &[]),
    ("DDPM", "DDPMScheduler", &[]),
];

fn overrides(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| {
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String((*v).into()));
            ((*k).to_string(), value)
        })
        .collect()
}

/// A sampler name or a diffusers class name, resolved; unknown names get a 400 listing the
/// known ones.
pub fn resolve(name: &str) -> Result<SchedulerChoice, ApiError> {
    let trimmed = name.trim();
    if let Some((a1111, class, pairs)) = A1111_SAMPLERS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(trimmed))
    {
        return Ok(SchedulerChoice {
            class: (*class).to_string(),
            overrides: overrides(pairs),
            name: (*a1111).to_string(),
        });
    }
    if let Some(class) = SCHEDULER_CLASSES
        .iter()
        .find(|c| **c == trimmed && **c != FLOW_MATCH)
    {
        return Ok(SchedulerChoice {
            class: (*class).to_string(),
            overrides: Map::new(),
            name: (*class).to_string(),
        });
    }
    Err(ApiError::bad_request(format!(
        "unknown scheduler `{}`: use a diffusers class ({}) or an A1111 sampler name ({})",
        printable(trimmed, 60),
        class_names().join(", "),
        A1111_SAMPLERS
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The diffusers scheduler classes a Stable Diffusion pipeline can use.
pub fn class_names() -> Vec<&'static str> {
    SCHEDULER_CLASSES
        .iter()
        .copied()
        .filter(|c| *c != FLOW_MATCH)
        .collect()
}

/// `GET /sdapi/v1/samplers`: `[{name, aliases, options}]`.
pub fn a1111_list() -> Value {
    Value::Array(
        A1111_SAMPLERS
            .iter()
            .map(|(name, class, pairs)| {
                serde_json::json!({
                    "name": name,
                    "aliases": [class],
                    "options": overrides(pairs),
                })
            })
            .collect(),
    )
}
