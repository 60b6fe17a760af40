//! Float32 CPU kernels for the ops that dominate a UNet / VAE / CLIP forward on the flex
//! backend, behind the same module API.
//!
//! Each function returns `None` unless every operand is a float32 tensor on the flex (CPU)
//! device and the case is one the kernel covers; the caller then takes burn's op unchanged, so
//! GPU backends and half precision are untouched.
//!
//! - [`conv2d`]: a convolution as one `gemm` call per image, `out[c_out, pixels] = W[c_out,
//!   c_in·kh·kw] · cols[c_in·kh·kw, pixels] (+ bias)`. The weight is read in place (its
//!   `[c_out, c_in, kh, kw]` layout already is that matrix: no repacking per call), the output is
//!   written in place in NCHW (the bias is preloaded into it, the product accumulated onto it),
//!   and a 1x1 stride-1 convolution feeds the input itself to the matmul (no im2col). Other
//!   kernels build the `cols` matrix (torch's `unfold`) with rayon over its rows.
//! - [`group_norm`]: one read for the statistics and one fused pass for normalisation, affine
//!   and (optionally) the SiLU that follows the norm in every ResNet block, instead of burn's
//!   chain of reshape / mean / var / sub / div / mul / add / sigmoid / mul, each a full pass and
//!   an allocation.
//! - [`linear`]: `x · Wᵀ + b` as one `gemm` with the bias preloaded in the output.
//! - [`attention`]: query blocks against all keys, exact softmax, no full score matrix.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, PaddingConfig2d};
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

/// False when the environment variable `BURN_DIFFUSERS_CPU_KERNELS` is `0` (read once): every
/// op then takes burn's own kernel, for comparisons.
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("BURN_DIFFUSERS_CPU_KERNELS").map_or(true, |v| v != "0"))
}

/// The flex primitive of a float32 tensor on the CPU device, contiguous; `None` otherwise.
fn host_f32<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let prim = t.clone().try_into_primitive::<Flex>().ok()?;
    if prim.as_slice::<f32>().is_some() {
        Some(prim)
    } else {
        let c = prim.to_contiguous();
        c.as_slice::<f32>().is_some().then_some(c)
    }
}

/// The slice of a tensor returned by [`host_f32`].
fn slice(t: &FlexTensor) -> &[f32] {
    // `host_f32` only returns contiguous float32 tensors.
    t.as_slice::<f32>().unwrap_or(&[])
}

/// True when the tensor lives on the flex (CPU) device.
fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    t.device() == Device::flex()
}

