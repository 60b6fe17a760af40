//! [`SchedulerMixin`]: the protocol every scheduler class follows (diffusers'
//! `SchedulerMixin` plus the methods each class defines with the same meaning), and
//! [`SchedulerState`], the state they all keep.
//!
//! A class implements only what is its own: `new` (diffusers' `__init__`),
//! `set_timesteps_with` and `step`, plus an override where it differs from the family default
//! (`scale_model_input`, `init_noise_sigma`, `add_noise`) or has a second-order solver
//! (`ORDER`). The accessors (`timesteps`, `sigmas`, `step_index`, `set_begin_index`,
//! `config_json`, `class_name`, `compatibles`, ...) read the embedded [`SchedulerState`] and
//! the config struct, so no class writes them. `state_accessors!`
//! writes the three field accessors (`config`, `state`, `state_mut`) of a class whose fields
//! are named `config` and `state`.

use crate::interpolation::index_for_timestep;
use crate::sigma_schedules::k_init_noise_sigma;
use crate::timestep_spacing::Spacing;
use crate::{SchedulerError, SchedulerOutput, StepOptions, TimestepsRequest, TorchGenerator};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::SchedulerConfigClass;
use serde_json::{Map, Value};

/// The step index bookkeeping every diffusers scheduler shares (`_step_index`,
/// `_begin_index`, `_init_step_index`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepIndex {
    /// The index of the next `step` in the schedule, once known.
    pub step_index: Option<usize>,
    /// The index a pipeline starts at (`set_begin_index`; img2img's strength).
    pub begin_index: Option<usize>,
}

impl StepIndex {
    /// The current index, initialising it from `timestep` (or the begin index) on first use.
    pub fn current(&mut self, schedule: &[f64], timestep: f64) -> Result<usize, SchedulerError> {
        if let Some(i) = self.step_index {
            return Ok(i);
        }
        let i = match self.begin_index {
            Some(b) => b,
            None => index_for_timestep(schedule, timestep)?,
        };
        self.step_index = Some(i);
        Ok(i)
    }

    /// Moves on by `n` entries.
    pub fn advance(&mut self, n: usize) {
        self.step_index = Some(self.step_index.unwrap_or(0) + n);
    }

    /// The schedule indices `add_noise` uses for each batch item's timestep.
    pub fn noise_indices(
        &self,
        schedule: &[f64],
        timesteps: &[f64],
    ) -> Result<Vec<usize>, SchedulerError> {
        match (self.begin_index, self.step_index) {
            (None, _) => timesteps
                .iter()
                .map(|t| index_for_timestep(schedule, *t))
                .collect(),
            (Some(_), Some(i)) => Ok(vec![i; timesteps.len()]),
            (Some(b), None) => Ok(vec![b; timesteps.len()]),
        }
    }
}

/// How a class's sample relates to its noise level, which decides the family defaults of
/// `sigmas`, `init_noise_sigma`, `scale_model_input` and `add_noise`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseKind {
    /// DDPM-style (DDIM, DDPM, PNDM, LCM, TCD): x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε with ᾱ indexed
    /// by the integer timestep; no sigma table, `init_noise_sigma` 1, input not scaled.
    #[default]
    AlphasCumprod,
    /// k-diffusion (Euler, Euler ancestral, Heun, LMS, KDPM2, DPM-Solver SDE, EDM Euler):
    /// x_t = x0 + σ·ε; `init_noise_sigma` is σ_max (√(σ_max² + 1) with `leading` spacing);
    /// `scale_model_input` divides by √(σ² + 1).
    Sigma(Spacing),
    /// The DPM-Solver family (multistep, singlestep, UniPC, DEIS): x_t = α_t·x0 + σ_t·ε with
    /// (α_t, σ_t) from the σ table (α = 1 − σ with flow sigmas); `init_noise_sigma` 1, input
    /// not scaled.
    AlphaSigma {
        /// `use_flow_sigmas`.
        flow: bool,
    },
    /// Flow matching: x_t = (1 − σ)·x0 + σ·ε; `init_noise_sigma` 1, input not scaled.
    FlowMatch,
}

/// The state diffusers keeps on every scheduler: the schedule (`timesteps`, `sigmas`), the
/// training `alphas_cumprod`, `num_inference_steps` and the step / begin index. Each class
/// embeds one (field `state`) and reads and writes it directly.
#[derive(Debug, Clone, Default)]
pub struct SchedulerState {
    /// The inference timesteps in loop order (the training ones before `set_timesteps`).
    pub(crate) timesteps: Vec<f64>,
    /// The sigma table (σ-type classes), one more entry than the timesteps where diffusers
    /// appends the final σ; empty for [`NoiseKind::AlphasCumprod`] classes.
    pub(crate) sigmas: Vec<f32>,
    /// `alphas_cumprod` (float32, as torch builds it); empty where the class has none.
    pub(crate) alphas_cumprod: Vec<f32>,
    /// `num_inference_steps`, once `set_timesteps` ran.
    pub(crate) num_inference_steps: Option<usize>,
    /// `_step_index` / `_begin_index`.
    pub(crate) index: StepIndex,
    /// The family, for the defaults.
    pub(crate) kind: NoiseKind,
}

