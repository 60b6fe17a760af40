//! diffusers' `VaeImageProcessor`: images in, `[-1, 1]` tensors out, and back.
//!
//! - [`VaeImageProcessor::preprocess_with`] (and [`VaeImageProcessor::preprocess`], its
//!   `resize_mode="default"` form): optional `crops_coords` crop -> resize to the requested
//!   size (or the image's), rounded down to a multiple of `vae_scale_factor`
//!   (`get_default_height_width`), in one of the resize modes `default` / `fill` / `crop` ->
//!   float `/255` -> `2x - 1`, as `[N, 3, H, W]`.
//! - [`VaeImageProcessor::preprocess_mask_with`]: the inpaint mask processor diffusers builds with
//!   `do_normalize=False, do_binarize=True, do_convert_grayscale=True`: the same crop and resize,
//!   then PIL's `convert("L")` (ITU-R 601 with PIL's integer rounding), `/255`, then
//!   `< 0.5 -> 0`, else `1`.
//! - [`get_crop_region`] and [`VaeImageProcessor::apply_overlay`]: the inpaint pipeline's
//!   `padding_mask_crop` (find the masked box, grow it to the generation aspect, and paste the
//!   generated crop back onto the original with PIL's premultiplied paste and alpha composite,
//!   integer for integer).
//! - [`VaeImageProcessor::postprocess`]: `(x * 0.5 + 0.5).clamp(0, 1)`, NCHW -> NHWC float
//!   (`output_type="np"`), and [`FloatImages::to_rgb8`] for `output_type="pil"`
//!   (`(x * 255).round()`, numpy's round-half-to-even).
//!
//! This file is the tensor half; the byte-level half (Pillow's resize, resize modes,
//! `convert("L")`, `get_crop_region`, `apply_overlay`'s pixel arithmetic, `load_image`) is
//! diff-image's, re-exported here. Images are handled as RGB (as diffusers' `load_image`
//! converts them), and a mask is resized in RGB and then converted to `L`, which equals PIL
//! resizing an `L` mask since every channel is filtered alone. Checked against diffusers by
//! `tests/image_processor_parity.rs` here and in diff-image (`tests/fixtures/41-image-processor`).

use crate::error::PipelineError;
use burn::tensor::{Device, Tensor, TensorData};
use diff_image::resample::{Image8, Resample};
use diff_image::{image8_to_gray, resize_with_mode};
use diff_schedulers::NoiseDtype;
use image::RgbImage;

/// The byte-level half, re-exported from diff-image (resize modes, crop regions, `load_image`).
pub use diff_image::{
    CropBox, ResizeMode, get_crop_region, image8_to_rgb, load_image, rgb_to_image8, to_grayscale,
};

/// Float images in `[0, 1]`, `[N, H, W, 3]` row-major (what diffusers' `output_type="np"`
/// returns).
#[derive(Debug, Clone, PartialEq)]
pub struct FloatImages {
    /// Number of images.
    pub count: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `count * height * width * 3` values.
    pub data: Vec<f32>,
}

