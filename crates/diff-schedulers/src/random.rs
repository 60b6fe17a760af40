//! A bit-exact re-implementation of `torch.Generator("cpu")` for `randn` and `rand`.
//!
//! Diffusers pipelines draw their initial latents (and the noise of ancestral schedulers) from a
//! CPU `torch.Generator`. Reproducing those draws bit for bit is what lets a Rust pipeline make
//! the same image as Python for the same seed. The recipe (MT19937 engine, 24-bit float
//! uniforms, the scalar double path under 16 elements and the 16-lane Box–Muller kernel of x86
//! AVX2 builds with its exact FMA placement) is documented in `shared/spec/schedulers-rng.md`
//! section 5 and is checked against vectors produced by real torch 2.15 in
//! `tests/fixtures/10-schedulers/rng.json`.
//!
//! This module does not need burn: it produces `Vec<f32>`. [`randn_tensor`] mirrors diffusers'
//! `randn_tensor` (one generator for the whole batch, or one generator per batch item) and
//! [`to_tensor`] wraps the values into a burn tensor.

use burn::tensor::{Device, Tensor, TensorData};

/// Number of 32-bit words in the MT19937 state.
const MT_N: usize = 624;
/// MT19937 middle offset.
const MT_M: usize = 397;

/// The element type torch is asked to produce; the values are returned as `f32` either way
/// (half and bfloat16 values are exactly representable in `f32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseDtype {
    /// `torch.float32`.
    #[default]
    Float32,
    /// `torch.float16`, as torch 2.15 makes it (float32 Box–Muller rounded to half).
    Float16,
    /// `torch.bfloat16`, as torch 2.15 makes it (float32 Box–Muller rounded to bfloat16).
    BFloat16,
}

