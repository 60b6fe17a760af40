//! Image files in and out: diffusers' `load_image` (decode, EXIF orientation, RGB) with
//! Pillow's decompression-bomb rule, and PNG writing.

use crate::error::ImageError;
use crate::jpeg::{self, DecodedJpeg, JpegError};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// Pillow's `Image.MAX_IMAGE_PIXELS` (`int(1024 * 1024 * 1024 // 4 // 3)`): above it Pillow
/// warns (`DecompressionBombWarning`), above twice it Pillow refuses the file
/// (`DecompressionBombError`).
pub const MAX_IMAGE_PIXELS: u64 = 1024 * 1024 * 1024 / 4 / 3;

/// The `(width, height)` an image file's header declares, read without decoding a pixel: the
/// PNG `IHDR` chunk, the JPEG frame header (`SOFn`), or the `image` crate's header reader for
/// other formats. `None` when the header cannot be read (the decoder then reports why).
pub fn image_dimensions(bytes: &[u8]) -> Option<(u64, u64)> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) {
        if bytes.get(12..16)? != b"IHDR" {
            return None;
        }
        let be = |at: usize| -> Option<u64> {
            let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(u64::from(u32::from_be_bytes(b)))
        };
        return Some((be(16)?, be(20)?));
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return jpeg_dimensions(bytes);
    }
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
        .map(|(w, h)| (u64::from(w), u64::from(h)))
}

/// The size in the first JPEG frame header, walking the marker segments.
fn jpeg_dimensions(bytes: &[u8]) -> Option<(u64, u64)> {
    let mut at = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while *bytes.get(at)? != 0xFF {
            at += 1;
        }
        while *bytes.get(at)? == 0xFF {
            at += 1;
        }
        let marker = *bytes.get(at)?;
        at += 1;
        match marker {
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 | 0xDA => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let h = u16::from_be_bytes([*bytes.get(at + 3)?, *bytes.get(at + 4)?]);
            let w = u16::from_be_bytes([*bytes.get(at + 5)?, *bytes.get(at + 6)?]);
            return Some((u64::from(w), u64::from(h)));
        }
        at += len;
    }
}

/// The palette chunks of a PNG, checked before the `png` crate sees them: it panics (slice
/// index out of range) on a `PLTE` chunk whose length is not a multiple of 3 or holds more than
/// 256 entries, and on a `tRNS` chunk longer than the palette of an indexed image (both found
/// by fuzzing, `fuzz/fuzz_targets/image_png.rs`). Such files are broken by the PNG
/// specification; they are refused here as a decode error. Other chunks are left to the
/// decoder; the walk stops at the first `IDAT` or at anything it cannot read.
fn check_png_palette(bytes: &[u8], path: &Path) -> Result<(), ImageError> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(PNG) {
        return Ok(());
    }
    let broken = |what: String| ImageError::decode(path, format!("broken PNG file: {what}"));
    let colour_type = bytes.get(25).copied();
    let mut palette_entries = None;
    let mut at = PNG.len();
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        match &head[4..8] {
            b"PLTE" => {
                if len == 0 || !len.is_multiple_of(3) || len > 3 * 256 {
                    return Err(broken(format!(
                        "PLTE chunk of {len} bytes (a palette is 1 to 256 RGB entries)"
                    )));
                }
                palette_entries = Some(len / 3);
            }
            b"tRNS" if colour_type == Some(3) => match palette_entries {
                None => return Err(broken("tRNS chunk before the PLTE chunk".into())),
                Some(n) if len > n => {
                    return Err(broken(format!(
                        "tRNS chunk of {len} entries for a palette of {n}"
                    )));
                }
                Some(_) => {}
            },
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        at = match at.checked_add(12).and_then(|a| a.checked_add(len)) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(())
}

/// Pillow's `_decompression_bomb_check`: a warning above [`MAX_IMAGE_PIXELS`], an
/// [`ImageError::DecompressionBomb`] above twice it.
pub fn check_decompression_bomb(path: &Path, width: u64, height: u64) -> Result<(), ImageError> {
    let pixels = width.saturating_mul(height);
    let limit = 2 * MAX_IMAGE_PIXELS;
    if pixels > limit {
        return Err(ImageError::DecompressionBomb {
            path: path.to_path_buf(),
            width,
            height,
            pixels,
            limit,
        });
    }
    if pixels > MAX_IMAGE_PIXELS {
        tracing::warn!(
            path = %path.display(),
            "image size ({pixels} pixels) exceeds limit of {MAX_IMAGE_PIXELS} pixels, could be decompression bomb DOS attack"
        );
    }
    Ok(())
}

/// Reads an image file (PNG or JPEG) as diffusers' `load_image` does: applies the EXIF
/// orientation (`ImageOps.exif_transpose`, so a phone photo stored sideways comes out upright)
/// and converts to RGB (alpha dropped, grey and palette expanded).
///
/// The header is checked against Pillow's decompression-bomb limit before anything is
/// decoded. JPEG files go through [`crate::jpeg`], which gives Pillow's (libjpeg-turbo's)
/// bytes; JPEG kinds it does not implement (arithmetic coding, 12-bit, CMYK, ...) fall back to
/// the `image` crate with a warning, since its decoder rounds differently from Pillow by a few
/// levels.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::io(path, e))?;
    decode_image(&bytes, path)
}

