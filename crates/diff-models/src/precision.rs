//! Half-precision forward passes that round where torch's CPU kernels round.
//!
//! A model loaded as float16 or bfloat16 keeps its weights in that dtype. torch 2.15 on the CPU
//! computes most half-precision ops in float32 and rounds the result once; measured against
//! `op(x.float()).to(dtype)` on random operands (`tests/fixtures/22-half-models/generate.py`
//! records the table in `ops.json`): `F.linear` with or without bias (the bias is added in
//! float32, before the single rounding), `conv2d`, `group_norm`, `layer_norm`, `gelu` (erf and
//! tanh), `silu`, `sigmoid`, `softmax`, elementwise `+`/`*` and nearest upsampling all agree in
//! at least 99.9% of values (the rest is float32 summation order). burn's half-precision
//! modules round inside the op instead (a linear is a matmul, rounded, then a bias addition;
//! rounding the product before the bias changes 28% of torch's values), so the functions here
//! widen the operands and the layer's parameters to float32 for the one op, and round the
//! output once. One exception is measured and kept: torch's `F.linear` on a non-contiguous
//! half input (diffusers' attention over a feature map feeds its projections a transposed
//! view) does round the product, then the bias addition ([`linear_strided`]). Only the one layer's parameters are widened, and
//! only for the duration of the call. A float32 input takes the layer's own `forward`,
//! unchanged, so float32 results stay bit for bit what they were.
//!
//! `scaled_dot_product_attention` is the exception: torch runs its CPU flash-attention kernel,
//! which computes `q kᵀ` in float32, scales it, subtracts the running row maximum, takes the
//! exponential in float32, **rounds the exponentials to the half dtype** before multiplying
//! them by `v` (float32 accumulation), and multiplies by the reciprocal of the float32 sum of
//! the unrounded exponentials at the end; keys are processed in blocks of 512 with an online
//! softmax. For half inputs its exponential is not `expf`: the vectorised part of each row
//! (the first multiple of 16 keys of a block, AVX-512 lanes) goes through `fexp_u20`, a
//! degree-3 polynomial with an exponent-bits trick, accurate to about 1.1e-4 relative, which
//! moves the rounded exponentials by an ulp often enough to change 7% of float16 outputs; the
//! remaining keys use `expf`. [`attention`] reproduces all of that (measured on torch 2.15 with
//! AVX-512, `ops.json`: 0% to 0.03% of outputs differ, against 38% to 42% for the float32
//! attention rounded once and 7% to 36% for `expf`). On a CPU with other vector widths (AVX2: 8
//! lanes) or another architecture (ARM) torch's split or its polynomial differs.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear};
use burn::tensor::module::attention as fused_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Tensor};

/// True for the dtypes whose results torch rounds per op (float16, bfloat16).
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// A parameter widened to float32 (a transient copy; the layer keeps its own).
fn wide<const D: usize>(p: &Param<Tensor<D>>) -> Param<Tensor<D>> {
    Param::from_tensor(p.val().cast(DType::F32))
}

/// `layer.forward(x)`, computed in float32 and rounded once for half inputs.
pub(crate) fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if !is_half(dtype) {
        if let Some(out) = crate::kernels::enabled()
            .then(|| crate::kernels::linear(layer, &x))
            .flatten()
        {
            return out;
        }
        return layer.forward(x);
    }
    burn::tensor::module::linear(
        x.cast(DType::F32),
        layer.weight.val().cast(DType::F32),
        layer.bias.as_ref().map(|b| b.val().cast(DType::F32)),
    )
    .cast(dtype)
}

/// `layer.forward(x)` as torch's `F.linear` computes it for a **non-contiguous** half input
/// (diffusers' attention over a feature map transposes `[batch, channels, pixels]` to
/// `[batch, pixels, channels]` without a copy): the product is rounded, then the bias is added
/// and rounded again (measured: every value agrees; the single rounding of [`linear`] differs in
/// 29% of them).
pub(crate) fn linear_strided<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if !is_half(dtype) {
        return layer.forward(x);
    }
    let product = burn::tensor::module::linear(
        x.cast(DType::F32),
        layer.weight.val().cast(DType::F32),
        None,
    )
    .cast(dtype);
    match &layer.bias {
        Some(bias) => {
            let bias = bias.val().cast(DType::F32).unsqueeze::<D>();
            (product.cast(DType::F32) + bias).cast(dtype)
        }
        None => product,
    }
}

