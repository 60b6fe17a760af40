//! The job queue: one worker thread owns the pipeline (burn's compute blocks, so it never runs
//! on the async runtime) and takes jobs from a bounded channel. A full channel refuses at once
//! (429), so memory stays bounded by the queue size; each job's state is a `watch` channel the
//! HTTP side awaits or streams (SSE).

use crate::error::ApiError;
use crate::model::ModelSpec;
use crate::request::GenRequest;
use crate::worker::{self, JobOutput};
use axum::http::StatusCode;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Where a job is.
#[derive(Debug, Clone)]
pub enum JobState {
    /// Waiting in the queue.
    Queued,
    /// Denoising: `step` of `total` done.
    Running {
        /// Steps done.
        step: usize,
        /// Steps in all.
        total: usize,
    },
    /// Finished (possibly interrupted by a cancel after some steps).
    Done(Arc<JobOutput>),
    /// Failed.
    Failed(ApiError),
    /// Cancelled before it started, or at shutdown.
    Cancelled,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Failed(_) | Self::Cancelled)
    }

    /// The state's name in JSON answers.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running { .. } => "running",
            Self::Done(_) => "done",
            Self::Failed(_) => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One job.
#[derive(Debug)]
pub struct Job {
    /// Its id (random, 16 hex digits).
    pub id: String,
    /// The request (taken by the worker).
    request: Mutex<Option<GenRequest>>,
    /// Set to stop the job after the current step (or before it starts).
    pub cancel: AtomicBool,
    state: watch::Sender<JobState>,
}

impl Job {
    /// A receiver of the job's state.
    pub fn subscribe(&self) -> watch::Receiver<JobState> {
        self.state.subscribe()
    }

    /// The current state.
    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    /// Asks the job to stop: a queued job is cancelled at once, a running one after its
    /// current step. Returns the state it was in.
    pub fn request_cancel(&self) -> JobState {
        self.cancel.store(true, Ordering::SeqCst);
        let mut before = JobState::Queued;
        self.state.send_if_modified(|s| {
            before = s.clone();
            if matches!(s, JobState::Queued) {
                *s = JobState::Cancelled;
                true
            } else {
                false
            }
        });
        before
    }

    /// Waits until the job is over and returns the final state.
    pub async fn finished(&self) -> JobState {
        let mut rx = self.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            if state.is_terminal() {
                return state;
            }
            if rx.changed().await.is_err() {
                return self.state();
            }
        }
    }
}

/// The model's status for `/ready`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelStatus {
    /// Still loading.
    Loading,
    /// Loaded: the pipeline class.
    Ready(String),
    /// Loading failed.
    Failed(String),
}

/// Jobs kept after they finish (for `GET /v1/jobs/{id}` and late SSE subscribers) before the
/// oldest are forgotten.
const KEPT_FINISHED: usize = 32;

#[derive(Default)]
struct Registry {
    jobs: HashMap<String, Arc<Job>>,
    finished: VecDeque<String>,
}

/// The queue and the worker thread.
pub struct JobQueue {
    tx: mpsc::Sender<Arc<Job>>,
    registry: Mutex<Registry>,
    current: Arc<Mutex<Option<Arc<Job>>>>,
    accepting: AtomicBool,
    status: watch::Receiver<ModelStatus>,
    capacity: usize,
    /// The model id (`GET /v1/models`).
    pub model_id: String,
}

