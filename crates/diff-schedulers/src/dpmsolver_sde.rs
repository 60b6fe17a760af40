//! `DPMSolverSDEScheduler`: k-diffusion's DPM-Solver++ (2S) SDE sampler (two model calls per
//! interval: one at the log-σ midpoint, one at the start), with its noise from a Brownian
//! tree ([`crate::brownian_tree`]) so that the path does not depend on the step count's
//! discretisation, exactly as diffusers draws it from `torchsde`.
//!
//! The noise seed: the config's `noise_sampler_seed`, or, when that is `None`, a seed drawn at
//! the first `step` after each `set_timesteps` with `torch.randint(0, 2**63 - 1, [])` from
//! torch's *global* generator (diffusers never uses the pipeline's generator here). torch 2.15
//! seeds that generator non-deterministically in every process (`torch.initial_seed()` differs
//! run to run), so without `noise_sampler_seed` diffusers' noise is not reproducible unless the
//! program called `torch.manual_seed(s)`. Both are emulated: by default the global generator
//! is seeded from the clock (the drawn seed is logged at `info` level so that a run can be
//! repeated with `noise_sampler_seed`), and
//! [`DPMSolverSDEScheduler::set_global_generator`]`(TorchGenerator::new(s))` is
//! `torch.manual_seed(s)`.

use crate::betas::{alphas_cumprod_of, beta_config};
use crate::brownian_tree::BrownianTreeNoiseSampler;
use crate::float_kernels::{torch_exp_f32, torch_log_f32};
use crate::interpolation::sigma_to_t;
use crate::prediction::Prediction;
use crate::sigma_schedules::{check_sigma_flags, k_sigmas};
use crate::timestep_spacing::{Spacing, spacing_timesteps};
use crate::{
    NoiseDtype, NoiseKind, SchedulerError, SchedulerMixin, SchedulerOutput, SchedulerState,
    StepIndex, StepOptions, TimestepsRequest, TorchGenerator,
};
use burn::tensor::{Tensor, TensorData};
use diff_format::configs::scheduler::DPMSolverSDESchedulerConfig;

const CLASS: &str = "DPMSolverSDEScheduler";

/// diffusers' `DPMSolverSDEScheduler`.
#[derive(Debug, Clone)]
pub struct DPMSolverSDEScheduler {
    config: DPMSolverSDESchedulerConfig,
    prediction: Prediction,
    spacing: Spacing,
    state: SchedulerState,
    /// First-stage state: the sample the interval started from and the midpoint σ
    /// (diffusers' `sample`, `mid_point_sigma`).
    first_stage: Option<(Tensor<1>, f32)>,
    noise_sampler: Option<BrownianTreeNoiseSampler>,
    /// The (σ, σ_next) of every noise draw since `set_timesteps`.
    noise_queries: Vec<(f32, f32)>,
    /// torch's global generator, drawn from when `noise_sampler_seed` is `None` (seeded from
    /// the clock on first use unless set).
    global_generator: Option<TorchGenerator>,
}

/// σ(t) = exp(−t) on a float32 torch scalar.
fn sigma_fn(t: f32) -> f32 {
    torch_exp_f32(-t)
}

/// t(σ) = −log σ on a float32 torch scalar.
fn t_fn(sigma: f32) -> f32 {
    -torch_log_f32(sigma)
}

/// `expm1` of a float32 torch scalar, correctly rounded (MKL's `vmsExpm1` agrees except at
/// near-ties, like `exp`; see `float_kernels`).
fn expm1_f32(x: f32) -> f32 {
    f64::from(x).exp_m1() as f32
}

impl SchedulerMixin for DPMSolverSDEScheduler {
    const ORDER: usize = 2;

    type Config = DPMSolverSDESchedulerConfig;

    crate::mixin::state_accessors!();

    /// Builds the scheduler (diffusers' `__init__`), validating every option.
    fn new(config: DPMSolverSDESchedulerConfig) -> Result<Self, SchedulerError> {
        // diffusers accepts `sample` at construction and raises NotImplementedError in `step`.
        let prediction = Prediction::parse(
            CLASS,
            &config.prediction_type,
            &[
                Prediction::Epsilon,
                Prediction::VPrediction,
                Prediction::Sample,
            ],
        )?;
        let spacing = Spacing::parse(CLASS, &config.timestep_spacing)?;
        check_sigma_flags(
            CLASS,
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        )?;
        let ac = alphas_cumprod_of(CLASS, &beta_config!(config), false, &[])?;
        let mut s = Self {
            config,
            prediction,
            spacing,
            first_stage: None,
            noise_sampler: None,
            noise_queries: Vec::new(),
            global_generator: None,
            state: SchedulerState::new(NoiseKind::Sigma(spacing), Vec::new(), Vec::new(), ac),
        };
        // diffusers' __init__ calls set_timesteps(num_train_timesteps).
        let n = s.config.num_train_timesteps;
        s.set_timesteps(n)?;
        Ok(s)
    }

