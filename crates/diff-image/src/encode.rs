//! Writing images the way a diffusers user saves them with Pillow, and reading back the text
//! a PNG carries.
//!
//! - [`encode_png_with_text`]: PNG bytes with text chunks, as Pillow's `PngInfo.add_text`
//!   writes them (a `tEXt` chunk when the text is Latin-1, else an uncompressed `iTXt`), placed
//!   before the image data; AUTOMATIC1111's `parameters` chunk is one of these.
//! - [`read_png_text`]: every `tEXt`, `zTXt` and `iTXt` chunk of a PNG, in file order.
//! - [`encode_jpeg`]: baseline JPEG at a quality from 1 to 100 (Pillow's scale; Pillow's default
//!   is [`DEFAULT_JPEG_QUALITY`]). The bytes are the `image` crate's encoder's, not libjpeg's.
//! - [`encode_webp_lossless`]: lossless WebP (the `image` crate's encoder).
//! - [`exif_user_comment`] / [`read_exif_user_comment`]: the EXIF `UserComment` in which
//!   AUTOMATIC1111 stores its `parameters` in JPEG and WebP files.
//! - [`ImageFormat`]: the output format named by a file extension, and [`write_atomic`].

use crate::error::ImageError;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// Pillow's default JPEG quality (`Image.save(path, quality=75)`).
pub const DEFAULT_JPEG_QUALITY: u8 = 75;

/// The most bytes one text chunk may decompress to when read back (a `zTXt` / compressed
/// `iTXt` chunk is a zlib stream a stranger's file could make expand without bound).
pub const MAX_TEXT_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// One text chunk of a PNG: a keyword (1 to 79 Latin-1 characters) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PngText {
    /// The keyword (`parameters`, `Software`, ...).
    pub keyword: String,
    /// The text.
    pub text: String,
}

impl PngText {
    /// A chunk from a keyword and a text.
    pub fn new(keyword: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            keyword: keyword.into(),
            text: text.into(),
        }
    }
}

/// The image formats an output file can be written in, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageFormat {
    /// PNG (`.png`), lossless, with text chunks.
    Png,
    /// JPEG (`.jpg`, `.jpeg`), lossy at a quality.
    Jpeg,
    /// WebP (`.webp`), lossless.
    WebP,
}

impl ImageFormat {
    /// The extensions accepted, for messages.
    pub const EXTENSIONS: &'static str = ".png, .jpg, .jpeg, .webp";

    /// The format of `path`'s extension (case-insensitive), or `None` for another or none.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(Self::Png),
            "jpg" | "jpeg" => Some(Self::Jpeg),
            "webp" => Some(Self::WebP),
            _ => None,
        }
    }
}

fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| (c as u32) < 256)
}

fn check_keyword(keyword: &str) -> Result<(), ImageError> {
    let ok = (1..=79).contains(&keyword.chars().count())
        && is_latin1(keyword)
        && !keyword.starts_with(' ')
        && !keyword.ends_with(' ')
        && !keyword.contains("  ")
        && keyword
            .chars()
            .all(|c| c == ' ' || (!c.is_control() && c != '\u{a0}'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::arg(
            "keyword",
            format!(
                "PNG text keyword {keyword:?} must be 1 to 79 printable Latin-1 characters without leading, trailing or double spaces"
            ),
        ))
    }
}

/// PNG bytes of `image` (8-bit RGB) with `texts` as text chunks before the image data. A text
/// that is all Latin-1 goes into a `tEXt` chunk, any other into an uncompressed UTF-8 `iTXt`
/// chunk, as Pillow's `PngInfo.add_text` decides.
pub fn encode_png_with_text(image: &RgbImage, texts: &[PngText]) -> Result<Vec<u8>, ImageError> {
    let memory = || PathBuf::from("<memory>");
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for t in texts {
            check_keyword(&t.keyword)?;
            let added = if is_latin1(&t.text) {
                encoder.add_text_chunk(t.keyword.clone(), t.text.clone())
            } else {
                encoder.add_itxt_chunk(t.keyword.clone(), t.text.clone())
            };
            added.map_err(|e| ImageError::decode(memory(), e.to_string()))?;
        }
        let mut writer = encoder
            .write_header()
            .map_err(|e| ImageError::decode(memory(), e.to_string()))?;
        writer
            .write_image_data(image.as_raw())
            .map_err(|e| ImageError::decode(memory(), e.to_string()))?;
        writer
            .finish()
            .map_err(|e| ImageError::decode(memory(), e.to_string()))?;
    }
    Ok(bytes)
}

