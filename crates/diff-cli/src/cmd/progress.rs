//! Progress bars on stderr for the long steps: downloads (bytes, rate), model loading (one line
//! per component), denoising (steps, it/s, time left) and the VAE decode.
//!
//! The library reports through callbacks (diff-hub's `Progress`, diff-pipelines'
//! `LoadProgress` and the per-step callback of `DiffusionPipeline::call`); only the binary
//! draws. Bars are hidden when stderr is not a terminal (indicatif's rule) and under `-q`.

use burn_diffusers::hub::Progress;
use burn_diffusers::pipelines::{LoadProgress, StepControl, StepInfo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: no progress bars and no informational lines (errors and warnings still print).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints an informational line on stderr unless `-q` was given.
#[macro_export]
macro_rules! info_line {
    ($($arg:tt)*) => {
        if !$crate::cmd::progress::quiet() {
            eprintln!($($arg)*);
        }
    };
}

/// A bar of `len` units drawn on stderr with `template` (hidden under `-q` and when stderr is
/// not a terminal).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = if quiet() {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(
            style
                .with_key("its", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.2} it/s", s.per_sec());
                })
                .progress_chars("=> "),
        );
    }
    bar
}

/// A spinner with a message and the elapsed time, ticking on its own.
pub fn spinner(message: String) -> ProgressBar {
    let s = bar(0, "{spinner} {msg} ({elapsed})");
    s.set_message(message);
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

/// The download bar (bytes, rate, time left) used by every command that resolves a repo id.
pub const DOWNLOAD_TEMPLATE: &str =
    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";

/// Download and load progress of `from_pretrained` / `from_single_file`: a byte bar while files
/// come from the Hub, then one spinner line per component.
#[derive(Debug, Default)]
pub struct LoadBars {
    download: Mutex<Option<ProgressBar>>,
    component: Mutex<Option<ProgressBar>>,
}

/// Clears the bar held in `slot`, if any.
fn clear(slot: &Mutex<Option<ProgressBar>>) {
    if let Ok(mut held) = slot.lock()
        && let Some(b) = held.take()
    {
        b.finish_and_clear();
    }
}

impl LoadBars {
    /// No bar yet: the download bar appears when a download starts (never for a local
    /// folder), a spinner when a component starts loading.
    pub fn new() -> Self {
        Self::default()
    }

    /// Clears whatever is still drawn.
    pub fn finish(&self) {
        clear(&self.download);
        clear(&self.component);
    }
}

impl Drop for LoadBars {
    /// A load that failed leaves no bar behind.
    fn drop(&mut self) {
        self.finish();
    }
}

impl Progress for LoadBars {
    fn on_start(&self, files: usize, bytes: u64) {
        let b = bar(bytes, DOWNLOAD_TEMPLATE);
        b.set_message(format!("downloading {files} files"));
        if let Ok(mut held) = self.download.lock() {
            *held = Some(b);
        }
    }
    fn on_bytes(&self, _path: &str, bytes: u64) {
        if let Ok(held) = self.download.lock()
            && let Some(b) = held.as_ref()
        {
            b.inc(bytes);
        }
    }
}

impl LoadProgress for LoadBars {
    fn on_component_start(&self, name: &str, class_name: &str) {
        clear(&self.download);
        let s = spinner(format!("loading {name} ({class_name})"));
        if let Ok(mut held) = self.component.lock() {
            *held = Some(s);
        }
    }
    fn on_component_done(&self, name: &str) {
        clear(&self.component);
        tracing::info!("loaded {name}");
    }
}

/// The denoising bar (steps, it/s, time left) of one pipeline call, followed by a spinner for
/// the VAE decode and safety check that run after the last step.
pub struct DenoiseBars {
    label: String,
    steps: ProgressBar,
    decode: Option<ProgressBar>,
    decodes: bool,
}

impl DenoiseBars {
    /// Bars for a call of `steps` steps; `label` names the job (`image 2/4`), and `decodes`
    /// says whether the latents are decoded after the loop.
    pub fn new(steps: usize, label: String, decodes: bool) -> Self {
        let steps = bar(
            steps as u64,
            "{spinner} {msg} [{bar:30}] {pos}/{len} steps, {its}, eta {eta} ({elapsed})",
        );
        steps.set_message(format!("denoising{label}"));
        Self {
            label,
            steps,
            decode: None,
            decodes,
        }
    }

    /// The per-step callback: moves the bar; after the last step, starts the decode spinner.
    pub fn on_step(&mut self, info: &StepInfo<'_>) -> StepControl {
        self.steps.set_length(info.total as u64);
        self.steps.set_position(info.step as u64 + 1);
        if info.step + 1 == info.total {
            self.steps.finish_and_clear();
            if self.decodes {
                self.decode = Some(spinner(format!("decoding latents (VAE){}", self.label)));
            }
        }
        StepControl::Continue
    }

    /// Clears the bars.
    pub fn finish(&mut self) {
        self.steps.finish_and_clear();
        if let Some(d) = self.decode.take() {
            d.finish_and_clear();
        }
    }
}

impl Drop for DenoiseBars {
    /// A call that failed leaves no bar behind.
    fn drop(&mut self) {
        self.finish();
    }
}
