//! Issue 18: hostile inputs against the built binary. Every input is made here, in a few bytes.

use diff_hub_server::{HubServer, ServerConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOKEN: &str = "hf_writeTOKENsecret0123456789";

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"));
    cmd.env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN")
        .env_remove("RUST_LOG");
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scheduler_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/10-schedulers/sd15_scheduler_config.json")
}

/// With `RUST_LOG=trace` the HTTP library dumps every request byte; the dump is switched off,
/// so no part of the token reaches stderr, while the rest of the trace output is there.
#[test]
fn the_token_never_reaches_the_log_even_at_trace() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(root.path());
    config.write_tokens = vec![TOKEN.into()];
    let server = HubServer::start(config).unwrap();
    let out = bin()
        .args(["download", "user/missing", "--endpoint", server.endpoint()])
        .arg("--cache-dir")
        .arg(cache.path())
        .env("HF_TOKEN", TOKEN)
        .env("HF_HOME", cache.path())
        .env("RUST_LOG", "trace,ureq_proto=trace")
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(!out.status.success());
    assert!(log.contains("ureq"), "trace output was produced: {log}");
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.header("authorization").is_some()),
        "the token was sent"
    );
    for window in TOKEN.as_bytes().windows(8) {
        let window = std::str::from_utf8(window).unwrap();
        assert!(!log.contains(window), "`{window}` of the token in: {log}");
    }
}

#[test]
fn schedule_checks_steps_and_out_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        bin()
            .args(["schedule", "--config"])
            .arg(scheduler_config())
            .args(args)
            .output()
            .unwrap()
    };
    for steps in ["18446744073709551615", "1000000000"] {
        let out = run(&["--steps", steps]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("above the limit"), "{}", stderr(&out));
    }
    let trace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/10-schedulers/replay_trace.safetensors");
    let missing = dir.path().join("no/such/out.safetensors");
    let out = run(&[
        "--steps",
        "4",
        "--replay",
        trace.to_str().unwrap(),
        "--out",
        missing.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let out = run(&[
        "--steps",
        "4",
        "--replay",
        trace.to_str().unwrap(),
        "--out",
        "/dev/null",
    ]);
    assert!(
        stderr(&out).contains("character device"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn scheduler_configs_with_impossible_values_fail_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (class, key, value) in [
        ("PNDMScheduler", "num_train_timesteps", "0"),
        ("DDIMScheduler", "num_train_timesteps", "1e9"),
        ("DPMSolverMultistepScheduler", "trained_betas", "[]"),
        ("DPMSolverSinglestepScheduler", "num_train_timesteps", "0"),
        ("DEISMultistepScheduler", "trained_betas", "[]"),
    ] {
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(
            &path,
            format!(r#"{{"_class_name": "{class}", "{key}": {value}}}"#),
        )
        .unwrap();
        let out = bin()
            .args(["schedule", "--steps", "4", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{class} {key}={value}");
        assert!(err.contains(key) && !err.contains("panicked"), "{err}");
    }
}

/// Settings whose schedule the loop cannot finish are refused by `schedule` (and `generate`)
/// naming the class and the setting, not with an internal step-index message.
#[test]
fn schedules_the_loop_cannot_finish_name_the_class_and_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (class, key, value, steps) in [
        ("EulerDiscreteScheduler", "num_train_timesteps", "1", "10"),
        (
            "DPMSolverMultistepScheduler",
            "timestep_spacing",
            "\"leading\"",
            "2000",
        ),
        ("DDIMScheduler", "steps_offset", "5000", "10"),
    ] {
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(
            &path,
            format!(r#"{{"_class_name": "{class}", "{key}": {value}}}"#),
        )
        .unwrap();
        let out = bin()
            .args(["schedule", "--steps", steps, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{class} {key}={value}");
        assert!(
            err.contains(class) && err.contains(key) && !err.contains("step index"),
            "{err}"
        );
    }
}

#[test]
fn save_and_convert_never_replace_a_file_at_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keep.txt");
    std::fs::write(&file, b"precious").unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd");
    let out = bin()
        .arg("save")
        .arg(&tiny)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("a file is there"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    let out = bin()
        .arg("save")
        .arg(&tiny)
        .arg("--out")
        .arg(tiny.join("."))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("inside it"), "{}", stderr(&out));
    // convert checks --out before reading the checkpoint (this VAE-only file would otherwise
    // fail family detection first).
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/51-single-file/sd1_vae/vae.safetensors");
    let out = bin()
        .arg("convert")
        .arg(&ckpt)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("a file is there"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}

#[test]
fn card_fields_with_newlines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd");
    for flag in ["--license", "--base-model"] {
        let out = bin()
            .arg("save")
            .arg(&tiny)
            .arg("--out")
            .arg(dir.path().join("o"))
            .args(["--card", flag, "mit\n---\nevil: 1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
        assert!(!dir.path().join("o").exists(), "checked before saving");
    }
}
