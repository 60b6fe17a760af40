//! Scheduler configs (`scheduler/scheduler_config.json`), one struct per diffusers scheduler
//! class, and diffusers' `from_config` rules for building one class from another's config.
//!
//! Every struct's fields are the `__init__` arguments of the diffusers 0.42.1 class, named
//! verbatim, with the Python defaults (`#[serde(default)]`). Keys the class does not take are
//! kept in `extra` so that a load followed by a save keeps them, as diffusers keeps the keys of
//! compatible classes in its `FrozenDict` config.
//!
//! String options (`beta_schedule`, `prediction_type`, `timestep_spacing`, ...) stay strings
//! here, as in the JSON; `diff-schedulers` validates them and reports unsupported values as
//! typed errors when it builds a scheduler.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The classes in diffusers' `KarrasDiffusionSchedulers` enum: the `_compatibles` of each of
/// them (DDIM, DDPM, PNDM, LMS, Euler, Heun, Euler ancestral, DPM-Solver multistep and
/// singlestep, KDPM2, KDPM2 ancestral, DEIS, UniPC, DPM-Solver SDE, EDM Euler).
pub const KARRAS_COMPATIBLES: &[&str] = &[
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
];

/// What every scheduler config struct knows about its diffusers class.
pub trait SchedulerConfigClass:
    Sized + Default + Clone + Serialize + for<'de> Deserialize<'de>
{
    /// The diffusers class name (`_class_name`).
    const CLASS_NAME: &'static str;
    /// The `__init__` argument names, in signature order.
    const INIT_KEYS: &'static [&'static str];
    /// diffusers' `_compatibles` of the class.
    const COMPATIBLES: &'static [&'static str];

    /// Keys kept for re-save.
    fn extra(&self) -> &BTreeMap<String, Value>;
    /// Keys kept for re-save, mutable.
    fn extra_mut(&mut self) -> &mut BTreeMap<String, Value>;

    /// `Class.from_config(config, **overrides)` with diffusers' rules; see [`from_config`].
    fn from_config(
        config: &Map<String, Value>,
        overrides: &Map<String, Value>,
    ) -> Result<Self, SchedulerConfigError> {
        from_config(config, overrides)
    }

    /// The config as diffusers would save it: the init keys, then the kept keys, with
    /// `_class_name` set to this class.
    fn to_json_map(&self) -> Result<Map<String, Value>, SchedulerConfigError> {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut map)) => {
                map.insert("_class_name".into(), Value::String(Self::CLASS_NAME.into()));
                Ok(map)
            }
            Ok(other) => Err(SchedulerConfigError::Invalid {
                class: Self::CLASS_NAME,
                message: format!("serialised to a non-object: {other}"),
            }),
            Err(err) => Err(SchedulerConfigError::Invalid {
                class: Self::CLASS_NAME,
                message: err.to_string(),
            }),
        }
    }
}

/// Errors of scheduler config handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerConfigError {
    /// A config value has the wrong JSON type for the class's field.
    #[error("invalid {class} config: {message}")]
    Invalid {
        /// The class being built.
        class: &'static str,
        /// serde's description, naming the key and the expected type.
        message: String,
    },
    /// `_class_name` is not a string.
    #[error("`_class_name` must be a string, got {0}")]
    BadClassName(Value),
    /// A value has the right type but no scheduler can be built from it (`num_train_timesteps:
    /// 0`, `trained_betas: []`).
    #[error("invalid {class} config: key `{key}` = {value}: {expected}")]
    OutOfRange {
        /// The class being built.
        class: &'static str,
        /// The key.
        key: &'static str,
        /// The value found (shortened when long).
        value: String,
        /// What the key must hold.
        expected: String,
    },
}

/// The largest `num_train_timesteps` accepted. diffusers sets no bound, but builds tables of
/// that many entries (betas, alphas, their cumulative products, the timesteps); released
/// checkpoints use 1000, and 100,000 keeps a typo such as `1e9` from allocating gigabytes.
pub const MAX_TRAIN_TIMESTEPS: u64 = 100_000;

