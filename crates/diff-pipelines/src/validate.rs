//! The forward half of `validate ORIGINAL SAVED`: does each model of a saved (or converted)
//! pipeline compute what the original computes?
//!
//! [`forward_component`] loads one model component from both folders with diff-models,
//! strictly (every checkpoint tensor used, every shape checked; only the `position_ids` buffer
//! transformers itself ignores may be left over), one at a time (each model is dropped before
//! the next is loaded), and runs it once on fixed inputs built from its config: seeded
//! `torch.randn` values from [`TorchGenerator`], token ids from the original's tokenizer on
//! [`FORWARD_PROMPT`].
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
//! - A lossy cast (the file check's `narrowed_to`): `rel <=` [`F16_REL_TOLERANCE`] for float16,
//!   [`BF16_REL_TOLERANCE`] for bfloat16. Rounding a weight to f16 changes it by at most 2^-11
//!   (4.9e-4) relative, to bf16 by 2^-8 (3.9e-3); through a network the outputs move by about
//!   that much (measured on the bundled tiny pipelines, every model: f16 rel 2.3e-4 to 9.3e-4,
//!   bf16 rel 1.1e-3 to 5.6e-3). The limits are about 10x the measured errors, leaving room for
//!   deeper real models, while a wrong tensor gives an error of the order of the output itself.
//!
//! The whole command (the file and tensor check of diff-convert, the tokenizer check, this
//! forward check and the report) is the `diff-validate` crate, which sits above this one and
//! diff-convert: the forward half needs burn and the models, the file half must stay burn-free,
//! and neither of the two crates depends on the other.

use crate::error::PipelineError;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use diff_models::weights::LoadReport;
use diff_models::{
    AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection,
    FromPretrained, ModelLoadOptions, StableDiffusionSafetyChecker, UNet2DConditionInput,
    UNet2DConditionModel,
    unet_2d_condition::{ClassEmbedKind, ClassLabels},
};
use diff_schedulers::{NoiseDtype, TorchGenerator};
use diff_tokenizer::ClipTokenizer;
use safetensors::Dtype;
use serde_json::{Map, Value};
use std::path::Path;

/// The prompt whose token ids feed the text encoders.
pub const FORWARD_PROMPT: &str = "a photo of an astronaut riding a horse on mars";

/// The largest `max |saved - original| / max |original|` accepted for a component whose
/// weights were cast to float16.
pub const F16_REL_TOLERANCE: f64 = 1e-2;
/// The same for bfloat16.
pub const BF16_REL_TOLERANCE: f64 = 4e-2;

/// The seed of every forward input.
const SEED: u64 = 0;
/// The timestep fed to the UNet.
const TIMESTEP: f32 = 500.0;

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

/// One component to run from both folders: what [`forward_component`] needs.
#[derive(Debug, Clone, Copy)]
pub struct ForwardCheck<'a> {
    /// The component (`unet`, `vae`, `text_encoder`, ...).
    pub name: &'a str,
    /// Its class in `model_index.json`.
    pub class: &'a str,
    /// The original pipeline folder.
    pub original: &'a Path,
    /// The saved pipeline folder.
    pub saved: &'a Path,
    /// The saved copy's weight variant (its plain files when it has none of that variant).
    pub variant: Option<&'a str>,
    /// Where the forward passes run.
    pub device: &'a Device,
    /// How closely the outputs must agree.
    pub tolerance: Tolerance,
    /// The original's `model_index.json` (which tokenizer feeds which text encoder).
    pub index: &'a Map<String, Value>,
}

impl ForwardCheck<'_> {
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
    ) -> Result<ForwardReport, PipelineError> {
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

fn host_outputs(outs: Vec<Output>) -> Result<Vec<HostOutput>, PipelineError> {
    outs.into_iter()
        .map(|(name, shape, t)| {
            let values = t
                .cast(DType::F32)
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| {
                    PipelineError::arg(name, format!("output could not be read back as f32: {e:?}"))
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
fn prompt_ids(
    ctx: &ForwardCheck<'_>,
    config: &Map<String, Value>,
) -> Result<Vec<i64>, PipelineError> {
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

/// Loads the component from both folders (strictly, one after the other), runs it once on
/// fixed inputs and compares the outputs (module doc); `None` for classes without a forward
/// check (tokenizers, schedulers, feature extractors).
///
/// # Errors
/// When the original's config or tokenizer cannot be read; a saved copy that fails to load
/// or run is a problem in the report.
pub fn forward_component(ctx: &ForwardCheck<'_>) -> Result<Option<ForwardReport>, PipelineError> {
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
    ctx: &ForwardCheck<'_>,
    config: &Map<String, Value>,
) -> Result<UNet2DConditionInput, PipelineError> {
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
