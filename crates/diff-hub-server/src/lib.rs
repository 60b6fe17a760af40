//! `diff-hub-server`: a small local server that speaks the Hugging Face Hub protocol.
//!
//! It exists so that `diff-hub` (and Python's `huggingface_hub`, the conformance peer) can be
//! tested without the network. It implements the checklist of `hub-protocol.md` section 6:
//! `/resolve/` HEAD and GET with the Hub's metadata headers (`X-Repo-Commit`, `ETag`,
//! `X-Linked-Etag`, `X-Linked-Size`), a relative `307` hop through `/api/resolve-cache/` for
//! regular files (as the real Hub does), a `302` to a **separate storage origin** (another host
//! name and port) for large files, `Range` requests, repo info and tree JSON (paginated), the
//! error headers (`X-Error-Code`, `X-Error-Message`), create/delete repo, `validate-yaml`,
//! preupload, the LFS batch API (basic and multipart transfers) with verify, the NDJSON commit
//! endpoint (parent commit check, `create_pr` to `refs/pr/N`), bearer-token auth with write and
//! read-only tokens, fault injection (status codes, truncated bodies) and a request log.
//!
//! Data model: `ROOT/<org>/<name>/` is a model repo given as a plain folder; it is the `main`
//! branch, and its commit hash is derived from its content (a sha1 over the sorted paths and
//! git object ids), so restarting the server over the same folder gives the same commit.
//! Commits to `main` are written into that folder (temporary name, then rename). Everything
//! else (LFS uploads, pull-request heads, earlier `main` commits) lives in `ROOT/.hub-server/`.
//!
//! **Must not know:** diffusers, burn, `diff-hub` (it is the other side of the wire).
//!
//! Dependencies: none for HTTP (a small HTTP/1.1 server on `std::net`, see `http1.rs` for why
//! not `tiny_http`), `serde` and `serde_json` (the Hub's JSON bodies and the persisted refs), `sha1`/`sha2` (git blob ids and
//! LFS oids), `base64` (inline file contents in commits and preupload samples).
#![deny(missing_docs)]

mod handlers;
mod handlers_write;
mod http1;
mod repo;
mod storage;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use repo::{git_blob_sha1, is_lfs_path};

/// What the server is started with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Folder whose `<org>/<name>/` sub-folders are the model repos.
    pub root: PathBuf,
    /// Port of the Hub origin on 127.0.0.1 (0 picks a free one).
    pub port: u16,
    /// Port of the storage origin, served as `http://localhost:<port>` (0 picks a free one).
    pub storage_port: u16,
    /// Tokens that may read and write. When this and `read_tokens` are both empty, the server
    /// needs no authentication at all.
    pub write_tokens: Vec<String>,
    /// Tokens that may only read (writes answer 403).
    pub read_tokens: Vec<String>,
    /// LFS objects larger than this are offered the `multipart` transfer with parts of this size.
    pub multipart_chunk_size: u64,
    /// Regular (non-LFS) files above this size are refused by the commit endpoint, as the Hub does.
    pub regular_file_limit: u64,
    /// Entries per page of the tree API (`Link: rel="next"` pagination beyond it).
    pub tree_page_size: usize,
    /// Regular files are first answered with a relative `307` to `/api/resolve-cache/…`.
    pub resolve_cache_hop: bool,
    /// Optional JSON-lines request log (authorization values are redacted in it).
    pub log_file: Option<PathBuf>,
    /// When set, the first download longer than this many bytes is cut after them and the
    /// whole server process exits, as if it had been killed mid-file.
    pub exit_after_bytes: Option<u64>,
}

impl ServerConfig {
    /// A configuration with the defaults used by `cargo xtask hub-server`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            port: 0,
            storage_port: 0,
            write_tokens: Vec::new(),
            read_tokens: Vec::new(),
            multipart_chunk_size: 5 * 1024 * 1024,
            regular_file_limit: 10 * 1024 * 1024,
            tree_page_size: 1000,
            resolve_cache_hop: true,
            log_file: None,
            exit_after_bytes: None,
        }
    }
}

/// Which of the two origins a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The Hub API and `/resolve/` origin.
    Hub,
    /// The storage (CDN-like) origin for LFS bytes and uploads.
    Storage,
}

/// One request as the server saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestRecord {
    /// Origin that received it.
    pub origin: Origin,
    /// HTTP method.
    pub method: String,
    /// Raw path and query, as sent.
    pub url: String,
    /// Request headers (names lower-cased), including `authorization` verbatim.
    pub headers: Vec<(String, String)>,
    /// Response status.
    pub status: u16,
}

impl RequestRecord {
    /// The value of a request header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A fault to inject: the next `times` requests whose path contains `path_contains` are
/// answered with `status` (and `Retry-After` when given) instead of being served.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Substring of the raw request path that selects the requests.
    pub path_contains: String,
    /// Only requests with this method (any when `None`).
    pub method: Option<String>,
    /// Status to answer.
    pub status: u16,
    /// `X-Error-Code` to send, if any.
    pub error_code: Option<String>,
    /// `Retry-After` seconds to send, if any.
    pub retry_after: Option<u32>,
    /// How many requests it applies to.
    pub times: u32,
    /// Instead of answering `status`, serve the request but cut the body after this many bytes
    /// and close the connection.
    pub truncate_body_after: Option<u64>,
    /// Instead of answering `status`, serve the request with the first body byte flipped.
    pub corrupt_body: bool,
}

