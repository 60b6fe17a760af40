//! PNG headers into diff-image's `decode_image` (diffusers' `load_image` with Pillow's
//! decompression-bomb rule), structure-aware: half the inputs are raw bytes (seed the corpus
//! with `tests/fixtures/41-image-processor/inputs/*.png`), the other half build a PNG with
//! valid chunk CRCs from an input-chosen `IHDR` (any width and height, bit depth, colour type,
//! interlace), optional `PLTE` / `tRNS` / `eXIf` chunks and input bytes as zlib-compressed
//! `IDAT`, so the runs reach the decoder rather than the CRC check. Every input must give an
//! image or a typed error: no panic, and no allocation for a header above twice
//! `MAX_IMAGE_PIXELS`. Headers declaring more than 2^20 pixels (but under the bomb limit) are
//! only checked, not decoded, to keep the runs fast.
#![no_main]

use diff_image::{MAX_IMAGE_PIXELS, decode_image, image_dimensions};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

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

/// A zlib stream of stored (uncompressed) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend([1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

fn build(data: &[u8]) -> Vec<u8> {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let be = |i: usize| u32::from_be_bytes([byte(i), byte(i + 1), byte(i + 2), byte(i + 3)]);
    // Small sizes most of the time, any u32 otherwise.
    let side = |v: u32| if byte(0) & 0x80 != 0 { v } else { v % 67 };
    let (w, h) = (side(be(1)), side(be(5)));
    let depths = [1u8, 2, 4, 8, 16];
    let colours = [0u8, 2, 3, 4, 6];
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.push(depths[usize::from(byte(9)) % depths.len()]);
    ihdr.push(colours[usize::from(byte(10)) % colours.len()]);
    ihdr.extend([0, 0, byte(0) & 1]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    let rest = data.get(11..).unwrap_or(&[]);
    if byte(0) & 2 != 0 {
        let n = (usize::from(byte(11)) % 256 + 1) * 3;
        chunk(
            &mut out,
            b"PLTE",
            rest.get(..n.min(rest.len())).unwrap_or(&[]),
        );
    }
    if byte(0) & 4 != 0 {
        chunk(
            &mut out,
            b"tRNS",
            rest.get(..rest.len().min(8)).unwrap_or(&[]),
        );
    }
    if byte(0) & 8 != 0 {
        // An EXIF orientation tag (big-endian TIFF), value from the input.
        let mut exif =
            b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
        exif.extend([0, byte(12) % 10, 0, 0, 0, 0, 0, 0]);
        chunk(&mut out, b"eXIf", &exif);
    }
    chunk(&mut out, b"IDAT", &zlib_stored(rest));
    chunk(&mut out, b"IEND", &[]);
    out
}

fuzz_target!(|data: &[u8]| {
    let bytes = match data.first() {
        Some(b) if b & 0x40 != 0 => build(data),
        _ => data.to_vec(),
    };
    let path = Path::new("fuzz.png");
    let pixels = image_dimensions(&bytes).map(|(w, h)| w.saturating_mul(h));
    match pixels {
        Some(p) if p > 2 * MAX_IMAGE_PIXELS => {
            assert!(
                decode_image(&bytes, path).is_err(),
                "a bomb header was decoded"
            );
        }
        Some(p) if p > 1 << 20 => {}
        _ => {
            if let Ok(img) = decode_image(&bytes, path) {
                assert!(u64::from(img.width()) * u64::from(img.height()) <= 2 * MAX_IMAGE_PIXELS);
            }
        }
    }
});
