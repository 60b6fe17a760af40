//! Small file-system helpers: atomic writes, so a crash never leaves a half-written output, and
//! the output-path rules every writer of a user-named file follows.
//!
//! # Output-path rules
//! - A symbolic link is written *through*: the file it points at is replaced, the link stays
//!   (as `sed -i --follow-symlinks`, editors and Python's `open(path, "wb")` do).
//! - Only a regular file is ever replaced. A folder, FIFO, character or block device or socket
//!   at the path (or at the end of its links) is refused with [`FormatError::OutputPath`], so
//!   `--out /dev/full` or `--out some-fifo` never turns a special file into an image.
//! - The folder the file goes into must exist; [`output_target`] checks this before any work
//!   starts, so a typo in `--out` fails in a millisecond, not after a denoising loop.

use crate::error::FormatError;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Symbolic links followed before giving up (Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// The temporary name used while writing `path`: a hidden sibling unique to this process and call.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.incomplete", std::process::id()))
}

/// Describes a file type in words for error messages.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// The file a write to `path` must replace, after the output-path rules (module doc): `path`
/// itself, or the end of its chain of symbolic links. Errors when that is not a regular file,
/// when the links loop, or when its folder does not exist.
pub fn output_target(path: &Path) -> Result<PathBuf, FormatError> {
    let refuse = |reason: String| FormatError::OutputPath {
        path: path.to_path_buf(),
        reason,
    };
    if path.as_os_str().is_empty() {
        return Err(refuse("the path is empty".into()));
    }
    let mut current = path.to_path_buf();
    for _ in 0..=MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link =
                    std::fs::read_link(&current).map_err(|e| FormatError::io(&current, e))?;
                current = match current.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                };
            }
            Ok(meta) if meta.is_file() => return Ok(current),
            Ok(meta) => {
                let what = kind_of(&meta);
                return Err(refuse(if current == path {
                    format!("it is {what}; only a regular file is ever replaced")
                } else {
                    format!(
                        "it links to {}, which is {what}; only a regular file is ever replaced",
                        current.display()
                    )
                }));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                let parent = match current.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                return match std::fs::metadata(&parent) {
                    Ok(meta) if meta.is_dir() => Ok(current),
                    Ok(_) => Err(refuse(format!("{} is not a folder", parent.display()))),
                    Err(_) => Err(refuse(format!(
                        "the folder {} does not exist",
                        parent.display()
                    ))),
                };
            }
            Err(e) => return Err(FormatError::io(&current, e)),
        }
    }
    Err(refuse(format!(
        "more than {MAX_LINKS} symbolic links (a loop?)"
    )))
}

/// Writes `bytes` to `path` by writing a temporary sibling, syncing it and renaming it over
/// `path`, so readers see either the old file or the complete new one. Follows the output-path
/// rules (module doc): through symbolic links, never over anything but a regular file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    let target = output_target(path)?;
    let tmp = temporary_name(&target);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(err) = result {
        // Best effort: the temporary file is garbage whether or not removing it works.
        let _ = std::fs::remove_file(&tmp);
        return Err(FormatError::io(path, err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_a_symlink_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.png");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.png");
        #[cfg(unix)]
        std::os::unix::fs::symlink("real.png", &link).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        #[cfg(unix)]
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A dangling link is written through too: the file it names is created.
        #[cfg(unix)]
        {
            let dangling = dir.path().join("dangling.png");
            std::os::unix::fs::symlink("created.png", &dangling).unwrap();
            write_atomic(&dangling, b"x").unwrap();
            assert_eq!(std::fs::read(dir.path().join("created.png")).unwrap(), b"x");
        }
    }

    #[test]
    fn never_replaces_a_folder_fifo_or_device() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let msg = write_atomic(&sub, b"x").unwrap_err().to_string();
        assert!(msg.contains("a folder"), "{msg}");
        assert!(sub.is_dir());
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo");
            let status = std::process::Command::new("mkfifo").arg(&fifo).status();
            if matches!(status, Ok(s) if s.success()) {
                let msg = write_atomic(&fifo, b"x").unwrap_err().to_string();
                assert!(msg.contains("FIFO"), "{msg}");
                use std::os::unix::fs::FileTypeExt as _;
                assert!(
                    std::fs::symlink_metadata(&fifo)
                        .unwrap()
                        .file_type()
                        .is_fifo()
                );
                // A link to the FIFO is refused too, naming where it points.
                let link = dir.path().join("to-fifo");
                std::os::unix::fs::symlink(&fifo, &link).unwrap();
                let msg = write_atomic(&link, b"x").unwrap_err().to_string();
                assert!(msg.contains("links to") && msg.contains("FIFO"), "{msg}");
            }
            let msg = output_target(Path::new("/dev/null"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("character device"), "{msg}");
            let a = dir.path().join("a");
            let b = dir.path().join("b");
            std::os::unix::fs::symlink(&b, &a).unwrap();
            std::os::unix::fs::symlink(&a, &b).unwrap();
            let msg = output_target(&a).unwrap_err().to_string();
            assert!(msg.contains("symbolic links"), "{msg}");
        }
    }

    #[test]
    fn a_missing_folder_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/folder/out.png");
        let msg = output_target(&path).unwrap_err().to_string();
        assert!(msg.contains("does not exist"), "{msg}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let msg = output_target(&file.join("out.png"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is not a folder"), "{msg}");
        assert_eq!(
            output_target(&dir.path().join("new.png")).unwrap(),
            dir.path().join("new.png")
        );
    }
}
