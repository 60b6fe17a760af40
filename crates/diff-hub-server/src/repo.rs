//! Repos, refs and commits: a plain folder is the `main` branch; everything else is kept in
//! `ROOT/.hub-server/` (content-addressed objects and a `state.json` with refs and commits).

use serde::{Deserialize, Serialize};
use sha1::Digest;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Name of the server's own folder inside the root (never a repo).
pub(crate) const STATE_DIR: &str = ".hub-server";

/// Extensions the server stores with LFS, like the Hub's default `.gitattributes`.
const LFS_EXTENSIONS: &[&str] = &[
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "ftz",
    "gguf",
    "gz",
    "h5",
    "joblib",
    "mlmodel",
    "model",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "ot",
    "parquet",
    "pb",
    "pickle",
    "pkl",
    "png",
    "jpg",
    "pt",
    "pth",
    "rar",
    "safetensors",
    "tar",
    "tflite",
    "tgz",
    "wasm",
    "xz",
    "zip",
    "zst",
];

/// Whether the Hub would store this path with LFS from its name alone.
pub fn is_lfs_path(path: &str) -> bool {
    path.rsplit_once('.')
        .is_some_and(|(_, ext)| LFS_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// The git blob id of some bytes: `sha1("blob <len>\0" + bytes)`.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// The git-lfs pointer file for an object.
pub(crate) fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// Whether a file should be LFS: by name, by a NUL byte in its first 512 bytes, or by size.
pub(crate) fn decide_lfs(path: &str, sample: &[u8], size: u64, regular_limit: u64) -> bool {
    size > 0 && (is_lfs_path(path) || sample.contains(&0) || size > regular_limit)
}

/// Where a file's bytes are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Source {
    /// In the repo folder at the entry's path (only valid for the current `main`).
    Folder,
    /// In `.hub-server/objects/<sha256>`.
    Object,
}

/// One file of a commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub size: u64,
    pub sha256: String,
    /// Git blob id of the content (regular file) or of the LFS pointer (LFS file).
    pub oid: String,
    pub lfs: bool,
    pub source: Source,
}

impl Entry {
    /// The ETag the Hub sends for this file on `/resolve/`.
    pub(crate) fn etag(&self) -> &str {
        if self.lfs { &self.sha256 } else { &self.oid }
    }
}

/// A commit: a full file listing.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct Commit {
    pub files: BTreeMap<String, Entry>,
    pub parent: Option<String>,
    pub summary: String,
}

