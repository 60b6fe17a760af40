//! `diff-schedulers`: diffusers' noise schedulers on burn tensors, and a bit-exact
//! re-implementation of torch's CPU random generator.
//!
//! **Owns:** the schedulers (one file per diffusers class, same names), the timestep and sigma
//! tables they compute on the host (float64 where diffusers uses numpy float64, float32 with
//! torch's exact `linspace` / `cumprod` where it uses torch), their `step` maths on
//! `burn::Tensor` (float32, on whatever device the tensors live; with torch's per-op rounding
//! when the pipeline runs in float16 / bfloat16, see [`precision`]), the [`Scheduler`] enum that
//! pipelines hold (built from a `scheduler_config.json` by `_class_name`, or by class name plus
//! overrides as `Class.from_config(config, **overrides)`), [`TorchGenerator`], the
//! `torch.Generator("cpu")` emulation used for latents and step noise, and
//! [`brownian_tree`], torchsde's Brownian interval as `DPMSolverSDEScheduler` draws from it.
//!
//! **Must not know:** models, pipelines, the hub, file layouts. Configs come from
//! `diff-format` (typed structs and the `from_config` rules); this crate only adds maths.
//!
//! **Layout.** Every class implements [`SchedulerMixin`] (diffusers' `SchedulerMixin` protocol:
//! `set_timesteps_with`, `step`, `scale_model_input`, `add_noise`, `timesteps`, `sigmas`,
//! `init_noise_sigma`, `order`, `set_begin_index`, `step_index`, `config_json`, `class_name`,
//! `compatibles`) and embeds a [`SchedulerState`] (timesteps, sigmas, `alphas_cumprod`, step /
//! begin index); the trait's default methods read that state and follow the class's
//! [`NoiseKind`] (DDPM-style, k-diffusion σ, DPM-Solver α/σ, flow matching), so a class file
//! holds only its own maths. [`Scheduler`], [`SCHEDULER_CLASSES`] and [`SCHEDULER_REGISTRY`]
//! (class name, config keys, compatibles, order, builder) are all made from the one registry in
//! `src/scheduler.rs`. The shared host maths is split by topic: `betas.rs` (betas and
//! `alphas_cumprod`), `sigma_schedules.rs` (karras / exponential / beta sigmas, the k-diffusion
//! schedule), `timestep_spacing.rs`, `interpolation.rs` (`np.interp`, `_sigma_to_t`,
//! `index_for_timestep`), `prediction.rs` (x0 conversions, thresholding), `array_math.rs`
//! (numpy / torch array ops), `dpm_family.rs` (the DPM-Solver family's shared steps) and
//! `float_kernels.rs` (numpy's and torch's `log` / `exp`).
//!
//! **A new scheduler** is one file and one registry line: `src/<diffusers_module_name>.rs` with
//! a struct holding `config` (its diff-format config struct) and `state: SchedulerState`, and an
//! `impl SchedulerMixin` giving `type Config`, `state_accessors!()`, `new`,
//! `set_timesteps_with` and `step` (plus `ORDER` or an override where the class differs from
//! its [`NoiseKind`] defaults); then `Variant => module::Type;` in `registry!` in
//! `src/scheduler.rs` (and `pub mod module;` here). Its config struct goes in
//! `diff-format/src/configs/scheduler.rs`; its parity case in
//! `tests/fixtures/10-schedulers/generate.py`.
//!
//! See `README.md` for the list of classes, the numerics and the measured parity with
//! diffusers 0.42.1 (`tests/parity.rs`, `tests/rng.rs` against `tests/fixtures/10-schedulers`;
//! `tests/dpmsolver_sde.rs` against `tests/fixtures/12-dpmsolver-sde`).
//!
//! Dependencies: `diff-format` (the scheduler config structs and `from_config` rules), `burn`
//! (tensors), `half` (rounding noise to float16 / bfloat16 exactly as torch does),
//! `serde_json` (config maps and overrides), `thiserror` (the error enum), `tracing` (a debug line
//! when step noise has no seeded generator). Dev-only: `sha2` (hashing a 4 MB torch draw instead of storing it).
#![deny(missing_docs)]

