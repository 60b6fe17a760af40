//! `diff-validate`: `validate ORIGINAL SAVED`, is a saved (or converted) pipeline folder the
//! same pipeline as the one it came from?
//!
//! Three checks, one report line each per component:
//! 1. **Files** (`diff_convert::validate`, burn-free): every config value and every tensor
//!    (exact, or exact after torch's rounding for a cast variant).
//! 2. **Tokenizers** ([`compare_tokenizers`]): both copies' tokenizer folders are loaded with
//!    [`ClipTokenizer`] and must agree on the vocabulary size, the special-token ids,
//!    `model_max_length` and the ids of [`TOKENIZER_PROMPTS`]. This is a functional comparison
//!    on purpose: a folder saved by burn-diffusers keeps the original tokenizer files
//!    (`vocab.json`, `merges.txt`, `special_tokens_map.json`, `tokenizer_config.json`), while
//!    transformers 5.23's `save_pretrained` writes the same tokenizer as `tokenizer.json` plus a
//!    rewritten `tokenizer_config.json`; both are accepted when they tokenize alike.
//! 3. **Forward** (unless [`ValidateOptions::forward`] is off): each model run once from both
//!    folders on fixed inputs (`diff_pipelines::validate`, whose doc gives the inputs and the
//!    tolerances: exact for the same weights, [`F16_REL_TOLERANCE`] / [`BF16_REL_TOLERANCE`]
//!    relative for a cast).
//!
//! # Why a crate of its own
//! Dependencies point down. The file check is bytes and JSON, so it lives in diff-convert,
//! which never sees burn; the forward check needs burn and the models, so it lives in
//! diff-pipelines, which must not depend on diff-convert (it loads single files through
//! diff-checkpoint). The command needs both, plus the tokenizer, so it sits above both, as
//! the facade and the CLI do; it is a crate rather than a facade module because the facade
//! only re-exports.
//!
//! **Must not know:** how files are saved or converted (diff-convert), how models run
//! (diff-pipelines, diff-models), the Hub (the caller resolves repo ids to folders), the CLI.
//!
//! Dependencies: `diff-convert` (the file and tensor check, [`ComponentReport`]),
//! `diff-pipelines` (the forward check, the device, [`PipelineError`]), `diff-tokenizer`
//! (the tokenizer check), `serde_json` (model_index.json), `thiserror` (the typed
//! [`ValidateError`]), `tracing` (a span per run).
#![deny(missing_docs)]

pub use diff_convert::validate::ComponentReport;
pub use diff_pipelines::validate::{
    BF16_REL_TOLERANCE, F16_REL_TOLERANCE, FORWARD_PROMPT, ForwardReport, OutputDiff, Tolerance,
};

use diff_pipelines::validate::{ForwardCheck, forward_component};
use diff_pipelines::{Device, PipelineError};
use diff_tokenizer::ClipTokenizer;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::Path;

/// Prompts both tokenizers must encode alike: plain text, case and punctuation, numbers, an
/// apostrophe contraction, non-ASCII text, a special token written out, and one longer than 77
/// tokens (truncation).
pub const TOKENIZER_PROMPTS: [&str; 6] = [
    FORWARD_PROMPT,
    "A Cat's PORTRAIT, oil on canvas -- 1889, by Vincent van Gogh!!",
    "naïve café crème brûlée 東京 🚀",
    "",
    "<|startoftext|>hello<|endoftext|> world",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen \
     sixteen seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four \
     twenty-five twenty-six twenty-seven twenty-eight twenty-nine thirty thirty-one thirty-two",
];

/// What to validate.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The saved copy's weight variant (`fp16`, ...); the original is read from its plain files.
    pub variant: Option<String>,
    /// Run one forward of each model (default `true`); `false` compares files and tokenizers
    /// only.
    pub forward: bool,
    /// Where the forward passes run.
    pub device: Device,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self {
            variant: None,
            forward: true,
            device: diff_pipelines::default_device(),
        }
    }
}

