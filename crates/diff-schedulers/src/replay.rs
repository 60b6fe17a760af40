//! Replaying a recorded denoising trace through a scheduler (the CLI's `schedule --replay`,
//! and a way to compare a Rust loop with a Python one without running a model).

use crate::{Scheduler, SchedulerError, StepOptions, TorchGenerator, to_tensor};
use burn::tensor::Device;

/// The samples a replay produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOutput {
    /// The output of every `step`, `T × B·C·H·W` values, row-major.
    pub prev_samples: Vec<f32>,
    /// The last of them.
    pub final_sample: Vec<f32>,
}

/// Runs the loop a pipeline runs, with recorded model outputs in place of the model:
///
/// for each index `i` of `scheduler.timesteps()` (after `set_timesteps`), with `t` that
/// timestep: `scale_model_input(x, t)` is called (its result is not used: the recorded output
/// stands for the model's answer to it, but the call keeps the scheduler's state as in a
/// pipeline), then `x = step(model_outputs[i], t, x, generator)`; every `x` is collected.
///
/// `sample` is `[B, C, H, W]` and used as given (already multiplied by `init_noise_sigma`);
/// `model_outputs` holds `T` such tensors back to back, one per timestep, in loop order.
/// Step noise (ancestral / SDE schedulers) comes from one `torch.Generator` seeded `seed`.
pub fn replay_trace(
    scheduler: &mut Scheduler,
    sample: &[f32],
    shape: [usize; 4],
    model_outputs: &[f32],
    seed: u64,
    options: &StepOptions,
) -> Result<ReplayOutput, SchedulerError> {
    let numel: usize = shape.iter().product();
    if sample.len() != numel {
        return Err(SchedulerError::Shape(format!(
            "trace `sample` has {} values, expected {numel} for shape {shape:?}",
            sample.len()
        )));
    }
    let steps = scheduler.timesteps().to_vec();
    let expected = steps.len() * numel;
    if model_outputs.len() != expected {
        return Err(SchedulerError::Shape(format!(
            "trace `model_outputs` has {} values; the scheduler has {} timesteps, so expected \
             [{}, {}, {}, {}, {}] = {expected}",
            model_outputs.len(),
            steps.len(),
            steps.len(),
            shape[0],
            shape[1],
            shape[2],
            shape[3]
        )));
    }
    // The replay runs on the CPU backend whatever GPU features are compiled in: it is a parity tool.
    let device = Device::flex();
    let mut generator = [TorchGenerator::new(seed)];
    let mut x = to_tensor(sample.to_vec(), shape, &device)?;
    let mut prev_samples = Vec::with_capacity(expected);
    for (i, t) in steps.iter().enumerate() {
        let _scaled = scheduler.scale_model_input(x.clone(), *t)?;
        let out = to_tensor(
            model_outputs[i * numel..(i + 1) * numel].to_vec(),
            shape,
            &device,
        )?;
        x = scheduler
            .step(out, *t, x, options, Some(&mut generator))?
            .prev_sample;
        prev_samples.extend(crate::array_math::tensor_values(&x)?);
    }
    let final_sample = prev_samples[prev_samples.len().saturating_sub(numel)..].to_vec();
    Ok(ReplayOutput {
        prev_samples,
        final_sample,
    })
}
