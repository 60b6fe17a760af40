//! The public face of the pipelines' `__call__`: the arguments (a shared core and one part per
//! task family), the output, and the per-step callback. The flows themselves are in
//! `stable_diffusion/` and `stable_diffusion_xl/`, their shared loop in `denoise.rs`.

use crate::error::PipelineError;
use crate::image_processor::FloatImages;
use burn::tensor::Tensor;
use diff_schedulers::TorchGenerator;
use image::RgbImage;

/// Where the random numbers come from: diffusers' `generator=`.
#[derive(Debug, Clone)]
pub enum Generators {
    /// One `torch.Generator("cpu").manual_seed(seed)` for the whole batch.
    Seed(u64),
    /// One generator per image (`generator=[g0, g1, ...]`), each seeded.
    Seeds(Vec<u64>),
    /// No seed: a generator seeded from the OS (`generator=None`).
    Random,
}

impl Generators {
    pub(crate) fn build(&self) -> Vec<TorchGenerator> {
        match self {
            Generators::Seed(s) => vec![TorchGenerator::new(*s)],
            Generators::Seeds(seeds) => seeds.iter().map(|s| TorchGenerator::new(*s)).collect(),
            Generators::Random => vec![TorchGenerator::from_entropy()],
        }
    }
}

/// What a pipeline returns (`output_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputType {
    /// 8-bit images (`"pil"`).
    #[default]
    Pil,
    /// Float images in [0, 1], `[N, H, W, 3]` (`"np"`).
    Np,
    /// The final latents, not decoded (`"latent"`).
    Latent,
}

/// The arguments of `__call__`: the core every task shares (diffusers' common argument names),
/// plus one part per task family ([`Img2ImgArgs`], [`InpaintArgs`], [`XlArgs`]). A flow reads
/// the core and the parts of its own task and ignores the others, as diffusers' `**kwargs` do.
/// `None` means diffusers' default for the class that runs.
#[derive(Debug, Clone)]
pub struct CallArgs {
    /// `prompt`: one string per batch item (ignored when `prompt_embeds` is given).
    pub prompt: Vec<String>,
    /// `negative_prompt`: one string (used for every prompt) or one per prompt.
    pub negative_prompt: Option<Vec<String>>,
    /// Precomputed `prompt_embeds` `[B, 77, C]`.
    pub prompt_embeds: Option<Tensor<3>>,
    /// Precomputed `negative_prompt_embeds`.
    pub negative_prompt_embeds: Option<Tensor<3>>,
    /// `num_images_per_prompt` (default 1).
    pub num_images_per_prompt: usize,
    /// `height` (default `unet.config.sample_size * vae_scale_factor`; must be a multiple of 8).
    pub height: Option<usize>,
    /// `width` (as height).
    pub width: Option<usize>,
    /// `num_inference_steps` (default 50; the length of `timesteps` / `sigmas` when given).
    pub num_inference_steps: usize,
    /// Custom `timesteps` (descending), for schedulers whose `set_timesteps` accepts them
    /// (`retrieve_timesteps`).
    pub timesteps: Option<Vec<f64>>,
    /// Custom `sigmas` (descending), for schedulers whose `set_timesteps` accepts them.
    pub sigmas: Option<Vec<f64>>,
    /// `guidance_scale` (default 7.5, SDXL 5.0); classifier-free guidance when > 1.
    pub guidance_scale: Option<f32>,
    /// `guidance_rescale` (default 0; only the text-to-image classes and SDXL use it).
    pub guidance_rescale: f32,
    /// `eta` (DDIM).
    pub eta: f32,
    /// `generator`.
    pub generator: Generators,
    /// Initial `latents` `[B*n, C, h, w]` (not yet scaled by `init_noise_sigma`).
    pub latents: Option<Tensor<4>>,
    /// `output_type`.
    pub output_type: OutputType,
    /// `clip_skip`.
    pub clip_skip: Option<usize>,
    /// The image-to-image part (img2img and inpaint).
    pub img2img: Img2ImgArgs,
    /// The inpainting part.
    pub inpaint: InpaintArgs,
    /// The SDXL part (second prompts, added conditioning, ensemble of experts).
    pub xl: XlArgs,
    /// The Perturbed-Attention Guidance part (the PAG classes).
    pub pag: crate::pag::PagArgs,
    /// The self-attention guidance part (`StableDiffusionSAGPipeline`).
    pub sag: SagArgs,
    /// The video part (`AnimateDiffPipeline`: `num_frames`, `decode_chunk_size`).
    pub video: crate::animatediff::VideoArgs,
    /// The IP-Adapter part (`ip_adapter_image`, `ip_adapter_image_embeds`; every SD and SDXL
    /// task).
    pub ip_adapter: crate::ip_adapter::IpAdapterArgs,
}

