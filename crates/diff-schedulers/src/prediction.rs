//! What the model predicts (`prediction_type`) and the conversions of its output to the
//! denoised sample x0 that several schedulers share, with dynamic thresholding.

use crate::array_math::tensor_values;
use crate::{SchedulerError, unsupported};
use burn::tensor::{Tensor, TensorData};

/// What the model predicts (`prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// `epsilon`: the noise.
    Epsilon,
    /// `sample`: the denoised sample x0.
    Sample,
    /// `v_prediction`: the velocity.
    VPrediction,
    /// `flow_prediction`: the flow (DPM-Solver / UniPC / DEIS with flow sigmas).
    Flow,
}

impl Prediction {
    /// Parses `prediction_type`, allowing only the values `allowed` (diffusers raises for the
    /// others).
    pub(crate) fn parse(
        class: &'static str,
        value: &str,
        allowed: &[Prediction],
    ) -> Result<Self, SchedulerError> {
        let p = match value {
            "epsilon" => Prediction::Epsilon,
            "sample" | "original_sample" => Prediction::Sample,
            "v_prediction" => Prediction::VPrediction,
            "flow_prediction" => Prediction::Flow,
            _ => return Err(unsupported(class, "prediction_type", value)),
        };
        if allowed.contains(&p) {
            Ok(p)
        } else {
            Err(unsupported(class, "prediction_type", value))
        }
    }
}

/// Dynamic thresholding (`_threshold_sample`): per batch item, s = quantile(|x0|, ratio)
/// clamped to [1, max], then x0 = clamp(x0, -s, s) / s.
pub(crate) fn threshold_sample<const D: usize>(
    sample: Tensor<D>,
    ratio: f64,
    max_value: f64,
) -> Result<Tensor<D>, SchedulerError> {
    let dims = sample.dims();
    let device = sample.device();
    let values = tensor_values(&sample)?;
    let batch = dims[0].max(1);
    let per = values.len() / batch;
    let mut out = Vec::with_capacity(values.len());
    for item in values.chunks(per.max(1)) {
        let mut abs: Vec<f32> = item.iter().map(|v| v.abs()).collect();
        abs.sort_by(|a, b| a.total_cmp(b));
        // torch.quantile's default linear interpolation, computed in float32 on CPU.
        let pos = ratio * (abs.len().saturating_sub(1)) as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(abs.len().saturating_sub(1));
        let frac = (pos - lo as f64) as f32;
        let q = abs[lo] + (abs[hi] - abs[lo]) * frac;
        let s = q.clamp(1.0, max_value as f32);
        out.extend(item.iter().map(|v| v.clamp(-s, s) / s));
    }
    Ok(Tensor::from_data(TensorData::new(out, dims), &device))
}

/// Converts a model output to x0 in the DDPM formulation (§3.0 of the spec): `alpha_prod` is
/// ᾱ_t as a float32 scalar.
pub(crate) fn ddpm_x0<const D: usize>(
    prediction: Prediction,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    alpha_prod: f32,
) -> Tensor<D> {
    ddpm_x0_in(
        prediction,
        model_output,
        sample,
        alpha_prod,
        crate::NoiseDtype::Float32,
    )
}

/// [`ddpm_x0`] on tensors of `dtype` (float32 tensors holding its values): each op is rounded
/// to it, as torch does when the sample and model output are float16 / bfloat16.
pub(crate) fn ddpm_x0_in<const D: usize>(
    prediction: Prediction,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    alpha_prod: f32,
    dtype: crate::NoiseDtype,
) -> Tensor<D> {
    use crate::precision::{mul_left, round_tensor};
    let r = |t: Tensor<D>| round_tensor(t, dtype);
    let beta_prod = 1.0 - alpha_prod;
    // `beta_prod_t ** 0.5 * model_output`: 0-d float32 factors on the left (see `precision`).
    match prediction {
        Prediction::Epsilon | Prediction::Flow => {
            r(r(sample - mul_left(beta_prod.sqrt(), model_output, dtype))
                .div_scalar(alpha_prod.sqrt()))
        }
        Prediction::Sample => model_output,
        Prediction::VPrediction => r(mul_left(alpha_prod.sqrt(), sample, dtype)
            - mul_left(beta_prod.sqrt(), model_output, dtype)),
    }
}

/// The x0 of the k-diffusion schedulers for a σ: eps x − σ·ε, v-prediction, or the output.
pub(crate) fn k_x0<const D: usize>(
    prediction: Prediction,
    model_output: Tensor<D>,
    sample: Tensor<D>,
    sigma: f32,
) -> Tensor<D> {
    match prediction {
        Prediction::Sample => model_output,
        Prediction::VPrediction => {
            model_output.mul_scalar(-sigma / (sigma * sigma + 1.0).sqrt())
                + sample.div_scalar(sigma * sigma + 1.0)
        }
        _ => sample - model_output.mul_scalar(sigma),
    }
}

/// The v-prediction x0 of the Euler schedulers for a σ in a pipeline's dtype: the product
/// with the (half-precision) `model_output` is rounded to `dtype`, the rest is float32, as
/// torch computes `model_output * (-σ / √(σ² + 1)) + sample / (σ² + 1)` with a float32 sample.
pub(crate) fn v_prediction_x0_in<const D: usize>(
    model_output: Tensor<D>,
    sample: Tensor<D>,
    sigma: f32,
    dtype: crate::NoiseDtype,
) -> Tensor<D> {
    crate::precision::round_tensor(
        model_output.mul_scalar(-sigma / (sigma * sigma + 1.0).sqrt()),
        dtype,
    ) + sample.div_scalar(sigma * sigma + 1.0)
}

/// Clips or thresholds x0 as the DDPM-family schedulers do.
pub(crate) fn clip_or_threshold<const D: usize>(
    x0: Tensor<D>,
    thresholding: bool,
    clip_sample: bool,
    clip_range: f64,
    ratio: f64,
    max_value: f64,
) -> Result<Tensor<D>, SchedulerError> {
    if thresholding {
        threshold_sample(x0, ratio, max_value)
    } else if clip_sample {
        let r = clip_range as f32;
        Ok(x0.clamp(-r, r))
    } else {
        Ok(x0)
    }
}
