//! `burn-diffusers schedule`: the printed schedule of the SD 1.5 config, and `--replay`
//! against a trace replayed by real diffusers (`tests/fixtures/10-schedulers/generate.py`).

use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/10-schedulers")
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    let view = st.tensor(name).expect("tensor present");
    assert_eq!(view.dtype(), Dtype::F32);
    let v = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (v, view.shape().to_vec())
}

#[test]
fn schedule_prints_sd15_pndm_timesteps_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["schedule", "--config"])
        .arg(fixtures().join("sd15_scheduler_config.json"))
        .args(["--steps", "10", "--json"])
        .output()
        .expect("run burn-diffusers");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(doc["class"], "PNDMScheduler");
    // diffusers 0.42.1: PNDM with skip_prk_steps repeats the second timestep (n + 1 entries).
    let want = serde_json::json!([
        901.0, 801.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0
    ]);
    assert_eq!(doc["timesteps"], want);
    assert_eq!(doc["init_noise_sigma"].as_f64(), Some(1.0));
}

#[test]
fn schedule_replay_matches_diffusers_euler_ancestral_within_1e_5() {
    let dir = std::env::temp_dir().join(format!("bd-schedule-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out_path = dir.join("out.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["schedule", "--config"])
        .arg(fixtures().join("sd15_scheduler_config.json"))
        .args([
            "--class",
            "EulerAncestralDiscreteScheduler",
            "--steps",
            "4",
            "--replay",
        ])
        .arg(fixtures().join("replay_trace.safetensors"))
        .args(["--seed", "42", "--out"])
        .arg(&out_path)
        .output()
        .expect("run burn-diffusers");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got_bytes = std::fs::read(&out_path).expect("output written");
    let want_bytes =
        std::fs::read(fixtures().join("replay_expected.safetensors")).expect("fixture");
    let got = SafeTensors::deserialize(&got_bytes).expect("valid output");
    let want = SafeTensors::deserialize(&want_bytes).expect("valid fixture");
    for name in ["prev_samples", "final"] {
        let (g, gs) = f32s(&got, name);
        let (w, ws) = f32s(&want, name);
        assert_eq!(gs, ws, "{name} shape");
        let scale = w.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let err = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
            / scale;
        // Tolerance: 1e-5 of the sample scale, as for the scheduler parity tests.
        assert!(err <= 1e-5, "{name}: scaled error {err:e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn schedule_replay_rejects_a_trace_with_the_wrong_number_of_steps() {
    let dir = std::env::temp_dir().join(format!("bd-schedule-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out_path = dir.join("out.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["schedule", "--config"])
        .arg(fixtures().join("sd15_scheduler_config.json"))
        .args([
            "--class",
            "EulerAncestralDiscreteScheduler",
            "--steps",
            "5",
            "--replay",
        ])
        .arg(fixtures().join("replay_trace.safetensors"))
        .args(["--out"])
        .arg(&out_path)
        .output()
        .expect("run burn-diffusers");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model_outputs"),
        "stderr names the tensor: {stderr}"
    );
    assert!(!out_path.exists(), "no output on failure");
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs `schedule` on the tiny SD pipeline's scheduler config as `class` with one `--set`,
/// for 4 steps, printing JSON.
fn schedule_tiny_sd(class: &str, set: &str) -> std::process::Output {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-sd/scheduler/scheduler_config.json");
    Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["schedule", "--config"])
        .arg(&config)
        .args(["--class", class, "--set", set])
        .args(["--steps", "4", "--json"])
        .output()
        .expect("run burn-diffusers")
}

#[test]
fn schedule_works_on_the_tiny_sd_pipeline_scheduler_config() {
    let out = schedule_tiny_sd("EulerDiscreteScheduler", "timestep_spacing=trailing");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    // Trailing spacing of 4 steps over 1000: 999, 749, 499, 249 (diffusers 0.42.1).
    assert_eq!(
        doc["timesteps"],
        serde_json::json!([999.0, 749.0, 499.0, 249.0])
    );
    assert_eq!(doc["sigmas"].as_array().map(Vec::len), Some(5));
}

#[test]
fn schedule_names_the_keys_a_class_takes_when_an_override_is_not_one() {
    let out = schedule_tiny_sd("DDIMScheduler", "use_karras_sigmas=true");
    // diffusers ignores an unused kwarg with a warning; so does `schedule`, naming the keys.
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DDIMScheduler does not take `use_karras_sigmas`")
            && stderr.contains("timestep_spacing"),
        "stderr: {stderr}"
    );
}
