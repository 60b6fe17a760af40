//! The Hugging Face cache layout, byte-compatible with Python's `huggingface_hub`:
//! `models--org--name/{blobs,snapshots,refs,.no_exist,trees}`, relative symlinks from snapshots
//! into blobs (copies where links are impossible), refs without a trailing newline, locks in
//! `<cache>/.locks/`, and a `CACHEDIR.TAG`.

use crate::config::{is_commit_hash, validate_file_path, validate_repo_id, validate_revision};
use crate::error::{HubError, Result, io_err};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the cache knows about one file at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedFile {
    /// The file is in the snapshot.
    Found(PathBuf),
    /// A `.no_exist` marker says the file does not exist at that commit.
    NoExist,
    /// The cache does not know.
    Missing,
}

/// One entry of a cached tree listing (`trees/<commit>.json`, Python ≥1.22 format 1).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeCacheEntry {
    /// File size.
    pub size: u64,
    /// Git blob id.
    pub blob_id: String,
    /// LFS sha256, for LFS files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfs_sha256: Option<String>,
    /// LFS size, for LFS files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfs_size: Option<u64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TreeCacheFile {
    format_version: u32,
    files: BTreeMap<String, TreeCacheEntry>,
}

/// A Hugging Face hub cache folder.
#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
    disable_symlinks: bool,
}

/// A unique-enough suffix for temporary names (process id, thread, time).
pub(crate) fn temp_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

/// Writes a file atomically: a temporary name in the same folder, then a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{name}.{}.tmp", temp_suffix()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