mod array_math;
mod betas;
pub mod brownian_tree;
pub mod ddim;
pub mod ddpm;
pub mod deis_multistep;
mod dpm_family;
pub mod dpmsolver_multistep;
pub mod dpmsolver_sde;
pub mod dpmsolver_singlestep;
pub mod edm_euler;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
mod float_kernels;
pub mod flow_match_euler_discrete;
pub mod heun_discrete;
mod interpolation;
pub mod k_dpm_2_ancestral_discrete;
pub mod k_dpm_2_discrete;
pub mod lcm;
pub mod lms_discrete;
mod mixin;
pub mod pndm;
pub mod precision;
mod prediction;
pub mod random;
pub mod replay;
mod scheduler;
mod sigma_schedules;
pub mod tcd;
mod timestep_spacing;
pub mod unipc_multistep;

pub use mixin::{NoiseKind, SchedulerMixin, SchedulerState, StepIndex};
pub use prediction::Prediction;
pub use random::{NoiseDtype, TorchGenerator, randn_tensor, to_tensor};
pub use replay::{ReplayOutput, replay_trace};
pub use scheduler::{
    CONFIG_NAME, SCHEDULER_CLASSES, SCHEDULER_REGISTRY, Scheduler, SchedulerClass,
};
pub use timestep_spacing::Spacing;

use burn::tensor::Tensor;

/// Errors of scheduler construction and stepping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// A config option value that diffusers rejects or that this port does not support yet.
    #[error("{class}: unsupported `{key}` value `{value}`")]
    Unsupported {
        /// The scheduler class.
        class: &'static str,
        /// The config key.
        key: &'static str,
        /// The value found.
        value: String,
    },
    /// A config that is inconsistent (diffusers raises a `ValueError`).
    #[error("{class}: invalid config: {message}")]
    InvalidConfig {
        /// The scheduler class.
        class: &'static str,
        /// What is wrong, naming the keys.
        message: String,
    },
    /// The config could not be read into the class's struct.
    #[error(transparent)]
    Config(#[from] diff_format::configs::scheduler::SchedulerConfigError),
    /// Reading or writing `scheduler_config.json` failed (the message names the file).
    #[error(transparent)]
    Format(#[from] diff_format::FormatError),
    /// `_class_name` (or `--class`) names a scheduler this crate does not implement.
    #[error("unknown scheduler class `{0}`; known: {known}", known = SCHEDULER_CLASSES.join(", "))]
    UnknownClass(String),
    /// A bad argument to `set_timesteps` / `step` / `add_noise`.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `step` or `scale_model_input` got a timestep that is not in the schedule.
    #[error(
        "timestep {0} is not in the scheduler's timesteps (call set_timesteps first and pass one of its timesteps)"
    )]
    UnknownTimestep(f64),
    /// `step` was called more times than the schedule has entries.
    #[error("step index {index} is past the end of the schedule ({len} entries)")]
    StepOutOfRange {
        /// The index reached.
        index: usize,
        /// The schedule length.
        len: usize,
    },
    /// `step` was called before `set_timesteps`.
    #[error("{0}: call set_timesteps before step")]
    NotInitialised(&'static str),
    /// Tensor shapes that do not fit.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A generator list that does not fit the batch.
    #[error("generator: {0}")]
    Generator(String),
}

/// The result of one `step`.
#[derive(Debug, Clone)]
pub struct SchedulerOutput<const D: usize> {
    /// The sample at the previous (less noisy) timestep.
    pub prev_sample: Tensor<D>,
    /// The predicted denoised sample x0, where the scheduler computes one.
    pub pred_original_sample: Option<Tensor<D>>,
}

/// The optional keyword arguments of the schedulers' `step`, with diffusers' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOptions {
    /// DDIM / TCD `eta` (None: the scheduler's default, 0.0 for DDIM, 0.3 for TCD).
    pub eta: Option<f32>,
    /// DDIM `use_clipped_model_output`.
    pub use_clipped_model_output: bool,
    /// Euler / EDM Euler churn.
    pub s_churn: f32,
    /// Churn applies for σ ≥ s_tmin.
    pub s_tmin: f32,
    /// Churn applies for σ ≤ s_tmax.
    pub s_tmax: f32,
    /// Noise scale of the churn.
    pub s_noise: f32,
    /// The pipeline's model dtype (`model_output.dtype`): the step's noise is drawn in it, as
    /// diffusers' `randn_tensor(..., dtype=model_output.dtype)` does (torch's float16 / bfloat16
    /// normals are their own draws), and DDIM, Euler, Euler ancestral, DPM-Solver multistep and
    /// PNDM round their arithmetic to it where torch does (see [`precision`]); the model output
    /// and sample must then hold values of that dtype. Default float32 (no rounding).
    pub noise_dtype: NoiseDtype,
}

