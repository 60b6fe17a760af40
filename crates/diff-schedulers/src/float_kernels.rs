//! The float kernels that diffusers' `set_timesteps` runs on float32 values, emulated bit for
//! bit where their algorithm is public, and as close as is possible where it is not.
//!
//! Which kernel computes what (numpy 2.4 / torch 2.15 x86-64 wheels, measured on an AVX-512
//! CPU with the vectors of `tests/fixtures/11-scheduler-logs`):
//! - `np.log` of a float32 array or scalar (the training `log_sigmas`, `_sigma_to_t`'s log of
//!   a float32 sigma) is numpy's own SIMD `simd_log_FLOAT` (AVX2+FMA3 and AVX512F share the
//!   algorithm): [`numpy_log_f32`] reproduces it exactly.
//! - `tensor.log()` / `tensor.exp()` of a float32 CPU tensor (KDPM2's interpolated sigmas,
//!   the `0.25·log σ` timesteps of Euler `timestep_type="continuous"` and EDM Euler, EDM's
//!   `linspace(...).exp()`) are not SLEEF on these wheels: ATen's `vml::vlog` / `vml::vexp`
//!   call Intel MKL VML (`vmsLn` / `vmsExp` in `VML_HA` mode) for every length, from one
//!   element up. MKL is closed source and picks its code path per CPU (forcing
//!   `MKL_ENABLE_INSTRUCTIONS=AVX2` on the same machine changes diffusers' own KDPM2
//!   timesteps), so it cannot be re-implemented from a published algorithm. Its results are
//!   faithful with an error just above half an ulp, so [`torch_log_f32`] / [`torch_exp_f32`]
//!   return the correctly rounded value, which equals MKL's except on inputs whose exact
//!   result lies within a few hundredths of an ulp of a rounding tie (measured: 284 of
//!   350,000 logs, 3,489 of 300,000 exps; the test lists them all).
//! - float64 `np.log` / `np.exp` / `**` (karras and exponential sigmas, `_sigma_to_t` of a
//!   float64 sigma) use Intel SVML on AVX-512 CPUs and the C library elsewhere; the Rust code
//!   uses the C library's (`f64::ln`, `f64::exp`, `f64::powf`). They differ in the last bit of
//!   a float64 on a small fraction of inputs, which the float32 rounding of the timesteps
//!   absorbs (every recorded timestep matches).

/// numpy's float32 `log` on x86-64 with AVX2+FMA3 or AVX512F (numpy 2.x
/// `simd_log_FLOAT`): a 5/5 rational approximation on the mantissa with fused multiply-adds.
/// It is not correctly rounded (up to ~4 ulp), and diffusers' `np.log` of float32 sigma arrays
/// goes through it, so timesteps derived from `log_sigmas` need this exact function.
#[allow(clippy::excessive_precision)]
pub(crate) fn numpy_log_f32(x: f32) -> f32 {
    if x.is_nan() {
        return f32::NAN;
    }
    if x < 0.0 {
        return -f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x == f32::INFINITY {
        return f32::INFINITY;
    }
    // Denormals are scaled by 2^100 first, as numpy's AVX2 path does.
    let (v, bias) = if x < f32::MIN_POSITIVE {
        (x * f32::from_bits(0x7180_0000), 100.0)
    } else {
        (x, 0.0)
    };
    let bits = v.to_bits();
    let mut exponent = ((bits >> 23) as i32 - 0x7e) as f32 - bias;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | (126 << 23));
    if m <= std::f32::consts::FRAC_1_SQRT_2 {
        m += m;
        exponent -= 1.0;
    }
    let m = m - 1.0;
    const P: [f32; 6] = [
        0.000000000000000000000e+00,
        9.999999999999998702752e-01,
        2.112677543073053063722e+00,
        1.480000633576506585156e+00,
        3.808837741388407920751e-01,
        2.589979117907922693523e-02,
    ];
    const Q: [f32; 6] = [
        1.000000000000000000000e+00,
        2.612677543073109236779e+00,
        2.453006071784736363091e+00,
        9.864942958519418960339e-01,
        1.546476374983906719538e-01,
        5.875095403124574342950e-03,
    ];
    let mut num = P[5].mul_add(m, P[4]);
    let mut den = Q[5].mul_add(m, Q[4]);
    for k in (0..4).rev() {
        num = num.mul_add(m, P[k]);
        den = den.mul_add(m, Q[k]);
    }
    exponent.mul_add(std::f32::consts::LN_2, num / den)
}

/// float32 `log` of a CPU torch tensor: the correctly rounded logarithm (see the module doc
/// for how it relates to MKL's `vmsLn`, which torch calls).
pub(crate) fn torch_log_f32(x: f32) -> f32 {
    // The float64 logarithm is accurate to well under 2^-29 float32 ulp, so rounding it once
    // more gives the correctly rounded float32 except on inputs closer to a tie than that.
    f64::from(x).ln() as f32
}

