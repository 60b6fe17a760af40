//! Bad or unsupported options are typed errors naming the class, key and value, never a panic
//! and never silently ignored.

use diff_schedulers::{Scheduler, SchedulerError, StepOptions};
use serde_json::{Map, Value, json};

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[test]
fn unipc_solver_p_is_reported_as_unsupported() {
    let err = Scheduler::from_config_as(
        "UniPCMultistepScheduler",
        &Map::new(),
        &obj(json!({"solver_p": {"_class_name": "DDIMScheduler"}})),
    )
    .expect_err("a nested solver is not supported");
    match err {
        SchedulerError::Unsupported { class, key, .. } => {
            assert_eq!(class, "UniPCMultistepScheduler");
            assert_eq!(key, "solver_p");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
}

#[test]
fn unknown_option_values_are_typed_errors_that_name_the_key() {
    for (class, key, value) in [
        ("DDIMScheduler", "prediction_type", "noise"),
        ("EulerDiscreteScheduler", "timestep_spacing", "sideways"),
        ("DPMSolverMultistepScheduler", "algorithm_type", "magic"),
        ("DDPMScheduler", "beta_schedule", "cubic"),
        ("UniPCMultistepScheduler", "solver_type", "bh9"),
    ] {
        let overrides = obj(json!({ key: value }));
        let err = Scheduler::from_config_as(class, &Map::new(), &overrides).expect_err("rejected");
        let msg = err.to_string();
        assert!(
            msg.contains(class) && msg.contains(key) && msg.contains(value),
            "{msg}"
        );
    }
}

#[test]
fn inconsistent_and_unknown_configs_are_errors() {
    let err = Scheduler::from_config_as(
        "DPMSolverMultistepScheduler",
        &Map::new(),
        &obj(json!({"algorithm_type": "dpmsolver", "final_sigmas_type": "zero"})),
    );
    assert!(matches!(err, Err(SchedulerError::InvalidConfig { .. })));
    assert!(matches!(
        Scheduler::from_config_as("DPMSolverSDEScheduler2", &Map::new(), &Map::new()),
        Err(SchedulerError::UnknownClass(_))
    ));
    // diffusers accepts `prediction_type="sample"` at construction and raises
    // NotImplementedError in `step`; the step here is a typed error.
    let mut sde = Scheduler::from_config_as(
        "DPMSolverSDEScheduler",
        &Map::new(),
        &obj(json!({"prediction_type": "sample", "noise_sampler_seed": 1})),
    )
    .expect("diffusers builds it");
    sde.set_timesteps(4).expect("set_timesteps");
    let device = burn::tensor::Device::default();
    let x = burn::tensor::Tensor::<4>::zeros([1, 1, 2, 2], &device);
    let t = sde.timesteps()[0];
    assert!(matches!(
        sde.step(x.clone(), t, x, &Default::default(), None),
        Err(SchedulerError::Unsupported {
            key: "prediction_type",
            ..
        })
    ));
    // A float16 pipeline: diffusers' Brownian tree and step would run in float16, which is not
    // emulated, so it is refused rather than silently run in float32.
    let mut sde = Scheduler::from_config_as("DPMSolverSDEScheduler", &Map::new(), &Map::new())
        .expect("defaults build");
    sde.set_timesteps(4).expect("set_timesteps");
    let t = sde.timesteps()[0];
    let x = burn::tensor::Tensor::<4>::zeros([1, 1, 2, 2], &device);
    let half = diff_schedulers::StepOptions {
        noise_dtype: diff_schedulers::NoiseDtype::Float16,
        ..Default::default()
    };
    assert!(matches!(
        sde.step(x.clone(), t, x, &half, None),
        Err(SchedulerError::Unsupported {
            key: "model dtype",
            ..
        })
    ));
    assert!(
        Scheduler::from_config(&Map::new()).is_err(),
        "no _class_name"
    );
}

#[test]
fn stepping_with_a_timestep_outside_the_schedule_is_an_error() {
    let mut s = Scheduler::from_config_as("EulerDiscreteScheduler", &Map::new(), &Map::new())
        .expect("defaults build");
    s.set_timesteps(10).expect("set_timesteps");
    let device = burn::tensor::Device::default();
    let x = burn::tensor::Tensor::<4>::zeros([1, 1, 2, 2], &device);
    let err = s
        .step(x.clone(), 12.345, x, &StepOptions::default(), None)
        .expect_err("12.345 is not a timestep");
    assert!(matches!(err, SchedulerError::UnknownTimestep(_)), "{err}");
}
