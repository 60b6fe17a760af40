//! Timestep preparation the flows share (diffusers' step "4. Prepare timesteps"):
//! `retrieve_timesteps`, img2img's `get_timesteps` (strength), and SDXL's
//! `denoising_start` / `denoising_end` cutoffs.

use crate::call::{CallArgs, py_float};
use crate::error::PipelineError;
use diff_schedulers::{Scheduler, TimestepsRequest};

/// diffusers' `retrieve_timesteps`: `set_timesteps(num_inference_steps)`, or the custom
/// `timesteps` / `sigmas` of the call (only one of them). Returns `num_inference_steps` (the
/// schedule's length with custom values).
pub(crate) fn retrieve_timesteps(
    scheduler: &mut Scheduler,
    args: &CallArgs,
) -> Result<usize, PipelineError> {
    match (&args.timesteps, &args.sigmas) {
        (None, None) => {
            scheduler.set_timesteps(args.num_inference_steps)?;
            Ok(args.num_inference_steps)
        }
        (Some(_), Some(_)) => Err(PipelineError::arg(
            "timesteps",
            "Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom timestep schedule",
        )),
        (timesteps, sigmas) => {
            scheduler.set_timesteps_with(&TimestepsRequest {
                timesteps: timesteps.clone(),
                sigmas: sigmas.clone(),
                ..TimestepsRequest::default()
            })?;
            Ok(scheduler.timesteps().len())
        }
    }
}

/// img2img's `get_timesteps`: the tail of the schedule for `strength`, and sets the
/// scheduler's begin index. Returns the timesteps to run.
pub(crate) fn strength_timesteps(
    scheduler: &mut Scheduler,
    num_inference_steps: usize,
    strength: f32,
) -> Vec<f64> {
    let init = init_timestep(num_inference_steps, strength);
    let t_start = num_inference_steps.saturating_sub(init);
    let order = scheduler.order();
    let all = scheduler.timesteps().to_vec();
    let begin = (t_start * order).min(all.len());
    scheduler.set_begin_index(begin);
    all.get(begin..).map(<[f64]>::to_vec).unwrap_or_default()
}

/// `init_timestep = min(int(num_inference_steps * strength), num_inference_steps)`: the number
/// of steps strength leaves.
pub(crate) fn init_timestep(num_inference_steps: usize, strength: f32) -> usize {
    ((num_inference_steps as f64 * py_float(strength)) as usize).min(num_inference_steps)
}

/// diffusers' error when strength leaves no step; inpaint also checks the step count strength
/// leaves (`num_inference_steps - t_start`), which is 0 where PNDM's schedule still has a
/// timestep, while img2img only fails on an empty schedule.
pub(crate) fn check_steps_left(
    timesteps: &[f64],
    no_step_left: bool,
    strength: f32,
) -> Result<(), PipelineError> {
    if timesteps.is_empty() || no_step_left {
        return Err(PipelineError::arg(
            "strength",
            format!(
                "After adjusting the num_inference_steps by strength parameter: {strength}, the number of pipeline steps is 0 which is < 1 and not appropriate for this pipeline."
            ),
        ));
    }
    Ok(())
}

/// `strength` within [0, 1] (`check_inputs`).
pub(crate) fn check_strength(strength: f32) -> Result<(), PipelineError> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(PipelineError::arg(
            "strength",
            format!("the value of strength should be in [0.0, 1.0] but is {strength}"),
        ));
    }
    Ok(())
}

/// `num_train_timesteps` of the scheduler config (1000 when absent).
pub(crate) fn num_train_timesteps(scheduler: &Scheduler) -> f64 {
    scheduler
        .config_json()
        .ok()
        .and_then(|c| {
            c.get("num_train_timesteps")
                .and_then(serde_json::Value::as_f64)
        })
        .unwrap_or(1000.0)
}

/// SDXL's discrete cutoff `int(round(T - fraction * T))` (Python's `round`: ties to even).
pub(crate) fn timestep_cutoff(scheduler: &Scheduler, fraction: f32) -> f64 {
    let t = num_train_timesteps(scheduler);
    (t - py_float(fraction) * t).round_ties_even()
}

/// SDXL img2img / inpaint `get_timesteps`: the tail of the schedule for `strength`, or (with a
/// valid `denoising_start`) the timesteps below `denoising_start`'s cutoff, strength ignored.
/// Sets the scheduler's begin index as diffusers does.
pub(crate) fn xl_get_timesteps(
    scheduler: &mut Scheduler,
    num_inference_steps: usize,
    strength: f32,
    denoising_start: Option<f32>,
) -> Vec<f64> {
    let Some(start) = denoising_start else {
        return strength_timesteps(scheduler, num_inference_steps, strength);
    };
    let cutoff = timestep_cutoff(scheduler, start);
    let all = scheduler.timesteps().to_vec();
    let mut n = all.iter().filter(|t| **t < cutoff).count();
    // A second-order scheduler duplicates every timestep but the first: an even count would
    // cut between the two derivative evaluations of one step.
    if scheduler.order() == 2 && n % 2 == 0 {
        n += 1;
    }
    let t_start = all.len().saturating_sub(n);
    scheduler.set_begin_index(t_start);
    all.get(t_start..).map(<[f64]>::to_vec).unwrap_or_default()
}

/// SDXL's `denoising_end`: keep the timesteps at or above its cutoff.
pub(crate) fn apply_denoising_end(
    scheduler: &Scheduler,
    timesteps: &mut Vec<f64>,
    denoising_end: Option<f32>,
) {
    if let Some(end) = denoising_end {
        let cutoff = timestep_cutoff(scheduler, end);
        let keep = timesteps.iter().filter(|t| **t >= cutoff).count();
        timesteps.truncate(keep);
    }
}
