//! [`Scheduler`]: one enum over every scheduler class, what a pipeline holds.

use crate::{SchedulerError, SchedulerOutput, StepOptions, TimestepsRequest, TorchGenerator};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::{self as cfg, SchedulerConfigClass};
use serde_json::{Map, Value};

macro_rules! schedulers {
    ($( $variant:ident => $module:ident :: $ty:ident, $config:ident; )*) => {
        /// Any of the implemented diffusers schedulers.
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub enum Scheduler {
            $(
                #[doc = concat!("`", stringify!($ty), "`.")]
                $variant(crate::$module::$ty),
            )*
        }

        /// The diffusers class names implemented here.
        pub const SCHEDULER_CLASSES: &[&str] = &[ $( <cfg::$config as SchedulerConfigClass>::CLASS_NAME, )* ];

        impl Scheduler {
            /// `Class.from_config(config, **overrides)` for the class named `class_name`,
            /// with diffusers' rules (see `diff_format::configs::scheduler::from_config`).
            pub fn from_config_as(
                class_name: &str,
                config: &Map<String, Value>,
                overrides: &Map<String, Value>,
            ) -> Result<Self, SchedulerError> {
                $(
                    if class_name == <cfg::$config as SchedulerConfigClass>::CLASS_NAME {
                        let c: cfg::$config = cfg::from_config(config, overrides)?;
                        return Ok(Scheduler::$variant(crate::$module::$ty::new(c)?));
                    }
                )*
                Err(SchedulerError::UnknownClass(class_name.to_string()))
            }

            /// The diffusers class name.
            pub fn class_name(&self) -> &'static str {
                match self {
                    $( Scheduler::$variant(_) => <cfg::$config as SchedulerConfigClass>::CLASS_NAME, )*
                }
            }

            /// diffusers' `compatibles`: the classes that can be built from this one's config.
            pub fn compatibles(&self) -> &'static [&'static str] {
                match self {
                    $( Scheduler::$variant(_) => <cfg::$config as SchedulerConfigClass>::COMPATIBLES, )*
                }
            }

            /// The config as diffusers would save it (`_class_name` set, foreign keys kept).
            pub fn config_json(&self) -> Result<Map<String, Value>, SchedulerError> {
                Ok(match self {
                    $( Scheduler::$variant(s) => s.config().to_json_map()?, )*
                })
            }

            /// `set_timesteps`.
            pub fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
                match self {
                    $( Scheduler::$variant(s) => s.set_timesteps(request), )*
                }
            }

            /// The timesteps of the current schedule, in loop order (integers for the
            /// integer schedulers, float32 values otherwise).
            pub fn timesteps(&self) -> &[f64] {
                match self {
                    $( Scheduler::$variant(s) => s.timesteps(), )*
                }
            }

            /// The sigmas (σ-type schedulers), or `None` where diffusers has none.
            pub fn sigmas(&self) -> Option<&[f32]> {
                match self {
                    $( Scheduler::$variant(s) => crate::scheduler::Sigmas::sigmas_opt(s), )*
                }
            }

            /// `init_noise_sigma`.
            pub fn init_noise_sigma(&self) -> f32 {
                match self {
                    $( Scheduler::$variant(s) => s.init_noise_sigma(), )*
                }
            }

            /// `order` (model calls per step of the underlying solver).
            pub fn order(&self) -> usize {
                match self {
                    $( Scheduler::$variant(s) => s.order(), )*
                }
            }

            /// `set_begin_index`: the loop starts at this index of `timesteps()`.
            pub fn set_begin_index(&mut self, begin_index: usize) {
                match self {
                    $( Scheduler::$variant(s) => s.step_index().begin_index = Some(begin_index), )*
                }
            }

            /// The current `step_index`, if the loop has started.
            pub fn current_step_index(&mut self) -> Option<usize> {
                match self {
                    $( Scheduler::$variant(s) => s.step_index().step_index, )*
                }
            }

            /// `scale_model_input`.
            pub fn scale_model_input<const D: usize>(
                &mut self,
                sample: Tensor<D>,
                timestep: f64,
            ) -> Result<Tensor<D>, SchedulerError> {
                match self {
                    $( Scheduler::$variant(s) => s.scale_model_input(sample, timestep), )*
                }
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
                match self {
                    $( Scheduler::$variant(s) => s.step(model_output, timestep, sample, options, generator), )*
                }
            }

            /// `add_noise` (img2img): noise `original` to the given timesteps (one per batch
            /// item, or one for all).
            pub fn add_noise<const D: usize>(
                &self,
                original: Tensor<D>,
                noise: Tensor<D>,
                timesteps: &[f64],
            ) -> Result<Tensor<D>, SchedulerError> {
                match self {
                    $( Scheduler::$variant(s) => s.add_noise(original, noise, timesteps), )*
                }
            }
        }
    };
}