/// Wraps an output buffer as a tensor on `device`.
fn wrap<const D: usize>(values: Vec<f32>, dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// A raw pointer that may cross rayon's threads (each task writes a disjoint range).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint ranges from parallel tasks.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, all row-major with the given row strides.
///
/// # Safety
/// The pointers must cover the ranges the shapes and strides name, and `dst` must not overlap
/// the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_rm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
) {
    let parallelism = if m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `layer.forward(x)` for a float32 convolution on the CPU; `None` for cases it does not cover
/// (other devices or dtypes, groups, dilation, `Same` padding).
pub(crate) fn conv2d(layer: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    if !on_flex(x) || layer.groups != 1 || layer.dilation != [1, 1] {
        return None;
    }
    let (pt, pl, pb, pr) = match layer.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return None,
    };
    let [batch, cin, h, w] = x.dims();
    let weight = layer.weight.val();
    let [cout, wcin, kh, kw] = weight.dims();
    let [sh, sw] = layer.stride;
    if wcin != cin || sh == 0 || sw == 0 || h + pt + pb < kh || w + pl + pr < kw {
        return None;
    }
    let ho = (h + pt + pb - kh) / sh + 1;
    let wo = (w + pl + pr - kw) / sw + 1;
    let xt = host_f32(x)?;
    let wt = host_f32(&weight)?;
    let bias = match &layer.bias {
        Some(b) => Some(host_f32(&b.val())?),
        None => None,
    };
    let (xs, ws) = (slice(&xt), slice(&wt));
    let k = cin * kh * kw;
    let n = ho * wo;
    if k == 0 || n == 0 || cout == 0 || batch == 0 {
        return None;
    }
    let mut out = vec![0f32; batch * cout * n];
    if let Some(b) = &bias {
        let bs = slice(b);
        out.par_chunks_mut(n)
            .enumerate()
            .for_each(|(row, dst)| dst.fill(bs[row % cout]));
    }
    let direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt + pl + pb + pr == 0;
    let geom = Im2col {
        h,
        w,
        kh,
        kw,
        sh,
        sw,
        pt,
        pl,
        wo,
    };
    // The column matrix is built for a band of output rows at a time, at most COLS_BUDGET
    // values (a 512x512 VAE layer would otherwise need `128·9 x 262144` floats, 1.2 GB).
    let band = if direct {
        ho
    } else {
        (COLS_BUDGET / (k * wo).max(1)).clamp(1, ho)
    };
    let mut cols = if direct {
        Vec::new()
    } else {
        vec![0f32; k * band * wo]
    };
    for bi in 0..batch {
        let xb = &xs[bi * cin * h * w..(bi + 1) * cin * h * w];
        for oy0 in (0..ho).step_by(band) {
            let oy1 = (oy0 + band).min(ho);
            let cols_n = (oy1 - oy0) * wo;
            let rhs = if direct {
                xb.as_ptr()
            } else {
                cols[..k * cols_n]
                    .par_chunks_mut(cols_n)
                    .enumerate()
                    .for_each(|(row, dst)| geom.row(xb, row, oy0..oy1, dst));
                cols.as_ptr()
            };
            let dst = out[bi * cout * n + oy0 * wo..].as_mut_ptr();
            // SAFETY: `dst` starts at column `oy0 * wo` of image `bi`'s `[cout, n]` output
            // (row stride n) and covers `cols_n` columns; `ws` is `[cout, k]`, `rhs` is
            // `[k, cols_n]` (the input itself, `[cin, h·w]`, when direct), all row-major.
            unsafe {
                gemm_rm(
                    cout,
                    cols_n,
                    k,
                    dst,
                    n,
                    bias.is_some(),
                    ws.as_ptr(),
                    1,
                    k as isize,
                    rhs,
                    1,
                    cols_n as isize,
                );
            }
        }
    }
    Some(wrap(out, [batch, cout, ho, wo], &x.device()))
}

/// Most values of one column-matrix band of [`conv2d`] (32 MB of float32).
const COLS_BUDGET: usize = 8 << 20;

/// The geometry of one im2col.
struct Im2col {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    wo: usize,
}

