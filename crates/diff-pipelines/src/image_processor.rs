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
//! Resizing is Pillow's, byte for byte ([`crate::resample`]); images are handled as RGB (as
//! diffusers' `load_image` converts them), and a mask is resized in RGB and then converted to
//! `L`, which equals PIL resizing an `L` mask since every channel is filtered alone. Checked
//! against diffusers by `tests/image_processor_parity.rs` (`tests/fixtures/41-image-processor`).

use crate::error::PipelineError;
use crate::resample::{Image8, Resample, resize};
use burn::tensor::{Device, Tensor, TensorData};
use diff_schedulers::NoiseDtype;
use image::{GrayImage, RgbImage};
use std::path::Path;

/// `VaeImageProcessor.resize`'s `resize_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// `"default"`: stretch to the requested size.
    #[default]
    Default,
    /// `"fill"`: fit inside keeping the aspect ratio, centre, and fill the empty bands by
    /// stretching the image's edge rows or columns (the inpaint pipeline's `padding_mask_crop`).
    Fill,
    /// `"crop"`: cover keeping the aspect ratio, centre, and cut what overflows.
    Crop,
}

impl ResizeMode {
    /// The mode diffusers names `name` (`default`, `fill`, `crop`).
    pub fn from_name(name: &str) -> Result<Self, PipelineError> {
        match name {
            "default" => Ok(Self::Default),
            "fill" => Ok(Self::Fill),
            "crop" => Ok(Self::Crop),
            other => Err(PipelineError::arg(
                "resize_mode",
                format!("resize_mode {other} is not supported (expected default, fill or crop)"),
            )),
        }
    }
}

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

/// Reads an image file (PNG or JPEG) as diffusers' `load_image` does: applies the EXIF
/// orientation (`ImageOps.exif_transpose`, so a phone photo stored sideways comes out upright)
/// and converts to RGB (alpha dropped, grey and palette expanded).
///
/// JPEG files go through [`crate::jpeg`], which gives Pillow's (libjpeg-turbo's) bytes; JPEG
/// kinds it does not implement (arithmetic coding, 12-bit, CMYK, ...) fall back to the `image`
/// crate with a warning, since its decoder rounds differently from Pillow by a few levels.
pub fn load_image(path: &Path) -> Result<RgbImage, PipelineError> {
    let bytes = std::fs::read(path).map_err(|e| PipelineError::io(path, e))?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        match crate::jpeg::decode(&bytes) {
            Ok(decoded) => return jpeg_to_rgb(path, decoded),
            Err(crate::jpeg::JpegError::Unsupported(what)) => tracing::warn!(
                path = %path.display(),
                "{what}: decoding with the `image` crate, whose pixels may differ from Pillow's"
            ),
            Err(e) => {
                return Err(PipelineError::Image {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                });
            }
        }
    }
    let bad = |e: image::ImageError| PipelineError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| PipelineError::io(path, e))?;
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let orientation = image::ImageDecoder::orientation(&mut decoder)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// An RGB image from [`crate::jpeg::decode`]'s output, turned upright by its EXIF orientation.
fn jpeg_to_rgb(path: &Path, decoded: crate::jpeg::DecodedJpeg) -> Result<RgbImage, PipelineError> {
    let orientation = decoded
        .exif
        .as_deref()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let (width, height) = (decoded.width, decoded.height);
    let size_error = || PipelineError::Image {
        path: path.to_path_buf(),
        message: format!("JPEG size {width}x{height} does not fit in u32"),
    };
    let w = u32::try_from(width).map_err(|_| size_error())?;
    let h = u32::try_from(height).map_err(|_| size_error())?;
    let rgb = RgbImage::from_raw(w, h, decoded.into_rgb()).ok_or_else(size_error)?;
    let mut img = image::DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// PIL's `convert("L")`: `(r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16`.
pub fn to_grayscale(img: &RgbImage) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b] = img.get_pixel(x, y).0;
        image::Luma([luma(r, g, b)])
    })
}

