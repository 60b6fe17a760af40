//! Request parsing and validation, free of HTTP: the OpenAI and AUTOMATIC1111 bodies become one
//! [`GenRequest`] checked against [`Limits`]. Every function here returns an [`ApiError`] (a
//! 4xx) on bad input and never panics (property-tested in `tests/request_props.rs`).

use crate::error::ApiError;
use crate::samplers;
use base64::Engine;
use burn_diffusers::image::{decode_image, image_dimensions};
use image::RgbImage;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::Path;

/// What one request may ask for. The defaults suit one GPU serving SD 1.x / SDXL.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request body in bytes (JSON or multipart); larger ones get 413.
    pub max_body_bytes: usize,
    /// The longest side of an output or input image, in pixels.
    pub max_side: usize,
    /// The most output pixels (`width * height`).
    pub max_pixels: usize,
    /// The most denoising steps.
    pub max_steps: usize,
    /// The most images one request makes (`n`, `batch_size * n_iter`).
    pub max_images: usize,
    /// The longest prompt or negative prompt, in characters.
    pub max_prompt_chars: usize,
    /// Steps when a request gives none (diffusers' default: 50).
    pub default_steps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_side: 2048,
            max_pixels: 2048 * 2048,
            max_steps: 150,
            max_images: 8,
            max_prompt_chars: 10_000,
            default_steps: 50,
        }
    }
}

/// A scheduler asked for by a request: a diffusers class and its `from_config` overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerChoice {
    /// The diffusers class name (`EulerDiscreteScheduler`).
    pub class: String,
    /// `from_config` overrides (`use_karras_sigmas: true`).
    pub overrides: Map<String, Value>,
    /// The name the request used (`DPM++ 2M Karras`), echoed in `info`.
    pub name: String,
}

/// One validated generation request, whatever API it came from.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: Option<String>,
    /// `num_inference_steps`.
    pub steps: usize,
    /// `guidance_scale` (`None`: the pipeline's default).
    pub guidance: Option<f32>,
    /// The seed of the torch-compatible CPU generator (always set: a random one is drawn when
    /// the request gives none, so that the answer can tell it).
    pub seed: u64,
    /// Output width (`None`: the model's default, or the input image's for img2img).
    pub width: Option<usize>,
    /// Output height.
    pub height: Option<usize>,
    /// Another scheduler for this request.
    pub scheduler: Option<SchedulerChoice>,
    /// Images per pipeline call (`num_images_per_prompt`).
    pub batch: usize,
    /// Pipeline calls (A1111's `n_iter`); call `k` uses the seed `seed + k * batch`.
    pub iterations: usize,
    /// img2img / inpaint input.
    pub image: Option<RgbImage>,
    /// Inpaint mask (white = repaint).
    pub mask: Option<RgbImage>,
    /// img2img / inpaint `strength`.
    pub strength: Option<f32>,
}

impl GenRequest {
    /// Images the request makes.
    pub fn image_count(&self) -> usize {
        self.batch.saturating_mul(self.iterations)
    }

    /// The parameters as a JSON object (A1111's `info`, the SSE `done` event, PNG metadata).
    pub fn describe(&self) -> Value {
        serde_json::json!({
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt.clone().unwrap_or_default(),
            "steps": self.steps,
            "cfg_scale": self.guidance,
            "seed": self.seed,
            "all_seeds": (0..self.iterations).flat_map(|k| {
                let s = self.seed.wrapping_add((k * self.batch) as u64);
                std::iter::repeat_n(s, self.batch)
            }).collect::<Vec<_>>(),
            "width": self.width,
            "height": self.height,
            "sampler_name": self.scheduler.as_ref().map(|s| s.name.clone()),
            "batch_size": self.batch,
            "n_iter": self.iterations,
            "denoising_strength": self.strength,
            "mode": if self.mask.is_some() { "inpaint" } else if self.image.is_some() { "img2img" } else { "txt2img" },
        })
    }
}

/// How the OpenAI routes return images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// Base64 PNG in the JSON (the only one served).
    B64Json,
}

