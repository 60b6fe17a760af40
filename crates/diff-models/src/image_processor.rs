//! transformers' `CLIPImageProcessor` (the torchvision backend that transformers 5 uses by
//! default and that SD pipelines feed the safety checker with), from `preprocessor_config.json`.
//!
//! Steps, for an 8-bit RGB image: resize so the shortest edge is `size` (the long edge is
//! `int(size * long / short)`), with PIL's resampling filter and antialiasing on 8-bit data as
//! torchvision's uint8 path does it (separable, horizontal pass first, fixed-point weights,
//! rounded to 8 bits after each pass); center crop to `crop_size` (zero padding when the image
//! is smaller); then rescale and normalize fused: `(x - mean / rescale_factor) /
//! (std / rescale_factor)` in float32.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use diff_format::configs::clip::CLIPImageProcessorConfig;

use crate::ModelError;
use crate::clip::read_config;

const MODEL: &str = "CLIPImageProcessor";

/// An 8-bit image, rows of interleaved channels (1 = gray, 3 = RGB).
#[derive(Debug, Clone, Copy)]
pub struct ImageU8<'a> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Channels per pixel (1 or 3).
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: &'a [u8],
}

/// The resampling filters of PIL's codes that CLIP processors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// PIL `BILINEAR` (2): triangle filter, support 1.
    Bilinear,
    /// PIL `BICUBIC` (3): cubic with a = -0.5, support 2.
    Bicubic,
}