impl FloatImages {
    /// One image as 8-bit RGB: `(x * 255).round()` with ties to even, as numpy does in
    /// diffusers' `numpy_to_pil`.
    pub fn to_rgb8(&self, index: usize) -> Option<RgbImage> {
        let n = self.height * self.width * 3;
        let slice = self.data.get(index * n..(index + 1) * n)?;
        let bytes: Vec<u8> = slice
            .iter()
            .map(|v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
            .collect();
        RgbImage::from_raw(self.width as u32, self.height as u32, bytes)
    }

    /// All images as 8-bit RGB.
    pub fn to_rgb8_all(&self) -> Vec<RgbImage> {
        (0..self.count).filter_map(|i| self.to_rgb8(i)).collect()
    }
}

/// `VaeImageProcessor`'s configuration: [`VaeImageProcessor::new`] is diffusers' image
/// processor (`do_resize=True`, `resample="lanczos"`, `do_normalize=True`),
/// [`VaeImageProcessor::mask`] the inpaint pipelines' mask processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeImageProcessor {
    /// `vae_scale_factor`: `2 ** (len(vae.config.block_out_channels) - 1)`.
    pub vae_scale_factor: usize,
    /// `do_resize` (default true): resize to the requested size, rounded down to a multiple
    /// of the scale factor.
    pub do_resize: bool,
    /// `resample` (default `"lanczos"`), through diffusers' `PIL_INTERPOLATION`.
    pub resample: Resample,
    /// `do_normalize` (default true): `2x - 1`.
    pub do_normalize: bool,
    /// `do_binarize` (default false): `< 0.5 -> 0`, else `1`.
    pub do_binarize: bool,
    /// `do_convert_grayscale` (default false): PIL's `convert("L")` after resizing.
    pub do_convert_grayscale: bool,
}

impl VaeImageProcessor {
    /// diffusers' image processor for a VAE with this scale factor.
    pub fn new(vae_scale_factor: usize) -> Self {
        Self {
            vae_scale_factor: vae_scale_factor.max(1),
            do_resize: true,
            resample: Resample::Lanczos,
            do_normalize: true,
            do_binarize: false,
            do_convert_grayscale: false,
        }
    }

    /// The inpaint pipelines' `mask_processor`: `do_normalize=False, do_binarize=True,
    /// do_convert_grayscale=True`.
    pub fn mask(vae_scale_factor: usize) -> Self {
        Self {
            do_normalize: false,
            do_binarize: true,
            do_convert_grayscale: true,
            ..Self::new(vae_scale_factor)
        }
    }

    /// The same processor with another `resample` filter.
    pub fn with_resample(self, resample: Resample) -> Self {
        Self { resample, ..self }
    }

    /// diffusers' `get_default_height_width`: the requested (or the image's) size, rounded down
    /// to a multiple of `vae_scale_factor`. `image` is `(width, height)`.
    pub fn default_height_width(
        &self,
        image: (u32, u32),
        height: Option<usize>,
        width: Option<usize>,
    ) -> (usize, usize) {
        let h = height.unwrap_or(image.1 as usize);
        let w = width.unwrap_or(image.0 as usize);
        let f = self.vae_scale_factor.max(1);
        (h - h % f, w - w % f)
    }

    /// `VaeImageProcessor.resize(image, height, width, resize_mode)` of a PIL image
    /// ([`diff_image::resize_with_mode`] with this processor's `resample`).
    pub fn resize(
        &self,
        image: &Image8,
        height: usize,
        width: usize,
        mode: ResizeMode,
    ) -> Result<Image8, PipelineError> {
        Ok(resize_with_mode(image, height, width, mode, self.resample)?)
    }

    /// `preprocess` of PIL images up to the float conversion: crop, resize, grey conversion.
    /// Returns the processed images and their size.
    fn prepare(
        &self,
        images: &[Image8],
        height: Option<usize>,
        width: Option<usize>,
        mode: ResizeMode,
        crops_coords: Option<CropBox>,
    ) -> Result<(Vec<Image8>, usize, usize), PipelineError> {
        let mut images: Vec<Image8> = match crops_coords {
            Some((x1, y1, x2, y2)) => {
                if x2 <= x1 || y2 <= y1 {
                    return Err(PipelineError::arg(
                        "crops_coords",
                        format!("empty crop box ({x1}, {y1}, {x2}, {y2})"),
                    ));
                }
                images.iter().map(|i| i.crop(x1, y1, x2, y2)).collect()
            }
            None => images.to_vec(),
        };
        let first = images
            .first()
            .ok_or_else(|| PipelineError::arg("image", "no image given"))?;
        let (mut h, mut w) = (first.height, first.width);
        if self.do_resize {
            (h, w) = self.default_height_width((w as u32, h as u32), height, width);
            if h == 0 || w == 0 {
                return Err(PipelineError::arg(
                    "image",
                    format!(
                        "image of {}x{} (or the size asked for) is smaller than the VAE scale factor {}",
                        first.width, first.height, self.vae_scale_factor
                    ),
                ));
            }
            images = images
                .iter()
                .map(|i| self.resize(i, h, w, mode))
                .collect::<Result<_, _>>()?;
        } else if images.iter().any(|i| (i.width, i.height) != (w, h)) {
            return Err(PipelineError::arg(
                "image",
                "images of different sizes cannot be batched without resizing",
            ));
        }
        if self.do_convert_grayscale {
            images = images.iter().map(image8_to_gray).collect();
        }
        Ok((images, h, w))
    }

