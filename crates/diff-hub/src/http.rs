//! HTTP plumbing: one blocking `ureq` agent, the token sent only to the endpoint's origin,
//! bounded retries with back-off, and the Hub's error mapping (`X-Error-Code`, status).

use crate::config::{HubConfig, Token};
use crate::error::{HubError, Result};
use std::io::Read;
use std::time::Duration;
use ureq::http;

/// Log targets of the HTTP library that write raw request bytes, the `authorization` header and
/// so the token included, at `trace` level (`ureq_proto`'s wire dump). A program that installs a
/// log subscriber must switch these targets off (`EnvFilter`: `ureq_proto::util=off`, added
/// after the user's `RUST_LOG`), so that no log level ever shows the token. Every other log line
/// of this crate and of `ureq` holds no token (`ureq` redacts headers it logs at `debug`).
pub const SECRET_LOG_TARGETS: &[&str] = &["ureq_proto::util"];

/// `text` safe to print on a terminal: control characters (escape sequences, carriage
/// returns, newlines) are shown as `\u{..}` escapes. For names that come from a server (Hub
/// file names, messages) before they are printed or logged.
pub fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A response whose status is already known to be acceptable.
pub(crate) type Response = http::Response<ureq::Body>;

/// What a request is about, so errors can name it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subject<'a> {
    pub repo_id: &'a str,
    pub revision: Option<&'a str>,
    pub path: Option<&'a str>,
}

/// A request body.
pub(crate) enum Payload<'a> {
    Empty,
    Bytes(&'a [u8], &'a str),
    /// A file, reopened for every attempt so a retry sends it from the start.
    File(&'a std::path::Path),
}

/// `(scheme, host, port)` of an absolute URL.
pub(crate) fn origin_of(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    let default = if scheme == "https" { 443 } else { 80 };
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let (host, after) = stripped.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default);
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), default),
        }
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Joins a `Location` header to the URL it answered.
pub(crate) fn join_location(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return location.to_string();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = rest.split(['?', '#']).next().unwrap_or("");
        let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or(authority);
        format!("{scheme}://{dir}/{location}")
    }
}

/// Percent-encodes everything but unreserved characters (Python's `quote(s, safe="")`).
pub(crate) fn quote(s: &str) -> String {
    quote_keep(s, b"")
}

/// Percent-encodes a file path, keeping `/`.
pub(crate) fn quote_path(s: &str) -> String {
    quote_keep(s, b"/")
}