impl HubCache {
    /// A cache rooted at `root` (the folder holding `models--…`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            disable_symlinks: false,
        }
    }

    /// Makes snapshots hold copies instead of symlinks (`HF_HUB_DISABLE_SYMLINKS`).
    pub fn with_symlinks_disabled(mut self, disabled: bool) -> Self {
        self.disable_symlinks = disabled;
        self
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models--org--name`.
    pub fn repo_folder_name(repo_id: &str) -> String {
        format!("models--{}", repo_id.replace('/', "--"))
    }

    /// `<cache>/models--org--name`.
    pub fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.root.join(Self::repo_folder_name(repo_id))
    }

    /// `<cache>/models--org--name/snapshots/<commit>`.
    pub fn snapshot_dir(&self, repo_id: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo_id).join("snapshots").join(commit)
    }

    /// `<cache>/models--org--name/blobs/<etag>`.
    pub fn blob_path(&self, repo_id: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo_id).join("blobs").join(etag)
    }

    fn ref_path(&self, repo_id: &str, revision: &str) -> PathBuf {
        let mut path = self.repo_dir(repo_id).join("refs");
        for part in revision.split('/') {
            path.push(part);
        }
        path
    }

    /// Reads `refs/<revision>` exactly as Python does (no trimming: a trailing newline is a
    /// corrupt ref for Python, and for us).
    pub fn read_ref(&self, repo_id: &str, revision: &str) -> Option<String> {
        validate_revision(revision).ok()?;
        let text = std::fs::read_to_string(self.ref_path(repo_id, revision)).ok()?;
        is_commit_hash(&text).then_some(text)
    }

    /// Writes `refs/<revision>` (no trailing newline), atomically and only when it changes, so a
    /// read-only cache keeps working.
    pub fn write_ref(&self, repo_id: &str, revision: &str, commit: &str) -> Result<()> {
        validate_revision(revision)?;
        if revision == commit || self.read_ref(repo_id, revision).as_deref() == Some(commit) {
            return Ok(());
        }
        write_atomic(&self.ref_path(repo_id, revision), commit.as_bytes())
    }

    /// The commit a revision resolves to without network: a full hash is itself, anything else
    /// needs `refs/<revision>`.
    pub fn resolve_commit(&self, repo_id: &str, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            Some(revision.to_string())
        } else {
            self.read_ref(repo_id, revision)
        }
    }

    /// Python's `try_to_load_from_cache`: the cached file, a `.no_exist` marker, or nothing.
    pub fn try_to_load_from_cache(&self, repo_id: &str, revision: &str, path: &str) -> CachedFile {
        if validate_repo_id(repo_id).is_err() || validate_file_path(path).is_err() {
            return CachedFile::Missing;
        }
        let Some(commit) = self.resolve_commit(repo_id, revision) else {
            return CachedFile::Missing;
        };
        let file = self.snapshot_dir(repo_id, &commit).join(path);
        if file.exists() {
            return CachedFile::Found(file);
        }
        if self
            .repo_dir(repo_id)
            .join(".no_exist")
            .join(&commit)
            .join(path)
            .exists()
        {
            return CachedFile::NoExist;
        }
        CachedFile::Missing
    }

    /// Records that `path` does not exist at `commit` (an empty `.no_exist` marker).
    pub fn mark_no_exist(&self, repo_id: &str, commit: &str, path: &str) -> Result<()> {
        validate_file_path(path)?;
        let marker = self
            .repo_dir(repo_id)
            .join(".no_exist")
            .join(commit)
            .join(path);
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::File::create(&marker).map_err(io_err(&marker))?;
        Ok(())
    }

    /// Creates `CACHEDIR.TAG` (the cache directory tagging standard) if missing.
    pub fn ensure_tag(&self) -> Result<()> {
        let tag = self.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            write_atomic(
                &tag,
                b"Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by huggingface_hub.\n# For information about cache directory tags, see:\n#\thttps://bford.info/cachedir/\n",
            )?;
        }
        Ok(())
    }

    /// Makes `snapshots/<commit>/<path>` point at `blobs/<etag>`: a relative symlink (the
    /// same target string Python writes), or a copy when links are disabled or impossible.
    pub fn link_snapshot(
        &self,
        repo_id: &str,
        commit: &str,
        path: &str,
        etag: &str,
    ) -> Result<PathBuf> {
        validate_file_path(path)?;
        let target = self.snapshot_dir(repo_id, commit).join(path);
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let blob = self.blob_path(repo_id, etag);
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            temp_suffix()
        ));
        let depth = path.matches('/').count() + 2;
        let relative = format!("{}blobs/{etag}", "../".repeat(depth));
        let linked = !self.disable_symlinks && make_symlink(Path::new(&relative), &tmp).is_ok();
        if !linked {
            std::fs::copy(&blob, &tmp).map_err(io_err(&blob))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            HubError::Io {
                path: target.clone(),
                source: e,
            }
        })?;
        Ok(target)
    }

    /// Writes `trees/<commit>.json` (Python ≥1.22 reads it for its offline completeness check).
    pub fn write_tree(
        &self,
        repo_id: &str,
        commit: &str,
        files: &BTreeMap<String, TreeCacheEntry>,
    ) -> Result<()> {
        let body = TreeCacheFile {
            format_version: 1,
            files: files.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&body).map_err(|e| HubError::Json {
            what: "tree cache".into(),
            message: e.to_string(),
        })?;
        write_atomic(
            &self
                .repo_dir(repo_id)
                .join("trees")
                .join(format!("{commit}.json")),
            &bytes,
        )
    }

    /// Reads `trees/<commit>.json`, ignoring a missing or corrupt file (as Python does).
    pub fn read_tree(
        &self,
        repo_id: &str,
        commit: &str,
    ) -> Option<BTreeMap<String, TreeCacheEntry>> {
        let path = self
            .repo_dir(repo_id)
            .join("trees")
            .join(format!("{commit}.json"));
        let bytes = std::fs::read(path).ok()?;
        let file: TreeCacheFile = serde_json::from_slice(&bytes).ok()?;
        (file.format_version == 1).then_some(file.files)
    }

    /// Takes the per-blob lock `<cache>/.locks/<repo folder>/<etag>.lock` (flock, shared with
    /// Python's `filelock`); released when the returned file is dropped.
    pub(crate) fn lock_blob(&self, repo_id: &str, etag: &str) -> Result<std::fs::File> {
        let dir = self
            .root
            .join(".locks")
            .join(Self::repo_folder_name(repo_id));
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{etag}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(file)
    }
}

#[cfg(unix)]
fn make_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn make_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(target, link)
}

#[cfg(not(any(unix, windows)))]
fn make_symlink(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("symlinks unsupported"))
}
