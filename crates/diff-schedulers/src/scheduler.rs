//! [`Scheduler`]: one enum over every scheduler class, what a pipeline holds, made from the
//! one registry below ([`SCHEDULER_REGISTRY`]). A new class is one line there.

use crate::mixin::SchedulerMixin;
use crate::{SchedulerError, SchedulerOutput, StepOptions, TimestepsRequest, TorchGenerator};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::{self as cfg, SchedulerConfigClass};
use serde_json::{Map, Value};

/// diffusers' `SCHEDULER_CONFIG_NAME`.
pub const CONFIG_NAME: &str = "scheduler_config.json";

/// `Class.from_config(config, **overrides)` of one registered class.
pub type BuildFn =
    fn(&Map<String, Value>, &Map<String, Value>) -> Result<Scheduler, SchedulerError>;

/// One registered scheduler class: its diffusers name, the config keys its config struct
/// takes (the `__init__` arguments, in signature order), its `_compatibles`, and how to
/// build it from a config.
#[derive(Clone, Copy)]
pub struct SchedulerClass {
    /// The diffusers class name (`_class_name`).
    pub name: &'static str,
    /// The keys the class's config struct accepts (diffusers' `__init__` arguments).
    pub config_keys: &'static [&'static str],
    /// diffusers' `_compatibles`.
    pub compatibles: &'static [&'static str],
    /// `order` (model calls per step of the underlying solver).
    pub order: usize,
    /// `Class.from_config(config, **overrides)`.
    pub build: BuildFn,
}

impl std::fmt::Debug for SchedulerClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerClass")
            .field("name", &self.name)
            .field("config_keys", &self.config_keys)
            .field("compatibles", &self.compatibles)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

/// Builds a class of the registry: diffusers' `from_config` rules on the config, then `new`.
fn build<S: SchedulerMixin>(
    config: &Map<String, Value>,
    overrides: &Map<String, Value>,
    wrap: fn(S) -> Scheduler,
) -> Result<Scheduler, SchedulerError> {
    let c: S::Config = cfg::from_config(config, overrides)?;
    Ok(wrap(S::new(c)?))
}

/// The registry: one line per class (`Variant => module::Type`) makes the enum variant, the
/// [`SCHEDULER_REGISTRY`] entry (name, config keys and compatibles from the class's config
/// struct), [`SCHEDULER_CLASSES`] and the dispatch of every [`Scheduler`] method.
macro_rules! registry {
    ($( $variant:ident => $module:ident :: $ty:ident; )*) => {
        /// Any of the implemented diffusers schedulers.
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub enum Scheduler {
            $(
                #[doc = concat!("`", stringify!($ty), "`.")]
                $variant(crate::$module::$ty),
            )*
        }

        /// Every class this crate implements, in registry order.
        pub const SCHEDULER_REGISTRY: &[SchedulerClass] = &[ $(
            SchedulerClass {
                name: <<crate::$module::$ty as SchedulerMixin>::Config as SchedulerConfigClass>::CLASS_NAME,
                config_keys: <<crate::$module::$ty as SchedulerMixin>::Config as SchedulerConfigClass>::INIT_KEYS,
                compatibles: <<crate::$module::$ty as SchedulerMixin>::Config as SchedulerConfigClass>::COMPATIBLES,
                order: <crate::$module::$ty as SchedulerMixin>::ORDER,
                build: |config, overrides| build(config, overrides, Scheduler::$variant),
            },
        )* ];

        /// The diffusers class names implemented here, in registry order.
        pub const SCHEDULER_CLASSES: &[&str] = &[ $(
            <<crate::$module::$ty as SchedulerMixin>::Config as SchedulerConfigClass>::CLASS_NAME,
        )* ];

        /// Runs `$body` with `$s` bound to the class inside a [`Scheduler`].
        macro_rules! dispatch {
            ($self:expr, $s:ident => $body:expr) => {
                match $self {
                    $( Scheduler::$variant($s) => $body, )*
                }
            };
        }
    };
}

