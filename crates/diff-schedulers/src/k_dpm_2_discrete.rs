//! `KDPM2DiscreteScheduler`: DPM-Solver-2 in k-diffusion form (a half step to the geometric
//! midpoint sigma, then the full step with the midpoint derivative). The ancestral variant in
//! `k_dpm_2_ancestral_discrete` shares the machinery here.

use crate::array_math::{interleave_pairs, lerp_half};
use crate::float_kernels::{torch_exp_f32, torch_log_f32};
use crate::interpolation::{SigmaToT, sigma_to_t_f32};
use crate::prediction::{Prediction, k_x0};
use crate::random::noise_like;
use crate::sigma_schedules::{check_sigma_flags, k_schedule};
use crate::timestep_spacing::Spacing;
use crate::{
    NoiseDtype, NoiseKind, SchedulerError, SchedulerOutput, SchedulerState, StepIndex,
    TimestepsRequest, TorchGenerator,
};
use burn::tensor::Tensor;
use diff_format::configs::scheduler::KDPM2DiscreteSchedulerConfig;

/// The tables and state shared by KDPM2 and KDPM2 ancestral.
#[derive(Debug, Clone)]
pub(crate) struct KDpm2Core {
    pub(crate) class: &'static str,
    pub(crate) ancestral: bool,
    pub(crate) prediction: Prediction,
    pub(crate) spacing: Spacing,
    pub(crate) state: SchedulerState,
    pub(crate) sigmas_interpol: Vec<f32>,
    pub(crate) sigmas_up: Vec<f32>,
    pub(crate) sigmas_down: Vec<f32>,
    /// The sample stored by the first stage (diffusers' `self.sample`), flattened.
    pub(crate) stored: Option<Tensor<1>>,
}

