//! `burn-diffusers validate ORIGINAL SAVED [--variant V]`.
//!
//! Compares a saved pipeline folder with the one it was saved from (`diff_convert::validate`):
//! every config value and every tensor (exact, or exact after torch's rounding for a cast
//! variant), printing one line per component; the exit status is non-zero on any difference.

use anyhow::{Result, bail};
use burn_diffusers::convert::validate::validate_pipeline;
use std::path::PathBuf;

/// Arguments of `validate`.
#[derive(clap::Args)]
pub struct Args {
    /// The original pipeline folder.
    pub original: PathBuf,
    /// The saved (or converted) pipeline folder.
    pub saved: PathBuf,
    /// Compare the saved copy's weights of this variant (e.g. `fp16`).
    #[arg(long)]
    pub variant: Option<String>,
}

/// Runs `validate`.
pub fn run(args: Args) -> Result<()> {
    let reports = validate_pipeline(&args.original, &args.saved, args.variant.as_deref())?;
    let mut failed = 0;
    for r in &reports {
        if r.ok() {
            println!(
                "ok      {:<20} {} tensors ({} compared after a cast)",
                r.name, r.tensors, r.cast
            );
        } else {
            failed += 1;
            println!("FAILED  {:<20} {} problem(s)", r.name, r.problems.len());
            for p in &r.problems {
                println!("          {p}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} component(s) differ");
    }
    Ok(())
}
