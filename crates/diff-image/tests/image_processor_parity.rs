//! Pillow and the byte-level half of diffusers' `VaeImageProcessor`, replayed:
//! `tests/fixtures/41-image-processor` (made by Pillow 13.0.0 and diffusers 0.42.1) holds random
//! images, their PIL resizes for every filter, `get_crop_region` results, `apply_overlay`
//! outputs and `load_image` outputs. Tolerance: none; every byte must be equal. (The tensor
//! half, `preprocess`, is replayed by diff-pipelines' `tests/image_processor_parity.rs`.)

use diff_image::resample::{Image8, Resample, resize};
use diff_image::{apply_overlay, get_crop_region};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/41-image-processor")
}

struct Tensors(Vec<u8>);

impl Tensors {
    fn open(name: &str) -> Self {
        Self(std::fs::read(dir().join(name)).unwrap())
    }

    fn image(&self, key: &str) -> Image8 {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(key).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::U8, "{key}");
        let s = t.shape();
        Image8::from_raw(s[1], s[0], s[2], t.data().to_vec()).unwrap()
    }
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn rgb(img: &Image8) -> image::RgbImage {
    assert_eq!(img.channels, 3);
    image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone()).unwrap()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn resize_matches_pillow_byte_for_byte_for_every_filter_size_and_box() {
    let meta = json("resize.json");
    let tensors = Tensors::open("resize.safetensors");
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 150, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let input = tensors.image(case["input"].as_str().unwrap());
        let want = tensors.image(case["output"].as_str().unwrap());
        let filter = Resample::from_pil_name(case["filter"].as_str().unwrap()).unwrap();
        let size = case["size"].as_array().unwrap();
        let box_ = case["box"].as_array().map(|b| {
            let v: Vec<f32> = b.iter().map(|x| x.as_f64().unwrap() as f32).collect();
            [v[0], v[1], v[2], v[3]]
        });
        let got = resize(&input, usize_of(&size[0]), usize_of(&size[1]), filter, box_).unwrap();
        if got != want {
            let diff = got
                .data
                .iter()
                .zip(&want.data)
                .filter(|(a, b)| a != b)
                .count();
            failures.push(format!(
                "{} {:?} {}x{} -> {:?} box {:?}: {diff} bytes differ (sizes {}x{} vs {}x{})",
                case["input"],
                filter,
                input.width,
                input.height,
                size,
                box_,
                got.width,
                got.height,
                want.width,
                want.height
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn get_crop_region_matches_diffusers() {
    let meta = json("processor.json");
    for case in meta["crop_regions"].as_array().unwrap() {
        let size = case["mask_size"].as_array().unwrap();
        let (mw, mh) = (usize_of(&size[0]) as u32, usize_of(&size[1]) as u32);
        let r: Vec<u32> = case["rect"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mask = image::RgbImage::from_fn(mw, mh, |x, y| {
            let on = x >= r[0] && x < r[2] && y >= r[1] && y < r[3];
            image::Rgb(if on { [255; 3] } else { [0; 3] })
        });
        let got = get_crop_region(
            &mask,
            usize_of(&case["width"]),
            usize_of(&case["height"]),
            usize_of(&case["pad"]),
        )
        .unwrap();
        let want: Vec<i64> = case["region"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(vec![got.0, got.1, got.2, got.3], want, "{case}");
    }
}

#[test]
fn apply_overlay_matches_diffusers_byte_for_byte() {
    let meta = json("processor.json");
    let tensors = Tensors::open("processor.safetensors");
    for case in meta["overlays"].as_array().unwrap() {
        let gray = tensors.image(case["mask"].as_str().unwrap());
        let mask = rgb(&Image8::from_raw(
            gray.width,
            gray.height,
            3,
            gray.data.iter().flat_map(|&v| [v, v, v]).collect(),
        )
        .unwrap());
        let init = rgb(&tensors.image(case["init_image"].as_str().unwrap()));
        let image = rgb(&tensors.image(case["image"].as_str().unwrap()));
        let crop = case["crop_coords"].as_array().map(|c| {
            let v: Vec<i64> = c.iter().map(|x| x.as_i64().unwrap()).collect();
            (v[0], v[1], v[2], v[3])
        });
        let got = apply_overlay(&mask, &init, &image, crop, Resample::Lanczos).unwrap();
        let want = tensors.image(case["output"].as_str().unwrap());
        let differ = got
            .as_raw()
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            (got.width() as usize, got.height() as usize),
            (want.width, want.height)
        );
        assert_eq!(differ, 0, "{case}: {differ} bytes differ");
    }
}

#[test]
fn an_all_black_mask_has_no_crop_region() {
    let mask = image::RgbImage::new(16, 16);
    assert!(get_crop_region(&mask, 8, 8, 2).is_err());
}

#[test]
fn load_image_applies_the_exif_orientation_as_diffusers() {
    let meta = json("processor.json");
    let tensors = Tensors::open("processor.safetensors");
    let cases = meta["load_image"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let got = diff_image::load_image(&dir().join(file)).unwrap();
        let want = tensors.image(case["output"].as_str().unwrap());
        assert_eq!(
            (got.width() as usize, got.height() as usize),
            (want.width, want.height),
            "{file}"
        );
        assert_eq!(got.as_raw(), &want.data, "{file}");
    }
}

#[test]
fn a_tiny_png_declaring_a_huge_size_is_a_decompression_bomb_error_not_an_allocation() {
    // 74 bytes: signature, IHDR for 50000x50000 RGB, an IDAT of a few bytes, IEND.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |png: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend_from_slice(&[0; 4]);
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[
            0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    chunk(&mut png, b"IEND", &[]);
    assert_eq!(png.len(), 74);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, &png).unwrap();
    match diff_image::load_image(&path) {
        Err(diff_image::ImageError::DecompressionBomb {
            path: p,
            width: 50_000,
            height: 50_000,
            pixels: 2_500_000_000,
            limit: 178_956_970,
        }) => assert_eq!(p, path),
        other => panic!("expected a decompression-bomb error, got {other:?}"),
    }
    let msg = diff_image::load_image(&path).unwrap_err().to_string();
    assert!(
        msg.contains("decompression bomb") && msg.contains("bomb.png"),
        "{msg}"
    );
}