/// Checks the values every scheduler builds its tables from, after the types are known to be
/// right: `num_train_timesteps` in `1..=MAX_TRAIN_TIMESTEPS`, `trained_betas` (when given)
/// non-empty and finite. diffusers raises later, deep in the maths (a division by zero, an
/// index error); we refuse at load, naming the key.
fn check_values(
    class: &'static str,
    init: &Map<String, Value>,
) -> Result<(), SchedulerConfigError> {
    let out_of_range = |key: &'static str, value: &Value, expected: String| {
        let mut value = value.to_string();
        if value.len() > 80 {
            value.truncate(77);
            value.push_str("...");
        }
        SchedulerConfigError::OutOfRange {
            class,
            key,
            value,
            expected,
        }
    };
    if let Some(v) = init.get("num_train_timesteps")
        && !v
            .as_u64()
            .is_some_and(|n| (1..=MAX_TRAIN_TIMESTEPS).contains(&n))
    {
        return Err(out_of_range(
            "num_train_timesteps",
            v,
            format!(
                "must be an integer from 1 to {MAX_TRAIN_TIMESTEPS} (the number of training steps; 1000 for Stable Diffusion)"
            ),
        ));
    }
    if let Some(v @ Value::Array(items)) = init.get("trained_betas") {
        if items.is_empty() {
            return Err(out_of_range(
                "trained_betas",
                v,
                "must hold one beta per training step, or be null".into(),
            ));
        }
        if items.len() as u64 > MAX_TRAIN_TIMESTEPS {
            return Err(out_of_range(
                "trained_betas",
                &Value::String(format!("<{} values>", items.len())),
                format!("must hold at most {MAX_TRAIN_TIMESTEPS} values"),
            ));
        }
        if let Some(bad) = items.iter().find(|b| {
            !b.as_f64()
                .is_some_and(|b| b.is_finite() && (0.0..=1.0).contains(&b))
        }) {
            return Err(out_of_range(
                "trained_betas",
                bad,
                "every beta must be a number in [0, 1]".into(),
            ));
        }
    }
    Ok(())
}

/// The `__init__` keys of a diffusers scheduler class known here, by class name.
pub fn scheduler_init_keys(class_name: &str) -> Option<&'static [&'static str]> {
    Some(match class_name {
        "DDIMScheduler" => DDIMSchedulerConfig::INIT_KEYS,
        "DDPMScheduler" => DDPMSchedulerConfig::INIT_KEYS,
        "PNDMScheduler" => PNDMSchedulerConfig::INIT_KEYS,
        "LMSDiscreteScheduler" => LMSDiscreteSchedulerConfig::INIT_KEYS,
        "EulerDiscreteScheduler" => EulerDiscreteSchedulerConfig::INIT_KEYS,
        "HeunDiscreteScheduler" => HeunDiscreteSchedulerConfig::INIT_KEYS,
        "EulerAncestralDiscreteScheduler" => EulerAncestralDiscreteSchedulerConfig::INIT_KEYS,
        "DPMSolverMultistepScheduler" => DPMSolverMultistepSchedulerConfig::INIT_KEYS,
        "DPMSolverSinglestepScheduler" => DPMSolverSinglestepSchedulerConfig::INIT_KEYS,
        "KDPM2DiscreteScheduler" => KDPM2DiscreteSchedulerConfig::INIT_KEYS,
        "KDPM2AncestralDiscreteScheduler" => KDPM2AncestralDiscreteSchedulerConfig::INIT_KEYS,
        "DEISMultistepScheduler" => DEISMultistepSchedulerConfig::INIT_KEYS,
        "UniPCMultistepScheduler" => UniPCMultistepSchedulerConfig::INIT_KEYS,
        "EDMEulerScheduler" => EDMEulerSchedulerConfig::INIT_KEYS,
        "LCMScheduler" => LCMSchedulerConfig::INIT_KEYS,
        "TCDScheduler" => TCDSchedulerConfig::INIT_KEYS,
        "FlowMatchEulerDiscreteScheduler" => FlowMatchEulerDiscreteSchedulerConfig::INIT_KEYS,
        "DPMSolverSDEScheduler" => DPMSolverSDESchedulerConfig::INIT_KEYS,
        _ => return None,
    })
}

