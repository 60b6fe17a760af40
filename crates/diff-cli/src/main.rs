//! The `burn-diffusers` command-line tool.
//!
//! Each subcommand lives in its own module under `cmd/` with an `Args` struct (clap) and a
//! `run(args) -> anyhow::Result<()>` function. `anyhow` is used here only: the library crates
//! have typed errors, the binary just reports them.
//!
//! Dependencies: `clap` (argument parsing), `indicatif` (progress bars on downloads and
//! denoising loops), `tracing-subscriber` (log output, `RUST_LOG`), `anyhow` (error reporting).

mod cmd;

use clap::{Parser, Subcommand};

/// Hugging Face diffusers' pipelines, in one native binary.
#[derive(Parser)]
#[command(name = "burn-diffusers", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a diffusers repository or folder holds and which files would be loaded.
    Inspect(cmd::inspect::Args),
    /// Download a pipeline (or a whole repo) into the Hugging Face cache; prints the snapshot folder.
    Download(cmd::download::Args),
    /// Upload a folder, or save then upload a model (--from), to a Hub repo with a model card;
    /// prints the commit or PR URL.
    Push(cmd::push::Args),
    /// Re-save a pipeline (folder or repo id) in the diffusers layout (variant, dtype, shards).
    Save(cmd::save::Args),
    /// Convert an original SD / SDXL single-file checkpoint to a diffusers folder.
    Convert(cmd::convert::Args),
    /// Compare a saved pipeline with its original: configs, every tensor, tokenizers and one
    /// forward of each model; non-zero exit on any difference.
    Validate(cmd::validate::Args),
    /// Run a Stable Diffusion / SDXL pipeline (text-to-image, img2img, inpaint) and write images.
    Generate(Box<cmd::generate::Args>),
    /// Print a scheduler's timesteps and sigmas from a scheduler_config.json, or replay a trace.
    Schedule(cmd::schedule::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Download(args) => cmd::download::run(args),
        Command::Push(args) => cmd::push::run(args),
        Command::Save(args) => cmd::save::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Generate(args) => cmd::generate::run(*args),
        Command::Schedule(args) => cmd::schedule::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
