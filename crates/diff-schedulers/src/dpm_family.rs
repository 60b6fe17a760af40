//! Bookkeeping shared by the DPM-family solvers (`DPMSolverMultistepScheduler`,
//! `DPMSolverSinglestepScheduler`, `DEISMultistepScheduler`, `UniPCMultistepScheduler`).
//!
//! diffusers repeats these pieces in each class ("Copied from ..."): the VP / flow
//! α_t, σ_t of a sigma, λ = log α − log σ, `convert_model_output` (the model output turned into
//! a data prediction x0 or a noise prediction ε, with optional thresholding), the history of
//! converted model outputs, and `add_noise`. Each solver keeps its own file for its update
//! formulas; the shared parts live here once, with diffusers' operation order.

use crate::SchedulerError;
use crate::float_kernels::torch_log_f32;
use crate::prediction::{Prediction, threshold_sample};
use burn::tensor::Tensor;

/// α_t and σ_t of a sigma: VP form (α = 1/√(σ²+1), σ_t = σ·α) or, with `use_flow_sigmas`,
/// flow form (1 − σ, σ). `_sigma_to_alpha_sigma_t` in diffusers.
pub(crate) fn alpha_sigma(sigma: f32, flow: bool) -> (f32, f32) {
    if flow {
        (1.0 - sigma, sigma)
    } else {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        (alpha, sigma * alpha)
    }
}

/// λ = log α − log σ in float32 (`torch.log` of 0-d tensors).
pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
    torch_log_f32(alpha) - torch_log_f32(sigma)
}

/// The training λ table, `torch.log(alpha_t) - torch.log(sigma_t)` with α_t = √ᾱ and
/// σ_t = √(1 − ᾱ) (float32 tensors), which `lambda_min_clipped` searches.
pub(crate) fn lambda_table(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|a| torch_log_f32(a.sqrt()) - torch_log_f32((1.0 - a).sqrt()))
        .collect()
}

/// Thresholding settings for `convert_model_output` (`thresholding=True`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholding {
    /// `dynamic_thresholding_ratio`.
    pub ratio: f64,
    /// `sample_max_value`.
    pub max: f64,
}

impl Thresholding {
    /// The settings when `thresholding` is on, `None` otherwise.
    pub(crate) fn when(thresholding: bool, ratio: f64, max: f64) -> Option<Self> {
        thresholding.then_some(Self { ratio, max })
    }
}

/// The model output without the learned-variance channels: with `variance_type` set and an ε
/// prediction, diffusers' `convert_model_output` keeps `model_output[:, :3]`.
pub(crate) fn without_learned_variance<const D: usize>(
    model_output: Tensor<D>,
    variance_type: bool,
    prediction: Prediction,
) -> Tensor<D> {
    if variance_type && prediction == Prediction::Epsilon {
        model_output.narrow(1, 0, 3)
    } else {
        model_output
    }
}

/// `convert_model_output` of the DPM family: with `data_prediction` the x0 prediction (the
/// "++" algorithms, DEIS before its final conversion, UniPC `predict_x0`), thresholded when
/// asked; otherwise the ε prediction, where `thresholding` (DPM-Solver) round-trips through a
/// thresholded x0. `sigma` is the current sigma, whose α_t, σ_t follow `use_flow_sigmas`.
pub(crate) fn convert_model_output<const D: usize>(
    model_output: Tensor<D>,
    sample: Tensor<D>,
    sigma: f32,
    use_flow_sigmas: bool,
    prediction: Prediction,
    data_prediction: bool,
    thresholding: Option<Thresholding>,
) -> Result<Tensor<D>, SchedulerError> {
    convert_model_output_in(
        model_output,
        sample,
        sigma,
        use_flow_sigmas,
        prediction,
        data_prediction,
        thresholding,
        crate::NoiseDtype::Float32,
    )
}

