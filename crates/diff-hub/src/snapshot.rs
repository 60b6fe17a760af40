//! Repo info, tree listing, `snapshot_download` (parallel, pattern-filtered), the pipeline
//! download that plugs in diff-format's file selection, and `resolve` (folder or repo id).

use crate::HubApi;
use crate::cache::TreeCacheEntry;
use crate::config::{is_commit_hash, validate_file_path, validate_repo_id, validate_revision};
use crate::download::cache_fallback_allowed;
use crate::error::{HubError, Result};
use crate::http::{Payload, Subject, header, printable, quote, quote_path};
use crate::progress::Progress;
use diff_format::selection::fnmatch;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Pages of a tree listing read at most (the Hub serves 1,000 entries or more per page).
const MAX_TREE_PAGES: usize = 10_000;
/// Entries of a tree listing kept at most.
const MAX_TREE_ENTRIES: usize = 1_000_000;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// LFS details of a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct LfsInfo {
    /// sha256 of the content (`oid` in the tree API, `sha256` in repo info).
    #[serde(alias = "sha256")]
    pub oid: String,
    /// Content size.
    pub size: u64,
    /// Size of the pointer file.
    #[serde(rename = "pointerSize", default)]
    pub pointer_size: u64,
}

/// One entry of the tree API (`/api/models/{repo}/tree/{rev}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RepoEntry {
    /// `file` or `directory`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Git object id (blob sha1, or the LFS pointer's sha1).
    #[serde(default)]
    pub oid: String,
    /// Size in bytes (the real size for LFS files).
    #[serde(default)]
    pub size: u64,
    /// Repo-relative path.
    pub path: String,
    /// Present for LFS files.
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

/// A sibling in repo info.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Sibling {
    /// Repo-relative path.
    pub rfilename: String,
    /// Size (with `?blobs=true`).
    #[serde(default)]
    pub size: Option<u64>,
    /// Git object id (with `?blobs=true`).
    #[serde(rename = "blobId", default)]
    pub blob_id: Option<String>,
    /// LFS details (with `?blobs=true`).
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

/// Repo info (`/api/models/{repo}/revision/{rev}`): the fields downloads use.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct RepoInfo {
    /// `namespace/name`.
    pub id: String,
    /// The commit the revision resolved to.
    #[serde(default)]
    pub sha: Option<String>,
    /// Whether the repo is private.
    #[serde(default)]
    pub private: Option<bool>,
    /// `false`, `"auto"` or `"manual"`.
    #[serde(default)]
    pub gated: Option<serde_json::Value>,
    /// The files.
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// Options of [`HubApi::snapshot_download`].
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Branch, tag, full commit hash or `refs/pr/N` (default `main`).
    pub revision: String,
    /// Only files matching one of these (`fnmatch`; a trailing `/` means the whole folder).
    pub allow_patterns: Option<Vec<String>>,
    /// Drop files matching one of these.
    pub ignore_patterns: Option<Vec<String>>,
    /// Never touch the network for this call.
    pub local_files_only: bool,
    /// Download files again even when cached.
    pub force_download: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            revision: "main".into(),
            allow_patterns: None,
            ignore_patterns: None,
            local_files_only: false,
            force_download: false,
        }
    }
}

fn expand(patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .map(|p| {
            if p.ends_with('/') {
                format!("{p}*")
            } else {
                p.clone()
            }
        })
        .collect()
}

/// huggingface_hub's `filter_repo_objects`: keep paths matching an allow pattern (all when
/// `None`) and no ignore pattern.
pub fn filter_paths<'a>(
    paths: impl IntoIterator<Item = &'a String>,
    allow: Option<&[String]>,
    ignore: Option<&[String]>,
) -> Vec<String> {
    let allow = allow.map(expand);
    let ignore = ignore.map(expand).unwrap_or_default();
    paths
        .into_iter()
        .filter(|p| {
            allow
                .as_ref()
                .is_none_or(|a| a.iter().any(|pat| fnmatch(pat, p)))
        })
        .filter(|p| !ignore.iter().any(|pat| fnmatch(pat, p)))
        .cloned()
        .collect()
}