/// float32 `exp` of a CPU torch tensor: the correctly rounded exponential (MKL's `vmsExp`
/// agrees except near rounding ties; see the module doc).
pub(crate) fn torch_exp_f32(x: f32) -> f32 {
    f64::from(x).exp() as f32
}

#[cfg(test)]
mod tests {
    //! Against `tests/fixtures/11-scheduler-logs/kernels.json` (numpy 2.4.6, torch 2.15.0).
    //! The inputs are rebuilt here with the generator's recipe.
    use super::*;
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    fn fixture() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/11-scheduler-logs/kernels.json"
        );
        let text = std::fs::read_to_string(path).expect("kernels.json is committed");
        serde_json::from_str(&text).expect("kernels.json is valid JSON")
    }

    /// splitmix64, as `generate.py` draws its random inputs.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    fn sweep(lo: f32, hi: f32, count: u32) -> Vec<u32> {
        let (lo, hi) = (lo.to_bits(), hi.to_bits());
        let step = (hi - lo) / count;
        (0..count).map(|i| lo + i * step).collect()
    }

    fn inputs_log() -> Vec<f32> {
        let mut bits = sweep(1e-3, 1e3, 200_000);
        bits.extend(sweep(0.9, 1.1, 50_000));
        let mut rng = SplitMix(1);
        bits.extend(
            (0..100_000).map(|_| 0x0080_0000 + (rng.next() % (0x7F80_0000 - 0x0080_0000)) as u32),
        );
        bits.into_iter().map(f32::from_bits).collect()
    }

    fn inputs_exp() -> Vec<f32> {
        let pos = sweep(1e-4, 8.0, 100_000);
        let neg: Vec<u32> = pos.iter().map(|b| b | 0x8000_0000).collect();
        let mut rng = SplitMix(2);
        let rand = (0..100_000).map(|_| {
            let unit = (rng.next() >> 11) as f64 * 2f64.powi(-53);
            (-87.0 + unit * 175.0) as f32
        });
        pos.into_iter()
            .chain(neg)
            .map(f32::from_bits)
            .chain(rand)
            .collect()
    }

    fn sha256(values: &[f32]) -> String {
        let mut h = Sha256::new();
        for v in values {
            h.update(v.to_le_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn pairs(v: &Value) -> Vec<(usize, u32)> {
        v.as_array()
            .expect("a list of [index, bits]")
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().expect("index") as usize,
                    p[1].as_u64().expect("bits") as u32,
                )
            })
            .collect()
    }

    #[test]
    fn numpy_log_f32_matches_numpy_bit_for_bit() {
        let fx = fixture();
        let x = inputs_log();
        assert_eq!(x.len() as u64, fx["n_log"].as_u64().expect("n_log"));
        let got: Vec<f32> = x.iter().map(|v| numpy_log_f32(*v)).collect();
        // Tolerance: none, every bit. The sample names the first differing inputs.
        for (i, bits) in pairs(&fx["numpy_log_f32"]["sample"]) {
            assert_eq!(got[i].to_bits(), bits, "np.log({:e}) (input {i})", x[i]);
        }
        assert_eq!(
            sha256(&got),
            fx["numpy_log_f32"]["sha256"].as_str().expect("sha256")
        );
    }

    /// Our correctly rounded kernel with torch's recorded value put back at the listed
    /// exceptions must hash to torch's whole output: so torch equals it everywhere else.
    fn check_torch_kernel(name: &str, x: &[f32], f: fn(f32) -> f32) -> usize {
        let fx = fixture();
        let mut got: Vec<f32> = x.iter().map(|v| f(*v)).collect();
        let exceptions = pairs(&fx[name]["exceptions"]);
        for &(i, bits) in &exceptions {
            let ours = got[i].to_bits();
            // Each exception is a one-ulp disagreement at a near-tie, never more.
            assert_eq!(
                ours.abs_diff(bits),
                1,
                "{name}({:e}): ours {ours:#x}, torch {bits:#x}",
                x[i]
            );
            got[i] = f32::from_bits(bits);
        }
        assert_eq!(
            sha256(&got),
            fx[name]["sha256"].as_str().expect("sha256"),
            "{name}"
        );
        exceptions.len()
    }

    #[test]
    fn torch_log_f32_equals_torch_except_at_listed_near_ties() {
        let x = inputs_log();
        let n = check_torch_kernel("torch_log_f32", &x, torch_log_f32);
        // Measured: 284 of 350,000 (0.08 %); a larger count would mean a different kernel.
        assert!(n * 1000 < x.len(), "{n} exceptions of {}", x.len());
    }

    #[test]
    fn torch_exp_f32_equals_torch_except_at_listed_near_ties() {
        let x = inputs_exp();
        let n = check_torch_kernel("torch_exp_f32", &x, torch_exp_f32);
        // Measured: 3,489 of 300,000 (1.2 %).
        assert!(n * 50 < x.len(), "{n} exceptions of {}", x.len());
    }
}
