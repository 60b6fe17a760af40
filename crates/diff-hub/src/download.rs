//! One file from the Hub into the cache: `HEAD` for metadata (following relative redirects),
//! `GET` into `blobs/<etag>.incomplete` with `Range` resume, size and hash verification, then
//! rename to `blobs/<etag>` and link `snapshots/<commit>/<path>`.

use crate::HubApi;
use crate::cache::TreeCacheEntry;
use crate::config::{is_commit_hash, validate_file_path, validate_repo_id, validate_revision};
use crate::error::{HubError, Result, io_err};
use crate::http::{Payload, Subject, header, join_location, quote, quote_path};
use crate::progress::Progress;
use sha1::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What a `HEAD` on `/resolve/` says about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetadata {
    /// The commit the revision resolved to (`X-Repo-Commit`).
    pub commit: String,
    /// Normalised ETag: the git blob sha1, or the sha256 for LFS files (`X-Linked-Etag`).
    pub etag: String,
    /// Size in bytes (`X-Linked-Size` or `Content-Length`).
    pub size: u64,
    /// Where to `GET` the bytes (the CDN `Location`, or the resolve URL).
    pub location: String,
}

/// Options of [`HubApi::hf_hub_download`].
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Branch, tag, full commit hash or `refs/pr/N` (default `main`).
    pub revision: String,
    /// Never touch the network for this call (`local_files_only=True`).
    pub local_files_only: bool,
    /// Download again even if the cache has the file.
    pub force_download: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            revision: "main".into(),
            local_files_only: false,
            force_download: false,
        }
    }
}