/// The arguments only `StableDiffusionSAGPipeline` takes.
#[derive(Debug, Clone, Copy)]
pub struct SagArgs {
    /// `sag_scale` (default 0.75): the weight of the self-attention guidance term; 0 turns the
    /// guidance (and its second UNet pass) off.
    pub sag_scale: f32,
}

impl Default for SagArgs {
    fn default() -> Self {
        Self { sag_scale: 0.75 }
    }
}

/// The arguments of the image-to-image tasks (img2img and inpaint).
#[derive(Debug, Clone, Default)]
pub struct Img2ImgArgs {
    /// `image`.
    pub image: Option<Vec<RgbImage>>,
    /// SDXL img2img / inpaint `image` given as latents `[B, C, h, w]` (used instead of `image`):
    /// diffusers takes a latent-channel tensor as is, without the VAE, e.g. a base run's
    /// `output_type="latent"` output handed to the refiner with `denoising_start`.
    pub image_latents: Option<Tensor<4>>,
    /// `strength` (default 0.8 SD img2img, 0.3 SDXL img2img, 1.0 SD inpaint, 0.9999 SDXL
    /// inpaint).
    pub strength: Option<f32>,
}

/// The arguments of the inpainting tasks (with [`Img2ImgArgs`] for the image).
#[derive(Debug, Clone, Default)]
pub struct InpaintArgs {
    /// `mask_image` (white = repaint).
    pub mask_image: Option<Vec<RgbImage>>,
    /// `masked_image_latents` `[B, C, h, w]` (already scaled by the VAE's `scaling_factor`):
    /// used instead of VAE-encoding `image * (mask < 0.5)`, so no random draw is made for it.
    pub masked_image_latents: Option<Tensor<4>>,
    /// `padding_mask_crop`: crop image and mask to the masked region grown by this many pixels
    /// (and to the generation aspect ratio), generate there, and paste the result back onto the
    /// original image (`get_crop_region`, `resize_mode="fill"`, `apply_overlay`). As in
    /// diffusers it needs one image, one mask and `OutputType::Pil`; the output images then
    /// have the original image's size.
    pub padding_mask_crop: Option<usize>,
}

/// The arguments only the SDXL classes take.
#[derive(Debug, Clone)]
pub struct XlArgs {
    /// `prompt_2` (defaults to `prompt`).
    pub prompt_2: Option<Vec<String>>,
    /// `negative_prompt_2` (defaults to `negative_prompt`).
    pub negative_prompt_2: Option<Vec<String>>,
    /// Precomputed `pooled_prompt_embeds` `[B, P]`.
    pub pooled_prompt_embeds: Option<Tensor<2>>,
    /// Precomputed `negative_pooled_prompt_embeds`.
    pub negative_pooled_prompt_embeds: Option<Tensor<2>>,
    /// `original_size` (height, width); default (H, W).
    pub original_size: Option<(usize, usize)>,
    /// `crops_coords_top_left`; default (0, 0).
    pub crops_coords_top_left: (usize, usize),
    /// `target_size`; default (H, W).
    pub target_size: Option<(usize, usize)>,
    /// `negative_original_size`.
    pub negative_original_size: Option<(usize, usize)>,
    /// `negative_crops_coords_top_left`.
    pub negative_crops_coords_top_left: (usize, usize),
    /// `negative_target_size`.
    pub negative_target_size: Option<(usize, usize)>,
    /// img2img / inpaint `aesthetic_score` (default 6.0).
    pub aesthetic_score: f32,
    /// img2img / inpaint `negative_aesthetic_score` (default 2.5).
    pub negative_aesthetic_score: f32,
    /// `denoising_end` in (0, 1): stop early, leaving the rest to a refiner.
    pub denoising_end: Option<f32>,
    /// img2img / inpaint `denoising_start` in (0, 1): start part-way, without adding noise to
    /// the init latents (the refiner half of an ensemble of experts).
    pub denoising_start: Option<f32>,
}

