//! CLIP vision, the SD safety checker and CLIPImageProcessor against transformers 5.23 /
//! diffusers 0.42.1 (`tests/fixtures/20-clip/{vision,safety_checker,image_processor}`).

#[path = "common/clip_fixtures.rs"]
mod common;

use burn::tensor::{DType, Device, Tensor};
use common::{check, fixture, floats, io, tensor, values};
use diff_models::FromPretrained;
use diff_models::image_processor::ImageU8;
use diff_models::{
    CLIPImageProcessor, CLIPVisionModelWithProjection, ModelError, StableDiffusionSafetyChecker,
};

#[test]
fn vision_model_with_projection_matches_transformers() {
    let device = Device::default();
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::F16, 1e-2)] {
        let (model, report) = CLIPVisionModelWithProjection::from_pretrained(
            &fixture("vision"),
            &diff_models::ModelLoadOptions::new(&device).with_dtype(dtype),
        )
        .expect("load");
        assert!(report.is_clean(), "{}", report.summary());
        let src = io("vision");
        let pixels = tensor::<4>(&src, "pixel_values", &device);
        let pooled = model
            .vision_model
            .forward(pixels.clone())
            .expect("forward")
            .pooler_output;
        let out = model.forward(pixels).expect("forward");
        let tag = format!("vision {dtype:?}");
        check(
            &format!("{tag} image_embeds"),
            out.image_embeds.cast(DType::F32),
            &src,
            "image_embeds",
            tol,
        );
        check(
            &format!("{tag} last_hidden_state"),
            out.last_hidden_state.cast(DType::F32),
            &src,
            "last_hidden_state",
            tol,
        );
        check(
            &format!("{tag} pooler_output"),
            pooled.cast(DType::F32),
            &src,
            "pooler_output",
            tol,
        );
    }
}

#[test]
fn vision_model_rejects_the_wrong_image_size() {
    let device = Device::default();
    let (model, _) = CLIPVisionModelWithProjection::from_pretrained(
        &fixture("vision"),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(DType::F32),
    )
    .expect("load");
    let err = model
        .forward(Tensor::zeros([1, 3, 30, 32], &device))
        .expect_err("30x32");
    assert!(matches!(err, ModelError::InvalidInput { .. }));
    assert!(
        err.to_string()
            .contains("(30*32) doesn't match model (32*32)"),
        "{err}"
    );
}

#[test]
fn safety_checker_flags_and_blacks_out_the_same_images_as_diffusers() {
    let device = Device::default();
    let (checker, report) = StableDiffusionSafetyChecker::from_pretrained(
        &fixture("safety_checker"),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(DType::F32),
    )
    .expect("load");
    assert!(report.is_clean(), "{}", report.summary());
    let src = io("safety_checker");
    let clip_input = tensor::<4>(&src, "clip_input", &device);
    check(
        "safety image_embeds",
        checker.image_embeds(clip_input.clone()).expect("embeds"),
        &src,
        "image_embeds",
        1e-4,
    );
    let images = tensor::<4>(&src, "images", &device);
    let out = checker.forward(clip_input, images).expect("forward");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("safety_checker/io.json")).expect("io.json"),
    )
    .expect("json");
    let want: Vec<bool> = expected["has_nsfw_concepts"]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_bool().expect("bool"))
        .collect();
    assert_eq!(out.has_nsfw_concepts, want);
    // Image 1 is flagged only through the special-care adjustment (+0.01).
    assert!(out.special_scores[1][0] > 0.0);
    assert!(out.concept_scores[1][1] > 0.0 && out.concept_scores[1][1] < 0.01);
    let (got, _) = values(out.images);
    let (want_images, _) = floats(&src, "checked_images");
    assert_eq!(
        got, want_images,
        "flagged images must be exactly zero, others untouched"
    );
}

#[test]
fn safety_checker_in_f16_gives_the_same_flags() {
    let device = Device::default();
    let (checker, _) = StableDiffusionSafetyChecker::from_pretrained(
        &fixture("safety_checker"),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(DType::F16),
    )
    .expect("load");
    let src = io("safety_checker");
    let clip_input = tensor::<4>(&src, "clip_input", &device);
    check(
        "safety image_embeds f16",
        checker
            .image_embeds(clip_input.clone())
            .expect("embeds")
            .cast(DType::F32),
        &src,
        "image_embeds",
        1e-2,
    );
    let out = checker
        .forward(clip_input, tensor::<4>(&src, "images", &device))
        .expect("forward");
    assert_eq!(out.has_nsfw_concepts, vec![true, true, false, false]);
}

#[test]
fn clip_image_processor_matches_transformers_on_downscale_and_upscale() {
    let device = Device::default();
    let processor =
        CLIPImageProcessor::from_pretrained(&fixture("image_processor")).expect("config");
    let src = io("image_processor");
    for name in ["wide", "tall"] {
        let png = image::open(fixture(&format!("image_processor/{name}.png")))
            .expect("png")
            .to_rgb8();
        let (w, h) = png.dimensions();
        let input = ImageU8 {
            width: w as usize,
            height: h as usize,
            channels: 3,
            data: png.as_raw(),
        };
        let got = processor.preprocess(&[input], &device).expect("preprocess");
        // The same image as pipeline floats in [0, 1] (NHWC) takes the numpy_to_pil route.
        let floats_nhwc: Vec<f32> = png.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
        let nhwc = Tensor::<4>::from_data(
            burn::tensor::TensorData::new(floats_nhwc, [1, h as usize, w as usize, 3]),
            &device,
        );
        let via_float = processor
            .preprocess_unit_float_nhwc(nhwc, &device)
            .expect("preprocess floats");
        assert_eq!(values(via_float), values(got.clone()));
        let (g, gs) = values(got);
        let (want, ws) = floats(&src, &format!("{name}_pixel_values"));
        assert_eq!(gs, ws);
        // torchvision's uint8 antialiased resize is integer arithmetic, reproduced exactly;
        // tolerance 1e-5 absolute on every value (one 8-bit level would be ~0.0146).
        let diffs: Vec<f32> = g.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().fold(0f32, |m, d| m.max(*d));
        eprintln!("image_processor {name}: max abs diff {max:.3e} (tolerance 1e-5)");
        assert!(max <= 1e-5, "{name}: max diff {max}");
    }
}

#[test]
fn sd15_structure_safety_checker_loads_legacy_config_and_keys_and_matches_diffusers() {
    let device = Device::default();
    let (checker, report) = StableDiffusionSafetyChecker::from_pretrained(
        &fixture("safety_checker_sd15"),
        &diff_models::ModelLoadOptions::new(&device).with_dtype(DType::F32),
    )
    .expect("load");
    assert!(report.is_clean(), "{}", report.summary());
    // vision_config_dict (24 layers, patch 14) wins over the stale vision_config.
    assert_eq!(checker.vision_model.encoder.layers.len(), 24);
    assert_eq!(checker.vision_model.patch_size, 14);
    let src = io("safety_checker_sd15");
    let clip_input = tensor::<4>(&src, "clip_input", &device);
    check(
        "safety sd15 image_embeds",
        checker.image_embeds(clip_input.clone()).expect("embeds"),
        &src,
        "image_embeds",
        1e-4,
    );
    let out = checker
        .forward(clip_input, Tensor::ones([2, 4, 4, 3], &device))
        .expect("forward");
    assert_eq!(out.has_nsfw_concepts, vec![false, true]);
}