registry! {
    Ddim => ddim::DDIMScheduler;
    Ddpm => ddpm::DDPMScheduler;
    Pndm => pndm::PNDMScheduler;
    EulerDiscrete => euler_discrete::EulerDiscreteScheduler;
    EulerAncestralDiscrete => euler_ancestral_discrete::EulerAncestralDiscreteScheduler;
    DpmSolverMultistep => dpmsolver_multistep::DPMSolverMultistepScheduler;
    HeunDiscrete => heun_discrete::HeunDiscreteScheduler;
    KDpm2Discrete => k_dpm_2_discrete::KDPM2DiscreteScheduler;
    KDpm2AncestralDiscrete => k_dpm_2_ancestral_discrete::KDPM2AncestralDiscreteScheduler;
    EdmEuler => edm_euler::EDMEulerScheduler;
    DpmSolverSinglestep => dpmsolver_singlestep::DPMSolverSinglestepScheduler;
    DpmSolverSde => dpmsolver_sde::DPMSolverSDEScheduler;
    Lcm => lcm::LCMScheduler;
    LmsDiscrete => lms_discrete::LMSDiscreteScheduler;
    Tcd => tcd::TCDScheduler;
    DeisMultistep => deis_multistep::DEISMultistepScheduler;
    UniPcMultistep => unipc_multistep::UniPCMultistepScheduler;
    FlowMatchEulerDiscrete => flow_match_euler_discrete::FlowMatchEulerDiscreteScheduler;
}

