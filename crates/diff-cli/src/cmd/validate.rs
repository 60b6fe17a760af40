//! `burn-diffusers validate ORIGINAL SAVED [--variant V] [--no-forward] [--device D]`.
//!
//! ORIGINAL and SAVED are folders or Hub repo ids (resolved as every command resolves them,
//! with `--revision` / `--endpoint` / `--offline` / `--cache-dir` over `HF_ENDPOINT` /
//! `HF_HUB_OFFLINE` / `HF_TOKEN` / the Hugging Face cache).
//!
//! Compares a saved pipeline folder with the one it was saved from
//! (`burn_diffusers::validate`): every config value and every tensor (exact, or exact
//! after torch's rounding for a cast variant), the tokenizers (ids on fixed prompts), and one
//! forward of each model on fixed inputs (exact for the same weights, within the cast dtype's
//! stated tolerance otherwise). Prints one line per component and check; the exit status is
//! non-zero on any difference.

use anyhow::{Context, Result, bail};
use burn_diffusers::validate::{ValidateOptions, validate_pipeline};

/// Arguments of `validate`.
#[derive(clap::Args)]
pub struct Args {
    /// The original pipeline: a folder or a Hub repo id (downloaded into the Hugging Face
    /// cache, plain weights).
    pub original: String,
    /// The saved (or converted) pipeline: a folder or a Hub repo id (downloaded with
    /// `--variant`).
    pub saved: String,
    /// Compare the saved copy's weights of this variant (e.g. `fp16`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Skip the forward pass of each model (compare configs, tensors and tokenizers only).
    #[arg(long)]
    pub no_forward: bool,
    /// Device of the forward passes: `flex` (the default), `wgpu`, `cuda`, ... (as `generate`).
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// Where repo ids come from: `--revision`, `--endpoint`, `--offline`, `--cache-dir`.
    #[command(flatten)]
    pub hub: super::download::HubArgs,
}

/// Runs `validate`.
pub fn run(args: Args) -> Result<()> {
    let device = burn_diffusers::pipelines::parse_device(&args.device)
        .with_context(|| format!("--device {}", args.device))?;
    let options = ValidateOptions {
        variant: args.variant,
        forward: !args.no_forward,
        device,
    };
    let original = super::download::resolve_source(&args.original, &args.hub, None)?;
    let saved =
        super::download::resolve_source(&args.saved, &args.hub, options.variant.as_deref())?;
    let report = validate_pipeline(&original, &saved, &options)?;
    print!("{}", report.render());
    let failed = report.failures();
    if failed > 0 {
        bail!("{failed} check(s) found a difference");
    }
    Ok(())
}