    /// `pil_to_numpy` -> `numpy_to_pt` -> `normalize` / `binarize`: `[N, C, H, W]`.
    fn images_to_tensor(
        &self,
        images: &[Image8],
        h: usize,
        w: usize,
        device: &Device,
    ) -> Result<Tensor<4>, PipelineError> {
        let c = images.first().map_or(3, |i| i.channels);
        let mut data = Vec::with_capacity(images.len() * c * h * w);
        for img in images {
            for ch in 0..c {
                data.extend(img.data.iter().skip(ch).step_by(c).map(|&p| {
                    // np.float32 / 255.0, then torch's `2.0 * x - 1.0` (two roundings).
                    let mut v = f32::from(p) / 255.0;
                    if self.do_normalize {
                        v = 2.0 * v - 1.0;
                    }
                    if self.do_binarize {
                        v = if v < 0.5 { 0.0 } else { 1.0 };
                    }
                    v
                }));
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [images.len(), c, h, w]),
            device,
        ))
    }

    /// `preprocess(image, height, width, resize_mode, crops_coords)` of RGB images with this
    /// processor's configuration: `[N, C, H, W]` (`C` is 1 with `do_convert_grayscale`).
    pub fn preprocess_with(
        &self,
        images: &[RgbImage],
        height: Option<usize>,
        width: Option<usize>,
        mode: ResizeMode,
        crops_coords: Option<CropBox>,
        device: &Device,
    ) -> Result<Tensor<4>, PipelineError> {
        let views: Vec<Image8> = images.iter().map(rgb_to_image8).collect();
        let (prepared, h, w) = self.prepare(&views, height, width, mode, crops_coords)?;
        self.images_to_tensor(&prepared, h, w, device)
    }

    /// Images -> `[N, 3, H, W]` in `[-1, 1]` (`resize_mode="default"`, no crop). The size is
    /// that of the first image (or the one requested), rounded down to a multiple of
    /// `vae_scale_factor`; every image is resized to it.
    pub fn preprocess(
        &self,
        images: &[RgbImage],
        height: Option<usize>,
        width: Option<usize>,
        device: &Device,
    ) -> Result<Tensor<4>, PipelineError> {
        self.preprocess_with(images, height, width, ResizeMode::Default, None, device)
    }

    /// Inpaint masks through the mask processor (this processor's scale factor and
    /// `resample`, with `do_normalize=False, do_binarize=True, do_convert_grayscale=True`) ->
    /// `[N, 1, H, W]` of 0/1 (white = repaint).
    pub fn preprocess_mask_with(
        &self,
        masks: &[RgbImage],
        height: usize,
        width: usize,
        mode: ResizeMode,
        crops_coords: Option<CropBox>,
        device: &Device,
    ) -> Result<Tensor<4>, PipelineError> {
        if masks.is_empty() {
            return Err(PipelineError::arg("mask_image", "no mask given"));
        }
        let processor = Self {
            do_normalize: false,
            do_binarize: true,
            do_convert_grayscale: true,
            ..*self
        };
        processor.preprocess_with(masks, Some(height), Some(width), mode, crops_coords, device)
    }

    /// Inpaint masks -> `[N, 1, H, W]` of 0/1 (white = repaint), `resize_mode="default"`.
    pub fn preprocess_mask(
        &self,
        masks: &[RgbImage],
        height: usize,
        width: usize,
        device: &Device,
    ) -> Result<Tensor<4>, PipelineError> {
        self.preprocess_mask_with(masks, height, width, ResizeMode::Default, None, device)
    }

    /// diffusers' `apply_overlay(mask, init_image, image, crop_coords)` with this processor's
    /// `resample` ([`diff_image::apply_overlay`]: PIL's premultiplied paste and alpha composite,
    /// integer for integer).
    pub fn apply_overlay(
        &self,
        mask: &RgbImage,
        init_image: &RgbImage,
        image: &RgbImage,
        crop_coords: Option<CropBox>,
    ) -> Result<RgbImage, PipelineError> {
        Ok(diff_image::apply_overlay(
            mask,
            init_image,
            image,
            crop_coords,
            self.resample,
        )?)
    }

    /// `[N, 3, H, W]` decoder output -> float images in `[0, 1]` (`output_type="np"`). Images
    /// whose `do_denormalize` entry is false (flagged by the safety checker) are kept as they
    /// are, as diffusers does.
    pub fn postprocess(
        &self,
        images: Tensor<4>,
        do_denormalize: Option<&[bool]>,
    ) -> Result<FloatImages, PipelineError> {
        self.postprocess_as(images, do_denormalize, NoiseDtype::Float32)
    }

    /// [`Self::postprocess`] of a decoder output computed in `dtype`: torch denormalises in the
    /// tensor's dtype (`images * 0.5 + 0.5`, each op rounded to float16 / bfloat16) before the
    /// float32 conversion, so the images carry that dtype's steps (1/256 near 1 in bfloat16).
    pub fn postprocess_as(
        &self,
        images: Tensor<4>,
        do_denormalize: Option<&[bool]>,
        dtype: NoiseDtype,
    ) -> Result<FloatImages, PipelineError> {
        let round = |v: f32| diff_schedulers::precision::round_scalar(v, dtype);
        let [n, c, h, w] = images.dims();
        let values: Vec<f32> = images
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| {
                PipelineError::arg("image", format!("cannot read decoder output: {e:?}"))
            })?;
        let mut data = vec![0f32; n * h * w * c];
        for b in 0..n {
            let denorm = do_denormalize
                .and_then(|d| d.get(b).copied())
                .unwrap_or(true);
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let v = values[((b * c + ch) * h + y) * w + x];
                        let v = if denorm {
                            round(round(v * 0.5) + 0.5).clamp(0.0, 1.0)
                        } else {
                            v
                        };
                        data[((b * h + y) * w + x) * c + ch] = v;
                    }
                }
            }
        }
        Ok(FloatImages {
            count: n,
            height: h,
            width: w,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_height_width_rounds_down_to_the_scale_factor() {
        let p = VaeImageProcessor::new(8);
        assert_eq!(p.default_height_width((100, 70), None, None), (64, 96));
        assert_eq!(
            p.default_height_width((100, 70), Some(33), Some(17)),
            (32, 16)
        );
    }

    #[test]
    fn to_rgb8_rounds_half_to_even_like_numpy() {
        // 0.5/255 * 255 = 0.5 -> 0 and 1.5/255 * 255 = 1.5 -> 2 with ties to even.
        let imgs = FloatImages {
            count: 1,
            height: 1,
            width: 1,
            data: vec![0.5 / 255.0, 1.5 / 255.0, 1.0],
        };
        let px = imgs.to_rgb8(0).unwrap().get_pixel(0, 0).0;
        assert_eq!(px[2], 255);
        assert!(px[0] <= 1 && px[1] >= 1, "{px:?}");
    }
}