impl NoiseDtype {
    /// Rounds an `f32` to this dtype (round to nearest even), returned as `f32`.
    pub(crate) fn round(self, v: f32) -> f32 {
        match self {
            NoiseDtype::Float32 => v,
            NoiseDtype::Float16 => half::f16::from_f32(v).to_f32(),
            NoiseDtype::BFloat16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

/// `torch.Generator("cpu")`: an MT19937 engine plus the cached second normal of the scalar path.
#[derive(Clone)]
pub struct TorchGenerator {
    state: Box<[u32; MT_N]>,
    index: usize,
    seed: u64,
    /// torch's `next_double_normal_sample`: the sine half of the last scalar Box–Muller pair.
    cached_normal: Option<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .field("index", &self.index)
            .field("cached_normal", &self.cached_normal)
            .finish()
    }
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`. Only the low 32 bits seed the engine, as in
    /// torch; a negative Python seed is its two's complement (`-1` is `u64::MAX`).
    pub fn new(seed: u64) -> Self {
        let mut generator = TorchGenerator {
            state: Box::new([0; MT_N]),
            index: MT_N,
            seed,
            cached_normal: None,
        };
        generator.manual_seed(seed);
        generator
    }

    /// A generator seeded from the clock, for callers that pass no generator (torch would use
    /// its non-deterministic global generator).
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::new(nanos ^ u64::from(std::process::id()))
    }

    /// Re-seeds the engine and clears the cached normal, as `manual_seed` does.
    pub fn manual_seed(&mut self, seed: u64) {
        self.seed = seed;
        self.cached_normal = None;
        // Truncation to the low 32 bits is torch's own behaviour.
        self.state[0] = seed as u32;
        for j in 1..MT_N {
            let prev = self.state[j - 1];
            self.state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        self.index = MT_N;
    }

    /// The seed last given to [`TorchGenerator::new`] or [`TorchGenerator::manual_seed`].
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    fn twist(&mut self) {
        let mt = &mut self.state;
        for i in 0..MT_N {
            let y = (mt[i] & 0x8000_0000) | (mt[(i + 1) % MT_N] & 0x7fff_ffff);
            let mut v = mt[(i + MT_M) % MT_N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            mt[i] = v;
        }
        self.index = 0;
    }

    /// One tempered 32-bit draw (`random()`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random64()`: the first draw is the high word.
    pub fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        let lo = u64::from(self.next_u32());
        (hi << 32) | lo
    }

    /// A float32 uniform in [0, 1) from the low 24 bits of one draw.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// A float64 uniform in [0, 1) from the low 53 bits of `random64()`.
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// The scalar (numel < 16) normal: double Box–Muller with a cached sine half.
    fn scalar_normal(&mut self) -> f64 {
        if let Some(v) = self.cached_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.rand(n, generator=self)` in float32 (or rounded to half/bfloat16 as torch 2.15
    /// does), flat.
    pub fn rand(&mut self, n: usize, dtype: NoiseDtype) -> Vec<f32> {
        (0..n).map(|_| dtype.round(self.uniform_f32())).collect()
    }

    /// `torch.randn(n, generator=self, dtype=dtype)`, flat, advancing the state exactly as
    /// torch does.
    pub fn randn(&mut self, n: usize, dtype: NoiseDtype) -> Vec<f32> {
        if n < 16 {
            // torch casts the double to the element type through float.
            return (0..n)
                .map(|_| dtype.round(self.scalar_normal() as f32))
                .collect();
        }
        match dtype {
            NoiseDtype::Float32 => {
                let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
                for block in data.chunks_exact_mut(16) {
                    normal16(block);
                }
                if !n.is_multiple_of(16) {
                    // torch re-draws 16 fresh uniforms for the tail and overwrites the last 16
                    // outputs, including already transformed ones.
                    let mut tail = [0f32; 16];
                    for v in tail.iter_mut() {
                        *v = self.uniform_f32();
                    }
                    normal16(&mut tail);
                    data[n - 16..].copy_from_slice(&tail);
                }
                data
            }
            NoiseDtype::Float16 | NoiseDtype::BFloat16 => {
                // torch 2.15's reduced-precision kernel: 16 * ceil(n / 16) float32 uniforms in
                // an opmath buffer, every block transformed, the last block written at n - 16.
                let blocks = n.div_ceil(16);
                let mut buffer: Vec<f32> = (0..blocks * 16).map(|_| self.uniform_f32()).collect();
                for block in buffer.chunks_exact_mut(16) {
                    normal16(block);
                }
                let mut out = vec![0f32; n];
                let full = blocks - 1;
                out[..full * 16].copy_from_slice(&buffer[..full * 16]);
                out[n - 16..].copy_from_slice(&buffer[full * 16..]);
                out.into_iter().map(|v| dtype.round(v)).collect()
            }
        }
    }
}

/// Single-rounding fused multiply-add, as the AVX2 kernel's `vfmadd`.
#[inline]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

#[allow(clippy::excessive_precision)]
/// Natural log as avx_mathfun's `log256_ps` with GCC's FMA contractions (spec §5.5).
fn avx_log(u: f32) -> f32 {
    if u <= 0.0 {
        return f32::NAN;
    }
    let x = u.max(f32::from_bits(0x0080_0000));
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32;
    let mut x = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000);
    e += 1.0;
    let below = x < std::f32::consts::FRAC_1_SQRT_2;
    let tmp = if below { x } else { 0.0 };
    if below {
        e -= 1.0;
    }
    x += -1.0;
    x += tmp;
    let z = x * x;
    const P: [f32; 9] = [
        7.0376836292E-2,
        -1.1514610310E-1,
        1.1676998740E-1,
        -1.2420140846E-1,
        1.4249322787E-1,
        -1.6668057665E-1,
        2.0000714765E-1,
        -2.4999993993E-1,
        3.3333331174E-1,
    ];
    let mut y = P[0];
    for p in &P[1..] {
        y = fma(y, x, *p);
    }
    let eq1 = e * -2.12194440e-4;
    y *= x;
    y = fma(y, z, eq1);
    y = fma(-z, 0.5, y);
    x += y;
    fma(e, 0.693359375, x)
}

#[allow(clippy::excessive_precision)]
/// sin and cos as avx_mathfun's `sincos256_ps` with GCC's FMA contractions (spec §5.5).
fn avx_sincos(theta: f32) -> (f32, f32) {
    let mut sign_sin = theta.to_bits() & 0x8000_0000;
    let a = theta.abs();
    let y = a * 1.27323954473516;
    let j = (y as i32).wrapping_add(1);
    let jj = j & !1;
    let yf = jj as f32;
    sign_sin ^= ((j & 4) as u32) << 29;
    let poly_mask = (j & 2) == 0;
    let mut x = fma(yf, -0.785_156_25, a);
    x = fma(-2.4187564849853515625e-4, yf, x);
    x = fma(yf, -3.77489497744594108e-8, x);
    let sign_cos = ((!(jj.wrapping_sub(2))) & 4) as u32;
    let sign_cos = sign_cos << 29;
    let z = x * x;
    let hz = z * 0.5;
    let mut yc = fma(2.443315711809948E-5, z, -1.388731625493765E-3);
    yc = fma(yc, z, 4.166664568298827E-2);
    yc *= z;
    yc = fma(z, yc, -hz);
    yc += 1.0;
    let mut ys = fma(-1.9515295891E-4, z, 8.3321608736E-3);
    ys = fma(ys, z, -1.6666654611E-1);
    ys *= z;
    ys = fma(x, ys, x);
    let ysin2 = if poly_mask { ys } else { 0.0 };
    let ysin1 = if poly_mask { 0.0 } else { yc };
    let s = ysin2 + ysin1;
    let c = (ys - ysin2) + (yc - ysin1);
    (
        f32::from_bits(s.to_bits() ^ sign_sin),
        f32::from_bits(c.to_bits() ^ sign_cos),
    )
}

#[allow(clippy::excessive_precision)]
/// One 16-lane block of torch's AVX2 Box–Muller, in place: lanes j and j + 8 form a pair.
fn normal16(d: &mut [f32]) {
    let mut out = [0f32; 16];
    for j in 0..8 {
        let u1 = 1.0 - d[j];
        let theta = 6.2831855 * d[j + 8];
        let radius = (avx_log(u1) * -2.0).sqrt();
        let (s, c) = avx_sincos(theta);
        out[j] = radius * c;
        out[j + 8] = radius * s;
    }
    d.copy_from_slice(&out);
}

/// diffusers' `randn_tensor(shape, generator, dtype)` on the CPU, flat, in row-major order.
///
/// With one generator the whole tensor is one `torch.randn` call; with one generator per batch
/// item (`generators.len() == shape[0]`) each item is drawn from its own generator with shape
/// `(1,) + shape[1:]` and the items are concatenated, exactly as diffusers does.
pub fn randn_tensor(
    shape: &[usize],
    generators: &mut [TorchGenerator],
    dtype: NoiseDtype,
) -> Result<Vec<f32>, crate::SchedulerError> {
    let numel: usize = shape.iter().product();
    match generators {
        [] => Err(crate::SchedulerError::Generator(
            "randn_tensor needs at least one generator".into(),
        )),
        [single] => Ok(single.randn(numel, dtype)),
        many => {
            let batch = shape.first().copied().unwrap_or(1);
            if many.len() != batch {
                return Err(crate::SchedulerError::Generator(format!(
                    "a list of generators must have one per batch item: got {} generators for \
                     batch size {batch}",
                    many.len()
                )));
            }
            let per_item = numel.checked_div(batch).unwrap_or(0);
            let mut out = Vec::with_capacity(numel);
            for g in many.iter_mut() {
                out.extend(g.randn(per_item, dtype));
            }
            Ok(out)
        }
    }
}

/// Wraps flat row-major values into a float32 burn tensor of the given shape on `device`.
pub fn to_tensor<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>, crate::SchedulerError> {
    let numel: usize = shape.iter().product();
    if numel != values.len() {
        return Err(crate::SchedulerError::Shape(format!(
            "cannot make a tensor of shape {shape:?} ({numel} elements) from {} values",
            values.len()
        )));
    }
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Draws `randn(shape)` from the generators (or a fresh clock-seeded one when none is given,
/// as torch would use its global generator) as a burn tensor on `like`'s device.
pub(crate) fn noise_like<const D: usize>(
    like: &Tensor<D>,
    generators: Option<&mut [crate::TorchGenerator]>,
    dtype: crate::NoiseDtype,
) -> Result<Tensor<D>, crate::SchedulerError> {
    let dims = like.dims();
    let values = match generators {
        Some(gens) => crate::randn_tensor(&dims, gens, dtype)?,
        None => {
            // torch would draw from its unseeded global generator: results are not reproducible.
            tracing::debug!(
                "no generator passed to step; drawing noise from a clock-seeded generator"
            );
            let mut g = crate::TorchGenerator::from_entropy();
            crate::randn_tensor(&dims, std::slice::from_mut(&mut g), dtype)?
        }
    };
    crate::to_tensor(values, dims, &like.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_seed_42_starts_like_torch() {
        let mut g = TorchGenerator::new(42);
        // Values from the spec, checked against torch's uniforms there.
        assert_eq!(
            [g.next_u32(), g.next_u32(), g.next_u32()],
            [1_608_637_542, 3_421_126_067, 4_083_286_876]
        );
    }

    #[test]
    fn randn_seed_42_sd_latents_first_values_match_spec_bits() {
        let v = TorchGenerator::new(42).randn(4 * 64 * 64, NoiseDtype::Float32);
        let bits: Vec<u32> = v[..4].iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, [0x3ff6a529, 0x3fbe5f53, 0x3f669567, 0xc006c0db]);
    }
}