/// `layer.forward(x)` for a 2-d convolution, computed in float32 and rounded once for half
/// inputs.
pub(crate) fn conv2d(layer: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let dtype = x.dtype();
    if !is_half(dtype) {
        if let Some(out) = crate::kernels::enabled()
            .then(|| crate::kernels::conv2d(layer, &x))
            .flatten()
        {
            return out;
        }
        return layer.forward(x);
    }
    let mut wide_layer = layer.clone();
    wide_layer.weight = wide(&layer.weight);
    wide_layer.bias = layer.bias.as_ref().map(wide);
    wide_layer.forward(x.cast(DType::F32)).cast(dtype)
}

/// `norm.forward(x)` for a group norm, computed in float32 and rounded once for half inputs.
pub(crate) fn group_norm<const D: usize>(norm: &GroupNorm, x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if !is_half(dtype) {
        if let Some(out) = crate::kernels::enabled()
            .then(|| crate::kernels::group_norm(norm, &x, false))
            .flatten()
        {
            return out;
        }
        return norm.forward(x);
    }
    let mut wide_norm = norm.clone();
    wide_norm.gamma = norm.gamma.as_ref().map(wide);
    wide_norm.beta = norm.beta.as_ref().map(wide);
    wide_norm.forward(x.cast(DType::F32)).cast(dtype)
}

/// `silu(norm.forward(x))` (`silu`) or `norm.forward(x)`: the group norm and the SiLU that
/// follows it fused into one pass on the CPU in float32; otherwise the two ops, each computed in
/// float32 and rounded once for half inputs.
pub(crate) fn group_norm_silu<const D: usize>(
    norm: &GroupNorm,
    x: Tensor<D>,
    silu: bool,
) -> Tensor<D> {
    if !is_half(x.dtype())
        && let Some(out) = crate::kernels::enabled()
            .then(|| crate::kernels::group_norm(norm, &x, silu))
            .flatten()
    {
        return out;
    }
    let h = group_norm(norm, x);
    if silu {
        elementwise(h, burn::tensor::activation::silu)
    } else {
        h
    }
}

/// `norm.forward(x)` for a layer norm, computed in float32 and rounded once for half inputs.
pub(crate) fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if !is_half(dtype) {
        return norm.forward(x);
    }
    let mut wide_norm = norm.clone();
    wide_norm.gamma = wide(&norm.gamma);
    wide_norm.beta = norm.beta.as_ref().map(wide);
    wide_norm.forward(x.cast(DType::F32)).cast(dtype)
}

/// An elementwise function (an activation), computed in float32 and rounded once for half
/// inputs; `f(x)` as it is for float32.
pub(crate) fn elementwise<const D: usize>(
    x: Tensor<D>,
    f: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    let dtype = x.dtype();
    if !is_half(dtype) {
        return f(x);
    }
    f(x.cast(DType::F32)).cast(dtype)
}

/// The float32 lanes of torch's AVX-512 `Vectorized<float>`: in each row of a key block, the
/// first multiple of this many exponentials go through `fexp_u20`, the rest through `expf`.
const EXP_LANES: usize = 16;

/// torch's `Vectorized<float>::fexp_u20` (ATen `vec512_float.h`) on one value: `2^(x log2 e)`
/// with the fractional power from a cubic, written straight into the float's exponent and
/// mantissa bits. Every step is a float32 operation or a fused multiply-add, as in the kernel.
fn fexp_u20(x: f32) -> f32 {
    // The bit patterns of log2(e), ln(FLT_MIN) and ln(FLT_MAX) as torch writes them.
    let log2e = f32::from_bits(0x3fb8_aa3b);
    let ln_flt_min = f32::from_bits(0xc2ae_ac50);
    let ln_flt_max = f32::from_bits(0x42b1_7218);
    if x.is_nan() {
        return x;
    }
    if x < ln_flt_min {
        return 0.0;
    }
    if x > ln_flt_max {
        return f32::INFINITY;
    }
    // torch's coefficients 1.0703434948458272e-4, 0.30354260500649682, -0.22433836478672356
    // and -0.079204240219773236, as the float32 values they round to.
    let (c0, c1, c2, c3) = (
        f32::from_bits(0x38e0_77a1),
        f32::from_bits(0x3e9b_69f0),
        f32::from_bits(0xbe65_b8f5),
        f32::from_bits(0xbda2_35d5),
    );
    let src = x * log2e;
    let fractional = src - src.floor();
    let poly = fractional.mul_add(fractional.mul_add(fractional.mul_add(c3, c2), c1), c0);
    let shifted = 8_388_608.0f32.mul_add(src - poly, 8_388_608.0 * 127.0);
    // `_mm512_cvttps_epi32`: truncation toward zero; within the clamped range the value is a
    // positive integer below 2^31, so the cast is exact.
    f32::from_bits(shifted.trunc() as i32 as u32)
}

