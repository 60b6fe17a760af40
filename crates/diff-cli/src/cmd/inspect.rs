//! `burn-diffusers inspect PATH`: filled in by the foundation issue.

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A local diffusers folder (or, once diff-hub lands, a repo id).
    pub path: String,
}

/// Runs `inspect`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("inspect is not implemented yet ({})", args.path)
}
