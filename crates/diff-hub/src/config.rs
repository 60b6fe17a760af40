//! Where to talk to and where to cache: endpoint, token, cache folder, offline mode, read from
//! the same environment variables as Python's `huggingface_hub` (`constants.py`).

use crate::error::{HubError, Result};
use std::path::PathBuf;
use std::time::Duration;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The longest `HF_HUB_ETAG_TIMEOUT` / `HF_HUB_DOWNLOAD_TIMEOUT` used: one day. Larger values
/// (Python accepts any integer) are clamped with a warning, since a deadline past what the
/// clock can represent would otherwise overflow.
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// An access token. Its `Debug` never shows the value, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token value (surrounding whitespace is removed, as Python does).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().trim().to_string())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Everything [`crate::HubApi`] needs; build it with [`HubConfig::from_env`] and adjust fields.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Hub endpoint without a trailing `/` (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// Token sent as `authorization: Bearer …`, only to the endpoint's origin.
    pub token: Option<Token>,
    /// The hub cache folder (`HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`: no request at all, everything from the cache.
    pub offline: bool,
    /// `HF_HUB_DISABLE_SYMLINKS`: snapshots hold copies instead of links into `blobs/`.
    pub disable_symlinks: bool,
    /// Parallel file downloads in `snapshot_download` (Python's `max_workers`, default 8).
    pub max_workers: usize,
    /// Attempts for retried requests (rate limits, 5xx, dropped connections); default 5.
    pub max_attempts: u32,
    /// First back-off delay; doubled on each retry up to [`HubConfig::max_retry_delay`].
    pub retry_delay: Duration,
    /// Longest back-off delay (also caps `Retry-After`).
    pub max_retry_delay: Duration,
    /// Connect and response timeout (`HF_HUB_ETAG_TIMEOUT`, default 10 s).
    pub timeout: Duration,
    /// Time a body read may stall before the connection counts as dropped
    /// (`HF_HUB_DOWNLOAD_TIMEOUT`, default 10 s).
    pub read_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
}

/// Python's truthy environment values: `1`, `ON`, `YES`, `TRUE` (case-insensitive).
pub fn env_flag(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

fn expand_home(value: &str, home: Option<&str>) -> PathBuf {
    match (value.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(format!("{home}{rest}"))
        }
        _ => PathBuf::from(value),
    }
}

impl HubConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from a variable lookup (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let non_empty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let home = non_empty("HOME");
        let hf_home = match non_empty("HF_HOME") {
            Some(v) => Some(expand_home(&v, home.as_deref())),
            None => match non_empty("XDG_CACHE_HOME") {
                Some(xdg) => Some(expand_home(&xdg, home.as_deref()).join("huggingface")),
                None => home
                    .as_deref()
                    .map(|h| PathBuf::from(h).join(".cache").join("huggingface")),
            },
        };
        let cache_dir =
            match non_empty("HF_HUB_CACHE").or_else(|| non_empty("HUGGINGFACE_HUB_CACHE")) {
                Some(v) => expand_home(&v, home.as_deref()),
                None => hf_home.as_ref().ok_or(HubError::NoCacheDir)?.join("hub"),
            };
        let endpoint = non_empty("HF_ENDPOINT")
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = if env_flag(get("HF_HUB_DISABLE_IMPLICIT_TOKEN").as_deref()) {
            None
        } else if let Some(t) =
            non_empty("HF_TOKEN").or_else(|| non_empty("HUGGING_FACE_HUB_TOKEN"))
        {
            Some(Token::new(t))
        } else {
            let path = non_empty("HF_TOKEN_PATH")
                .map(|p| expand_home(&p, home.as_deref()))
                .or_else(|| hf_home.as_ref().map(|h| h.join("token")));
            path.and_then(|p| std::fs::read_to_string(p).ok())
                .filter(|t| !t.trim().is_empty())
                .map(Token::new)
        };
        let seconds = |name: &str, default: u64| {
            let value = non_empty(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or(default as f64);
            if value > MAX_TIMEOUT_SECS {
                tracing::warn!(
                    "{name}={value} is longer than the longest timeout used ({MAX_TIMEOUT_SECS} s); using {MAX_TIMEOUT_SECS} s"
                );
            }
            Duration::from_secs_f64(value.min(MAX_TIMEOUT_SECS))
        };
        Ok(Self {
            endpoint,
            token,
            cache_dir,
            offline: env_flag(get("HF_HUB_OFFLINE").as_deref())
                || env_flag(get("TRANSFORMERS_OFFLINE").as_deref()),
            disable_symlinks: env_flag(get("HF_HUB_DISABLE_SYMLINKS").as_deref()),
            max_workers: 8,
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(8),
            timeout: seconds("HF_HUB_ETAG_TIMEOUT", 10),
            read_timeout: seconds("HF_HUB_DOWNLOAD_TIMEOUT", 10),
            user_agent: format!("burn-diffusers/{}; diff-hub", env!("CARGO_PKG_VERSION")),
        })
    }
}

/// Checks a repo id the way the Hub constrains them: `name` or `namespace/name`, each part made
/// of letters, digits, `-`, `_`, `.`, not starting or ending with `-`/`.`, no `--` or `..`.
pub fn validate_repo_id(repo_id: &str) -> Result<()> {
    let bad = |reason: &str| HubError::InvalidRepoId {
        repo_id: repo_id.to_string(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = repo_id.split('/').collect();
    if parts.len() > 2 {
        return Err(bad("expected `name` or `namespace/name`"));
    }
    for part in parts {
        if part.is_empty() || part.len() > 96 {
            return Err(bad("each part must have 1 to 96 characters"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad("only letters, digits, `-`, `_` and `.` are allowed"));
        }
        if part.contains("--") || part.contains("..") {
            return Err(bad("`--` and `..` are forbidden"));
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err(bad("a part may not start or end with `-` or `.`"));
        }
    }
    Ok(())
}

/// Checks a repo-relative file path before it is used on disk or in a URL.
pub fn validate_file_path(path: &str) -> Result<()> {
    let bad = |reason: &str| HubError::InvalidPath {
        what: "file path",
        value: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        return Err(bad("must be a non-empty relative path"));
    }
    if path.contains(['\\', '\0']) || path.as_bytes().get(1) == Some(&b':') {
        return Err(bad("backslashes, NUL and drive letters are not allowed"));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, `.` and `..` components are not allowed"));
    }
    Ok(())
}

/// Checks a revision before it names a file under `refs/`.
pub fn validate_revision(revision: &str) -> Result<()> {
    let bad = |reason: &str| HubError::InvalidPath {
        what: "revision",
        value: revision.to_string(),
        reason: reason.to_string(),
    };
    if revision.is_empty() || revision.starts_with('/') || revision.ends_with('/') {
        return Err(bad("must be a non-empty branch, tag, commit or refs/pr/N"));
    }
    if revision.contains(['\\', '\0', '\n', '\r']) {
        return Err(bad("backslashes, NUL and newlines are not allowed"));
    }
    if revision
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, `.` and `..` components are not allowed"));
    }
    Ok(())
}

/// Whether a revision is a full (40 lower-case hex) commit hash.
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