/// Every text chunk (`tEXt`, `zTXt`, `iTXt`) of the PNG `bytes`, in the order the decoder meets
/// them (those before the image data, then those after it). `path` names the file in errors.
/// The image size is checked against Pillow's decompression-bomb rule before the pixels are
/// decoded, and a compressed chunk may expand to at most [`MAX_TEXT_CHUNK_BYTES`].
pub fn read_png_text(bytes: &[u8], path: &Path) -> Result<Vec<PngText>, ImageError> {
    if let Some((w, h)) = crate::io::image_dimensions(bytes) {
        crate::io::check_decompression_bomb(path, w, h)?;
    }
    let fail = |e: png::DecodingError| ImageError::decode(path, e.to_string());
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_ignore_text_chunk(false);
    let mut reader = decoder.read_info().map_err(fail)?;
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader.next_frame(&mut buf).map_err(fail)?;
    reader.finish().map_err(fail)?;
    let info = reader.info();
    let mut out = Vec::new();
    for t in &info.uncompressed_latin1_text {
        out.push(PngText::new(t.keyword.clone(), t.text.clone()));
    }
    for t in &info.compressed_latin1_text {
        let mut t = t.clone();
        t.decompress_text_with_limit(MAX_TEXT_CHUNK_BYTES)
            .map_err(fail)?;
        out.push(PngText::new(t.keyword.clone(), t.get_text().map_err(fail)?));
    }
    for t in &info.utf8_text {
        let mut t = t.clone();
        t.decompress_text_with_limit(MAX_TEXT_CHUNK_BYTES)
            .map_err(fail)?;
        out.push(PngText::new(t.keyword.clone(), t.get_text().map_err(fail)?));
    }
    Ok(out)
}

/// The most bytes of an EXIF `UserComment` [`read_exif_user_comment`] returns.
const MAX_USER_COMMENT: usize = 16 * 1024 * 1024;

/// An EXIF block (a big-endian TIFF structure, without the `Exif\0\0` marker) holding
/// `comment` as the Exif IFD's `UserComment` (tag 0x9286) in UTF-16 with the `UNICODE\0`
/// prefix: what AUTOMATIC1111 writes into JPEG and WebP files with
/// `piexif.helper.UserComment.dump(parameters, encoding="unicode")`.
pub fn exif_user_comment(comment: &str) -> Vec<u8> {
    let mut data = b"UNICODE\0".to_vec();
    for unit in comment.encode_utf16() {
        data.extend_from_slice(&unit.to_be_bytes());
    }
    let mut out = b"MM\x00\x2a".to_vec();
    out.extend_from_slice(&8u32.to_be_bytes());
    // IFD0: one entry, the pointer to the Exif IFD (at 8 + 2 + 12 + 4 = 26).
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0x8769u16.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&26u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    // Exif IFD: one entry, UserComment (UNDEFINED bytes at 26 + 2 + 12 + 4 = 44).
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0x9286u16.to_be_bytes());
    out.extend_from_slice(&7u16.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&44u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&data);
    out
}

/// The EXIF `UserComment` of an EXIF block (a TIFF structure, with or without the
/// `Exif\0\0` marker), decoded by its 8-byte prefix (`UNICODE`: UTF-16 in the block's byte
/// order, `ASCII` or none: bytes as Latin-1); `None` when there is none or the block is
/// malformed. Every offset is bounds-checked.
pub fn read_exif_user_comment(exif: &[u8]) -> Option<String> {
    let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    let big = match tiff.get(0..2)? {
        b"MM" => true,
        b"II" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = tiff.get(at..at.checked_add(4)?)?.try_into().ok()?;
        let v = if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        };
        usize::try_from(v).ok()
    };
    // The entry `tag` of the IFD at `ifd`: (type, count, value or offset field position).
    let find = |ifd: usize, tag: u16| -> Option<(u16, usize, usize)> {
        let n = usize::from(u16_at(ifd)?);
        (0..n).find_map(|i| {
            let e = ifd.checked_add(2)?.checked_add(i.checked_mul(12)?)?;
            (u16_at(e)? == tag).then(|| Some((u16_at(e + 2)?, u32_at(e + 4)?, e + 8)))?
        })
    };
    let ifd0 = u32_at(4)?;
    let (_, _, pointer) = find(ifd0, 0x8769)?;
    let exif_ifd = u32_at(pointer)?;
    let (_, count, field) = find(exif_ifd, 0x9286)?;
    if count > MAX_USER_COMMENT {
        return None;
    }
    let start = if count <= 4 { field } else { u32_at(field)? };
    let data = tiff.get(start..start.checked_add(count)?)?;
    let (prefix, text) = (data.get(..8)?, data.get(8..)?);
    if prefix == b"UNICODE\0" {
        let units: Vec<u16> = text
            .chunks_exact(2)
            .map(|c| {
                if big {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                }
            })
            .collect();
        Some(String::from_utf16_lossy(&units))
    } else {
        Some(text.iter().map(|&b| char::from(b)).collect())
    }
}

/// Baseline JPEG bytes of `image` at `quality` (1 to 100, Pillow's scale: 75 is Pillow's
/// default, 95 its advised maximum), with `exif` (e.g. [`exif_user_comment`]) in an APP1
/// segment when given. The encoder is the `image` crate's, so the bytes differ from Pillow's
/// at the same quality.
pub fn encode_jpeg(
    image: &RgbImage,
    quality: u8,
    exif: Option<Vec<u8>>,
) -> Result<Vec<u8>, ImageError> {
    if !(1..=100).contains(&quality) {
        return Err(ImageError::arg(
            "quality",
            format!("JPEG quality must be from 1 to 100, got {quality}"),
        ));
    }
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
    if let Some(exif) = exif {
        encoder
            .set_exif_metadata(exif)
            .map_err(|e| ImageError::decode("<memory>", e.to_string()))?;
    }
    encoder
        .encode_image(image)
        .map_err(|e| ImageError::decode("<memory>", e.to_string()))?;
    Ok(bytes)
}

