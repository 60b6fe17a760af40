//! The routes: OpenAI-compatible images, the AUTOMATIC1111 subset, jobs (SSE progress,
//! cancel), health, and the web page.

use crate::error::ApiError;
use crate::jobs::{Job, JobGuard, JobQueue, JobState, ModelStatus};
use crate::request::{
    self, A1111Request, GenRequest, Limits, OpenAiGeneration, alpha_mask, decode_input_image,
    decode_mask, parse_json, printable,
};
use crate::samplers;
use crate::worker::{JobOutput, class_for};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The web page (HTML, CSS and script in one file, embedded: no build step, no CDN).
const INDEX_HTML: &str = include_str!("web/index.html");

/// Shared state of the handlers.
pub struct AppState {
    /// The queue and worker.
    pub queue: Arc<JobQueue>,
    /// Request limits.
    pub limits: Limits,
    /// SHA-256 of `Bearer <key>` when an API key is set (compared in constant time; the key
    /// itself is not kept here).
    pub auth_digest: Option<[u8; 32]>,
}

/// The router with every route and layer.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(openai_models))
        .route("/v1/images/generations", post(openai_generations))
        .route("/v1/images/edits", post(openai_edits))
        .route("/v1/jobs", post(jobs_submit))
        .route("/v1/jobs/{id}", get(jobs_get))
        .route("/v1/jobs/{id}/events", get(jobs_events))
        .route("/v1/jobs/{id}/cancel", post(jobs_cancel))
        .route("/sdapi/v1/txt2img", post(a1111_txt2img))
        .route("/sdapi/v1/img2img", post(a1111_img2img))
        .route("/sdapi/v1/progress", get(a1111_progress))
        .route("/sdapi/v1/interrupt", post(a1111_interrupt))
        .route("/sdapi/v1/samplers", get(a1111_samplers))
        .route("/sdapi/v1/sd-models", get(a1111_models))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

/// The digest the `Authorization` header is compared against.
pub fn auth_digest(key: &str) -> [u8; 32] {
    Sha256::digest(format!("Bearer {key}").as_bytes()).into()
}

/// Requires `Authorization: Bearer <key>` when a key is set. Digests of equal length are
/// compared in constant time; the header is never logged.
async fn auth(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(want) = &state.auth_digest {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| Sha256::digest(v.as_bytes()))
            .unwrap_or_default();
        if !bool::from(given.as_slice().ct_eq(want.as_slice())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "missing or wrong API key: send `Authorization: Bearer <key>`",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The JSON body as bytes, a too-large one refused with 413 (JSON error body).
struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e| body_error(e.status(), e.body_text()))
    }
}

fn body_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "body_too_large",
            "the request body is larger than this server's limit",
        )
    } else {
        ApiError::new(status, "invalid_body", format!("reading the body: {text}"))
    }
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.queue.status() {
        ModelStatus::Ready(class) => axum::Json(json!({
            "status": "ready",
            "model": state.queue.model_id,
            "pipeline": class,
            "queue": {"waiting": state.queue.waiting(), "capacity": state.queue.capacity()},
        }))
        .into_response(),
        ModelStatus::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "loading"})),
        )
            .into_response(),
        ModelStatus::Failed(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "failed", "error": e})),
        )
            .into_response(),
    }
}

/// Checks the request fits the loaded pipeline before it is queued.
fn check_class(state: &AppState, request: &GenRequest) -> Result<(), ApiError> {
    if let ModelStatus::Ready(class) = state.queue.status()
        && let Some(c) = burn_diffusers::pipelines::PipelineClass::from_name(&class)
    {
        class_for(c, request)?;
    }
    Ok(())
}

/// Queues a request and waits for its end; a dropped connection cancels it.
async fn run_sync(state: &AppState, request: GenRequest) -> Result<Arc<JobOutput>, ApiError> {
    check_class(state, &request)?;
    let job = state.queue.submit(request)?;
    let guard = JobGuard::new(job, state.queue.clone());
    match guard.job.finished().await {
        JobState::Done(out) => Ok(out),
        JobState::Failed(e) => Err(e),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "cancelled",
            "the job was cancelled",
        )),
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn openai_answer(out: &JobOutput) -> Response {
    if out.interrupted {
        return ApiError::new(
            StatusCode::CONFLICT,
            "cancelled",
            "the job was cancelled while it ran",
        )
        .into_response();
    }
    let data: Vec<Value> = out
        .images
        .iter()
        .zip(&out.seeds)
        .map(|(png, seed)| json!({"b64_json": b64(png), "seed": seed}))
        .collect();
    axum::Json(json!({
        "created": unix_now(),
        "data": data,
        "seed": out.seeds.first(),
        "info": out.info,
    }))
    .into_response()
}