/// `C.from_config(config, **overrides)` as diffusers' `ConfigMixin.extract_init_dict` +
/// `from_config` do it:
///
/// 1. keys listed in `_use_default_values` (defaults the saving class used) are dropped, so
///    that this class's own defaults apply;
/// 2. keys the original class (`_class_name`) takes but `C` does not are ignored;
/// 3. `C`'s init keys come from `overrides` first, then from the config; others take `C`'s
///    defaults and are listed in the new `_use_default_values`;
/// 4. every other key of the config (foreign keys, `_diffusers_version`, ...) is kept in
///    `extra` for re-save, with `_class_name` rewritten to `C`. Overrides that `C` does not
///    take are ignored (diffusers returns them as unused kwargs).
pub fn from_config<C: SchedulerConfigClass>(
    config: &Map<String, Value>,
    overrides: &Map<String, Value>,
) -> Result<C, SchedulerConfigError> {
    let used_defaults: Vec<&str> = match config.get("_use_default_values") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let original: Map<String, Value> = config
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "_use_default_values" && !used_defaults.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let orig_class = match original.get("_class_name") {
        None => C::CLASS_NAME.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(_)) => C::CLASS_NAME.to_string(),
        Some(other) => return Err(SchedulerConfigError::BadClassName(other.clone())),
    };
    let unexpected_from_orig: Vec<&str> = if orig_class != C::CLASS_NAME {
        scheduler_init_keys(&orig_class)
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|k| !C::INIT_KEYS.contains(k))
            .collect()
    } else {
        Vec::new()
    };
    let mut init = Map::new();
    for key in C::INIT_KEYS {
        if let Some(v) = overrides.get(*key) {
            init.insert((*key).to_string(), v.clone());
        } else if let Some(v) = original.get(*key)
            && !unexpected_from_orig.contains(key)
        {
            init.insert((*key).to_string(), v.clone());
        }
    }
    for key in overrides.keys() {
        if !C::INIT_KEYS.contains(&key.as_str()) {
            tracing::warn!(
                "{} does not take `{key}`; the override is ignored",
                C::CLASS_NAME
            );
        }
    }
    // serde_path_to_error names the key whose value has the wrong type.
    let built: Result<C, _> = serde_path_to_error::deserialize(Value::Object(init.clone()));
    if built.is_ok() {
        check_values(C::CLASS_NAME, &init)?;
    }
    let mut built: C =
        serde_path_to_error::deserialize(Value::Object(init.clone())).map_err(|err| {
            SchedulerConfigError::Invalid {
                class: C::CLASS_NAME,
                message: format!(
                    "key `{}`: {}",
                    err.path(),
                    crate::json::clean_message(&err.inner().to_string())
                ),
            }
        })?;
    let extra = built.extra_mut();
    extra.clear();
    for (k, v) in &original {
        if !init.contains_key(k) {
            extra.insert(k.clone(), v.clone());
        }
    }
    if extra.contains_key("_class_name") {
        extra.insert("_class_name".into(), Value::String(C::CLASS_NAME.into()));
    }
    let mut defaults_used: Vec<&str> = C::INIT_KEYS
        .iter()
        .copied()
        .filter(|k| !init.contains_key(*k))
        .collect();
    defaults_used.sort_unstable();
    if !defaults_used.is_empty() {
        extra.insert(
            "_use_default_values".into(),
            Value::Array(
                defaults_used
                    .into_iter()
                    .map(|k| Value::String(k.into()))
                    .collect(),
            ),
        );
    }
    Ok(built)
}

/// Declares one config struct, its `Default` (the Python defaults) and its
/// [`SchedulerConfigClass`] impl from a table of `field: Type = default`.
macro_rules! scheduler_config {
    (
        $(#[$meta:meta])*
        $name:ident, $class:literal, $compatibles:expr, {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// Keys this class does not take (`_class_name`, `_diffusers_version`, keys of
            /// other scheduler classes, `_use_default_values`), kept for re-save.
            #[serde(flatten)]
            pub extra: BTreeMap<String, Value>,
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* extra: BTreeMap::new() }
            }
        }

        impl SchedulerConfigClass for $name {
            const CLASS_NAME: &'static str = $class;
            const INIT_KEYS: &'static [&'static str] = &[ $( stringify!($field), )* ];
            const COMPATIBLES: &'static [&'static str] = $compatibles;

            fn extra(&self) -> &BTreeMap<String, Value> {
                &self.extra
            }

            fn extra_mut(&mut self) -> &mut BTreeMap<String, Value> {
                &mut self.extra
            }
        }
    };
}

scheduler_config! {
    /// `DDIMScheduler` (denoising diffusion implicit models): every `__init__` argument of diffusers 0.42.1 with its default.
    DDIMSchedulerConfig, "DDIMScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `clip_sample`, default `True`.
        clip_sample: bool = true,
        /// `set_alpha_to_one`, default `True`.
        set_alpha_to_one: bool = true,
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `thresholding`, default `False`.
        thresholding: bool = false,
        /// `dynamic_thresholding_ratio`, default `0.995`.
        dynamic_thresholding_ratio: f64 = 0.995,
        /// `clip_sample_range`, default `1.0`.
        clip_sample_range: f64 = 1.0,
        /// `sample_max_value`, default `1.0`.
        sample_max_value: f64 = 1.0,
        /// `timestep_spacing`, default `'leading'`.
        timestep_spacing: String = "leading".to_string(),
        /// `rescale_betas_zero_snr`, default `False`.
        rescale_betas_zero_snr: bool = false,
    }
}

scheduler_config! {
    /// `DDPMScheduler` (denoising diffusion probabilistic models): every `__init__` argument of diffusers 0.42.1 with its default.
    DDPMSchedulerConfig, "DDPMScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `variance_type`, default `'fixed_small'`.
        variance_type: String = "fixed_small".to_string(),
        /// `clip_sample`, default `True`.
        clip_sample: bool = true,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `thresholding`, default `False`.
        thresholding: bool = false,
        /// `dynamic_thresholding_ratio`, default `0.995`.
        dynamic_thresholding_ratio: f64 = 0.995,
        /// `clip_sample_range`, default `1.0`.
        clip_sample_range: f64 = 1.0,
        /// `sample_max_value`, default `1.0`.
        sample_max_value: f64 = 1.0,
        /// `timestep_spacing`, default `'leading'`.
        timestep_spacing: String = "leading".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `rescale_betas_zero_snr`, default `False`.
        rescale_betas_zero_snr: bool = false,
    }
}