impl SchedulerState {
    /// A state of the given family with the training tables.
    pub(crate) fn new(
        kind: NoiseKind,
        timesteps: Vec<f64>,
        sigmas: Vec<f32>,
        alphas_cumprod: Vec<f32>,
    ) -> Self {
        Self {
            timesteps,
            sigmas,
            alphas_cumprod,
            num_inference_steps: None,
            index: StepIndex::default(),
            kind,
        }
    }

    /// The family of the class.
    pub fn kind(&self) -> NoiseKind {
        self.kind
    }

    /// `sigmas[i]`, or a typed error when a step runs past the schedule.
    pub(crate) fn sigma_at(&self, i: usize) -> Result<f32, SchedulerError> {
        self.sigmas
            .get(i)
            .copied()
            .ok_or(SchedulerError::StepOutOfRange {
                index: i,
                len: self.sigmas.len(),
            })
    }

    /// The current step index, initialised from `timestep` (or the begin index) on first use.
    pub(crate) fn current_index(&mut self, timestep: f64) -> Result<usize, SchedulerError> {
        self.index.current(&self.timesteps, timestep)
    }

    /// `alphas_cumprod[t]` for an integer timestep; one outside the table is an error.
    pub(crate) fn alpha_cumprod_at(&self, t: i64) -> Result<f32, SchedulerError> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.alphas_cumprod.get(i).copied())
            .ok_or(SchedulerError::UnknownTimestep(t as f64))
    }

    /// `alphas_cumprod[t]`, or `final_alpha_cumprod` for the step past the first training
    /// timestep (t < 0).
    pub(crate) fn alpha_cumprod_or_final(
        &self,
        t: i64,
        final_alpha_cumprod: f32,
    ) -> Result<f32, SchedulerError> {
        if t < 0 {
            Ok(final_alpha_cumprod)
        } else {
            self.alpha_cumprod_at(t)
        }
    }

    /// The DPM-Solver family's `_init_step_index`: as [`current_index`](Self::current_index),
    /// but a timestep not in the schedule falls back to the last index, as diffusers does; an
    /// error before `set_timesteps`.
    pub(crate) fn dpm_step_index(
        &mut self,
        class: &'static str,
        timestep: f64,
    ) -> Result<usize, SchedulerError> {
        if self.num_inference_steps.is_none() {
            return Err(SchedulerError::NotInitialised(class));
        }
        if self.index.step_index.is_none() {
            let i = match self.index.begin_index {
                Some(b) => b,
                None => index_for_timestep(&self.timesteps, timestep)
                    .unwrap_or(self.timesteps.len().saturating_sub(1)),
            };
            self.index.step_index = Some(i);
        }
        Ok(self.index.step_index.unwrap_or(0))
    }

    /// The σ of each `add_noise` timestep, found by the same index rules as `step` (begin
    /// index, or the timestep's position in the schedule).
    pub(crate) fn noise_sigmas(&self, timesteps: &[f64]) -> Result<Vec<f32>, SchedulerError> {
        self.index
            .noise_indices(&self.timesteps, timesteps)?
            .into_iter()
            .map(|i| self.sigma_at(i))
            .collect()
    }

    /// The family's `init_noise_sigma`.
    pub(crate) fn init_noise_sigma(&self) -> f32 {
        match self.kind {
            NoiseKind::Sigma(spacing) => k_init_noise_sigma(&self.sigmas, spacing),
            _ => 1.0,
        }
    }

    /// The family's `scale_model_input`: x / √(σ² + 1) for k-diffusion classes, else x.
    pub(crate) fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        match self.kind {
            NoiseKind::Sigma(_) => {
                let i = self.current_index(timestep)?;
                let sigma = self.sigma_at(i)?;
                Ok(sample.div_scalar((sigma * sigma + 1.0).sqrt()))
            }
            _ => Ok(sample),
        }
    }

    /// The family's `add_noise`.
    pub(crate) fn add_noise<const D: usize>(
        &self,
        original: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[f64],
    ) -> Result<Tensor<D>, SchedulerError> {
        match self.kind {
            NoiseKind::AlphasCumprod => {
                let alphas = timesteps
                    .iter()
                    .map(|t| {
                        self.alpha_cumprod_at(*t as i64)
                            .map_err(|_| SchedulerError::UnknownTimestep(*t))
                    })
                    .collect::<Result<Vec<f32>, _>>()?;
                crate::per_batch(original, noise, &alphas, |x, z, a| {
                    x.mul_scalar(a.sqrt()) + z.mul_scalar((1.0 - a).sqrt())
                })
            }
            NoiseKind::Sigma(_) => {
                let sigmas = self.noise_sigmas(timesteps)?;
                crate::per_batch(original, noise, &sigmas, |x, z, s| x + z.mul_scalar(s))
            }
            NoiseKind::AlphaSigma { flow } => {
                let pairs: Vec<(f32, f32)> = self
                    .noise_sigmas(timesteps)?
                    .into_iter()
                    .map(|s| crate::dpm_family::alpha_sigma(s, flow))
                    .collect();
                crate::dpm_family::dpm_add_noise(original, noise, &pairs)
            }
            NoiseKind::FlowMatch => {
                let sigmas = self.noise_sigmas(timesteps)?;
                crate::per_batch(original, noise, &sigmas, |x, z, s| {
                    z.mul_scalar(s) + x.mul_scalar(1.0 - s)
                })
            }
        }
    }
}

