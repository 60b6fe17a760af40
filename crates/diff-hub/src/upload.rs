//! The upload half: `create_repo`, `create_commit` (preupload → LFS batch with basic or
//! multipart transfer → verify → NDJSON commit), `upload_folder`, `delete_file`, pull requests.

use crate::HubApi;
use crate::config::{validate_file_path, validate_repo_id, validate_revision};
use crate::error::{HubError, Result, io_err};
use crate::http::{Payload, Subject, header, quote};
use crate::progress::Progress;
use base64::Engine;
use serde_json::{Value, json};
use sha1::Digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

const LFS_JSON: &str = "application/vnd.git-lfs+json";

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the bytes of an added file come from.
#[derive(Debug, Clone)]
pub enum AddSource {
    /// A local file (streamed for LFS uploads).
    File(PathBuf),
    /// Bytes in memory.
    Bytes(Vec<u8>),
}

/// One change of a commit (Python's `CommitOperationAdd` / `Delete`).
#[derive(Debug, Clone)]
pub enum CommitOperation {
    /// Add or replace a file.
    Add {
        /// Path in the repo.
        path_in_repo: String,
        /// The content.
        source: AddSource,
    },
    /// Delete a file.
    Delete {
        /// Path in the repo.
        path_in_repo: String,
    },
    /// Delete a folder and everything under it.
    DeleteFolder {
        /// Folder path in the repo.
        path_in_repo: String,
    },
}

/// Options shared by every commit-making call.
#[derive(Debug, Clone)]
pub struct CommitOptions {
    /// The commit summary (`commit_message`).
    pub commit_message: String,
    /// The commit description.
    pub commit_description: String,
    /// The branch to commit to (default `main`); the PR's base with `create_pr`.
    pub revision: String,
    /// Open a pull request (`refs/pr/N`) instead of moving the branch.
    pub create_pr: bool,
    /// Refuse the commit if the branch head is not this commit.
    pub parent_commit: Option<String>,
}

impl Default for CommitOptions {
    fn default() -> Self {
        Self {
            commit_message: "Upload with burn-diffusers".into(),
            commit_description: String::new(),
            revision: "main".into(),
            create_pr: false,
            parent_commit: None,
        }
    }
}

/// Options of [`HubApi::upload_folder`].
#[derive(Debug, Clone, Default)]
pub struct UploadFolderOptions {
    /// Folder in the repo to upload into (`""` = root).
    pub path_in_repo: String,
    /// Commit message, branch, PR…
    pub commit: CommitOptions,
    /// Only local files matching one of these.
    pub allow_patterns: Option<Vec<String>>,
    /// Skip local files matching one of these.
    pub ignore_patterns: Option<Vec<String>>,
    /// Delete remote files matching these (except `.gitattributes`) unless re-uploaded.
    pub delete_patterns: Option<Vec<String>>,
}

/// What a commit produced (Python's `CommitInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The new commit (or the unchanged head when there was nothing to commit).
    pub commit_oid: String,
    /// Its URL.
    pub commit_url: String,
    /// The repo URL.
    pub repo_url: String,
    /// The pull request URL (`…/discussions/N`) with `create_pr`.
    pub pr_url: Option<String>,
    /// `refs/pr/N` with `create_pr`.
    pub pr_revision: Option<String>,
    /// `N` with `create_pr`.
    pub pr_num: Option<u64>,
}

/// A local file prepared for upload.
struct Prepared {
    path: String,
    source: AddSource,
    size: u64,
    sha256: String,
    git_sha1: String,
    sample: Vec<u8>,
}