fn luma(r: u8, g: u8, b: u8) -> u8 {
    let l = (u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16;
    l.min(255) as u8
}

/// An [`Image8`] view of an RGB image (a copy of its bytes).
pub fn rgb_to_image8(img: &RgbImage) -> Image8 {
    Image8 {
        width: img.width() as usize,
        height: img.height() as usize,
        channels: 3,
        data: img.as_raw().clone(),
    }
}

/// An RGB image from an [`Image8`] (grey images are expanded as PIL's `convert("RGB")`).
pub fn image8_to_rgb(img: &Image8) -> Result<RgbImage, PipelineError> {
    let data = match img.channels {
        3 => img.data.clone(),
        1 => img.data.iter().flat_map(|&v| [v, v, v]).collect(),
        c => img
            .data
            .chunks_exact(c.max(1))
            .flat_map(|p| {
                [
                    p[0],
                    p.get(1).copied().unwrap_or(0),
                    p.get(2).copied().unwrap_or(0),
                ]
            })
            .collect(),
    };
    RgbImage::from_raw(img.width as u32, img.height as u32, data).ok_or_else(|| {
        PipelineError::arg(
            "image",
            format!(
                "{}x{} image has the wrong number of bytes",
                img.width, img.height
            ),
        )
    })
}

/// PIL's `convert("L")` of an interleaved RGB (or already grey) image.
fn image8_to_gray(img: &Image8) -> Image8 {
    if img.channels == 1 {
        return img.clone();
    }
    let c = img.channels.max(1);
    let data = img
        .data
        .chunks_exact(c)
        .map(|p| match p {
            [r, g, b, ..] => luma(*r, *g, *b),
            [v, ..] => *v,
            [] => 0,
        })
        .collect();
    Image8 {
        width: img.width,
        height: img.height,
        channels: 1,
        data,
    }
}

/// The crop box `(x1, y1, x2, y2)` of `crops_coords` / `get_crop_region`, in pixels.
pub type CropBox = (i64, i64, i64, i64);

/// Python's floor division by 2.
fn floor_half(v: i64) -> i64 {
    v.div_euclid(2)
}

/// diffusers' `VaeImageProcessor.get_crop_region(mask, width, height, pad)`: the smallest box
/// holding every non-zero pixel of the (grey) mask, grown by `pad` on each side, then widened
/// or heightened about its centre to the `width / height` aspect ratio and shifted back inside
/// the image. An all-black mask, for which diffusers computes a meaningless box, is an error.
pub fn get_crop_region(
    mask: &RgbImage,
    width: usize,
    height: usize,
    pad: usize,
) -> Result<CropBox, PipelineError> {
    let gray = to_grayscale(mask);
    let (w, h) = (gray.width() as i64, gray.height() as i64);
    let col_empty = |x: u32| (0..gray.height()).all(|y| gray.get_pixel(x, y).0[0] == 0);
    let row_empty = |y: u32| (0..gray.width()).all(|x| gray.get_pixel(x, y).0[0] == 0);
    let crop_left = (0..gray.width()).take_while(|&x| col_empty(x)).count() as i64;
    if crop_left == w {
        return Err(PipelineError::arg(
            "mask_image",
            "padding_mask_crop needs a mask with at least one non-black pixel",
        ));
    }
    if width == 0 || height == 0 {
        return Err(PipelineError::arg(
            "height/width",
            format!("cannot crop to a {width}x{height} aspect ratio"),
        ));
    }
    let crop_right = (0..gray.width())
        .rev()
        .take_while(|&x| col_empty(x))
        .count() as i64;
    let crop_top = (0..gray.height()).take_while(|&y| row_empty(y)).count() as i64;
    let crop_bottom = (0..gray.height())
        .rev()
        .take_while(|&y| row_empty(y))
        .count() as i64;
    let pad = pad as i64;
    let mut x1 = (crop_left - pad).max(0);
    let mut y1 = (crop_top - pad).max(0);
    let mut x2 = (w - crop_right + pad).min(w);
    let mut y2 = (h - crop_bottom + pad).min(h);

    let ratio_crop_region = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio_processing = width as f64 / height as f64;
    if ratio_crop_region > ratio_processing {
        let desired_height = (x2 - x1) as f64 / ratio_processing;
        let diff = (desired_height - (y2 - y1) as f64) as i64;
        y1 -= floor_half(diff);
        y2 += diff - floor_half(diff);
        if y2 >= h {
            let over = y2 - h;
            y2 -= over;
            y1 -= over;
        }
        if y1 < 0 {
            y2 -= y1;
            y1 = 0;
        }
        if y2 >= h {
            y2 = h;
        }
    } else {
        let desired_width = (y2 - y1) as f64 * ratio_processing;
        let diff = (desired_width - (x2 - x1) as f64) as i64;
        x1 -= floor_half(diff);
        x2 += diff - floor_half(diff);
        if x2 >= w {
            let over = x2 - w;
            x2 -= over;
            x1 -= over;
        }
        if x1 < 0 {
            x2 -= x1;
            x1 = 0;
        }
        if x2 >= w {
            x2 = w;
        }
    }
    Ok((x1, y1, x2, y2))
}

/// `((255 * 255 * v) + 128)`-style division by 255 with PIL's rounding (`DIV255`).
fn div255(v: u32) -> u32 {
    let t = v + 128;
    ((t >> 8) + t) >> 8
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

    /// `VaeImageProcessor.resize(image, height, width, resize_mode)` of a PIL image.
    pub fn resize(
        &self,
        image: &Image8,
        height: usize,
        width: usize,
        mode: ResizeMode,
    ) -> Result<Image8, PipelineError> {
        if height == 0 || width == 0 {
            return Err(PipelineError::arg(
                "height/width",
                format!("cannot resize to {width}x{height}"),
            ));
        }
        let (iw, ih) = (image.width, image.height);
        if mode != ResizeMode::Default && (iw == 0 || ih == 0) {
            return Err(PipelineError::arg(
                "image",
                format!("cannot resize an empty {iw}x{ih} image"),
            ));
        }
        let ratio = width as f64 / height as f64;
        let src_ratio = iw as f64 / ih.max(1) as f64;
        match mode {
            ResizeMode::Default => resize(image, width, height, self.resample, None),
            ResizeMode::Fill => {
                let src_w = if ratio < src_ratio {
                    width
                } else {
                    iw * height / ih
                };
                let src_h = if ratio >= src_ratio {
                    height
                } else {
                    ih * width / iw
                };
                let resized = resize(image, src_w, src_h, self.resample, None)?;
                // `Image.new("RGB", ...)`: black; a grey image pasted into it is expanded to
                // RGB, which the later `convert("L")` undoes, so the channel count is kept.
                let mut res = Image8::new(width, height, image.channels);
                let (w2, h2) = (width as i64 / 2, height as i64 / 2);
                res.paste(&resized, w2 - src_w as i64 / 2, h2 - src_h as i64 / 2);
                // The bands are stretched from the edge rows or columns with `resize(size,
                // box=...)` and no `resample`: Pillow's default, bicubic.
                let (rw, rh) = (resized.width as f32, resized.height as f32);
                if ratio < src_ratio {
                    let fill = h2 - src_h as i64 / 2;
                    if fill > 0 {
                        let f = fill as usize;
                        let wf = width as f32;
                        let top = resize(
                            &resized,
                            width,
                            f,
                            Resample::Bicubic,
                            Some([0.0, 0.0, wf, 0.0]),
                        )?;
                        res.paste(&top, 0, 0);
                        let bottom = resize(
                            &resized,
                            width,
                            f,
                            Resample::Bicubic,
                            Some([0.0, rh, wf, rh]),
                        )?;
                        res.paste(&bottom, 0, fill + src_h as i64);
                    }
                } else if ratio > src_ratio {
                    let fill = w2 - src_w as i64 / 2;
                    if fill > 0 {
                        let f = fill as usize;
                        let hf = height as f32;
                        let left = resize(
                            &resized,
                            f,
                            height,
                            Resample::Bicubic,
                            Some([0.0, 0.0, 0.0, hf]),
                        )?;
                        res.paste(&left, 0, 0);
                        let right = resize(
                            &resized,
                            f,
                            height,
                            Resample::Bicubic,
                            Some([rw, 0.0, rw, hf]),
                        )?;
                        res.paste(&right, fill + src_w as i64, 0);
                    }
                }
                Ok(res)
            }
            ResizeMode::Crop => {
                let src_w = if ratio > src_ratio {
                    width
                } else {
                    iw * height / ih
                };
                let src_h = if ratio <= src_ratio {
                    height
                } else {
                    ih * width / iw
                };
                let resized = resize(image, src_w, src_h, self.resample, None)?;
                let mut res = Image8::new(width, height, image.channels);
                res.paste(
                    &resized,
                    width as i64 / 2 - src_w as i64 / 2,
                    height as i64 / 2 - src_h as i64 / 2,
                );
                Ok(res)
            }
        }
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

    /// diffusers' `apply_overlay(mask, init_image, image, crop_coords)`: the generated `image`
    /// (resized with `resize_mode="crop"` into `crop_coords` when given) shows where the mask
    /// is white; the original `init_image` stays where it is black, blended in between, with
    /// PIL's integer arithmetic (premultiplied paste through the inverted mask, then
    /// `alpha_composite`).
    pub fn apply_overlay(
        &self,
        mask: &RgbImage,
        init_image: &RgbImage,
        image: &RgbImage,
        crop_coords: Option<CropBox>,
    ) -> Result<RgbImage, PipelineError> {
        let (width, height) = (init_image.width() as usize, init_image.height() as usize);
        if mask.dimensions() != init_image.dimensions() {
            return Err(PipelineError::arg(
                "mask_image",
                format!(
                    "the mask is {}x{} but the image is {width}x{height}; they must match",
                    mask.width(),
                    mask.height()
                ),
            ));
        }
        let gray = to_grayscale(mask);
        // init_image_masked (RGBa, then RGBA): the original through the inverted mask.
        let mut masked: Vec<[u8; 4]> = Vec::with_capacity(width * height);
        for (p, m) in init_image.pixels().zip(gray.pixels()) {
            let m = 255 - u32::from(m.0[0]);
            // RGB -> RGBA -> RGBa is the identity for opaque pixels; the paste with an `L`
            // mask blends each byte with the black destination: DIV255(in * m).
            let px = [
                div255(u32::from(p.0[0]) * m),
                div255(u32::from(p.0[1]) * m),
                div255(u32::from(p.0[2]) * m),
                div255(255 * m),
            ];
            let a = px[3];
            // RGBa -> RGBA: un-premultiply with integer division, clipped.
            let un = |c: u32| {
                if a == 0 || a == 255 {
                    c
                } else {
                    (255 * c / a).min(255)
                }
            };
            masked.push([un(px[0]) as u8, un(px[1]) as u8, un(px[2]) as u8, a as u8]);
        }
        let base: Image8 = match crop_coords {
            Some((x, y, x2, y2)) => {
                let (w, h) = (x2 - x, y2 - y);
                if w <= 0 || h <= 0 {
                    return Err(PipelineError::arg(
                        "crop_coords",
                        format!("empty crop box ({x}, {y}, {x2}, {y2})"),
                    ));
                }
                let resized = self.resize(
                    &rgb_to_image8(image),
                    h as usize,
                    w as usize,
                    ResizeMode::Crop,
                )?;
                let mut base = Image8::new(width, height, 3);
                base.paste(&resized, x, y);
                base
            }
            None => {
                if image.dimensions() != init_image.dimensions() {
                    return Err(PipelineError::arg(
                        "image",
                        format!(
                            "the generated image is {}x{} but the original is {width}x{height}; pass crop_coords or match the sizes",
                            image.width(),
                            image.height()
                        ),
                    ));
                }
                rgb_to_image8(image)
            }
        };
        // alpha_composite(opaque base, masked original) with 7 extra bits, as Pillow.
        const BITS: u32 = 7;
        let shift_div255 = |a: u32| ((a >> 8) + a) >> 8;
        let mut out = Vec::with_capacity(width * height * 3);
        for (dst, src) in base.data.chunks_exact(3).zip(&masked) {
            let sa = u32::from(src[3]);
            if sa == 0 {
                out.extend_from_slice(dst);
                continue;
            }
            let blend = 255 * (255 - sa);
            let outa255 = sa * 255 + blend;
            let coef1 = sa * 255 * 255 * (1 << BITS) / outa255;
            let coef2 = 255 * (1 << BITS) - coef1;
            for c in 0..3 {
                let tmp = u32::from(src[c]) * coef1 + u32::from(dst[c]) * coef2;
                out.push((shift_div255(tmp + (0x80 << BITS)) >> BITS) as u8);
            }
        }
        RgbImage::from_raw(width as u32, height as u32, out)
            .ok_or_else(|| PipelineError::arg("image", "overlay buffer has the wrong size"))
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
