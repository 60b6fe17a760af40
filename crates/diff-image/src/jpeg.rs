//! A JPEG decoder that gives the bytes Pillow gives.
//!
//! diffusers opens input images with Pillow, whose wheels bundle libjpeg-turbo and decode with
//! its defaults. To hand the pipeline the same pixels, this decoder follows the algorithms
//! libjpeg documents for those defaults rather than a faster approximation:
//!
//! - Huffman-coded baseline / extended sequential (SOF0, SOF1) and progressive (SOF2) scans,
//!   8-bit samples, restart intervals;
//! - the accurate integer inverse DCT (`JDCT_ISLOW`: 13-bit fixed-point constants, two passes
//!   with 2 extra bits kept between them) and its range-limit table, whose index is masked to
//!   10 bits;
//! - "fancy" (triangle-filter) upsampling for chroma halved horizontally (h2v1), vertically
//!   (h1v2) or both (h2v2), with the first and last sample rows replicated as context, and
//!   box replication for other integral factors or for rows of at most 2 samples (where
//!   libjpeg-turbo also falls back to box);
//! - fixed-point YCbCr->RGB tables (16-bit fraction, rounding as libjpeg's `jdcolor`).
//!
//! libjpeg-turbo does not use its merged upsampler here because fancy upsampling is on.
//! Arithmetic coding, lossless and hierarchical JPEG, 12-bit samples, 2- and 4-component images
//! (CMYK / YCCK) and non-integral sampling ratios are reported as
//! [`JpegError::Unsupported`]; the caller falls back to another decoder for those.
//!
//! Non-integral ratios are refused by libjpeg too (Pillow raises), so there is no Pillow output
//! to match; the fallback at least gives the user an image.
//!
//! Layout: this file parses markers and frames and assembles the image; `jpeg/entropy.rs`
//! holds the Huffman decoding of sequential and progressive scans, `jpeg/samples.rs` the IDCT,
//! upsampling and colour conversion. Checked byte for byte against Pillow 13 by
//! `tests/jpeg_parity.rs` on `tests/fixtures/44-jpeg` (Pillow-written files of every
//! subsampling, quality 5..100, odd and 1-pixel sizes, restarts, optimized tables,
//! progressive, greyscale, EXIF orientation, plus 4:4:0 / 4:1:1 / 4:1:0 / mixed-factor /
//! RGB / Adobe / 16-bit-table files from the generator's own small encoder).
//!
//! Corrupt data never panics: every read of file data is bounds-checked and reported as
//! [`JpegError::Corrupt`] / [`JpegError::Truncated`]. Like libjpeg, entropy-coded data that ends
//! early (a marker where more bits were expected) is read as zero bits rather than failing.

mod entropy;
mod samples;

use entropy::{Huffman, decode_scan};
use samples::{YccTables, component_plane, upsample};
use thiserror::Error;

/// Why a JPEG could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JpegError {
    /// The file ends before a marker segment or the image data is complete.
    #[error("JPEG data is truncated: {0}")]
    Truncated(String),
    /// The data breaks the JPEG format (bad marker, bad table, inconsistent sizes).
    #[error("corrupt JPEG data: {0}")]
    Corrupt(String),
    /// The image has more pixels than Pillow opens (its decompression-bomb limit,
    /// `2 * Image.MAX_IMAGE_PIXELS`).
    #[error("JPEG is {width}x{height}, more than Pillow's limit of {MAX_PIXELS} pixels")]
    TooLarge {
        /// Width from the frame header.
        width: usize,
        /// Height from the frame header.
        height: usize,
    },
    /// A valid JPEG kind this decoder does not implement (arithmetic coding, lossless,
    /// 12-bit, CMYK, unusual sampling factors).
    #[error("unsupported JPEG: {0}")]
    Unsupported(String),
}

/// Pillow's `DecompressionBombError` threshold: twice `Image.MAX_IMAGE_PIXELS`
/// (`1024 * 1024 * 1024 // 4 // 3`).
pub const MAX_PIXELS: usize = 2 * (1024 * 1024 * 1024 / 4 / 3);

/// A decoded JPEG: `channels` is 1 (greyscale) or 3 (RGB), bytes row-major, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedJpeg {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 for greyscale, 3 for RGB.
    pub channels: usize,
    /// `width * height * channels` samples.
    pub pixels: Vec<u8>,
    /// The TIFF data of the first APP1 `Exif` segment (after its `Exif\0\0` header), where the
    /// caller finds the orientation Pillow's `exif_transpose` applies.
    pub exif: Option<Vec<u8>>,
}

impl DecodedJpeg {
    /// The image as RGB bytes (greyscale replicated to three channels, as Pillow's
    /// `convert("RGB")` does).
    pub fn into_rgb(self) -> Vec<u8> {
        if self.channels == 3 {
            return self.pixels;
        }
        self.pixels.iter().flat_map(|&v| [v, v, v]).collect()
    }
}

