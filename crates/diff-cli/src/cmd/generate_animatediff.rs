//! `generate --pipeline AnimateDiffPipeline --motion-adapter REPO_OR_DIR --num-frames N`:
//! text-to-video as diffusers' `AnimateDiffPipeline.from_pipe(pipe_sd, motion_adapter=adapter)`.
//!
//! The model loads as its Stable Diffusion pipeline, the adapter as `MotionAdapter.
//! from_pretrained` (same dtype and variant), and the AnimateDiff pipeline shares the SD one's
//! components. Everything else `generate` takes applies (scheduler and overrides, `--lora`,
//! which may be a motion LoRA, ...). Outputs: `--out x.gif` (an animated GIF, `--fps`), one PNG
//! per frame with `--frames-dir DIR`, and `--out-array` (key `frames`, `[batch, F, H, W, 3]`).

use super::pipeline_arg::Requested;
use anyhow::{Context, Result, bail};
use burn_diffusers::models::{FromPretrained, ModelLoadOptions, MotionAdapter};
use burn_diffusers::pipelines::animatediff::{
    VideoArgs, export_to_gif, save_video_array, video_frames,
};
use burn_diffusers::pipelines::outputs::save_png;
use burn_diffusers::pipelines::pipeline::resolve_folder;
use burn_diffusers::pipelines::{DiffusionPipeline, LoadOptions, PipelineClass, PipelineOutput};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The AnimateDiff flags of `generate`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AnimateDiffArgs {
    /// The motion adapter of `--pipeline AnimateDiffPipeline`: a diffusers `MotionAdapter`
    /// folder or Hub repo id (guoyww/animatediff-motion-adapter-v1-5-2).
    #[arg(long, value_name = "REPO_OR_DIR")]
    pub motion_adapter: Option<String>,
    /// Frames to generate (`num_frames`, default 16; at most the adapter's
    /// `motion_max_seq_length`).
    #[arg(long, value_name = "N")]
    pub num_frames: Option<usize>,
    /// Frames the VAE decodes at once (`decode_chunk_size`, default 16).
    #[arg(long, value_name = "N")]
    pub decode_chunk_size: Option<usize>,
    /// Frame rate of the `--out` GIF (`export_to_gif(fps=...)`, default 10).
    #[arg(long, value_name = "F")]
    pub fps: Option<u32>,
    /// Write every frame as a PNG into this folder (`frame-000.png`, ...; with several videos
    /// `video-1-frame-000.png`, ...).
    #[arg(long, value_name = "DIR")]
    pub frames_dir: Option<PathBuf>,
}

impl AnimateDiffArgs {
    fn any_set(&self) -> bool {
        self.motion_adapter.is_some()
            || self.num_frames.is_some()
            || self.decode_chunk_size.is_some()
            || self.fps.is_some()
            || self.frames_dir.is_some()
    }

    /// The call's video arguments.
    pub fn video_args(&self) -> VideoArgs {
        let d = VideoArgs::default();
        VideoArgs {
            num_frames: self.num_frames.unwrap_or(d.num_frames),
            decode_chunk_size: self.decode_chunk_size.unwrap_or(d.decode_chunk_size),
            latents: None,
        }
    }
}

/// Whether `--pipeline` asks for AnimateDiff.
pub fn is_video(requested: Option<Requested>) -> bool {
    requested == Some(Requested::Class(PipelineClass::AnimateDiff))
}