/// `exp(z)` for the softmax numerators of a key block, as torch's half-precision flash
/// attention computes them (see the module doc): `fexp_u20` for the first multiple of
/// [`EXP_LANES`] keys of each row, `expf` for the rest. Runs on the host (a device round trip on
/// GPU backends; the half-precision emulation is a CPU-parity feature).
fn torch_softmax_exp(z: Tensor<4>) -> Tensor<4> {
    let dims = z.dims();
    let device = z.device();
    let row = dims[3];
    let vectorised = row / EXP_LANES * EXP_LANES;
    let mut out: Vec<f32> = match z.clone().into_data().convert::<f32>().try_into_vec::<f32>() {
        Ok(values) => values,
        // Unreachable for a float32 tensor; the plain exponential keeps this total.
        Err(_) => return z.exp(),
    };
    for chunk in out.chunks_mut(row.max(1)) {
        for (j, v) in chunk.iter_mut().enumerate() {
            *v = if j < vectorised {
                fexp_u20(*v)
            } else {
                v.exp()
            };
        }
    }
    Tensor::from_data(burn::tensor::TensorData::new(out, dims), &device)
}

/// torch's flash-attention key block (`kvSplitSize`), the span of one online-softmax update.
const KV_BLOCK: usize = 512;
/// Query rows per pass: bounds the float32 score block to `batch * heads * 1024 * 512` values.
const Q_CHUNK: usize = 1024;