/// Parses a JSON body into `T`, naming the field that is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        if syntax || path == "." || path.is_empty() {
            ApiError::bad_request(format!("malformed JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    Ok(value)
}

/// A seed as JSON: an integer from -2^63 to 2^64-1 (negative ones wrap as torch's
/// `manual_seed` does), or `None` for random. `random_below_zero` is A1111's rule: -1 (or any
/// negative) asks for a random seed.
pub fn parse_seed(value: Option<&Value>, random_below_zero: bool) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "field `seed`: expected an integer from -9223372036854775808 to 18446744073709551615",
        )
    };
    match value {
        None | Some(Value::Null) => Ok(random_seed()),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(v)
            } else if let Some(v) = n.as_i64() {
                if random_below_zero {
                    Ok(random_seed())
                } else {
                    Ok(v as u64)
                }
            } else {
                Err(bad())
            }
        }
        Some(Value::String(s)) => match s.trim().parse::<u64>() {
            Ok(v) => Ok(v),
            Err(_) => match s.trim().parse::<i64>() {
                Ok(_) if random_below_zero => Ok(random_seed()),
                Ok(v) => Ok(v as u64),
                Err(_) => Err(bad()),
            },
        },
        Some(_) => Err(bad()),
    }
}

/// A fresh seed below 2^32 (short enough to read and type back), from the OS-seeded hasher.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() & 0xFFFF_FFFF
}

/// OpenAI's `size`: `WxH` (or `auto` / absent for the model's default).
pub fn parse_size(size: Option<&str>) -> Result<(Option<usize>, Option<usize>), ApiError> {
    let Some(text) = size.map(str::trim) else {
        return Ok((None, None));
    };
    if text.is_empty() || text.eq_ignore_ascii_case("auto") {
        return Ok((None, None));
    }
    let bad = || {
        ApiError::bad_request(format!(
            "field `size`: `{}` is not WIDTHxHEIGHT (for example `512x512`)",
            printable(text, 40)
        ))
    };
    let (w, h) = text.split_once(['x', 'X', '*']).ok_or_else(bad)?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    let h: usize = h.trim().parse().map_err(|_| bad())?;
    Ok((Some(w), Some(h)))
}

/// A string cut to `max` characters with control characters escaped, to quote user input in
/// an error.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// Checks an output side: a multiple of 8, at least 8, at most `limits.max_side`.
fn check_side(name: &str, value: usize, limits: &Limits) -> Result<(), ApiError> {
    if value < 8 || !value.is_multiple_of(8) {
        return Err(ApiError::bad_request(format!(
            "{name} {value} is not a multiple of 8 of at least 8 (the VAE works on 8x8 blocks)"
        )));
    }
    if value > limits.max_side {
        return Err(ApiError::bad_request(format!(
            "{name} {value} is above this server's limit of {} pixels",
            limits.max_side
        )));
    }
    Ok(())
}

impl GenRequest {
    /// Checks every bound; called once by each parser.
    pub fn validate(&self, limits: &Limits) -> Result<(), ApiError> {
        if self.prompt.chars().count() > limits.max_prompt_chars
            || self
                .negative_prompt
                .as_ref()
                .is_some_and(|n| n.chars().count() > limits.max_prompt_chars)
        {
            return Err(ApiError::bad_request(format!(
                "the prompt or negative prompt is longer than {} characters",
                limits.max_prompt_chars
            )));
        }
        if self.steps == 0 || self.steps > limits.max_steps {
            return Err(ApiError::bad_request(format!(
                "steps {} is outside 1..={} (this server's limit)",
                self.steps, limits.max_steps
            )));
        }
        if let Some(w) = self.width {
            check_side("width", w, limits)?;
        }
        if let Some(h) = self.height {
            check_side("height", h, limits)?;
        }
        if let (Some(w), Some(h)) = (self.width, self.height)
            && w.saturating_mul(h) > limits.max_pixels
        {
            return Err(ApiError::bad_request(format!(
                "{w}x{h} is {} pixels, above this server's limit of {}",
                w.saturating_mul(h),
                limits.max_pixels
            )));
        }
        if self.batch == 0 || self.iterations == 0 || self.image_count() > limits.max_images {
            return Err(ApiError::bad_request(format!(
                "{} images asked (batch {} x iterations {}); this server makes 1..={} per request",
                self.image_count(),
                self.batch,
                self.iterations,
                limits.max_images
            )));
        }
        if let Some(g) = self.guidance
            && (!g.is_finite() || g.abs() > 100.0)
        {
            return Err(ApiError::bad_request(format!(
                "guidance {g} is outside -100..=100"
            )));
        }
        if let Some(s) = self.strength
            && !(0.0..=1.0).contains(&s)
        {
            return Err(ApiError::bad_request(format!(
                "strength {s} is outside [0, 1]"
            )));
        }
        if self.mask.is_some() && self.image.is_none() {
            return Err(ApiError::bad_request("a mask needs an image"));
        }
        Ok(())
    }
}

