//! Pillow's `Image.resize` for 8-bit images (modes `L` and `RGB`), byte for byte.
//!
//! diffusers resizes PIL images with `image.resize((w, h), resample=PIL_INTERPOLATION[...])`;
//! for the same seed to give the same image, the resized input must be the same bytes. This
//! module reproduces Pillow 13's algorithm (checked against the installed Pillow by
//! `tests/fixtures/41-image-processor`, see `tests/image_processor_parity.rs`):
//!
//! - `NEAREST` goes through Pillow's affine scale (`ImagingScaleAffine`): a source position
//!   that starts at `box0 + a / 2` and is *accumulated* by `a = (box1 - box0) / out` per pixel,
//!   truncated to an index; positions outside the source leave a black pixel.
//! - The other filters (box, bilinear, hamming, bicubic with `a = -0.5`, lanczos with 3 lobes)
//!   are the separable convolution of `Resample.c`: per output pixel a window of source pixels
//!   around `center = in0 + (i + 0.5) * scale`, widened by the scale when reducing, weights
//!   normalised to sum 1 in `f64`, then turned into 22-bit fixed point (`PRECISION_BITS =
//!   32 - 8 - 2`, rounded half away from zero); each pass accumulates integers from `1 << 21`
//!   and clips `sum >> 22` to `0..=255`. The horizontal pass runs first, only over the source
//!   rows the vertical pass will read, unless the height shrinks by more than twice as many
//!   pixels as the width (then the vertical pass runs first, as Pillow 13 does); each pass is
//!   skipped when its axis is unchanged.
//! - A box whose integer origin and size equal the requested size is a plain crop (Pillow's
//!   `_resize` shortcut), and resizing to the same size without a box is a copy.
//!
//! `reducing_gap` is not implemented: diffusers leaves it at `None` (no pre-reduction).
//! Every channel is filtered independently, so an `L` image and an `RGB` image whose three
//! channels are equal give the same values.

use crate::error::ImageError;

/// 8 bits of result plus 2 bits of headroom for negative lobes and overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's resampling filters (`PIL.Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resample {
    /// `NEAREST` (0).
    Nearest,
    /// `BOX` (4).
    Box,
    /// `BILINEAR` (2).
    Bilinear,
    /// `HAMMING` (5).
    Hamming,
    /// `BICUBIC` (3).
    Bicubic,
    /// `LANCZOS` (1), diffusers' default.
    #[default]
    Lanczos,
}

impl Resample {
    /// The filter a `VaeImageProcessor` config's `resample` names, through diffusers'
    /// `PIL_INTERPOLATION` table (`linear`, `bilinear`, `bicubic`, `lanczos`, `nearest`; diffusers
    /// has no entry for `box` or `hamming` and neither do we).
    pub fn from_diffusers_name(name: &str) -> Result<Self, ImageError> {
        match name {
            "linear" | "bilinear" => Ok(Self::Bilinear),
            "bicubic" => Ok(Self::Bicubic),
            "lanczos" => Ok(Self::Lanczos),
            "nearest" => Ok(Self::Nearest),
            other => Err(ImageError::arg(
                "resample",
                format!(
                    "unknown resample `{other}`; diffusers' PIL_INTERPOLATION has linear, bilinear, bicubic, lanczos, nearest"
                ),
            )),
        }
    }

    /// The filter Pillow calls `name` (lower case: `nearest`, `box`, `bilinear`, `hamming`,
    /// `bicubic`, `lanczos`).
    pub fn from_pil_name(name: &str) -> Option<Self> {
        Some(match name {
            "nearest" => Self::Nearest,
            "box" => Self::Box,
            "bilinear" => Self::Bilinear,
            "hamming" => Self::Hamming,
            "bicubic" => Self::Bicubic,
            "lanczos" => Self::Lanczos,
            _ => return None,
        })
    }

