//! One module per subcommand, and the argument checks they share.

pub mod convert;
pub mod download;
pub mod generate;
pub mod inspect;
pub mod push;
pub mod save;
pub mod schedule;
pub mod validate;

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The most denoising steps `generate` accepts. diffusers has no bound (each step is one UNet
/// forward, so it is bounded by time); ours keeps a typo such as `--steps 5000000000` from
/// allocating a multi-gigabyte schedule and running for years.
pub const MAX_GENERATE_STEPS: usize = 10_000;

/// The most steps `schedule` accepts: diffusers has no bound; ours keeps the printed or replayed
/// schedule (a few arrays of `steps` floats) to what can be allocated and printed.
pub const MAX_SCHEDULE_STEPS: usize = 1_000_000;

/// The most output pixels (`height * width`) `generate` accepts: Pillow's
/// `Image.MAX_IMAGE_PIXELS` (89,478,485), beyond which Pillow refuses to reopen the PNG without
/// a decompression-bomb warning, and far beyond what the UNet's activations fit in memory.
pub const MAX_PIXELS: u64 = 89_478_485;

/// Checks `--steps` against `max` before any work starts.
pub fn check_steps(steps: usize, max: usize) -> Result<()> {
    if steps > max {
        bail!(
            "--steps {steps} is above the limit of {max}: diffusers sets no bound, but the schedule \
             and the loop must fit in memory and time (see the README's Limits)"
        );
    }
    Ok(())
}

/// Checks an output size (`--height` x `--width`, in pixels) against [`MAX_PIXELS`].
pub fn check_pixels(height: usize, width: usize) -> Result<()> {
    let pixels = (height as u64).saturating_mul(width as u64);
    if pixels > MAX_PIXELS {
        bail!(
            "--height {height} x --width {width} is {pixels} pixels, above the limit of \
             {MAX_PIXELS} (Pillow's MAX_IMAGE_PIXELS; diffusers sets no bound, but the latents \
             and the UNet's activations must fit in memory)"
        );
    }
    Ok(())
}

/// Checks an output path given as `flag` before any work starts (its folder exists, it is not a
/// folder, FIFO or device; symbolic links are followed) and returns the file to write.
pub fn check_out(flag: &str, path: &Path) -> Result<PathBuf> {
    burn_diffusers::format::fsutil::output_target(path).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// Checks a model-card field given on the command line (`--license`, `--base-model`): one line
/// of printable text, so it cannot end the card's YAML front matter or add keys to it.
pub fn check_card_field(flag: &str, value: Option<&str>) -> Result<()> {
    if let Some(v) = value
        && (v.trim().is_empty() || v.chars().any(char::is_control))
    {
        bail!(
            "{flag} {:?}: must be one line of printable text (a license id or a repo id)",
            v
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_without_overflow() {
        assert!(check_steps(MAX_GENERATE_STEPS, MAX_GENERATE_STEPS).is_ok());
        let msg = check_steps(usize::MAX, MAX_GENERATE_STEPS)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("limit of 10000"), "{msg}");
        assert!(check_pixels(1024, 1024).is_ok());
        assert!(check_pixels(usize::MAX, usize::MAX).is_err());
        let msg = check_pixels(100_000, 100_000).unwrap_err().to_string();
        assert!(msg.contains("MAX_IMAGE_PIXELS"), "{msg}");
    }
}