impl Im2col {
    /// Row `row = (c, i, j)` of the column matrix for output rows `oys`: input channel `c`
    /// shifted by kernel tap `(i, j)`, zero outside the image.
    fn row(&self, x: &[f32], row: usize, oys: std::ops::Range<usize>, dst: &mut [f32]) {
        let c = row / (self.kh * self.kw);
        let i = (row / self.kw) % self.kh;
        let j = row % self.kw;
        let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
        let first_oy = oys.start;
        for oy in oys {
            let at = (oy - first_oy) * self.wo;
            let out_row = &mut dst[at..at + self.wo];
            let iy = (oy * self.sh + i) as isize - self.pt as isize;
            if iy < 0 || iy >= self.h as isize {
                out_row.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
            // Output columns whose input column `ox * sw + j - pl` lies inside the row.
            let first = (self.pl.saturating_sub(j)).div_ceil(self.sw);
            let last = if self.w + self.pl > j {
                ((self.w + self.pl - j - 1) / self.sw + 1).min(self.wo)
            } else {
                0
            };
            if first >= last {
                out_row.fill(0.0);
                continue;
            }
            out_row[..first].fill(0.0);
            out_row[last..].fill(0.0);
            let start = first * self.sw + j - self.pl;
            if self.sw == 1 {
                out_row[first..last].copy_from_slice(&src[start..start + (last - first)]);
            } else {
                for (o, v) in out_row[first..last].iter_mut().enumerate() {
                    *v = src[start + o * self.sw];
                }
            }
        }
    }
}

/// `norm.forward(x)`, then SiLU when `silu`, for a float32 tensor on the CPU; `None` otherwise.
///
/// Statistics per (image, group) as torch computes them: the mean, then the biased variance
/// about it (accumulated in float64), `rstd = 1 / sqrt(var + eps)`.
pub(crate) fn group_norm<const D: usize>(
    norm: &GroupNorm,
    x: &Tensor<D>,
    silu: bool,
) -> Option<Tensor<D>> {
    if !on_flex(x) || D < 2 {
        return None;
    }
    let dims = x.dims();
    let (batch, channels) = (dims[0], dims[1]);
    let groups = norm.num_groups;
    if groups == 0 || channels != norm.num_channels || channels % groups != 0 {
        return None;
    }
    let spatial: usize = dims[2..].iter().product();
    let xt = host_f32(x)?;
    let (gamma, beta) = match (&norm.gamma, &norm.beta) {
        (Some(g), Some(b)) if norm.affine => (Some(host_f32(&g.val())?), Some(host_f32(&b.val())?)),
        (None, None) => (None, None),
        _ => return None,
    };
    let xs = slice(&xt);
    let per_group = channels / groups;
    let group_len = per_group * spatial;
    let eps = norm.epsilon;
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(group_len.max(1))
        .zip(xs.par_chunks(group_len.max(1)))
        .enumerate()
        .for_each(|(bg, (dst, src))| {
            let g = bg % groups;
            let count = src.len().max(1) as f64;
            let mean = src.iter().map(|&v| v as f64).sum::<f64>() / count;
            let var = src
                .iter()
                .map(|&v| {
                    let d = v as f64 - mean;
                    d * d
                })
                .sum::<f64>()
                / count;
            let rstd = 1.0 / (var + eps).sqrt();
            for (ci, (drow, srow)) in dst
                .chunks_mut(spatial.max(1))
                .zip(src.chunks(spatial.max(1)))
                .enumerate()
            {
                let c = g * per_group + ci;
                let gm = gamma.as_ref().map_or(1.0, |t| slice(t)[c] as f64);
                let bt = beta.as_ref().map_or(0.0, |t| slice(t)[c] as f64);
                let a = (rstd * gm) as f32;
                let b = (bt - mean * rstd * gm) as f32;
                if silu {
                    for (d, &s) in drow.iter_mut().zip(srow) {
                        let y = s * a + b;
                        *d = y / (1.0 + (-y).exp());
                    }
                } else {
                    for (d, &s) in drow.iter_mut().zip(srow) {
                        *d = s * a + b;
                    }
                }
            }
        });
    let _ = batch;
    Some(wrap(out, dims, &x.device()))
}

/// `layer.forward(x)` (`x · W + b`, burn keeps `W` as `[in, out]`) for a float32 tensor on the
/// CPU as one `gemm` with the bias preloaded; `None` otherwise.
pub(crate) fn linear<const D: usize>(layer: &Linear, x: &Tensor<D>) -> Option<Tensor<D>> {
    if !on_flex(x) || D < 1 {
        return None;
    }
    let mut dims = x.dims();
    let weight = layer.weight.val();
    let [d_in, d_out] = weight.dims();
    let rows: usize = dims[..D - 1].iter().product();
    if dims[D - 1] != d_in || d_in == 0 || d_out == 0 || rows == 0 {
        return None;
    }
    let xt = host_f32(x)?;
    // The loader keeps PyTorch's `[out, in]` buffer and transposes the view: read it through
    // its strides (no copy).
    let wt = weight.try_into_primitive::<Flex>().ok()?;
    if wt.dtype() != DType::F32 {
        return None;
    }
    let strides = wt.layout().strides();
    let (w_rs, w_cs) = (strides[0], strides[1]);
    let w_start = wt.layout().start_offset();
    let w_all: &[f32] = wt.storage();
    let w_extent = |len: usize, stride: isize| (len.saturating_sub(1) as isize) * stride;
    if w_rs < 0
        || w_cs < 0
        || w_start as isize + w_extent(d_in, w_rs) + w_extent(d_out, w_cs) >= w_all.len() as isize
    {
        return None;
    }
    let w_ptr = w_all[w_start..].as_ptr();
    let bias = match &layer.bias {
        Some(b) => Some(host_f32(&b.val())?),
        None => None,
    };
    let mut out = vec![0f32; rows * d_out];
    if let Some(b) = &bias {
        let bs = slice(b);
        for dst in out.chunks_mut(d_out.max(1)) {
            dst.copy_from_slice(bs);
        }
    }
    // SAFETY: `out` is `[rows, d_out]`, `x` is `[rows, d_in]`, `W` is `[d_in, d_out]` with
    // the strides checked above.
    unsafe {
        gemm_rm(
            rows,
            d_out,
            d_in,
            out.as_mut_ptr(),
            d_out,
            bias.is_some(),
            slice(&xt).as_ptr(),
            1,
            d_in as isize,
            w_ptr,
            w_cs,
            w_rs,
        );
    }
    dims[D - 1] = d_out;
    Some(wrap(out, dims, &x.device()))
}

/// Query rows per block of [`attention`]: bounds the score block to `Q_BLOCK x keys` values.
const Q_BLOCK: usize = 128;

/// A float32 4-d flex tensor read in place through its strides: `(storage, offset, strides)`.
struct Strided4 {
    tensor: FlexTensor,
    offset: usize,
    strides: [usize; 4],
}

impl Strided4 {
    /// `None` unless the tensor is float32 on flex with non-negative strides inside its buffer
    /// and a unit stride on the last dimension.
    fn new(t: &Tensor<4>) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let dims = t.dims();
        let tensor = t.clone().try_into_primitive::<Flex>().ok()?;
        let layout = tensor.layout();
        let s = layout.strides();
        if s.len() != 4 || s.iter().any(|&x| x < 0) || (dims[3] > 1 && s[3] != 1) {
            return None;
        }
        let strides = [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize];
        let offset = layout.start_offset();
        let last: usize = dims
            .iter()
            .zip(strides)
            .map(|(&n, st)| n.saturating_sub(1) * st)
            .sum();
        (offset + last < tensor.storage::<f32>().len()).then_some(Self {
            tensor,
            offset,
            strides,
        })
    }

