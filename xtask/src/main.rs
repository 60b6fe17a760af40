//! `cargo xtask`: project tasks that are not part of the library.
//!
//! - `fixtures [--only NAME]...`: create `.venv-fixtures/` (torch, diffusers, transformers,
//!   open-clip-torch from `tests/fixtures/requirements.txt`) and run every
//!   `tests/fixtures/<case>/generate.py`, in name order, from the repository root.
//! - `bench [--threads N] [--runs N] [--quick] [--device cpu|wgpu|cuda] [--dtype f32|f16]`: UNet / VAE / CLIP and whole SD 1.5 pipeline speed and memory, ours against PyTorch.
//! - `bench --only lora-memory [--dev] [--rank R]`: peak RSS loading SD 1.5 without and with a
//!   LoRA (`bench_lora.rs`).
//! - `hub-server --root DIR --port PORT`: the local Hub server (`diff-hub-server`).
//! - `e2e`: burn-diffusers against Python `huggingface_hub` through that server (loopback only).
//! - `sweep [--only S]... [--report FILE]`: the CLI against Python diffusers on hundreds of
//!   command lines (`tests/fixtures/60-cli-sweep/sweep.py`).
//! - `train-demo [--preview]`: retrain the bundled demo pipeline (`tests/fixtures/demo-shapes`).
//!
//! Dependencies: `anyhow`; `diff-hub-server` (tiny_http, for `hub-server` and `e2e`) and
//! `serde_json` (the server's log and the Python peer's answers). This binary must stay cheap
//! to build.

mod bench;
mod bench_lora;
mod e2e;
mod e2e_serve;
mod fixtures;
mod hub_server;
mod sweep;
mod train_demo;

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "fixtures" => fixtures::run(&rest),
        "hub-server" => hub_server::run(&rest),
        "e2e" => e2e::run(&rest),
        "bench" if bench_lora::wanted(&rest) => bench_lora::run(&rest),
        "bench" => bench::run(&rest),
        "sweep" => sweep::run(&rest),
        "train-demo" => train_demo::run(&rest),
        "" | "help" | "--help" | "-h" => {
            println!("{}", USAGE);
            Ok(())
        }
        other => bail!("unknown task `{other}`\n{USAGE}"),
    }
}

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  fixtures [--only CASE]...   regenerate tests/fixtures/ with real diffusers (needs network to PyPI)
  bench [--threads N] [--runs N] [--quick] [--device D] [--dtype T] SD 1.5 speed/memory vs PyTorch
  bench --only lora-memory [--dev] [--rank R]  peak RSS loading SD 1.5, without and with a LoRA
  hub-server --root DIR --port PORT [--token T] [--log FILE] ...
                              serve DIR/<org>/<name>/ folders as Hub model repos on 127.0.0.1
  e2e [--with-diffusers]      Python huggingface_hub <-> burn-diffusers through hub-server (loopback);
                              --with-diffusers also loads the pushed repos in Python diffusers (needs .venv-fixtures)
  sweep [--only S]... [--report FILE] [--list]
                              the CLI vs Python diffusers on hundreds of command lines (needs .venv-fixtures)
  train-demo [--preview]      retrain the bundled demo pipeline tests/fixtures/demo-shapes (about 25 min of CPU)";

/// The repository root (the parent of this crate's folder).
pub fn repo_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(|p| p.to_path_buf())
        .context("xtask's manifest folder has no parent")
}
