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
/// PNG bytes of `image` carrying the metadata `generate` writes: AUTOMATIC1111's `parameters`
/// text chunk (what other tools read: the prompt, `Negative prompt: ...`, then `Steps: N,
/// Sampler: S, CFG scale: G, Seed: S, Size: WxH, Model: M`) and the request as JSON under
/// `burn-diffusers` (`info`: the A1111 `info` object of the response, seed included).
pub fn encode_png(image: &RgbImage, info: &serde_json::Value) -> Result<Vec<u8>, ApiError> {
    let texts = [
        burn_diffusers::image::PngText::new("parameters", a1111_parameters(image, info)),
        burn_diffusers::image::PngText::new("burn-diffusers", info.to_string()),
    ];
    burn_diffusers::image::encode_png_with_text(image, &texts)
        .map_err(|e| ApiError::internal(format!("encoding the PNG: {e}")))
}

/// The A1111 infotext of one served image (`info` is [`GenRequest::describe`] with the model).
fn a1111_parameters(image: &RgbImage, info: &serde_json::Value) -> String {
    let text = |k: &str| info.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let mut out = text("prompt").to_string();
    let negative = text("negative_prompt");
    if !negative.is_empty() {
        out.push_str(&format!("\nNegative prompt: {negative}"));
    }
    let mut fields = vec![format!(
        "Steps: {}",
        info.get("steps").unwrap_or(&serde_json::Value::Null)
    )];
    if let Some(s) = info.get("sampler_name").and_then(|v| v.as_str()) {
        fields.push(format!("Sampler: {s}"));
    }
    if let Some(g) = info.get("cfg_scale").and_then(|v| v.as_f64()) {
        fields.push(format!("CFG scale: {g}"));
    }
    if let Some(seed) = info.get("seed").and_then(|v| v.as_u64()) {
        fields.push(format!("Seed: {seed}"));
    }
    fields.push(format!("Size: {}x{}", image.width(), image.height()));
    let model = text("model");
    if !model.is_empty() {
        fields.push(format!("Model: {model}"));
    }
    fields.push(format!(
        "Version: burn-diffusers {}",
        env!("CARGO_PKG_VERSION")
    ));
    out.push('\n');
    out.push_str(&fields.join(", "));
    out
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

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn served_pngs_carry_the_a1111_parameters_and_the_request() {
        let image = RgbImage::from_pixel(8, 4, image::Rgb([10, 20, 30]));
        let info = serde_json::json!({
            "prompt": "a red circle", "negative_prompt": "blurry", "steps": 3,
            "cfg_scale": 7.5, "seed": 42, "sampler_name": "DDIMScheduler",
        });
        let bytes = encode_png(&image, &info).unwrap();
        let texts =
            burn_diffusers::image::read_png_text(&bytes, std::path::Path::new("<served>")).unwrap();
        let get = |k: &str| {
            texts
                .iter()
                .find(|t| t.keyword == k)
                .map(|t| t.text.clone())
                .unwrap()
        };
        assert_eq!(
            get("parameters"),
            format!(
                "a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: DDIMScheduler, CFG scale: 7.5, Seed: 42, Size: 8x4, Version: burn-diffusers {}",
                env!("CARGO_PKG_VERSION")
            )
        );
        let json: serde_json::Value = serde_json::from_str(&get("burn-diffusers")).unwrap();
        assert_eq!(json["seed"], 42);
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded, image);
    }
}