impl Scheduler {
    /// The registry entry of the class named `class_name`.
    pub fn registered(class_name: &str) -> Option<&'static SchedulerClass> {
        SCHEDULER_REGISTRY.iter().find(|c| c.name == class_name)
    }

    /// The config keys the class named `class_name` takes (its config struct's keys), or
    /// `None` for a class this crate does not implement.
    pub fn config_keys(class_name: &str) -> Option<&'static [&'static str]> {
        Self::registered(class_name).map(|c| c.config_keys)
    }

    /// `Class.from_config(config, **overrides)` for the class named `class_name`,
    /// with diffusers' rules (see `diff_format::configs::scheduler::from_config`).
    pub fn from_config_as(
        class_name: &str,
        config: &Map<String, Value>,
        overrides: &Map<String, Value>,
    ) -> Result<Self, SchedulerError> {
        let class = Self::registered(class_name)
            .ok_or_else(|| SchedulerError::UnknownClass(class_name.to_string()))?;
        (class.build)(config, overrides)
    }

    /// Builds the scheduler a `scheduler_config.json` names in `_class_name`.
    pub fn from_config(config: &Map<String, Value>) -> Result<Self, SchedulerError> {
        let class = match config.get("_class_name") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(cfg::SchedulerConfigError::BadClassName(other.clone()).into());
            }
            None => {
                return Err(SchedulerError::InvalidArgument(
                    "the scheduler config has no `_class_name`; name the class explicitly".into(),
                ));
            }
        };
        Self::from_config_as(&class, config, &Map::new())
    }

    /// `SchedulerMixin.from_pretrained(folder)`: reads `folder/scheduler_config.json` (errors
    /// name the file and key) and builds the class it names.
    pub fn from_pretrained(folder: &std::path::Path) -> Result<Self, SchedulerError> {
        let path = folder.join(CONFIG_NAME);
        let config = diff_format::config::read_json_object(&path)?;
        Self::from_config(&config)
    }

    /// `save_pretrained(folder)`: writes `folder/scheduler_config.json` as diffusers'
    /// `save_config` does (sorted keys, two-space indent, `_class_name` and
    /// `_diffusers_version` stamped, `_use_default_values` dropped, foreign keys kept),
    /// atomically.
    pub fn save_pretrained(&self, folder: &std::path::Path) -> Result<(), SchedulerError> {
        let file = diff_format::ConfigFile::new(self.config_json()?, self.class_name());
        file.save(folder.join(CONFIG_NAME))?;
        Ok(())
    }

    /// The diffusers class name.
    pub fn class_name(&self) -> &'static str {
        dispatch!(self, s => s.class_name())
    }

    /// diffusers' `compatibles`: the classes that can be built from this one's config.
    pub fn compatibles(&self) -> &'static [&'static str] {
        dispatch!(self, s => s.compatibles())
    }

    /// The config as diffusers would save it (`_class_name` set, foreign keys kept).
    pub fn config_json(&self) -> Result<Map<String, Value>, SchedulerError> {
        dispatch!(self, s => s.config_json())
    }

    /// `set_timesteps(num_inference_steps)`.
    ///
    /// A schedule the loop could not run to its end is refused here, naming the class and the
    /// settings, where diffusers fails later with an internal index error (see
    /// [`check_schedule`](Self::check_schedule)).
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        dispatch!(self, s => s.set_timesteps(num_inference_steps))?;
        self.check_schedule()
    }

    /// `set_timesteps` with custom timesteps / sigmas / `mu`; checked as
    /// [`set_timesteps`](Self::set_timesteps) is.
    pub fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        dispatch!(self, s => s.set_timesteps_with(request))?;
        self.check_schedule()
    }

    /// Refuses a schedule the denoising loop cannot run to its end, as a
    /// [`SchedulerError::InvalidConfig`] naming the class and the settings that made it:
    /// - its first timestep repeats (more steps than `num_train_timesteps`, a `leading` spacing
    ///   with a step ratio of 0, Karras sigmas rounding to the same timestep): diffusers'
    ///   `_init_step_index` starts at the second occurrence, so the last step would read past the
    ///   end of the schedule (an `IndexError` in diffusers);
    /// - a timestep of an `alphas_cumprod` scheduler (DDIM, DDPM, PNDM, LCM, TCD) lies past the
    ///   last trained timestep (a large `steps_offset`), which diffusers indexes out of range.
    pub fn check_schedule(&self) -> Result<(), SchedulerError> {
        let ts = self.timesteps();
        let class = self.class_name();
        let config = self.config_json().unwrap_or_default();
        let setting = |key: &str| config.get(key).map(|v| format!("`{key}` {v}"));
        let settings = |keys: &[&str]| -> String {
            keys.iter()
                .filter_map(|k| setting(k))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(first) = ts.first()
            && ts.iter().skip(1).any(|t| t == first)
        {
            return Err(SchedulerError::InvalidConfig {
                class,
                message: format!(
                    "the schedule of {} timesteps repeats its first timestep {first} ({}), so the \
                     steps would run past its end; use fewer inference steps than \
                     `num_train_timesteps`, or another `timestep_spacing` / sigma schedule",
                    ts.len(),
                    settings(&[
                        "num_train_timesteps",
                        "timestep_spacing",
                        "steps_offset",
                        "use_karras_sigmas",
                        "use_exponential_sigmas",
                        "use_beta_sigmas",
                    ]),
                ),
            });
        }
        let trained = self.alphas_cumprod().len();
        if self.sigmas().is_none()
            && trained > 0
            && let Some(t) = ts.iter().find(|t| **t >= trained as f64)
        {
            return Err(SchedulerError::InvalidConfig {
                class,
                message: format!(
                    "timestep {t} of the schedule lies past the last trained timestep {} ({})",
                    trained - 1,
                    settings(&["num_train_timesteps", "steps_offset", "timestep_spacing"]),
                ),
            });
        }
        Ok(())
    }

    /// The timesteps of the current schedule, in loop order (integers for the integer
    /// schedulers, float32 values otherwise).
    pub fn timesteps(&self) -> &[f64] {
        dispatch!(self, s => s.timesteps())
    }

    /// The sigmas (σ-type schedulers), or `None` where diffusers has none.
    pub fn sigmas(&self) -> Option<&[f32]> {
        dispatch!(self, s => s.sigmas())
    }

    /// `alphas_cumprod` (float32, as torch builds it; empty where the class has none), read
    /// by pipelines that index it by timestep (self-attention guidance's `pred_x0`).
    pub fn alphas_cumprod(&self) -> &[f32] {
        dispatch!(self, s => &s.state().alphas_cumprod)
    }

    /// `init_noise_sigma`.
    pub fn init_noise_sigma(&self) -> f32 {
        dispatch!(self, s => s.init_noise_sigma())
    }

    /// `order` (model calls per step of the underlying solver).
    pub fn order(&self) -> usize {
        dispatch!(self, s => s.order())
    }

    /// `set_begin_index`: the loop starts at this index of `timesteps()`.
    pub fn set_begin_index(&mut self, begin_index: usize) {
        dispatch!(self, s => s.set_begin_index(begin_index))
    }

    /// `step_index`: the index of the next step, once the loop has started.
    pub fn step_index(&self) -> Option<usize> {
        dispatch!(self, s => s.step_index())
    }

    /// The current `step_index`, if the loop has started (the same as
    /// [`step_index`](Self::step_index)).
    pub fn current_step_index(&self) -> Option<usize> {
        self.step_index()
    }

    /// `begin_index`, if a pipeline set one.
    pub fn begin_index(&self) -> Option<usize> {
        dispatch!(self, s => s.begin_index())
    }

    /// `scale_model_input`.
    pub fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        dispatch!(self, s => s.scale_model_input(sample, timestep))
    }

    /// `step`.
    pub fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        dispatch!(self, s => s.step(model_output, timestep, sample, options, generator))
    }

    /// `add_noise` (img2img): noise `original` to the given timesteps (one per batch
    /// item, or one for all).
    pub fn add_noise<const D: usize>(
        &self,
        original: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[f64],
    ) -> Result<Tensor<D>, SchedulerError> {
        dispatch!(self, s => s.add_noise(original, noise, timesteps))
    }
}