fn prepare(path: &str, source: &AddSource) -> Result<Prepared> {
    let mut sha256 = sha2::Sha256::new();
    let mut sample = Vec::new();
    let size = match source {
        AddSource::Bytes(bytes) => {
            sha256.update(bytes);
            sample.extend_from_slice(bytes.get(..bytes.len().min(512)).unwrap_or_default());
            bytes.len() as u64
        }
        AddSource::File(file) => {
            let mut reader = std::fs::File::open(file).map_err(io_err(file))?;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                let n = reader.read(&mut buf).map_err(io_err(file))?;
                if n == 0 {
                    break;
                }
                let chunk = buf.get(..n).unwrap_or_default();
                if sample.len() < 512 {
                    let take = (512 - sample.len()).min(n);
                    sample.extend_from_slice(chunk.get(..take).unwrap_or_default());
                }
                sha256.update(chunk);
                total += n as u64;
            }
            total
        }
    };
    // The git blob id needs the size up front, so it is a second pass over files.
    let mut sha1 = sha1::Sha1::new();
    sha1.update(format!("blob {size}\0").as_bytes());
    match source {
        AddSource::Bytes(bytes) => sha1.update(bytes),
        AddSource::File(file) => {
            let mut reader = std::fs::File::open(file).map_err(io_err(file))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = reader.read(&mut buf).map_err(io_err(file))?;
                if n == 0 {
                    break;
                }
                sha1.update(buf.get(..n).unwrap_or_default());
            }
        }
    }
    Ok(Prepared {
        path: path.to_string(),
        source: source.clone(),
        size,
        sha256: hex(&sha256.finalize()),
        git_sha1: hex(&sha1.finalize()),
        sample,
    })
}

fn read_source(p: &Prepared) -> Result<Vec<u8>> {
    match &p.source {
        AddSource::Bytes(b) => Ok(b.clone()),
        AddSource::File(f) => std::fs::read(f).map_err(io_err(f)),
    }
}

fn json_err(what: &str) -> impl FnOnce(serde_json::Error) -> HubError + '_ {
    move |e| HubError::Json {
        what: what.to_string(),
        message: e.to_string(),
    }
}

impl HubApi {
    fn ensure_writable(&self, what: &str) -> Result<()> {
        if self.offline {
            return Err(HubError::LocalEntryNotFound {
                repo_id: what.into(),
                revision: String::new(),
                what: "network access for an upload".into(),
                cache: self.cache.root().to_path_buf(),
            });
        }
        Ok(())
    }

    /// `POST /api/repos/create`; with `exist_ok` an existing repo is fine. Returns the repo URL.
    pub fn create_repo(&self, repo_id: &str, private: bool, exist_ok: bool) -> Result<String> {
        validate_repo_id(repo_id)?;
        self.ensure_writable(repo_id)?;
        let (organization, name) = match repo_id.split_once('/') {
            Some((o, n)) => (Some(o), n),
            None => (None, repo_id),
        };
        let url = format!("{}/api/repos/create", self.http.endpoint());
        let body = json!({"name": name, "organization": organization,
                          "visibility": if private { "private" } else { "public" }});
        let bytes = serde_json::to_vec(&body).map_err(json_err(&url))?;
        let subject = Subject {
            repo_id,
            ..Default::default()
        };
        match self.http.json(
            "POST",
            &url,
            &[],
            &Payload::Bytes(&bytes, "application/json"),
            &subject,
            false,
        ) {
            Ok((value, _)) => Ok(value
                .get("url")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}/{repo_id}", self.http.endpoint()))),
            Err(HubError::Conflict { .. }) if exist_ok => {
                Ok(format!("{}/{repo_id}", self.http.endpoint()))
            }
            Err(e) => Err(e),
        }
    }

    /// `DELETE /api/repos/delete`.
    pub fn delete_repo(&self, repo_id: &str) -> Result<()> {
        validate_repo_id(repo_id)?;
        self.ensure_writable(repo_id)?;
        let (organization, name) = match repo_id.split_once('/') {
            Some((o, n)) => (Some(o), n),
            None => (None, repo_id),
        };
        let url = format!("{}/api/repos/delete", self.http.endpoint());
        let bytes = serde_json::to_vec(&json!({"name": name, "organization": organization}))
            .map_err(json_err(&url))?;
        let subject = Subject {
            repo_id,
            ..Default::default()
        };
        self.http.send(
            "DELETE",
            &url,
            &[],
            &Payload::Bytes(&bytes, "application/json"),
            &subject,
            false,
        )?;
        Ok(())
    }

