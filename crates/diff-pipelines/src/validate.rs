//! `validate ORIGINAL SAVED`: is a saved (or converted) pipeline folder the same pipeline as the
//! one it came from?
//!
//! Three checks, one report line each per component:
//! 1. **Files** ([`diff_convert::validate`], burn-free): every config value and every tensor
//!    (exact, or exact after torch's rounding for a cast variant).
//! 2. **Tokenizers**: both copies' tokenizer folders are loaded with [`ClipTokenizer`] and must
//!    agree on the vocabulary size, the special-token ids, `model_max_length` and the ids of
//!    [`TOKENIZER_PROMPTS`]. This is a functional comparison on purpose: a folder saved by
//!    burn-diffusers keeps the original tokenizer files (`vocab.json`, `merges.txt`,
//!    `special_tokens_map.json`, `tokenizer_config.json`), while transformers 5.23's
//!    `save_pretrained` writes the same tokenizer as `tokenizer.json` plus a rewritten
//!    `tokenizer_config.json`; both are accepted when they tokenize alike.
//! 3. **Forward** (unless [`ValidateOptions::forward`] is off): each model component is loaded
//!    from both folders with diff-models, strictly (every checkpoint tensor used, every shape
//!    checked; only the `position_ids` buffer transformers itself ignores may be left over),
//!    one at a time (each model is dropped before the next is loaded), and run once on
//!    fixed inputs built from its config: seeded `torch.randn` values from
//!    [`TorchGenerator`], token ids from the original's tokenizer on [`FORWARD_PROMPT`].
//!
//! | component | inputs | outputs compared |
//! |---|---|---|
//! | `unet` | latents `[1, in_channels, s, s]` (`s` = 8 rounded up to the UNet's down-sampling factor), timestep 500, text states `[1, 77, context_dim]`; SDXL `text_embeds` / `time_ids`, class labels and `timestep_cond` when the config asks | `sample` |
//! | `vae` | image `[1, in_channels, 8f, 8f]` (`f` = the VAE's scale factor), latents `[1, latent_channels, 8, 8]` | `encode.mean`, `decode` |
//! | `text_encoder(_2)` | the prompt padded to `min(model_max_length, max_position_embeddings)` | `last_hidden_state`, `pooler_output` / `text_embeds` |
//! | `safety_checker` | `clip_input` `[1, 3, image_size, image_size]` | `image_embeds` |
//! | `image_encoder` | `pixel_values` `[1, 3, image_size, image_size]` | `image_embeds` |
//!
//! # Tolerances
//! Both copies are run in float32 on the same device, so the only source of difference is the
//! weights themselves. Errors are reported as `max_abs = max |saved - original|` and
//! `rel = max_abs / max |original|` (relative to the output's scale: an element-wise relative
//! error is meaningless where the output crosses zero).
//! - Same weights (every tensor bit-identical, or a lossless up-cast such as f16 -> f32):
//!   **exact**, `max_abs == 0`. This relies on the device's kernels being deterministic, as
//!   burn's flex CPU backend (the default) is: the same weights and inputs give the same bits.
//! - A lossy cast (the file check's [`ComponentReport::narrowed_to`]): `rel <=`
//!   [`F16_REL_TOLERANCE`] for float16, [`BF16_REL_TOLERANCE`] for bfloat16. Rounding a weight
//!   to f16 changes it by at most 2^-11 (4.9e-4) relative, to bf16 by 2^-8 (3.9e-3); through a
//!   network the outputs move by about that much (measured on the bundled tiny pipelines, every
//!   model: f16 rel 2.3e-4 to 9.3e-4, bf16 rel 1.1e-3 to 5.6e-3). The limits are about 10x
//!   the measured errors, leaving room for deeper real models, while a wrong tensor gives an
//!   error of the order of the output itself. The tests hold the measured errors under a
//!   quarter of the limits.
//!
//! This module lives in diff-pipelines rather than diff-convert because it needs burn, the
//! models and the tokenizer; diff-convert stays burn-free (saving and converting move bytes
//! only) and this crate depends on it for the file check.

