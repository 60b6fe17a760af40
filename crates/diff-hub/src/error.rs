//! The crate's error type: one variant per thing a caller may want to handle differently.

use std::path::PathBuf;

/// Everything that can go wrong between a repo id and local files (or back).
///
/// Messages name the repo, revision, file or URL involved. They never contain the token: URLs
/// carry none, and messages that come from a server are scrubbed of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// A repo id that the Hub cannot have (empty part, `..`, `--`, more than two parts…).
    #[error("invalid repo id `{repo_id}`: {reason}")]
    InvalidRepoId {
        /// The id as given.
        repo_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file path or revision that would leave its folder (`..`, absolute, backslash…).
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidPath {
        /// `file path` or `revision`.
        what: &'static str,
        /// The value as given (or as sent by the server).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Hub says the repo does not exist (or is private and the token cannot see it).
    #[error("repository `{repo_id}` not found (or not visible without a valid token): {message}")]
    RepoNotFound {
        /// The repo id.
        repo_id: String,
        /// The server's message.
        message: String,
    },
    /// The revision (branch, tag, commit, `refs/pr/N`) does not exist in the repo.
    #[error("revision `{revision}` not found in `{repo_id}`: {message}")]
    RevisionNotFound {
        /// The repo id.
        repo_id: String,
        /// The revision asked for.
        revision: String,
        /// The server's message.
        message: String,
    },
    /// The file does not exist at that revision.
    #[error("file `{path}` not found in `{repo_id}` at revision `{revision}`")]
    EntryNotFound {
        /// The repo id.
        repo_id: String,
        /// The revision asked for.
        revision: String,
        /// The file path in the repo.
        path: String,
    },
    /// The repo is gated: accept its conditions on the Hub and use a token that has access.
    #[error("repository `{repo_id}` is gated: {message}")]
    GatedRepo {
        /// The repo id.
        repo_id: String,
        /// The server's message.
        message: String,
    },
    /// 401 without a more precise code: the token is missing or invalid.
    #[error("unauthorized (401) for {url}: {message}")]
    Unauthorized {
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// 403: the token is valid but may not do this (e.g. a read-only token writing).
    #[error("forbidden (403) for {url}: {message}")]
    Forbidden {
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// 400: the server refused the request as malformed (e.g. a commit naming an LFS object that
    /// was never uploaded).
    #[error("bad request (400) for {url}: {message}")]
    BadRequest {
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// 409: e.g. creating a repo that exists without `exist_ok`.
    #[error("conflict (409) for {url}: {message}")]
    Conflict {
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// 412: the branch moved since `parent_commit`.
    #[error("precondition failed (412) for {url}: {message}")]
    PreconditionFailed {
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// 429 after every retry.
    #[error("rate limited (429) for {url} after {attempts} attempts")]
    RateLimited {
        /// The URL requested.
        url: String,
        /// How many times it was tried.
        attempts: u32,
    },
    /// 5xx after every retry.
    #[error("server error {status} for {url} after {attempts} attempts: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The URL requested.
        url: String,
        /// How many times it was tried.
        attempts: u32,
        /// The server's message.
        message: String,
    },
    /// Any other unexpected status.
    #[error("HTTP {status} for {url}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The URL requested.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The connection failed (refused, reset, timed out) after every retry.
    #[error("network error for {url} after {attempts} attempts: {message}")]
    Network {
        /// The URL requested.
        url: String,
        /// How many times it was tried.
        attempts: u32,
        /// What failed.
        message: String,
    },
    /// The server answered without the headers or fields every Hub endpoint sends.
    #[error("unexpected answer from {url}: {message} (is this a Hugging Face Hub endpoint?)")]
    Protocol {
        /// The URL requested.
        url: String,
        /// What was missing or wrong.
        message: String,
    },
    /// Offline (or `local_files_only`) and the cache does not hold what was asked.
    #[error(
        "offline mode: `{what}` of `{repo_id}` at revision `{revision}` is not in the cache {cache}; \
         download it once with network access (HF_HUB_OFFLINE is read from the environment)"
    )]
    LocalEntryNotFound {
        /// The repo id.
        repo_id: String,
        /// The revision asked for.
        revision: String,
        /// What is missing (a file path, `snapshot`, or `refs/<revision>`).
        what: String,
        /// The cache folder that was searched.
        cache: PathBuf,
    },
    /// Offline, the cached snapshot lacks files that the cached tree listing says it should have.
    #[error("offline mode: the cached snapshot {commit} of `{repo_id}` is missing {missing:?}")]
    IncompleteSnapshot {
        /// The repo id.
        repo_id: String,
        /// The commit.
        commit: String,
        /// The missing files.
        missing: Vec<String>,
    },
    /// Downloaded bytes do not match the size or hash the Hub announced; nothing was cached.
    #[error(
        "integrity check failed for `{path}` of `{repo_id}`: expected {what} {expected}, got {got}"
    )]
    Integrity {
        /// The repo id.
        repo_id: String,
        /// The file path in the repo.
        path: String,
        /// `size`, `sha256` or `git sha1`.
        what: &'static str,
        /// Expected value.
        expected: String,
        /// Value of the received bytes.
        got: String,
    },
    /// The LFS server refused one object of an upload.
    #[error("LFS upload of `{path}` ({oid}) refused: {code} {message}")]
    LfsObject {
        /// The file path in the repo.
        path: String,
        /// The object's sha256.
        oid: String,
        /// The per-object error code.
        code: i64,
        /// The per-object error message.
        message: String,
    },
    /// A local file operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON body from the server (or a cache file) could not be parsed.
    #[error("invalid JSON in {what}: {message}")]
    Json {
        /// Where the JSON came from (URL or file).
        what: String,
        /// The parser's message.
        message: String,
    },
    /// No cache folder could be derived (no `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME` or `HOME`).
    #[error("no cache folder: set HF_HUB_CACHE or HF_HOME (HOME is not set either)")]
    NoCacheDir,
    /// The pipeline's file selection (diff-format) failed.
    #[error("selecting the files of `{repo_id}`: {source}")]
    Selection {
        /// The repo id.
        repo_id: String,
        /// diff-format's error.
        #[source]
        source: diff_format::FormatError,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubError {
    let path = path.into();
    move |source| HubError::Io { path, source }
}
