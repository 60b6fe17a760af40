//! Progress callbacks: the library reports, the CLI draws (indicatif lives only there).

/// Receives download and upload progress. Every method has an empty default, and calls may
/// come from several worker threads at once.
pub trait Progress: Sync {
    /// A transfer of `files` files totalling `bytes` bytes starts.
    fn on_start(&self, files: usize, bytes: u64) {
        let _ = (files, bytes);
    }
    /// One file (of `size` bytes) starts.
    fn on_file_start(&self, path: &str, size: u64) {
        let _ = (path, size);
    }
    /// `bytes` more bytes of `path` were transferred (or found already present).
    fn on_bytes(&self, path: &str, bytes: u64) {
        let _ = (path, bytes);
    }
    /// One file is done.
    fn on_file_done(&self, path: &str) {
        let _ = path;
    }
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
