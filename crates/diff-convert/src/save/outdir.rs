//! Output-folder rules of a save (issue 18): the destination resolved to an absolute path (so
//! `.` and `..` have a name and a parent), never inside the source folder, and the temporary
//! folders of saves whose process died cleaned up.

use crate::ConvertError;
use std::path::{Path, PathBuf};

/// `path` made absolute with `.` and `..` resolved, following symbolic links as far as the path
/// exists (the rest is appended as written, without `.` / `..`).
pub(super) fn resolved(path: &Path) -> Result<PathBuf, ConvertError> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| ConvertError::io(path, e))?
            .join(path)
    };
    let mut existing = absolute.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            for part in rest.iter().rev() {
                match part.to_str() {
                    Some(".") => {}
                    Some("..") => {
                        out.pop();
                    }
                    _ => out.push(part),
                }
            }
            return Ok(out);
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return Ok(absolute),
        }
    }
}

/// Refuses an output folder that is the source folder or lies inside it: the save would copy
/// the folder into itself (`save SRC --out SRC/..`), or replace the source while reading it.
pub(super) fn check_not_inside(src: &Path, dst: &Path) -> Result<(), ConvertError> {
    let (src_real, dst_real) = (resolved(src)?, resolved(dst)?);
    if dst_real.starts_with(&src_real) {
        return Err(ConvertError::OutputFolder {
            path: dst.to_path_buf(),
            reason: format!(
                "it is the source folder {} or inside it; save to a folder outside the source",
                src.display()
            ),
        });
    }
    Ok(())
}

/// Whether process `pid` is alive. Only Linux can tell (through `/proc`); elsewhere every
/// process counts as alive, so nothing of another save is ever touched.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Cleans up what saves to `base` in `parent` left when their process died: an
/// `.<base>.incomplete-<pid>` folder is deleted; an `.<base>.previous-<pid>` folder (the process
/// died between the two renames of the swap) is the previous destination: it is put back when
/// the destination is missing, deleted otherwise.
pub(super) fn clean_stale(parent: &Path, base: &str, dst: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(&format!(".{base}.")) else {
            continue;
        };
        let (kind, pid) = match rest.split_once('-') {
            Some((kind @ ("incomplete" | "previous"), pid)) => match pid.parse::<u32>() {
                Ok(pid) => (kind, pid),
                Err(_) => continue,
            },
            _ => continue,
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        if kind == "previous" && !dst.exists() {
            tracing::warn!("restoring {} from an interrupted save", dst.display());
            let _ = std::fs::rename(&path, dst);
        } else {
            tracing::info!("removing {} left by an interrupted save", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
