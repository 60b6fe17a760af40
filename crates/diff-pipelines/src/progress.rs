//! Progress of `from_pretrained` / `from_single_file`: the library reports, the caller draws
//! (diff-cli's progress bars; a server's log or its own events).
//!
//! The download half is diff-hub's [`Progress`] (files, bytes); this adds one call per
//! component loaded from files. Pass an implementation in [`LoadOptions::progress`]
//! (`None`, the default, reports nothing).
//!
//! [`LoadOptions::progress`]: crate::pipeline::LoadOptions::progress

pub use diff_hub::Progress;

/// Receives the progress of a pipeline load: the download of a repo id (diff-hub's
/// [`Progress`] methods) and each component read from files. Every method has an empty
/// default.
pub trait LoadProgress: Progress + Send + std::fmt::Debug {
    /// The component `name` (`unet`, `vae`, ...) of class `class_name` starts loading from its
    /// folder (components passed in or dropped are not loaded and not reported).
    fn on_component_start(&self, name: &str, class_name: &str) {
        let _ = (name, class_name);
    }
    /// The component `name` is loaded.
    fn on_component_done(&self, name: &str) {
        let _ = name;
    }
}

/// diff-hub's progress of a [`LoadProgress`], or nothing.
pub(crate) fn hub_progress(progress: Option<&dyn LoadProgress>) -> &dyn Progress {
    match progress {
        Some(p) => p,
        None => &diff_hub::NoProgress,
    }
}
