//! `diff-server`: the HTTP server of `burn-diffusers serve`. The model is loaded once and
//! served through the APIs clients already speak:
//!
//! - OpenAI-compatible: `POST /v1/images/generations` (prompt, n, size `WxH`,
//!   `response_format: b64_json`; extensions `negative_prompt`, `steps`, `guidance`, `seed`,
//!   `scheduler`), `POST /v1/images/edits` (multipart `image` and optional `mask`: img2img or
//!   inpaint; a mask with transparency follows OpenAI's rule, transparent = repaint),
//!   `GET /v1/models`;
//! - the AUTOMATIC1111 subset front-ends use: `/sdapi/v1/txt2img`, `/sdapi/v1/img2img`,
//!   `/sdapi/v1/progress`, `/sdapi/v1/interrupt`, `/sdapi/v1/samplers`, `/sdapi/v1/sd-models`;
//! - jobs: `POST /v1/jobs` (202 + id), `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/events`
//!   (server-sent events: `progress` with `step` / `total`, then `done`), `POST
//!   /v1/jobs/{id}/cancel`; `GET /health` (liveness) and `GET /ready` (model loaded);
//! - a web page at `/` ([`routes`], one embedded HTML file).
//!
//! Generation runs on one worker thread that owns the pipeline ([`jobs`]): burn's compute
//! blocks, so it never runs on the async runtime. Jobs wait in a bounded channel; a full one
//! answers 429 at once, so memory is bounded by the queue size and the request limits
//! ([`Limits`]). A request's run is the call `burn-diffusers generate` makes, so the same
//! seed gives the same pixels ([`worker`]).
//!
//! **Framework:** axum on tokio. axum is maintained by the tokio project, built on hyper (the
//! most used Rust HTTP implementation) and tower; it has what this server needs built in
//! (JSON, multipart, server-sent events, body limits, graceful shutdown, middleware) without
//! macros or a runtime of its own, and it compiles in a modest time with its default features
//! off.
//!
//! **Must not know:** command-line parsing (the `serve` subcommand in diff-cli builds a
//! [`ServerConfig`]), model internals (it drives [`DiffusionPipeline`] only).
//!
//! Dependencies: `axum` + `tokio` (HTTP, runtime, signals), `futures-util` (the SSE stream),
//! `subtle` + `sha2` (constant-time API-key check), `base64` (image bodies), `image` (PNG
//! encoding, mask alpha), `serde` / `serde_json` / `serde_path_to_error` (bodies with the
//! wrong field named), `thiserror`, `tracing`.
//!
//! [`DiffusionPipeline`]: burn_diffusers::pipelines::DiffusionPipeline
#![deny(missing_docs)]

pub mod error;
pub mod jobs;
pub mod model;
pub mod request;
pub mod routes;
pub mod samplers;
pub mod worker;

pub use error::{ApiError, ServeError};
pub use jobs::{JobQueue, ModelStatus};
pub use model::ModelSpec;
pub use request::{GenRequest, Limits};
pub use routes::{AppState, router};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model to load.
    pub model: ModelSpec,
    /// The address to listen on (default `127.0.0.1:8080`: loopback only).
    pub listen: String,
    /// Requests must carry `Authorization: Bearer <key>` when set (not logged).
    pub api_key: Option<String>,
    /// Jobs that may wait (one more runs).
    pub queue: usize,
    /// Request limits.
    pub limits: Limits,
    /// At shutdown, how long the running job may go on before it is cancelled.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Defaults around `model`.
    pub fn new(model: ModelSpec) -> Self {
        Self {
            model,
            listen: "127.0.0.1:8080".into(),
            api_key: None,
            queue: 4,
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A running server (see [`start`]).
pub struct Server {
    /// The address bound (the port is known when `:0` was asked).
    pub addr: SocketAddr,
    /// The queue (for tests and the caller's shutdown).
    pub queue: Arc<JobQueue>,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    grace: Duration,
}

/// Binds the address and starts loading the model on the worker thread; requests are
/// answered (`/ready` says 503) while it loads.
pub async fn start(config: ServerConfig) -> Result<Server, ServeError> {
    if config.queue == 0 || config.queue > 10_000 {
        return Err(ServeError::Config(format!(
            "--queue {}: expected 1..=10000",
            config.queue
        )));
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr()?;
    let queue = JobQueue::start(config.model.clone(), config.queue);
    let state = Arc::new(AppState {
        queue: queue.clone(),
        limits: config.limits.clone(),
        auth_digest: config.api_key.as_deref().map(routes::auth_digest),
    });
    Ok(Server {
        addr,
        queue,
        listener,
        app: router(state),
        grace: config.shutdown_grace,
    })
}

impl Server {
    /// Serves until `shutdown` resolves, then stops taking jobs, cancels the waiting ones,
    /// lets the running one finish for the grace period (then cancels it) and returns once
    /// every answer is sent. A model that fails to load ends the server with the error.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let queue = self.queue.clone();
        let grace = self.grace;
        let mut status = queue.status_receiver();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            loop {
                if let ModelStatus::Failed(e) = status.borrow_and_update().clone() {
                    let _ = failed_tx.send(e);
                    return;
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
        let load_error = Arc::new(std::sync::Mutex::new(None));
        let load_error_set = load_error.clone();
        let stop = async move {
            tokio::select! {
                () = shutdown => tracing::info!("shutting down: finishing the running job"),
                Ok(e) = failed_rx => {
                    *load_error_set.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
            queue.begin_shutdown();
            let queue = queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if queue.cancel_running() {
                    tracing::warn!("grace period over: cancelling the running job");
                }
            });
        };
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(stop)
            .await?;
        if let Some(message) = load_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(ServeError::Load {
                model: self.queue.model_id.clone(),
                message,
            });
        }
        Ok(())
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Runs the server on a new multi-threaded runtime until ctrl-c / SIGTERM (what `burn-diffusers
/// serve` calls).
pub fn serve_blocking(config: ServerConfig) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = start(config).await?;
        tracing::info!(addr = %server.addr, "listening");
        eprintln!("burn-diffusers serve: listening on http://{}", server.addr);
        server.run(shutdown_signal()).await
    })
}
