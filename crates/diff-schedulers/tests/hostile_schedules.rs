//! Issue 18: scheduler settings whose schedule the loop cannot run to its end (more steps than
//! trained timesteps, a `leading` spacing with a step ratio of 0, a `steps_offset` past the last
//! trained timestep) are refused by `set_timesteps` with an error naming the class and the
//! settings, not an internal step-index message halfway through the loop (diffusers fails
//! there with an `IndexError`). Every other combination steps to the end.

use diff_schedulers::{SCHEDULER_CLASSES, Scheduler, SchedulerError, StepOptions};
use serde_json::{Map, Value, json};

/// Builds `class` with `key: value`, sets `steps` and runs the whole loop on zeros.
fn run(class: &str, key: &str, value: &Value, steps: usize) -> Result<(), SchedulerError> {
    let mut config = Map::new();
    config.insert("_class_name".into(), json!(class));
    config.insert(key.into(), value.clone());
    let mut s = Scheduler::from_config(&config)?;
    s.set_timesteps(steps)?;
    let device = burn::tensor::Device::default();
    let mut sample = burn::tensor::Tensor::<4>::zeros([1, 1, 2, 2], &device);
    for t in s.timesteps().to_vec() {
        let input = s.scale_model_input(sample.clone(), t)?;
        sample = s
            .step(input, t, sample, &StepOptions::default(), None)?
            .prev_sample;
    }
    Ok(())
}

#[test]
fn schedules_the_loop_cannot_finish_are_refused_naming_class_and_setting() {
    let cases = [
        ("num_train_timesteps", json!(1), 10),
        ("num_train_timesteps", json!(5), 10),
        ("timestep_spacing", json!("leading"), 2000),
        ("steps_offset", json!(5000), 10),
        ("use_karras_sigmas", json!(true), 1500),
    ];
    let mut refused = 0;
    for class in SCHEDULER_CLASSES {
        for (key, value, steps) in &cases {
            let Err(err) = run(class, key, value, *steps) else {
                continue;
            };
            let msg = err.to_string();
            assert!(
                !msg.contains("step index") && msg.contains(class),
                "{class} {key}={value} steps={steps}: {msg}"
            );
            if matches!(err, SchedulerError::InvalidConfig { .. }) {
                assert!(
                    msg.contains(key) || msg.contains("num_train_timesteps"),
                    "{class} {key}={value} steps={steps}: {msg}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 20, "only {refused} refusals");
    // A regular schedule of every class still runs to the end.
    for class in SCHEDULER_CLASSES {
        run(class, "num_train_timesteps", &json!(1000), 4)
            .unwrap_or_else(|e| panic!("{class}: {e}"));
    }
}
