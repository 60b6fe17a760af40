//! Listing a local pipeline folder the way the selection rules expect it.

use crate::error::FormatError;
use std::collections::BTreeSet;
use std::path::Path;

/// Lists every regular file under `root` as a repo-relative path with `/` separators, like a
/// Hub repository's file list. Hidden entries (names starting with `.`, e.g. the `.cache/`
/// folder `huggingface-cli download --local-dir` leaves behind, or our own `.…incomplete`
/// temporary files) are skipped: they are never part of a repository. Symbolic links are
/// followed (the Hub cache's snapshot folders are made of them); nesting is capped at 16 levels.
pub fn list_files(root: &Path) -> Result<BTreeSet<String>, FormatError> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(root.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| FormatError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| FormatError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::metadata(&path).map_err(|e| FormatError::io(&path, e))?;
            if meta.is_dir() {
                if depth < 16 {
                    stack.push((path, rel, depth + 1));
                }
            } else if meta.is_file() {
                out.insert(rel);
            }
        }
    }
    Ok(out)
}