scheduler_config! {
    /// `PNDMScheduler` (pseudo numerical methods (PLMS with `skip_prk_steps`)): every `__init__` argument of diffusers 0.42.1 with its default.
    PNDMSchedulerConfig, "PNDMScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `skip_prk_steps`, default `False`.
        skip_prk_steps: bool = false,
        /// `set_alpha_to_one`, default `False`.
        set_alpha_to_one: bool = false,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `timestep_spacing`, default `'leading'`.
        timestep_spacing: String = "leading".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
    }
}

scheduler_config! {
    /// `LMSDiscreteScheduler` (linear multistep): every `__init__` argument of diffusers 0.42.1 with its default.
    LMSDiscreteSchedulerConfig, "LMSDiscreteScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
    }
}

scheduler_config! {
    /// `EulerDiscreteScheduler` (Euler (k-diffusion)): every `__init__` argument of diffusers 0.42.1 with its default.
    EulerDiscreteSchedulerConfig, "EulerDiscreteScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `interpolation_type`, default `'linear'`.
        interpolation_type: String = "linear".to_string(),
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: Option<bool> = Some(false),
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: Option<bool> = Some(false),
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: Option<bool> = Some(false),
        /// `sigma_min`, default `None`.
        sigma_min: Option<f64> = None,
        /// `sigma_max`, default `None`.
        sigma_max: Option<f64> = None,
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `timestep_type`, default `'discrete'`.
        timestep_type: String = "discrete".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `rescale_betas_zero_snr`, default `False`.
        rescale_betas_zero_snr: bool = false,
        /// `final_sigmas_type`, default `'zero'`.
        final_sigmas_type: String = "zero".to_string(),
    }
}

scheduler_config! {
    /// `HeunDiscreteScheduler` (Heun (2nd order, k-diffusion)): every `__init__` argument of diffusers 0.42.1 with its default.
    HeunDiscreteSchedulerConfig, "HeunDiscreteScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.00085`.
        beta_start: f64 = 0.00085,
        /// `beta_end`, default `0.012`.
        beta_end: f64 = 0.012,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `clip_sample`, default `False`.
        clip_sample: bool = false,
        /// `clip_sample_range`, default `1.0`.
        clip_sample_range: f64 = 1.0,
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
    }
}

scheduler_config! {
    /// `EulerAncestralDiscreteScheduler` (Euler ancestral): every `__init__` argument of diffusers 0.42.1 with its default.
    EulerAncestralDiscreteSchedulerConfig, "EulerAncestralDiscreteScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `rescale_betas_zero_snr`, default `False`.
        rescale_betas_zero_snr: bool = false,
    }
}

scheduler_config! {
    /// `DPMSolverMultistepScheduler` (DPM-Solver(++) multistep): every `__init__` argument of diffusers 0.42.1 with its default.
    DPMSolverMultistepSchedulerConfig, "DPMSolverMultistepScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `solver_order`, default `2`.
        solver_order: usize = 2,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `thresholding`, default `False`.
        thresholding: bool = false,
        /// `dynamic_thresholding_ratio`, default `0.995`.
        dynamic_thresholding_ratio: f64 = 0.995,
        /// `sample_max_value`, default `1.0`.
        sample_max_value: f64 = 1.0,
        /// `algorithm_type`, default `'dpmsolver++'`.
        algorithm_type: String = "dpmsolver++".to_string(),
        /// `solver_type`, default `'midpoint'`.
        solver_type: String = "midpoint".to_string(),
        /// `lower_order_final`, default `True`.
        lower_order_final: bool = true,
        /// `euler_at_final`, default `False`.
        euler_at_final: bool = false,
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `use_lu_lambdas`, default `False`.
        use_lu_lambdas: bool = false,
        /// `use_flow_sigmas`, default `False`.
        use_flow_sigmas: bool = false,
        /// `flow_shift`, default `1.0`.
        flow_shift: f64 = 1.0,
        /// `final_sigmas_type`, default `'zero'`.
        final_sigmas_type: String = "zero".to_string(),
        /// `lambda_min_clipped`, default `-inf`.
        #[serde(
            serialize_with = "crate::json::serialize_py_float",
            deserialize_with = "crate::json::deserialize_py_float"
        )]
        lambda_min_clipped: f64 = f64::NEG_INFINITY,
        /// `variance_type`, default `None`.
        variance_type: Option<String> = None,
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `rescale_betas_zero_snr`, default `False`.
        rescale_betas_zero_snr: bool = false,
        /// `use_dynamic_shifting`, default `False`.
        use_dynamic_shifting: bool = false,
        /// `time_shift_type`, default `'exponential'`.
        time_shift_type: String = "exponential".to_string(),
    }
}

