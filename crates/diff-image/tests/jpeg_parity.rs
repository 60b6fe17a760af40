//! The JPEG decoder against Pillow (libjpeg-turbo): `tests/fixtures/44-jpeg`, made by its
//! `generate.py` with Pillow 13 / diffusers' `load_image`. Every case must match byte for byte
//! (tolerance 0), both from [`jpeg::decode`] and through `load_image` (EXIF orientation applied).

use diff_image::jpeg::{self, JpegError};
use diff_image::{ImageError, load_image};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/44-jpeg")
}

struct Case {
    name: String,
    width: usize,
    height: usize,
    orientation: u64,
    fallback: bool,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json parses");
    json.as_array()
        .expect("a list of cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            width: c["width"].as_u64().expect("width") as usize,
            height: c["height"].as_u64().expect("height") as usize,
            orientation: c["orientation"].as_u64().expect("orientation"),
            fallback: c["fallback"].as_bool().expect("fallback"),
        })
        .collect()
}

fn read(case: &str, ext: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("jpeg").join(format!("{case}.{ext}"))).expect("fixture file")
}

#[test]
fn every_fixture_decodes_to_pillows_bytes_exactly() {
    let cases = cases();
    assert!(
        cases.len() >= 50,
        "expected the full fixture set, got {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in cases.iter().filter(|c| !c.fallback) {
        let want = read(&case.name, "rgb");
        // The decoder itself must take every fixture (no fallback to the `image` crate).
        match jpeg::decode(&read(&case.name, "jpg")) {
            Ok(img) if case.orientation == 1 => {
                assert_eq!(
                    (img.width, img.height),
                    (case.width, case.height),
                    "{}",
                    case.name
                );
                if let Some(failure) = compare(&case.name, &img.into_rgb(), &want) {
                    failures.push(failure);
                }
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
        let path = fixtures().join("jpeg").join(format!("{}.jpg", case.name));
        match load_image(&path) {
            Ok(img) => {
                let size = (img.width() as usize, img.height() as usize);
                assert_eq!(size, (case.width, case.height), "load_image {}", case.name);
                if let Some(failure) =
                    compare(&format!("load_image {}", case.name), img.as_raw(), &want)
                {
                    failures.push(failure);
                }
            }
            Err(e) => failures.push(format!("load_image {}: {e}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "mismatches (tolerance 0):\n{}",
        failures.join("\n")
    );
}

/// `None` when `got == want`, else a line saying how many bytes differ and by how much.
fn compare(name: &str, got: &[u8], want: &[u8]) -> Option<String> {
    let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
    let max = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (i16::from(a) - i16::from(b)).abs())
        .max()
        .unwrap_or(0);
    (got.len() != want.len() || diff > 0).then(|| {
        format!(
            "{name}: {diff} of {} bytes differ, max {max} (lengths {} vs {})",
            want.len(),
            got.len(),
            want.len()
        )
    })
}

#[test]
fn cmyk_jpeg_falls_back_to_the_image_crate() {
    let data = read("fallback_cmyk", "jpg");
    assert!(
        matches!(jpeg::decode(&data), Err(JpegError::Unsupported(_))),
        "4-component JPEG must be reported as unsupported"
    );
    let path = fixtures().join("jpeg/fallback_cmyk.jpg");
    let img = load_image(&path).expect("the image crate decodes CMYK");
    assert_eq!((img.width(), img.height()), (37, 23));
    let want = read("fallback_cmyk", "rgb");
    // The fallback is not exact; on this fixture it is within 1 level of Pillow (measured).
    let max = img
        .as_raw()
        .iter()
        .zip(&want)
        .map(|(&a, &b)| a.abs_diff(b))
        .max();
    assert_eq!(img.as_raw().len(), want.len());
    assert!(
        max.is_some_and(|m| m <= 1),
        "max difference {max:?}, tolerance 1"
    );
}

#[test]
fn corrupt_jpeg_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = read("base_420_33x17", "jpg");
    let path = dir.path().join("cut.jpg");
    std::fs::write(&path, &data[..data.len() / 2]).expect("write");
    match load_image(&path) {
        Err(ImageError::Decode { path: p, message }) => {
            assert_eq!(p, path);
            assert!(message.contains("truncated"), "message: {message}");
        }
        other => panic!("expected an Image error, got {other:?}"),
    }
}