    /// Half-width of the filter's window at scale 1.
    fn support(self) -> f64 {
        match self {
            Self::Nearest | Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    /// The filter kernel, with Pillow's exact constants (hamming's `0.54f`/`0.46f` are C floats
    /// widened to double).
    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Nearest | Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Self::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// An interleaved 8-bit image: `channels` bytes per pixel, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes per pixel (1 for `L`, 3 for `RGB`, 4 for `RGBA`).
    pub channels: usize,
    /// `width * height * channels` bytes.
    pub data: Vec<u8>,
}

impl Image8 {
    /// A black (all zero) image.
    pub fn new(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            data: vec![0; width * height * channels],
        }
    }

    /// Wraps raw bytes, checking their length.
    pub fn from_raw(
        width: usize,
        height: usize,
        channels: usize,
        data: Vec<u8>,
    ) -> Result<Self, ImageError> {
        let want = width
            .checked_mul(height)
            .and_then(|n| n.checked_mul(channels));
        if want != Some(data.len()) {
            return Err(ImageError::arg(
                "image",
                format!(
                    "a {width}x{height} image with {channels} channels needs {want:?} bytes, got {}",
                    data.len()
                ),
            ));
        }
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }

    /// PIL's `crop((x0, y0, x1, y1))`: pixels outside the source come back black.
    pub fn crop(&self, x0: i64, y0: i64, x1: i64, y1: i64) -> Self {
        let w = usize::try_from(x1 - x0).unwrap_or(0);
        let h = usize::try_from(y1 - y0).unwrap_or(0);
        let mut out = Self::new(w, h, self.channels);
        let c = self.channels;
        for y in 0..h {
            let sy = y0 + y as i64;
            if sy < 0 || sy >= self.height as i64 {
                continue;
            }
            for x in 0..w {
                let sx = x0 + x as i64;
                if sx < 0 || sx >= self.width as i64 {
                    continue;
                }
                let src = (sy as usize * self.width + sx as usize) * c;
                let dst = (y * w + x) * c;
                out.data[dst..dst + c].copy_from_slice(&self.data[src..src + c]);
            }
        }
        out
    }

    /// PIL's `paste(im, (x, y))` for images of the same channel count: copies `im` with its
    /// top-left corner at `(x, y)`, clipped to this image.
    pub fn paste(&mut self, im: &Image8, x: i64, y: i64) {
        let c = self.channels.min(im.channels);
        for sy in 0..im.height {
            let dy = y + sy as i64;
            if dy < 0 || dy >= self.height as i64 {
                continue;
            }
            for sx in 0..im.width {
                let dx = x + sx as i64;
                if dx < 0 || dx >= self.width as i64 {
                    continue;
                }
                let src = (sy * im.width + sx) * im.channels;
                let dst = (dy as usize * self.width + dx as usize) * self.channels;
                self.data[dst..dst + c].copy_from_slice(&im.data[src..src + c]);
            }
        }
    }
}

/// Pillow's `precompute_coeffs`: per output pixel the first source index, the window length
/// and the normalised `f64` weights (`ksize` slots each).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<f64>,
}