scheduler_config! {
    /// `DPMSolverSinglestepScheduler` (DPM-Solver(++) singlestep): every `__init__` argument of diffusers 0.42.1 with its default.
    DPMSolverSinglestepSchedulerConfig, "DPMSolverSinglestepScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `solver_order`, default `2`.
        solver_order: usize = 2,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `thresholding`, default `False`.
        thresholding: bool = false,
        /// `dynamic_thresholding_ratio`, default `0.995`.
        dynamic_thresholding_ratio: f64 = 0.995,
        /// `sample_max_value`, default `1.0`.
        sample_max_value: f64 = 1.0,
        /// `algorithm_type`, default `'dpmsolver++'`.
        algorithm_type: String = "dpmsolver++".to_string(),
        /// `solver_type`, default `'midpoint'`.
        solver_type: String = "midpoint".to_string(),
        /// `lower_order_final`, default `False`.
        lower_order_final: bool = false,
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `use_flow_sigmas`, default `False`.
        use_flow_sigmas: bool = false,
        /// `flow_shift`, default `1.0`.
        flow_shift: f64 = 1.0,
        /// `final_sigmas_type`, default `'zero'`.
        final_sigmas_type: String = "zero".to_string(),
        /// `lambda_min_clipped`, default `-inf`.
        #[serde(
            serialize_with = "crate::json::serialize_py_float",
            deserialize_with = "crate::json::deserialize_py_float"
        )]
        lambda_min_clipped: f64 = f64::NEG_INFINITY,
        /// `variance_type`, default `None`.
        variance_type: Option<String> = None,
        /// `use_dynamic_shifting`, default `False`.
        use_dynamic_shifting: bool = false,
        /// `time_shift_type`, default `'exponential'`.
        time_shift_type: String = "exponential".to_string(),
    }
}

scheduler_config! {
    /// `KDPM2DiscreteScheduler` (DPM2 (k-diffusion)): every `__init__` argument of diffusers 0.42.1 with its default.
    KDPM2DiscreteSchedulerConfig, "KDPM2DiscreteScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.00085`.
        beta_start: f64 = 0.00085,
        /// `beta_end`, default `0.012`.
        beta_end: f64 = 0.012,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
    }
}

scheduler_config! {
    /// `KDPM2AncestralDiscreteScheduler` (DPM2 ancestral): every `__init__` argument of diffusers 0.42.1 with its default.
    KDPM2AncestralDiscreteSchedulerConfig, "KDPM2AncestralDiscreteScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.00085`.
        beta_start: f64 = 0.00085,
        /// `beta_end`, default `0.012`.
        beta_end: f64 = 0.012,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
    }
}

scheduler_config! {
    /// `DEISMultistepScheduler` (DEIS multistep): every `__init__` argument of diffusers 0.42.1 with its default.
    DEISMultistepSchedulerConfig, "DEISMultistepScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `solver_order`, default `2`.
        solver_order: usize = 2,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `thresholding`, default `False`.
        thresholding: bool = false,
        /// `dynamic_thresholding_ratio`, default `0.995`.
        dynamic_thresholding_ratio: f64 = 0.995,
        /// `sample_max_value`, default `1.0`.
        sample_max_value: f64 = 1.0,
        /// `algorithm_type`, default `'deis'`.
        algorithm_type: String = "deis".to_string(),
        /// `solver_type`, default `'logrho'`.
        solver_type: String = "logrho".to_string(),
        /// `lower_order_final`, default `True`.
        lower_order_final: bool = true,
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `use_flow_sigmas`, default `False`.
        use_flow_sigmas: bool = false,
        /// `flow_shift`, default `1.0`.
        flow_shift: f64 = 1.0,
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `use_dynamic_shifting`, default `False`.
        use_dynamic_shifting: bool = false,
        /// `time_shift_type`, default `'exponential'`.
        time_shift_type: String = "exponential".to_string(),
    }
}