/// Checks the flags before any work: the AnimateDiff flags only with `--pipeline
/// AnimateDiffPipeline`, which needs `--motion-adapter`, a `.gif` `--out` and an existing
/// `--frames-dir`. Returns the class the model itself loads as (its SD pipeline).
pub fn check(
    args: &AnimateDiffArgs,
    requested: Option<Requested>,
    out: Option<&Path>,
    latents_flag: bool,
) -> Result<Option<Requested>> {
    if !is_video(requested) {
        if args.any_set() {
            bail!(
                "--motion-adapter, --num-frames, --decode-chunk-size, --fps and --frames-dir are for --pipeline AnimateDiffPipeline"
            );
        }
        return Ok(requested);
    }
    if latents_flag {
        bail!(
            "--latents / --out-latents hold [N, C, h, w] image latents; AnimateDiffPipeline's are [batch, C, F, h, w] (use --out-array for the frames)"
        );
    }
    if args.motion_adapter.is_none() {
        bail!("--pipeline AnimateDiffPipeline needs --motion-adapter REPO_OR_DIR");
    }
    if args.num_frames == Some(0) {
        bail!("--num-frames 0: at least one frame is needed");
    }
    if args.decode_chunk_size == Some(0) {
        bail!("--decode-chunk-size 0: at least one frame per VAE decode is needed");
    }
    if args.fps == Some(0) {
        bail!("--fps 0: the frame rate must be at least 1");
    }
    if let Some(p) = out {
        let gif = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("gif"));
        if !gif {
            bail!(
                "--out {}: AnimateDiffPipeline writes an animated GIF (name it .gif); use --frames-dir for one PNG per frame",
                p.display()
            );
        }
        super::check_out("--out", p)?;
    }
    if let Some(dir) = &args.frames_dir
        && !dir.is_dir()
    {
        bail!("--frames-dir {}: not an existing folder", dir.display());
    }
    Ok(Some(Requested::Class(PipelineClass::StableDiffusion)))
}

/// `AnimateDiffPipeline.from_pipe(pipe, motion_adapter=MotionAdapter.from_pretrained(...))`.
pub fn into_animatediff(
    pipe: DiffusionPipeline,
    args: &AnimateDiffArgs,
    options: &LoadOptions,
) -> Result<DiffusionPipeline> {
    let Some(src) = &args.motion_adapter else {
        return Ok(pipe);
    };
    let folder = resolve_folder(src, options).with_context(|| format!("--motion-adapter {src}"))?;
    let load = ModelLoadOptions::new(&options.device)
        .with_dtype(options.dtype)
        .with_variant(options.variant.as_deref())
        .with_use_safetensors(options.use_safetensors);
    let (adapter, report) = MotionAdapter::from_pretrained(&folder, &load)
        .with_context(|| format!("--motion-adapter {src}"))?;
    if !report.is_clean() {
        tracing::warn!("MotionAdapter: {}", report.summary());
    }
    pipe.animatediff_from_pipe(Arc::new(adapter))
        .with_context(|| format!("--motion-adapter {src}"))
}

/// Writes a video call's outputs: the GIF(s), the frame PNGs, the float frames.
pub fn write_outputs(
    out: &PipelineOutput,
    args: &AnimateDiffArgs,
    gif: Option<&Path>,
    array: Option<&Path>,
) -> Result<()> {
    let f = args.video_args().num_frames;
    let images = out
        .images
        .as_ref()
        .context("the pipeline returned no frames")?;
    let videos = video_frames(out, f);
    let n = videos.len();
    let fps = args.fps.unwrap_or(10);
    if let Some(path) = gif {
        for (v, frames) in videos.iter().enumerate() {
            let p = numbered(path, v, n);
            let p = super::check_out("--out", &p)?;
            export_to_gif(frames, &p, fps)?;
            eprintln!("wrote {} ({} frames, {fps} fps)", p.display(), frames.len());
        }
    }
    if let Some(dir) = &args.frames_dir {
        for (v, frames) in videos.iter().enumerate() {
            for (i, frame) in frames.iter().enumerate() {
                let name = if n > 1 {
                    format!("video-{}-frame-{i:03}.png", v + 1)
                } else {
                    format!("frame-{i:03}.png")
                };
                save_png(&super::check_out("--frames-dir", &dir.join(name))?, frame)?;
            }
        }
        eprintln!("wrote {} frames into {}", images.count, dir.display());
    }
    if let Some(path) = array {
        save_video_array(path, images, f)?;
        eprintln!(
            "wrote {} ([{n}, {f}, {}, {}, 3] float32 under `frames`)",
            path.display(),
            images.height,
            images.width
        );
    }
    Ok(())
}

/// `x.gif`, or `x-1.gif`, `x-2.gif` ... with several videos.
fn numbered(path: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    path.with_file_name(format!("{stem}-{}.gif", index + 1))
}
