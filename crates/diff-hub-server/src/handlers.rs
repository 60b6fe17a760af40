//! Request plumbing (parsing, replies, file bodies with `Range`, faults, the request log) and
//! the read side of the Hub origin (`/resolve/`, repo info, tree, whoami).

use crate::http1::Incoming;
use crate::repo::{Entry, safe_component};
use crate::{Fault, Origin, RequestRecord, Shared, storage, take_exit};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::path::Path;

/// A parsed request.
pub(crate) struct Req {
    pub method: String,
    pub url: String,
    /// Path segments, percent-decoded one by one.
    pub segments: Vec<String>,
    pub query: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, refusing more than `limit` bytes.
    pub(crate) fn body(&mut self, limit: u64) -> std::io::Result<Vec<u8>> {
        if self.body.len() as u64 >= limit {
            return Err(std::io::Error::other(format!(
                "body larger than {limit} bytes"
            )));
        }
        Ok(std::mem::take(&mut self.body))
    }

    /// Reads and parses a JSON body.
    pub(crate) fn json(&mut self, limit: u64) -> Result<serde_json::Value, Box<Reply>> {
        let bytes = self
            .body(limit)
            .map_err(|e| Box::new(error(400, None, &format!("reading body: {e}"))))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Box::new(error(400, None, &format!("body is not valid JSON: {e}"))))
    }

    pub(crate) fn flag(&self, name: &str) -> bool {
        self.query
            .get(name)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"))
    }
}

/// A reply body.
pub(crate) enum Body {
    Bytes(Vec<u8>),
    /// A file region: `(path, offset, length)`, cut after `truncate` bytes when set.
    File {
        file: std::fs::File,
        len: u64,
        truncate: Option<u64>,
        exit: bool,
        corrupt: bool,
    },
}

/// A reply under construction.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub(crate) fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A JSON reply.
pub(crate) fn json(status: u16, value: &serde_json::Value) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Body::Bytes(serde_json::to_vec(value).unwrap_or_default()),
    }
}

/// An error reply with the Hub's headers and a `{"error": …}` body.
pub(crate) fn error(status: u16, code: Option<&str>, message: &str) -> Reply {
    let mut reply = json(status, &json!({ "error": message }));
    if let Some(code) = code {
        reply = reply.header("X-Error-Code", code);
    }
    // Header values must stay on one line.
    reply.header("X-Error-Message", message.replace(['\r', '\n'], " "))
}