impl HubApi {
    /// `GET /api/models/{repo}/revision/{revision}`.
    pub fn repo_info(&self, repo_id: &str, revision: &str) -> Result<RepoInfo> {
        validate_repo_id(repo_id)?;
        validate_revision(revision)?;
        self.ensure_online(repo_id, revision, "repo info")?;
        let url = format!(
            "{}/api/models/{repo_id}/revision/{}",
            self.http.endpoint(),
            quote(revision)
        );
        let subject = Subject {
            repo_id,
            revision: Some(revision),
            path: None,
        };
        let (value, _) = self
            .http
            .json("GET", &url, &[], &Payload::Empty, &subject, true)?;
        serde_json::from_value(value).map_err(|e| HubError::Json {
            what: url,
            message: e.to_string(),
        })
    }

    /// The recursive file listing at a revision (`GET …/tree/{rev}?recursive=true`, following
    /// `Link: rel="next"` pages).
    pub fn list_repo_tree(&self, repo_id: &str, revision: &str) -> Result<Vec<RepoEntry>> {
        validate_repo_id(repo_id)?;
        validate_revision(revision)?;
        self.ensure_online(repo_id, revision, "tree listing")?;
        let subject = Subject {
            repo_id,
            revision: Some(revision),
            path: None,
        };
        let mut url = format!(
            "{}/api/models/{repo_id}/tree/{}?recursive=true&expand=false",
            self.http.endpoint(),
            quote(revision)
        );
        let mut entries = Vec::new();
        // A server whose `Link` header points back to a page already read would be followed
        // forever, each page adding its entries again: refuse repeated links, and cap the pages
        // and entries (the largest model repos list well under 100,000 files).
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_TREE_PAGES {
            if !seen.insert(url.clone()) {
                return Err(HubError::Protocol {
                    url: printable(&url),
                    message: "the tree listing's pagination links back to a page already read"
                        .into(),
                });
            }
            let (value, resp) =
                self.http
                    .json("GET", &url, &[], &Payload::Empty, &subject, true)?;
            let page: Vec<RepoEntry> =
                serde_json::from_value(value).map_err(|e| HubError::Json {
                    what: url.clone(),
                    message: e.to_string(),
                })?;
            entries.extend(page);
            if entries.len() > MAX_TREE_ENTRIES {
                return Err(HubError::Protocol {
                    url: printable(&url),
                    message: format!(
                        "the tree listing has more than {MAX_TREE_ENTRIES} entries; refusing to read further"
                    ),
                });
            }
            let next = header(&resp, "link").and_then(next_link);
            match next {
                Some(next) if self.http.is_hub_origin(&next) => url = next,
                Some(next) => {
                    return Err(HubError::Protocol {
                        url,
                        message: format!("pagination link to another origin: {}", printable(&next)),
                    });
                }
                None => return Ok(entries),
            }
        }
        Err(HubError::Protocol {
            url,
            message: format!("more than {MAX_TREE_PAGES} tree pages"),
        })
    }

    fn ensure_online(&self, repo_id: &str, revision: &str, what: &str) -> Result<()> {
        if self.offline {
            return Err(HubError::LocalEntryNotFound {
                repo_id: repo_id.into(),
                revision: revision.into(),
                what: what.into(),
                cache: self.cache.root().to_path_buf(),
            });
        }
        Ok(())
    }

    /// The commit and file listing at a revision, from `trees/<commit>.json` when cached.
    pub(crate) fn listing(
        &self,
        repo_id: &str,
        revision: &str,
    ) -> Result<(String, BTreeMap<String, TreeCacheEntry>)> {
        let commit = if is_commit_hash(revision) {
            revision.to_string()
        } else {
            let info = self.repo_info(repo_id, revision)?;
            let url = format!(
                "{}/api/models/{repo_id}/revision/{revision}",
                self.http.endpoint()
            );
            let sha = info.sha.ok_or(HubError::Protocol {
                url: url.clone(),
                message: "repo info has no `sha`".into(),
            })?;
            if !is_commit_hash(&sha) {
                return Err(HubError::Protocol {
                    url,
                    message: format!("`sha` {sha} is not a commit hash"),
                });
            }
            sha
        };
        if let Some(files) = self.cache.read_tree(repo_id, &commit) {
            return Ok((commit, files));
        }
        let mut files = BTreeMap::new();
        for entry in self.list_repo_tree(repo_id, &commit)? {
            if entry.kind != "file" {
                continue;
            }
            validate_file_path(&entry.path)?;
            files.insert(
                entry.path.clone(),
                TreeCacheEntry {
                    size: entry.size,
                    blob_id: entry.oid.clone(),
                    lfs_sha256: entry.lfs.as_ref().map(|l| l.oid.clone()),
                    lfs_size: entry.lfs.as_ref().map(|l| l.size),
                },
            );
        }
        self.cache.write_tree(repo_id, &commit, &files)?;
        Ok((commit, files))
    }