    /// Python's `create_commit`: the Hub decides per file (preupload) whether it goes inline or
    /// through LFS; LFS objects are uploaded (basic or multipart) and verified; then one NDJSON
    /// commit. Files the Hub already has unchanged are skipped.
    pub fn create_commit(
        &self,
        repo_id: &str,
        operations: &[CommitOperation],
        options: &CommitOptions,
        progress: &dyn Progress,
    ) -> Result<CommitInfo> {
        validate_repo_id(repo_id)?;
        validate_revision(&options.revision)?;
        self.ensure_writable(repo_id)?;
        let revision = options.revision.as_str();
        let subject = Subject {
            repo_id,
            revision: Some(revision),
            path: None,
        };
        let pr_query = if options.create_pr {
            "?create_pr=1"
        } else {
            ""
        };
        let mut adds = Vec::new();
        let mut deletes = Vec::new();
        for op in operations {
            match op {
                CommitOperation::Add {
                    path_in_repo,
                    source,
                } => {
                    validate_file_path(path_in_repo)?;
                    adds.push(prepare(path_in_repo, source)?);
                }
                CommitOperation::Delete { path_in_repo } => {
                    validate_file_path(path_in_repo)?;
                    deletes.push(("deletedFile", path_in_repo.clone()));
                }
                CommitOperation::DeleteFolder { path_in_repo } => {
                    validate_file_path(path_in_repo.trim_end_matches('/'))?;
                    deletes.push((
                        "deletedFolder",
                        format!("{}/", path_in_repo.trim_end_matches('/')),
                    ));
                }
            }
        }
        // 1. preupload: the Hub says which files are LFS, which to ignore, which are unchanged.
        let mut modes: BTreeMap<String, (bool, bool, Option<String>)> = BTreeMap::new();
        let preupload_url = format!(
            "{}/api/models/{repo_id}/preupload/{}{pr_query}",
            self.http.endpoint(),
            quote(revision)
        );
        for chunk in adds.chunks(256) {
            let files: Vec<Value> = chunk
                .iter()
                .map(|p| json!({"path": p.path, "size": p.size,
                                "sample": base64::engine::general_purpose::STANDARD.encode(&p.sample)}))
                .collect();
            let body =
                serde_json::to_vec(&json!({"files": files})).map_err(json_err(&preupload_url))?;
            let (value, _) = self.http.json(
                "POST",
                &preupload_url,
                &[],
                &Payload::Bytes(&body, "application/json"),
                &subject,
                true,
            )?;
            for f in value
                .get("files")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(path) = f.get("path").and_then(Value::as_str) else {
                    continue;
                };
                let lfs = match f.get("uploadMode").and_then(Value::as_str) {
                    Some("lfs") => true,
                    Some("regular") => false,
                    other => {
                        return Err(HubError::Protocol {
                            url: preupload_url,
                            message: format!("uploadMode {other:?} for {path}"),
                        });
                    }
                };
                let ignore = f
                    .get("shouldIgnore")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let oid = f.get("oid").and_then(Value::as_str).map(str::to_string);
                modes.insert(path.to_string(), (lfs, ignore, oid));
            }
        }
        let mut regular = Vec::new();
        let mut lfs = Vec::new();
        for p in adds {
            let Some((is_lfs, ignore, remote)) = modes.get(&p.path).cloned() else {
                return Err(HubError::Protocol {
                    url: preupload_url,
                    message: format!("no upload mode for {}", p.path),
                });
            };
            // Empty files are always regular, as Python forces.
            let is_lfs = is_lfs && p.size > 0;
            let local = if is_lfs { &p.sha256 } else { &p.git_sha1 };
            if ignore {
                tracing::info!(path = %p.path, "the Hub ignores this file (.gitignore); skipped");
            } else if remote.as_deref() == Some(local.as_str()) {
                tracing::info!(path = %p.path, "unchanged on the Hub; skipped");
            } else if is_lfs {
                lfs.push(p);
            } else {
                regular.push(p);
            }
        }
        if regular.is_empty() && lfs.is_empty() && deletes.is_empty() {
            let head = self.repo_info(repo_id, revision)?.sha.unwrap_or_default();
            let repo_url = format!("{}/{repo_id}", self.http.endpoint());
            tracing::warn!(%repo_id, "no files have been modified since last commit; skipping commit");
            return Ok(CommitInfo {
                commit_url: format!("{repo_url}/commit/{head}"),
                commit_oid: head,
                repo_url,
                pr_url: None,
                pr_revision: None,
                pr_num: None,
            });
        }
        let total: u64 =
            lfs.iter().map(|p| p.size).sum::<u64>() + regular.iter().map(|p| p.size).sum::<u64>();
        progress.on_start(lfs.len() + regular.len(), total);
        // 2. LFS: batch, then upload and verify each object the Hub does not have.
        self.upload_lfs(repo_id, &lfs, options, progress)?;
        // 3. The commit itself.
        let mut lines = Vec::new();
        let mut head =
            json!({"summary": options.commit_message, "description": options.commit_description});
        if let Some(parent) = &options.parent_commit {
            head["parentCommit"] = json!(parent);
        }
        lines.push(json!({"key": "header", "value": head}));
        for p in &regular {
            let bytes = read_source(p)?;
            lines.push(json!({"key": "file", "value": {"content": base64::engine::general_purpose::STANDARD.encode(&bytes), "path": p.path, "encoding": "base64"}}));
            progress.on_file_start(&p.path, p.size);
            progress.on_bytes(&p.path, p.size);
            progress.on_file_done(&p.path);
        }
        for p in &lfs {
            lines.push(json!({"key": "lfsFile", "value": {"path": p.path, "algo": "sha256", "oid": p.sha256, "size": p.size}}));
        }
        for (key, path) in &deletes {
            lines.push(json!({"key": key, "value": {"path": path}}));
        }
        let mut body = Vec::new();
        for line in &lines {
            body.extend(serde_json::to_vec(line).map_err(json_err("commit"))?);
            body.push(b'\n');
        }
        let url = format!(
            "{}/api/models/{repo_id}/commit/{}{pr_query}",
            self.http.endpoint(),
            quote(revision)
        );
        let (value, _) = self.http.json(
            "POST",
            &url,
            &[],
            &Payload::Bytes(&body, "application/x-ndjson"),
            &subject,
            false,
        )?;
        let commit_oid = value
            .get("commitOid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let commit_url = value
            .get("commitUrl")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if commit_oid.is_empty() {
            return Err(HubError::Protocol {
                url,
                message: "commit answer has no commitOid".into(),
            });
        }
        let repo_url = commit_url
            .split_once("/commit/")
            .map(|(r, _)| r.to_string())
            .unwrap_or_else(|| format!("{}/{repo_id}", self.http.endpoint()));
        let pr_url = value
            .get("pullRequestUrl")
            .and_then(Value::as_str)
            .map(str::to_string);
        let pr_num = pr_url
            .as_deref()
            .and_then(|u| u.rsplit_once("/discussions/"))
            .and_then(|(_, n)| n.trim_end_matches('/').parse::<u64>().ok());
        tracing::info!(%repo_id, %commit_oid, pr = ?pr_url, "commit created");
        Ok(CommitInfo {
            commit_oid,
            commit_url,
            repo_url,
            pr_revision: pr_num.map(|n| format!("refs/pr/{n}")),
            pr_url,
            pr_num,
        })
    }

