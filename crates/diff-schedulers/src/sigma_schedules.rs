//! Sigma schedules (float64, as diffusers computes them with numpy): karras, exponential and
//! beta sigmas, the flag check between them, and the k-diffusion schedule (interpolated
//! training sigmas, optionally replaced, with timesteps re-derived from them).

use crate::SchedulerError;
use crate::array_math::{np_linspace, np_round};
use crate::betas::train_sigmas;
use crate::float_kernels::numpy_log_f32;
use crate::interpolation::{np_interp, sigma_to_t};
use crate::timestep_spacing::{Spacing, spacing_timesteps};

/// `_convert_to_karras` (rho = 7), float64.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize, rho: f64) -> Vec<f64> {
    let ramp = np_linspace(0.0, 1.0, n);
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    ramp.iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// `_convert_to_exponential`, float64.
pub(crate) fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// `ln B(0.6, 0.6)`: diffusers' `_convert_to_beta` always uses alpha = beta = 0.6.
const LN_BETA_06_06: f64 = 0.8818418061417858;

/// The continued fraction of the regularized incomplete beta function (modified Lentz).
fn incomplete_beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..400 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(0.6, 0.6).
fn beta_cdf_06(x: f64) -> f64 {
    let (a, b) = (0.6, 0.6);
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (a * x.ln() + b * (1.0 - x).ln() - LN_BETA_06_06).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * incomplete_beta_cf(a, b, x) / a
    } else {
        1.0 - front * incomplete_beta_cf(b, a, 1.0 - x) / b
    }
}

/// `scipy.stats.beta.ppf(q, 0.6, 0.6)`: bisection on the CDF down to float64 resolution.
pub(crate) fn beta_ppf_06(q: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf_06(mid) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `_convert_to_beta` (alpha = beta = 0.6), float64:
/// σ_min + ppf(1 − linspace(0, 1, n))·(σ_max − σ_min).
pub(crate) fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|t| sigma_min + beta_ppf_06(1.0 - t) * (sigma_max - sigma_min))
        .collect()
}

/// Checks that at most one of karras / exponential / beta sigmas is set.
pub(crate) fn check_sigma_flags(
    class: &'static str,
    karras: bool,
    exponential: bool,
    beta: bool,
) -> Result<(), SchedulerError> {
    if [karras, exponential, beta].iter().filter(|b| **b).count() > 1 {
        return Err(SchedulerError::InvalidConfig {
            class,
            message:
                "only one of `use_beta_sigmas`, `use_exponential_sigmas`, `use_karras_sigmas` \
                      can be used"
                    .into(),
        });
    }
    Ok(())
}

/// The sigma schedule of the k-diffusion style schedulers (LMS, Heun, KDPM2, KDPM2 ancestral):
/// family-A float32 timesteps, sigmas interpolated in float64, optionally replaced by karras /
/// exponential / beta sigmas with timesteps re-derived by `_sigma_to_t` (rounded when `round_karras`).
/// Returns (timesteps, sigmas without the final entry, float32 log training sigmas).
#[allow(clippy::too_many_arguments)]
pub(crate) fn k_schedule(
    spacing: Spacing,
    alphas_cumprod: &[f32],
    n: usize,
    steps_offset: i64,
    karras: bool,
    exponential: bool,
    beta: bool,
    round_karras: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
    let train_steps = alphas_cumprod.len();
    let ts: Vec<f64> = spacing_timesteps(spacing, train_steps, n, steps_offset, false)
        .into_iter()
        .map(|t| f64::from(t as f32))
        .collect();
    k_sigmas(
        ts,
        alphas_cumprod,
        n,
        karras,
        exponential,
        beta,
        round_karras,
    )
}

/// The second half of [`k_schedule`], for schedulers that keep their spaced timesteps in
/// float64 (DPMSolverSDE) rather than rounding them to float32 first: the training sigmas
/// interpolated at `ts`, optionally replaced by karras / exponential / beta sigmas with the
/// timesteps re-derived by `_sigma_to_t` (rounded when `round_karras`).
/// Returns (timesteps, sigmas without the final entry, float32 log training sigmas).
pub(crate) fn k_sigmas(
    mut ts: Vec<f64>,
    alphas_cumprod: &[f32],
    n: usize,
    karras: bool,
    exponential: bool,
    beta: bool,
    round_karras: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f32>) {
    let train = train_sigmas(alphas_cumprod);
    let log_sigmas: Vec<f32> = train.iter().map(|s| numpy_log_f32(*s)).collect();
    let mut sig = np_interp(&ts, &train);
    let (min, max) = (
        sig.last().copied().unwrap_or(0.0),
        sig.first().copied().unwrap_or(0.0),
    );
    if karras {
        sig = karras_sigmas(min, max, n, 7.0);
        ts = sig
            .iter()
            .map(|s| {
                let t = sigma_to_t(*s, &log_sigmas);
                if round_karras { np_round(t) } else { t }
            })
            .collect();
    } else if exponential {
        sig = exponential_sigmas(min, max, n);
        ts = sig.iter().map(|s| sigma_to_t(*s, &log_sigmas)).collect();
    } else if beta {
        sig = beta_sigmas(min, max, n);
        ts = sig.iter().map(|s| sigma_to_t(*s, &log_sigmas)).collect();
    }
    (ts, sig, log_sigmas)
}

/// `init_noise_sigma` of the k-diffusion style schedulers: max σ for linspace / trailing
/// spacing, √(max σ² + 1) for leading.
pub(crate) fn k_init_noise_sigma(sigmas: &[f32], spacing: Spacing) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        Spacing::Linspace | Spacing::Trailing => max,
        Spacing::Leading => (max * max + 1.0).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_ppf_matches_scipy() {
        // scipy.stats.beta.ppf(q, 0.6, 0.6), scipy 1.17.1; tolerance 1e-13 absolute.
        for (q, want) in [
            (0.999, 0.9999814412614826),
            (0.9, 0.9604155944112192),
            (0.75, 0.824319621347305),
            (0.5, 0.5000000000000001),
            (0.3, 0.23401700387523572),
            (0.1, 0.03958440558878085),
            (0.01, 0.0008612388215429059),
            (1e-6, 1.8558824624053043e-10),
        ] {
            let got = beta_ppf_06(q);
            assert!((got - want).abs() <= 1e-13, "q {q}: {got} vs {want}");
        }
    }
}
