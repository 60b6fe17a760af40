//! Writing a video call's frames: an animated GIF as diffusers' `export_to_gif`
//! (`utils/export_utils.py`: every frame, `duration = 1000 // fps` ms, `loop=0`), and the float
//! frames `[batch, F, H, W, 3]` in [0, 1] under the key `frames`. Both go through diff-format's
//! output-path rules (atomic, never over a folder, FIFO or device).

use crate::error::PipelineError;
use crate::image_processor::FloatImages;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbImage, RgbaImage};
use std::path::Path;

/// `export_to_gif(frames, path, fps)`: an endlessly looping GIF, each frame shown
/// `1000 // fps` milliseconds (the image crate quantises each frame to 256 colours, as Pillow
/// does, with its own palette choice). Returns the bytes written.
pub fn export_to_gif(frames: &[RgbImage], path: &Path, fps: u32) -> Result<usize, PipelineError> {
    if frames.is_empty() {
        return Err(PipelineError::arg("frames", "no frames to write as a GIF"));
    }
    if fps == 0 {
        return Err(PipelineError::arg("fps", "`fps` must be at least 1"));
    }
    let gif_err = |e: image::ImageError| {
        PipelineError::arg("frames", format!("cannot encode {}: {e}", path.display()))
    };
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(gif_err)?;
        let delay = Delay::from_numer_denom_ms(1000 / fps, 1);
        for f in frames {
            let rgba: RgbaImage = image::DynamicImage::ImageRgb8(f.clone()).to_rgba8();
            encoder
                .encode_frame(Frame::from_parts(rgba, 0, 0, delay))
                .map_err(gif_err)?;
        }
    }
    diff_format::fsutil::write_atomic(path, &bytes)?;
    Ok(bytes.len())
}

/// Writes the frames of `num_frames`-frame videos as one float32 tensor `[batch, F, H, W, 3]`
/// under the key `frames` (diffusers' `.frames` with `output_type="np"`).
pub fn save_video_array(
    path: &Path,
    images: &FloatImages,
    num_frames: usize,
) -> Result<(), PipelineError> {
    let f = num_frames.max(1);
    if !images.count.is_multiple_of(f) {
        return Err(PipelineError::arg(
            "num_frames",
            format!("{} images do not split into {f}-frame videos", images.count),
        ));
    }
    let bytes: Vec<u8> = images.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = vec![images.count / f, f, images.height, images.width, 3];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
        .map_err(|e| PipelineError::arg("frames", format!("cannot build `frames`: {e}")))?;
    let data = safetensors::serialize([("frames", view)], None).map_err(|e| {
        PipelineError::arg(
            "frames",
            format!("cannot serialize {}: {e}", path.display()),
        )
    })?;
    Ok(diff_format::fsutil::write_atomic(path, &data)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::AnimationDecoder;
    use image::codecs::gif::GifDecoder;

    #[test]
    fn gif_decodes_with_every_frame_its_size_and_delay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.gif");
        let frames: Vec<RgbImage> = (0..5u8)
            .map(|i| {
                RgbImage::from_fn(24, 16, |x, y| {
                    image::Rgb([i * 40, x as u8 * 8, y as u8 * 12])
                })
            })
            .collect();
        export_to_gif(&frames, &path, 8).unwrap();
        let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let decoded = GifDecoder::new(file)
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap();
        assert_eq!(decoded.len(), 5);
        for (d, f) in decoded.iter().zip(&frames) {
            assert_eq!(d.buffer().dimensions(), (24, 16));
            let (n, den) = d.delay().numer_denom_ms();
            // 1000 // 8 = 125 ms, stored in centiseconds (120 ms or 130 ms after rounding).
            assert!((120..=130).contains(&(n / den.max(1))), "delay {n}/{den}");
            // Colours survive the 256-colour palette closely (mean over the channels).
            let (sum, n) = d
                .buffer()
                .pixels()
                .zip(f.pixels())
                .flat_map(|(a, b)| (0..3).map(move |c| u32::from(a[c].abs_diff(b[c]))))
                .fold((0u32, 0u32), |(s, n), e| (s + e, n + 1));
            let mean = sum as f32 / n.max(1) as f32;
            assert!(mean < 12.0, "mean palette error {mean}");
        }
    }

    #[test]
    fn empty_gif_and_zero_fps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.gif");
        assert!(export_to_gif(&[], &path, 8).is_err());
        assert!(export_to_gif(&[RgbImage::new(2, 2)], &path, 0).is_err());
        assert!(!path.exists());
    }
}