/// The scheduler protocol (diffusers' `SchedulerMixin` and the per-class methods of the same
/// meaning). A class implements `new`, the field accessors (`state_accessors!`),
/// `set_timesteps_with` and `step`; everything else has a default that reads
/// [`SchedulerState`] or follows the class's [`NoiseKind`].
pub trait SchedulerMixin: Sized {
    /// The config struct (diff-format), which names the class, its keys and compatibles.
    type Config: SchedulerConfigClass;

    /// diffusers' class attribute `order` (model calls per step of the underlying solver).
    const ORDER: usize = 1;

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: Self::Config) -> Result<Self, SchedulerError>;

    /// The config, for re-save.
    fn config(&self) -> &Self::Config;

    /// The shared state.
    fn state(&self) -> &SchedulerState;

    /// The shared state, mutable.
    fn state_mut(&mut self) -> &mut SchedulerState;

    /// `set_timesteps(num_inference_steps | timesteps | sigmas, mu, ...)`.
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError>;

    /// `step`: one solver step from `sample` at `timestep` given the model's output.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError>;

    /// `set_timesteps(num_inference_steps)`.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<(), SchedulerError> {
        self.set_timesteps_with(&TimestepsRequest::steps(num_inference_steps))
    }

    /// The timesteps of the current schedule, in loop order (integers for the integer
    /// schedulers, float32 values otherwise).
    fn timesteps(&self) -> &[f64] {
        &self.state().timesteps
    }

    /// The sigmas (σ-type schedulers), or `None` where diffusers has none.
    fn sigmas(&self) -> Option<&[f32]> {
        match self.state().kind {
            NoiseKind::AlphasCumprod => None,
            _ => Some(&self.state().sigmas),
        }
    }

    /// `init_noise_sigma`.
    fn init_noise_sigma(&self) -> f32 {
        self.state().init_noise_sigma()
    }

    /// `order`.
    fn order(&self) -> usize {
        Self::ORDER
    }

    /// `step_index`: the index of the next step, once the loop has started.
    fn step_index(&self) -> Option<usize> {
        self.state().index.step_index
    }

    /// `begin_index`, if a pipeline set one.
    fn begin_index(&self) -> Option<usize> {
        self.state().index.begin_index
    }

    /// `set_begin_index`: the loop starts at this index of `timesteps()`.
    fn set_begin_index(&mut self, begin_index: usize) {
        self.state_mut().index.begin_index = Some(begin_index);
    }

    /// `scale_model_input`.
    fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        self.state_mut().scale_model_input(sample, timestep)
    }

    /// `add_noise` (img2img): noise `original` to the given timesteps (one per batch item, or
    /// one for all).
    fn add_noise<const D: usize>(
        &self,
        original: Tensor<D>,
        noise: Tensor<D>,
        timesteps: &[f64],
    ) -> Result<Tensor<D>, SchedulerError> {
        self.state().add_noise(original, noise, timesteps)
    }

    /// The config as diffusers would save it (`_class_name` set, foreign keys kept).
    fn config_json(&self) -> Result<Map<String, Value>, SchedulerError> {
        Ok(self.config().to_json_map()?)
    }

    /// The diffusers class name.
    fn class_name(&self) -> &'static str {
        Self::Config::CLASS_NAME
    }

    /// diffusers' `compatibles`: the classes that can be built from this one's config.
    fn compatibles(&self) -> &'static [&'static str] {
        Self::Config::COMPATIBLES
    }
}

/// Writes [`SchedulerMixin::config`], [`SchedulerMixin::state`] and
/// [`SchedulerMixin::state_mut`] inside an `impl SchedulerMixin` for a struct whose fields
/// are `config` and `state` (or the state at another path: `state_accessors!(core.state)`).
macro_rules! state_accessors {
    () => {
        $crate::mixin::state_accessors!(state);
    };
    ($($path:ident).+) => {
        fn config(&self) -> &Self::Config {
            &self.config
        }
        fn state(&self) -> &$crate::SchedulerState {
            &self.$($path).+
        }
        fn state_mut(&mut self) -> &mut $crate::SchedulerState {
            &mut self.$($path).+
        }
    };
}
pub(crate) use state_accessors;