/// Percent-decodes one path segment or query value.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a file path for a URL, keeping `/`.
pub(crate) fn encode_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Streams a file (honouring `Range`) with the given extra headers.
pub(crate) fn send_file(
    shared: &Shared,
    req: &Req,
    path: &Path,
    headers: Vec<(&str, String)>,
    fault: Option<&Fault>,
) -> Reply {
    let Ok(mut file) = std::fs::File::open(path) else {
        return error(500, None, "stored file is missing");
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut status = 200;
    let (mut start, mut len) = (0, size);
    let mut reply_headers: Vec<(String, String)> = headers
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    reply_headers.push(("Accept-Ranges".into(), "bytes".into()));
    reply_headers.push(("Content-Type".into(), "application/octet-stream".into()));
    if let Some(range) = req.header("range") {
        match parse_range(range, size) {
            Some((a, b)) => {
                status = 206;
                start = a;
                len = b + 1 - a;
                reply_headers.push(("Content-Range".into(), format!("bytes {a}-{b}/{size}")));
            }
            None => {
                return error(416, None, "range not satisfiable")
                    .header("Content-Range", format!("bytes */{size}"));
            }
        }
    }
    if file.seek(SeekFrom::Start(start)).is_err() {
        return error(500, None, "seek failed");
    }
    let mut truncate = fault.and_then(|f| f.truncate_body_after);
    let mut exit = false;
    if req.method == "GET"
        // Only a body longer than the limit can be cut (small files pass untouched).
        && shared.config.exit_after_bytes.is_some_and(|b| len > b)
        && let Some(bytes) = take_exit(shared)
    {
        truncate = Some(bytes);
        exit = true;
    }
    Reply {
        status,
        headers: reply_headers,
        body: Body::File {
            file,
            len,
            truncate,
            exit,
            corrupt: fault.is_some_and(|f| f.corrupt_body),
        },
    }
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n`, clamping the end to the file.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (size.saturating_sub(n), size.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            size.checked_sub(1)?
        } else {
            b.parse::<u64>().ok()?.min(size.checked_sub(1)?)
        };
        (start, end)
    };
    (start <= end && start < size).then_some((start, end))
}

/// Entry point of every request: parse the URL, apply faults, route, log.
pub(crate) fn handle(shared: &Shared, origin: Origin, incoming: Incoming) -> Reply {
    let Incoming {
        method,
        url,
        headers,
        body,
        ..
    } = incoming;
    let (path, query_str) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let query = query_str
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut req = Req {
        method: method.clone(),
        url: url.clone(),
        segments,
        query,
        headers: headers.clone(),
        body,
    };
    let fault = shared.take_fault(&method, &url);
    let reply = match &fault {
        Some(f) if f.truncate_body_after.is_none() && !f.corrupt_body => {
            let mut reply = error(
                f.status,
                f.error_code.as_deref(),
                &format!("injected fault {}", f.status),
            );
            if let Some(seconds) = f.retry_after {
                reply = reply.header("Retry-After", seconds.to_string());
            }
            reply
        }
        _ => match origin {
            Origin::Hub => route_hub(shared, &mut req, fault.as_ref()),
            Origin::Storage => storage::route(shared, &mut req, fault.as_ref()),
        },
    };
    shared.record(RequestRecord {
        origin,
        method,
        url,
        headers,
        status: reply.status,
    });
    reply
}

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Access {
    Invalid,
    Anonymous,
    Read,
    Write,
}

pub(crate) fn access(shared: &Shared, req: &Req) -> Access {
    let config = &shared.config;
    if config.write_tokens.is_empty() && config.read_tokens.is_empty() {
        return Access::Write;
    }
    let Some(value) = req.header("authorization") else {
        return Access::Anonymous;
    };
    let token = value.strip_prefix("Bearer ").unwrap_or(value).trim();
    if config.write_tokens.iter().any(|t| t == token) {
        Access::Write
    } else if config.read_tokens.iter().any(|t| t == token) {
        Access::Read
    } else {
        Access::Invalid
    }
}

fn invalid_credentials() -> Reply {
    error(401, None, "Invalid credentials in Authorization header")
}

/// Checks read access to a repo; `Err` is the reply to send.
pub(crate) fn check_read(shared: &Shared, req: &Req, repo_id: &str) -> Result<(), Reply> {
    let who = access(shared, req);
    if who == Access::Invalid {
        return Err(invalid_credentials());
    }
    let repos = shared.repos();
    let not_found = || {
        let status = if who == Access::Anonymous { 401 } else { 404 };
        error(
            status,
            Some("RepoNotFound"),
            &format!("Repository Not Found for url: {}", req.url),
        )
    };
    if !repos.exists(repo_id) {
        return Err(not_found());
    }
    let meta = repos.meta(repo_id).cloned().unwrap_or_default();
    if meta.private && who < Access::Read {
        return Err(not_found());
    }
    if meta.gated && who < Access::Write {
        let status = if who == Access::Anonymous { 401 } else { 403 };
        return Err(error(
            status,
            Some("GatedRepo"),
            &format!(
                "Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it."
            ),
        ));
    }
    Ok(())
}

/// Checks write access; `Err` is the reply to send.
pub(crate) fn check_write(shared: &Shared, req: &Req) -> Result<(), Reply> {
    match access(shared, req) {
        Access::Write => Ok(()),
        Access::Invalid => Err(invalid_credentials()),
        Access::Anonymous => Err(error(401, None, "You must be authenticated to write")),
        Access::Read => Err(error(
            403,
            None,
            "You don't have the rights to write to this repo (read-only token)",
        )),
    }
}

/// `org/name` from two segments, if both are safe.
pub(crate) fn repo_id(org: &str, name: &str) -> Option<String> {
    (safe_component(org) && safe_component(name) && !org.starts_with('.'))
        .then(|| format!("{org}/{name}"))
}

/// Resolves a revision or gives the Hub's `RevisionNotFound` reply.
pub(crate) fn resolve_rev(shared: &Shared, repo_id: &str, rev: &str) -> Result<String, Reply> {
    match shared.repos().resolve(repo_id, rev) {
        Ok(Some(commit)) => Ok(commit),
        Ok(None) => Err(error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        )),
        Err(e) => Err(error(500, None, &format!("reading repo {repo_id}: {e}"))),
    }
}

/// The Hub origin's router.
pub(crate) fn route_hub(shared: &Shared, req: &mut Req, fault: Option<&Fault>) -> Reply {
    let segs: Vec<String> = req.segments.clone();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method.clone();
    match (m.as_str(), s.as_slice()) {
        ("POST", ["api", "repos", "create"]) => crate::handlers_write::create_repo(shared, req),
        ("DELETE", ["api", "repos", "delete"]) => crate::handlers_write::delete_repo(shared, req),
        ("POST", ["api", "validate-yaml"]) => crate::handlers_write::validate_yaml(req),
        ("GET", ["api", "whoami-v2"]) => whoami(shared, req),
        (
            "GET" | "HEAD",
            [
                "api",
                "resolve-cache",
                "models",
                org,
                name,
                commit,
                rest @ ..,
            ],
        ) => with_repo(shared, req, org, name, |req, id| {
            resolve_file(shared, req, id, commit, &rest.join("/"), true, fault)
        }),
        ("GET", ["api", "models", org, name]) => with_repo(shared, req, org, name, |req, id| {
            repo_info(shared, req, id, "main")
        }),
        ("GET", ["api", "models", org, name, "revision", rev @ ..]) => {
            with_repo(shared, req, org, name, |req, id| {
                repo_info(shared, req, id, &rev.join("/"))
            })
        }
        ("GET", ["api", "models", org, name, "tree", rev, rest @ ..]) => {
            with_repo(shared, req, org, name, |req, id| {
                tree(shared, req, id, rev, &rest.join("/"))
            })
        }
        ("POST", ["api", "models", org, name, "preupload", rev @ ..]) => {
            with_repo(shared, req, org, name, |req, id| {
                crate::handlers_write::preupload(shared, req, id, &rev.join("/"))
            })
        }
        ("POST", ["api", "models", org, name, "commit", rev @ ..]) => {
            with_repo(shared, req, org, name, |req, id| {
                crate::handlers_write::commit(shared, req, id, &rev.join("/"))
            })
        }
        ("POST", [org, repo_git, "info", "lfs", "objects", action])
            if repo_git.ends_with(".git") =>
        {
            let name = repo_git.trim_end_matches(".git");
            with_repo(shared, req, org, name, |req, id| match *action {
                "batch" => crate::handlers_write::lfs_batch(shared, req, id),
                "verify" => crate::handlers_write::lfs_verify(shared, req, id),
                _ => error(404, None, "unknown LFS action"),
            })
        }
        ("GET" | "HEAD", [org, name, "resolve", rev, rest @ ..]) if !rest.is_empty() => {
            with_repo(shared, req, org, name, |req, id| {
                resolve_file(shared, req, id, rev, &rest.join("/"), false, fault)
            })
        }
        _ => error(
            404,
            None,
            &format!(
                "Sorry, we can't find the page you are looking for ({} {})",
                req.method, req.url
            ),
        ),
    }
}

fn with_repo(
    shared: &Shared,
    req: &mut Req,
    org: &str,
    name: &str,
    f: impl FnOnce(&mut Req, &str) -> Reply,
) -> Reply {
    let Some(id) = repo_id(org, name) else {
        return error(400, None, &format!("invalid repo id {org}/{name}"));
    };
    if req.segments.first().map(String::as_str) == Some("api")
        && req.segments.get(2).map(String::as_str) == Some("models")
        && req.segments.get(5).map(String::as_str) == Some("commit")
    {
        // Writes check their own access (and need the repo to exist).
        if !shared.repos().exists(&id) {
            return error(
                404,
                Some("RepoNotFound"),
                &format!("Repository {id} not found"),
            );
        }
        return f(req, &id);
    }
    if let Err(reply) = check_read(shared, req, &id) {
        return reply;
    }
    f(req, &id)
}

fn whoami(shared: &Shared, req: &Req) -> Reply {
    let role = match access(shared, req) {
        Access::Write => "write",
        Access::Read => "read",
        Access::Anonymous | Access::Invalid => return invalid_credentials(),
    };
    json(
        200,
        &json!({"type": "user", "name": "user", "fullname": "Test User",
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}}}),
    )
}

fn resolve_file(
    shared: &Shared,
    req: &Req,
    repo_id: &str,
    rev: &str,
    path: &str,
    via_hop: bool,
    fault: Option<&Fault>,
) -> Reply {
    let commit = match resolve_rev(shared, repo_id, rev) {
        Ok(c) => c,
        Err(reply) => return reply,
    };
    let (entry, file) = {
        let repos = shared.repos();
        let entry: Option<Entry> = repos
            .commit(repo_id, &commit)
            .and_then(|c| c.files.get(path).cloned());
        match entry {
            Some(e) => {
                let file = repos.file_path(repo_id, path, &e);
                (e, file)
            }
            None => {
                return error(
                    404,
                    Some("EntryNotFound"),
                    &format!("Entry not found: {path}"),
                )
                .header("X-Repo-Commit", commit);
            }
        }
    };
    if entry.lfs {
        let location = format!("{}/lfs/{}", shared.storage_url, entry.sha256);
        return Reply::empty(302)
            .header("Location", location)
            .header("X-Repo-Commit", commit)
            .header("ETag", format!("\"{}\"", entry.oid))
            .header("X-Linked-Etag", format!("\"{}\"", entry.sha256))
            .header("X-Linked-Size", entry.size.to_string());
    }
    if shared.config.resolve_cache_hop && !via_hop {
        let location = format!(
            "/api/resolve-cache/models/{repo_id}/{commit}/{}?etag=%22{}%22",
            encode_path(path),
            entry.oid
        );
        return Reply::empty(307)
            .header("Location", location)
            .header("X-Repo-Commit", commit);
    }
    send_file(
        shared,
        req,
        &file,
        vec![
            ("ETag", format!("\"{}\"", entry.etag())),
            ("X-Repo-Commit", commit),
        ],
        fault,
    )
}

fn repo_info(shared: &Shared, req: &Req, repo_id: &str, rev: &str) -> Reply {
    let commit = match resolve_rev(shared, repo_id, rev) {
        Ok(c) => c,
        Err(reply) => return reply,
    };
    let repos = shared.repos();
    let meta = repos.meta(repo_id).cloned().unwrap_or_default();
    let blobs = req.flag("blobs");
    let siblings: Vec<serde_json::Value> = repos
        .commit(repo_id, &commit)
        .map(|c| {
            c.files
                .iter()
                .map(|(path, e)| {
                    let mut s = json!({ "rfilename": path });
                    if blobs {
                        s["size"] = json!(e.size);
                        s["blobId"] = json!(e.oid);
                        if e.lfs {
                            let pointer = crate::repo::lfs_pointer(&e.sha256, e.size);
                            s["lfs"] = json!({"size": e.size, "sha256": e.sha256, "pointerSize": pointer.len()});
                        }
                    }
                    s
                })
                .collect()
        })
        .unwrap_or_default();
    let (author, _) = repo_id.split_once('/').unwrap_or((repo_id, ""));
    json(
        200,
        &json!({
            "_id": commit.get(..24).unwrap_or(&commit),
            "id": repo_id,
            "modelId": repo_id,
            "author": author,
            "sha": commit,
            "private": meta.private,
            "gated": if meta.gated { json!("manual") } else { json!(false) },
            "disabled": false,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "tags": [],
            "library_name": "diffusers",
            "siblings": siblings,
        }),
    )
}

fn tree(shared: &Shared, req: &Req, repo_id: &str, rev: &str, prefix: &str) -> Reply {
    let commit = match resolve_rev(shared, repo_id, rev) {
        Ok(c) => c,
        Err(reply) => return reply,
    };
    let recursive = req.flag("recursive");
    let repos = shared.repos();
    let Some(files) = repos.commit(repo_id, &commit).map(|c| c.files.clone()) else {
        return error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        );
    };
    drop(repos);
    let prefix = prefix.trim_matches('/');
    let under = |path: &str| -> Option<String> {
        if prefix.is_empty() {
            Some(path.to_string())
        } else {
            path.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('/'))
                .map(str::to_string)
        }
    };
    if !prefix.is_empty() && !files.keys().any(|p| under(p).is_some()) {
        return error(
            404,
            Some("EntryNotFound"),
            &format!("{prefix} does not exist on \"{rev}\""),
        )
        .header("X-Repo-Commit", commit);
    }
    let join = |rel: &str| {
        if prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{prefix}/{rel}")
        }
    };
    let mut entries: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (path, e) in &files {
        let Some(rel) = under(path) else { continue };
        let parts: Vec<&str> = rel.split('/').collect();
        let dirs = if recursive {
            parts.len() - 1
        } else {
            parts.len().min(2) - 1
        };
        for d in 1..=dirs {
            let dir = join(&parts[..d].join("/"));
            entries.entry(dir.clone()).or_insert_with(|| {
                json!({"type": "directory", "oid": crate::repo::git_blob_sha1(dir.as_bytes()), "size": 0, "path": dir})
            });
        }
        if !recursive && parts.len() > 1 {
            continue;
        }
        let mut v = json!({"type": "file", "oid": e.oid, "size": e.size, "path": path});
        if e.lfs {
            let pointer = crate::repo::lfs_pointer(&e.sha256, e.size);
            v["lfs"] = json!({"oid": e.sha256, "size": e.size, "pointerSize": pointer.len()});
        }
        entries.insert(path.clone(), v);
    }
    let all: Vec<serde_json::Value> = entries.into_values().collect();
    let page = shared.config.tree_page_size.max(1);
    let cursor: usize = req
        .query
        .get("cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let end = cursor.saturating_add(page).min(all.len());
    let slice = all.get(cursor..end).map(<[_]>::to_vec).unwrap_or_default();
    let mut reply = json(200, &serde_json::Value::Array(slice));
    if end < all.len() {
        let base = req.url.split_once('?').map(|(p, _)| p).unwrap_or(&req.url);
        reply = reply.header(
            "Link",
            format!(
                "<{}{base}?recursive={recursive}&expand=false&cursor={end}>; rel=\"next\"",
                shared.hub_url
            ),
        );
    }
    reply
}