scheduler_config! {
    /// `UniPCMultistepScheduler` (UniPC multistep): every `__init__` argument of diffusers 0.42.1 with its default.
    UniPCMultistepSchedulerConfig, "UniPCMultistepScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.0001`.
        beta_start: f64 = 0.0001,
        /// `beta_end`, default `0.02`.
        beta_end: f64 = 0.02,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `solver_order`, default `2`.
        solver_order: usize = 2,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `thresholding`, default `False`.
        thresholding: bool = false,
        /// `dynamic_thresholding_ratio`, default `0.995`.
        dynamic_thresholding_ratio: f64 = 0.995,
        /// `sample_max_value`, default `1.0`.
        sample_max_value: f64 = 1.0,
        /// `predict_x0`, default `True`.
        predict_x0: bool = true,
        /// `solver_type`, default `'bh2'`.
        solver_type: String = "bh2".to_string(),
        /// `lower_order_final`, default `True`.
        lower_order_final: bool = true,
        /// `disable_corrector`, default `[]`.
        disable_corrector: Vec<i64> = Vec::new(),
        /// `solver_p`, default `None`.
        solver_p: Option<serde_json::Value> = None,
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `use_flow_sigmas`, default `False`.
        use_flow_sigmas: bool = false,
        /// `flow_shift`, default `1.0`.
        flow_shift: f64 = 1.0,
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `final_sigmas_type`, default `'zero'`.
        final_sigmas_type: String = "zero".to_string(),
        /// `rescale_betas_zero_snr`, default `False`.
        rescale_betas_zero_snr: bool = false,
        /// `use_dynamic_shifting`, default `False`.
        use_dynamic_shifting: bool = false,
        /// `time_shift_type`, default `'exponential'`.
        time_shift_type: String = "exponential".to_string(),
        /// `sigma_min`, default `None`.
        sigma_min: Option<f64> = None,
        /// `sigma_max`, default `None`.
        sigma_max: Option<f64> = None,
        /// `shift_terminal`, default `None`.
        shift_terminal: Option<f64> = None,
    }
}

scheduler_config! {
    /// `EDMEulerScheduler` (Euler in the EDM formulation): every `__init__` argument of diffusers 0.42.1 with its default.
    EDMEulerSchedulerConfig, "EDMEulerScheduler", &[], {
        /// `sigma_min`, default `0.002`.
        sigma_min: f64 = 0.002,
        /// `sigma_max`, default `80.0`.
        sigma_max: f64 = 80.0,
        /// `sigma_data`, default `0.5`.
        sigma_data: f64 = 0.5,
        /// `sigma_schedule`, default `'karras'`.
        sigma_schedule: String = "karras".to_string(),
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `rho`, default `7.0`.
        rho: f64 = 7.0,
        /// `final_sigmas_type`, default `'zero'`.
        final_sigmas_type: String = "zero".to_string(),
    }
}

scheduler_config! {
    /// `LCMScheduler` (latent consistency models): every `__init__` argument of diffusers 0.42.1 with its default.
    LCMSchedulerConfig, "LCMScheduler", &[], {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.00085`.
        beta_start: f64 = 0.00085,
        /// `beta_end`, default `0.012`.
        beta_end: f64 = 0.012,
        /// `beta_schedule`, default `'scaled_linear'`.
        beta_schedule: String = "scaled_linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `original_inference_steps`, default `50`.
        original_inference_steps: usize = 50,
        /// `clip_sample`, default `False`.
        clip_sample: bool = false,
        /// `clip_sample_range`, default `1.0`.
        clip_sample_range: f64 = 1.0,
        /// `set_alpha_to_one`, default `True`.
        set_alpha_to_one: bool = true,
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `thresholding`, default `False`.
        thresholding: bool = false,
        /// `dynamic_thresholding_ratio`, default `0.995`.
        dynamic_thresholding_ratio: f64 = 0.995,
        /// `sample_max_value`, default `1.0`.
        sample_max_value: f64 = 1.0,
        /// `timestep_spacing`, default `'leading'`.
        timestep_spacing: String = "leading".to_string(),
        /// `timestep_scaling`, default `10.0`.
        timestep_scaling: f64 = 10.0,
        /// `rescale_betas_zero_snr`, default `False`.
        rescale_betas_zero_snr: bool = false,
    }
}

scheduler_config! {
    /// `TCDScheduler` (trajectory consistency distillation): every `__init__` argument of diffusers 0.42.1 with its default.
    TCDSchedulerConfig, "TCDScheduler", &[], {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.00085`.
        beta_start: f64 = 0.00085,
        /// `beta_end`, default `0.012`.
        beta_end: f64 = 0.012,
        /// `beta_schedule`, default `'scaled_linear'`.
        beta_schedule: String = "scaled_linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `original_inference_steps`, default `50`.
        original_inference_steps: usize = 50,
        /// `clip_sample`, default `False`.
        clip_sample: bool = false,
        /// `clip_sample_range`, default `1.0`.
        clip_sample_range: f64 = 1.0,
        /// `set_alpha_to_one`, default `True`.
        set_alpha_to_one: bool = true,
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `thresholding`, default `False`.
        thresholding: bool = false,
        /// `dynamic_thresholding_ratio`, default `0.995`.
        dynamic_thresholding_ratio: f64 = 0.995,
        /// `sample_max_value`, default `1.0`.
        sample_max_value: f64 = 1.0,
        /// `timestep_spacing`, default `'leading'`.
        timestep_spacing: String = "leading".to_string(),
        /// `timestep_scaling`, default `10.0`.
        timestep_scaling: f64 = 10.0,
        /// `rescale_betas_zero_snr`, default `False`.
        rescale_betas_zero_snr: bool = false,
    }
}

