//! `cargo xtask sweep [--only SUBSTRING]... [--report FILE] [--list]`: the differential sweep of
//! the `burn-diffusers` CLI against Python diffusers (`tests/fixtures/60-cli-sweep/sweep.py`).
//!
//! Builds the CLI (dev profile), then runs the sweep with the fixture virtual environment:
//! several hundred `generate` / `schedule` command lines, each run by diffusers the way a user
//! would and by the binary, compared case by case (images 2/255 per pixel and 0.5/255 mean;
//! schedules exact timesteps and 1e-5 relative sigmas; diffusers' errors must be CLI errors).
//! For maintainers: it needs torch and takes about 15 minutes; `cargo test` replays the
//! committed subset without Python.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Runs the task with the arguments after `sweep` (passed on to `sweep.py`).
pub fn run(args: &[String]) -> Result<()> {
    let root = crate::repo_root()?;
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "diff-cli"])
        .current_dir(&root)
        .status()
        .context("running cargo build -p diff-cli")?;
    if !status.success() {
        bail!("cargo build -p diff-cli failed with {status}");
    }
    let python = crate::fixtures::ensure_venv(&root)?;
    let status = Command::new(&python)
        .arg("tests/fixtures/60-cli-sweep/sweep.py")
        .arg("--bin")
        .arg(root.join("target/debug/burn-diffusers"))
        .args(args)
        .current_dir(&root)
        .env("PYTHONHASHSEED", "0")
        .env("HF_HUB_OFFLINE", "1")
        .status()
        .context("running tests/fixtures/60-cli-sweep/sweep.py")?;
    if !status.success() {
        bail!("the sweep found mismatches (exit {status}); see the MISMATCH lines above");
    }
    Ok(())
}