/// diffusers' `SCHEDULER_CONFIG_NAME`.
pub const CONFIG_NAME: &str = "scheduler_config.json";

/// Whether a scheduler exposes sigmas.
pub(crate) trait Sigmas {
    fn sigmas_opt(&self) -> Option<&[f32]>;
}

macro_rules! no_sigmas {
    ($($ty:ty),*) => { $( impl Sigmas for $ty { fn sigmas_opt(&self) -> Option<&[f32]> { None } } )* };
}
macro_rules! has_sigmas {
    ($($ty:ty),*) => { $( impl Sigmas for $ty { fn sigmas_opt(&self) -> Option<&[f32]> { Some(self.sigmas()) } } )* };
}

no_sigmas!(
    crate::ddim::DDIMScheduler,
    crate::ddpm::DDPMScheduler,
    crate::pndm::PNDMScheduler,
    crate::lcm::LCMScheduler,
    crate::tcd::TCDScheduler
);
has_sigmas!(
    crate::euler_discrete::EulerDiscreteScheduler,
    crate::euler_ancestral_discrete::EulerAncestralDiscreteScheduler,
    crate::dpmsolver_multistep::DPMSolverMultistepScheduler,
    crate::flow_match_euler_discrete::FlowMatchEulerDiscreteScheduler,
    crate::heun_discrete::HeunDiscreteScheduler,
    crate::k_dpm_2_discrete::KDPM2DiscreteScheduler,
    crate::k_dpm_2_ancestral_discrete::KDPM2AncestralDiscreteScheduler,
    crate::lms_discrete::LMSDiscreteScheduler,
    crate::edm_euler::EDMEulerScheduler,
    crate::unipc_multistep::UniPCMultistepScheduler,
    crate::deis_multistep::DEISMultistepScheduler,
    crate::dpmsolver_singlestep::DPMSolverSinglestepScheduler,
    crate::dpmsolver_sde::DPMSolverSDEScheduler
);

schedulers! {
    Ddim => ddim::DDIMScheduler, DDIMSchedulerConfig;
    Ddpm => ddpm::DDPMScheduler, DDPMSchedulerConfig;
    Pndm => pndm::PNDMScheduler, PNDMSchedulerConfig;
    EulerDiscrete => euler_discrete::EulerDiscreteScheduler, EulerDiscreteSchedulerConfig;
    EulerAncestralDiscrete => euler_ancestral_discrete::EulerAncestralDiscreteScheduler, EulerAncestralDiscreteSchedulerConfig;
    DpmSolverMultistep => dpmsolver_multistep::DPMSolverMultistepScheduler, DPMSolverMultistepSchedulerConfig;
    HeunDiscrete => heun_discrete::HeunDiscreteScheduler, HeunDiscreteSchedulerConfig;
    KDpm2Discrete => k_dpm_2_discrete::KDPM2DiscreteScheduler, KDPM2DiscreteSchedulerConfig;
    KDpm2AncestralDiscrete => k_dpm_2_ancestral_discrete::KDPM2AncestralDiscreteScheduler, KDPM2AncestralDiscreteSchedulerConfig;
    EdmEuler => edm_euler::EDMEulerScheduler, EDMEulerSchedulerConfig;
    DpmSolverSinglestep => dpmsolver_singlestep::DPMSolverSinglestepScheduler, DPMSolverSinglestepSchedulerConfig;
    DpmSolverSde => dpmsolver_sde::DPMSolverSDEScheduler, DPMSolverSDESchedulerConfig;
    Lcm => lcm::LCMScheduler, LCMSchedulerConfig;
    LmsDiscrete => lms_discrete::LMSDiscreteScheduler, LMSDiscreteSchedulerConfig;
    Tcd => tcd::TCDScheduler, TCDSchedulerConfig;
    DeisMultistep => deis_multistep::DEISMultistepScheduler, DEISMultistepSchedulerConfig;
    UniPcMultistep => unipc_multistep::UniPCMultistepScheduler, UniPCMultistepSchedulerConfig;
    FlowMatchEulerDiscrete => flow_match_euler_discrete::FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteSchedulerConfig;
}

impl Scheduler {
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

    /// `set_timesteps(num_inference_steps)`.
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        self.set_timesteps_with(&TimestepsRequest::steps(num_inference_steps))
    }
}