/// The tokenizer check of one tokenizer component.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerReport {
    /// The component (`tokenizer`, `tokenizer_2`).
    pub name: String,
    /// Prompts encoded by both.
    pub prompts: usize,
    /// The files of each copy's folder (to show the layout each uses).
    pub files: (Vec<String>, Vec<String>),
    /// Every difference found.
    pub problems: Vec<String>,
}

impl TokenizerReport {
    /// Whether both tokenizers agree.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Everything `validate` found.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationReport {
    /// The file check (configs and tensors), one per component plus `model_index.json`.
    pub files: Vec<ComponentReport>,
    /// The tokenizer check, one per tokenizer component.
    pub tokenizers: Vec<TokenizerReport>,
    /// The forward check, one per model component (empty with `forward: false`).
    pub forward: Vec<ForwardReport>,
}

impl ValidationReport {
    /// Whether no check found a difference.
    pub fn ok(&self) -> bool {
        self.files.iter().all(ComponentReport::ok)
            && self.tokenizers.iter().all(TokenizerReport::ok)
            && self.forward.iter().all(ForwardReport::ok)
    }

    /// How many report lines show a difference.
    pub fn failures(&self) -> usize {
        self.files.iter().filter(|r| !r.ok()).count()
            + self.tokenizers.iter().filter(|r| !r.ok()).count()
            + self.forward.iter().filter(|r| !r.ok()).count()
    }

    /// The per-component report, one line per check and an indented line per problem.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.files {
            let status = if r.ok() { "ok" } else { "FAILED" };
            let _ = writeln!(
                out,
                "{status:<7} files    {:<20} {} tensors ({} compared after a cast)",
                r.name, r.tensors, r.cast
            );
            problems(&mut out, &r.problems);
        }
        for r in &self.tokenizers {
            let status = if r.ok() { "ok" } else { "FAILED" };
            let _ = writeln!(
                out,
                "{status:<7} tokens   {:<20} ids identical on {} prompts ({} vs {})",
                r.name,
                r.prompts,
                r.files.0.join(", "),
                r.files.1.join(", ")
            );
            problems(&mut out, &r.problems);
        }
        for r in &self.forward {
            if let Some(why) = &r.skipped {
                let _ = writeln!(out, "skipped forward  {:<20} {why}", r.name);
                continue;
            }
            let status = if r.ok() { "ok" } else { "FAILED" };
            if r.outputs.is_empty() {
                let _ = writeln!(out, "{status:<7} forward  {:<20} not run", r.name);
                problems(&mut out, &r.problems);
                continue;
            }
            let (abs, rel) = r.worst();
            let outputs: Vec<String> = r
                .outputs
                .iter()
                .map(|d| format!("{}{:?}", d.output, d.shape))
                .collect();
            let _ = writeln!(
                out,
                "{status:<7} forward  {:<20} max abs {abs:.3e}, rel {rel:.3e} [{}] over {}",
                r.name,
                r.tolerance,
                outputs.join(", ")
            );
            problems(&mut out, &r.problems);
        }
        out
    }
}

fn problems(out: &mut String, list: &[String]) {
    for p in list {
        let _ = writeln!(out, "          {p}");
    }
}

/// What can stop `validate` before it reaches a verdict (a difference is not an error: it is
/// reported in the [`ValidationReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    /// Reading the files failed (a missing `model_index.json`, corrupt safetensors, bad JSON).
    #[error(transparent)]
    Files(Box<diff_convert::ConvertError>),
    /// Reading a config or building the original's model or tokenizer failed.
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
}

impl From<diff_convert::ConvertError> for ValidateError {
    fn from(e: diff_convert::ConvertError) -> Self {
        ValidateError::Files(Box::new(e))
    }
}

impl From<PipelineError> for ValidateError {
    fn from(e: PipelineError) -> Self {
        ValidateError::Pipeline(Box::new(e))
    }
}