impl KDpm2Core {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        class: &'static str,
        ancestral: bool,
        prediction_type: &str,
        spacing: &str,
        karras: bool,
        exponential: bool,
        beta: bool,
        alphas: Result<Vec<f32>, SchedulerError>,
    ) -> Result<Self, SchedulerError> {
        let prediction = Prediction::parse(
            class,
            prediction_type,
            &[
                Prediction::Epsilon,
                Prediction::Sample,
                Prediction::VPrediction,
            ],
        )?;
        if prediction == Prediction::Sample {
            // diffusers raises NotImplementedError for `sample` in both KDPM2 schedulers.
            return Err(crate::unsupported(
                class,
                "prediction_type",
                prediction_type,
            ));
        }
        let spacing = Spacing::parse(class, spacing)?;
        check_sigma_flags(class, karras, exponential, beta)?;
        Ok(Self {
            class,
            ancestral,
            prediction,
            spacing,
            sigmas_interpol: Vec::new(),
            sigmas_up: Vec::new(),
            sigmas_down: Vec::new(),
            stored: None,
            state: SchedulerState::new(NoiseKind::Sigma(spacing), Vec::new(), Vec::new(), alphas?),
        })
    }

    pub(crate) fn set_timesteps(
        &mut self,
        request: &TimestepsRequest,
        steps_offset: i64,
        karras: bool,
        exponential: bool,
        beta: bool,
    ) -> Result<(), SchedulerError> {
        if request.timesteps.is_some() || request.sigmas.is_some() {
            return Err(SchedulerError::InvalidArgument(format!(
                "{}.set_timesteps takes only num_inference_steps",
                self.class
            )));
        }
        let n = request.resolved_steps(self.class)?;
        let (ts, sig, log_sigmas) = k_schedule(
            self.spacing,
            &self.state.alphas_cumprod,
            n,
            steps_offset,
            karras,
            exponential,
            beta,
            true,
        );
        let mut s: Vec<f32> = sig.into_iter().map(|v| v as f32).collect();
        s.push(0.0);
        let len = s.len();
        let (interpol, up, down) = if self.ancestral {
            let next: Vec<f32> = (0..len)
                .map(|i| if i + 1 < len { s[i + 1] } else { 0.0 })
                .collect();
            let up: Vec<f32> = s
                .iter()
                .zip(&next)
                .map(|(a, b)| (b * b * (a * a - b * b) / (a * a)).sqrt())
                .collect();
            let mut down: Vec<f32> = next
                .iter()
                .zip(&up)
                .map(|(b, u)| (b * b - u * u).sqrt())
                .collect();
            down[len - 1] = 0.0;
            let mut interpol: Vec<f32> = s
                .iter()
                .zip(&down)
                .map(|(a, d)| torch_exp_f32(lerp_half(torch_log_f32(*a), torch_log_f32(*d))))
                .collect();
            for v in interpol.iter_mut().skip(len.saturating_sub(2)) {
                *v = 0.0;
            }
            (interpol, up, down)
        } else {
            let interpol: Vec<f32> = (0..len)
                .map(|i| {
                    let rolled = s[(i + len - 1) % len];
                    torch_exp_f32(lerp_half(torch_log_f32(s[i]), torch_log_f32(rolled)))
                })
                .collect();
            (interpol, Vec::new(), Vec::new())
        };
        // Interpolated timesteps: float32 `_sigma_to_t`, cast to the timesteps' dtype.
        let ti: Vec<f64> = interpol
            .iter()
            .map(|v| sigma_to_t_f32(*v, &log_sigmas, SigmaToT::Torch))
            .collect();
        // numpy's spacings give float32 timesteps, but karras / exponential / beta sigmas
        // replace them with the float64 array `_sigma_to_t` returns, and `torch.from_numpy`
        // keeps that dtype; the interpolated timesteps (float32 torch results) are cast to it.
        let float64 = karras || exponential || beta;
        let cast = |t: f64| if float64 { t } else { f64::from(t as f32) };
        let t_main: Vec<f64> = ts.iter().map(|t| cast(*t)).collect();
        let mut timesteps = vec![t_main[0]];
        let picked: Vec<f64> = if self.ancestral {
            ti[..ti.len().saturating_sub(2)].to_vec()
        } else {
            ti[1..ti.len().saturating_sub(1)].to_vec()
        };
        for (a, b) in picked.iter().zip(&t_main[1..]) {
            timesteps.push(cast(*a));
            timesteps.push(*b);
        }
        self.state.timesteps = timesteps;
        self.state.sigmas = interleave_pairs(&s);
        self.sigmas_interpol = interleave_pairs(&interpol);
        self.sigmas_up = interleave_pairs(&up);
        self.sigmas_down = interleave_pairs(&down);
        self.stored = None;
        self.state.index = StepIndex::default();
        Ok(())
    }

    fn at(table: &[f32], i: Option<usize>) -> Result<f32, SchedulerError> {
        i.and_then(|i| table.get(i).copied())
            .ok_or(SchedulerError::StepOutOfRange {
                index: i.unwrap_or(0),
                len: table.len(),
            })
    }

    pub(crate) fn scale_model_input<const D: usize>(
        &mut self,
        sample: Tensor<D>,
        timestep: f64,
    ) -> Result<Tensor<D>, SchedulerError> {
        let i = self.state.current_index(timestep)?;
        let sigma = if self.stored.is_none() {
            Self::at(&self.state.sigmas, Some(i))?
        } else if self.ancestral {
            Self::at(&self.sigmas_interpol, i.checked_sub(1))?
        } else {
            Self::at(&self.sigmas_interpol, Some(i))?
        };
        Ok(sample.div_scalar((sigma * sigma + 1.0).sqrt()))
    }

    pub(crate) fn step<const D: usize>(
        &mut self,
        model_output: Tensor<D>,
        timestep: f64,
        sample: Tensor<D>,
        noise_dtype: NoiseDtype,
        generator: Option<&mut [TorchGenerator]>,
    ) -> Result<SchedulerOutput<D>, SchedulerError> {
        let i = self.state.current_index(timestep)?;
        let first = self.stored.is_none();
        let prev_i = i.checked_sub(1);
        let (sigma, sigma_interpol, sigma_next, sigma_up, sigma_down) = if self.ancestral {
            if first {
                (
                    Self::at(&self.state.sigmas, Some(i))?,
                    Self::at(&self.sigmas_interpol, Some(i))?,
                    0.0,
                    Self::at(&self.sigmas_up, Some(i))?,
                    // diffusers reads sigmas_down[step_index - 1] (index -1 wraps in Python).
                    Self::at(
                        &self.sigmas_down,
                        Some(prev_i.unwrap_or(self.sigmas_down.len() - 1)),
                    )?,
                )
            } else {
                (
                    Self::at(&self.state.sigmas, prev_i)?,
                    Self::at(&self.sigmas_interpol, prev_i)?,
                    0.0,
                    Self::at(&self.sigmas_up, prev_i)?,
                    Self::at(&self.sigmas_down, prev_i)?,
                )
            }
        } else if first {
            (
                Self::at(&self.state.sigmas, Some(i))?,
                Self::at(&self.sigmas_interpol, Some(i + 1))?,
                Self::at(&self.state.sigmas, Some(i + 1))?,
                0.0,
                0.0,
            )
        } else {
            (
                Self::at(&self.state.sigmas, prev_i)?,
                Self::at(&self.sigmas_interpol, Some(i))?,
                Self::at(&self.state.sigmas, Some(i))?,
                0.0,
                0.0,
            )
        };
        let sigma_hat = sigma;
        let sigma_input = if first { sigma_hat } else { sigma_interpol };
        let dims = sample.dims();
        let x0 = k_x0(
            self.prediction,
            model_output.clone(),
            sample.clone(),
            sigma_input,
        );
        let x = sample.flatten::<1>(0, D - 1);
        let x0f = x0.clone().flatten::<1>(0, D - 1);
        let prev = if first {
            let derivative = (x.clone() - x0f).div_scalar(sigma_hat);
            let dt = sigma_interpol - sigma_hat;
            self.stored = Some(x.clone());
            x + derivative.mul_scalar(dt)
        } else {
            let derivative = (x - x0f).div_scalar(sigma_interpol);
            let dt = if self.ancestral {
                sigma_down - sigma_hat
            } else {
                sigma_next - sigma_hat
            };
            let stored = self
                .stored
                .take()
                .ok_or(SchedulerError::NotInitialised(self.class))?;
            let prev = stored + derivative.mul_scalar(dt);
            if self.ancestral {
                let noise = noise_like(&model_output, generator, noise_dtype)?;
                prev + noise.flatten::<1>(0, D - 1).mul_scalar(sigma_up)
            } else {
                prev
            }
        };
        self.state.index.advance(1);
        Ok(SchedulerOutput {
            prev_sample: prev.reshape(dims),
            pred_original_sample: Some(x0),
        })
    }
}