    /// `set_timesteps(num_inference_steps)` (diffusers takes no custom timesteps or sigmas
    /// here).
    fn set_timesteps_with(&mut self, request: &TimestepsRequest) -> Result<(), SchedulerError> {
        if request.sigmas.is_some() || request.timesteps.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{CLASS} takes no custom timesteps or sigmas"
            )));
        }
        request.check_exclusive(CLASS)?;
        let n = request.resolved_steps(CLASS)?;
        let c = &self.config;
        // numpy float64 throughout, as diffusers' set_timesteps.
        let ts = spacing_timesteps(
            self.spacing,
            c.num_train_timesteps,
            n,
            c.steps_offset,
            false,
        );
        let (ts, sig, log_sigmas) = k_sigmas(
            ts,
            &self.state.alphas_cumprod,
            n,
            c.use_karras_sigmas,
            c.use_exponential_sigmas,
            c.use_beta_sigmas,
            false,
        );
        // `_second_order_timesteps`: the log-σ midpoints, in float64 numpy.
        let t: Vec<f64> = sig.iter().map(|s| -s.ln()).collect();
        let second: Vec<f64> = t
            .windows(2)
            .map(|w| {
                let proposed = w[0] + (w[1] - w[0]) * 0.5;
                sigma_to_t((-proposed).exp(), &log_sigmas)
            })
            .collect();

        let mut s32: Vec<f32> = sig.iter().map(|v| *v as f32).collect();
        s32.push(0.0);
        let sigmas = crate::array_math::interleave_inner(&s32);
        // cat([t[:1], t[1:].repeat_interleave(2)]) with the odd entries replaced by the
        // second-order timesteps.
        let mut timesteps = vec![ts[0]];
        for (i, t) in ts.iter().enumerate().skip(1) {
            timesteps.push(second[i - 1]);
            timesteps.push(*t);
        }
        self.state.timesteps = timesteps;
        self.state.sigmas = sigmas;
        self.first_stage = None;
        self.noise_sampler = None;
        self.noise_queries.clear();
        self.state.index = StepIndex::default();
        Ok(())
    }

    /// `scale_model_input`: x / √(σ² + 1) with σ = `sigmas[step_index]` in the first stage
    /// and the midpoint σ in the second.
    fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        let i = self.state.current_index(timestep)?;
        let sigma = match &self.first_stage {
            None => self.state.sigma_at(i)?,
            Some((_, mid)) => *mid,
        };
        Ok(sample.div_scalar((sigma * sigma + 1.0).sqrt()))
    }

    /// One stage: the first (σ → midpoint) or the second (σ → σ_next from the stored
    /// sample, with the midpoint's model output); the last interval is a plain Euler step.
    fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        options: &StepOptions,
        _generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        if options.noise_dtype != NoiseDtype::Float32 {
            // diffusers would build a float16 / bfloat16 Brownian tree and step in that dtype;
            // neither is emulated, and running float32 instead would silently differ.
            return Err(SchedulerError::Unsupported {
                class: CLASS,
                key: "model dtype",
                value: format!(
                    "{:?} (this scheduler runs in float32 only; run the pipeline in float32)",
                    options.noise_dtype
                ),
            });
        }
        let i = self.state.current_index(timestep)?;
        let dims = sample.dims();
        let size: usize = dims.iter().product();
        self.noise_sampler(size)?;
        let first = self.first_stage.is_none();
        let (sigma, sigma_next) = if first {
            (self.state.sigma_at(i)?, self.state.sigma_at(i + 1)?)
        } else {
            let prev = i
                .checked_sub(1)
                .ok_or(SchedulerError::StepOutOfRange { index: 0, len: 0 })?;
            (self.state.sigma_at(prev)?, self.state.sigma_at(i)?)
        };
        let t = t_fn(sigma);
        let mut t_next = t_fn(sigma_next);
        let t_proposed = t + (t_next - t) * 0.5;
        let sigma_input = if first { sigma } else { sigma_fn(t_proposed) };
        let x0 = match self.prediction {
            Prediction::Epsilon => sample.clone() - model_output.mul_scalar(sigma_input),
            Prediction::VPrediction => {
                let s2 = sigma_input * sigma_input + 1.0;
                model_output.mul_scalar(-sigma_input / s2.sqrt()) + sample.clone().div_scalar(s2)
            }
            _ => {
                return Err(crate::unsupported(
                    CLASS,
                    "prediction_type",
                    &self.config.prediction_type,
                ));
            }
        };
        let prev = if sigma_next == 0.0 {
            let derivative = (sample.clone() - x0.clone()).div_scalar(sigma);
            let dt = sigma_next - sigma;
            sample + derivative.mul_scalar(dt)
        } else {
            let base = if first {
                t_next = t_proposed;
                sample.clone().flatten::<1>(0, D - 1)
            } else {
                self.first_stage
                    .as_ref()
                    .map(|(s, _)| s.clone())
                    .ok_or(SchedulerError::NotInitialised(CLASS))?
            };
            let sigma_from = sigma_fn(t);
            let sigma_to = sigma_fn(t_next);
            let (to2, from2) = (sigma_to * sigma_to, sigma_from * sigma_from);
            let sigma_up = sigma_to.min((to2 * (from2 - to2) / from2).sqrt());
            let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
            let ancestral_t = t_fn(sigma_down);
            let ratio = sigma_fn(ancestral_t) / sigma_from;
            let coeff = expm1_f32(t - ancestral_t);
            let x0f = x0.clone().flatten::<1>(0, D - 1);
            let det = base.clone().mul_scalar(ratio) - x0f.mul_scalar(coeff);
            self.noise_queries.push((sigma_from, sigma_to));
            let noise = self.noise_sampler(size)?.sample(sigma_from, sigma_to)?;
            let noise = Tensor::<1>::from_data(TensorData::new(noise, [size]), &det.device());
            // `noise * s_noise * sigma_up`, left to right in float32.
            let prev = det + noise.mul_scalar(options.s_noise).mul_scalar(sigma_up);
            if first {
                self.first_stage = Some((base, sigma_to));
            } else {
                self.first_stage = None;
            }
            prev.reshape(dims)
        };
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: Some(x0),
        })
    }
}