/// `"abc"`, `W/"abc"` → `abc`.
fn normalize_etag(value: &str) -> String {
    value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// An ETag becomes a file name: allow only what a hash or an opaque id needs.
fn safe_etag(etag: &str) -> bool {
    !etag.is_empty()
        && etag.len() <= 128
        && !etag.starts_with('.')
        && etag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Errors after which Python falls back to a cached copy (never for missing revisions or files).
pub(crate) fn cache_fallback_allowed(err: &HubError) -> bool {
    matches!(
        err,
        HubError::Network { .. }
            | HubError::Server { .. }
            | HubError::RateLimited { .. }
            | HubError::Unauthorized { .. }
            | HubError::Forbidden { .. }
            | HubError::RepoNotFound { .. }
            | HubError::GatedRepo { .. }
    )
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hashes a finished download the way its ETag was computed: sha256 (64 hex) or git blob sha1
/// (40 hex). Other ETags (not from a Hub) are only size-checked.
fn verify_hash(
    file: &Path,
    etag: &str,
    size: u64,
) -> std::io::Result<Option<(&'static str, String)>> {
    if !is_hex(etag, 64) && !is_hex(etag, 40) {
        return Ok(None);
    }
    let mut reader = std::fs::File::open(file)?;
    let mut buf = vec![0u8; 1 << 16];
    if is_hex(etag, 64) {
        let mut h = sha2::Sha256::new();
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(buf.get(..n).unwrap_or_default());
        }
        let got = crate::upload::hex(&h.finalize());
        Ok((got != etag.to_ascii_lowercase()).then_some(("sha256", got)))
    } else {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {size}\0").as_bytes());
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(buf.get(..n).unwrap_or_default());
        }
        let got = crate::upload::hex(&h.finalize());
        Ok((got != etag.to_ascii_lowercase()).then_some(("git sha1", got)))
    }
}

impl HubApi {
    /// `{endpoint}/{repo}/resolve/{quoted revision}/{path}`.
    pub fn resolve_url(&self, repo_id: &str, revision: &str, path: &str) -> String {
        format!(
            "{}/{repo_id}/resolve/{}/{}",
            self.http.endpoint(),
            quote(revision),
            quote_path(path)
        )
    }

    /// Python's `get_hf_file_metadata`: a `HEAD` on the resolve URL, following relative (and
    /// same-origin) redirects; an absolute redirect elsewhere is the CDN and its response holds
    /// the metadata. A missing file with `X-Repo-Commit` leaves a `.no_exist` marker.
    pub fn get_file_metadata(
        &self,
        repo_id: &str,
        revision: &str,
        path: &str,
    ) -> Result<FileMetadata> {
        validate_repo_id(repo_id)?;
        validate_revision(revision)?;
        validate_file_path(path)?;
        if self.offline {
            return Err(HubError::LocalEntryNotFound {
                repo_id: repo_id.into(),
                revision: revision.into(),
                what: format!("metadata of {path}"),
                cache: self.cache.root().to_path_buf(),
            });
        }
        let subject = Subject {
            repo_id,
            revision: Some(revision),
            path: Some(path),
        };
        let mut url = self.resolve_url(repo_id, revision, path);
        for _ in 0..10 {
            let (resp, attempts) = self.http.send_raw(
                "HEAD",
                &url,
                &[("accept-encoding", "identity".to_string())],
                &Payload::Empty,
                true,
            )?;
            let status = resp.status().as_u16();
            if status >= 400 {
                if header(&resp, "x-error-code") == Some("EntryNotFound")
                    && let Some(commit) =
                        header(&resp, "x-repo-commit").filter(|c| is_commit_hash(c))
                {
                    self.cache.mark_no_exist(repo_id, commit, path)?;
                    self.cache.write_ref(repo_id, revision, commit)?;
                }
                return Err(self.http.error_for(resp, &url, &subject, attempts));
            }
            let location = header(&resp, "location").map(str::to_string);
            if (300..400).contains(&status)
                && let Some(location) = &location
            {
                let next = join_location(&url, location);
                if !location.contains("://") || self.http.is_hub_origin(&next) {
                    tracing::debug!(from = %url, to = %next, "following redirect on HEAD");
                    url = next;
                    continue;
                }
                return self.metadata_from(&resp, &url, next);
            }
            return self.metadata_from(&resp, &url, url.clone());
        }
        Err(HubError::Protocol {
            url,
            message: "more than 10 redirects".into(),
        })
    }

    fn metadata_from(
        &self,
        resp: &crate::http::Response,
        url: &str,
        location: String,
    ) -> Result<FileMetadata> {
        let missing = |what: &str| HubError::Protocol {
            url: url.to_string(),
            message: format!("no {what} header"),
        };
        let commit = header(resp, "x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?;
        if !is_commit_hash(commit) {
            return Err(HubError::Protocol {
                url: url.into(),
                message: format!("X-Repo-Commit `{commit}` is not a 40-hex commit"),
            });
        }
        let etag = header(resp, "x-linked-etag")
            .or_else(|| header(resp, "etag"))
            .map(normalize_etag)
            .ok_or_else(|| missing("ETag"))?;
        if !safe_etag(&etag) {
            return Err(HubError::Protocol {
                url: url.into(),
                message: format!("ETag `{etag}` cannot name a cache blob"),
            });
        }
        let size = header(resp, "x-linked-size")
            .or_else(|| header(resp, "content-length"))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| missing("X-Linked-Size or Content-Length"))?;
        Ok(FileMetadata {
            commit: commit.to_string(),
            etag,
            size,
            location,
        })
    }

    /// The cached copy of a file, without network.
    pub(crate) fn cached_file(&self, repo_id: &str, revision: &str, path: &str) -> Result<PathBuf> {
        let missing = |what: String| HubError::LocalEntryNotFound {
            repo_id: repo_id.into(),
            revision: revision.into(),
            what,
            cache: self.cache.root().to_path_buf(),
        };
        let commit = self
            .cache
            .resolve_commit(repo_id, revision)
            .ok_or_else(|| missing(format!("refs/{revision}")))?;
        let file = self.cache.snapshot_dir(repo_id, &commit).join(path);
        if file.exists() {
            Ok(file)
        } else {
            Err(missing(path.to_string()))
        }
    }

    /// Python's `hf_hub_download`: the cached path of one file of a repo, downloading it when
    /// needed. Offline (config or `local_files_only`) it only looks in the cache.
    pub fn hf_hub_download(
        &self,
        repo_id: &str,
        path: &str,
        options: &DownloadOptions,
    ) -> Result<PathBuf> {
        self.download_file(
            repo_id,
            path,
            &options.revision,
            options.local_files_only,
            options.force_download,
            None,
            &crate::progress::NoProgress,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn download_file(
        &self,
        repo_id: &str,
        path: &str,
        revision: &str,
        local_files_only: bool,
        force: bool,
        known: Option<&TreeCacheEntry>,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        validate_repo_id(repo_id)?;
        validate_revision(revision)?;
        validate_file_path(path)?;
        if self.offline || local_files_only {
            return self.cached_file(repo_id, revision, path);
        }
        if !force && is_commit_hash(revision) {
            let pointer = self.cache.snapshot_dir(repo_id, revision).join(path);
            let etag = known.map(|k| k.lfs_sha256.clone().unwrap_or_else(|| k.blob_id.clone()));
            // With the tree entry we know the blob: an existing snapshot entry is current.
            if pointer.exists()
                && (known.is_none() || etag.is_some_and(|e| pointer_targets(&pointer, &e)))
            {
                return Ok(pointer);
            }
        }
        let meta = match self.get_file_metadata(repo_id, revision, path) {
            Ok(meta) => meta,
            Err(err) if cache_fallback_allowed(&err) => {
                if let Ok(cached) = self.cached_file(repo_id, revision, path) {
                    tracing::warn!(%repo_id, %path, error = %err, "Hub unreachable, using the cached file");
                    return Ok(cached);
                }
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        self.cache.ensure_tag()?;
        self.cache.write_ref(repo_id, revision, &meta.commit)?;
        let blob = self.cache.blob_path(repo_id, &meta.etag);
        let blob_ok = |b: &Path| std::fs::metadata(b).is_ok_and(|m| m.len() == meta.size);
        if force || !blob_ok(&blob) {
            let _lock = self.cache.lock_blob(repo_id, &meta.etag)?;
            if force || !blob_ok(&blob) {
                self.fetch_blob(repo_id, path, &meta, &blob, progress)?;
            }
        } else {
            progress.on_file_start(path, meta.size);
            progress.on_bytes(path, meta.size);
            progress.on_file_done(path);
        }
        self.cache
            .link_snapshot(repo_id, &meta.commit, path, &meta.etag)
    }

    /// Downloads into `blobs/<etag>.incomplete` (resuming what a previous run left there),
    /// verifies size and hash, then renames it to the blob.
    fn fetch_blob(
        &self,
        repo_id: &str,
        path: &str,
        meta: &FileMetadata,
        blob: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        let dir = blob.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let incomplete = dir.join(format!("{}.incomplete", meta.etag));
        let subject = Subject {
            repo_id,
            revision: Some(&meta.commit),
            path: Some(path),
        };
        let size = meta.size;
        let mut url = meta.location.clone();
        let mut attempt: u32 = 0;
        let mut hops = 0;
        progress.on_file_start(path, size);
        let mut reported: u64 = 0;
        loop {
            let mut have = std::fs::metadata(&incomplete).map(|m| m.len()).unwrap_or(0);
            if have > size {
                truncate(&incomplete)?;
                have = 0;
            }
            if have > reported {
                progress.on_bytes(path, have - reported);
                reported = have;
            }
            if have == size {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&incomplete)
                    .map_err(io_err(&incomplete))?;
                break;
            }
            attempt += 1;
            let mut headers = vec![("accept-encoding", "identity".to_string())];
            if have > 0 {
                tracing::info!(%repo_id, %path, offset = have, "resuming download");
                headers.push(("range", format!("bytes={have}-")));
            }
            let (mut resp, attempts) =
                self.http
                    .send_raw("GET", &url, &headers, &Payload::Empty, true)?;
            let status = resp.status().as_u16();
            if (300..400).contains(&status)
                && let Some(location) = header(&resp, "location")
            {
                hops += 1;
                if hops > 10 {
                    return Err(HubError::Protocol {
                        url,
                        message: "more than 10 redirects".into(),
                    });
                }
                url = join_location(&url, location);
                attempt -= 1;
                continue;
            }
            match status {
                206 => {
                    let start = header(&resp, "content-range")
                        .and_then(|v| v.trim().strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if start != Some(have) {
                        truncate(&incomplete)?;
                        reported = 0;
                        if attempt >= self.http.max_attempts {
                            return Err(HubError::Protocol {
                                url,
                                message: "range answer does not start where asked".into(),
                            });
                        }
                        continue;
                    }
                }
                200 => {
                    if have > 0 {
                        truncate(&incomplete)?;
                        reported = 0;
                    }
                }
                416 => {
                    truncate(&incomplete)?;
                    reported = 0;
                    if attempt >= self.http.max_attempts {
                        return Err(HubError::Protocol {
                            url,
                            message: "416 for a resumed download".into(),
                        });
                    }
                    continue;
                }
                s if s >= 400 => return Err(self.http.error_for(resp, &url, &subject, attempts)),
                s => {
                    return Err(HubError::Protocol {
                        url,
                        message: format!("unexpected status {s} for a download"),
                    });
                }
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&incomplete)
                .map_err(io_err(&incomplete))?;
            let mut reader = resp.body_mut().as_reader();
            let mut buf = vec![0u8; 1 << 16];
            let mut written = std::fs::metadata(&incomplete).map(|m| m.len()).unwrap_or(0);
            let outcome: std::io::Result<()> = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        let Some(chunk) = buf.get(..n) else {
                            break Ok(());
                        };
                        if written + n as u64 > size {
                            break Err(std::io::Error::other(
                                "server sent more bytes than announced",
                            ));
                        }
                        file.write_all(chunk).map_err(io_err(&incomplete))?;
                        written += n as u64;
                        progress.on_bytes(path, n as u64);
                        reported += n as u64;
                    }
                    Err(e) => break Err(e),
                }
            };
            file.flush().map_err(io_err(&incomplete))?;
            drop(file);
            let got = std::fs::metadata(&incomplete).map(|m| m.len()).unwrap_or(0);
            if got == size {
                break;
            }
            let message = match outcome {
                Err(e) => self.http.scrub(&e.to_string()),
                Ok(()) => format!("connection closed after {got} of {size} bytes"),
            };
            if attempt >= self.http.max_attempts {
                // The partial file stays as `.incomplete` for a later resume; it never passes
                // for a blob because it is only renamed after the checks below.
                return Err(HubError::Network {
                    url,
                    attempts: attempt,
                    message,
                });
            }
            tracing::warn!(%repo_id, %path, %message, got, size, "download interrupted, resuming");
        }
        let got = std::fs::metadata(&incomplete)
            .map(|m| m.len())
            .map_err(io_err(&incomplete))?;
        if got != size {
            let _ = std::fs::remove_file(&incomplete);
            return Err(HubError::Integrity {
                repo_id: repo_id.into(),
                path: path.into(),
                what: "size",
                expected: size.to_string(),
                got: got.to_string(),
            });
        }
        if let Some((what, got)) =
            verify_hash(&incomplete, &meta.etag, size).map_err(io_err(&incomplete))?
        {
            let _ = std::fs::remove_file(&incomplete);
            return Err(HubError::Integrity {
                repo_id: repo_id.into(),
                path: path.into(),
                what,
                expected: meta.etag.clone(),
                got,
            });
        }
        std::fs::rename(&incomplete, blob).map_err(io_err(blob))?;
        progress.on_file_done(path);
        Ok(())
    }
}

fn truncate(path: &Path) -> Result<()> {
    std::fs::File::create(path)
        .map(|_| ())
        .map_err(io_err(path))
}

/// Whether a snapshot entry is (a link to, or a copy of) the blob with this ETag.
fn pointer_targets(pointer: &Path, etag: &str) -> bool {
    match std::fs::read_link(pointer) {
        Ok(target) => target.file_name().is_some_and(|n| n == etag),
        // A copy (no-symlink mode): trust it, as Python does.
        Err(_) => true,
    }
}