impl Resample {
    fn support(self) -> f64 {
        match self {
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Resample::Bilinear => (1.0 - x).max(0.0),
            Resample::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// `CLIPImageProcessor` with its settings resolved.
#[derive(Debug, Clone)]
pub struct CLIPImageProcessor {
    /// The config it was built from.
    pub config: CLIPImageProcessorConfig,
    shortest_edge: Option<usize>,
    fixed_size: Option<(usize, usize)>,
    crop: Option<(usize, usize)>,
    resample: Resample,
}

fn unsupported(key: &str, value: String, reason: &str) -> ModelError {
    ModelError::UnsupportedConfig {
        model: MODEL.to_string(),
        key: key.to_string(),
        value,
        reason: reason.to_string(),
    }
}

impl CLIPImageProcessor {
    /// Resolves a config; unsupported settings are errors naming the key.
    pub fn new(config: CLIPImageProcessorConfig) -> Result<Self, ModelError> {
        let resample = match config.resample {
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            other => {
                return Err(unsupported(
                    "resample",
                    other.to_string(),
                    "supported: 2 (bilinear), 3 (bicubic)",
                ));
            }
        };
        let (mut shortest_edge, mut fixed_size) = (None, None);
        if config.do_resize {
            let size = config
                .size
                .as_ref()
                .ok_or_else(|| unsupported("size", "null".into(), "do_resize needs a size"))?;
            if let Some(s) = size.shortest_edge() {
                shortest_edge = Some(s as usize);
            } else if let Some((h, w)) = size.height_width(false) {
                fixed_size = Some((h as usize, w as usize));
            } else {
                return Err(unsupported(
                    "size",
                    format!("{size:?}"),
                    "expected shortest_edge or height/width",
                ));
            }
        }
        let crop = if config.do_center_crop {
            let c = config
                .crop_size
                .as_ref()
                .and_then(|c| c.height_width(true))
                .ok_or_else(|| {
                    unsupported(
                        "crop_size",
                        format!("{:?}", config.crop_size),
                        "expected height/width",
                    )
                })?;
            Some((c.0 as usize, c.1 as usize))
        } else {
            None
        };
        if config.do_normalize && (config.image_mean.len() != 3 || config.image_std.len() != 3) {
            return Err(unsupported(
                "image_mean",
                format!("{:?}", config.image_mean),
                "expected 3 values each for mean and std",
            ));
        }
        Ok(Self {
            config,
            shortest_edge,
            fixed_size,
            crop,
            resample,
        })
    }

    /// Reads `preprocessor_config.json` from a `feature_extractor/` folder.
    pub fn from_pretrained(folder: &Path) -> Result<Self, ModelError> {
        Self::new(read_config(&folder.join("preprocessor_config.json"))?)
    }

    /// The resized `(height, width)` for an input size.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        if let Some(size) = self.shortest_edge {
            let (short, long) = if width <= height {
                (width, height)
            } else {
                (height, width)
            };
            let new_long = (size as f64 * long as f64 / short.max(1) as f64) as usize;
            if width <= height {
                (new_long, size)
            } else {
                (size, new_long)
            }
        } else if let Some(hw) = self.fixed_size {
            hw
        } else {
            (height, width)
        }
    }

    /// Preprocesses a batch of images into `pixel_values`, `[batch, 3, h, w]` float32.
    pub fn preprocess(
        &self,
        images: &[ImageU8<'_>],
        device: &Device,
    ) -> Result<Tensor<4>, ModelError> {
        let _span =
            tracing::debug_span!("CLIPImageProcessor::preprocess", n = images.len()).entered();
        let mut out = Vec::new();
        let mut dims = None;
        for image in images {
            let (h, w, data) = self.process_one(image)?;
            if dims.is_some_and(|d| d != (h, w)) {
                return Err(ModelError::InvalidInput {
                    model: MODEL.to_string(),
                    reason: "images of different sizes need do_center_crop or a fixed size"
                        .to_string(),
                });
            }
            dims = Some((h, w));
            out.extend(data);
        }
        let (h, w) = dims.ok_or_else(|| ModelError::InvalidInput {
            model: MODEL.to_string(),
            reason: "no images".to_string(),
        })?;
        Ok(Tensor::from_data(
            TensorData::new(out, [images.len(), 3, h, w]),
            device,
        ))
    }

    /// Preprocesses decoded images given as float values in `[0, 1]`, `[batch, height, width,
    /// 3]` (what SD pipelines hand the safety checker): each value becomes 8 bits exactly as
    /// diffusers' `numpy_to_pil` does (`(x * 255).round().astype("uint8")`, ties to even; out
    /// of range values saturate), then [`Self::preprocess`] runs.
    pub fn preprocess_unit_float_nhwc(
        &self,
        images: Tensor<4>,
        device: &Device,
    ) -> Result<Tensor<4>, ModelError> {
        let [b, h, w, c] = images.dims();
        let values = images
            .cast(burn::tensor::DType::F32)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::InvalidInput {
                model: MODEL.to_string(),
                reason: format!("could not read the images back: {e:?}"),
            })?;
        let bytes: Vec<u8> = values.iter().map(|&v| unit_float_to_u8(v)).collect();
        let per = h * w * c;
        let views: Vec<ImageU8<'_>> = (0..b)
            .map(|i| ImageU8 {
                width: w,
                height: h,
                channels: c,
                data: bytes.get(i * per..(i + 1) * per).unwrap_or(&[]),
            })
            .collect();
        self.preprocess(&views, device)
    }

    /// One image to CHW float32 values.
    fn process_one(&self, image: &ImageU8<'_>) -> Result<(usize, usize, Vec<f32>), ModelError> {
        let (h, w, c) = (image.height, image.width, image.channels);
        let expected = h.checked_mul(w).and_then(|n| n.checked_mul(c));
        if !(c == 1 || c == 3) || expected != Some(image.data.len()) || h == 0 || w == 0 {
            return Err(ModelError::InvalidInput {
                model: MODEL.to_string(),
                reason: format!(
                    "expected a non-empty {h}x{w} image with 1 or 3 channels ({} bytes), got {} channels and {} bytes",
                    expected.unwrap_or(0),
                    c,
                    image.data.len()
                ),
            });
        }
        // Planes of u8, gray expanded to RGB as `do_convert_rgb` does.
        let mut planes: Vec<Vec<u8>> = (0..3)
            .map(|ch| {
                let src = if c == 1 { 0 } else { ch };
                image.data.iter().skip(src).step_by(c).copied().collect()
            })
            .collect();
        let (mut ph, mut pw) = (h, w);
        if self.config.do_resize {
            let (nh, nw) = self.output_size(h, w);
            for plane in &mut planes {
                *plane = resize_plane(plane, ph, pw, nh, nw, self.resample);
            }
            (ph, pw) = (nh, nw);
        }
        if let Some((ch, cw)) = self.crop {
            for plane in &mut planes {
                *plane = center_crop(plane, ph, pw, ch, cw);
            }
            (ph, pw) = (ch, cw);
        }
        let cfg = &self.config;
        let mut out = Vec::with_capacity(3 * ph * pw);
        for (i, plane) in planes.iter().enumerate() {
            if cfg.do_normalize {
                // transformers fuses rescale into normalize: mean/std are scaled by
                // 1/rescale_factor as float32 tensors, then (x - mean) / std in float32.
                let inv = (1.0 / cfg.rescale_factor) as f32;
                let mean = cfg.image_mean.get(i).copied().unwrap_or(0.0) as f32 * inv;
                let std = cfg.image_std.get(i).copied().unwrap_or(1.0) as f32 * inv;
                let (mean, std) = if cfg.do_rescale {
                    (mean, std)
                } else {
                    (mean / inv, std / inv)
                };
                out.extend(plane.iter().map(|&v| (v as f32 - mean) / std));
            } else if cfg.do_rescale {
                let f = cfg.rescale_factor as f32;
                out.extend(plane.iter().map(|&v| v as f32 * f));
            } else {
                out.extend(plane.iter().map(|&v| v as f32));
            }
        }
        Ok((ph, pw, out))
    }
}

/// Fixed-point weights of one output pixel: first input index and int16 weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// PIL/torchvision antialiased weights along one axis, quantised to int16 with the largest
/// precision that fits (torch's uint8 kernel).
fn taps(in_size: usize, out_size: usize, filter: Resample) -> (Vec<Taps>, u32) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut all = Vec::with_capacity(out_size);
    let mut w_max = 0.0f64;
    let mut float_taps = Vec::with_capacity(out_size);
    for i in 0..out_size {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let mut ws: Vec<f64> = (xmin..xmax)
            .map(|x| filter.weight((x as f64 - center + 0.5) / filterscale))
            .collect();
        let total: f64 = ws.iter().sum();
        if total != 0.0 {
            for w in &mut ws {
                *w /= total;
            }
        }
        for w in &ws {
            w_max = w_max.max(*w);
        }
        float_taps.push((xmin, ws));
    }
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + w_max * (1u64 << (precision + 1)) as f64) as i64;
        if next >= (1 << 15) {
            break;
        }
        precision += 1;
    }
    let one = (1u64 << precision) as f64;
    for (start, ws) in float_taps {
        let weights = ws
            .iter()
            .map(|w| {
                if *w < 0.0 {
                    (-0.5 + w * one) as i32
                } else {
                    (0.5 + w * one) as i32
                }
            })
            .collect();
        all.push(Taps { start, weights });
    }
    (all, precision)
}