impl DPMSolverSDEScheduler {
    /// Sets the emulated torch global generator the noise-sampler seed is drawn from when
    /// `noise_sampler_seed` is `None`: `TorchGenerator::new(s)` is `torch.manual_seed(s)` in
    /// the Python process (without it, the generator is seeded from the clock, as torch seeds
    /// its own per process). Each noise sampler (one per `set_timesteps`, made at the first
    /// `step`) draws one `torch.randint(0, 2**63 - 1, [])` from it.
    pub fn set_global_generator(&mut self, generator: TorchGenerator) {
        self.global_generator = Some(generator);
    }

    /// The seed of the current noise sampler, once the first `step` has made it.
    pub fn noise_sampler_seed_in_use(&self) -> Option<u64> {
        self.noise_sampler
            .as_ref()
            .map(BrownianTreeNoiseSampler::seed)
    }

    /// The (σ, σ_next) of every noise draw since `set_timesteps`, in order: the times the
    /// Brownian tree was queried at (before its rounding to 6 decimals). For diagnostics and
    /// parity checks (see the crate README on MKL near-ties).
    pub fn noise_queries(&self) -> &[(f32, f32)] {
        &self.noise_queries
    }

    /// Makes the noise sampler on first use, as diffusers does in `step`.
    fn noise_sampler(
        &mut self,
        size: usize,
    ) -> Result<&mut BrownianTreeNoiseSampler, SchedulerError> {
        if let Some(existing) = &self.noise_sampler
            && existing.size() != size
        {
            return Err(SchedulerError::Shape(format!(
                "{CLASS}: the sample has {size} elements but the noise sampler was made for {}",
                existing.size()
            )));
        }
        if self.noise_sampler.is_none() {
            let positive = self.state.sigmas.iter().copied().filter(|s| *s > 0.0);
            let min = positive.fold(f32::INFINITY, f32::min);
            let max = self
                .state
                .sigmas
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let seed = match self.config.noise_sampler_seed {
                Some(seed) => seed,
                None => {
                    let seeded = self.global_generator.is_some();
                    let generator = self
                        .global_generator
                        .get_or_insert_with(TorchGenerator::from_entropy);
                    // torch.randint(0, 2**63 - 1, []): random64() % range on the CPU.
                    let seed = generator.next_u64() % (i64::MAX as u64);
                    if seeded {
                        tracing::debug!(
                            "{CLASS}: no noise_sampler_seed; drew {seed} from the global generator"
                        );
                    } else {
                        tracing::info!(
                            "{CLASS}: no noise_sampler_seed, so the noise is not reproducible (as in \
                             diffusers); this run drew seed {seed}: set noise_sampler_seed={seed} to repeat it"
                        );
                    }
                    seed
                }
            };
            self.noise_sampler = Some(BrownianTreeNoiseSampler::new(size, min, max, seed)?);
        }
        self.noise_sampler
            .as_mut()
            .ok_or(SchedulerError::NotInitialised(CLASS))
    }
}
