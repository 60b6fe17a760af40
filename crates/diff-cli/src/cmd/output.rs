//! `generate`'s outputs and run settings: the image files (format by extension, names for
//! batches, no silent overwrite), the seeds of a batch, prompt files, and the VAE and thread
//! switches. Flattened into `generate`'s arguments as [`OutputArgs`].
//!
//! Seeds follow AUTOMATIC1111: image `i` of a run (counting every image of every job, from 0)
//! uses `seed + i`, so image `i` is the image a single run with `--seed seed+i` makes. Without
//! `--seed` a seed is drawn (from 0 to 2^32 - 1, as A1111 draws), printed and recorded.

use super::recipe::Invocation;
use anyhow::{Context, Result, bail};
use burn_diffusers::image::{
    ImageFormat, PngText, encode_jpeg, encode_png_with_text, encode_webp_lossless,
    exif_user_comment, write_atomic,
};
use burn_diffusers::pipelines::{DiffusionPipeline, Passed, components::PassedComponents};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most jobs a `--prompts` file may hold.
pub const MAX_JOBS: usize = 100_000;

/// Output, batch and run settings of `generate`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Replace existing output files. Without it an existing --out (each file of a batch),
    /// --out-array or --out-latents file is an error, checked before any work.
    #[arg(long)]
    pub overwrite: bool,
    /// JPEG quality of a `.jpg` / `.jpeg` --out, from 1 (smallest) to 100 (best), on Pillow's
    /// scale; the default is Pillow's, 75. PNG and WebP are lossless.
    #[arg(long, value_name = "Q", default_value_t = burn_diffusers::image::DEFAULT_JPEG_QUALITY,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Reproduce an image written by `generate`: read the recipe in the PNG's `burn-diffusers`
    /// chunk (model, commit, pipeline, scheduler, seed, every argument) and run it again; flags
    /// given with it override the recipe's (--out is never taken from it). The same build on
    /// the same device gives the same pixels, bit for bit.
    #[arg(long, value_name = "PNG")]
    pub from_png: Option<PathBuf>,
    /// A batch of jobs: one prompt per line of FILE (empty lines and lines starting with `#`
    /// are skipped), each run with the other flags; `--num-images` images per job. Needs
    /// --out (a pattern with `{index}` or `{seed}`, or the numbered names).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["out_array", "out_latents"])]
    pub prompts: Option<PathBuf>,
    /// Decode the latents in overlapping tiles (diffusers' `pipe.enable_vae_tiling()`): less
    /// memory for large images, at the cost of small seams the tile blending softens.
    #[arg(long)]
    pub vae_tiling: bool,
    /// Decode (and encode) one image of a batch at a time (diffusers'
    /// `pipe.enable_vae_slicing()`): less memory for large batches, the same images.
    #[arg(long)]
    pub vae_slicing: bool,
    /// CPU threads for the `flex` backend (the size of rayon's global pool; default: one per
    /// core, or RAYON_NUM_THREADS).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// The command line as parsed (filled by `main`; recorded in each image's recipe).
    #[arg(skip)]
    pub invocation: Invocation,
}

/// One pipeline call: a prompt and the seeds and files of its images.
#[derive(Debug, Clone)]
pub struct Job {
    /// The prompt.
    pub prompt: String,
    /// One seed per image.
    pub seeds: Vec<u64>,
    /// One file per image (empty without --out).
    pub paths: Vec<PathBuf>,
    /// Index of the job's first image in the run.
    pub first_index: usize,
}

/// Every job of a run, with its output format.
#[derive(Debug, Clone)]
pub struct OutputPlan {
    /// The jobs, in order.
    pub jobs: Vec<Job>,
    /// The format of --out.
    pub format: Option<ImageFormat>,
}

/// A seed from the operating system's randomness, from 0 to 2^32 - 1 (A1111's range, short
/// enough to type back).
pub fn draw_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.write_u32(std::process::id());
    h.finish() & 0xFFFF_FFFF
}

/// The prompts of a `--prompts` file.
fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--prompts {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        bail!(
            "--prompts {}: no prompt in the file (one per line; `#` starts a comment line)",
            path.display()
        );
    }
    if prompts.len() > MAX_JOBS {
        bail!(
            "--prompts {}: {} prompts, above the limit of {MAX_JOBS}",
            path.display(),
            prompts.len()
        );
    }
    Ok(prompts)
}

/// The `{...}` fields a --out pattern may use.
const FIELDS: &[&str] = &["seed", "index", "job"];

