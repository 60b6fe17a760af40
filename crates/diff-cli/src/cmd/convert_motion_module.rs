//! `burn-diffusers convert --motion-module FILE --out DIR [--use-motion-mid-block]
//! [--motion-max-seq-length N]`: an original AnimateDiff motion-module checkpoint
//! (`mm_sd_v15_v2.ckpt`, `.safetensors`) to a diffusers `MotionAdapter` folder, as diffusers'
//! `scripts/convert_animatediff_motion_module_to_diffusers.py` (`diff_convert::motion_module`).

use anyhow::{Context, Result};
use burn_diffusers::convert::SaveOptions;
use burn_diffusers::convert::motion_module::{MotionModuleOptions, convert_motion_module};
use std::path::{Path, PathBuf};

/// The motion-module flags of `convert`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MotionModuleArgs {
    /// Convert an original AnimateDiff motion-module checkpoint (`mm_sd_v15_v2.ckpt`,
    /// `.safetensors`) to a MotionAdapter folder instead of a pipeline checkpoint.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ckpt", "config", "vae", "extract_ema", "pipeline_class"])]
    pub motion_module: Option<PathBuf>,
    /// The adapter has a motion mid block (the script's `--use_motion_mid_block`; also set
    /// when the checkpoint has `mid_block.*` keys).
    #[arg(long, requires = "motion_module")]
    pub use_motion_mid_block: bool,
    /// The most frames the adapter's position tables cover (default 32).
    #[arg(long, value_name = "N", requires = "motion_module")]
    pub motion_max_seq_length: Option<usize>,
}

/// Runs the motion-module conversion into `out`.
pub fn run(args: &MotionModuleArgs, ckpt: &Path, out: &Path, save: SaveOptions) -> Result<()> {
    let options = MotionModuleOptions {
        use_motion_mid_block: args.use_motion_mid_block,
        motion_max_seq_length: args.motion_max_seq_length.unwrap_or(32),
        save,
    };
    let report = convert_motion_module(ckpt, out, &options)
        .with_context(|| format!("converting the motion module {}", ckpt.display()))?;
    eprintln!(
        "converted {} to the MotionAdapter folder {} ({} tensors, block_out_channels {:?}, motion mid block: {})",
        ckpt.display(),
        out.display(),
        report.tensors,
        report.config.block_out_channels,
        report.config.use_motion_mid_block
    );
    Ok(())
}