impl Default for XlArgs {
    fn default() -> Self {
        Self {
            prompt_2: None,
            negative_prompt_2: None,
            pooled_prompt_embeds: None,
            negative_pooled_prompt_embeds: None,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            negative_original_size: None,
            negative_crops_coords_top_left: (0, 0),
            negative_target_size: None,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
            denoising_end: None,
            denoising_start: None,
        }
    }
}

impl Default for CallArgs {
    fn default() -> Self {
        Self {
            prompt: Vec::new(),
            negative_prompt: None,
            prompt_embeds: None,
            negative_prompt_embeds: None,
            num_images_per_prompt: 1,
            height: None,
            width: None,
            num_inference_steps: 50,
            timesteps: None,
            sigmas: None,
            guidance_scale: None,
            guidance_rescale: 0.0,
            eta: 0.0,
            generator: Generators::Random,
            latents: None,
            output_type: OutputType::Pil,
            clip_skip: None,
            img2img: Img2ImgArgs::default(),
            inpaint: InpaintArgs::default(),
            xl: XlArgs::default(),
            pag: crate::pag::PagArgs::default(),
            sag: SagArgs::default(),
            video: Default::default(),
            ip_adapter: Default::default(),
        }
    }
}

impl CallArgs {
    /// Arguments for one prompt with everything else at its default.
    pub fn prompt(prompt: impl Into<String>) -> Self {
        Self {
            prompt: vec![prompt.into()],
            ..Self::default()
        }
    }

    /// Sets `negative_prompt` to one string.
    pub fn with_negative_prompt(mut self, negative_prompt: impl Into<String>) -> Self {
        self.negative_prompt = Some(vec![negative_prompt.into()]);
        self
    }

    /// Sets `num_inference_steps`.
    pub fn with_steps(mut self, num_inference_steps: usize) -> Self {
        self.num_inference_steps = num_inference_steps;
        self
    }

    /// Sets `guidance_scale`.
    pub fn with_guidance_scale(mut self, guidance_scale: f32) -> Self {
        self.guidance_scale = Some(guidance_scale);
        self
    }

    /// Seeds one generator for the batch (`generator=torch.Generator().manual_seed(seed)`).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.generator = Generators::Seed(seed);
        self
    }

    /// Sets `height` and `width`.
    pub fn with_size(mut self, height: usize, width: usize) -> Self {
        self.height = Some(height);
        self.width = Some(width);
        self
    }

    /// Sets `output_type`.
    pub fn with_output_type(mut self, output_type: OutputType) -> Self {
        self.output_type = output_type;
        self
    }

    /// Sets the img2img / inpaint `image` to one image.
    pub fn with_image(mut self, image: RgbImage) -> Self {
        self.img2img.image = Some(vec![image]);
        self
    }

    /// Sets the img2img / inpaint `strength`.
    pub fn with_strength(mut self, strength: f32) -> Self {
        self.img2img.strength = Some(strength);
        self
    }

    /// Sets SDXL img2img / inpaint's `image` given as latents (used instead of `image`).
    pub fn with_image_latents(mut self, image_latents: Tensor<4>) -> Self {
        self.img2img.image_latents = Some(image_latents);
        self
    }

    /// Sets the inpaint `masked_image_latents`.
    pub fn with_masked_image_latents(mut self, masked_image_latents: Tensor<4>) -> Self {
        self.inpaint.masked_image_latents = Some(masked_image_latents);
        self
    }

    /// Sets the inpaint `padding_mask_crop`.
    pub fn with_padding_mask_crop(mut self, padding_mask_crop: usize) -> Self {
        self.inpaint.padding_mask_crop = Some(padding_mask_crop);
        self
    }

    /// Sets the inpaint `mask_image` to one mask.
    pub fn with_mask_image(mut self, mask_image: RgbImage) -> Self {
        self.inpaint.mask_image = Some(vec![mask_image]);
        self
    }

    /// Sets self-attention guidance's `sag_scale`.
    pub fn with_sag_scale(mut self, sag_scale: f32) -> Self {
        self.sag.sag_scale = sag_scale;
        self
    }

    /// Sets `ip_adapter_image` to one image for one loaded IP-Adapter.
    pub fn with_ip_adapter_image(mut self, image: RgbImage) -> Self {
        self.ip_adapter.ip_adapter_image = Some(vec![vec![image]]);
        self
    }

    /// Sets SDXL's `denoising_start` and `denoising_end` (an ensemble of experts' hand-off).
    pub fn with_denoising(mut self, start: Option<f32>, end: Option<f32>) -> Self {
        self.xl.denoising_start = start;
        self.xl.denoising_end = end;
        self
    }
}