scheduler_config! {
    /// `DPMSolverSDEScheduler` (DPM-Solver++ 2S SDE with a Brownian-tree noise sampler): every `__init__` argument of diffusers 0.42.1 with its default.
    DPMSolverSDESchedulerConfig, "DPMSolverSDEScheduler", KARRAS_COMPATIBLES, {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `beta_start`, default `0.00085`.
        beta_start: f64 = 0.00085,
        /// `beta_end`, default `0.012`.
        beta_end: f64 = 0.012,
        /// `beta_schedule`, default `'linear'`.
        beta_schedule: String = "linear".to_string(),
        /// `trained_betas`, default `None`.
        trained_betas: Option<Vec<f64>> = None,
        /// `prediction_type`, default `'epsilon'`.
        prediction_type: String = "epsilon".to_string(),
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `noise_sampler_seed`, default `None` (the Brownian tree's entropy is then drawn
        /// from torch's global generator at the first step).
        noise_sampler_seed: Option<u64> = None,
        /// `timestep_spacing`, default `'linspace'`.
        timestep_spacing: String = "linspace".to_string(),
        /// `steps_offset`, default `0`.
        steps_offset: i64 = 0,
    }
}

scheduler_config! {
    /// `FlowMatchEulerDiscreteScheduler` (Euler for flow matching (SD3, Flux)): every `__init__` argument of diffusers 0.42.1 with its default.
    FlowMatchEulerDiscreteSchedulerConfig, "FlowMatchEulerDiscreteScheduler", &[], {
        /// `num_train_timesteps`, default `1000`.
        num_train_timesteps: usize = 1000,
        /// `shift`, default `1.0`.
        shift: f64 = 1.0,
        /// `use_dynamic_shifting`, default `False`.
        use_dynamic_shifting: bool = false,
        /// `base_shift`, default `0.5`.
        base_shift: f64 = 0.5,
        /// `max_shift`, default `1.15`.
        max_shift: f64 = 1.15,
        /// `base_image_seq_len`, default `256`.
        base_image_seq_len: usize = 256,
        /// `max_image_seq_len`, default `4096`.
        max_image_seq_len: usize = 4096,
        /// `invert_sigmas`, default `False`.
        invert_sigmas: bool = false,
        /// `shift_terminal`, default `None`.
        shift_terminal: Option<f64> = None,
        /// `use_karras_sigmas`, default `False`.
        use_karras_sigmas: bool = false,
        /// `use_exponential_sigmas`, default `False`.
        use_exponential_sigmas: bool = false,
        /// `use_beta_sigmas`, default `False`.
        use_beta_sigmas: bool = false,
        /// `time_shift_type`, default `'exponential'`.
        time_shift_type: String = "exponential".to_string(),
        /// `stochastic_sampling`, default `False`.
        stochastic_sampling: bool = false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sd15() -> Map<String, Value> {
        match json!({
            "_class_name": "PNDMScheduler",
            "_diffusers_version": "0.6.0",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "num_train_timesteps": 1000,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null,
            "clip_sample": false
        }) {
            Value::Object(m) => m,
            _ => unreachable!("literal object"),
        }
    }

    #[test]
    fn from_config_of_another_class_takes_shared_keys_and_keeps_foreign_ones() {
        let c: EulerDiscreteSchedulerConfig = from_config(&sd15(), &Map::new()).expect("valid");
        assert_eq!(c.beta_schedule, "scaled_linear");
        assert_eq!(c.steps_offset, 1);
        // Absent in the SD 1.5 file: Euler's own default applies.
        assert_eq!(c.timestep_spacing, "linspace");
        // PNDM-only keys are kept for re-save, `_class_name` names the new class.
        assert_eq!(c.extra["skip_prk_steps"], json!(true));
        assert_eq!(c.extra["_class_name"], json!("EulerDiscreteScheduler"));
        assert_eq!(c.extra["_diffusers_version"], json!("0.6.0"));
        let defaults = c.extra["_use_default_values"].as_array().expect("list");
        assert!(defaults.contains(&json!("timestep_spacing")));
        assert!(!defaults.contains(&json!("beta_start")));
    }

    #[test]
    fn from_config_overrides_win_and_use_default_values_are_dropped() {
        let mut cfg = sd15();
        cfg.insert("timestep_spacing".into(), json!("leading"));
        cfg.insert("_use_default_values".into(), json!(["timestep_spacing"]));
        let mut overrides = Map::new();
        overrides.insert("beta_end".into(), json!(0.02));
        let c: DDIMSchedulerConfig = from_config(&cfg, &overrides).expect("valid");
        assert_eq!(c.beta_end, 0.02);
        // Listed as a default of the saving class: DDIM's own default ("leading") applies,
        // and the key is not carried over as a kept key either.
        assert_eq!(c.timestep_spacing, "leading");
        let listed = c.extra["_use_default_values"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(listed.contains(&json!("timestep_spacing")));
        let mut euler_cfg = cfg.clone();
        euler_cfg.insert("_class_name".into(), json!("DDIMScheduler"));
        let e: EulerDiscreteSchedulerConfig = from_config(&euler_cfg, &Map::new()).expect("valid");
        assert_eq!(
            e.timestep_spacing, "linspace",
            "dropped key falls back to Euler's default"
        );
    }

    #[test]
    fn from_config_reports_a_wrongly_typed_value_with_its_key() {
        let mut cfg = sd15();
        cfg.insert("num_train_timesteps".into(), json!("many"));
        let err = from_config::<DDPMSchedulerConfig>(&cfg, &Map::new()).expect_err("bad type");
        let msg = err.to_string();
        assert!(msg.contains("DDPMScheduler"), "{msg}");
        assert!(
            msg.contains("num_train_timesteps"),
            "the key is named: {msg}"
        );
    }

    /// Issue 18: values no scheduler can be built from are refused at load, naming the key,
    /// for every class (diffusers fails later, deep in the maths).
    #[test]
    fn impossible_table_sizes_are_refused_with_the_key() {
        let cases = [
            ("num_train_timesteps", json!(0)),
            ("num_train_timesteps", json!(1_000_000_000u64)),
            ("num_train_timesteps", json!(-1)),
            ("trained_betas", json!([])),
            ("trained_betas", json!([0.1, 2.5])),
        ];
        for (key, value) in cases {
            let mut cfg = sd15();
            cfg.insert(key.into(), value.clone());
            for err in [
                from_config::<PNDMSchedulerConfig>(&cfg, &Map::new()).map(|_| ()),
                from_config::<DDIMSchedulerConfig>(&cfg, &Map::new()).map(|_| ()),
                from_config::<DPMSolverMultistepSchedulerConfig>(&cfg, &Map::new()).map(|_| ()),
                from_config::<DPMSolverSinglestepSchedulerConfig>(&cfg, &Map::new()).map(|_| ()),
                from_config::<DEISMultistepSchedulerConfig>(&cfg, &Map::new()).map(|_| ()),
            ] {
                let msg = err.expect_err("refused").to_string();
                assert!(msg.contains(key), "{key}={value}: {msg}");
            }
        }
        // The same keys given as overrides are checked too; valid values still load.
        let mut overrides = Map::new();
        overrides.insert("num_train_timesteps".into(), json!(0));
        assert!(from_config::<EulerDiscreteSchedulerConfig>(&sd15(), &overrides).is_err());
        let mut cfg = sd15();
        cfg.insert("trained_betas".into(), json!([0.0001, 0.02]));
        cfg.insert("num_train_timesteps".into(), json!(2));
        assert!(from_config::<DDIMSchedulerConfig>(&cfg, &Map::new()).is_ok());
    }

    /// Issue 18: a NaN literal where a finite number is needed is named as such, without the
    /// internal marker string.
    #[test]
    fn nan_literal_message_is_clean() {
        let text = "{\"_class_name\": \"DDIMScheduler\", \"beta_start\": NaN}";
        let Value::Object(cfg) = crate::json::loads(text).expect("python json") else {
            panic!("not an object");
        };
        let msg = from_config::<DDIMSchedulerConfig>(&cfg, &Map::new())
            .expect_err("NaN is not an f64 here")
            .to_string();
        assert!(msg.contains("beta_start") && msg.contains("NaN"), "{msg}");
        assert!(
            !msg.contains("python-float") && !msg.contains('\0'),
            "{msg}"
        );
    }

    #[test]
    fn lambda_min_clipped_reads_null_as_negative_infinity() {
        let mut cfg = Map::new();
        cfg.insert("lambda_min_clipped".into(), Value::Null);
        let c: DPMSolverMultistepSchedulerConfig = from_config(&cfg, &Map::new()).expect("valid");
        assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
        assert_eq!(
            DPMSolverMultistepSchedulerConfig::default().lambda_min_clipped,
            f64::NEG_INFINITY
        );
    }

    #[test]
    fn lambda_min_clipped_reads_and_writes_python_negative_infinity() {
        // diffusers saves DPMSolverMultistepScheduler's default as the bare token `-Infinity`.
        let text =
            "{\"_class_name\": \"DPMSolverMultistepScheduler\", \"lambda_min_clipped\": -Infinity}";
        let Value::Object(cfg) = crate::json::loads(text).expect("python json") else {
            panic!("not an object");
        };
        let c: DPMSolverMultistepSchedulerConfig = from_config(&cfg, &Map::new()).expect("valid");
        assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
        let written = crate::json::to_config_string(&serde_json::to_value(&c).expect("serialize"));
        assert!(
            written.contains("\"lambda_min_clipped\": -Infinity,"),
            "{written}"
        );
    }

    #[test]
    fn every_class_knows_its_init_keys() {
        for class in KARRAS_COMPATIBLES {
            assert!(scheduler_init_keys(class).is_some(), "{class}");
        }
        assert_eq!(scheduler_init_keys("NotAScheduler"), None);
    }
}
