//! One request run on the loaded pipeline: the class switch (img2img / inpaint by `from_pipe`,
//! sharing the weights), the per-request scheduler, the seeds, the PNG bytes. The call is the
//! one `burn-diffusers generate` makes (`output_type="np"`, 8-bit by numpy's rounding), so the
//! same seed gives the same pixels.

use crate::error::ApiError;
use crate::request::GenRequest;
use burn_diffusers::image::{Resample, image8_to_rgb, resize, rgb_to_image8};
use burn_diffusers::pipelines::{
    CallArgs, DiffusionPipeline, Generators, Img2ImgArgs, InpaintArgs, OutputType, PipelineClass,
    StepControl, StepInfo,
};
use image::RgbImage;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a finished job made.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// PNG files.
    pub images: Vec<Vec<u8>>,
    /// The seed of each image's pipeline call.
    pub seeds: Vec<u64>,
    /// The request's parameters (A1111's `info`).
    pub info: serde_json::Value,
    /// Whether a cancel stopped the loop early (the images are then partly denoised).
    pub interrupted: bool,
}

/// The pipeline class a request runs in, given the loaded one: text-to-image for a prompt
/// alone, img2img with an image, inpaint with a mask, as `generate` picks them.
pub fn class_for(base: PipelineClass, request: &GenRequest) -> Result<PipelineClass, ApiError> {
    let xl = base.is_xl();
    let wanted = match (request.image.is_some(), request.mask.is_some()) {
        (_, true) if xl => PipelineClass::StableDiffusionXLInpaint,
        (_, true) => PipelineClass::StableDiffusionInpaint,
        (true, false) if xl => PipelineClass::StableDiffusionXLImg2Img,
        (true, false) => PipelineClass::StableDiffusionImg2Img,
        (false, false) => {
            let text = matches!(
                base,
                PipelineClass::StableDiffusion
                    | PipelineClass::StableDiffusionXL
                    | PipelineClass::StableDiffusionSAG
            );
            if !text {
                return Err(ApiError::bad_request(format!(
                    "the served model is a {} (it needs an input image): use /v1/images/edits or /sdapi/v1/img2img",
                    base.name()
                )));
            }
            base
        }
    };
    Ok(wanted)
}

/// Resizes an img2img input to the asked size (Pillow's Lanczos, what A1111 and most clients
/// expect of `width` / `height`); the inpaint pipelines resize themselves.
fn sized_input(image: &RgbImage, request: &GenRequest) -> Result<RgbImage, ApiError> {
    let (w, h) = (
        request.width.unwrap_or(image.width() as usize),
        request.height.unwrap_or(image.height() as usize),
    );
    if (w, h) == (image.width() as usize, image.height() as usize) || request.mask.is_some() {
        return Ok(image.clone());
    }
    let resized = resize(&rgb_to_image8(image), w, h, Resample::Lanczos, None)
        .and_then(|i| image8_to_rgb(&i))
        .map_err(|e| ApiError::bad_request(format!("resizing the input image: {e}")))?;
    Ok(resized)
}

/// PNG bytes of one image.
///
/// TODO(metadata): `generate` writes its parameters into PNG text chunks through diff-image's
/// PNG text helpers (being added with the CLI issue); once merged, encode with them here,
/// passing `info` (the A1111 `parameters` text) so served images carry the same metadata.
pub fn encode_png(image: &RgbImage, _info: &serde_json::Value) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| ApiError::internal(format!("encoding the PNG: {e}")))?;
    Ok(bytes)
}

/// Runs `request` on `base`. `progress(step, total)` is told after each step (over all the
/// request's pipeline calls); `cancel` stops the loop after the current step.
pub fn run(
    base: &DiffusionPipeline,
    request: &GenRequest,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<JobOutput, ApiError> {
    let class = class_for(base.class(), request)?;
    let mut pipe = if class == base.class() {
        base.clone()
    } else {
        base.from_pipe(class, &Default::default(), &Default::default())
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    if let Some(choice) = &request.scheduler {
        pipe.swap_scheduler(&choice.class, &choice.overrides)
            .map_err(|e| ApiError::bad_request(format!("scheduler {}: {e}", choice.name)))?;
    }
    let img2img = matches!(
        class,
        PipelineClass::StableDiffusionImg2Img | PipelineClass::StableDiffusionXLImg2Img
    );
    let image = request
        .image
        .as_ref()
        .map(|i| sized_input(i, request))
        .transpose()?;
    let info = request.describe();
    let mut output = JobOutput {
        images: Vec::new(),
        seeds: Vec::new(),
        info: info.clone(),
        interrupted: false,
    };
    for k in 0..request.iterations {
        let seed = request.seed.wrapping_add((k * request.batch) as u64);
        let call = CallArgs {
            prompt: vec![request.prompt.clone()],
            negative_prompt: request.negative_prompt.clone().map(|n| vec![n]),
            num_inference_steps: request.steps,
            guidance_scale: request.guidance,
            height: request.height.filter(|_| !img2img),
            width: request.width.filter(|_| !img2img),
            generator: Generators::Seed(seed),
            img2img: Img2ImgArgs {
                image: image.clone().map(|i| vec![i]),
                image_latents: None,
                strength: request.strength,
            },
            inpaint: InpaintArgs {
                mask_image: request.mask.clone().map(|m| vec![m]),
                ..InpaintArgs::default()
            },
            num_images_per_prompt: request.batch,
            output_type: OutputType::Np,
            ..CallArgs::default()
        };
        let iterations = request.iterations;
        let mut on_step = |info: &StepInfo<'_>| {
            progress(k * info.total + info.step + 1, iterations * info.total);
            if cancel.load(Ordering::Relaxed) {
                StepControl::Stop
            } else {
                StepControl::Continue
            }
        };
        let out = pipe.call(&call, Some(&mut on_step)).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "generation_failed",
                format!("the pipeline refused the request: {e}"),
            )
        })?;
        let images = out
            .images
            .as_ref()
            .ok_or_else(|| ApiError::internal("the pipeline returned no images"))?;
        for img in images.to_rgb8_all() {
            output.images.push(encode_png(&img, &info)?);
            output.seeds.push(seed);
        }
        if out.interrupted || cancel.load(Ordering::Relaxed) {
            output.interrupted = true;
            break;
        }
    }
    if let Some(first) = output
        .images
        .first()
        .and_then(|b| image::load_from_memory(b).ok())
        && let Some(map) = output.info.as_object_mut()
    {
        map.insert("width".into(), first.width().into());
        map.insert("height".into(), first.height().into());
    }
    Ok(output)
}
