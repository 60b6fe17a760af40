//! JPEG bytes into diff-image's Pillow-exact decoder (`jpeg::decode`) and into `decode_image`
//! (the header walk, Pillow's decompression-bomb rule, the `image` crate fallback). Seed the
//! corpus with `tests/fixtures/44-jpeg/jpeg/*.jpg` (baseline, progressive, every subsampling,
//! restart intervals, EXIF). Inputs that do not start with a JPEG SOI marker get one, so the
//! runs stay in the JPEG paths. Every input must give an image or a typed error: no panic, and
//! no allocation for a frame above twice `MAX_IMAGE_PIXELS`. Frames declaring more than 2^20
//! pixels (but under the bomb limit) are only checked, not decoded, to keep the runs fast.
#![no_main]

use diff_image::{MAX_IMAGE_PIXELS, decode_image, image_dimensions, jpeg};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let bytes = if data.starts_with(&[0xFF, 0xD8]) {
        data.to_vec()
    } else {
        let mut b = vec![0xFF, 0xD8];
        b.extend(data);
        b
    };
    let path = Path::new("fuzz.jpg");
    let pixels = image_dimensions(&bytes).map(|(w, h)| w.saturating_mul(h));
    match pixels {
        Some(p) if p > 2 * MAX_IMAGE_PIXELS => {
            assert!(
                decode_image(&bytes, path).is_err(),
                "a bomb header was decoded"
            );
            assert!(jpeg::decode(&bytes).is_err(), "a bomb frame was decoded");
        }
        Some(p) if p > 1 << 20 => {}
        // No frame header found by the quick walk: the decoders must still refuse or decode
        // within the limit (they find the frame themselves).
        _ => {
            if let Ok(d) = jpeg::decode(&bytes) {
                assert!((d.width as u64) * (d.height as u64) <= 2 * MAX_IMAGE_PIXELS);
            }
            if let Ok(img) = decode_image(&bytes, path) {
                assert!(u64::from(img.width()) * u64::from(img.height()) <= 2 * MAX_IMAGE_PIXELS);
            }
        }
    }
});
