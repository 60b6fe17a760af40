//! `AnimateDiffPipeline` (diffusers `pipelines/animatediff/pipeline_animatediff.py`):
//! text-to-video with a `MotionAdapter` on an SD 1.x / 2.x pipeline's components.
//!
//! - `text2video.rs`: the `__call__` flow, in diffusers' numbered steps on the shared prompt
//!   encoding, latents, loop and VAE;
//! - this module: the call's video arguments ([`VideoArgs`]), the pipeline's motion UNet
//!   (`UNetMotionModel::from_unet2d` on the shared `Arc`s, made whenever an AnimateDiff
//!   pipeline is built), `from_pipe` with a motion adapter, frames out of the output, and the
//!   parameter bytes a set of pipelines holds.
//!
//! Video latents `[batch, C, F, h, w]` travel through the shared loop as the 4D view
//! `[batch, C, F * h, w]` (schedulers are element-wise and their noise is drawn in flat order,
//! so the view changes nothing); the loop's model is the motion UNet behind
//! `denoise::NoisePredictor`.

mod export;
pub(crate) mod text2video;

pub use export::{export_to_gif, save_video_array};

use crate::call::PipelineOutput;
use crate::components::{Components, Passed, PassedComponents};
use crate::error::PipelineError;
use crate::pipeline::{DiffusionPipeline, PipelineClass};
use burn::module::Module;
use burn::tensor::Tensor;
use diff_models::{MotionAdapter, UNetMotionModel};
use image::RgbImage;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// The arguments only the video pipelines take.
#[derive(Debug, Clone)]
pub struct VideoArgs {
    /// `num_frames` (default 16; at most the adapter's `motion_max_seq_length`).
    pub num_frames: usize,
    /// `decode_chunk_size` (default 16): frames the VAE decodes at once.
    pub decode_chunk_size: usize,
    /// Initial `latents` `[batch * num_videos_per_prompt, C, F, h, w]` (not yet scaled by
    /// `init_noise_sigma`), used instead of a random draw.
    pub latents: Option<Tensor<5>>,
}

impl Default for VideoArgs {
    fn default() -> Self {
        Self {
            num_frames: 16,
            decode_chunk_size: 16,
            latents: None,
        }
    }
}

/// Builds the motion UNet of an AnimateDiff pipeline from its `unet` and `motion_adapter`
/// (sharing both), and drops what the class does not take; other classes drop the motion
/// parts. Called whenever a pipeline is built (`from_pretrained`, `from_pipe`).
pub(crate) fn attach_motion_unet(
    comps: &mut Components,
    class: PipelineClass,
) -> Result<(), PipelineError> {
    if class != PipelineClass::AnimateDiff {
        comps.unet_motion = None;
        comps.motion_adapter = None;
        comps.entries.remove("motion_adapter");
        return Ok(());
    }
    // AnimateDiffPipeline.__init__ takes no safety checker.
    comps.safety_checker = None;
    comps.entries.remove("safety_checker");
    comps.entries.remove("requires_safety_checker");
    if comps.motion_adapter.is_some() {
        comps.entries.insert(
            "motion_adapter".into(),
            Some(("diffusers".into(), "MotionAdapter".into())),
        );
    }
    comps.unet_motion = match (&comps.unet, &comps.motion_adapter) {
        (Some(unet), Some(adapter)) => Some(Arc::new(UNetMotionModel::from_unet2d(
            Arc::clone(unet),
            Arc::clone(adapter),
        )?)),
        _ => None,
    };
    Ok(())
}

impl DiffusionPipeline {
    /// `AnimateDiffPipeline.from_pipe(pipe, motion_adapter=adapter)`: an AnimateDiff pipeline
    /// on this pipeline's components (shared, no weight copied) and `motion_adapter`. Errors
    /// name an adapter that does not fit the UNet (blocks, layers, channels, dtype).
    pub fn animatediff_from_pipe(
        &self,
        motion_adapter: Arc<MotionAdapter>,
    ) -> Result<Self, PipelineError> {
        let passed = PassedComponents {
            motion_adapter: Passed::Replace(motion_adapter),
            ..PassedComponents::default()
        };
        self.from_pipe(PipelineClass::AnimateDiff, &passed, &BTreeMap::new())
    }

    /// `pipe.motion_adapter` (AnimateDiff).
    pub fn motion_adapter(&self) -> Option<&Arc<MotionAdapter>> {
        self.components().motion_adapter.as_ref()
    }

    /// AnimateDiff's `pipe.unet`: the `UNetMotionModel` on the shared 2D UNet and adapter.
    pub fn unet_motion(&self) -> Option<&Arc<UNetMotionModel>> {
        self.components().unet_motion.as_ref()
    }

    /// Each model this pipeline holds, as (address of its `Arc`, parameter bytes): two
    /// pipelines sharing a model list the same address. The motion UNet holds nothing of its
    /// own (it is the UNet and the adapter), so it is not listed.
    pub fn model_parameter_bytes(&self) -> Vec<(usize, usize)> {
        fn entry<M: Module>(m: &Arc<M>, bytes_per: usize) -> (usize, usize) {
            (
                Arc::as_ptr(m) as *const () as usize,
                m.num_params() * bytes_per,
            )
        }
        let c = self.components();
        let b = self.dtype().size();
        let mut out = Vec::new();
        out.extend(c.unet.as_ref().map(|m| entry(m, b)));
        out.extend(c.vae.as_ref().map(|m| entry(m, b)));
        out.extend(c.text_encoder.as_ref().map(|m| entry(m, b)));
        out.extend(c.text_encoder_2.as_ref().map(|m| entry(m, b)));
        out.extend(c.safety_checker.as_ref().map(|m| entry(m, b)));
        out.extend(c.motion_adapter.as_ref().map(|m| entry(m, b)));
        out
    }
}

/// The parameter bytes held by `pipes` together, each shared model counted once (the figure
/// of the loading guide's `from_pipe` memory table).
pub fn unique_parameter_bytes(pipes: &[&DiffusionPipeline]) -> usize {
    let mut seen = HashSet::new();
    pipes
        .iter()
        .flat_map(|p| p.model_parameter_bytes())
        .filter(|(ptr, _)| seen.insert(*ptr))
        .map(|(_, bytes)| bytes)
        .sum()
}

/// A video call's frames as 8-bit images, one list per video (`.frames` with
/// `output_type="pil"`); the output's images are the videos' frames in order.
pub fn video_frames(output: &PipelineOutput, num_frames: usize) -> Vec<Vec<RgbImage>> {
    let all = output.rgb8();
    all.chunks(num_frames.max(1)).map(<[_]>::to_vec).collect()
}

/// A video call's latents as `[batch, C, F, h, w]` (the loop keeps them as
/// `[batch, C, F * h, w]`).
pub fn video_latents(latents: Tensor<4>, num_frames: usize) -> Tensor<5> {
    let [b, c, fh, w] = latents.dims();
    let f = num_frames.max(1);
    latents.reshape([b, c, f, fh / f, w])
}
