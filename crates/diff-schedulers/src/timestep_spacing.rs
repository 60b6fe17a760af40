//! `timestep_spacing` and the inference timesteps it gives (numpy float64, as diffusers'
//! `set_timesteps`), plus the training timesteps a scheduler holds before `set_timesteps`.

use crate::array_math::{np_arange, np_linspace, np_round};
use crate::{SchedulerError, unsupported};

/// `timestep_spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// `linspace`: evenly spread over [0, T-1].
    Linspace,
    /// `leading`: multiples of T // n, plus `steps_offset`.
    Leading,
    /// `trailing`: counted down from T, minus one.
    Trailing,
}

impl Spacing {
    pub(crate) fn parse(class: &'static str, value: &str) -> Result<Self, SchedulerError> {
        match value {
            "linspace" => Ok(Spacing::Linspace),
            "leading" => Ok(Spacing::Leading),
            "trailing" => Ok(Spacing::Trailing),
            _ => Err(unsupported(class, "timestep_spacing", value)),
        }
    }
}

/// The timesteps before `set_timesteps`: `np.linspace(0, N - 1, N)[::-1]` as float32.
pub(crate) fn initial_timesteps(num_train_timesteps: usize) -> Vec<f64> {
    np_linspace(
        0.0,
        num_train_timesteps.saturating_sub(1) as f64,
        num_train_timesteps,
    )
    .into_iter()
    .rev()
    .map(|t| f64::from(t as f32))
    .collect()
}

/// Family-A timesteps (DDIM, DDPM, PNDM, LMS, Euler, Heun, KDPM2): float64 values, before the
/// caller's cast. `round` rounds the linspace spacing (integer schedulers).
pub(crate) fn spacing_timesteps(
    spacing: Spacing,
    train_steps: usize,
    n: usize,
    steps_offset: i64,
    round_linspace: bool,
) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut v = np_linspace(0.0, (train_steps - 1) as f64, n);
            if round_linspace {
                v.iter_mut().for_each(|x| *x = np_round(*x));
            }
            v.reverse();
            v
        }
        Spacing::Leading => {
            let ratio = train_steps.checked_div(n).unwrap_or(0);
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f64 + steps_offset as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = train_steps as f64 / n as f64;
            np_arange(train_steps as f64, 0.0, -ratio)
                .into_iter()
                .map(|x| np_round(x) - 1.0)
                .collect()
        }
    }
}
