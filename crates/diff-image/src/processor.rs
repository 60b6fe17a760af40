//! The byte-level half of diffusers' image processors: what `VaeImageProcessor` does to PIL
//! images before they become tensors, pixel for pixel as Pillow does it.
//!
//! - [`ResizeMode`] and [`resize_with_mode`]: `VaeImageProcessor.resize(image, height, width,
//!   resize_mode)` of a PIL image (`default` / `fill` / `crop`), on [`crate::resample::resize`].
//! - [`to_grayscale`] / [`image8_to_gray`]: PIL's `convert("L")` (ITU-R 601 with PIL's integer
//!   rounding).
//! - [`get_crop_region`] and [`apply_overlay`]: the inpaint pipeline's `padding_mask_crop`
//!   (find the masked box, grow it to the generation aspect, and paste the generated crop back
//!   onto the original with PIL's premultiplied paste and alpha composite, integer for integer).
//!
//! The tensor half (float conversion, normalisation, postprocessing) is
//! `diff_pipelines::VaeImageProcessor`. Checked against diffusers by
//! `tests/image_processor_parity.rs` (`tests/fixtures/41-image-processor`).

use crate::error::ImageError;
use crate::resample::{Image8, Resample, resize};
use image::{GrayImage, RgbImage};

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
    pub fn from_name(name: &str) -> Result<Self, ImageError> {
        match name {
            "default" => Ok(Self::Default),
            "fill" => Ok(Self::Fill),
            "crop" => Ok(Self::Crop),
            other => Err(ImageError::arg(
                "resize_mode",
                format!("resize_mode {other} is not supported (expected default, fill or crop)"),
            )),
        }
    }
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
pub fn image8_to_rgb(img: &Image8) -> Result<RgbImage, ImageError> {
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
        ImageError::arg(
            "image",
            format!(
                "{}x{} image has the wrong number of bytes",
                img.width, img.height
            ),
        )
    })
}

/// PIL's `convert("L")` of an interleaved RGB (or already grey) image.
pub fn image8_to_gray(img: &Image8) -> Image8 {
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
) -> Result<CropBox, ImageError> {
    let gray = to_grayscale(mask);
    let (w, h) = (gray.width() as i64, gray.height() as i64);
    let col_empty = |x: u32| (0..gray.height()).all(|y| gray.get_pixel(x, y).0[0] == 0);
    let row_empty = |y: u32| (0..gray.width()).all(|x| gray.get_pixel(x, y).0[0] == 0);
    let crop_left = (0..gray.width()).take_while(|&x| col_empty(x)).count() as i64;
    if crop_left == w {
        return Err(ImageError::arg(
            "mask_image",
            "padding_mask_crop needs a mask with at least one non-black pixel",
        ));
    }
    if width == 0 || height == 0 {
        return Err(ImageError::arg(
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

/// `VaeImageProcessor.resize(image, height, width, resize_mode)` of a PIL image, with the
/// processor's `resample` filter.
pub fn resize_with_mode(
    image: &Image8,
    height: usize,
    width: usize,
    mode: ResizeMode,
    resample: Resample,
) -> Result<Image8, ImageError> {
    if height == 0 || width == 0 {
        return Err(ImageError::arg(
            "height/width",
            format!("cannot resize to {width}x{height}"),
        ));
    }
    let (iw, ih) = (image.width, image.height);
    if mode != ResizeMode::Default && (iw == 0 || ih == 0) {
        return Err(ImageError::arg(
            "image",
            format!("cannot resize an empty {iw}x{ih} image"),
        ));
    }
    let ratio = width as f64 / height as f64;
    let src_ratio = iw as f64 / ih.max(1) as f64;
    match mode {
        ResizeMode::Default => resize(image, width, height, resample, None),
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
            let resized = resize(image, src_w, src_h, resample, None)?;
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
            let resized = resize(image, src_w, src_h, resample, None)?;
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

/// diffusers' `apply_overlay(mask, init_image, image, crop_coords)`: the generated `image`
/// (resized with `resize_mode="crop"` and `resample` into `crop_coords` when given) shows
/// where the mask is white; the original `init_image` stays where it is black, blended in
/// between, with PIL's integer arithmetic (premultiplied paste through the inverted mask, then
/// `alpha_composite`).
pub fn apply_overlay(
    mask: &RgbImage,
    init_image: &RgbImage,
    image: &RgbImage,
    crop_coords: Option<CropBox>,
    resample: Resample,
) -> Result<RgbImage, ImageError> {
    let (width, height) = (init_image.width() as usize, init_image.height() as usize);
    if mask.dimensions() != init_image.dimensions() {
        return Err(ImageError::arg(
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
                return Err(ImageError::arg(
                    "crop_coords",
                    format!("empty crop box ({x}, {y}, {x2}, {y2})"),
                ));
            }
            let resized = resize_with_mode(
                &rgb_to_image8(image),
                h as usize,
                w as usize,
                ResizeMode::Crop,
                resample,
            )?;
            let mut base = Image8::new(width, height, 3);
            base.paste(&resized, x, y);
            base
        }
        None => {
            if image.dimensions() != init_image.dimensions() {
                return Err(ImageError::arg(
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
        .ok_or_else(|| ImageError::arg("image", "overlay buffer has the wrong size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grayscale_matches_pil_rounding() {
        // PIL: Image.new("RGB", (1, 1), (10, 200, 30)).convert("L").getpixel((0, 0)) == 124
        let img = RgbImage::from_pixel(1, 1, image::Rgb([10, 200, 30]));
        assert_eq!(to_grayscale(&img).get_pixel(0, 0).0[0], 124);
    }
}