/// [`load_image`] of bytes already in memory; `path` only names them in errors and warnings.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
    if let Some((w, h)) = image_dimensions(bytes) {
        check_decompression_bomb(path, w, h)?;
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        match jpeg::decode(bytes) {
            Ok(decoded) => return jpeg_to_rgb(path, decoded),
            Err(JpegError::Unsupported(what)) => tracing::warn!(
                path = %path.display(),
                "{what}: decoding with the `image` crate, whose pixels may differ from Pillow's"
            ),
            Err(e) => return Err(ImageError::decode(path, e.to_string())),
        }
    }
    check_png_palette(bytes, path)?;
    let bad = |e: image::ImageError| ImageError::decode(path, e.to_string());
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::io(path, e))?;
    let mut decoder = reader.into_decoder().map_err(bad)?;
    // The decoder has read the header: check what it found too, for formats whose size the
    // quick header parse above could not read.
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    check_decompression_bomb(path, u64::from(w), u64::from(h))?;
    let orientation = image::ImageDecoder::orientation(&mut decoder)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// An RGB image from [`jpeg::decode`]'s output, turned upright by its EXIF orientation.
fn jpeg_to_rgb(path: &Path, decoded: DecodedJpeg) -> Result<RgbImage, ImageError> {
    let orientation = decoded
        .exif
        .as_deref()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let (width, height) = (decoded.width, decoded.height);
    let size_error = || {
        ImageError::decode(
            path,
            format!("JPEG size {width}x{height} does not fit in u32"),
        )
    };
    let w = u32::try_from(width).map_err(|_| size_error())?;
    let h = u32::try_from(height).map_err(|_| size_error())?;
    let rgb = RgbImage::from_raw(w, h, decoded.into_rgb()).ok_or_else(size_error)?;
    let mut img = image::DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// A hidden temporary name beside `path`, for write-then-rename.
pub(crate) fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes an RGB image as PNG, to a temporary name then renamed into place, so a failed write
/// never leaves a half-written file.
pub fn save_png(path: &Path, image: &RgbImage) -> Result<(), ImageError> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| ImageError::decode(path, e.to_string()))?;
    let tmp = temp_name(path);
    let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImageError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG of `len` bytes: signature and an IHDR declaring `w x h`, then an empty IDAT and
    /// IEND (CRCs are not checked by the header parse).
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        b.extend_from_slice(&13u32.to_be_bytes());
        b.extend_from_slice(b"IHDR");
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0]);
        b.extend_from_slice(&[0; 4]);
        b
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], body: &[u8]) {
        out.extend((body.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(body);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }

    /// A valid 2x2 indexed PNG (CRCs right, one stored zlib block) with these PLTE and tRNS
    /// bodies.
    fn palette_png(plte: &[u8], trns: Option<&[u8]>) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(2u32.to_be_bytes());
        ihdr.extend(2u32.to_be_bytes());
        ihdr.extend([8, 3, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"PLTE", plte);
        if let Some(trns) = trns {
            chunk(&mut out, b"tRNS", trns);
        }
        let raw = [0u8, 0, 0, 0, 0, 0];
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + u32::from(x)) % 65_521;
            b = (b + a) % 65_521;
        }
        let mut z = vec![0x78, 0x01, 1, 6, 0, !6, !0];
        z.extend(raw);
        z.extend(((b << 16) | a).to_be_bytes());
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    /// Regression (fuzzing, issue 18): the `png` crate panics on a palette whose length is
    /// not a multiple of 3, on more than 256 entries and on a `tRNS` longer than the palette;
    /// each is a decode error naming the chunk, and a well-formed palette image decodes.
    #[test]
    fn broken_png_palettes_are_decode_errors_not_panics() {
        let p = Path::new("p.png");
        let img = decode_image(&palette_png(&[255, 0, 0], Some(&[128])), p).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [255, 0, 0]);
        for (plte, trns) in [
            (vec![1u8, 2], None),
            (vec![7u8; 3 * 257], None),
            (vec![1u8, 2, 3], Some(vec![0u8, 0])),
        ] {
            let err = decode_image(&palette_png(&plte, trns.as_deref()), p)
                .unwrap_err()
                .to_string();
            assert!(err.contains("broken PNG"), "{err}");
        }
    }

    #[test]
    fn png_and_jpeg_headers_give_the_declared_size() {
        assert_eq!(
            image_dimensions(&png_header(50_000, 40)),
            Some((50_000, 40))
        );
        // SOI, APP0 (length 4), SOF0: P=8, H=0x0102, W=0x0304.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC0, 0, 11, 8, 1, 2, 3, 4, 1, 1, 0x11, 0,
        ];
        assert_eq!(image_dimensions(&jpeg), Some((0x0304, 0x0102)));
        assert_eq!(image_dimensions(b"not an image"), None);
    }

    #[test]
    fn the_bomb_limit_is_pillows() {
        let p = Path::new("x.png");
        assert!(check_decompression_bomb(p, MAX_IMAGE_PIXELS, 1).is_ok());
        assert!(check_decompression_bomb(p, 2 * MAX_IMAGE_PIXELS, 1).is_ok());
        assert!(matches!(
            check_decompression_bomb(p, 2 * MAX_IMAGE_PIXELS + 1, 1),
            Err(ImageError::DecompressionBomb { limit, .. }) if limit == 178_956_970
        ));
    }
}