use crate::clip_tokenizer::ClipTokenizer;
use crate::error::PipelineError;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use diff_convert::validate::ComponentReport;
use diff_models::weights::LoadReport;
use diff_models::{
    AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection,
    FromPretrained, ModelLoadOptions, StableDiffusionSafetyChecker, UNet2DConditionInput,
    UNet2DConditionModel,
    unet_2d_condition::{ClassEmbedKind, ClassLabels},
};
use diff_schedulers::{NoiseDtype, TorchGenerator};
use safetensors::Dtype;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::Path;

/// The prompt whose token ids feed the text encoders.
pub const FORWARD_PROMPT: &str = "a photo of an astronaut riding a horse on mars";

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

/// The largest `max |saved - original| / max |original|` accepted for a component whose
/// weights were cast to float16.
pub const F16_REL_TOLERANCE: f64 = 1e-2;
/// The same for bfloat16.
pub const BF16_REL_TOLERANCE: f64 = 4e-2;

/// The seed of every forward input.
const SEED: u64 = 0;
/// The timestep fed to the UNet.
const TIMESTEP: f32 = 500.0;

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
            device: crate::default_device(),
        }
    }
}

/// How closely two forward outputs must agree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// Bit-identical outputs (same weights).
    Exact,
    /// `max_abs / max |original| <= rel`, for weights cast to `dtype`.
    Relative {
        /// The dtype the weights were narrowed to.
        dtype: Dtype,
        /// The limit.
        rel: f64,
    },
}

impl Tolerance {
    /// The tolerance for weights narrowed to `dtype` (`None`: the same weights).
    pub fn for_cast(dtype: Option<Dtype>) -> Self {
        match dtype {
            None => Tolerance::Exact,
            Some(Dtype::BF16) => Tolerance::Relative {
                dtype: Dtype::BF16,
                rel: BF16_REL_TOLERANCE,
            },
            Some(other) => Tolerance::Relative {
                dtype: other,
                rel: F16_REL_TOLERANCE,
            },
        }
    }

    fn accepts(&self, diff: &OutputDiff) -> bool {
        match self {
            Tolerance::Exact => diff.max_abs == 0.0 && !diff.non_finite,
            Tolerance::Relative { rel, .. } => diff.rel <= *rel && !diff.non_finite,
        }
    }
}

impl std::fmt::Display for Tolerance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tolerance::Exact => write!(f, "exact"),
            Tolerance::Relative { dtype, rel } => write!(f, "rel <= {rel:e} ({dtype:?} weights)"),
        }
    }
}

/// One output of one forward pass, compared.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputDiff {
    /// The output's name (`sample`, `decode`, `last_hidden_state`, ...).
    pub output: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// `max |saved - original|`.
    pub max_abs: f64,
    /// `max_abs / max |original|` (0 when both are all zeros).
    pub rel: f64,
    /// Whether a NaN or an infinity appeared where the other copy has a different value.
    pub non_finite: bool,
}

/// The forward check of one component.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardReport {
    /// The component (`unet`, `vae`, ...).
    pub name: String,
    /// The tolerance applied.
    pub tolerance: Tolerance,
    /// Every output compared.
    pub outputs: Vec<OutputDiff>,
    /// Why the component was not run (a class without a forward check here), if it was not.
    pub skipped: Option<String>,
    /// Every difference found (empty: the component matches).
    pub problems: Vec<String>,
}