impl Default for StepOptions {
    fn default() -> Self {
        Self {
            eta: None,
            use_clipped_model_output: false,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f32::INFINITY,
            s_noise: 1.0,
            noise_dtype: NoiseDtype::Float32,
        }
    }
}

/// The arguments of `set_timesteps`: a step count, or custom timesteps, or custom sigmas
/// (where the class accepts them), plus `mu` for dynamic shifting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimestepsRequest {
    /// `num_inference_steps`.
    pub num_inference_steps: Option<usize>,
    /// Custom `timesteps`, descending.
    pub timesteps: Option<Vec<f64>>,
    /// Custom `sigmas`, descending.
    pub sigmas: Option<Vec<f64>>,
    /// `mu` for flow-matching dynamic shifting.
    pub mu: Option<f64>,
    /// LCM / TCD `original_inference_steps` (None: the config's).
    pub original_inference_steps: Option<usize>,
    /// LCM / TCD `strength` (None: 1.0).
    pub strength: Option<f64>,
}

impl TimestepsRequest {
    /// A request for `n` inference steps.
    pub fn steps(n: usize) -> Self {
        Self {
            num_inference_steps: Some(n),
            ..Self::default()
        }
    }

    fn check_exclusive(&self, class: &'static str) -> Result<(), SchedulerError> {
        let given = [
            self.num_inference_steps.is_some(),
            self.timesteps.is_some(),
            self.sigmas.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(SchedulerError::InvalidArgument(format!(
                "{class}.set_timesteps needs exactly one of num_inference_steps, timesteps, sigmas"
            )));
        }
        Ok(())
    }

    /// The number of steps implied by the request.
    fn resolved_steps(&self, class: &'static str) -> Result<usize, SchedulerError> {
        let n = self
            .num_inference_steps
            .or_else(|| self.timesteps.as_ref().map(Vec::len))
            .or_else(|| self.sigmas.as_ref().map(|s| s.len().saturating_sub(1)))
            .unwrap_or(0);
        if n == 0 {
            return Err(SchedulerError::InvalidArgument(format!(
                "{class}.set_timesteps: the number of inference steps must be at least 1"
            )));
        }
        Ok(n)
    }
}

/// Applies `f(x, z, scalar)` per batch item with that item's scalar (one scalar for all items
/// when they agree), as diffusers broadcasts a per-item coefficient.
pub(crate) fn per_batch<const D: usize>(
    original: Tensor<D>,
    noise: Tensor<D>,
    scalars: &[f32],
    f: impl Fn(Tensor<D>, Tensor<D>, f32) -> Tensor<D>,
) -> Result<Tensor<D>, SchedulerError> {
    let batch = original.dims()[0];
    if original.dims() != noise.dims() {
        return Err(SchedulerError::Shape(format!(
            "add_noise: sample {:?} and noise {:?} differ",
            original.dims(),
            noise.dims()
        )));
    }
    match scalars {
        [] => Err(SchedulerError::InvalidArgument(
            "add_noise needs at least one timestep".into(),
        )),
        [s] => Ok(f(original, noise, *s)),
        many if many.iter().all(|s| *s == many[0]) => Ok(f(original, noise, many[0])),
        many => {
            if many.len() != batch {
                return Err(SchedulerError::Shape(format!(
                    "add_noise: {} timesteps for batch size {batch}",
                    many.len()
                )));
            }
            let parts = many
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    f(
                        original.clone().narrow(0, i, 1),
                        noise.clone().narrow(0, i, 1),
                        *s,
                    )
                })
                .collect();
            Ok(Tensor::cat(parts, 0))
        }
    }
}

/// The img2img start (`get_timesteps` of the SD img2img pipelines): with `strength` in
/// [0, 1], returns `t_start * order`, the index the loop begins at. Pass it to
/// [`Scheduler::set_begin_index`] and run the loop over `timesteps()[begin..]`.
pub fn img2img_begin_index(num_inference_steps: usize, strength: f64, order: usize) -> usize {
    let init = ((num_inference_steps as f64 * strength) as usize).min(num_inference_steps);
    let t_start = num_inference_steps.saturating_sub(init);
    t_start * order
}

/// The typed error for an option value this port does not support (or diffusers rejects).
pub(crate) fn unsupported(class: &'static str, key: &'static str, value: &str) -> SchedulerError {
    SchedulerError::Unsupported {
        class,
        key,
        value: value.to_string(),
    }
}
