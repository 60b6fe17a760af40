//! One module per subcommand, and the argument checks they share.

pub mod convert;
pub mod convert_motion_module;
pub mod download;
pub mod generate;
pub mod generate_animatediff;
pub mod generate_ip_adapter;
pub mod generate_offload;
pub mod generate_pag;
pub mod inspect;
pub mod lora_flags;
pub mod output;
pub mod pipeline_arg;
pub mod progress;
pub mod push;
pub mod recipe;
pub mod save;
pub mod schedule;
pub mod serve;
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

/// Checks an output folder given as `flag` (`save --out`, `convert --out`) before any work: an
/// existing file there is an error and stays untouched (the save would otherwise refuse it
/// only after converting everything).
pub fn check_out_folder(flag: &str, path: &Path) -> Result<()> {
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_dir()
    {
        bail!(
            "{flag} {}: a file is there; refusing to replace it with a folder (remove it or pick another path)",
            path.display()
        );
    }
    Ok(())
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

/// Checks a `--latents` / `--image-latents` file before the pipeline reads it, with the
/// reader's rules (the tensor `latents`, or the only tensor; float32, float16 or bfloat16;
/// `[N, C, h, w]`), so that a wrong file gets a message saying what is wrong with it.
pub fn check_latents_file(flag: &str, path: &Path) -> Result<()> {
    use burn_diffusers::format::short_shape;
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{flag} {}: not a valid safetensors file: {e}",
            path.display()
        )
    })?;
    let mut names = st.names();
    names.sort();
    let name = if names.contains(&"latents") {
        "latents"
    } else if let [only] = names.as_slice() {
        only
    } else {
        let shown: Vec<&str> = names.iter().take(8).copied().collect();
        bail!(
            "{flag} {}: expected a tensor named `latents` or a single tensor, found {} tensors ({}{})",
            path.display(),
            names.len(),
            shown.join(", "),
            if names.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    };
    let view = st
        .tensor(name)
        .map_err(|e| anyhow::anyhow!("{flag} {}: `{name}`: {e}", path.display()))?;
    if !matches!(
        view.dtype(),
        safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
    ) {
        bail!(
            "{flag} {}: `{name}` has dtype {:?}; expected F32, F16 or BF16",
            path.display(),
            view.dtype()
        );
    }
    if view.shape().len() != 4 {
        bail!(
            "{flag} {}: `{name}` has shape {}; expected 4 dimensions [N, C, h, w]",
            path.display(),
            short_shape(view.shape())
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

    /// Issue 18: wrong latents files say what is wrong, not "invalid JSON".
    #[test]
    fn latents_files_get_precise_messages() {
        use safetensors::tensor::TensorView;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, tensors: Vec<(&str, safetensors::Dtype, Vec<usize>)>| {
            let data: Vec<Vec<u8>> = tensors
                .iter()
                .map(|(_, d, s)| vec![0u8; s.iter().product::<usize>() * d.bitsize() / 8])
                .collect();
            let views: Vec<(&str, TensorView<'_>)> = tensors
                .iter()
                .zip(&data)
                .map(|((n, d, s), b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            let path = dir.path().join(name);
            std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
            path
        };
        let f32 = safetensors::Dtype::F32;
        let ok = write("ok.safetensors", vec![("x", f32, vec![1, 4, 8, 8])]);
        assert!(check_latents_file("--latents", &ok).is_ok());
        let two = write(
            "two.safetensors",
            vec![("a", f32, vec![1, 4, 8, 8]), ("b", f32, vec![1, 4, 8, 8])],
        );
        let msg = check_latents_file("--latents", &two)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("found 2 tensors (a, b)") && !msg.contains("JSON"),
            "{msg}"
        );
        let int = write(
            "i.safetensors",
            vec![("latents", safetensors::Dtype::I64, vec![1, 4, 8, 8])],
        );
        let msg = check_latents_file("--latents", &int)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dtype I64"), "{msg}");
        let flat = write("f.safetensors", vec![("latents", f32, vec![1; 200])]);
        let msg = check_latents_file("--latents", &flat)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("(200 dimensions)") && msg.len() < 400, "{msg}");
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a tensor file").unwrap();
        let msg = check_latents_file("--latents", &junk)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a valid safetensors file"), "{msg}");
    }
}