fn quote_keep(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A response header as a string.
pub(crate) fn header<'r>(resp: &'r Response, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The HTTP client.
pub(crate) struct Http {
    agent: ureq::Agent,
    endpoint: String,
    endpoint_origin: Option<(String, String, u16)>,
    token: Option<Token>,
    user_agent: String,
    pub(crate) max_attempts: u32,
    retry_delay: Duration,
    max_retry_delay: Duration,
}

impl Http {
    pub(crate) fn new(config: &HubConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_connect(Some(config.timeout))
            .timeout_recv_response(Some(config.timeout))
            .timeout_per_read(Some(config.read_timeout))
            .user_agent(config.user_agent.as_str())
            .build()
            .new_agent();
        Self {
            agent,
            endpoint: config.endpoint.clone(),
            endpoint_origin: origin_of(&config.endpoint),
            token: config.token.clone(),
            user_agent: config.user_agent.clone(),
            max_attempts: config.max_attempts.max(1),
            retry_delay: config.retry_delay,
            max_retry_delay: config.max_retry_delay,
        }
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether a URL is on the endpoint's origin (the only place the token goes).
    pub(crate) fn is_hub_origin(&self, url: &str) -> bool {
        origin_of(url).is_some() && origin_of(url) == self.endpoint_origin
    }

    /// Removes the token from text that came from a server before it enters an error or log.
    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.token {
            Some(t) if !t.expose().is_empty() => text.replace(t.expose(), "<redacted>"),
            _ => text.to_string(),
        }
    }

    /// Sends one request (no retry). The token is attached only for the endpoint's origin.
    pub(crate) fn send_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        payload: &Payload<'_>,
    ) -> std::result::Result<Response, ureq::Error> {
        let mut builder = http::Request::builder().method(method).uri(url);
        builder = builder.header("user-agent", self.user_agent.as_str());
        // An explicit authorization (an LFS action's header) replaces ours, never doubles it.
        let explicit = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let Some(token) = &self.token
            && !explicit
            && self.is_hub_origin(url)
        {
            builder = builder.header("authorization", format!("Bearer {}", token.expose()));
        }
        for (name, value) in headers {
            builder = builder.header(*name, value.as_str());
        }
        let request = |b: http::request::Builder, body| b.body(body).map_err(ureq::Error::from);
        match payload {
            Payload::Empty => self.agent.run(request(builder, Vec::new())?),
            Payload::Bytes(bytes, content_type) => {
                let b = builder.header("content-type", *content_type);
                self.agent.run(request(b, bytes.to_vec())?)
            }
            Payload::File(path) => {
                let file = std::fs::File::open(path)?;
                let b = builder.header("content-type", "application/octet-stream");
                let req = b.body(file).map_err(ureq::Error::from)?;
                self.agent.run(req)
            }
        }
    }

    fn delay(&self, attempt: u32, retry_after: Option<&str>) -> Duration {
        let backoff = self
            .retry_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_retry_delay);
        retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(self.max_retry_delay))
            .unwrap_or(backoff)
    }

    /// Sends a request, retrying dropped connections, 408, 429 and 5xx up to `max_attempts`
    /// times when `retry` is set. Any other status is returned as is.
    pub(crate) fn send_raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        payload: &Payload<'_>,
        retry: bool,
    ) -> Result<(Response, u32)> {
        // Only http(s) URLs are sent; anything else (an `HF_ENDPOINT` of `ftp://…` or
        // `localhost:8080` without a scheme) fails at once instead of being retried.
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(HubError::InvalidPath {
                what: "URL",
                value: printable(url),
                reason:
                    "only http:// and https:// URLs are supported (check HF_ENDPOINT / --endpoint)"
                        .into(),
            });
        }
        let attempts = if retry { self.max_attempts } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_once(method, url, headers, payload) {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let transient = matches!(status, 408 | 429 | 500 | 502 | 503 | 504);
                    if transient && attempt < attempts {
                        let wait = self.delay(attempt - 1, header(&resp, "retry-after"));
                        tracing::warn!(%url, status, attempt, ?wait, "transient HTTP error, retrying");
                        std::thread::sleep(wait);
                        continue;
                    }
                    return Ok((resp, attempt));
                }
                Err(e) => {
                    let message = self.scrub(&e.to_string());
                    if attempt < attempts && is_transient(&e) {
                        let wait = self.delay(attempt - 1, None);
                        tracing::warn!(%url, error = %message, attempt, ?wait, "request failed, retrying");
                        std::thread::sleep(wait);
                        continue;
                    }
                    return Err(HubError::Network {
                        url: url.to_string(),
                        attempts: attempt,
                        message,
                    });
                }
            }
        }
    }

    /// [`Http::send_raw`], then maps error statuses to [`HubError`].
    pub(crate) fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        payload: &Payload<'_>,
        subject: &Subject<'_>,
        retry: bool,
    ) -> Result<Response> {
        let (resp, attempts) = self.send_raw(method, url, headers, payload, retry)?;
        if resp.status().as_u16() >= 400 {
            return Err(self.error_for(resp, url, subject, attempts));
        }
        Ok(resp)
    }

    /// Sends and reads a JSON body.
    pub(crate) fn json(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        payload: &Payload<'_>,
        subject: &Subject<'_>,
        retry: bool,
    ) -> Result<(serde_json::Value, Response)> {
        let mut resp = self.send(method, url, headers, payload, subject, retry)?;
        let value = read_json(&mut resp, url)?;
        Ok((value, resp))
    }

    /// Maps an error status to the Hub's error kinds (`hf_raise_for_status`).
    pub(crate) fn error_for(
        &self,
        mut resp: Response,
        url: &str,
        subject: &Subject<'_>,
        attempts: u32,
    ) -> HubError {
        let status = resp.status().as_u16();
        let code = header(&resp, "x-error-code").map(str::to_string);
        let header_message = header(&resp, "x-error-message").map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let body_message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| match v.get("error") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(a)) => Some(
                    a.iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                _ => None,
            });
        let message = self.scrub(
            &header_message
                .or(body_message)
                .unwrap_or_else(|| body.chars().take(300).collect()),
        );
        let url = url.to_string();
        let repo_id = subject.repo_id.to_string();
        let revision = subject.revision.unwrap_or("main").to_string();
        match (code.as_deref(), status) {
            (Some("RepoNotFound"), _) => HubError::RepoNotFound { repo_id, message },
            (Some("RevisionNotFound"), _) => HubError::RevisionNotFound {
                repo_id,
                revision,
                message,
            },
            (Some("EntryNotFound"), _) => HubError::EntryNotFound {
                repo_id,
                revision,
                path: subject.path.unwrap_or("").to_string(),
            },
            (Some("GatedRepo"), _) => HubError::GatedRepo { repo_id, message },
            (_, 401) => HubError::Unauthorized { url, message },
            (_, 403) => HubError::Forbidden { url, message },
            (_, 400) => HubError::BadRequest { url, message },
            (_, 404) if subject.path.is_some() => HubError::EntryNotFound {
                repo_id,
                revision,
                path: subject.path.unwrap_or("").to_string(),
            },
            (_, 409) => HubError::Conflict { url, message },
            (_, 412) => HubError::PreconditionFailed { url, message },
            (_, 429) => HubError::RateLimited { url, attempts },
            (_, 500..=599) => HubError::Server {
                status,
                url,
                attempts,
                message,
            },
            _ => HubError::Http {
                status,
                url,
                message,
            },
        }
    }
}

/// Whether a failed request may succeed when sent again: dropped or refused connections,
/// timeouts, name resolution. A malformed URL or a TLS or protocol failure will not.
fn is_transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::BodyStalled
            | ureq::Error::Protocol(_)
    )
}

/// Reads a JSON body (at most 256 MiB: tree listings of huge repos are big, but bounded).
pub(crate) fn read_json(resp: &mut Response, url: &str) -> Result<serde_json::Value> {
    let mut text = String::new();
    resp.body_mut()
        .as_reader()
        .take(256 << 20)
        .read_to_string(&mut text)
        .map_err(|e| HubError::Network {
            url: url.to_string(),
            attempts: 1,
            message: e.to_string(),
        })?;
    serde_json::from_str(&text).map_err(|e| HubError::Json {
        what: url.to_string(),
        message: e.to_string(),
    })
}
