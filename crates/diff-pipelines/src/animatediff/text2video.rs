//! `AnimateDiffPipeline.__call__` (diffusers 0.42.1 `pipeline_animatediff.py`): encode prompt
//! (negative first with CFG, then `repeat_interleave(num_frames)`) -> `set_timesteps` ->
//! latents `randn([B, C, F, h, w]) * init_noise_sigma` -> loop with the motion UNet -> decode
//! the frames in chunks of `decode_chunk_size` -> `postprocess_video`.

use crate::call::{CallArgs, OutputType, PipelineOutput, StepCallback, check_size};
use crate::denoise::{
    Conditioning, DenoiseLoop, Denoised, Guidance, NoHook, NoisePredictor,
    do_classifier_free_guidance,
};
use crate::error::PipelineError;
use crate::image_processor::{FloatImages, VaeImageProcessor};
use crate::latents::{generators_for, noise_dtype, unet_sample_size, vae_latent_channels};
use crate::pipeline::DiffusionPipeline;
use crate::stable_diffusion::default_size;
use crate::timesteps::retrieve_timesteps;
use burn::tensor::{DType, Tensor};
use diff_models::{AutoencoderKL, UNet2DConditionInput, UNetMotionModel};
use diff_schedulers::precision::round_tensor;
use diff_schedulers::{NoiseDtype, randn_tensor, to_tensor};

/// The motion UNet as the loop's model: the loop's `[N, C, F * h, w]` view in and out.
struct MotionPredictor<'a> {
    model: &'a UNetMotionModel,
    num_frames: usize,
}

impl NoisePredictor for MotionPredictor<'_> {
    fn predict(&self, mut input: UNet2DConditionInput) -> Result<Tensor<4>, PipelineError> {
        let [n, c, fh, w] = input.sample.dims();
        let f = self.num_frames;
        let h = fh / f;
        // [N, C, F, h, w] -> [N * F, C, h, w], the frames of a video consecutive.
        input.sample = input
            .sample
            .reshape([n, c, f, h, w])
            .permute([0, 2, 1, 3, 4])
            .reshape([n * f, c, h, w]);
        let out = self.model.forward_frames(input, f)?;
        let oc = out.dims()[1];
        Ok(out
            .reshape([n, f, oc, h, w])
            .permute([0, 2, 1, 3, 4])
            .reshape([n, oc, f * h, w]))
    }
}

/// `prompt_embeds.repeat_interleave(repeats=num_frames, dim=0)`.
fn repeat_per_frame(embeds: Tensor<3>, num_frames: usize) -> Tensor<3> {
    let [n, t, d] = embeds.dims();
    let e: Tensor<4> = embeds.reshape([n, 1, t, d]);
    e.expand([n, num_frames, t, d])
        .reshape([n * num_frames, t, d])
}

/// Step 1's checks of the video arguments.
fn check_video_args(model: &UNetMotionModel, args: &CallArgs) -> Result<(), PipelineError> {
    let f = args.video.num_frames;
    let max = model.max_num_frames();
    if f == 0 || f > max {
        return Err(PipelineError::arg(
            "num_frames",
            format!(
                "`num_frames` is {f}; the motion adapter covers 1 to {max} frames (its `motion_max_seq_length`)"
            ),
        ));
    }
    if args.latents.is_some() {
        return Err(PipelineError::arg(
            "latents",
            "AnimateDiffPipeline takes video latents [batch, C, F, h, w]: pass them as `video.latents`",
        ));
    }
    if args.video.decode_chunk_size == 0 {
        return Err(PipelineError::arg(
            "decode_chunk_size",
            "`decode_chunk_size` must be at least 1",
        ));
    }
    Ok(())
}

