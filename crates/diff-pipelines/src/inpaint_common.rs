//! What the SD and SDXL inpaint flows share: `padding_mask_crop`'s checks and crop box, the
//! final `apply_overlay`, the nearest-neighbour mask resize, and the per-step hook of the
//! denoising loop (the 9-channel UNet input, or the 4-channel blend of the known region).

use crate::call::{CallArgs, OutputType};
use crate::denoise::{StepContext, StepHook};
use crate::error::PipelineError;
use crate::image_processor::{
    CropBox, FloatImages, ResizeMode, VaeImageProcessor, get_crop_region,
};
use burn::tensor::{Tensor, TensorData};
use diff_models::UNet2DConditionInput;
use diff_schedulers::NoiseDtype;
use diff_schedulers::precision::round_tensor;
use image::RgbImage;

/// The mask state of one inpaint run, as the denoising loop uses it.
pub(crate) struct InpaintHook {
    /// The mask at latent size, `[B*n, 1, h, w]` (twice that with CFG).
    pub mask: Tensor<4>,
    /// The masked image's latents, batched as `mask` (the 9-channel UNet's third input).
    pub masked_image_latents: Option<Tensor<4>>,
    /// The clean image latents the 4-channel path blends back.
    pub image_latents: Option<Tensor<4>>,
    /// The noise the blended-back image latents are noised with.
    pub noise: Tensor<4>,
    /// A 9-channel UNet (inputs concatenated) rather than a 4-channel one (blend).
    pub nine_channel: bool,
    /// `B * num_images_per_prompt`.
    pub total: usize,
    /// The dtype the blend is rounded to: SD rounds it once to the model dtype; SDXL leaves it
    /// unrounded (`NoiseDtype::Float32`, the identity).
    pub blend_dtype: NoiseDtype,
}

impl StepHook for InpaintHook {
    /// `[latents, mask, masked_image_latents]` on the channel axis for a 9-channel UNet, the
    /// scaled latents alone for a 4-channel one.
    fn unet_input(
        &mut self,
        mut input: UNet2DConditionInput,
        _ctx: &StepContext<'_>,
    ) -> Result<UNet2DConditionInput, PipelineError> {
        if let (Some(masked), true) = (&self.masked_image_latents, self.nine_channel) {
            input.sample = Tensor::cat(vec![input.sample, self.mask.clone(), masked.clone()], 1);
        }
        Ok(input)
    }

    /// After a step, the 4-channel path puts the known region back: the image latents noised to
    /// the next timestep (clean after the last step) outside the mask, the step's latents
    /// inside.
    fn after_step(
        &mut self,
        latents: Tensor<4>,
        ctx: &StepContext<'_>,
    ) -> Result<Tensor<4>, PipelineError> {
        let Some(image_latents) = &self.image_latents else {
            return Ok(latents);
        };
        if self.nine_channel {
            return Ok(latents);
        }
        // With CFG the mask is doubled; its first half is the batch's.
        let init_mask = self.mask.clone().narrow(0, 0, self.total);
        let proper = match ctx.next_timestep {
            Some(t) => ctx
                .scheduler
                .add_noise(image_latents.clone(), self.noise.clone(), &[t])?,
            None => image_latents.clone(),
        };
        Ok(round_tensor(
            init_mask.clone().neg().add_scalar(1.0) * proper + init_mask * latents,
            self.blend_dtype,
        ))
    }
}

/// `padding_mask_crop`: the crop box and the original images and masks, for `apply_overlay`.
pub(crate) struct Overlay {
    /// The crop box in the original image.
    pub crop: CropBox,
    /// The original images.
    pub images: Vec<RgbImage>,
    /// The original masks.
    pub masks: Vec<RgbImage>,
}

impl Overlay {
    /// The decoded images pasted back into the original image.
    pub(crate) fn apply(
        &self,
        processor: &VaeImageProcessor,
        images: FloatImages,
    ) -> Result<FloatImages, PipelineError> {
        apply_overlays(processor, &images, self.crop, &self.images, &self.masks)
    }
}