/// Declares a KDPM2 class (the struct: its config and the shared [`KDpm2Core`], and its
/// `SchedulerMixin` impl); the two classes differ only in their config struct and `ancestral`.
macro_rules! kdpm2_class {
    ($(#[$meta:meta])* $name:ident, $config:ty, ancestral: $ancestral:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $name {
            config: $config,
            core: $crate::k_dpm_2_discrete::KDpm2Core,
        }

        impl $crate::SchedulerMixin for $name {
            const ORDER: usize = 2;

            type Config = $config;

            $crate::mixin::state_accessors!(core.state);

            /// Builds the scheduler (diffusers' `__init__`), validating every option.
            fn new(config: $config) -> Result<Self, $crate::SchedulerError> {
                use diff_format::configs::scheduler::SchedulerConfigClass;
                let class = <$config as SchedulerConfigClass>::CLASS_NAME;
                let alphas = $crate::betas::alphas_cumprod_of(
                    class,
                    &$crate::betas::beta_config!(config),
                    false,
                    &[],
                );
                let mut core = $crate::k_dpm_2_discrete::KDpm2Core::new(
                    class,
                    $ancestral,
                    &config.prediction_type,
                    &config.timestep_spacing,
                    config.use_karras_sigmas,
                    config.use_exponential_sigmas,
                    config.use_beta_sigmas,
                    alphas,
                )?;
                core.set_timesteps(
                    &$crate::TimestepsRequest::steps(config.num_train_timesteps),
                    config.steps_offset,
                    config.use_karras_sigmas,
                    config.use_exponential_sigmas,
                    config.use_beta_sigmas,
                )?;
                Ok(Self { config, core })
            }

            /// `set_timesteps(num_inference_steps)`.
            fn set_timesteps_with(
                &mut self,
                request: &$crate::TimestepsRequest,
            ) -> Result<(), $crate::SchedulerError> {
                let c = &self.config;
                self.core.set_timesteps(
                    request,
                    c.steps_offset,
                    c.use_karras_sigmas,
                    c.use_exponential_sigmas,
                    c.use_beta_sigmas,
                )
            }

            /// `scale_model_input`: x / √(σ² + 1) with the stage's σ.
            fn scale_model_input<const D: usize>(
                &mut self,
                sample: burn::tensor::Tensor<D>,
                timestep: f64,
            ) -> Result<burn::tensor::Tensor<D>, $crate::SchedulerError> {
                self.core.scale_model_input(sample, timestep)
            }

            /// One DPM2 stage (the ancestral class's second stage draws
            /// `randn(model_output.shape)`).
            fn step<const D: usize>(
                &mut self,
                model_output: burn::tensor::Tensor<D>,
                timestep: f64,
                sample: burn::tensor::Tensor<D>,
                options: &$crate::StepOptions,
                generator: Option<&mut [$crate::TorchGenerator]>,
            ) -> Result<$crate::SchedulerOutput<D>, $crate::SchedulerError> {
                self.core
                    .step(model_output, timestep, sample, options.noise_dtype, generator)
            }
        }
    };
}
pub(crate) use kdpm2_class;

kdpm2_class!(
    /// diffusers' `KDPM2DiscreteScheduler`.
    KDPM2DiscreteScheduler,
    KDPM2DiscreteSchedulerConfig,
    ancestral: false
);
