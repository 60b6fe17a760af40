//! diffusers' `VaeImageProcessor`: images in, `[-1, 1]` tensors out, and back.
//!
//! - [`VaeImageProcessor::preprocess`]: RGB images -> resized to the requested size, rounded
//!   down to a multiple of `vae_scale_factor` (diffusers' `get_default_height_width`) -> float
//!   `/255` -> `2x - 1`, as `[N, 3, H, W]`.
//! - [`VaeImageProcessor::preprocess_mask`]: the inpaint mask processor diffusers builds with
//!   `do_normalize=False, do_binarize=True, do_convert_grayscale=True`: PIL's `convert("L")`
//!   (ITU-R 601 with PIL's integer rounding), resize, `/255`, then `< 0.5 -> 0`, else `1`.
//! - [`VaeImageProcessor::postprocess`]: `(x * 0.5 + 0.5).clamp(0, 1)`, NCHW -> NHWC float
//!   (`output_type="np"`), and [`FloatImages::to_rgb8`] for `output_type="pil"`
//!   (`(x * 255).round()`, numpy's round-half-to-even).
//!
//! Resizing only happens when the size differs (PIL's `resize` to the same size is a copy). It
//! uses the `image` crate's Lanczos3, which is close to but not bit-identical with PIL's Lanczos;
//! the parity fixtures therefore feed images at the generation size.

use crate::error::PipelineError;
use burn::tensor::{Device, Tensor, TensorData};
use image::{GrayImage, RgbImage, imageops::FilterType};
use std::path::Path;

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

/// `VaeImageProcessor` with diffusers' defaults (`do_resize=True`, `do_normalize=True`,
/// `resample="lanczos"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeImageProcessor {
    /// `2 ** (len(vae.config.block_out_channels) - 1)`.
    pub vae_scale_factor: usize,
}

/// Reads an image file (PNG or JPEG) and converts it to RGB, as diffusers' `load_image` does.
pub fn load_image(path: &Path) -> Result<RgbImage, PipelineError> {
    let bytes = std::fs::read(path).map_err(|e| PipelineError::io(path, e))?;
    let img = image::load_from_memory(&bytes).map_err(|e| PipelineError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

/// PIL's `convert("L")`: `(r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16`.
pub fn to_grayscale(img: &RgbImage) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b] = img.get_pixel(x, y).0;
        let l = (u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16;
        image::Luma([l.min(255) as u8])
    })
}

impl VaeImageProcessor {
    /// A processor for a VAE with this scale factor.
    pub fn new(vae_scale_factor: usize) -> Self {
        Self {
            vae_scale_factor: vae_scale_factor.max(1),
        }
    }

    /// diffusers' `get_default_height_width`: the requested (or the image's) size, rounded down
    /// to a multiple of `vae_scale_factor`.
    pub fn default_height_width(
        &self,
        image: (u32, u32),
        height: Option<usize>,
        width: Option<usize>,
    ) -> (usize, usize) {
        let h = height.unwrap_or(image.1 as usize);
        let w = width.unwrap_or(image.0 as usize);
        let f = self.vae_scale_factor;
        (h - h % f, w - w % f)
    }

    /// Images -> `[N, 3, H, W]` in `[-1, 1]`. The size is that of the first image (or the one
    /// requested), rounded down to a multiple of `vae_scale_factor`; every image is resized to
    /// it.
    pub fn preprocess(
        &self,
        images: &[RgbImage],
        height: Option<usize>,
        width: Option<usize>,
        device: &Device,
    ) -> Result<Tensor<4>, PipelineError> {
        let first = images
            .first()
            .ok_or_else(|| PipelineError::arg("image", "no image given"))?;
        let (h, w) = self.default_height_width(first.dimensions(), height, width);
        if h == 0 || w == 0 {
            return Err(PipelineError::arg(
                "image",
                format!(
                    "image of {}x{} is smaller than the VAE scale factor {}",
                    first.width(),
                    first.height(),
                    self.vae_scale_factor
                ),
            ));
        }
        let mut data = Vec::with_capacity(images.len() * 3 * h * w);
        for img in images {
            let resized = resize_rgb(img, w, h);
            for c in 0..3 {
                data.extend(
                    resized
                        .pixels()
                        .map(|p| 2.0 * (f32::from(p.0[c]) / 255.0) - 1.0),
                );
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [images.len(), 3, h, w]),
            device,
        ))
    }

    /// Inpaint masks -> `[N, 1, H, W]` of 0/1 (white = repaint).
    pub fn preprocess_mask(
        &self,
        masks: &[RgbImage],
        height: usize,
        width: usize,
        device: &Device,
    ) -> Result<Tensor<4>, PipelineError> {
        if masks.is_empty() {
            return Err(PipelineError::arg("mask_image", "no mask given"));
        }
        let (h, w) = self.default_height_width((0, 0), Some(height), Some(width));
        let mut data = Vec::with_capacity(masks.len() * h * w);
        for m in masks {
            let gray = to_grayscale(m);
            let gray = if gray.dimensions() == (w as u32, h as u32) {
                gray
            } else {
                image::imageops::resize(&gray, w as u32, h as u32, FilterType::Lanczos3)
            };
            data.extend(gray.pixels().map(|p| {
                if f32::from(p.0[0]) / 255.0 < 0.5 {
                    0.0f32
                } else {
                    1.0
                }
            }));
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [masks.len(), 1, h, w]),
            device,
        ))
    }

    /// `[N, 3, H, W]` decoder output -> float images in `[0, 1]` (`output_type="np"`). Images
    /// whose `do_denormalize` entry is false (flagged by the safety checker) are kept as they
    /// are, as diffusers does.
    pub fn postprocess(
        &self,
        images: Tensor<4>,
        do_denormalize: Option<&[bool]>,
    ) -> Result<FloatImages, PipelineError> {
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
                            (v * 0.5 + 0.5).clamp(0.0, 1.0)
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

fn resize_rgb(img: &RgbImage, w: usize, h: usize) -> RgbImage {
    if img.dimensions() == (w as u32, h as u32) {
        img.clone()
    } else {
        image::imageops::resize(img, w as u32, h as u32, FilterType::Lanczos3)
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
    fn grayscale_matches_pil_rounding() {
        // PIL: Image.new("RGB", (1, 1), (10, 200, 30)).convert("L").getpixel((0, 0)) == 124
        let img = RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 30]));
        assert_eq!(to_grayscale(&img).get_pixel(0, 0).0[0], 124);
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
