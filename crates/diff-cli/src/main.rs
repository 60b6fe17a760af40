//! The `burn-diffusers` command-line tool.
//!
//! Each subcommand lives in its own module under `cmd/` with an `Args` struct (clap) and a
//! `run(args) -> anyhow::Result<()>` function. `anyhow` is used here only: the library crates
//! have typed errors, the binary just reports them.
//!
//! Dependencies: `clap` (argument parsing), `indicatif` (progress bars on downloads, model
//! loading, denoising loops and the VAE decode, drawn from the library's callbacks), `image`
//! (the decoded images' type), `rayon` (`generate --threads`), `tracing-subscriber` (log output, `RUST_LOG`), `anyhow` (error reporting).

mod cmd;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Hugging Face diffusers' pipelines, in one native binary.
#[derive(Parser)]
#[command(name = "burn-diffusers", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars and no informational lines (errors and warnings still print).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More log output: -v info, -vv debug, -vvv trace (RUST_LOG directives still apply on
    /// top).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
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
    /// Serve the model over HTTP (OpenAI-compatible and AUTOMATIC1111 APIs, a web page at /).
    Serve(Box<cmd::serve::Args>),
}

/// The log filter: the level of `-q` / `-v` (`error` / `info`, `-vv` `debug`, `-vvv` `trace`;
/// default `warn`), then the directives of `RUST_LOG` on top, with the HTTP library's wire dump
/// switched off whatever `RUST_LOG` says, since it holds the `authorization` header
/// (`burn_diffusers::hub::SECRET_LOG_TARGETS`): no log level ever shows the token.
fn log_filter(rust_log: Option<&str>, quiet: bool, verbose: u8) -> tracing_subscriber::EnvFilter {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let mut filter = rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(format!("{level},{v}")).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    for target in burn_diffusers::hub::SECRET_LOG_TARGETS {
        if let Ok(directive) = format!("{target}=off").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// The error and its causes, one `: `-separated line, as anyhow's `{:#}` prints them, except
/// that a cause already quoted by the message before it (an OS error that a library error
/// includes in its own text) is not printed twice, and control characters (terminal escape
/// sequences in a server's file name) are escaped.
fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if previous.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        previous = text;
    }
    burn_diffusers::hub::printable(&line)
}

/// Parses the command line. `generate --from-png X` is parsed twice: once as given, then with
/// the recipe's arguments added (`cmd::recipe::expand_from_png`). The `generate` arguments as
/// parsed are kept in its `Args` for the recipe of each image.
fn parse() -> anyhow::Result<Cli> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut matches = Cli::command().get_matches_from(&argv);
    let generate = || Cli::command().find_subcommand("generate").cloned();
    if let (Some(("generate", sub)), Some(command)) = (matches.subcommand(), generate())
        && let Some(png) = sub.get_one::<std::path::PathBuf>("from_png")
    {
        let given = cmd::recipe::Invocation::from_matches(&command, sub);
        let known = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        let expanded = cmd::recipe::expand_from_png(&argv, png, &given.explicit, &known)?;
        matches = Cli::command().get_matches_from(expanded);
    }
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Generate(args), Some(("generate", sub)), Some(command)) =
        (&mut cli.command, matches.subcommand(), generate())
    {
        args.output.invocation = cmd::recipe::Invocation::from_matches(&command, sub);
    }
    Ok(cli)
}

fn main() -> std::process::ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("error: {}", error_line(&err));
            return std::process::ExitCode::FAILURE;
        }
    };
    cmd::progress::set_quiet(cli.quiet);
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(
            std::env::var("RUST_LOG").ok().as_deref(),
            cli.quiet,
            cli.verbose,
        ))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Download(args) => cmd::download::run(args),
        Command::Push(args) => cmd::push::run(args),
        Command::Save(args) => cmd::save::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Generate(args) => cmd::generate::run(*args),
        Command::Schedule(args) => cmd::schedule::run(args),
        Command::Serve(args) => cmd::serve::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_line(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_are_printed_once_and_control_characters_escaped() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let inner = burn_diffusers::format::FormatError::io("x\u{1b}[2J.json", io);
        let err = anyhow::Error::new(inner).context("reading the config");
        let line = error_line(&err);
        assert_eq!(line.matches("No such file").count(), 1, "{line}");
        assert!(
            line.starts_with("reading the config: I/O error on x"),
            "{line}"
        );
        assert!(
            !line.contains('\u{1b}') && line.contains("\\u{1b}"),
            "{line}"
        );
    }
}