impl JobQueue {
    /// Starts the worker thread, which loads `spec` then serves jobs; `capacity` jobs may wait
    /// (one more runs).
    pub fn start(spec: ModelSpec, capacity: usize) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (status_tx, status) = watch::channel(ModelStatus::Loading);
        let current = Arc::new(Mutex::new(None));
        let queue = Arc::new(Self {
            tx,
            registry: Mutex::new(Registry::default()),
            current: current.clone(),
            accepting: AtomicBool::new(true),
            status,
            capacity: capacity.max(1),
            model_id: spec.id(),
        });
        let weak = Arc::downgrade(&queue);
        std::thread::Builder::new()
            .name("diffusion-worker".into())
            .spawn(move || worker_loop(spec, rx, status_tx, current, weak))
            .expect("spawning the worker thread");
        queue
    }

    /// The model's status.
    pub fn status(&self) -> ModelStatus {
        self.status.borrow().clone()
    }

    /// A receiver of the model's status.
    pub fn status_receiver(&self) -> watch::Receiver<ModelStatus> {
        self.status.clone()
    }

    /// Jobs that may wait.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs waiting now.
    pub fn waiting(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// The running job.
    pub fn current(&self) -> Option<Arc<Job>> {
        lock(&self.current).clone()
    }

    /// Queues a request; 503 while the model loads or the server stops, 429 when full.
    pub fn submit(&self, request: GenRequest) -> Result<Arc<Job>, ApiError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ));
        }
        match self.status() {
            ModelStatus::Ready(_) => {}
            ModelStatus::Loading => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "loading",
                    "the model is still loading; retry when GET /ready answers 200",
                ));
            }
            ModelStatus::Failed(e) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "model_failed",
                    format!("the model failed to load: {e}"),
                ));
            }
        }
        let (state, _) = watch::channel(JobState::Queued);
        let job = Arc::new(Job {
            id: format!(
                "{:016x}",
                crate::request::random_seed() << 32 | crate::request::random_seed()
            ),
            request: Mutex::new(Some(request)),
            cancel: AtomicBool::new(false),
            state,
        });
        match self.tx.try_send(job.clone()) {
            Ok(()) => {
                lock(&self.registry)
                    .jobs
                    .insert(job.id.clone(), job.clone());
                Ok(job)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "the queue is full ({} jobs waiting, one running); retry later",
                    self.capacity
                ),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "worker_stopped",
                "the generation worker has stopped",
            )),
        }
    }

    /// A job by id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.registry).jobs.get(id).cloned()
    }

    /// Forgets a job (a synchronous request that has answered).
    pub fn forget(&self, id: &str) {
        let mut reg = lock(&self.registry);
        reg.jobs.remove(id);
        reg.finished.retain(|j| j != id);
    }

    fn finished(&self, id: &str) {
        let mut reg = lock(&self.registry);
        if !reg.jobs.contains_key(id) {
            return;
        }
        reg.finished.push_back(id.to_string());
        while reg.finished.len() > KEPT_FINISHED {
            if let Some(old) = reg.finished.pop_front() {
                reg.jobs.remove(&old);
            }
        }
    }

    /// Stops taking jobs and cancels the waiting ones; the running one goes on (the caller
    /// cancels it after a grace period with [`JobQueue::cancel_running`]).
    pub fn begin_shutdown(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        let jobs: Vec<Arc<Job>> = lock(&self.registry).jobs.values().cloned().collect();
        for job in jobs {
            if matches!(job.state(), JobState::Queued) {
                job.request_cancel();
            }
        }
    }

    /// Cancels the running job, if any.
    pub fn cancel_running(&self) -> bool {
        match self.current() {
            Some(job) => {
                job.request_cancel();
                true
            }
            None => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn worker_loop(
    spec: ModelSpec,
    mut rx: mpsc::Receiver<Arc<Job>>,
    status: watch::Sender<ModelStatus>,
    current: Arc<Mutex<Option<Arc<Job>>>>,
    queue: std::sync::Weak<JobQueue>,
) {
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| spec.load()))
        .unwrap_or_else(|_| Err("the loader panicked".into()));
    let pipe = match loaded {
        Ok(pipe) => {
            tracing::info!(model = %spec.model, class = pipe.class().name(), "model loaded");
            status.send_replace(ModelStatus::Ready(pipe.class().name().to_string()));
            pipe
        }
        Err(e) => {
            tracing::error!(model = %spec.model, "loading failed: {e}");
            status.send_replace(ModelStatus::Failed(e));
            return;
        }
    };
    while let Some(job) = rx.blocking_recv() {
        let request = lock(&job.request).take();
        let Some(request) = request.filter(|_| !job.cancel.load(Ordering::SeqCst)) else {
            job.state.send_replace(JobState::Cancelled);
            if let Some(q) = queue.upgrade() {
                q.finished(&job.id);
            }
            continue;
        };
        *lock(&current) = Some(job.clone());
        job.state.send_replace(JobState::Running {
            step: 0,
            total: request.steps * request.iterations,
        });
        let started = std::time::Instant::now();
        let mut progress = |step: usize, total: usize| {
            job.state.send_replace(JobState::Running { step, total });
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            worker::run(&pipe, &request, &job.cancel, &mut progress)
        }))
        .unwrap_or_else(|_| {
            Err(ApiError::internal(
                "generation panicked; the server goes on",
            ))
        });
        drop(request);
        let final_state = match result {
            Ok(out) => {
                tracing::info!(job = %job.id, images = out.images.len(), interrupted = out.interrupted,
                    secs = started.elapsed().as_secs_f32(), "job done");
                JobState::Done(Arc::new(out))
            }
            Err(e) => {
                tracing::warn!(job = %job.id, "job failed: {}", e.message);
                JobState::Failed(e)
            }
        };
        *lock(&current) = None;
        job.state.send_replace(final_state);
        if let Some(q) = queue.upgrade() {
            q.finished(&job.id);
        }
    }
}

/// Cancels a synchronous request's job when its connection goes away before the answer
/// (the handler's future is dropped), and forgets the job once answered.
pub struct JobGuard {
    /// The job.
    pub job: Arc<Job>,
    queue: Arc<JobQueue>,
}

impl JobGuard {
    /// Guards `job`.
    pub fn new(job: Arc<Job>, queue: Arc<JobQueue>) -> Self {
        Self { job, queue }
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if !self.job.state().is_terminal() {
            self.job.request_cancel();
        }
        self.queue.forget(&self.job.id);
    }
}