/// Lossless WebP bytes of `image`, with `exif` (e.g. [`exif_user_comment`]) in an `EXIF`
/// chunk when given.
pub fn encode_webp_lossless(
    image: &RgbImage,
    exif: Option<Vec<u8>>,
) -> Result<Vec<u8>, ImageError> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut bytes);
    if let Some(exif) = exif {
        encoder
            .set_exif_metadata(exif)
            .map_err(|e| ImageError::decode("<memory>", e.to_string()))?;
    }
    encoder
        .encode(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| ImageError::decode("<memory>", e.to_string()))?;
    Ok(bytes)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a rename, so a reader
/// never sees half a file and an interrupted write leaves the old file as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = crate::io::temp_name(path);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImageError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 15, 128]))
    }

    #[test]
    fn png_text_chunks_round_trip_latin1_and_utf8() {
        let texts = [
            PngText::new("parameters", "a red circle\nSteps: 4, Seed: 1"),
            PngText::new("burn-diffusers", "{\"prompt\":\"un été à Paris 🌞\"}"),
        ];
        let bytes = encode_png_with_text(&gradient(), &texts).unwrap();
        // Latin-1 text goes into tEXt, other text into iTXt, as Pillow's add_text decides.
        let find = |tag: &[u8]| bytes.windows(4).any(|w| w == tag);
        assert!(find(b"tEXt") && find(b"iTXt"));
        let back = read_png_text(&bytes, Path::new("x.png")).unwrap();
        assert_eq!(back, texts.to_vec());
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded, gradient(), "PNG pixels are lossless");
    }

    #[test]
    fn bad_keywords_and_qualities_are_refused() {
        for keyword in ["", " lead", "a\nb", &"k".repeat(80)] {
            let err = encode_png_with_text(&gradient(), &[PngText::new(keyword, "x")]);
            assert!(
                matches!(err, Err(ImageError::InvalidArgument { .. })),
                "{keyword:?}"
            );
        }
        for q in [0, 101] {
            assert!(encode_jpeg(&gradient(), q, None).is_err(), "{q}");
        }
    }

    #[test]
    fn jpeg_and_webp_decode_to_the_image() {
        let img = gradient();
        let webp = encode_webp_lossless(&img, None).unwrap();
        let back = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP)
            .unwrap()
            .to_rgb8();
        assert_eq!(back, img, "lossless WebP");
        let small = encode_jpeg(&img, 10, None).unwrap();
        let large = encode_jpeg(&img, 95, None).unwrap();
        assert!(small.starts_with(&[0xFF, 0xD8]) && small.len() < large.len());
        let back = image::load_from_memory(&large).unwrap().to_rgb8();
        let max = back
            .as_raw()
            .iter()
            .zip(img.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(max < 24, "quality 95 is close to the source: {max}");
    }

    #[test]
    fn exif_user_comments_round_trip_through_jpeg_and_webp() {
        use image::ImageDecoder;
        let text = "a red circle, été\nSteps: 4, Seed: 1";
        let exif = exif_user_comment(text);
        assert_eq!(read_exif_user_comment(&exif).as_deref(), Some(text));
        let jpeg = encode_jpeg(&gradient(), 90, Some(exif.clone())).unwrap();
        let mut d = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&jpeg)).unwrap();
        let got = d.exif_metadata().unwrap().unwrap();
        assert_eq!(read_exif_user_comment(&got).as_deref(), Some(text));
        let webp = encode_webp_lossless(&gradient(), Some(exif.clone())).unwrap();
        let mut d = image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(&webp)).unwrap();
        let got = d.exif_metadata().unwrap().unwrap();
        assert_eq!(read_exif_user_comment(&got).as_deref(), Some(text));
        // Malformed blocks give None, not a panic.
        for cut in 0..exif.len() {
            let _ = read_exif_user_comment(&exif[..cut]);
        }
        assert_eq!(read_exif_user_comment(b"MM\x00\x2a\xff\xff\xff\xff"), None);
    }

    #[test]
    fn formats_follow_the_extension() {
        for (name, want) in [
            ("a.png", Some(ImageFormat::Png)),
            ("a.JPG", Some(ImageFormat::Jpeg)),
            ("a.jpeg", Some(ImageFormat::Jpeg)),
            ("a.webp", Some(ImageFormat::WebP)),
            ("a.gif", None),
            ("a", None),
        ] {
            assert_eq!(ImageFormat::from_path(Path::new(name)), want, "{name}");
        }
    }

    #[test]
    fn text_of_a_truncated_png_is_an_error_not_a_panic() {
        let bytes = encode_png_with_text(&gradient(), &[PngText::new("k", "v")]).unwrap();
        for cut in [8, 40, bytes.len() / 2] {
            assert!(read_png_text(&bytes[..cut], Path::new("x.png")).is_err());
        }
    }
}
