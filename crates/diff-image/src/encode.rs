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

/// Baseline JPEG bytes of `image` at `quality` (1 to 100, Pillow's scale: 75 is Pillow's
/// default, 95 its advised maximum). The encoder is the `image` crate's, so the bytes differ
/// from Pillow's at the same quality.
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError> {
    if !(1..=100).contains(&quality) {
        return Err(ImageError::arg(
            "quality",
            format!("JPEG quality must be from 1 to 100, got {quality}"),
        ));
    }
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(image)
        .map_err(|e| ImageError::decode("<memory>", e.to_string()))?;
    Ok(bytes)
}

/// Lossless WebP bytes of `image`.
pub fn encode_webp_lossless(image: &RgbImage) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
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
            assert!(encode_jpeg(&gradient(), q).is_err(), "{q}");
        }
    }

    #[test]
    fn jpeg_and_webp_decode_to_the_image() {
        let img = gradient();
        let webp = encode_webp_lossless(&img).unwrap();
        let back = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP)
            .unwrap()
            .to_rgb8();
        assert_eq!(back, img, "lossless WebP");
        let small = encode_jpeg(&img, 10).unwrap();
        let large = encode_jpeg(&img, 95).unwrap();
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