async fn openai_models(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.queue.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "burn-diffusers",
        }],
    }))
}

async fn openai_generations(
    State(state): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let parsed: OpenAiGeneration = parse_json(&body)?;
    let (request, _) = parsed.into_request(&state.limits)?;
    let out = run_sync(&state, request).await?;
    Ok(openai_answer(&out))
}

/// Reads a multipart form: files (`image`, `image[]`, `mask`) as bytes, other fields as text.
async fn read_form(
    mut form: Multipart,
) -> Result<(Vec<(String, Vec<u8>)>, Vec<(String, String)>), ApiError> {
    const MAX_FIELDS: usize = 64;
    let mut files = Vec::new();
    let mut texts = Vec::new();
    let mut count = 0;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(body_error(e.status(), e.body_text())),
        };
        count += 1;
        if count > MAX_FIELDS {
            return Err(ApiError::bad_request(format!(
                "more than {MAX_FIELDS} form fields"
            )));
        }
        let name = field.name().unwrap_or_default().to_string();
        let is_file =
            field.file_name().is_some() || matches!(name.as_str(), "image" | "image[]" | "mask");
        let bytes = field
            .bytes()
            .await
            .map_err(|e| body_error(e.status(), e.body_text()))?;
        if is_file {
            files.push((name, bytes.to_vec()));
        } else {
            let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                ApiError::bad_request(format!(
                    "form field `{}` is not UTF-8 text",
                    printable(&name, 40)
                ))
            })?;
            texts.push((name, text));
        }
    }
    Ok((files, texts))
}

async fn openai_edits(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let form = Multipart::from_request(request, &()).await.map_err(|e| {
        ApiError::bad_request(format!(
            "expected a multipart/form-data body: {}",
            e.body_text()
        ))
    })?;
    let (files, texts) = read_form(form).await?;
    let (mut gen_request, _) = request::edit_fields(&texts)?.into_request(&state.limits)?;
    let image = files
        .iter()
        .find(|(n, _)| n == "image" || n == "image[]")
        .ok_or_else(|| {
            ApiError::bad_request("form field `image` (a PNG or JPEG file) is required")
        })?;
    gen_request.image = Some(decode_input_image("image", &image.1, &state.limits)?);
    gen_request.mask = match files.iter().find(|(n, _)| n == "mask") {
        Some((_, bytes)) => Some(decode_mask("mask", bytes, &state.limits)?),
        None => alpha_mask(&image.1),
    };
    gen_request.validate(&state.limits)?;
    let out = run_sync(&state, gen_request).await?;
    Ok(openai_answer(&out))
}

fn job_json(job: &Job) -> Value {
    let state = job.state();
    let mut v = json!({"id": job.id, "status": state.name()});
    match &state {
        JobState::Running { step, total } => {
            v["step"] = json!(step);
            v["total"] = json!(total);
        }
        JobState::Done(out) => {
            v["images"] = json!(out.images.iter().map(b64).collect::<Vec<_>>());
            v["seeds"] = json!(out.seeds);
            v["info"] = out.info.clone();
            v["interrupted"] = json!(out.interrupted);
        }
        JobState::Failed(e) => v["error"] = e.body()["error"].clone(),
        _ => {}
    }
    v
}

/// `POST /v1/jobs`: queues an OpenAI generation body and answers 202 with the job id at once;
/// follow it with `GET /v1/jobs/{id}/events` (SSE) or `GET /v1/jobs/{id}`.
async fn jobs_submit(
    State(state): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let parsed: OpenAiGeneration = parse_json(&body)?;
    let (request, _) = parsed.into_request(&state.limits)?;
    check_class(&state, &request)?;
    let seed = request.seed;
    let job = state.queue.submit(request)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": job.id, "status": "queued", "seed": seed})),
    )
        .into_response())
}

