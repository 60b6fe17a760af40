//! `cargo xtask fixtures`: regenerate the reference fixtures with real Python diffusers.
//!
//! Every `tests/fixtures/<case>/generate.py` is a self-contained generator that writes its
//! outputs next to itself. They run in name order, so a case may use what an earlier one
//! wrote (`00-tiny-pipelines` comes first). The virtual environment lives in `.venv-fixtures/`
//! (ignored by git) and is created on first use.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the task with the arguments after `fixtures`.
pub fn run(args: &[String]) -> Result<()> {
    let root = crate::repo_root()?;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--only" => only.push(it.next().context("--only needs a case name")?.clone()),
            other => bail!("unknown argument `{other}` (expected --only CASE)"),
        }
    }
    let python = ensure_venv(&root)?;
    let cases = cases(&root.join("tests/fixtures"))?;
    if cases.is_empty() {
        bail!("no tests/fixtures/*/generate.py found");
    }
    for case in cases {
        let name = case
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        eprintln!("xtask fixtures: {name}");
        let status = Command::new(&python)
            .arg(&case)
            .current_dir(&root)
            .env("PYTHONHASHSEED", "0")
            .env("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            .env("HF_HUB_OFFLINE", "1")
            .status()
            .with_context(|| format!("running {}", case.display()))?;
        if !status.success() {
            bail!("{} failed with {status}", case.display());
        }
    }
    Ok(())
}

/// Creates `.venv-fixtures/` with the pinned packages if it is missing; returns its python.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".venv-fixtures");
    let python = venv.join("bin/python");
    let stamp = venv.join(".requirements-installed");
    let requirements = root.join("tests/fixtures/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("running python3 -m venv")?;
        if !status.success() {
            bail!("python3 -m venv {} failed", venv.display());
        }
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements)
        .status()
        .context("running pip install")?;
    if !status.success() {
        bail!("pip install -r {} failed", requirements.display());
    }
    std::fs::write(&stamp, wanted).context("writing the venv stamp")?;
    Ok(python)
}

fn cases(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let script = entry?.path().join("generate.py");
        if script.is_file() {
            out.push(script);
        }
    }
    out.sort();
    Ok(out)
}
