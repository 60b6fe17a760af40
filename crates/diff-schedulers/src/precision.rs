//! torch's half-precision arithmetic, emulated on float32 tensors.
//!
//! A pipeline loaded in float16 or bfloat16 keeps its latents in that dtype: torch rounds the
//! result of every elementwise op to it (the CPU kernels compute in float32 and round the
//! output). This crate keeps its tensors in float32 and rounds where torch does, which gives the
//! same values: a float32 result of float16 / bfloat16 operands rounded to the narrow type equals
//! the narrow op (float32 carries more than twice the narrow mantissa plus two bits, so the
//! double rounding is innocuous for +, −, ×, ÷ and √).
//!
//! How torch (2.15, CPU) treats the scalar of a half-precision tensor op, measured on 10^5
//! random operands per dtype and three scalars:
//! - `half * s` and `half / s` with `s` a Python float or a 0-d float32 tensor, and
//!   `python_float * half`: the scalar stays float32 (the kernels' "opmath" type) and the result
//!   is rounded once: [`mul_right`].
//! - `s * half` with `s` a 0-d float32 tensor on the left (diffusers' `sigma * model_output`,
//!   `alpha_prod_t ** 0.5 * sample`, every DPM-Solver coefficient): the scalar is first rounded
//!   to the tensor's dtype, then the product is rounded: [`mul_left`].
//! - `+` and `−` with a scalar on either side: the scalar is rounded to the tensor's dtype
//!   first ([`round_scalar`]).

use crate::NoiseDtype;
use burn::tensor::{DType, Tensor};

/// Rounds every value of a float32 tensor to `dtype` (round to nearest, ties to even), kept in
/// a float32 tensor; the identity for `Float32`, so float32 results are untouched.
pub fn round_tensor<const D: usize>(x: Tensor<D>, dtype: NoiseDtype) -> Tensor<D> {
    match dtype {
        NoiseDtype::Float32 => x,
        NoiseDtype::Float16 => x.cast(DType::F16).cast(DType::F32),
        NoiseDtype::BFloat16 => x.cast(DType::BF16).cast(DType::F32),
    }
}

/// Rounds a scalar to `dtype` as torch does to the scalar of `half_tensor + scalar`.
pub fn round_scalar(v: f32, dtype: NoiseDtype) -> f32 {
    dtype.round(v)
}

/// `half_tensor * scalar` (or `python_float * half_tensor`): the float32 product, rounded.
pub fn mul_right<const D: usize>(x: Tensor<D>, scalar: f32, dtype: NoiseDtype) -> Tensor<D> {
    round_tensor(x.mul_scalar(scalar), dtype)
}

/// `scalar_0d * half_tensor` with a 0-d float32 tensor on the left: the scalar rounded to the
/// tensor's dtype, then the product rounded. The plain float32 product for `Float32`.
pub fn mul_left<const D: usize>(scalar: f32, x: Tensor<D>, dtype: NoiseDtype) -> Tensor<D> {
    round_tensor(x.mul_scalar(round_scalar(scalar, dtype)), dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// burn's cast must round exactly as torch's `.to(torch.float16 / bfloat16)` (the `half`
    /// crate's conversion, round to nearest even), ties and subnormals included.
    #[test]
    fn round_tensor_rounds_to_nearest_even_like_torch() {
        let mut values = Vec::new();
        for i in 0..20_000u32 {
            // Every 2^-13-spaced value around 1 and 1000 (float16 ties at odd multiples), some
            // bfloat16 ties, tiny values (subnormal float16) and large ones.
            values.push(1.0 + i as f32 * 2f32.powi(-13));
            values.push(-(1000.0 + i as f32 * 2f32.powi(-4)));
            values.push(f32::from_bits(0x3f80_0000 + i * 0x4000));
            values.push(i as f32 * 1e-9);
            values.push(i as f32 * 3.7);
        }
        let device = Default::default();
        let n = values.len();
        for dtype in [NoiseDtype::Float16, NoiseDtype::BFloat16] {
            let t = Tensor::<1>::from_data(TensorData::new(values.clone(), [n]), &device);
            let got = round_tensor(t, dtype)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            for (v, g) in values.iter().zip(&got) {
                // Tolerance: none, bit for bit.
                assert_eq!(g.to_bits(), dtype.round(*v).to_bits(), "{dtype:?} of {v:e}");
            }
        }
    }
}
