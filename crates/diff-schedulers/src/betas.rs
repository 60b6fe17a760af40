//! The betas / alphas tables of a config (float32, as torch builds them): `beta_schedule`,
//! `trained_betas`, `rescale_zero_terminal_snr`, `alphas_cumprod` and the training sigmas.

use crate::array_math::{torch_cumprod, torch_linspace_f32};
use crate::{SchedulerError, unsupported};

/// `betas_for_alpha_bar` (Python doubles, then float32).
pub(crate) fn betas_for_alpha_bar(n: usize, transform: &str) -> Vec<f32> {
    let alpha_bar = |t: f64| -> f64 {
        match transform {
            "exp" => (t * -12.0).exp(),
            "laplace" => {
                let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
                let snr = lmb.exp();
                (snr / (1.0 + snr)).sqrt()
            }
            _ => ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                .cos()
                .powi(2),
        }
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// The betas of a config (`trained_betas` or `beta_schedule`), as float32 torch makes them.
/// `extra_schedules` lists the schedules beyond linear / scaled_linear / squaredcos_cap_v2
/// that the class accepts (`"exp"` for Heun, `"sigmoid"` for DDPM).
pub(crate) fn make_betas(
    class: &'static str,
    schedule: &str,
    beta_start: f64,
    beta_end: f64,
    n: usize,
    trained: Option<&[f64]>,
    extra_schedules: &[&str],
) -> Result<Vec<f32>, SchedulerError> {
    if let Some(trained) = trained {
        return Ok(trained.iter().map(|b| *b as f32).collect());
    }
    match schedule {
        "linear" => Ok(torch_linspace_f32(beta_start as f32, beta_end as f32, n)),
        "scaled_linear" => {
            Ok(
                torch_linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
            )
        }
        "squaredcos_cap_v2" => Ok(betas_for_alpha_bar(n, "cosine")),
        "exp" if extra_schedules.contains(&"exp") => Ok(betas_for_alpha_bar(n, "exp")),
        "sigmoid" if extra_schedules.contains(&"sigmoid") => {
            let xs = torch_linspace_f32(-6.0, 6.0, n);
            let (start, end) = (beta_start as f32, beta_end as f32);
            Ok(xs
                .into_iter()
                .map(|x| (1.0 / (1.0 + (-x).exp())) * (end - start) + start)
                .collect())
        }
        other => Err(unsupported(class, "beta_schedule", other)),
    }
}

/// `rescale_zero_terminal_snr(betas)`, float32 as torch does it.
pub(crate) fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let cumprod = torch_cumprod(&alphas);
    let mut sqrt: Vec<f32> = cumprod.iter().map(|a| a.sqrt()).collect();
    let (Some(&s0), Some(&st)) = (sqrt.first(), sqrt.last()) else {
        return Vec::new();
    };
    let scale = s0 / (s0 - st);
    for v in sqrt.iter_mut() {
        *v -= st;
        *v *= scale;
    }
    let bar: Vec<f32> = sqrt.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// `alphas_cumprod` from betas: `cumprod(1 - betas)` in torch's way.
pub(crate) fn alphas_cumprod(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    torch_cumprod(&alphas)
}

/// The betas fields every `*SchedulerConfig` has, borrowed for the table builders.
pub(crate) struct BetaConfig<'a> {
    /// `beta_schedule`.
    pub schedule: &'a str,
    /// `beta_start`.
    pub start: f64,
    /// `beta_end`.
    pub end: f64,
    /// `num_train_timesteps`.
    pub num_train_timesteps: usize,
    /// `trained_betas`.
    pub trained: Option<&'a [f64]>,
}

/// A [`BetaConfig`] borrowing the betas fields of any scheduler config struct (they share the
/// key names).
macro_rules! beta_config {
    ($config:expr) => {
        crate::betas::BetaConfig {
            schedule: &$config.beta_schedule,
            start: $config.beta_start,
            end: $config.beta_end,
            num_train_timesteps: $config.num_train_timesteps,
            trained: $config.trained_betas.as_deref(),
        }
    };
}
pub(crate) use beta_config;

/// `alphas_cumprod` of a config: the betas of `beta_schedule` (or `trained_betas`; the
/// schedules in `extra_schedules` are allowed beyond the common three), optionally rescaled
/// to zero terminal SNR, then `cumprod(1 - betas)`.
pub(crate) fn alphas_cumprod_of(
    class: &'static str,
    betas: &BetaConfig<'_>,
    rescale_betas_zero_snr: bool,
    extra_schedules: &[&str],
) -> Result<Vec<f32>, SchedulerError> {
    let mut b = make_betas(
        class,
        betas.schedule,
        betas.start,
        betas.end,
        betas.num_train_timesteps,
        betas.trained,
        extra_schedules,
    )?;
    if rescale_betas_zero_snr {
        b = rescale_zero_terminal_snr(&b);
    }
    Ok(alphas_cumprod(&b))
}

/// `alphas_cumprod` as the Euler / Euler-ancestral / DPM-Solver multistep / UniPC `__init__`
/// builds it: with `rescale_betas_zero_snr` the betas are rescaled to zero terminal SNR and the
/// last ᾱ is then set to 2⁻²⁴ (float16's smallest subnormal), so that σ_max stays finite.
pub(crate) fn alphas_cumprod_zero_snr(
    class: &'static str,
    betas: &BetaConfig<'_>,
    rescale_betas_zero_snr: bool,
) -> Result<Vec<f32>, SchedulerError> {
    let mut ac = alphas_cumprod_of(class, betas, rescale_betas_zero_snr, &[])?;
    if rescale_betas_zero_snr && let Some(last) = ac.last_mut() {
        *last = 2f32.powi(-24);
    }
    Ok(ac)
}

/// Training sigmas `((1 - ᾱ) / ᾱ) ** 0.5` in float32, ascending in t.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_linear_betas_give_sd_alphas_cumprod() {
        let betas = make_betas("t", "scaled_linear", 0.00085, 0.012, 1000, None, &[]).unwrap();
        let ac = alphas_cumprod(&betas);
        // Reference values from the spec (float32 torch).
        assert_eq!(ac[999], 0.004_660_095);
        let s = train_sigmas(&ac);
        assert_eq!(s[999], 14.614_647);
        // torch gives 0.029167533 (the spec rounds it to ...535), see the Euler fixture cases.
        assert_eq!(s[0], 0.029_167_533);
    }
}
