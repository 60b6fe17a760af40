//! `diff-image`: the image bytes of burn-diffusers, as Pillow makes them.
//!
//! diffusers reads and resizes its input images with Pillow; for the same seed to give the
//! same image, the pipeline must see the same bytes. This crate owns everything that happens
//! to an image before it becomes a tensor:
//!
//! - [`load_image`] / [`decode_image`]: diffusers' `load_image` (decode, EXIF orientation,
//!   RGB), with Pillow's decompression-bomb rule checked on the header before any pixel is
//!   decoded ([`MAX_IMAGE_PIXELS`]: a warning above it, [`ImageError::DecompressionBomb`] above
//!   twice it), and [`save_png`] (atomic);
//! - output encoding (`encode.rs`): [`encode_png_with_text`] (PNG with `tEXt` / `iTXt` chunks
//!   as Pillow's `PngInfo` writes them; AUTOMATIC1111's `parameters` chunk is one) and
//!   [`read_png_text`] to read them back, [`encode_jpeg`] (quality on Pillow's scale),
//!   [`encode_webp_lossless`], [`exif_user_comment`] / [`read_exif_user_comment`] (where A1111
//!   keeps `parameters` in JPEG and WebP), [`ImageFormat`] (the format an extension names) and
//!   [`write_atomic`];
//! - [`jpeg`]: a JPEG decoder giving libjpeg-turbo's bytes as Pillow decodes them (ISLOW IDCT,
//!   fancy upsampling, fixed-point YCbCr; baseline and progressive), gate
//!   `tests/fixtures/44-jpeg`;
//! - [`resample`]: Pillow's `Image.resize`, byte for byte ([`Image8`], [`resize`]), gate
//!   `tests/fixtures/41-image-processor`;
//! - [`processor`]: the byte-level half of `VaeImageProcessor` (resize modes, `convert("L")`,
//!   `get_crop_region`, `apply_overlay`).
//!
//! **Must not know:** burn or tensors (the float half of the image processors is
//! `diff_pipelines::VaeImageProcessor`), pipelines, models, the Hub.
//!
//! Dependencies: `image` (PNG decoding and encoding, JPEG and lossless WebP encoding, EXIF
//! orientation, the fallback decoder for JPEG kinds [`jpeg`] does not implement), `png` (text
//! chunks, which `image` does not expose), `thiserror` (the typed [`ImageError`]), `tracing`
//! (the warnings Pillow prints: decompression-bomb size, fallback decoder).
#![deny(missing_docs)]

mod encode;
mod error;
mod io;
pub mod jpeg;
pub mod processor;
pub mod resample;

pub use encode::{
    DEFAULT_JPEG_QUALITY, ImageFormat, MAX_TEXT_CHUNK_BYTES, PngText, encode_jpeg,
    encode_png_with_text, encode_webp_lossless, exif_user_comment, read_exif_user_comment,
    read_png_text, write_atomic,
};
pub use error::ImageError;
pub use io::{
    MAX_IMAGE_PIXELS, check_decompression_bomb, decode_image, image_dimensions, load_image,
    save_png,
};
pub use processor::{
    CropBox, ResizeMode, apply_overlay, get_crop_region, image8_to_gray, image8_to_rgb,
    resize_with_mode, rgb_to_image8, to_grayscale,
};
pub use resample::{Image8, Resample, resize};