/// `np.float32(x * 255).round().astype("uint8")` for x in `[0, 1]` (NaN -> 0, saturating).
pub fn unit_float_to_u8(x: f32) -> u8 {
    let v = (x * 255.0).round_ties_even();
    if v.is_nan() {
        0
    } else {
        v.clamp(0.0, 255.0) as u8
    }
}

fn clip8(acc: i64, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Resizes one u8 plane (`h x w`) to `nh x nw`: horizontal pass, then vertical, each rounded
/// to 8 bits, a pass skipped when its size does not change.
fn resize_plane(src: &[u8], h: usize, w: usize, nh: usize, nw: usize, filter: Resample) -> Vec<u8> {
    let mut cur = src.to_vec();
    let mut cw = w;
    if nw != w {
        let (tx, p) = taps(w, nw, filter);
        let mut out = vec![0u8; h * nw];
        for y in 0..h {
            let row = &cur[y * w..(y + 1) * w];
            for (x, t) in tx.iter().enumerate() {
                let mut acc: i64 = 1 << p >> 1;
                for (k, wt) in t.weights.iter().enumerate() {
                    acc += i64::from(row.get(t.start + k).copied().unwrap_or(0)) * i64::from(*wt);
                }
                out[y * nw + x] = clip8(acc, p);
            }
        }
        cur = out;
        cw = nw;
    }
    if nh != h {
        let (ty, p) = taps(h, nh, filter);
        let mut out = vec![0u8; nh * cw];
        for (y, t) in ty.iter().enumerate() {
            for x in 0..cw {
                let mut acc: i64 = 1 << p >> 1;
                for (k, wt) in t.weights.iter().enumerate() {
                    let v = cur.get((t.start + k) * cw + x).copied().unwrap_or(0);
                    acc += i64::from(v) * i64::from(*wt);
                }
                out[y * cw + x] = clip8(acc, p);
            }
        }
        cur = out;
    }
    cur
}

/// torchvision-style center crop with zero padding when the crop is larger than the image.
fn center_crop(src: &[u8], h: usize, w: usize, ch: usize, cw: usize) -> Vec<u8> {
    let (pad_top, pad_left) = (ch.saturating_sub(h) / 2, cw.saturating_sub(w) / 2);
    let (ph, pw) = (h.max(ch), w.max(cw));
    let top = (ph - ch) / 2;
    let left = (pw - cw) / 2;
    let mut out = vec![0u8; ch * cw];
    for y in 0..ch {
        for x in 0..cw {
            let (sy, sx) = (y + top, x + left);
            if sy >= pad_top && sx >= pad_left && sy - pad_top < h && sx - pad_left < w {
                out[y * cw + x] = src[(sy - pad_top) * w + (sx - pad_left)];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_float_to_u8_rounds_half_to_even_like_numpy() {
        // 0.5 / 255 * 255 = 0.5 -> 0; 1.5 / 255 * 255 = 1.5 -> 2 (np.round is half-to-even).
        assert_eq!(unit_float_to_u8(0.5 / 255.0), 0);
        assert_eq!(unit_float_to_u8(1.5 / 255.0), 2);
        assert_eq!(unit_float_to_u8(1.0), 255);
        assert_eq!(unit_float_to_u8(0.0), 0);
    }

    #[test]
    fn shortest_edge_size_follows_transformers() {
        let p = CLIPImageProcessor::new(CLIPImageProcessorConfig::default()).expect("default");
        // int(224 * 300 / 180) = 373 on the long side.
        assert_eq!(p.output_size(180, 300), (224, 373));
        assert_eq!(p.output_size(130, 90), (323, 224));
    }
}