/// [`convert_model_output`] on tensors of `dtype` (float32 tensors holding its values): diffusers
/// converts before it upcasts the sample, so with float16 / bfloat16 latents each op is rounded
/// to that dtype (the identity for float32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn convert_model_output_in<const D: usize>(
    model_output: Tensor<D>,
    sample: Tensor<D>,
    sigma: f32,
    use_flow_sigmas: bool,
    prediction: Prediction,
    data_prediction: bool,
    thresholding: Option<Thresholding>,
    dtype: crate::NoiseDtype,
) -> Result<Tensor<D>, SchedulerError> {
    let r = |t: Tensor<D>| crate::precision::round_tensor(t, dtype);
    // `sigma_t * model_output` and the like: 0-d float32 factors on the left (see `precision`).
    let ml = |c: f32, t: Tensor<D>| crate::precision::mul_left(c, t, dtype);
    let (alpha_t, sigma_t) = alpha_sigma(sigma, use_flow_sigmas);
    if data_prediction {
        let x0 = match prediction {
            Prediction::Epsilon => r(r(sample - ml(sigma_t, model_output)).div_scalar(alpha_t)),
            Prediction::Sample => model_output,
            Prediction::VPrediction => r(ml(alpha_t, sample) - ml(sigma_t, model_output)),
            Prediction::Flow => r(sample - ml(sigma, model_output)),
        };
        match thresholding {
            // `_threshold_sample` works in float32 and casts back to the sample's dtype.
            Some(t) => Ok(r(threshold_sample(x0, t.ratio, t.max)?)),
            None => Ok(x0),
        }
    } else {
        let eps = match prediction {
            Prediction::Sample => {
                r(r(sample.clone() - ml(alpha_t, model_output)).div_scalar(sigma_t))
            }
            Prediction::VPrediction => r(ml(alpha_t, model_output) + ml(sigma_t, sample.clone())),
            _ => model_output,
        };
        match thresholding {
            Some(t) => {
                let x0 = r(r(sample.clone() - ml(sigma_t, eps)).div_scalar(alpha_t));
                let x0 = r(threshold_sample(x0, t.ratio, t.max)?);
                Ok(r(r(sample - ml(alpha_t, x0)).div_scalar(sigma_t)))
            }
            None => Ok(eps),
        }
    }
}

/// The last `solver_order` converted model outputs (flattened), oldest first: diffusers'
/// `self.model_outputs` list, shifted left on each step.
#[derive(Debug, Clone)]
pub(crate) struct ModelOutputs {
    class: &'static str,
    slots: Vec<Option<Tensor<1>>>,
}

impl ModelOutputs {
    /// `[None] * solver_order`.
    pub(crate) fn new(class: &'static str, order: usize) -> Self {
        Self {
            class,
            slots: vec![None; order],
        }
    }

    /// Shifts the history left and stores `m` as the newest entry.
    pub(crate) fn push(&mut self, m: Tensor<1>) {
        self.slots.rotate_left(1);
        if let Some(last) = self.slots.last_mut() {
            *last = Some(m);
        }
    }

    /// The entry `back` steps before the newest (`model_outputs[-1 - back]`).
    pub(crate) fn back(&self, back: usize) -> Result<Tensor<1>, SchedulerError> {
        self.slots
            .len()
            .checked_sub(1 + back)
            .and_then(|k| self.slots.get(k).cloned().flatten())
            .ok_or_else(|| {
                SchedulerError::InvalidArgument(format!(
                    "{}: missing model output history",
                    self.class
                ))
            })
    }

    /// Whether the entry `back` steps before the newest is missing.
    pub(crate) fn is_missing(&self, back: usize) -> bool {
        self.slots
            .len()
            .checked_sub(1 + back)
            .and_then(|k| self.slots.get(k))
            .is_none_or(Option::is_none)
    }
}

/// `add_noise` of the DPM family: α_t·x0 + σ_t·ε with one (α_t, σ_t) pair per batch item, or
/// one pair for the whole batch.
pub(crate) fn dpm_add_noise<const D: usize>(
    original: Tensor<D>,
    noise: Tensor<D>,
    pairs: &[(f32, f32)],
) -> Result<Tensor<D>, SchedulerError> {
    let batch = original.dims()[0];
    if pairs.len() == 1 || pairs.iter().all(|p| *p == pairs[0]) {
        let (a, s) = pairs.first().copied().ok_or_else(|| {
            SchedulerError::InvalidArgument("add_noise needs at least one timestep".into())
        })?;
        return Ok(original.mul_scalar(a) + noise.mul_scalar(s));
    }
    if pairs.len() != batch {
        return Err(SchedulerError::Shape(format!(
            "add_noise: {} timesteps for batch {batch}",
            pairs.len()
        )));
    }
    let parts = pairs
        .iter()
        .enumerate()
        .map(|(i, (a, s))| {
            original.clone().narrow(0, i, 1).mul_scalar(*a)
                + noise.clone().narrow(0, i, 1).mul_scalar(*s)
        })
        .collect();
    Ok(Tensor::cat(parts, 0))
}