/// The commit id derived from a listing (stable across restarts).
pub(crate) fn commit_id(files: &BTreeMap<String, Entry>) -> String {
    let mut h = sha1::Sha1::new();
    h.update(b"burn-diffusers test hub tree\n");
    for (path, entry) in files {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(entry.oid.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

/// Per-repo metadata and non-`main` history.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct RepoMeta {
    pub private: bool,
    pub gated: bool,
    /// Refs other than `main` (which always follows the folder).
    pub refs: BTreeMap<String, String>,
    pub commits: HashMap<String, Commit>,
    pub main: Option<String>,
    pub next_pr: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    repos: BTreeMap<String, RepoMeta>,
}

/// Cache of file hashes keyed by path, length and modification time.
type HashCache = HashMap<PathBuf, (u64, Option<SystemTime>, String, String, bool)>;

/// All repos under the root.
pub(crate) struct Repos {
    root: PathBuf,
    state: Persisted,
    hashes: HashCache,
    /// sha256 → file in a repo folder, for LFS files served from folders.
    folder_objects: HashMap<String, PathBuf>,
    pub(crate) regular_limit: u64,
}

/// Checks one path component of a repo id or file path.
pub(crate) fn safe_component(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains(['\\', '\0'])
}

impl Repos {
    pub(crate) fn open(root: &Path) -> std::io::Result<Self> {
        let state_file = root.join(STATE_DIR).join("state.json");
        let state = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => Persisted::default(),
        };
        std::fs::create_dir_all(root.join(STATE_DIR).join("objects"))?;
        Ok(Self {
            root: root.to_path_buf(),
            state,
            hashes: HashMap::new(),
            folder_objects: HashMap::new(),
            regular_limit: 10 * 1024 * 1024,
        })
    }

    pub(crate) fn objects_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR).join("objects")
    }

    pub(crate) fn object_path(&self, sha256: &str) -> PathBuf {
        self.objects_dir().join(sha256)
    }

    pub(crate) fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.root.join(repo_id)
    }

    pub(crate) fn exists(&self, repo_id: &str) -> bool {
        self.repo_dir(repo_id).is_dir()
    }

    pub(crate) fn meta_mut(&mut self, repo_id: &str) -> &mut RepoMeta {
        self.state.repos.entry(repo_id.to_string()).or_default()
    }

    pub(crate) fn meta(&self, repo_id: &str) -> Option<&RepoMeta> {
        self.state.repos.get(repo_id)
    }

    pub(crate) fn save(&self) {
        let dir = self.root.join(STATE_DIR);
        let tmp = dir.join("state.json.tmp");
        if let Ok(bytes) = serde_json::to_vec_pretty(&self.state)
            && std::fs::write(&tmp, bytes).is_ok()
        {
            let _ = std::fs::rename(&tmp, dir.join("state.json"));
        }
    }

    /// Lists the folder as a commit (hashing only files that changed since the last scan).
    fn scan(&mut self, repo_id: &str) -> std::io::Result<BTreeMap<String, Entry>> {
        let base = self.repo_dir(repo_id);
        let mut files = BTreeMap::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for item in std::fs::read_dir(&dir)? {
                let item = item?;
                let path = item.path();
                let name = item.file_name().to_string_lossy().into_owned();
                if name == ".git" || name.ends_with(".hub-tmp") {
                    continue;
                }
                let meta = std::fs::metadata(&path)?;
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(&base)
                    .map_err(std::io::Error::other)?
                    .to_string_lossy()
                    .replace('\\', "/");
                let key = (meta.len(), meta.modified().ok());
                let (oid, sha256, lfs) = match self.hashes.get(&path) {
                    Some((len, time, oid, sha, lfs)) if (*len, *time) == key => {
                        (oid.clone(), sha.clone(), *lfs)
                    }
                    _ => {
                        let bytes = std::fs::read(&path)?;
                        let sha256 = sha256_hex(&bytes);
                        let sample = &bytes[..bytes.len().min(512)];
                        let lfs = decide_lfs(&rel, sample, meta.len(), self.regular_limit);
                        let oid = if lfs {
                            git_blob_sha1(lfs_pointer(&sha256, meta.len()).as_bytes())
                        } else {
                            git_blob_sha1(&bytes)
                        };
                        self.hashes.insert(
                            path.clone(),
                            (key.0, key.1, oid.clone(), sha256.clone(), lfs),
                        );
                        (oid, sha256, lfs)
                    }
                };
                if lfs {
                    self.folder_objects.insert(sha256.clone(), path.clone());
                }
                files.insert(
                    rel,
                    Entry {
                        size: meta.len(),
                        sha256,
                        oid,
                        lfs,
                        source: Source::Folder,
                    },
                );
            }
        }
        Ok(files)
    }

    /// Re-reads the folder and returns the current `main` commit id, recording a new commit
    /// when the folder changed.
    pub(crate) fn refresh(&mut self, repo_id: &str) -> std::io::Result<String> {
        let files = self.scan(repo_id)?;
        let id = commit_id(&files);
        let meta = self.meta_mut(repo_id);
        if meta.main.as_deref() != Some(id.as_str()) {
            let parent = meta.main.take();
            // The previous `main` pointed into the folder, which has changed: drop it unless it
            // was materialised (API commits materialise it before writing).
            if let Some(old) = &parent
                && meta
                    .commits
                    .get(old)
                    .is_some_and(|c| c.files.values().any(|e| e.source == Source::Folder))
            {
                meta.commits.remove(old);
            }
            meta.commits.insert(
                id.clone(),
                Commit {
                    files,
                    parent,
                    summary: "folder content".into(),
                },
            );
            meta.main = Some(id.clone());
        }
        Ok(id)
    }

    /// Resolves a revision (branch, tag, `refs/pr/N`, full commit id) to a commit id.
    pub(crate) fn resolve(
        &mut self,
        repo_id: &str,
        revision: &str,
    ) -> std::io::Result<Option<String>> {
        let main = self.refresh(repo_id)?;
        if revision == "main" {
            return Ok(Some(main));
        }
        let meta = self.meta_mut(repo_id);
        if let Some(commit) = meta.refs.get(revision) {
            return Ok(Some(commit.clone()));
        }
        if revision.len() == 40 && meta.commits.contains_key(revision) {
            return Ok(Some(revision.to_string()));
        }
        Ok(None)
    }

    pub(crate) fn commit(&self, repo_id: &str, id: &str) -> Option<&Commit> {
        self.meta(repo_id)?.commits.get(id)
    }

    /// Copies every folder-backed file of a commit into the object store, so the commit stays
    /// readable after the folder changes.
    pub(crate) fn materialise(&mut self, repo_id: &str, id: &str) -> std::io::Result<()> {
        let base = self.repo_dir(repo_id);
        let objects = self.objects_dir();
        let Some(commit) = self.meta_mut(repo_id).commits.get_mut(id) else {
            return Ok(());
        };
        for (path, entry) in commit.files.iter_mut() {
            if entry.source == Source::Folder {
                let target = objects.join(&entry.sha256);
                if !target.is_file() {
                    let tmp = objects.join(format!("{}.hub-tmp", entry.sha256));
                    std::fs::copy(base.join(path), &tmp)?;
                    std::fs::rename(&tmp, &target)?;
                }
                entry.source = Source::Object;
            }
        }
        Ok(())
    }

    /// Path of a file's bytes.
    pub(crate) fn file_path(&self, repo_id: &str, path: &str, entry: &Entry) -> PathBuf {
        match entry.source {
            Source::Folder => self.repo_dir(repo_id).join(path),
            Source::Object => self.object_path(&entry.sha256),
        }
    }

    /// Stores bytes in the object store and returns the entry describing them.
    pub(crate) fn store_object(
        &self,
        path: &str,
        bytes: &[u8],
        lfs: bool,
    ) -> std::io::Result<Entry> {
        let sha256 = sha256_hex(bytes);
        let target = self.object_path(&sha256);
        if !target.is_file() {
            let tmp = self.objects_dir().join(format!("{sha256}.hub-tmp"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &target)?;
        }
        let _ = path;
        Ok(entry_for(bytes, sha256, lfs))
    }

    /// Where the bytes of an LFS object are: the object store, or a repo folder.
    pub(crate) fn lfs_file(&self, sha256: &str) -> Option<PathBuf> {
        let stored = self.object_path(sha256);
        if stored.is_file() {
            return Some(stored);
        }
        self.folder_objects
            .get(sha256)
            .filter(|p| p.is_file())
            .cloned()
    }

    /// Reads the size of a stored object.
    pub(crate) fn object_size(&self, sha256: &str) -> Option<u64> {
        std::fs::metadata(self.object_path(sha256))
            .ok()
            .map(|m| m.len())
    }

    /// Writes a new `main` into the folder: `files` is the full new listing.
    pub(crate) fn write_main(
        &mut self,
        repo_id: &str,
        files: &BTreeMap<String, Entry>,
    ) -> std::io::Result<String> {
        let base = self.repo_dir(repo_id);
        let old = self.scan(repo_id)?;
        for path in old.keys() {
            if !files.contains_key(path) {
                std::fs::remove_file(base.join(path))?;
            }
        }
        for (path, entry) in files {
            if old.get(path).is_some_and(|e| e.oid == entry.oid) {
                continue;
            }
            let target = base.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let tmp = target.with_file_name(format!(
                "{}.hub-tmp",
                target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            std::fs::copy(self.object_path(&entry.sha256), &tmp)?;
            std::fs::rename(&tmp, &target)?;
        }
        remove_empty_dirs(&base);
        self.refresh(repo_id)
    }

    /// Records a commit that is not `main` (a PR head or another branch).
    pub(crate) fn add_commit(
        &mut self,
        repo_id: &str,
        files: BTreeMap<String, Entry>,
        parent: Option<String>,
        summary: String,
    ) -> String {
        let id = commit_id(&files);
        self.meta_mut(repo_id).commits.insert(
            id.clone(),
            Commit {
                files,
                parent,
                summary,
            },
        );
        id
    }

    /// Deletes a repo folder and its metadata.
    pub(crate) fn delete(&mut self, repo_id: &str) -> std::io::Result<()> {
        std::fs::remove_dir_all(self.repo_dir(repo_id))?;
        self.state.repos.remove(repo_id);
        self.save();
        Ok(())
    }
}

/// Entry for bytes stored in the object store.
pub(crate) fn entry_for(bytes: &[u8], sha256: String, lfs: bool) -> Entry {
    let size = bytes.len() as u64;
    let oid = if lfs {
        git_blob_sha1(lfs_pointer(&sha256, size).as_bytes())
    } else {
        git_blob_sha1(bytes)
    };
    Entry {
        size,
        sha256,
        oid,
        lfs,
        source: Source::Object,
    }
}

/// Entry for an LFS object already in the store (known size and sha256).
pub(crate) fn lfs_entry(sha256: &str, size: u64) -> Entry {
    Entry {
        size,
        sha256: sha256.to_string(),
        oid: git_blob_sha1(lfs_pointer(sha256, size).as_bytes()),
        lfs: true,
        source: Source::Object,
    }
}

fn remove_empty_dirs(dir: &Path) -> bool {
    let Ok(items) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut empty = true;
    for item in items.flatten() {
        let path = item.path();
        if path.is_dir() {
            if remove_empty_dirs(&path) {
                let _ = std::fs::remove_dir(&path);
            } else {
                empty = false;
            }
        } else {
            empty = false;
        }
    }
    empty
}