/// `t` doubled along the batch for classifier-free guidance (`cat([t] * 2)`).
pub(crate) fn double_for_cfg(t: Tensor<4>, do_cfg: bool) -> Tensor<4> {
    if do_cfg {
        Tensor::cat(vec![t.clone(), t], 0)
    } else {
        t
    }
}

/// `padding_mask_crop`'s checks (`check_inputs`: one image given as pixels, one mask, PIL
/// output, and here also equal image and mask sizes) and crop box
/// (`mask_processor.get_crop_region(mask_image, width, height, pad)`, then
/// `resize_mode="fill"`), shared by the SD and SDXL inpaint pipelines. `latents_given` says
/// that the image came as latents (SDXL's `image_latents`), which a crop cannot use.
pub(crate) fn padding_mask_crop(
    args: &CallArgs,
    images: &[RgbImage],
    masks: &[RgbImage],
    latents_given: bool,
    (height, width): (usize, usize),
) -> Result<(Option<CropBox>, ResizeMode), PipelineError> {
    let Some(pad) = args.inpaint.padding_mask_crop else {
        return Ok((None, ResizeMode::Default));
    };
    let (image, mask) = match (images, masks, latents_given) {
        ([i], [m], false) => (i, m),
        _ => {
            return Err(PipelineError::arg(
                "padding_mask_crop",
                format!(
                    "inpainting mask crop needs one image and one mask (the image as pixels), got {} images{} and {} masks",
                    images.len(),
                    if latents_given { " (as latents)" } else { "" },
                    masks.len()
                ),
            ));
        }
    };
    if args.output_type != OutputType::Pil {
        return Err(PipelineError::arg(
            "output_type",
            format!(
                "The output type should be PIL when inpainting mask crop, but is {:?}.",
                args.output_type
            ),
        ));
    }
    if image.dimensions() != mask.dimensions() {
        return Err(PipelineError::arg(
            "mask_image",
            format!(
                "with padding_mask_crop the mask ({}x{}) must have the image's size ({}x{})",
                mask.width(),
                mask.height(),
                image.width(),
                image.height()
            ),
        ));
    }
    Ok((
        Some(get_crop_region(mask, width, height, pad)?),
        ResizeMode::Fill,
    ))
}

/// The inpaint pipeline's last step with `padding_mask_crop`: each generated image (rounded to
/// 8 bits, as `output_type="pil"`) is pasted into the crop box of the original image through
/// the mask (`apply_overlay`); the result has the original's size.
pub(crate) fn apply_overlays(
    processor: &VaeImageProcessor,
    images: &FloatImages,
    crop: CropBox,
    originals: &[RgbImage],
    masks: &[RgbImage],
) -> Result<FloatImages, PipelineError> {
    let (Some(original), Some(mask)) = (originals.first(), masks.first()) else {
        return Err(PipelineError::arg("image", "no image to overlay on"));
    };
    let mut data = Vec::new();
    for generated in images.to_rgb8_all() {
        let out = processor.apply_overlay(mask, original, &generated, Some(crop))?;
        data.extend(out.as_raw().iter().map(|&v| f32::from(v) / 255.0));
    }
    Ok(FloatImages {
        count: images.count,
        height: original.height() as usize,
        width: original.width() as usize,
        data,
    })
}

/// `F.interpolate(mask, size=(h, w))` (mode "nearest": source index `floor(i * in / out)`).
pub(crate) fn nearest_downsample(mask: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let [b, c, ih, iw] = mask.dims();
    let device = mask.device();
    let values: Vec<f32> = mask
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let mut out = Vec::with_capacity(b * c * h * w);
    for plane in 0..b * c {
        for y in 0..h {
            let sy = (y * ih) / h.max(1);
            for x in 0..w {
                let sx = (x * iw) / w.max(1);
                out.push(
                    values
                        .get((plane * ih + sy) * iw + sx)
                        .copied()
                        .unwrap_or(0.0),
                );
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [b, c, h, w]), &device)
}