impl Fault {
    /// A fault answering `status` to the next `times` requests whose path contains `path`.
    pub fn status(path: &str, status: u16, times: u32) -> Self {
        Self {
            path_contains: path.to_string(),
            method: None,
            status,
            error_code: None,
            retry_after: None,
            times,
            truncate_body_after: None,
            corrupt_body: false,
        }
    }

    /// A fault that flips the first byte of the next `times` bodies of matching requests.
    pub fn corrupt(path: &str, times: u32) -> Self {
        Self {
            corrupt_body: true,
            ..Self::status(path, 200, times)
        }
    }

    /// A fault that cuts the next `times` bodies of matching requests after `bytes` bytes.
    pub fn truncate(path: &str, bytes: u64, times: u32) -> Self {
        Self {
            truncate_body_after: Some(bytes),
            ..Self::status(path, 200, times)
        }
    }
}

/// State shared by the connection threads.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) hub_url: String,
    pub(crate) storage_url: String,
    pub(crate) repos: Mutex<repo::Repos>,
    pub(crate) log: Mutex<Vec<RequestRecord>>,
    pub(crate) faults: Mutex<VecDeque<Fault>>,
    pub(crate) exit_armed: AtomicBool,
}

impl Shared {
    pub(crate) fn repos(&self) -> MutexGuard<'_, repo::Repos> {
        self.repos.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the first matching fault, decrementing its count.
    pub(crate) fn take_fault(&self, method: &str, url: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let index = faults.iter().position(|f| {
            f.times > 0
                && url.contains(&f.path_contains)
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        let fault = faults.get_mut(index)?;
        fault.times -= 1;
        let taken = fault.clone();
        if fault.times == 0 {
            faults.remove(index);
        }
        Some(taken)
    }

    pub(crate) fn record(&self, record: RequestRecord) {
        if let Some(path) = &self.config.log_file {
            let mut redacted = record.clone();
            for (k, v) in &mut redacted.headers {
                if k == "authorization" {
                    *v = "<redacted>".to_string();
                }
            }
            if let Ok(line) = serde_json::to_string(&redacted)
                && let Ok(mut file) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
            {
                let _ = writeln!(file, "{line}");
            }
        }
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

/// A running server; dropping it stops it.
pub struct HubServer {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

impl HubServer {
    /// Binds both origins on loopback and starts their accept threads (one thread per
    /// connection after that).
    pub fn start(config: ServerConfig) -> std::io::Result<Self> {
        std::fs::create_dir_all(&config.root)?;
        let hub = bind(&format!("127.0.0.1:{}", config.port))?;
        let storage = bind(&format!("127.0.0.1:{}", config.storage_port))?;
        let hub_port = hub.local_addr()?.port();
        let storage_port = storage.local_addr()?.port();
        let mut listeners = vec![(hub, Origin::Hub), (storage, Origin::Storage)];
        // `localhost` may resolve to ::1 first on some machines: listen there too when possible.
        if let Ok(v6) = bind(&format!("[::1]:{storage_port}")) {
            listeners.push((v6, Origin::Storage));
        }
        let repos = repo::Repos::open(&config.root)?;
        let shared = Arc::new(Shared {
            exit_armed: AtomicBool::new(config.exit_after_bytes.is_some()),
            hub_url: format!("http://127.0.0.1:{hub_port}"),
            storage_url: format!("http://localhost:{storage_port}"),
            config,
            repos: Mutex::new(repos),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(VecDeque::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let threads = listeners
            .into_iter()
            .map(|(listener, origin)| {
                let shared = shared.clone();
                let stop = stop.clone();
                std::thread::spawn(move || http1::accept_loop(listener, shared, origin, stop))
            })
            .collect();
        Ok(Self {
            shared,
            stop,
            threads,
        })
    }

    /// The Hub endpoint, e.g. `http://127.0.0.1:18080` (what `HF_ENDPOINT` should be set to).
    pub fn endpoint(&self) -> &str {
        &self.shared.hub_url
    }

    /// The storage origin, e.g. `http://localhost:18081`.
    pub fn storage_url(&self) -> &str {
        &self.shared.storage_url
    }

    /// The folder holding the repos.
    pub fn root(&self) -> &Path {
        &self.shared.config.root
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Adds a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(fault);
    }

    /// Marks a repo (`org/name`) as gated: reading it needs a write token (401 without a token,
    /// 403 with a read-only one).
    pub fn set_gated(&self, repo_id: &str, gated: bool) {
        self.shared.repos().meta_mut(repo_id).gated = gated;
    }

    /// Marks a repo as private: without a valid token it answers 401 `RepoNotFound`.
    pub fn set_private(&self, repo_id: &str, private: bool) {
        self.shared.repos().meta_mut(repo_id).private = private;
    }

    /// Blocks until the server threads end (they end when the process does).
    pub fn wait(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// Stops both origins and joins the worker threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the exit-after-bytes fault is still armed (it fires once).
pub(crate) fn take_exit(shared: &Shared) -> Option<u64> {
    let bytes = shared.config.exit_after_bytes?;
    shared
        .exit_armed
        .swap(false, Ordering::SeqCst)
        .then_some(bytes)
}
