//! Property tests of request parsing and validation: arbitrary bodies never panic, every
//! refusal is a 4xx with a message, and whatever is accepted is within the limits.

use diff_server::Limits;
use diff_server::request::{
    A1111Request, OpenAiGeneration, decode_base64, edit_fields, parse_json, parse_size,
};
use proptest::prelude::*;

fn limits() -> Limits {
    Limits {
        max_steps: 50,
        max_side: 256,
        max_pixels: 256 * 256,
        max_images: 4,
        ..Limits::default()
    }
}

fn check_openai(body: &[u8]) {
    let l = limits();
    match parse_json::<OpenAiGeneration>(body).and_then(|g| g.into_request(&l)) {
        Ok((r, _)) => {
            assert!(r.steps >= 1 && r.steps <= l.max_steps);
            assert!(r.image_count() >= 1 && r.image_count() <= l.max_images);
            for side in [r.width, r.height].into_iter().flatten() {
                assert!(side % 8 == 0 && side <= l.max_side);
            }
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{e:?}");
            assert!(!e.message.is_empty());
        }
    }
}

fn check_a1111(body: &[u8], img2img: bool) {
    let l = limits();
    match parse_json::<A1111Request>(body).and_then(|g| g.into_request(&l, img2img)) {
        Ok(r) => {
            assert!(r.steps <= l.max_steps && r.image_count() <= l.max_images);
            assert_eq!(r.image.is_some(), img2img);
        }
        Err(e) => assert!(e.status.is_client_error(), "{e:?}"),
    }
}

/// JSON objects with the fields clients send, holding values of every kind.
fn field_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (0u64..2000).prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
        "[0-9]{1,4}x[0-9]{1,4}".prop_map(serde_json::Value::from),
        "[A-Za-z0-9+/=]{0,40}".prop_map(|s| serde_json::Value::Array(vec![s.into()])),
    ]
}

const KEYS: &[&str] = &[
    "prompt",
    "n",
    "size",
    "response_format",
    "negative_prompt",
    "steps",
    "guidance",
    "seed",
    "scheduler",
    "strength",
    "cfg_scale",
    "width",
    "height",
    "sampler_name",
    "batch_size",
    "n_iter",
    "init_images",
    "denoising_strength",
    "mask",
    "inpainting_mask_invert",
];

fn object() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((0..KEYS.len(), field_value()), 0..10).prop_map(|pairs| {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(k, v)| (KEYS[k].to_string(), v))
            .collect();
        serde_json::to_vec(&map).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_openai(&body);
        check_a1111(&body, false);
        check_a1111(&body, true);
    }

    #[test]
    fn arbitrary_objects_never_panic(body in object()) {
        check_openai(&body);
        check_a1111(&body, false);
        check_a1111(&body, true);
    }

    #[test]
    fn sizes_and_base64_never_panic(text in ".{0,40}") {
        let _ = parse_size(Some(&text));
        let _ = decode_base64("x", &text);
        let fields = vec![("size".to_string(), text.clone()), ("steps".to_string(), text.clone()),
            ("guidance".to_string(), text.clone()), ("seed".to_string(), text)];
        if let Ok(g) = edit_fields(&fields) {
            let _ = g.into_request(&limits());
        }
    }
}

#[test]
fn the_issue_s_bad_requests_are_refused_with_clear_messages() {
    let l = limits();
    let msg = |body: &str| {
        parse_json::<OpenAiGeneration>(body.as_bytes())
            .and_then(|g| g.into_request(&l))
            .unwrap_err()
            .message
    };
    assert!(msg("{\"prompt\": ").contains("malformed JSON"));
    assert!(msg(r#"{"prompt":"a","size":"7x7"}"#).contains("multiple of 8"));
    assert!(msg(r#"{"prompt":"a","steps":1000000}"#).contains("limit"));
    assert!(msg(r#"{"prompt":"a","steps":"ten"}"#).contains("field `steps`"));
    assert!(msg(r#"{"prompt":"a","size":"4096x4096"}"#).contains("limit"));
    assert!(msg(r#"{"prompt":"a","n":100}"#).contains("images"));
    assert!(msg(r#"{"prompt":"a","response_format":"url"}"#).contains("b64_json"));
    assert!(msg(r#"{"prompt":"a","scheduler":"Nope"}"#).contains("EulerDiscreteScheduler"));
    assert!(msg(r#"{"size":"64x64"}"#).contains("prompt"));
    let a1111 = |body: &str| {
        parse_json::<A1111Request>(body.as_bytes())
            .and_then(|g| g.into_request(&l, true))
            .unwrap_err()
            .message
    };
    assert!(a1111(r#"{"prompt":"a"}"#).contains("init_images"));
    assert!(
        a1111(r#"{"prompt":"a","init_images":["bm90IGFuIGltYWdl"]}"#).contains("not a PNG or JPEG")
    );
    assert!(a1111(r#"{"prompt":"a","init_images":["%%%"]}"#).contains("base64"));
}

#[test]
fn a1111_samplers_map_to_diffusers_classes() {
    let c = diff_server::samplers::resolve("DPM++ 2M Karras").unwrap();
    assert_eq!(c.class, "DPMSolverMultistepScheduler");
    assert_eq!(c.overrides["use_karras_sigmas"], serde_json::json!(true));
    assert_eq!(
        diff_server::samplers::resolve("euler a").unwrap().class,
        "EulerAncestralDiscreteScheduler"
    );
    assert_eq!(
        diff_server::samplers::resolve("DDIMScheduler")
            .unwrap()
            .class,
        "DDIMScheduler"
    );
    assert!(diff_server::samplers::resolve("FlowMatchEulerDiscreteScheduler").is_err());
    let listed = diff_server::samplers::a1111_list();
    assert!(listed.as_array().unwrap().iter().all(|s| {
        burn_diffusers::schedulers::SCHEDULER_CLASSES.contains(&s["aliases"][0].as_str().unwrap())
    }));
}
