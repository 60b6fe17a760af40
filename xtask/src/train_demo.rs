//! `cargo xtask train-demo`: retrain the bundled demo pipeline (`tests/fixtures/demo-shapes`)
//! with real torch / diffusers / transformers.
//!
//! Runs `tests/fixtures/demo-shapes/train.py` in `.venv-fixtures/` (made as `fixtures` makes
//! it). The script generates its own caption-to-image set (coloured shapes), trains a tiny
//! `AutoencoderKL`, `CLIPTextModel` and `UNet2DConditionModel` from fixed seeds on one CPU thread
//! (about 25 minutes of CPU), and saves the `StableDiffusionPipeline` over the committed one.
//! Not part of `fixtures` (too slow for a routine regeneration); rerun
//! `cargo xtask fixtures --only 80-demo-parity` afterwards, as the parity fixture is made on
//! this model.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Runs the task with the arguments after `train-demo` (`--preview` also writes diffusers'
/// pictures for a few prompts to `tests/fixtures/demo-shapes/preview.png`).
pub fn run(args: &[String]) -> Result<()> {
    let mut preview = false;
    for arg in args {
        match arg.as_str() {
            "--preview" => preview = true,
            other => bail!("unknown argument `{other}` (expected --preview)"),
        }
    }
    let root = crate::repo_root()?;
    let python = crate::fixtures::ensure_venv(&root)?;
    let script = root.join("tests/fixtures/demo-shapes/train.py");
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .current_dir(&root)
        .env("PYTHONHASHSEED", "0")
        .env("HF_HUB_OFFLINE", "1");
    if preview {
        command.env("DEMO_PREVIEW", "1");
    }
    let status = command
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed with {status}", script.display());
    }
    Ok(())
}