    fn upload_lfs(
        &self,
        repo_id: &str,
        lfs: &[Prepared],
        options: &CommitOptions,
        progress: &dyn Progress,
    ) -> Result<()> {
        let url = format!(
            "{}/{repo_id}.git/info/lfs/objects/batch",
            self.http.endpoint()
        );
        let subject = Subject {
            repo_id,
            revision: Some(&options.revision),
            path: None,
        };
        let lfs_headers = [("accept", LFS_JSON.to_string())];
        for chunk in lfs.chunks(256) {
            let objects: Vec<Value> = chunk
                .iter()
                .map(|p| json!({"oid": p.sha256, "size": p.size}))
                .collect();
            let mut body = json!({"operation": "upload", "transfers": ["basic", "multipart"], "objects": objects, "hash_algo": "sha256"});
            if !options.create_pr {
                body["ref"] = json!({"name": options.revision});
            }
            let bytes = serde_json::to_vec(&body).map_err(json_err(&url))?;
            let (answer, _) = self.http.json(
                "POST",
                &url,
                &lfs_headers,
                &Payload::Bytes(&bytes, LFS_JSON),
                &subject,
                true,
            )?;
            if answer
                .get("transfer")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "basic" && t != "multipart")
            {
                return Err(HubError::Protocol {
                    url,
                    message: "the server chose a transfer other than basic/multipart".into(),
                });
            }
            let answered = answer
                .get("objects")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for p in chunk {
                let object = answered
                    .iter()
                    .find(|o| o.get("oid").and_then(Value::as_str) == Some(p.sha256.as_str()));
                let Some(object) = object else {
                    return Err(HubError::Protocol {
                        url,
                        message: format!("LFS batch answer lacks {}", p.sha256),
                    });
                };
                if let Some(err) = object.get("error") {
                    return Err(HubError::LfsObject {
                        path: p.path.clone(),
                        oid: p.sha256.clone(),
                        code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                        message: self
                            .http
                            .scrub(err.get("message").and_then(Value::as_str).unwrap_or("")),
                    });
                }
                progress.on_file_start(&p.path, p.size);
                let Some(actions) = object.get("actions") else {
                    tracing::info!(path = %p.path, "LFS object already on the Hub");
                    progress.on_bytes(&p.path, p.size);
                    progress.on_file_done(&p.path);
                    continue;
                };
                if let Some(upload) = actions.get("upload") {
                    self.lfs_transfer(repo_id, p, upload, progress)?;
                }
                if let Some(verify) = actions.get("verify") {
                    let href = verify
                        .get("href")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let mut headers = action_headers(verify);
                    headers.push(("accept", LFS_JSON.to_string()));
                    let body = serde_json::to_vec(&json!({"oid": p.sha256, "size": p.size}))
                        .map_err(json_err(href))?;
                    let subject = Subject {
                        repo_id,
                        revision: None,
                        path: Some(&p.path),
                    };
                    self.http.send(
                        "POST",
                        href,
                        &headers,
                        &Payload::Bytes(&body, LFS_JSON),
                        &subject,
                        true,
                    )?;
                }
                progress.on_file_done(&p.path);
            }
        }
        Ok(())
    }

    fn lfs_transfer(
        &self,
        repo_id: &str,
        p: &Prepared,
        upload: &Value,
        progress: &dyn Progress,
    ) -> Result<()> {
        let href = upload
            .get("href")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let subject = Subject {
            repo_id,
            revision: None,
            path: Some(&p.path),
        };
        let header_map = upload
            .get("header")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let Some(chunk_size) = header_map.get("chunk_size") else {
            // Basic transfer: one PUT of the whole content.
            let headers = action_headers(upload);
            match &p.source {
                AddSource::File(file) => {
                    self.http
                        .send("PUT", &href, &headers, &Payload::File(file), &subject, true)?
                }
                AddSource::Bytes(bytes) => self.http.send(
                    "PUT",
                    &href,
                    &headers,
                    &Payload::Bytes(bytes, "application/octet-stream"),
                    &subject,
                    true,
                )?,
            };
            progress.on_bytes(&p.path, p.size);
            return Ok(());
        };
        // Multipart: numbered presigned part URLs, then a completion POST with the part ETags.
        let chunk_size: u64 = chunk_size
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| chunk_size.as_u64())
            .filter(|c| *c > 0)
            .ok_or_else(|| HubError::Protocol {
                url: href.clone(),
                message: "invalid chunk_size".into(),
            })?;
        let mut parts: Vec<(u64, String)> = header_map
            .iter()
            .filter_map(|(k, v)| Some((k.parse::<u64>().ok()?, v.as_str()?.to_string())))
            .collect();
        parts.sort();
        let expected = p.size.div_ceil(chunk_size);
        if parts.len() as u64 != expected {
            return Err(HubError::Protocol {
                url: href,
                message: format!("{} part URLs for {expected} parts", parts.len()),
            });
        }
        let bytes_of = |index: u64| -> Result<Vec<u8>> {
            let start = index * chunk_size;
            let len = chunk_size.min(p.size - start);
            match &p.source {
                AddSource::Bytes(b) => Ok(b
                    .get(start as usize..(start + len) as usize)
                    .unwrap_or_default()
                    .to_vec()),
                AddSource::File(f) => {
                    use std::io::Seek;
                    let mut file = std::fs::File::open(f).map_err(io_err(f))?;
                    file.seek(std::io::SeekFrom::Start(start))
                        .map_err(io_err(f))?;
                    let mut buf = Vec::with_capacity(len as usize);
                    file.take(len).read_to_end(&mut buf).map_err(io_err(f))?;
                    Ok(buf)
                }
            }
        };
        let mut done = Vec::new();
        for (index, (number, part_url)) in parts.iter().enumerate() {
            let bytes = bytes_of(index as u64)?;
            let resp = self.http.send(
                "PUT",
                part_url,
                &[],
                &Payload::Bytes(&bytes, "application/octet-stream"),
                &subject,
                true,
            )?;
            let etag =
                header(&resp, "etag")
                    .map(str::to_string)
                    .ok_or_else(|| HubError::Protocol {
                        url: part_url.clone(),
                        message: "part upload answered without an ETag".into(),
                    })?;
            done.push(json!({"partNumber": number, "etag": etag}));
            progress.on_bytes(&p.path, bytes.len() as u64);
        }
        let body = serde_json::to_vec(&json!({"oid": p.sha256, "parts": done}))
            .map_err(json_err(&href))?;
        let mut headers = vec![("accept", LFS_JSON.to_string())];
        headers.extend(action_headers(upload));
        self.http.send(
            "POST",
            &href,
            &headers,
            &Payload::Bytes(&body, LFS_JSON),
            &subject,
            true,
        )?;
        Ok(())
    }

    /// Python's `upload_folder`: every file under `folder` (minus `.git/` and
    /// `.cache/huggingface/`, filtered by the patterns) in one commit.
    pub fn upload_folder(
        &self,
        repo_id: &str,
        folder: &Path,
        options: &UploadFolderOptions,
        progress: &dyn Progress,
    ) -> Result<CommitInfo> {
        validate_repo_id(repo_id)?;
        let mut local = Vec::new();
        collect_files(folder, folder, &mut local)?;
        local.sort();
        let prefix = options.path_in_repo.trim_matches('/');
        let rel_paths: Vec<String> = local.iter().map(|(rel, _)| rel.clone()).collect();
        let keep = crate::snapshot::filter_paths(
            &rel_paths,
            options.allow_patterns.as_deref(),
            options.ignore_patterns.as_deref(),
        );
        let mut operations = Vec::new();
        let mut uploaded = std::collections::BTreeSet::new();
        for (rel, abs) in &local {
            if !keep.contains(rel) {
                continue;
            }
            let path_in_repo = if prefix.is_empty() {
                rel.clone()
            } else {
                format!("{prefix}/{rel}")
            };
            uploaded.insert(path_in_repo.clone());
            operations.push(CommitOperation::Add {
                path_in_repo,
                source: AddSource::File(abs.clone()),
            });
        }
        if let Some(patterns) = &options.delete_patterns {
            let remote: Vec<String> = self
                .list_repo_tree(repo_id, &options.commit.revision)?
                .into_iter()
                .filter(|e| e.kind == "file")
                .map(|e| e.path)
                .collect();
            let under: Vec<String> = remote
                .into_iter()
                .filter_map(|p| {
                    if prefix.is_empty() {
                        Some(p)
                    } else {
                        p.strip_prefix(&format!("{prefix}/")).map(str::to_string)
                    }
                })
                .collect();
            for rel in crate::snapshot::filter_paths(&under, Some(patterns), None) {
                let path_in_repo = if prefix.is_empty() {
                    rel.clone()
                } else {
                    format!("{prefix}/{rel}")
                };
                if rel != ".gitattributes" && !uploaded.contains(&path_in_repo) {
                    operations.push(CommitOperation::Delete { path_in_repo });
                }
            }
        }
        self.create_commit(repo_id, &operations, &options.commit, progress)
    }

    /// Deletes one file in a commit.
    pub fn delete_file(
        &self,
        repo_id: &str,
        path_in_repo: &str,
        options: &CommitOptions,
    ) -> Result<CommitInfo> {
        self.create_commit(
            repo_id,
            &[CommitOperation::Delete {
                path_in_repo: path_in_repo.into(),
            }],
            options,
            &crate::progress::NoProgress,
        )
    }

    /// Python's `create_pull_request` through a commit: `create_commit` with `create_pr`.
    pub fn create_pr(
        &self,
        repo_id: &str,
        operations: &[CommitOperation],
        options: &CommitOptions,
        progress: &dyn Progress,
    ) -> Result<CommitInfo> {
        let options = CommitOptions {
            create_pr: true,
            ..options.clone()
        };
        self.create_commit(repo_id, operations, &options, progress)
    }
}

/// Extra headers an LFS action asks for (string values; `chunk_size` and part numbers of a
/// multipart action are not headers).
fn action_headers(action: &Value) -> Vec<(&str, String)> {
    action
        .get("header")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter(|(k, _)| {
                    k.as_str() != "chunk_size"
                        && k.parse::<u64>().is_err()
                        && !k.eq_ignore_ascii_case("transfer-encoding")
                })
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let items = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for item in items {
        let item = item.map_err(io_err(dir))?;
        let path = item.path();
        let rel = path
            .strip_prefix(root)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        if rel == ".git" || rel.ends_with("/.git") || rel == ".cache/huggingface" {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            out.push((rel, path));
        }
    }
    Ok(())
}