fn find_job(state: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    state
        .queue
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no job `{}`", printable(id, 40))))
}

async fn jobs_get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id)?;
    Ok(axum::Json(job_json(&job)).into_response())
}

async fn jobs_cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id)?;
    let before = job.request_cancel();
    Ok(
        axum::Json(json!({"id": job.id, "was": before.name(), "cancel_requested": true}))
            .into_response(),
    )
}

fn sse_event(job: &Job, state: &JobState) -> Event {
    let name = match state {
        JobState::Queued => "queued",
        JobState::Running { .. } => "progress",
        JobState::Done(_) => "done",
        JobState::Failed(_) => "failed",
        JobState::Cancelled => "cancelled",
    };
    let mut data = job_json(job);
    if let JobState::Running { step, total } = state {
        data["step"] = json!(step);
        data["total"] = json!(total);
    }
    Event::default().event(name).data(data.to_string())
}

/// `GET /v1/jobs/{id}/events`: server-sent events `queued`, `progress` (`step`, `total`), then
/// one of `done` (images, seeds, info), `failed`, `cancelled`, and the stream ends.
async fn jobs_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id)?;
    let rx = job.subscribe();
    let stream = futures_util::stream::unfold(
        (job, rx, true, false),
        |(job, mut rx, first, over)| async move {
            if over {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let s = rx.borrow_and_update().clone();
            let event = sse_event(&job, &s);
            let over = s.is_terminal();
            Some((Ok::<_, Infallible>(event), (job, rx, false, over)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn a1111_answer(request_body: &Value, out: &JobOutput) -> Response {
    let mut info = out.info.clone();
    info["interrupted"] = json!(out.interrupted);
    axum::Json(json!({
        "images": out.images.iter().map(b64).collect::<Vec<_>>(),
        "parameters": request_body,
        "info": info.to_string(),
    }))
    .into_response()
}

/// The request echoed in `parameters`, without the (large) images.
fn echo(body: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        for key in ["init_images", "mask"] {
            if map.contains_key(key) {
                map.insert(key.into(), Value::Null);
            }
        }
    }
    v
}

async fn a1111_run(state: &AppState, body: &[u8], img2img: bool) -> Result<Response, ApiError> {
    let parsed: A1111Request = parse_json(body)?;
    let request = parsed.into_request(&state.limits, img2img)?;
    let out = run_sync(state, request).await?;
    Ok(a1111_answer(&echo(body), &out))
}

async fn a1111_txt2img(
    State(state): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    a1111_run(&state, &body, false).await
}

async fn a1111_img2img(
    State(state): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    a1111_run(&state, &body, true).await
}

/// `GET /sdapi/v1/progress`: the running job's progress, A1111's shape.
async fn a1111_progress(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let waiting = state.queue.waiting();
    let (progress, step, steps, interrupted, job) = match state.queue.current() {
        Some(job) => match job.state() {
            JobState::Running { step, total } => (
                if total > 0 {
                    step as f64 / total as f64
                } else {
                    0.0
                },
                step,
                total,
                job.cancel.load(std::sync::atomic::Ordering::Relaxed),
                job.id.clone(),
            ),
            _ => (0.0, 0, 0, false, job.id.clone()),
        },
        None => (0.0, 0, 0, false, String::new()),
    };
    let running = usize::from(!job.is_empty());
    axum::Json(json!({
        "progress": progress,
        "eta_relative": 0.0,
        "state": {
            "skipped": false,
            "interrupted": interrupted,
            "job": job,
            "job_count": waiting + running,
            "job_timestamp": "",
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": Value::Null,
        "textinfo": Value::Null,
    }))
}

/// `POST /sdapi/v1/interrupt`: stops the running job after its current step.
async fn a1111_interrupt(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let stopped = state.queue.cancel_running();
    axum::Json(json!({"interrupted": stopped}))
}

async fn a1111_samplers() -> impl IntoResponse {
    axum::Json(samplers::a1111_list())
}

async fn a1111_models(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let id = &state.queue.model_id;
    axum::Json(json!([{
        "title": id,
        "model_name": id,
        "hash": Value::Null,
        "sha256": Value::Null,
        "filename": id,
        "config": Value::Null,
    }]))
}
