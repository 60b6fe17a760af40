//! diffusers' `VaeImageProcessor`, replayed: `tests/fixtures/41-image-processor` (made by
//! Pillow 13.0.0 and diffusers 0.42.1) holds `preprocess` outputs for the image and mask
//! processors in every resize mode, and `apply_overlay` outputs. Tolerance: none; every byte
//! and every float must be equal. (Pillow's resize, `get_crop_region` and `load_image` are
//! replayed by diff-image's `tests/image_processor_parity.rs`.)

use diff_pipelines::image_processor::{ResizeMode, VaeImageProcessor};
use diff_pipelines::resample::{Image8, Resample};
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

    fn floats(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(key).unwrap();
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (t.shape().to_vec(), data)
    }
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn rgb(img: &Image8) -> image::RgbImage {
    assert_eq!(img.channels, 3);
    image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone()).unwrap()
}

#[test]
fn preprocess_matches_diffusers_in_every_resize_mode_for_images_and_masks() {
    let meta = json("processor.json");
    let tensors = Tensors::open("processor.safetensors");
    let device = diff_pipelines::default_device();
    let cases = meta["preprocess"].as_array().unwrap();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let input = rgb(&{
            let img = tensors.image(case["input"].as_str().unwrap());
            if img.channels == 1 {
                Image8::from_raw(
                    img.width,
                    img.height,
                    3,
                    img.data.iter().flat_map(|&v| [v, v, v]).collect(),
                )
                .unwrap()
            } else {
                img
            }
        });
        let resample = Resample::from_diffusers_name(case["resample"].as_str().unwrap()).unwrap();
        let processor = VaeImageProcessor::new(8).with_resample(resample);
        let mode = ResizeMode::from_name(case["resize_mode"].as_str().unwrap()).unwrap();
        let crops = case["crops_coords"].as_array().map(|c| {
            let v: Vec<i64> = c.iter().map(|x| x.as_i64().unwrap()).collect();
            (v[0], v[1], v[2], v[3])
        });
        let h = case["height"].as_u64().map(|v| v as usize);
        let w = case["width"].as_u64().map(|v| v as usize);
        let got = if case["kind"] == "mask" {
            processor.preprocess_mask_with(&[input], h.unwrap(), w.unwrap(), mode, crops, &device)
        } else {
            processor.preprocess_with(&[input], h, w, mode, crops, &device)
        }
        .unwrap();
        let (shape, want) = tensors.floats(case["output"].as_str().unwrap());
        let got_data: Vec<f32> = got
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        if got.dims().to_vec() != shape || got_data != want {
            let differ = got_data.iter().zip(&want).filter(|(a, b)| a != b).count();
            failures.push(format!(
                "case {i} {case}: shape {:?} vs {shape:?}, {differ} values differ",
                got.dims()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn apply_overlay_matches_diffusers_byte_for_byte() {
    let meta = json("processor.json");
    let tensors = Tensors::open("processor.safetensors");
    let processor = VaeImageProcessor::new(8);
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
        let got = processor.apply_overlay(&mask, &init, &image, crop).unwrap();
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