/// The zigzag order: `NATURAL[k]` is the row-major index of the k-th coefficient. The 16 extra
/// entries send overlong runs in corrupt data to the last coefficient, as libjpeg does.
const NATURAL: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

#[derive(Debug, Clone)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks per row and rows of blocks allocated (whole MCUs).
    bw: usize,
    bh: usize,
    /// Blocks that hold image data (non-interleaved scans cover only these).
    real_bw: usize,
    real_bh: usize,
    coefs: Vec<i16>,
    quant: Option<[u16; 64]>,
    dc_table: usize,
    ac_table: usize,
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    hmax: usize,
    vmax: usize,
    mcux: usize,
    mcuy: usize,
    comps: Vec<Component>,
}

fn be16(data: &[u8], pos: usize) -> Result<usize, JpegError> {
    match (data.get(pos), data.get(pos + 1)) {
        (Some(&a), Some(&b)) => Ok(usize::from(a) << 8 | usize::from(b)),
        _ => Err(JpegError::Truncated(format!(
            "file ends at byte {pos} inside a marker"
        ))),
    }
}

fn segment(data: &[u8], pos: usize) -> Result<&[u8], JpegError> {
    let len = be16(data, pos)?;
    if len < 2 {
        return Err(JpegError::Corrupt(format!(
            "marker segment length {len} at byte {pos}"
        )));
    }
    data.get(pos + 2..pos + len).ok_or_else(|| {
        JpegError::Truncated(format!(
            "marker segment at byte {pos} needs {len} bytes, the file has {}",
            data.len().saturating_sub(pos)
        ))
    })
}

fn byte(seg: &[u8], i: usize, what: &str) -> Result<u8, JpegError> {
    seg.get(i)
        .copied()
        .ok_or_else(|| JpegError::Truncated(format!("{what} segment is too short")))
}

/// Decodes a JPEG file's bytes exactly as libjpeg-turbo's defaults (Pillow) do.
pub fn decode(data: &[u8]) -> Result<DecodedJpeg, JpegError> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(JpegError::Corrupt(
            "missing SOI marker (not a JPEG file)".into(),
        ));
    }
    let mut pos = 2usize;
    let mut qt: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut frame: Option<Frame> = None;
    let mut restart_interval = 0usize;
    let mut jfif = false;
    let mut adobe_transform: Option<u8> = None;
    let mut exif: Option<Vec<u8>> = None;
    loop {
        // Find the next marker, skipping fill bytes and (like libjpeg) stray data.
        while data.get(pos).is_some_and(|&b| b != 0xFF) {
            pos += 1;
        }
        while data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let marker = match data.get(pos + 1) {
            Some(&m) => m,
            None => {
                // Pillow refuses a file without its EOI marker ("image file is truncated").
                return Err(JpegError::Truncated(
                    "file ends before the EOI marker".into(),
                ));
            }
        };
        pos += 2;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 | 0x00 => {}
            0xD9 => break,
            0xC4 => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
                let mut i = 0;
                while i < seg.len() {
                    let tc_th = byte(seg, i, "DHT")?;
                    let mut counts = [0u8; 16];
                    for (k, c) in counts.iter_mut().enumerate() {
                        *c = byte(seg, i + 1 + k, "DHT")?;
                    }
                    let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    if total > 256 {
                        return Err(JpegError::Corrupt(format!("DHT has {total} symbols")));
                    }
                    let symbols = seg
                        .get(i + 17..i + 17 + total)
                        .ok_or_else(|| JpegError::Truncated("DHT segment is too short".into()))?
                        .to_vec();
                    let table = Huffman::new(&counts, symbols)?;
                    let th = usize::from(tc_th & 0x0F);
                    if th > 3 {
                        return Err(JpegError::Corrupt(format!("DHT table index {th}")));
                    }
                    match tc_th >> 4 {
                        0 => dc_tables[th] = Some(table),
                        1 => ac_tables[th] = Some(table),
                        c => return Err(JpegError::Corrupt(format!("DHT table class {c}"))),
                    }
                    i += 17 + total;
                }
            }
            0xDB => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
                let mut i = 0;
                while i < seg.len() {
                    let pq_tq = byte(seg, i, "DQT")?;
                    let tq = usize::from(pq_tq & 0x0F);
                    let wide = pq_tq >> 4;
                    if tq > 3 || wide > 1 {
                        return Err(JpegError::Corrupt(format!("DQT byte {pq_tq:#04x}")));
                    }
                    let mut table = [0u16; 64];
                    for (k, &nat) in NATURAL.iter().take(64).enumerate() {
                        table[nat] = if wide == 1 {
                            u16::from(byte(seg, i + 1 + 2 * k, "DQT")?) << 8
                                | u16::from(byte(seg, i + 2 + 2 * k, "DQT")?)
                        } else {
                            u16::from(byte(seg, i + 1 + k, "DQT")?)
                        };
                    }
                    qt[tq] = Some(table);
                    i += 1 + 64 * (usize::from(wide) + 1);
                }
            }
            0xDD => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
                restart_interval =
                    usize::from(byte(seg, 0, "DRI")?) << 8 | usize::from(byte(seg, 1, "DRI")?);
            }
            0xC0..=0xCF => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
                let progressive = match marker {
                    0xC0 | 0xC1 => false,
                    0xC2 => true,
                    0xC3 | 0xC7 | 0xCB | 0xCF => {
                        return Err(JpegError::Unsupported("lossless JPEG".into()));
                    }
                    _ => {
                        return Err(JpegError::Unsupported(format!(
                            "frame type SOF{} (arithmetic or hierarchical coding)",
                            marker - 0xC0
                        )));
                    }
                };
                if frame.is_some() {
                    return Err(JpegError::Corrupt("more than one SOF marker".into()));
                }
                frame = Some(parse_frame(seg, progressive)?);
            }
            0xDA => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
                let f = frame
                    .as_mut()
                    .ok_or_else(|| JpegError::Corrupt("SOS before SOF".into()))?;
                pos = decode_scan(
                    f,
                    seg,
                    data,
                    pos,
                    &qt,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                )?;
            }
            0xE0 => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
                jfif |= seg.starts_with(b"JFIF\0");
            }
            0xE1 => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
                if exif.is_none()
                    && let Some(tiff) = seg.strip_prefix(b"Exif\0\0")
                {
                    exif = Some(tiff.to_vec());
                }
            }
            0xEE => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
                if seg.len() >= 12 && seg.starts_with(b"Adobe") {
                    adobe_transform = seg.get(11).copied();
                }
            }
            0xDC => {
                return Err(JpegError::Unsupported(
                    "DNL marker (height given after the scan)".into(),
                ));
            }
            _ => {
                let seg = segment(data, pos)?;
                pos += seg.len() + 2;
            }
        }
    }
    let f = frame.ok_or_else(|| JpegError::Corrupt("no SOF marker before EOI".into()))?;
    let mut img = finish(f, jfif, adobe_transform)?;
    img.exif = exif;
    Ok(img)
}