fn to_usize(name: &str, v: Option<u64>, default: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(v) => usize::try_from(v)
            .map_err(|_| ApiError::bad_request(format!("field `{name}`: {v} is too large"))),
    }
}

/// The body of `POST /v1/images/generations` (OpenAI) with our extensions.
#[derive(Debug, Default, Deserialize)]
pub struct OpenAiGeneration {
    /// The prompt (required).
    pub prompt: Option<String>,
    /// Images to make (default 1).
    pub n: Option<u64>,
    /// `WxH`.
    pub size: Option<String>,
    /// `b64_json` (default) or `url` (refused).
    pub response_format: Option<String>,
    /// Ignored: the server serves the model it loaded (listed by `GET /v1/models`).
    pub model: Option<String>,
    /// Extension: the negative prompt.
    pub negative_prompt: Option<String>,
    /// Extension: denoising steps.
    pub steps: Option<u64>,
    /// Extension: guidance scale (`guidance_scale` also accepted).
    #[serde(alias = "guidance_scale")]
    pub guidance: Option<f32>,
    /// Extension: the seed (random when absent).
    pub seed: Option<Value>,
    /// Extension: a diffusers scheduler class or an A1111 sampler name.
    pub scheduler: Option<String>,
    /// Extension (edits): img2img / inpaint strength.
    pub strength: Option<f32>,
}

/// Checks `response_format`.
pub fn parse_response_format(format: Option<&str>) -> Result<ResponseFormat, ApiError> {
    match format.map(str::trim) {
        None | Some("b64_json") => Ok(ResponseFormat::B64Json),
        Some("url") => Err(ApiError::bad_request(
            "response_format `url` is not served: this server keeps no image files; use `b64_json`",
        )),
        Some(other) => Err(ApiError::bad_request(format!(
            "response_format `{}`: expected `b64_json`",
            printable(other, 40)
        ))),
    }
}

impl OpenAiGeneration {
    /// The validated request (images are added by the edits route).
    pub fn into_request(self, limits: &Limits) -> Result<(GenRequest, ResponseFormat), ApiError> {
        let format = parse_response_format(self.response_format.as_deref())?;
        let prompt = self
            .prompt
            .ok_or_else(|| ApiError::bad_request("field `prompt` is required"))?;
        let (width, height) = parse_size(self.size.as_deref())?;
        let scheduler = self
            .scheduler
            .as_deref()
            .map(samplers::resolve)
            .transpose()?;
        let request = GenRequest {
            prompt,
            negative_prompt: self.negative_prompt,
            steps: to_usize("steps", self.steps, limits.default_steps)?,
            guidance: self.guidance,
            seed: parse_seed(self.seed.as_ref(), false)?,
            width,
            height,
            scheduler,
            batch: to_usize("n", self.n, 1)?,
            iterations: 1,
            image: None,
            mask: None,
            strength: self.strength,
        };
        request.validate(limits)?;
        Ok((request, format))
    }
}