    /// Python's `snapshot_download`: every file of the revision matching the patterns, in the
    /// cache; returns `snapshots/<commit>`. Offline, the snapshot is returned from refs (with
    /// Python's completeness check when `trees/<commit>.json` exists).
    pub fn snapshot_download(
        &self,
        repo_id: &str,
        options: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        validate_repo_id(repo_id)?;
        validate_revision(&options.revision)?;
        let allow = options.allow_patterns.as_deref();
        let ignore = options.ignore_patterns.as_deref();
        if self.offline || options.local_files_only {
            return self.offline_snapshot(repo_id, &options.revision, allow, ignore);
        }
        let (commit, files) = match self.listing(repo_id, &options.revision) {
            Ok(v) => v,
            Err(err) if cache_fallback_allowed(&err) => {
                if let Ok(dir) = self.offline_snapshot(repo_id, &options.revision, allow, ignore) {
                    tracing::warn!(%repo_id, error = %err, "Hub unreachable, using the cached snapshot");
                    return Ok(dir);
                }
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        self.download_listing(
            repo_id,
            &options.revision,
            &commit,
            &files,
            allow,
            ignore,
            options.force_download,
            progress,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn download_listing(
        &self,
        repo_id: &str,
        revision: &str,
        commit: &str,
        files: &BTreeMap<String, TreeCacheEntry>,
        allow: Option<&[String]>,
        ignore: Option<&[String]>,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        let selected = filter_paths(files.keys(), allow, ignore);
        self.cache.ensure_tag()?;
        self.cache.write_ref(repo_id, revision, commit)?;
        let dir = self.cache.snapshot_dir(repo_id, commit);
        std::fs::create_dir_all(&dir).map_err(crate::error::io_err(&dir))?;
        let total: u64 = selected
            .iter()
            .filter_map(|p| files.get(p))
            .map(|e| e.size)
            .sum();
        progress.on_start(selected.len(), total);
        tracing::info!(%repo_id, %commit, files = selected.len(), bytes = total, "snapshot download");
        let next = AtomicUsize::new(0);
        let errors: Mutex<Vec<(usize, HubError)>> = Mutex::new(Vec::new());
        let workers = self.max_workers.clamp(1, selected.len().max(1));
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some(path) = selected.get(index) else {
                            break;
                        };
                        if let Err(e) = self.download_file(
                            repo_id,
                            path,
                            commit,
                            false,
                            force,
                            files.get(path),
                            progress,
                        ) {
                            errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((index, e));
                        }
                    }
                });
            }
        });
        let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
        errors.sort_by_key(|(i, _)| *i);
        if let Some((_, err)) = errors.into_iter().next() {
            return Err(err);
        }
        Ok(dir)
    }

    fn offline_snapshot(
        &self,
        repo_id: &str,
        revision: &str,
        allow: Option<&[String]>,
        ignore: Option<&[String]>,
    ) -> Result<PathBuf> {
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
        let dir = self.cache.snapshot_dir(repo_id, &commit);
        if !dir.is_dir() {
            return Err(missing(format!("snapshots/{commit}")));
        }
        if let Some(files) = self.cache.read_tree(repo_id, &commit) {
            let absent: Vec<String> = filter_paths(files.keys(), allow, ignore)
                .into_iter()
                .filter(|p| !dir.join(p).exists())
                .collect();
            if !absent.is_empty() {
                return Err(HubError::IncompleteSnapshot {
                    repo_id: repo_id.into(),
                    commit,
                    missing: absent,
                });
            }
        }
        Ok(dir)
    }

    /// diffusers' `DiffusionPipeline.download`: list the repo, fetch `model_index.json`, let
    /// diff-format's selection rules compute the allow/ignore patterns (variant, safetensors
    /// vs `.bin`, passed components), then download only those files.
    pub fn download_pipeline(
        &self,
        repo_id: &str,
        revision: &str,
        selection: &diff_format::SelectionOptions,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        validate_repo_id(repo_id)?;
        validate_revision(revision)?;
        let plan_for =
            |listing: &BTreeSet<String>, model_index: &Path| -> Result<diff_format::DownloadPlan> {
                let index = diff_format::ModelIndex::load(model_index).map_err(|source| {
                    HubError::Selection {
                        repo_id: repo_id.into(),
                        source,
                    }
                })?;
                let plan = diff_format::download_plan(listing, &index, selection, repo_id)
                    .map_err(|source| HubError::Selection {
                        repo_id: repo_id.into(),
                        source,
                    })?;
                for warning in &plan.warnings {
                    tracing::warn!(%repo_id, "{warning}");
                }
                Ok(plan)
            };
        if self.offline {
            // Empty allow list: resolve the snapshot without the completeness check yet.
            let dir = self.offline_snapshot(repo_id, revision, Some(&[]), None)?;
            let commit = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(files) = self.cache.read_tree(repo_id, &commit) {
                let listing: BTreeSet<String> = files.keys().cloned().collect();
                let plan = plan_for(&listing, &dir.join("model_index.json"))?;
                return self.offline_snapshot(
                    repo_id,
                    revision,
                    Some(&plan.allow_patterns),
                    Some(&plan.ignore_patterns),
                );
            }
            return Ok(dir);
        }
        let (commit, files) = self.listing(repo_id, revision)?;
        let index_path = self.download_file(
            repo_id,
            "model_index.json",
            &commit,
            false,
            false,
            files.get("model_index.json"),
            progress,
        )?;
        let listing: BTreeSet<String> = files.keys().cloned().collect();
        let plan = plan_for(&listing, &index_path)?;
        self.download_listing(
            repo_id,
            revision,
            &commit,
            &files,
            Some(&plan.allow_patterns),
            Some(&plan.ignore_patterns),
            false,
            progress,
        )
    }

    /// The one repo-id-or-folder rule of burn-diffusers: a local folder as is (no network),
    /// or a repo id downloaded with [`HubApi::download_pipeline`] (diffusers' file selection
    /// for `selection`) at `revision`, through this client's endpoint, cache and offline mode.
    /// Every command taking a "folder or repo id" and `DiffusionPipeline::from_pretrained`
    /// call this (or [`HubApi::resolve_snapshot`] for a pattern selection).
    pub fn resolve(
        &self,
        repo_or_folder: &str,
        revision: &str,
        selection: &diff_format::SelectionOptions,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        if let Some(folder) = local_folder(repo_or_folder)? {
            return Ok(folder);
        }
        self.download_pipeline(repo_or_folder, revision, selection, progress)
    }

    /// [`HubApi::resolve`] with a pattern selection (`options.allow_patterns`, revision,
    /// `local_files_only`) instead of a pipeline's: a local folder as is, or a repo id through
    /// [`HubApi::snapshot_download`] (e.g. the configs of a single-file conversion).
    pub fn resolve_snapshot(
        &self,
        repo_or_folder: &str,
        options: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        if let Some(folder) = local_folder(repo_or_folder)? {
            return Ok(folder);
        }
        self.snapshot_download(repo_or_folder, options, progress)
    }

    /// The URL of a file for display (`{endpoint}/{repo}/blob/{rev}/{path}`).
    pub fn file_url(&self, repo_id: &str, revision: &str, path: &str) -> String {
        format!(
            "{}/{repo_id}/blob/{}/{}",
            self.http.endpoint(),
            quote(revision),
            quote_path(path)
        )
    }
}

/// `Some(folder)` when `repo_or_folder` is an existing folder; an error when it is an existing
/// file or neither a folder nor a valid `namespace/name` repo id; `None` for a repo id.
fn local_folder(repo_or_folder: &str) -> Result<Option<PathBuf>> {
    let local = Path::new(repo_or_folder);
    if local.is_dir() {
        return Ok(Some(local.to_path_buf()));
    }
    if local.exists() {
        return Err(HubError::InvalidRepoId {
            repo_id: repo_or_folder.into(),
            reason: "this is a file; expected a diffusers folder or a repo id".into(),
        });
    }
    if validate_repo_id(repo_or_folder).is_err() {
        return Err(HubError::InvalidRepoId {
            repo_id: repo_or_folder.into(),
            reason: "not an existing folder, and not a valid `namespace/name` repo id".into(),
        });
    }
    Ok(None)
}

/// The `rel="next"` URL of an RFC 5988 `Link` header.
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}