/// `--out` with its `{seed}`, `{index}` (0-based position in the run) and `{job}` (0-based line
/// of --prompts) fields filled; `{{` and `}}` are literal braces.
fn expand(pattern: &str, seed: u64, index: usize, job: usize) -> Result<String> {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(r) = tail.strip_prefix("{{") {
            out.push('{');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("}}") {
            out.push('}');
            rest = r;
        } else if let Some(r) = tail.strip_prefix('{') {
            let Some(end) = r.find('}') else {
                bail!("--out {pattern}: a `{{` without its `}}`");
            };
            match &r[..end] {
                "seed" => out.push_str(&seed.to_string()),
                "index" => out.push_str(&index.to_string()),
                "job" => out.push_str(&job.to_string()),
                other => bail!(
                    "--out {pattern}: unknown field `{{{other}}}`; the fields are {}",
                    FIELDS
                        .iter()
                        .map(|f| format!("{{{f}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            rest = &r[end + 1..];
        } else {
            bail!("--out {pattern}: a `}}` without its `{{` (write `}}}}` for a brace)");
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The file of image `index` of `count` without a pattern: `--out` itself for one image,
/// else `-1`, `-2`, ... (1-based) inserted before the extension (`out.png` -> `out-1.png`).
pub fn numbered(path: &Path, index: usize, count: usize) -> PathBuf {
    if count == 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}-{}.{ext}", index + 1))
}

/// Checks an output file before any work: the path rules of `check_out`, and no existing
/// file unless `--overwrite`. Returns the file to write.
pub fn check_new(flag: &str, path: &Path, overwrite: bool) -> Result<PathBuf> {
    let target = super::check_out(flag, path)?;
    if !overwrite && std::fs::symlink_metadata(path).is_ok() {
        bail!(
            "{flag} {}: the file exists; pass --overwrite to replace it",
            path.display()
        );
    }
    Ok(target)
}

/// The format of `--out`, from its extension; an error naming the accepted ones otherwise.
pub fn format_of(path: &Path) -> Result<ImageFormat> {
    ImageFormat::from_path(path).with_context(|| {
        format!(
            "--out {}: the image format comes from the extension; use one of {}",
            path.display(),
            ImageFormat::EXTENSIONS
        )
    })
}

/// Plans the run before any work: the prompts, every image's seed and file (each checked: format,
/// folder, no overwrite, no two images on one file). `seed` is the first image's.
pub fn plan(
    out: Option<&Path>,
    prompt: &str,
    seed: u64,
    num_images: usize,
    opts: &OutputArgs,
) -> Result<OutputPlan> {
    let prompts = match &opts.prompts {
        Some(p) => {
            if out.is_none() {
                bail!("--prompts needs --out (the images of every job are written there)");
            }
            read_prompts(p)?
        }
        None => vec![prompt.to_string()],
    };
    let total = prompts.len().saturating_mul(num_images);
    let pattern = out
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains(['{', '}']));
    if let (Some(out), None) = (out, &pattern) {
        // The path rules first: a folder, FIFO or device says so, whatever its name.
        super::check_out("--out", out)?;
    }
    let format = out.map(format_of).transpose()?;
    let mut jobs = Vec::with_capacity(prompts.len());
    let mut seen = std::collections::BTreeSet::new();
    for (j, prompt) in prompts.into_iter().enumerate() {
        let first_index = j * num_images;
        let seeds: Vec<u64> = (0..num_images)
            .map(|k| seed.wrapping_add((first_index + k) as u64))
            .collect();
        let mut paths = Vec::new();
        if let Some(out) = out {
            for (k, s) in seeds.iter().enumerate() {
                let index = first_index + k;
                let path = match &pattern {
                    Some(p) => PathBuf::from(expand(p, *s, index, j)?),
                    None => numbered(out, index, total),
                };
                if format_of(&path)? != format_of(out)? {
                    bail!("--out {}: the pattern changes the extension", out.display());
                }
                if !seen.insert(path.clone()) {
                    bail!(
                        "--out {}: several images would be written to {} (put {{index}} or {{seed}} in the pattern)",
                        out.display(),
                        path.display()
                    );
                }
                check_new("--out", &path, opts.overwrite)?;
                paths.push(path);
            }
        }
        jobs.push(Job {
            prompt,
            seeds,
            paths,
            first_index,
        });
    }
    Ok(OutputPlan { jobs, format })
}

/// Encodes `image` in `format` (PNG with `texts` as text chunks) and writes it to `path`
/// atomically (re-checked: the folder may have changed during the run).
pub fn write_image(
    path: &Path,
    image: &image::RgbImage,
    format: ImageFormat,
    jpeg_quality: u8,
    texts: &[PngText],
) -> Result<()> {
    // JPEG and WebP carry AUTOMATIC1111's `parameters` as it writes them there: the EXIF
    // UserComment (the full recipe stays a PNG's).
    let exif = || {
        texts
            .iter()
            .find(|t| t.keyword == super::recipe::A1111_KEY)
            .map(|t| exif_user_comment(&t.text))
    };
    let bytes = match format {
        ImageFormat::Jpeg => encode_jpeg(image, jpeg_quality, exif())?,
        ImageFormat::WebP => encode_webp_lossless(image, exif())?,
        _ => encode_png_with_text(image, texts)?,
    };
    let target = super::check_out("--out", path)?;
    write_atomic(&target, &bytes)?;
    Ok(())
}

/// Writes the images of `job` to its files, each with its recipe (PNG text chunks). Returns
/// the files written.
pub fn write_job(
    job: &Job,
    images: &[image::RgbImage],
    format: ImageFormat,
    context: &super::recipe::RunContext<'_>,
) -> Result<Vec<PathBuf>> {
    if images.len() != job.paths.len() {
        bail!(
            "the pipeline returned {} images for {} files",
            images.len(),
            job.paths.len()
        );
    }
    let mut written = Vec::new();
    for (k, (img, path)) in images.iter().zip(&job.paths).enumerate() {
        let seed = job.seeds.get(k).copied().unwrap_or_default();
        let recipe = context.image(&job.prompt, seed, job.first_index + k, img.dimensions());
        write_image(path, img, format, context.jpeg_quality, &recipe.png_texts())?;
        written.push(path.clone());
    }
    Ok(written)
}

/// `--threads N`: rayon's global pool, which burn-flex's kernels (and its matrix products)
/// run on, gets N threads. Must run before any tensor work.
pub fn apply_threads(threads: Option<usize>) -> Result<()> {
    let Some(n) = threads else {
        return Ok(());
    };
    if n == 0 {
        bail!("--threads 0: at least one thread is needed");
    }
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
    {
        // Only possible when the pool already runs (a second `run` in one process).
        tracing::warn!(
            "--threads {n}: the thread pool already runs with {} threads ({e})",
            rayon::current_num_threads()
        );
    }
    Ok(())
}

/// `--vae-tiling` / `--vae-slicing`: the pipeline with a VAE whose switches are on (diffusers'
/// `enable_vae_tiling()` / `enable_vae_slicing()`); the weights are shared, not copied.
pub fn apply_vae(pipe: DiffusionPipeline, opts: &OutputArgs) -> Result<DiffusionPipeline> {
    if !opts.vae_tiling && !opts.vae_slicing {
        return Ok(pipe);
    }
    let Some(vae) = pipe.vae() else {
        bail!("--vae-tiling / --vae-slicing: the pipeline has no VAE");
    };
    let mut vae = (**vae).clone();
    vae.set_tiling(opts.vae_tiling);
    vae.set_slicing(opts.vae_slicing);
    let passed = PassedComponents {
        vae: Passed::Replace(Arc::new(vae)),
        ..Default::default()
    };
    Ok(pipe.from_pipe(pipe.class(), &passed, &Default::default())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_fill_seed_index_and_job() {
        assert_eq!(
            expand("img-{seed}-{index}.png", 42, 3, 0).unwrap(),
            "img-42-3.png"
        );
        assert_eq!(expand("j{job}/{{x}}.png", 1, 2, 5).unwrap(), "j5/{x}.png");
        for bad in ["a{nope}.png", "a{seed.png", "a}.png"] {
            assert!(expand(bad, 0, 0, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn batch_seeds_count_up_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img-{seed}-{index}.png");
        let plan = plan(Some(&out), "p", 7, 3, &OutputArgs::default()).unwrap();
        assert_eq!(plan.jobs[0].seeds, vec![7, 8, 9]);
        assert!(plan.jobs[0].paths[2].ends_with("img-9-2.png"));
        let plain = dir.path().join("x.png");
        let p = super::plan(Some(&plain), "p", 0, 2, &OutputArgs::default()).unwrap();
        assert!(p.jobs[0].paths[1].ends_with("x-2.png"));
        let same = dir.path().join("same-{job}.png");
        let err = super::plan(Some(&same), "p", 0, 2, &OutputArgs::default()).unwrap_err();
        assert!(err.to_string().contains("several images"), "{err}");
        let gif = dir.path().join("x.gif");
        let err = super::plan(Some(&gif), "p", 0, 1, &OutputArgs::default()).unwrap_err();
        assert!(err.to_string().contains(".webp"), "{err}");
        std::fs::write(&plain, b"x").unwrap();
        let err = super::plan(Some(&plain), "p", 0, 1, &OutputArgs::default()).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        let opts = OutputArgs {
            overwrite: true,
            ..Default::default()
        };
        assert!(super::plan(Some(&plain), "p", 0, 1, &opts).is_ok());
    }
}
