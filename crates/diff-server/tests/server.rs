//! The server in process on the tiny SD fixture (`tests/fixtures/tiny-sd`): images against
//! diffusers' fixtures (`tests/fixtures/40-pipeline-runs`, 2/255 per pixel, 0.5/255 mean),
//! the A1111 routes, jobs (SSE, cancel, a full queue), and the bad requests of issue 16, after
//! each of which the server still serves.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use burn_diffusers::pipelines::{FloatImages, LoadOptions, Passed};
use diff_server::{AppState, JobQueue, Limits, ModelSpec, ModelStatus, router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use tower::ServiceExt;

const PROMPT: &str = "a photo of an astronaut riding a horse on mars";
const KEY: &str = "s3cret-test-key";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

async fn app(queue_size: usize) -> (axum::Router, Arc<JobQueue>) {
    let mut spec = ModelSpec::new(fixtures().join("tiny-sd").display().to_string());
    spec.load = LoadOptions {
        local_files_only: true,
        ..LoadOptions::default()
    };
    spec.load.components.safety_checker = Passed::Drop;
    let queue = JobQueue::start(spec, queue_size);
    let mut status = queue.status_receiver();
    loop {
        let s = status.borrow_and_update().clone();
        match s {
            ModelStatus::Ready(_) => break,
            ModelStatus::Failed(e) => panic!("{e}"),
            ModelStatus::Loading => status.changed().await.unwrap(),
        }
    }
    let state = Arc::new(AppState {
        queue: queue.clone(),
        limits: Limits {
            max_body_bytes: 1024 * 1024,
            max_side: 256,
            max_pixels: 256 * 256,
            max_steps: 60,
            max_images: 4,
            default_steps: 4,
            ..Limits::default()
        },
        auth_digest: Some(diff_server::routes::auth_digest(KEY)),
    });
    (router(state), queue)
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

fn post(path: &str, body: impl Into<Body>, content_type: &str) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("authorization", format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap()
}

async fn post_json(app: &axum::Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, bytes) = send(app, post(path, body.to_string(), "application/json")).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn decode_png(b64: &str) -> image::RgbImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

fn assert_close(got: &image::RgbImage, want: &FloatImages, what: &str) {
    assert_eq!(
        (got.width() as usize, got.height() as usize),
        (want.width, want.height),
        "{what}"
    );
    let diffs: Vec<f32> = got
        .as_raw()
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (*a as f32 / 255.0 - b).abs())
        .collect();
    let max = diffs.iter().copied().fold(0.0, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    // 8-bit rounding adds up to 0.5/255 to the float gate.
    assert!(
        max <= 2.5 / 255.0 && mean < 0.75 / 255.0,
        "{what}: max {max}, mean {mean}"
    );
}

fn fixture(name: &str) -> FloatImages {
    burn_diffusers::pipelines::outputs::load_float_images(
        &fixtures().join(format!("40-pipeline-runs/{name}.safetensors")),
    )
    .unwrap()
}

async fn healthy(app: &axum::Router) {
    let (status, _) = send(app, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(app, get("/ready")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_a1111_routes_match_diffusers() {
    let (app, _) = app(4).await;
    healthy(&app).await;
    // OpenAI generations: the `sd_txt2img_ddim` case.
    let (status, body) = post_json(
        &app,
        "/v1/images/generations",
        json!({"prompt": PROMPT, "size": "32x32", "steps": 4, "guidance": 7.5, "seed": 0,
               "scheduler": "DDIMScheduler", "response_format": "b64_json"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["seed"], json!(0));
    let img = decode_png(body["data"][0]["b64_json"].as_str().unwrap());
    assert_close(&img, &fixture("sd_txt2img_ddim"), "generations");

    // A1111 txt2img, same case through A1111's names (sampler `DDIM`).
    let (status, body) = post_json(
        &app,
        "/sdapi/v1/txt2img",
        json!({"prompt": PROMPT, "width": 32, "height": 32, "steps": 4, "cfg_scale": 7.5,
               "seed": 0, "sampler_name": "DDIM", "batch_size": 1, "n_iter": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let a1111 = decode_png(body["images"][0].as_str().unwrap());
    assert_eq!(
        a1111, img,
        "A1111 and OpenAI routes differ for the same seed"
    );
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["seed"], json!(0));
    assert_eq!(body["parameters"]["sampler_name"], json!("DDIM"));

    // A1111 img2img: the `sd_img2img_ddim` case.
    let input = std::fs::read(fixtures().join("40-pipeline-runs/inputs/image_32x32.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&input);
    let (status, body) = post_json(
        &app,
        "/sdapi/v1/img2img",
        json!({"prompt": PROMPT, "init_images": [format!("data:image/png;base64,{b64}")],
               "denoising_strength": 0.6, "steps": 5, "cfg_scale": 7.5, "seed": 7,
               "sampler_name": "DDIM"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let img = decode_png(body["images"][0].as_str().unwrap());
    assert_close(&img, &fixture("sd_img2img_ddim"), "img2img");

    // OpenAI edits with a mask (opaque: white = repaint): the `sd_inpaint_legacy_4ch_euler`
    // case.
    let mask = std::fs::read(fixtures().join("40-pipeline-runs/inputs/mask_32x32.png")).unwrap();
    let boundary = "XBOUNDARYX";
    let mut form = Vec::new();
    for (name, file, bytes) in [("image", true, &input), ("mask", true, &mask)] {
        let disp = if file {
            format!("; filename=\"{name}.png\"\r\nContent-Type: image/png")
        } else {
            String::new()
        };
        form.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{disp}\r\n\r\n"
            )
            .as_bytes(),
        );
        form.extend_from_slice(bytes);
        form.extend_from_slice(b"\r\n");
    }
    for (name, value) in [
        ("prompt", PROMPT),
        ("size", "32x32"),
        ("steps", "4"),
        ("guidance", "7.5"),
        ("seed", "12"),
        ("strength", "0.75"),
        ("scheduler", "EulerDiscreteScheduler"),
    ] {
        form.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    form.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let (status, bytes) = send(
        &app,
        post(
            "/v1/images/edits",
            form,
            &format!("multipart/form-data; boundary={boundary}"),
        ),
    )
    .await;
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let img = decode_png(body["data"][0]["b64_json"].as_str().unwrap());
    assert_close(&img, &fixture("sd_inpaint_legacy_4ch_euler"), "edits");

    // The listing routes.
    let (status, bytes) = send(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    let models: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(models["data"][0]["id"], json!("tiny-sd"));
    let (_, bytes) = send(&app, get("/sdapi/v1/samplers")).await;
    let samplers: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        samplers
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "Euler a")
    );
    let (_, bytes) = send(&app, get("/sdapi/v1/sd-models")).await;
    let sd: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(sd[0]["model_name"], json!("tiny-sd"));
    let (status, bytes) = send(&app, get("/sdapi/v1/progress")).await;
    assert_eq!(status, StatusCode::OK);
    let p: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(p["state"]["job_count"], json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_stream_progress_cancel_and_a_full_queue_refuses_at_once() {
    let (app, queue) = app(1).await;
    // A job followed over SSE: progress events with step/total, then `done`.
    let (status, body) = post_json(
        &app,
        "/v1/jobs",
        json!({"prompt": PROMPT, "size": "32x32", "steps": 3, "seed": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, bytes) = send(&app, get(&format!("/v1/jobs/{id}/events"))).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("event: done"), "{text}");
    assert!(
        text.contains("event: progress") || text.contains("event: queued"),
        "{text}"
    );
    let (status, bytes) = send(&app, get(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    let job: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(job["status"], json!("done"));
    assert_eq!(job["seeds"][0], json!(5));

    // A long job, cancelled while it runs or waits.
    let (_, body) = post_json(
        &app,
        "/v1/jobs",
        json!({"prompt": PROMPT, "size": "64x64", "steps": 60}),
    )
    .await;
    let long = body["id"].as_str().unwrap().to_string();
    // Fill the queue behind it: with one running and one waiting, the next is refused at once.
    let mut refused = 0;
    let mut queued = Vec::new();
    for _ in 0..4 {
        let (status, body) = post_json(
            &app,
            "/v1/jobs",
            json!({"prompt": PROMPT, "size": "32x32", "steps": 2}),
        )
        .await;
        match status {
            StatusCode::ACCEPTED => queued.push(body["id"].as_str().unwrap().to_string()),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], json!("queue_full"));
                refused += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(refused >= 2, "refused {refused}");
    let (status, _) = post_json(&app, &format!("/v1/jobs/{long}/cancel"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let job = queue.get(&long).unwrap();
    let end = job.finished().await;
    match end {
        diff_server::jobs::JobState::Cancelled => {}
        diff_server::jobs::JobState::Done(out) => assert!(out.interrupted),
        other => panic!("{other:?}"),
    }
    for id in queued {
        let job = queue.get(&id).unwrap();
        assert!(job.finished().await.is_terminal());
    }
    let (status, _) = send(&app, get("/v1/jobs/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    healthy(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx_and_the_server_goes_on() {
    let (app, _) = app(2).await;
    let check = |status: StatusCode, bytes: &[u8], want: StatusCode, needle: &str| {
        assert_eq!(status, want, "{}", String::from_utf8_lossy(bytes));
        let body: Value = serde_json::from_slice(bytes).expect("a JSON error body");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
    };
    let json_post = |path: &str, body: &str| post(path, body.to_string(), "application/json");
    // Malformed JSON.
    let (s, b) = send(&app, json_post("/v1/images/generations", "{\"prompt\": ")).await;
    check(s, &b, StatusCode::BAD_REQUEST, "malformed JSON");
    // Size 7x7.
    let (s, b) = send(
        &app,
        json_post("/v1/images/generations", r#"{"prompt":"a","size":"7x7"}"#),
    )
    .await;
    check(s, &b, StatusCode::BAD_REQUEST, "multiple of 8");
    // Steps 10^6.
    let (s, b) = send(
        &app,
        json_post("/sdapi/v1/txt2img", r#"{"prompt":"a","steps":1000000}"#),
    )
    .await;
    check(s, &b, StatusCode::BAD_REQUEST, "limit");
    // A body over the limit (the test server's is 1 MiB; the e2e sends 100 MB to the binary).
    let big = vec![b' '; 3 * 1024 * 1024];
    let (s, b) = send(
        &app,
        post("/v1/images/generations", big, "application/json"),
    )
    .await;
    check(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "limit");
    // A corrupt image.
    let corrupt = base64::engine::general_purpose::STANDARD
        .encode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x20\0\0\0\x20garbage");
    let (s, b) = send(
        &app,
        json_post(
            "/sdapi/v1/img2img",
            &json!({"prompt": "a", "init_images": [corrupt], "steps": 2}).to_string(),
        ),
    )
    .await;
    check(s, &b, StatusCode::BAD_REQUEST, "corrupt image");
    // A wrong token, and none.
    for auth in [Some("Bearer wrong"), None] {
        let mut req =
            Request::post("/v1/images/generations").header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (s, b) = send(&app, req.body(Body::from(r#"{"prompt":"a"}"#)).unwrap()).await;
        check(s, &b, StatusCode::UNAUTHORIZED, "API key");
    }
    // Unknown route and wrong method: JSON too.
    let (s, b) = send(&app, get("/v2/nothing")).await;
    check(s, &b, StatusCode::NOT_FOUND, "no such route");
    let (s, b) = send(&app, get("/v1/images/generations")).await;
    check(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method");
    // The page and probes need no token.
    let (s, b) = send(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&b).contains("<title>burn-diffusers</title>"));
    // Still serving.
    healthy(&app).await;
    let (status, body) = post_json(
        &app,
        "/v1/images/generations",
        json!({"prompt": "ok", "size": "16x16", "steps": 2, "seed": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let img = decode_png(body["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!(img.dimensions(), (16, 16));
}