/// What `__call__` returns.
#[derive(Debug, Clone)]
pub struct PipelineOutput {
    /// Float images in [0, 1] (for `Pil` and `Np`), `None` for `Latent`.
    pub images: Option<FloatImages>,
    /// The final latents `[N, C, h, w]` (always kept: cheap, and what `Latent` returns).
    pub latents: Tensor<4>,
    /// The safety checker's flags, `None` when no checker ran.
    pub nsfw_content_detected: Option<Vec<bool>>,
    /// Whether the callback stopped the loop early.
    pub interrupted: bool,
}

impl PipelineOutput {
    /// The images as 8-bit RGB (empty for `Latent`).
    pub fn rgb8(&self) -> Vec<RgbImage> {
        self.images
            .as_ref()
            .map(FloatImages::to_rgb8_all)
            .unwrap_or_default()
    }
}

/// What the per-step callback sees (`callback_on_step_end(pipe, i, t, {"latents": ...})`).
#[derive(Debug)]
pub struct StepInfo<'a> {
    /// Step index `i` (0-based).
    pub step: usize,
    /// Number of steps in the loop.
    pub total: usize,
    /// The timestep `t`.
    pub timestep: f64,
    /// The latents after this step.
    pub latents: &'a Tensor<4>,
}

/// What the callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    /// Go on.
    Continue,
    /// Stop after this step (`pipe._interrupt = True`).
    Stop,
}

/// A per-step callback.
pub type StepCallback<'a> = dyn FnMut(&StepInfo<'_>) -> StepControl + 'a;

/// diffusers' `check_inputs` for the sizes: both multiples of 8.
pub(crate) fn check_size(height: usize, width: usize) -> Result<(), PipelineError> {
    if !height.is_multiple_of(8) || !width.is_multiple_of(8) || height == 0 || width == 0 {
        return Err(PipelineError::arg(
            "height/width",
            format!("`height` and `width` have to be divisible by 8 but are {height} and {width}."),
        ));
    }
    // Not in diffusers: a size (given, or `unet.config.sample_size` times the VAE factor from
    // a stranger's config) whose latents could not be allocated is refused up front.
    let pixels = (height as u64).saturating_mul(width as u64);
    if pixels > diff_image::MAX_IMAGE_PIXELS {
        return Err(PipelineError::arg(
            "height/width",
            format!(
                "{height} x {width} is {pixels} pixels, above the limit of {} (Pillow's MAX_IMAGE_PIXELS); when not given, the size is the UNet config's `sample_size` times the VAE scale factor",
                diff_image::MAX_IMAGE_PIXELS
            ),
        ));
    }
    Ok(())
}

/// The Python float a user's `f32` argument stands for: the shortest decimal that rounds to it,
/// read as `f64` (`0.7f32` is 0.699999988 as `f64::from`, but the user meant Python's 0.7, and
/// `int(10 * 0.7)` must give 7, not 6).
pub(crate) fn py_float(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}
