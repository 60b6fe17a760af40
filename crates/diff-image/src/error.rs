//! The error type of diff-image.

use std::path::PathBuf;

/// What went wrong while reading, writing or transforming an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("cannot access `{path}`: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating-system error (in the message, not chained, so it prints once).
        error: std::io::Error,
    },
    /// An image file could not be decoded or encoded.
    #[error("cannot decode or encode image `{path}`: {message}")]
    Decode {
        /// The image file (or `<memory>` for in-memory data).
        path: PathBuf,
        /// What the decoder reported.
        message: String,
    },
    /// The header declares more pixels than Pillow opens: Pillow raises
    /// `DecompressionBombError` above `2 * Image.MAX_IMAGE_PIXELS`. Checked on the header,
    /// before any pixel buffer is allocated.
    #[error(
        "image `{path}` is {width}x{height} ({pixels} pixels), more than the limit of {limit} pixels; it could be a decompression bomb (Pillow's DecompressionBombError)"
    )]
    DecompressionBomb {
        /// The image file (or `<memory>`).
        path: PathBuf,
        /// Width from the header.
        width: u64,
        /// Height from the header.
        height: u64,
        /// `width * height`.
        pixels: u64,
        /// The limit: `2 * MAX_IMAGE_PIXELS`.
        limit: u64,
    },
    /// An argument is out of range or inconsistent (a zero size, a box outside the image, a
    /// mask whose size differs from the image's).
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument {
        /// The argument, named as in diffusers / Pillow.
        name: String,
        /// Expected vs got.
        message: String,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn decode(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ImageError::Decode {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn arg(name: &str, message: impl Into<String>) -> Self {
        ImageError::InvalidArgument {
            name: name.to_string(),
            message: message.into(),
        }
    }
}