impl ForwardReport {
    /// Whether the component matches.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The largest `max_abs` and `rel` over the outputs.
    pub fn worst(&self) -> (f64, f64) {
        self.outputs
            .iter()
            .fold((0.0, 0.0), |(a, r), d| (a.max(d.max_abs), r.max(d.rel)))
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

impl From<diff_models::ModelError> for ValidateError {
    fn from(e: diff_models::ModelError) -> Self {
        ValidateError::Pipeline(Box::new(PipelineError::from(e)))
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
            let ctx = Ctx {
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

fn read_map(path: &Path) -> Result<Map<String, Value>, PipelineError> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::io(path, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(PipelineError::Json {
            path: path.to_path_buf(),
            message: "expected a JSON object".into(),
        }),
        Err(e) => Err(PipelineError::json(path, &e)),
    }
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

struct Ctx<'a> {
    name: &'a str,
    class: &'a str,
    original: &'a Path,
    saved: &'a Path,
    variant: Option<&'a str>,
    device: &'a Device,
    tolerance: Tolerance,
    index: &'a Map<String, Value>,
}

impl Ctx<'_> {
    fn report(&self) -> ForwardReport {
        ForwardReport {
            name: self.name.to_string(),
            tolerance: self.tolerance,
            outputs: Vec::new(),
            skipped: None,
            problems: Vec::new(),
        }
    }

    /// Runs `run` on the model loaded from the original (whose failure is an error) and on
    /// the one loaded from the saved copy (whose failure is a problem), one after the other,
    /// and compares the named outputs.
    fn compare<M>(
        &self,
        load: impl Fn(&Path, Option<&str>) -> Result<(M, LoadReport), diff_models::ModelError>,
        run: impl Fn(&M) -> Result<Vec<Output>, diff_models::ModelError>,
    ) -> Result<ForwardReport, ValidateError> {
        let mut report = self.report();
        let _span = tracing::info_span!("forward", component = self.name).entered();
        let reference = {
            // The original must load and run for there to be anything to compare with; when it
            // does not (a model diff-models cannot build), that is the verdict for this line.
            let outs = load(&self.original.join(self.name), None).and_then(|(model, r)| {
                check_clean(&r, "the original", &mut report.problems);
                run(&model)
            });
            match outs {
                Ok(outs) => host_outputs(outs)?,
                Err(e) => {
                    report
                        .problems
                        .push(format!("the original cannot be run: {e}"));
                    return Ok(report);
                }
            }
            // The model is dropped here, before the saved copy is loaded.
        };
        // As the file check (and diffusers' loading) does, a saved copy without files of the
        // variant is read from its plain files.
        let saved_dir = self.saved.join(self.name);
        let names: Vec<String> = std::fs::read_dir(&saved_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let variant = self
            .variant
            .filter(|v| diff_format::selection::has_variant_file(&names, v));
        let candidate = match load(&saved_dir, variant) {
            Ok((model, load_report)) => {
                check_clean(&load_report, "the saved copy", &mut report.problems);
                match run(&model) {
                    Ok(outs) => host_outputs(outs)?,
                    Err(e) => {
                        report
                            .problems
                            .push(format!("the saved copy's forward failed: {e}"));
                        return Ok(report);
                    }
                }
            }
            Err(e) => {
                report
                    .problems
                    .push(format!("the saved copy does not load: {e}"));
                return Ok(report);
            }
        };
        for ((name, shape, a), (_, shape_b, b)) in reference.iter().zip(&candidate) {
            if shape != shape_b {
                report.problems.push(format!(
                    "`{name}`: shape {shape:?} in the original, {shape_b:?} in the saved copy"
                ));
                continue;
            }
            let diff = diff(name, shape, a, b);
            if !self.tolerance.accepts(&diff) {
                report.problems.push(format!(
                    "`{name}` differs: max abs {:.3e}, rel {:.3e}{} (tolerance: {})",
                    diff.max_abs,
                    diff.rel,
                    if diff.non_finite {
                        ", NaN/inf mismatch"
                    } else {
                        ""
                    },
                    self.tolerance
                ));
            }
            report.outputs.push(diff);
        }
        Ok(report)
    }

    fn config(&self) -> Result<Map<String, Value>, PipelineError> {
        read_map(&self.original.join(self.name).join("config.json"))
    }
}

fn check_clean(report: &LoadReport, which: &str, problems: &mut Vec<String>) {
    // Strict loading already refuses missing, unexpected and mis-shaped keys; this guards the
    // contract should the loader's defaults ever change.
    if !report.is_clean() {
        problems.push(format!(
            "{which} did not load cleanly: {}",
            report.summary()
        ));
    }
}

type HostOutput = (&'static str, Vec<usize>, Vec<f32>);

fn host_outputs(outs: Vec<Output>) -> Result<Vec<HostOutput>, ValidateError> {
    outs.into_iter()
        .map(|(name, shape, t)| {
            let values = t
                .cast(DType::F32)
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| {
                    ValidateError::Pipeline(Box::new(PipelineError::arg(
                        name,
                        format!("output could not be read back as f32: {e:?}"),
                    )))
                })?;
            Ok((name, shape, values))
        })
        .collect()
}

fn diff(name: &str, shape: &[usize], a: &[f32], b: &[f32]) -> OutputDiff {
    let mut max_abs = 0.0f64;
    let mut scale = 0.0f64;
    let mut non_finite = a.len() != b.len();
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            // Equal infinities (or two NaNs) are the same output; anything else is not.
            if !(x == y || (x.is_nan() && y.is_nan())) {
                non_finite = true;
            }
            continue;
        }
        max_abs = max_abs.max(f64::from((x - y).abs()));
        scale = scale.max(f64::from(x.abs()));
    }
    let rel = if max_abs == 0.0 {
        0.0
    } else if scale == 0.0 {
        f64::INFINITY
    } else {
        max_abs / scale
    };
    OutputDiff {
        output: name.to_string(),
        shape: shape.to_vec(),
        max_abs,
        rel,
        non_finite,
    }
}

fn randn<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    let values = TorchGenerator::new(SEED).randn(n, NoiseDtype::Float32);
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn as_usize(v: Option<&Value>) -> Option<usize> {
    v.and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

/// Token ids of [`FORWARD_PROMPT`] for the text encoder `name`, from the original's matching
/// tokenizer (`tokenizer` for `text_encoder`, `tokenizer_2` for `text_encoder_2`), or, when
/// the pipeline has none, BOS, a few fixed ids and EOS from the encoder's config.
fn prompt_ids(ctx: &Ctx<'_>, config: &Map<String, Value>) -> Result<Vec<i64>, ValidateError> {
    let max_pos = as_usize(config.get("max_position_embeddings")).unwrap_or(77);
    let tokenizer = ctx.name.replacen("text_encoder", "tokenizer", 1);
    let folder = ctx.original.join(&tokenizer);
    if ctx
        .index
        .get(&tokenizer)
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().all(Value::is_string))
        && folder.is_dir()
    {
        let tok = ClipTokenizer::from_pretrained(&folder)?;
        let len = tok.model_max_length().unwrap_or(77).min(max_pos);
        return Ok(tok
            .encode_padded(FORWARD_PROMPT, len)
            .into_iter()
            .map(i64::from)
            .collect());
    }
    let vocab = as_usize(config.get("vocab_size")).unwrap_or(2).max(2) as i64;
    let bos = config
        .get("bos_token_id")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let eos = config
        .get("eos_token_id")
        .and_then(Value::as_i64)
        .unwrap_or(vocab - 1);
    let mut ids = vec![bos];
    ids.extend((1..=6).map(|i| (i * 97) % vocab));
    ids.push(eos);
    Ok(ids)
}

fn ids_tensor(ids: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device)
}

/// A forward output: its name, its shape and its values flattened.
type Output = (&'static str, Vec<usize>, Tensor<1>);

fn out<const D: usize>(name: &'static str, x: Tensor<D>) -> Output {
    let shape = x.dims().to_vec();
    let n = shape.iter().product::<usize>();
    (name, shape, x.reshape([n]))
}

/// The vision tower's input size: `vision_config.image_size` (safety checker) or `image_size`
/// (image encoder), 224 when absent.
fn image_size(config: &Map<String, Value>) -> usize {
    let v = config.get("vision_config").unwrap_or(&Value::Null);
    as_usize(v.get("image_size"))
        .or_else(|| as_usize(config.get("image_size")))
        .unwrap_or(224)
}

fn forward_component(ctx: &Ctx<'_>) -> Result<Option<ForwardReport>, ValidateError> {
    let device = ctx.device;
    let opts = |variant: Option<&str>| ModelLoadOptions::new(device).with_variant(variant);
    let report = match (ctx.name, ctx.class) {
        ("unet", "UNet2DConditionModel") => {
            let config = ctx.config()?;
            let input = unet_input(ctx, &config)?;
            ctx.compare(
                |dir, variant| UNet2DConditionModel::from_pretrained(dir, &opts(variant)),
                |m| Ok(vec![out("sample", m.forward(input.clone())?)]),
            )?
        }
        ("vae", "AutoencoderKL") => {
            let config = ctx.config()?;
            let blocks = config
                .get("block_out_channels")
                .and_then(Value::as_array)
                .map_or(4, Vec::len);
            let factor = 1usize << blocks.saturating_sub(1).min(6);
            let in_channels = as_usize(config.get("in_channels")).unwrap_or(3);
            let latent_channels = as_usize(config.get("latent_channels")).unwrap_or(4);
            let image = randn([1, in_channels, 8 * factor, 8 * factor], device);
            let latents = randn([1, latent_channels, 8, 8], device);
            ctx.compare(
                |dir, variant| AutoencoderKL::from_pretrained(dir, &opts(variant)),
                |m| {
                    let mean = m.encode(image.clone())?.mode();
                    Ok(vec![
                        out("encode.mean", mean),
                        out("decode", m.decode(latents.clone())?),
                    ])
                },
            )?
        }
        ("text_encoder", "CLIPTextModel") => {
            let ids = prompt_ids(ctx, &ctx.config()?)?;
            ctx.compare(
                |dir, variant| CLIPTextModel::from_pretrained(dir, &opts(variant)),
                |m| {
                    let out_ = m.forward(ids_tensor(&ids, device))?;
                    Ok(vec![
                        out("last_hidden_state", out_.last_hidden_state),
                        out("pooler_output", out_.pooler_output),
                    ])
                },
            )?
        }
        (_, "CLIPTextModelWithProjection") => {
            let ids = prompt_ids(ctx, &ctx.config()?)?;
            ctx.compare(
                |dir, variant| CLIPTextModelWithProjection::from_pretrained(dir, &opts(variant)),
                |m| {
                    let out_ = m.forward(ids_tensor(&ids, device))?;
                    Ok(vec![
                        out("last_hidden_state", out_.last_hidden_state),
                        out("text_embeds", out_.text_embeds),
                    ])
                },
            )?
        }
        ("safety_checker", "StableDiffusionSafetyChecker") => {
            let size = image_size(&ctx.config()?);
            let clip_input = randn([1, 3, size, size], device);
            ctx.compare(
                |dir, variant| StableDiffusionSafetyChecker::from_pretrained(dir, &opts(variant)),
                |m| {
                    Ok(vec![out(
                        "image_embeds",
                        m.image_embeds(clip_input.clone())?,
                    )])
                },
            )?
        }
        (_, "CLIPVisionModelWithProjection") => {
            let size = image_size(&ctx.config()?);
            let pixels = randn([1, 3, size, size], device);
            ctx.compare(
                |dir, variant| CLIPVisionModelWithProjection::from_pretrained(dir, &opts(variant)),
                |m| {
                    Ok(vec![out(
                        "image_embeds",
                        m.forward(pixels.clone())?.image_embeds,
                    )])
                },
            )?
        }
        (_, class)
            if !class.contains("Tokenizer")
                && !class.contains("Scheduler")
                && !class.contains("ImageProcessor")
                && !class.contains("FeatureExtractor") =>
        {
            let mut report = ctx.report();
            report.skipped = Some(format!(
                "no forward check for `{class}` (files and tensors were compared)"
            ));
            report
        }
        _ => return Ok(None),
    };
    Ok(Some(report))
}

/// The UNet's fixed inputs (module doc), shaped from its config.
fn unet_input(
    ctx: &Ctx<'_>,
    config: &Map<String, Value>,
) -> Result<UNet2DConditionInput, ValidateError> {
    let device = ctx.device;
    // Build the model's settings without weights to read the shapes it expects: the context
    // width, the down-sampling factor and the class-embedding kind.
    let typed: diff_format::configs::unet::UNet2DConditionConfig =
        diff_format::load_config(ctx.original.join(ctx.name).join("config.json"))
            .map_err(PipelineError::from)?;
    let probe = UNet2DConditionModel::from_config(&typed, device, DType::F32)?;
    let s = probe.settings.clone();
    drop(probe);
    let factor = 1usize << s.num_upsamplers.min(6);
    let size = 8usize.div_ceil(factor) * factor;
    let sample = randn([1, s.in_channels, size, size], device);
    let timestep = Tensor::<1>::from_data(TensorData::new(vec![TIMESTEP], [1]), device);
    let states = randn([1, 77, s.context_dim], device);
    let mut input = UNet2DConditionInput::new(sample, timestep, states);
    let time_embed_dim = as_usize(config.get("time_embedding_dim")).unwrap_or_else(|| {
        4 * config
            .get("block_out_channels")
            .and_then(Value::as_array)
            .and_then(|a| as_usize(a.first()))
            .unwrap_or(320)
    });
    let proj_in = as_usize(config.get("projection_class_embeddings_input_dim"));
    input.class_labels = match s.class_embed {
        None => None,
        Some(ClassEmbedKind::Table) => Some(ClassLabels::Labels(Tensor::from_data(
            TensorData::new(vec![0.0f32], [1]),
            device,
        ))),
        Some(ClassEmbedKind::Timestep) => Some(ClassLabels::Labels(Tensor::from_data(
            TensorData::new(vec![TIMESTEP], [1]),
            device,
        ))),
        Some(ClassEmbedKind::Identity) => {
            Some(ClassLabels::Embeds(randn([1, time_embed_dim], device)))
        }
        Some(ClassEmbedKind::Projection | ClassEmbedKind::SimpleProjection) => Some(
            ClassLabels::Embeds(randn([1, proj_in.unwrap_or(time_embed_dim)], device)),
        ),
    };
    if let Some(d) = s.time_cond_proj_dim {
        input.timestep_cond = Some(randn([1, d], device));
    }
    if s.add_time_proj.is_some() {
        // SDXL: `projection_class_embeddings_input_dim = text_embeds + n_ids * time_embed`,
        // with n_ids 6 (base) or 5 (refiner, `requires_aesthetics_score`); the pooled width is
        // text_encoder_2's projection_dim when the pipeline has one.
        let add_dim = as_usize(config.get("addition_time_embed_dim")).unwrap_or(256);
        let total = proj_in.unwrap_or(2816);
        let pooled = read_map(&ctx.original.join("text_encoder_2").join("config.json"))
            .ok()
            .and_then(|c| as_usize(c.get("projection_dim")));
        let n_ids = match pooled {
            Some(p) if total > p && add_dim > 0 => (total - p) / add_dim,
            _ if ctx.index.get("requires_aesthetics_score") == Some(&Value::Bool(true)) => 5,
            _ => 6,
        };
        let text_dim = total.saturating_sub(n_ids * add_dim);
        input.text_embeds = Some(randn([1, text_dim], device));
        let px = (size * 8) as f32;
        // As the pipelines build them: original size, crop origin, then the target size (base)
        // or the aesthetic score 6.0 (refiner); any other count gets that pattern cut or padded.
        let pattern: &[f32] = if n_ids == 5 {
            &[px, px, 0.0, 0.0, 6.0]
        } else {
            &[px, px, 0.0, 0.0, px, px]
        };
        let ids: Vec<f32> = (0..n_ids)
            .map(|i| pattern.get(i).copied().unwrap_or(0.0))
            .collect();
        input.time_ids = Some(Tensor::from_data(TensorData::new(ids, [1, n_ids]), device));
    }
    Ok(input)
}