/// The body of A1111's `/sdapi/v1/txt2img` and `/sdapi/v1/img2img` (the fields front-ends
/// send; others are accepted and ignored, as A1111 ignores what a script does not use).
#[derive(Debug, Default, Deserialize)]
pub struct A1111Request {
    /// The prompt.
    pub prompt: Option<String>,
    /// The negative prompt.
    pub negative_prompt: Option<String>,
    /// Steps (A1111's default 20).
    pub steps: Option<u64>,
    /// `cfg_scale` (A1111's default 7.0).
    pub cfg_scale: Option<f32>,
    /// Output width.
    pub width: Option<u64>,
    /// Output height.
    pub height: Option<u64>,
    /// Seed; -1 is random.
    pub seed: Option<Value>,
    /// Sampler name (`Euler a`, `DPM++ 2M Karras`, or a diffusers class name).
    pub sampler_name: Option<String>,
    /// The old name of `sampler_name`.
    pub sampler_index: Option<String>,
    /// Images per batch.
    pub batch_size: Option<u64>,
    /// Batches.
    pub n_iter: Option<u64>,
    /// img2img: base64 images (a `data:` URL prefix is accepted); the first is used.
    pub init_images: Option<Vec<String>>,
    /// img2img: strength (A1111's default 0.75).
    pub denoising_strength: Option<f32>,
    /// img2img: base64 inpaint mask (white = repaint).
    pub mask: Option<String>,
    /// img2img: 1 repaints the black part of the mask instead.
    pub inpainting_mask_invert: Option<u8>,
}

/// A1111's `steps` default.
pub const A1111_DEFAULT_STEPS: usize = 20;
/// A1111's `cfg_scale` default.
pub const A1111_DEFAULT_CFG: f32 = 7.0;
/// A1111's `denoising_strength` default.
pub const A1111_DEFAULT_STRENGTH: f32 = 0.75;

impl A1111Request {
    /// The validated request; `img2img` selects the img2img route's rules (an init image is
    /// required).
    pub fn into_request(self, limits: &Limits, img2img: bool) -> Result<GenRequest, ApiError> {
        let sampler = self.sampler_name.or(self.sampler_index);
        let scheduler = sampler
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(samplers::resolve)
            .transpose()?;
        let size = |name: &str, v: Option<u64>| -> Result<Option<usize>, ApiError> {
            v.map(|v| to_usize(name, Some(v), 0)).transpose()
        };
        let mut request = GenRequest {
            prompt: self.prompt.unwrap_or_default(),
            negative_prompt: self.negative_prompt.filter(|n| !n.is_empty()),
            steps: to_usize("steps", self.steps, A1111_DEFAULT_STEPS)?,
            guidance: Some(self.cfg_scale.unwrap_or(A1111_DEFAULT_CFG)),
            seed: parse_seed(self.seed.as_ref(), true)?,
            width: size("width", self.width)?,
            height: size("height", self.height)?,
            scheduler,
            batch: to_usize("batch_size", self.batch_size, 1)?,
            iterations: to_usize("n_iter", self.n_iter, 1)?,
            image: None,
            mask: None,
            strength: None,
        };
        // Checked before any image is decoded, so a huge batch costs nothing.
        request.validate(limits)?;
        if img2img {
            let first = self
                .init_images
                .as_ref()
                .and_then(|v| v.first())
                .ok_or_else(|| {
                    ApiError::bad_request("field `init_images`: img2img needs one base64 image")
                })?;
            let bytes = decode_base64("init_images[0]", first)?;
            request.image = Some(decode_input_image("init_images[0]", &bytes, limits)?);
            if let Some(mask) = &self.mask {
                let bytes = decode_base64("mask", mask)?;
                let mut m = decode_mask("mask", &bytes, limits)?;
                if self.inpainting_mask_invert == Some(1) {
                    image::imageops::invert(&mut m);
                }
                request.mask = Some(m);
            }
            request.strength = Some(self.denoising_strength.unwrap_or(A1111_DEFAULT_STRENGTH));
            request.validate(limits)?;
        }
        Ok(request)
    }
}

/// Decodes base64 (standard alphabet, padding optional, a `data:...;base64,` prefix and
/// whitespace accepted).
pub fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    let body = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text,
    };
    let cleaned: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(cleaned.trim_end_matches('='))
        .map_err(|e| ApiError::bad_request(format!("field `{field}`: not valid base64: {e}")))
}