/// Compares `saved` with `original` (two diffusers pipeline folders): files, tokenizers and,
/// unless turned off, one forward of each model. See the module doc.
///
/// # Errors
/// [`ValidateError`] when the original cannot be read at all; differences in the saved copy,
/// including a saved model that fails to load, are problems in the report.
pub fn validate_pipeline(
    original: &Path,
    saved: &Path,
    options: &ValidateOptions,
) -> Result<ValidationReport, ValidateError> {
    let _span =
        tracing::info_span!("validate", original = %original.display(), saved = %saved.display())
            .entered();
    let variant = options.variant.as_deref();
    let files = diff_convert::validate::validate_pipeline(original, saved, variant)?;
    let index = read_map(&original.join("model_index.json"))?;
    let components: Vec<(String, String, String)> = index
        .iter()
        .filter(|(k, _)| !k.starts_with('_') && !k.contains(['/', '\\']) && *k != "..")
        .filter_map(|(k, v)| match v.as_array().map(Vec::as_slice) {
            Some([Value::String(lib), Value::String(class)]) => {
                Some((k.clone(), lib.clone(), class.clone()))
            }
            _ => None,
        })
        .collect();
    let mut tokenizers = Vec::new();
    for (name, _, class) in &components {
        if class.starts_with("CLIPTokenizer") {
            tokenizers.push(compare_tokenizers(
                name,
                &original.join(name),
                &saved.join(name),
            ));
        }
    }
    let mut forward = Vec::new();
    if options.forward {
        for (name, _, class) in &components {
            let narrowed = files
                .iter()
                .find(|r| &r.name == name)
                .and_then(|r| r.narrowed_to);
            let ctx = ForwardCheck {
                name,
                class,
                original,
                saved,
                variant,
                device: &options.device,
                tolerance: Tolerance::for_cast(narrowed),
                index: &index,
            };
            if let Some(report) = forward_component(&ctx)? {
                forward.push(report);
            }
        }
    }
    Ok(ValidationReport {
        files,
        tokenizers,
        forward,
    })
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Loads both tokenizers and compares what they do (module doc).
pub fn compare_tokenizers(name: &str, original: &Path, saved: &Path) -> TokenizerReport {
    let mut report = TokenizerReport {
        name: name.to_string(),
        prompts: 0,
        files: (file_names(original), file_names(saved)),
        problems: Vec::new(),
    };
    let a = match ClipTokenizer::from_pretrained(original) {
        Ok(t) => t,
        Err(e) => {
            report.problems.push(format!("the original: {e}"));
            return report;
        }
    };
    let b = match ClipTokenizer::from_pretrained(saved) {
        Ok(t) => t,
        Err(e) => {
            report.problems.push(format!("the saved copy: {e}"));
            return report;
        }
    };
    let facts = |t: &ClipTokenizer| {
        [
            ("vocabulary size", Some(t.vocab_size())),
            ("bos_token id", Some(t.bos_token_id() as usize)),
            ("eos_token id", Some(t.eos_token_id() as usize)),
            ("pad_token id", Some(t.pad_token_id() as usize)),
            ("model_max_length", t.model_max_length()),
        ]
    };
    for ((what, x), (_, y)) in facts(&a).into_iter().zip(facts(&b)) {
        if x != y {
            report.problems.push(format!(
                "{what}: {x:?} in the original, {y:?} in the saved copy"
            ));
        }
    }
    let max_length = a.model_max_length().unwrap_or(77);
    for prompt in TOKENIZER_PROMPTS {
        let (x, y) = (
            a.encode_padded(prompt, max_length),
            b.encode_padded(prompt, max_length),
        );
        if x != y {
            report.problems.push(format!(
                "ids of {prompt:?} differ: {x:?} in the original, {y:?} in the saved copy"
            ));
        }
        report.prompts += 1;
    }
    report
}

fn read_map(path: &Path) -> Result<Map<String, Value>, ValidateError> {
    let text = std::fs::read_to_string(path).map_err(|error| PipelineError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(PipelineError::Json {
            path: path.to_path_buf(),
            message: "expected a JSON object".into(),
        }
        .into()),
        Err(e) => Err(PipelineError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
        .into()),
    }
}
