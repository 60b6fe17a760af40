//! Small file-system helpers: atomic writes, so a crash never leaves a half-written output.

use crate::error::FormatError;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary name used while writing `path`: a hidden sibling unique to this process and call.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.incomplete", std::process::id()))
}

/// Writes `bytes` to `path` by writing a temporary sibling, syncing it and renaming it over
/// `path`, so readers see either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    let tmp = temporary_name(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(err) = result {
        // Best effort: the temporary file is garbage whether or not removing it works.
        let _ = std::fs::remove_file(&tmp);
        return Err(FormatError::io(path, err));
    }
    Ok(())
}