fn precompute_coeffs(
    in_size: usize,
    in0: f32,
    in1: f32,
    out_size: usize,
    filter: Resample,
) -> Coeffs {
    // `(double)(in1 - in0)`: the difference is taken in C float first.
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0f64; out_size * ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let count = (xmax - xmin).max(0) as usize;
        let xmin = xmin as usize;
        let k = &mut weights[xx * ksize..xx * ksize + ksize];
        let count = count.min(ksize);
        let mut ww = 0.0;
        for (x, slot) in k.iter_mut().enumerate().take(count) {
            let w = filter.weight(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
            *slot = w;
            ww += w;
        }
        if ww != 0.0 {
            for slot in k.iter_mut().take(count) {
                *slot /= ww;
            }
        }
        bounds.push((xmin, count));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// `normalize_coeffs_8bpc`: weights to 22-bit fixed point, rounded half away from zero.
fn fixed_point(weights: &[f64]) -> Vec<i32> {
    let one = f64::from(1u32 << PRECISION_BITS);
    weights
        .iter()
        .map(|&w| {
            if w < 0.0 {
                (-0.5 + w * one) as i32
            } else {
                (0.5 + w * one) as i32
            }
        })
        .collect()
}

/// `clip8`: the accumulated sum (with its rounding offset) back to a byte.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The horizontal pass over source rows `offset..offset + rows`.
fn resample_horizontal(
    src: &Image8,
    out_w: usize,
    offset: usize,
    rows: usize,
    c: &Coeffs,
) -> Image8 {
    let kk = fixed_point(&c.weights);
    let ch = src.channels;
    let mut out = Image8::new(out_w, rows, ch);
    let init = 1i64 << (PRECISION_BITS - 1);
    for yy in 0..rows {
        let row = &src.data[(yy + offset) * src.width * ch..(yy + offset + 1) * src.width * ch];
        for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
            let k = &kk[xx * c.ksize..xx * c.ksize + count];
            for b in 0..ch {
                let mut ss = init;
                for (x, &w) in k.iter().enumerate() {
                    ss += i64::from(row[(x + xmin) * ch + b]) * i64::from(w);
                }
                out.data[(yy * out_w + xx) * ch + b] = clip8(ss);
            }
        }
    }
    out
}

/// The vertical pass; `c.bounds` index rows of `src`.
fn resample_vertical(src: &Image8, out_h: usize, c: &Coeffs) -> Image8 {
    let kk = fixed_point(&c.weights);
    let ch = src.channels;
    let stride = src.width * ch;
    let mut out = Image8::new(src.width, out_h, ch);
    let init = 1i64 << (PRECISION_BITS - 1);
    for (yy, &(ymin, count)) in c.bounds.iter().enumerate() {
        let k = &kk[yy * c.ksize..yy * c.ksize + count];
        for i in 0..stride {
            let mut ss = init;
            for (y, &w) in k.iter().enumerate() {
                ss += i64::from(src.data[(y + ymin) * stride + i]) * i64::from(w);
            }
            out.data[yy * stride + i] = clip8(ss);
        }
    }
    out
}

/// `ImagingScaleAffine` with Pillow's accumulated source positions.
fn resize_nearest(src: &Image8, out_w: usize, out_h: usize, b: [f32; 4]) -> Image8 {
    let a0 = f64::from(b[2] - b[0]) / out_w as f64;
    let a4 = f64::from(b[3] - b[1]) / out_h as f64;
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    let ch = src.channels;
    let mut xintab = vec![0usize; out_w];
    let (mut xmin, mut xmax) = (out_w, 0usize);
    let mut xo = f64::from(b[0]) + a0 * 0.5;
    for (x, slot) in xintab.iter_mut().enumerate() {
        let xin = coord(xo);
        if xin >= 0 && xin < src.width as i64 {
            xmax = x + 1;
            xmin = xmin.min(x);
            *slot = xin as usize;
        }
        xo += a0;
    }
    let mut out = Image8::new(out_w, out_h, ch);
    let mut yo = f64::from(b[1]) + a4 * 0.5;
    for y in 0..out_h {
        let yi = coord(yo);
        if yi >= 0 && yi < src.height as i64 {
            let yi = yi as usize;
            for (x, &sx) in xintab.iter().enumerate().take(xmax).skip(xmin) {
                let s = (yi * src.width + sx) * ch;
                let d = (y * out_w + x) * ch;
                out.data[d..d + ch].copy_from_slice(&src.data[s..s + ch]);
            }
        }
        yo += a4;
    }
    out
}

/// PIL's `image.resize((out_w, out_h), resample=filter, box=box)` for an 8-bit image whose
/// channels are independent (`L`, `RGB`; not premultiplied `RGBA`). `box` is the source
/// region `(x0, y0, x1, y1)` in C floats, the whole image when `None`.
pub fn resize(
    src: &Image8,
    out_w: usize,
    out_h: usize,
    filter: Resample,
    box_: Option<[f32; 4]>,
) -> Result<Image8, ImageError> {
    if src.data.len() != src.width * src.height * src.channels {
        return Err(ImageError::arg(
            "image",
            format!(
                "a {}x{} image with {} channels needs {} bytes, got {}",
                src.width,
                src.height,
                src.channels,
                src.width * src.height * src.channels,
                src.data.len()
            ),
        ));
    }
    let whole = [0.0, 0.0, src.width as f32, src.height as f32];
    let b = box_.unwrap_or(whole);
    if (src.width, src.height) == (out_w, out_h) && b == whole {
        return Ok(src.clone());
    }
    if out_w < 1 || out_h < 1 {
        return Err(ImageError::arg(
            "size",
            format!("height and width must be > 0, got {out_w}x{out_h}"),
        ));
    }
    if src.width < 1 || src.height < 1 {
        return Err(ImageError::arg(
            "image",
            format!("cannot resize an empty {}x{} image", src.width, src.height),
        ));
    }
    if b.iter().any(|v| !v.is_finite()) || b[0] < 0.0 || b[1] < 0.0 {
        return Err(ImageError::arg(
            "box",
            format!("box offset can't be negative: {b:?}"),
        ));
    }
    if b[2] > src.width as f32 || b[3] > src.height as f32 {
        return Err(ImageError::arg(
            "box",
            format!(
                "box {b:?} can't exceed the original image size {}x{}",
                src.width, src.height
            ),
        ));
    }
    if b[2] - b[0] < 0.0 || b[3] - b[1] < 0.0 {
        return Err(ImageError::arg("box", format!("box can't be empty: {b:?}")));
    }
    let integral = |v: f32| v - (v as i32) as f32 == 0.0;
    if integral(b[0])
        && b[2] - b[0] == out_w as f32
        && integral(b[1])
        && b[3] - b[1] == out_h as f32
    {
        return Ok(src.crop(b[0] as i64, b[1] as i64, b[2] as i64, b[3] as i64));
    }
    if filter == Resample::Nearest {
        return Ok(resize_nearest(src, out_w, out_h, b));
    }

    let need_horizontal = out_w != src.width || b[0] != 0.0 || b[2] != out_w as f32;
    let need_vertical = out_h != src.height || b[1] != 0.0 || b[3] != out_h as f32;
    // Pillow 13 runs the vertical pass first when the height shrinks by more than twice as
    // many pixels as the width does (the intermediate is then smaller); the order changes the
    // bytes, since each pass clips to 8 bits.
    let (iw, ih) = (src.width as i64, src.height as i64);
    let dy = ih - out_h as i64;
    let horizontal_first = !(dy > 0 && dy > (iw - out_w as i64) * 2);
    let mut vert = precompute_coeffs(src.height, b[1], b[3], out_h, filter);
    let horiz = precompute_coeffs(src.width, b[0], b[2], out_w, filter);
    let mut current: Option<Image8> = None;
    if horizontal_first {
        if need_horizontal {
            // Only the source rows the vertical pass will read.
            let ybox_first = vert.bounds.first().map_or(0, |&(m, _)| m);
            let ybox_last = vert.bounds.last().map_or(0, |&(m, n)| m + n);
            for bound in &mut vert.bounds {
                bound.0 -= ybox_first;
            }
            let rows = ybox_last.saturating_sub(ybox_first);
            current = Some(resample_horizontal(src, out_w, ybox_first, rows, &horiz));
        }
        if need_vertical {
            let input = current.as_ref().unwrap_or(src);
            current = Some(resample_vertical(input, out_h, &vert));
        }
    } else {
        if need_vertical {
            current = Some(resample_vertical(src, out_h, &vert));
        }
        if need_horizontal {
            let input = current.as_ref().unwrap_or(src);
            let rows = input.height;
            current = Some(resample_horizontal(input, out_w, 0, rows, &horiz));
        }
    }
    Ok(current.unwrap_or_else(|| src.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_to_the_same_size_is_a_copy_and_an_integral_box_is_a_crop() {
        let data: Vec<u8> = (0..4 * 3 * 3).map(|v| v as u8).collect();
        let img = Image8::from_raw(4, 3, 3, data).unwrap();
        assert_eq!(resize(&img, 4, 3, Resample::Lanczos, None).unwrap(), img);
        let cropped = resize(&img, 2, 1, Resample::Bicubic, Some([1.0, 2.0, 3.0, 3.0])).unwrap();
        assert_eq!(cropped, img.crop(1, 2, 3, 3));
    }

    #[test]
    fn a_box_outside_the_image_and_a_zero_size_are_errors() {
        let img = Image8::new(4, 4, 1);
        assert!(resize(&img, 2, 2, Resample::Bilinear, Some([0.0, 0.0, 5.0, 4.0])).is_err());
        assert!(resize(&img, 0, 2, Resample::Bilinear, None).is_err());
        assert!(resize(&img, 2, 2, Resample::Bilinear, Some([-1.0, 0.0, 2.0, 2.0])).is_err());
    }

    #[test]
    fn a_constant_image_stays_constant_under_every_filter() {
        let img = Image8::from_raw(7, 5, 1, vec![200; 35]).unwrap();
        for f in [
            Resample::Nearest,
            Resample::Box,
            Resample::Bilinear,
            Resample::Hamming,
            Resample::Bicubic,
            Resample::Lanczos,
        ] {
            let out = resize(&img, 3, 11, f, None).unwrap();
            assert!(out.data.iter().all(|&v| v == 200), "{f:?}: {:?}", out.data);
        }
    }
}