fn parse_frame(seg: &[u8], progressive: bool) -> Result<Frame, JpegError> {
    let precision = byte(seg, 0, "SOF")?;
    if precision != 8 {
        return Err(JpegError::Unsupported(format!("{precision}-bit samples")));
    }
    let height = be16(seg, 1)?;
    let width = be16(seg, 3)?;
    let nc = usize::from(byte(seg, 5, "SOF")?);
    if height == 0 {
        return Err(JpegError::Unsupported(
            "height 0 (set by a DNL marker)".into(),
        ));
    }
    if width == 0 {
        return Err(JpegError::Corrupt("image width is 0".into()));
    }
    if width * height > MAX_PIXELS {
        return Err(JpegError::TooLarge { width, height });
    }
    if nc != 1 && nc != 3 {
        return Err(JpegError::Unsupported(format!("{nc} colour components")));
    }
    let mut comps = Vec::with_capacity(nc);
    for c in 0..nc {
        let id = byte(seg, 6 + 3 * c, "SOF")?;
        let hv = byte(seg, 7 + 3 * c, "SOF")?;
        let tq = usize::from(byte(seg, 8 + 3 * c, "SOF")?);
        let (h, v) = (usize::from(hv >> 4), usize::from(hv & 15));
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || tq > 3 {
            return Err(JpegError::Corrupt(format!(
                "component {id}: sampling {h}x{v}, quantisation table {tq}"
            )));
        }
        comps.push(Component {
            id,
            h,
            v,
            tq,
            bw: 0,
            bh: 0,
            real_bw: 0,
            real_bh: 0,
            coefs: Vec::new(),
            quant: None,
            dc_table: 0,
            ac_table: 0,
        });
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    for c in &comps {
        if hmax % c.h != 0 || vmax % c.v != 0 {
            return Err(JpegError::Unsupported(format!(
                "non-integral sampling ratio {}x{} of {hmax}x{vmax}",
                c.h, c.v
            )));
        }
    }
    // T.81 allows at most 10 blocks in an interleaved MCU; libjpeg refuses more.
    let blocks: usize = comps.iter().map(|c| c.h * c.v).sum();
    if nc > 1 && blocks > 10 {
        return Err(JpegError::Corrupt(format!(
            "{blocks} blocks per MCU (at most 10)"
        )));
    }
    let mcux = width.div_ceil(8 * hmax);
    let mcuy = height.div_ceil(8 * vmax);
    for c in &mut comps {
        c.bw = mcux * c.h;
        c.bh = mcuy * c.v;
        c.real_bw = (width * c.h).div_ceil(hmax).div_ceil(8);
        c.real_bh = (height * c.v).div_ceil(vmax).div_ceil(8);
        c.coefs = vec![0; c.bw * c.bh * 64];
    }
    Ok(Frame {
        width,
        height,
        progressive,
        hmax,
        vmax,
        mcux,
        mcuy,
        comps,
    })
}

fn finish(f: Frame, jfif: bool, adobe_transform: Option<u8>) -> Result<DecodedJpeg, JpegError> {
    let (w, h) = (f.width, f.height);
    let mut planes = Vec::with_capacity(f.comps.len());
    for c in &f.comps {
        let p = component_plane(&f, c)?;
        planes.push(upsample(&p, f.hmax / c.h, f.vmax / c.v));
    }
    if planes.len() == 1 {
        let p = &planes[0];
        let mut pixels = Vec::with_capacity(w * h);
        for y in 0..h {
            pixels.extend_from_slice(&p.data[y * p.width..y * p.width + w]);
        }
        return Ok(DecodedJpeg {
            width: w,
            height: h,
            channels: 1,
            pixels,
            exif: None,
        });
    }
    // libjpeg's colour-space guess for 3 components: JFIF or Adobe transform 1 mean YCbCr,
    // Adobe transform 0 or component ids 'R','G','B' mean RGB, anything else YCbCr.
    let ids: Vec<u8> = f.comps.iter().map(|c| c.id).collect();
    let is_rgb = if jfif {
        false
    } else if let Some(t) = adobe_transform {
        t == 0
    } else {
        ids == [b'R', b'G', b'B']
    };
    let mut pixels = Vec::with_capacity(w * h * 3);
    let tables = YccTables::new();
    for y in 0..h {
        for x in 0..w {
            let s: [usize; 3] = std::array::from_fn(|i| {
                let p = &planes[i];
                usize::from(p.data[y * p.width + x])
            });
            if is_rgb {
                pixels.extend(s.iter().map(|&v| v as u8));
            } else {
                pixels.extend(tables.convert(s[0], s[1], s[2]));
            }
        }
    }
    Ok(DecodedJpeg {
        width: w,
        height: h,
        channels: 3,
        pixels,
        exif: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/44-jpeg/jpeg")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn every_truncation_of_a_file_is_an_error_not_a_panic() {
        for name in [
            "base_420_33x17.jpg",
            "progressive_odd_420.jpg",
            "restart_422.jpg",
        ] {
            let data = fixture(name);
            assert!(decode(&data).is_ok(), "{name} decodes whole");
            for len in 0..data.len() {
                assert!(
                    decode(&data[..len]).is_err(),
                    "{name} cut to {len} bytes must fail"
                );
            }
        }
    }

    #[test]
    fn bit_flipped_files_never_panic_and_keep_sizes_consistent() {
        for name in [
            "base_420_33x17.jpg",
            "progressive_odd_422.jpg",
            "grey_odd.jpg",
            "restart_444.jpg",
        ] {
            let data = fixture(name);
            // Every header byte (one bit in three) and a fixed pseudo-random walk over the file.
            let mut state = 0x9E37_79B9u32;
            let header_end = data.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap_or(0) + 14;
            // The frame's size bytes are left out of the exhaustive walk: flipping their high
            // bits makes images of up to 65535 rows, which are valid and only slow to decode
            // in a debug build (the size limit has its own test).
            let sof = data.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap_or(0);
            let size_bits = (sof + 5) * 8..(sof + 9) * 8;
            let walk = (0..header_end * 8)
                .step_by(3)
                .filter(move |b| !size_bits.contains(b));
            let positions = walk.chain((0..1000).map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state as usize >> 8) % (data.len() * 8)
            }));
            for bit in positions {
                let mut bad = data.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                if let Ok(img) = decode(&bad) {
                    assert_eq!(
                        img.pixels.len(),
                        img.width * img.height * img.channels,
                        "{name} with bit {bit} flipped"
                    );
                }
            }
        }
    }

    #[test]
    fn a_frame_over_pillows_pixel_limit_is_refused_before_allocating() {
        let mut data = fixture("base_444_16x16.jpg");
        let sof = data
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("SOF0");
        // Height and width fields of the frame header: 65535 x 65535.
        data[sof + 5..sof + 9].fill(0xFF);
        assert_eq!(
            decode(&data),
            Err(JpegError::TooLarge {
                width: 65535,
                height: 65535
            })
        );
    }

    #[test]
    fn arithmetic_coding_is_reported_as_unsupported() {
        let mut data = fixture("base_444_16x16.jpg");
        let sof = data
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("SOF0");
        data[sof + 1] = 0xC9;
        assert!(matches!(decode(&data), Err(JpegError::Unsupported(_))));
    }
}