    /// A borrowed view that can cross threads.
    fn view(&self) -> StridedView<'_> {
        StridedView {
            data: self.tensor.storage(),
            offset: self.offset,
            strides: self.strides,
        }
    }
}

/// The storage of a [`Strided4`] with its offset and strides.
#[derive(Clone, Copy)]
struct StridedView<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 4],
}

impl StridedView<'_> {
    /// Pointer to element `(b, h, row, 0)`.
    fn at(&self, b: usize, h: usize, row: usize) -> *const f32 {
        let i = self.offset + b * self.strides[0] + h * self.strides[1] + row * self.strides[2];
        self.data[i..].as_ptr()
    }
}

/// `softmax(scale · q kᵀ) v` on `[batch, heads, seq, head_dim]` float32 tensors on the CPU, with
/// an optional causal mask; `None` otherwise (masks and biases take burn's op).
///
/// Queries go in blocks of [`Q_BLOCK`] rows, each block one `gemm` for its scores against all
/// keys, an exact softmax per row (max-subtracted, in float32), and one `gemm` with `v`: the
/// full `seq x seq` score matrix is never built (a 64x64 VAE attention at 512x512 holds
/// `128 x 4096` scores per block instead of `4096 x 4096`). Blocks run in parallel. `q`, `k`
/// and `v` are read through their strides (the head split of the callers is a view, not a
/// copy), and the output is written as `[batch, seq, heads, head_dim]`, returned as the
/// `[batch, heads, seq, head_dim]` view of it, so merging the heads back is free.
pub(crate) fn attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    scale: Option<f64>,
    causal: bool,
) -> Option<Tensor<4>> {
    if !on_flex(q) {
        return None;
    }
    let [b, h, n, d] = q.dims();
    let [kb, kh, m, kd] = k.dims();
    let [vb, vh, vm, dv] = v.dims();
    if (kb, kh, kd) != (b, h, d) || (vb, vh, vm) != (b, h, m) || n == 0 || m == 0 || d == 0 {
        return None;
    }
    let (qt, kt, vt) = (Strided4::new(q)?, Strided4::new(k)?, Strided4::new(v)?);
    let (qs, ks, vs) = (qt.view(), kt.view(), vt.view());
    let scale = scale.unwrap_or_else(|| 1.0 / (d as f64).sqrt()) as f32;
    let mut out = vec![0f32; b * n * h * dv];
    let blocks = n.div_ceil(Q_BLOCK);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..b * h * blocks).into_par_iter().for_each_init(
        || vec![0f32; Q_BLOCK * m],
        |scores, job| {
            let (bi, hi) = (job / blocks / h, (job / blocks) % h);
            let r0 = (job % blocks) * Q_BLOCK;
            let rows = Q_BLOCK.min(n - r0);
            let s = &mut scores[..rows * m];
            // SAFETY: s is [rows, m]; q rows r0.. of head (bi, hi) are [rows, d] with row
            // stride strides[2]; k is [m, d] read as kᵀ [d, m]; all checked by Strided4.
            unsafe {
                gemm::gemm(
                    rows,
                    m,
                    d,
                    s.as_mut_ptr(),
                    1,
                    m as isize,
                    false,
                    qs.at(bi, hi, r0),
                    1,
                    qs.strides[2] as isize,
                    ks.at(bi, hi, 0),
                    ks.strides[2] as isize,
                    1,
                    0.0f32,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (i, row) in s.chunks_mut(m).enumerate() {
                let visible = if causal { (r0 + i + 1).min(m) } else { m };
                let (live, hidden) = row.split_at_mut(visible);
                let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for x in live.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in live.iter_mut() {
                    *x *= inv;
                }
                hidden.fill(0.0);
            }
            // SAFETY: this job alone writes rows r0..r0+rows of head (bi, hi) of `out`
            // (`[b, n, h, dv]`, row stride h * dv); s is [rows, m], v is [m, dv].
            unsafe {
                let dst = out_ptr.get().add(((bi * n + r0) * h + hi) * dv);
                gemm::gemm(
                    rows,
                    dv,
                    m,
                    dst,
                    1,
                    (h * dv) as isize,
                    false,
                    s.as_ptr(),
                    1,
                    m as isize,
                    vs.at(bi, hi, 0),
                    1,
                    vs.strides[2] as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    Some(wrap(out, [b, n, h, dv], &q.device()).swap_dims(1, 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{GroupNormConfig, Initializer};

    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn max_rel(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let a = a.into_data().try_to_vec::<f32>().unwrap();
        let b = b.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// The gemm convolution against burn's: 3x3 split into row bands (a column matrix over
    /// the budget), stride 2 with asymmetric padding, and 1x1 fed straight to the matmul.
    #[test]
    fn conv2d_matches_burn_in_bands_strides_and_1x1() {
        let device = Device::flex();
        let cases = [
            (
                64,
                6,
                3,
                [1, 1],
                PaddingConfig2d::Explicit(1, 1, 1, 1),
                128,
                128,
            ),
            (
                5,
                7,
                3,
                [2, 2],
                PaddingConfig2d::Explicit(0, 1, 1, 0),
                9,
                11,
            ),
            (12, 4, 1, [1, 1], PaddingConfig2d::Valid, 6, 5),
        ];
        for (cin, cout, k, stride, padding, h, w) in cases {
            let mut conv = Conv2dConfig::new([cin, cout], [k, k])
                .with_stride(stride)
                .with_padding(padding.clone())
                .with_initializer(Initializer::Zeros)
                .init(&device);
            conv.weight = burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(values(1, cout * cin * k * k), [cout, cin, k, k]),
                &device,
            ));
            conv.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(values(2, cout), [cout]),
                &device,
            )));
            let x = Tensor::<4>::from_data(
                TensorData::new(values(3, 2 * cin * h * w), [2, cin, h, w]),
                &device,
            );
            if cin * k * k * w * h > COLS_BUDGET {
                assert!(
                    COLS_BUDGET / (cin * k * k * w) < h,
                    "the first case uses bands"
                );
            }
            let ours = conv2d(&conv, &x).expect("covered");
            let reference = conv.forward(x);
            assert_eq!(ours.dims(), reference.dims());
            assert!(
                max_rel(ours, reference) < 1e-5,
                "{cin}->{cout} k{k} {padding:?}"
            );
        }
    }

    #[test]
    fn group_norm_silu_and_attention_match_burn() {
        let device = Device::flex();
        let mut norm = GroupNormConfig::new(4, 8).init(&device);
        norm.gamma = Some(burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(values(4, 8), [8]),
            &device,
        )));
        let x = Tensor::<4>::from_data(
            TensorData::new(values(5, 2 * 8 * 25), [2, 8, 5, 5]),
            &device,
        );
        let ours = group_norm(&norm, &x, true).expect("covered");
        let reference = burn::tensor::activation::silu(norm.forward(x));
        assert!(max_rel(ours, reference) < 1e-5);

        let t = |seed: u64, n: usize| {
            Tensor::<4>::from_data(
                TensorData::new(values(seed, 2 * 3 * n * 8), [2, n, 3, 8]),
                &device,
            )
            .swap_dims(1, 2)
        };
        let (q, k, v) = (t(6, 300), t(7, 300), t(8, 300));
        for causal in [false, true] {
            let ours = attention(&q, &k, &v, None, causal).expect("covered");
            let reference = burn::tensor::module::attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                burn::tensor::ops::AttentionModuleOptions {
                    scale: None,
                    softcap: None,
                    is_causal: causal,
                },
            );
            assert!(max_rel(ours, reference) < 1e-5, "causal {causal}");
        }
    }
}