/// `softmax(scale · q kᵀ + bias, masked) v` (`scale` defaults to `1 / sqrt(head_dim)`) on `[batch, heads, seq, head_dim]` tensors.
///
/// Float32 goes through burn's fused `attention` op (unchanged). Half inputs on the flex CPU
/// backend follow torch's CPU flash-attention kernel (see the module doc; the output is rounded
/// to the input dtype). On a GPU backend half inputs take burn's fused op too: torch's GPU
/// kernels are other kernels, and the CPU emulation would move every score block to the host.
/// `mask` is true where a key is hidden; `causal` hides keys after the query's position.
pub(crate) fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    bias: Option<Tensor<4>>,
    scale: Option<f64>,
    causal: bool,
) -> Tensor<4> {
    let dtype = q.dtype();
    if !is_half(dtype)
        && mask.is_none()
        && bias.is_none()
        && let Some(out) = crate::kernels::enabled()
            .then(|| crate::kernels::attention(&q, &k, &v, scale, causal))
            .flatten()
    {
        return out;
    }
    if !is_half(dtype) || q.device() != Device::flex() {
        return fused_attention(
            q,
            k,
            v,
            mask,
            bias,
            AttentionModuleOptions {
                scale,
                softcap: None,
                is_causal: causal,
            },
        );
    }
    let [b, h, n, head_dim] = q.dims();
    // torch's default scale, `1 / sqrt(head_dim)` in double precision.
    let scale = scale.unwrap_or_else(|| 1.0 / (head_dim as f64).sqrt());
    let m = k.dims()[2];
    let device = q.device();
    let q = q.cast(DType::F32);
    let k = k.cast(DType::F32);
    let v = v.cast(DType::F32);
    let bias = bias.map(|t| t.cast(DType::F32).expand([b, h, n, m]));
    let mask = mask.map(|t| t.expand([b, h, n, m]));
    let causal_mask =
        causal.then(|| Tensor::<2, Bool>::tril_mask([n, m], 0, &device).reshape([1, 1, n, m]));
    let mut outputs = Vec::with_capacity(n.div_ceil(Q_CHUNK));
    let mut q0 = 0;
    while q0 < n {
        let qn = Q_CHUNK.min(n - q0);
        let qc = q.clone().narrow(2, q0, qn);
        let mut row_max: Option<Tensor<4>> = None;
        let mut row_sum: Option<Tensor<4>> = None;
        let mut acc: Option<Tensor<4>> = None;
        let mut k0 = 0;
        while k0 < m {
            let kn = KV_BLOCK.min(m - k0);
            let kc = k.clone().narrow(2, k0, kn);
            let vc = v.clone().narrow(2, k0, kn);
            let mut s = qc.clone().matmul(kc.swap_dims(2, 3)).mul_scalar(scale);
            if let Some(bias) = &bias {
                s = s + bias.clone().narrow(2, q0, qn).narrow(3, k0, kn);
            }
            if let Some(mask) = &mask {
                s = s.mask_fill(
                    mask.clone().narrow(2, q0, qn).narrow(3, k0, kn),
                    f32::NEG_INFINITY,
                );
            }
            if let Some(cm) = &causal_mask {
                let cm = cm.clone().narrow(2, q0, qn).narrow(3, k0, kn);
                s = s.mask_fill(cm.expand([b, h, qn, kn]), f32::NEG_INFINITY);
            }
            // A block whose keys are all hidden has a maximum of -inf; clamping it keeps
            // `exp(s - max)` at 0 there instead of NaN.
            let block_max = s.clone().max_dim(3).clamp_min(f32::MIN);
            let new_max = match &row_max {
                Some(old) => old.clone().max_pair(block_max),
                None => block_max,
            };
            let e = torch_softmax_exp(s - new_max.clone());
            let block_sum = e.clone().sum_dim(3);
            let pv = e.cast(dtype).cast(DType::F32).matmul(vc);
            match (row_max.take(), row_sum.take(), acc.take()) {
                (Some(old_max), Some(old_sum), Some(old_acc)) => {
                    let factor = (old_max - new_max.clone()).exp();
                    row_sum = Some(old_sum * factor.clone() + block_sum);
                    acc = Some(old_acc * factor + pv);
                }
                _ => {
                    row_sum = Some(block_sum);
                    acc = Some(pv);
                }
            }
            row_max = Some(new_max);
            k0 += kn;
        }
        if let (Some(acc), Some(sum)) = (acc, row_sum) {
            // torch multiplies by the float32 reciprocal of the sum.
            outputs.push(acc * sum.recip());
        }
        q0 += qn;
    }
    Tensor::cat(outputs, 2).cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// A deterministic pseudo-random tensor in [-2, 2), rounded to `dtype`.
    fn tensor(shape: [usize; 4], seed: u64, dtype: DType) -> Tensor<4> {
        let n = shape.iter().product();
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::<4>::from_data(TensorData::new(values, shape), &Default::default()).cast(dtype)
    }

    fn max_rel(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let a: Vec<f32> = a.cast(DType::F32).into_data().try_to_vec().unwrap();
        let b: Vec<f32> = b.cast(DType::F32).into_data().try_to_vec().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// torch's fast exponential is accurate to about 1e-4 relative (it is made for values
    /// rounded to float16 / bfloat16 next) and saturates to 0 and infinity outside float32's
    /// range, -inf included.
    #[test]
    fn fexp_u20_is_within_2e_4_of_exp_and_saturates() {
        for i in -8000..8000 {
            let x = i as f32 * 0.01;
            let rel = (fexp_u20(x) / x.exp() - 1.0).abs();
            // Tolerance: 2e-4 relative (measured maximum about 1.1e-4).
            assert!(rel < 2e-4, "fexp_u20({x}) off by {rel:e}");
        }
        assert_eq!(fexp_u20(f32::NEG_INFINITY), 0.0);
        assert_eq!(fexp_u20(-100.0), 0.0);
        assert_eq!(fexp_u20(100.0), f32::INFINITY);
    }

    /// The half-precision path (key blocks of 512 with an online softmax, a padding mask, a
    /// causal mask) computes the same attention as burn's float32 op on the same values, to
    /// the half dtype's precision.
    #[test]
    fn half_attention_over_several_key_blocks_matches_float32_attention() {
        // The emulation runs on flex only; the tests' default device is flex unless a GPU
        // feature is on, in which case this compares burn's fused op with itself.
        for dtype in [DType::F16, DType::BF16] {
            // 1100 keys: three blocks, the last one partial; 21 queries.
            let q = tensor([1, 2, 21, 8], 1, dtype);
            let k = tensor([1, 2, 1100, 8], 2, dtype);
            let v = tensor([1, 2, 1100, 8], 3, dtype);
            let hidden: Vec<bool> = (0..1100).map(|j| j % 7 == 3 || j >= 1090).collect();
            let mask =
                Tensor::<1, Bool>::from_data(TensorData::new(hidden, [1100]), &Default::default())
                    .reshape([1, 1, 1, 1100])
                    .expand([1, 2, 21, 1100]);
            let half = attention(
                q.clone(),
                k.clone(),
                v.clone(),
                Some(mask.clone()),
                None,
                None,
                false,
            );
            let wide = |t: &Tensor<4>| t.clone().cast(DType::F32);
            let reference = attention(wide(&q), wide(&k), wide(&v), Some(mask), None, None, false);
            assert_eq!(half.dtype(), dtype);
            let err = max_rel(half, reference);
            // Tolerance: 1e-2 relative (a few ulps of the half dtype).
            assert!(err < 1e-2, "{dtype:?} masked: {err:e}");

            // Causal self-attention over 600 positions (two key blocks).
            let x = tensor([1, 2, 600, 8], 4, dtype);
            let y = tensor([1, 2, 600, 8], 5, dtype);
            let half = attention(x.clone(), y.clone(), y.clone(), None, None, Some(0.3), true);
            let reference = attention(wide(&x), wide(&y), wide(&y), None, None, Some(0.3), true);
            let err = max_rel(half, reference);
            // Tolerance: 1e-2 relative.
            assert!(err < 1e-2, "{dtype:?} causal: {err:e}");
        }
    }
}