/// `AnimateDiffPipeline.__call__`.
pub(crate) fn call(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    callback: Option<&mut StepCallback<'_>>,
) -> Result<PipelineOutput, PipelineError> {
    // diffusers' `__call__` sets `num_videos_per_prompt = 1` whatever it is given.
    let one_per_prompt;
    let args = if args.num_images_per_prompt != 1 {
        tracing::warn!(
            "AnimateDiffPipeline makes one video per prompt (diffusers sets num_videos_per_prompt = 1); {} is ignored",
            args.num_images_per_prompt
        );
        one_per_prompt = CallArgs {
            num_images_per_prompt: 1,
            ..args.clone()
        };
        &one_per_prompt
    } else {
        args
    };
    let model = pipe.require(pipe.unet_motion(), "unet")?;
    let unet = &*model.unet;
    let vae = pipe.require(pipe.vae(), "vae")?;
    let factor = pipe.vae_scale_factor();
    let num_frames = args.video.num_frames;

    // 0. Default height and width to unet
    let default = unet_sample_size(unet, 64) * factor;
    let (height, width) = default_size(pipe.class(), args.height, args.width, default);

    // 1. Check inputs. Raise error if not correct
    check_size(height, width)?;
    check_video_args(model, args)?;

    // 2. Define call parameters
    let guidance_scale = args.guidance_scale.unwrap_or(7.5);
    let dtype = noise_dtype(pipe.dtype());
    let device = pipe.device().clone();

    // 3. Encode input prompt, negative first with CFG, each repeated per frame.
    let do_cfg = do_classifier_free_guidance(unet, guidance_scale);
    let (cond, uncond) = pipe.encode_prompt(args, do_cfg)?;
    let total = cond.dims()[0];
    let prompt_embeds = match uncond {
        Some(u) => Tensor::cat(vec![u, cond], 0),
        None => cond,
    };
    // The IP-Adapter image tokens: one row per video (the motion UNet repeats them per frame,
    // as diffusers does); the processors live on the shared 2D UNet.
    let ip_hidden_states = crate::ip_adapter::ip_hidden_states(
        pipe,
        unet,
        &args.ip_adapter,
        crate::ip_adapter::EmbedsRepeat::PerPrompt(1),
        do_cfg,
    )?;
    let conditioning = Conditioning {
        encoder_hidden_states: repeat_per_frame(prompt_embeds, num_frames),
        ip_hidden_states,
        text_embeds: None,
        time_ids: None,
        timestep_cond: None,
    };
    let guidance = do_cfg.then_some(Guidance {
        scale: guidance_scale,
        rescale: 0.0,
    });
    let predictor = MotionPredictor { model, num_frames };
    let mut denoise = DenoiseLoop::new(unet, conditioning, guidance, args.eta, dtype, device);
    denoise.model = Some(&predictor);
    let mut gens = generators_for(args, total)?;

    // 4. Prepare timesteps
    let mut scheduler = pipe.require(pipe.scheduler(), "scheduler")?.clone();
    retrieve_timesteps(&mut scheduler, args)?;
    let timesteps = scheduler.timesteps().to_vec();

    // 5. Prepare latent variables: [B, C, F, h, w], carried as [B, C, F * h, w].
    let (h, w) = (height / factor, width / factor);
    let channels = vae_latent_channels(vae);
    let shape = [total, channels, num_frames, h, w];
    let sigma0 = scheduler.init_noise_sigma();
    let latents = match &args.video.latents {
        Some(l) if l.dims() != shape => {
            return Err(PipelineError::arg(
                "latents",
                format!("`latents` has shape {:?}, expected {shape:?}", l.dims()),
            ));
        }
        Some(l) => l.clone().reshape([total, channels, num_frames * h, w]),
        None => {
            let values = randn_tensor(&shape, &mut gens, dtype)?;
            to_tensor(values, [total, channels, num_frames * h, w], pipe.device())?
        }
    }
    .mul_scalar(sigma0);

    // 6. Prepare extra step kwargs (eta): in `denoise`.
    // 8. Denoising loop
    let denoised = denoise.run(
        &mut scheduler,
        &timesteps,
        latents,
        &mut gens,
        &mut NoHook,
        callback,
    )?;

    // 9. Post processing
    let Denoised {
        latents,
        interrupted,
    } = denoised;
    let images = match args.output_type {
        OutputType::Latent => None,
        _ => Some(decode_video(
            pipe,
            vae,
            latents.clone(),
            num_frames,
            args.video.decode_chunk_size,
        )?),
    };
    Ok(PipelineOutput {
        images,
        latents,
        nsfw_content_detected: None,
        interrupted,
    })
}

/// diffusers' `decode_latents` and `postprocess_video`: `1 / scaling_factor * latents`, the
/// frames of every video decoded `decode_chunk_size` at a time, denormalised to [0, 1]; the
/// images come out video by video, frame by frame.
fn decode_video(
    pipe: &DiffusionPipeline,
    vae: &AutoencoderKL,
    latents: Tensor<4>,
    num_frames: usize,
    chunk: usize,
) -> Result<FloatImages, PipelineError> {
    let [b, c, fh, w] = latents.dims();
    let f = num_frames;
    let h = fh / f;
    let half: NoiseDtype = noise_dtype(vae.settings.dtype);
    // `1 / self.vae.config.scaling_factor * latents`: the reciprocal, then a product.
    let inv = (1.0 / vae.scaling_factor()) as f32;
    let z = round_tensor(latents.mul_scalar(inv), half);
    let frames = z
        .reshape([b, c, f, h, w])
        .permute([0, 2, 1, 3, 4])
        .reshape([b * f, c, h, w]);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < b * f {
        let len = chunk.min(b * f - start);
        parts.push(vae.decode(frames.clone().narrow(0, start, len))?);
        start += len;
    }
    let video = Tensor::cat(parts, 0).cast(DType::F32);
    let processor = VaeImageProcessor::new(pipe.vae_scale_factor());
    processor.postprocess_as(video, None, half)
}