/// Checks an input image's declared size against the limits before decoding a pixel.
fn check_input_size(field: &str, bytes: &[u8], limits: &Limits) -> Result<(), ApiError> {
    let Some((w, h)) = image_dimensions(bytes) else {
        return Err(ApiError::bad_request(format!(
            "field `{field}`: not a PNG or JPEG image (the header cannot be read)"
        )));
    };
    if w == 0 || h == 0 || w > limits.max_side as u64 || h > limits.max_side as u64 {
        return Err(ApiError::bad_request(format!(
            "field `{field}`: the image is {w}x{h}; this server takes 1..={} pixels a side",
            limits.max_side
        )));
    }
    Ok(())
}

/// An input image decoded as diffusers' `load_image` does (EXIF orientation, RGB).
pub fn decode_input_image(
    field: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Result<RgbImage, ApiError> {
    check_input_size(field, bytes, limits)?;
    decode_image(bytes, Path::new(field))
        .map_err(|e| ApiError::bad_request(format!("field `{field}`: corrupt image: {e}")))
}

/// An inpaint mask: an image with transparency follows OpenAI's rule (fully transparent =
/// repaint; the alpha channel becomes the mask, white where alpha is 0); an opaque one follows
/// diffusers' (white = repaint).
pub fn decode_mask(field: &str, bytes: &[u8], limits: &Limits) -> Result<RgbImage, ApiError> {
    check_input_size(field, bytes, limits)?;
    let has_alpha = image::load_from_memory(bytes)
        .map_err(|e| ApiError::bad_request(format!("field `{field}`: corrupt image: {e}")))?;
    if has_alpha.color().has_alpha() {
        let rgba = has_alpha.to_rgba8();
        let (w, h) = rgba.dimensions();
        let mut mask = RgbImage::new(w, h);
        for (dst, src) in mask.pixels_mut().zip(rgba.pixels()) {
            let v = 255 - src.0[3];
            *dst = image::Rgb([v, v, v]);
        }
        return Ok(mask);
    }
    decode_input_image(field, bytes, limits)
}

/// Whether an image file has any pixel that is not fully opaque (OpenAI's edits without a mask
/// repaint the transparent part of the image). `None` when it has no alpha channel.
pub fn alpha_mask(bytes: &[u8]) -> Option<RgbImage> {
    let img = image::load_from_memory(bytes).ok()?;
    if !img.color().has_alpha() {
        return None;
    }
    let rgba = img.to_rgba8();
    if rgba.pixels().all(|p| p.0[3] == 255) {
        return None;
    }
    let (w, h) = rgba.dimensions();
    let mut mask = RgbImage::new(w, h);
    for (dst, src) in mask.pixels_mut().zip(rgba.pixels()) {
        let v = 255 - src.0[3];
        *dst = image::Rgb([v, v, v]);
    }
    Some(mask)
}

/// The text fields of an OpenAI edits multipart form, as the generation body.
pub fn edit_fields(fields: &[(String, String)]) -> Result<OpenAiGeneration, ApiError> {
    let mut g = OpenAiGeneration::default();
    let num = |name: &str, v: &str| -> Result<u64, ApiError> {
        v.trim().parse().map_err(|_| {
            ApiError::bad_request(format!(
                "field `{name}`: `{}` is not a non-negative integer",
                printable(v, 40)
            ))
        })
    };
    let float = |name: &str, v: &str| -> Result<f32, ApiError> {
        v.trim()
            .parse::<f32>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "field `{name}`: `{}` is not a number",
                    printable(v, 40)
                ))
            })
    };
    for (name, value) in fields {
        match name.as_str() {
            "prompt" => g.prompt = Some(value.clone()),
            "n" => g.n = Some(num("n", value)?),
            "size" => g.size = Some(value.clone()),
            "response_format" => g.response_format = Some(value.clone()),
            "model" => g.model = Some(value.clone()),
            "negative_prompt" => g.negative_prompt = Some(value.clone()),
            "steps" => g.steps = Some(num("steps", value)?),
            "guidance" | "guidance_scale" => g.guidance = Some(float(name, value)?),
            "strength" => g.strength = Some(float("strength", value)?),
            "scheduler" => g.scheduler = Some(value.clone()),
            "seed" => g.seed = Some(Value::String(value.clone())),
            // OpenAI's other fields (`user`, `quality`, ...) do not apply.
            _ => {}
        }
    }
    Ok(g)
}
