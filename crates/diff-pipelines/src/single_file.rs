//! `from_single_file`: a pipeline straight from an original Stable Diffusion checkpoint
//! (`StableDiffusionPipeline.from_single_file("model.safetensors", config=...)`).
//!
//! # Flow (diffusers 0.42.1 `FromSingleFileMixin.from_single_file`)
//! 1. Read the checkpoint (`.safetensors`, or `.ckpt` / `.pt` / `.bin` through the restricted
//!    pickle reader: nothing is executed) and detect its family from keys and shapes
//!    ([`diff_checkpoint::detect_model_type`]).
//! 2. The configs come from `config` (a diffusers folder or a Hub repo id) or, without it, from
//!    the repo diffusers uses for the family (`DIFFUSERS_DEFAULT_PIPELINE_PATHS`, e.g.
//!    `stable-diffusion-v1-5/stable-diffusion-v1-5`). Of a repo only the config, tokenizer and
//!    scheduler files are downloaded (diffusers' allow patterns, [`CONFIG_PATTERNS`]), never its
//!    weights. A checkpoint of an unknown family needs `config`; with it, a family that cannot be
//!    named is only a warning and the conversion checks decide, as in diffusers.
//! 3. The pipeline class is the one asked for ([`LoadOptions::pipeline_class`], the class
//!    `from_single_file` is called on) or the config's `_class_name`. Each model the class takes
//!    (`unet`, `vae`, `text_encoder`, `text_encoder_2`) is converted from the checkpoint with its
//!    config (diff-checkpoint's key conversion, in memory) and loaded into burn with diff-models,
//!    one at a time; tokenizers, the scheduler and the feature extractor are read from the config
//!    folder. The safety checker is never loaded (diffusers' `SINGLE_FILE_OPTIONAL_COMPONENTS`):
//!    pass one in to use it. Components passed in or dropped are not converted.
//! 4. The rest is `from_pretrained` on the config folder: scalar config, the SD scheduler
//!    patches, the safety-checker warning, the required-component checks.
//!
//! # Memory
//! No temporary folder: diff-checkpoint hands over the converted tensors, and diff-models loads
//! them from memory ([`TensorSource::from_memory`]), freeing each buffer as soon as it is copied
//! into its parameter. The checkpoint is read whole (as diffusers' `load_state_dict`), a
//! `.safetensors` file through a memory map released tensor by tensor. The VAE and text
//! encoders are converted first (copied; the checkpoint's originals are dropped once no later
//! component reads them), then the UNet, most of a checkpoint, is moved out rather than copied.
//! Peak memory is therefore about the weights plus the largest of the VAE and text encoders,
//! plus one tensor: well under the one extra copy allowed.
//!
//! Measured with `examples/single_file_rss.rs` (dev profile, 2-core machine, 2026-11-23) on a
//! random-weight SD 1.x-layout checkpoint of 1933 MB in float32 (UNet 1257 MB, VAE 335 MB, text
//! encoder 342 MB): peak RSS 2263 MB from the `.safetensors` file and 2282 MB from the same
//! tensors as a `.ckpt`, i.e. 1.17x and 1.18x the loaded models, against 1921 MB (0.99x) for
//! `from_pretrained` on diffusers' converted folder. Reading the `.safetensors` file with
//! diff-checkpoint's reader instead (whole mapping resident while copying) peaked at 1.96x.

use crate::components::{COMPONENTS, ComponentSlot, PassedKind, Role};
use crate::error::PipelineError;
use crate::pipeline::{
    DiffusionPipeline, LoadOptions, Passed, PassedComponents, pipeline_class, read_json_map,
};
use diff_checkpoint::{Checkpoint, ModelType, detect_model_type, take_component};
use diff_format::model_index::{ComponentEntry, ModelIndex};
use diff_models::weights::{RawDType, TensorSource};
use diff_models::{AutoencoderKL, ModelLoadOptions};
use std::path::{Path, PathBuf};

/// The files diffusers downloads from a config repo for `from_single_file`
/// (`_download_diffusers_model_config_from_hub`): configs, tokenizer vocabularies and merges,
/// sentencepiece models; no weights.
pub const CONFIG_PATTERNS: [&str; 5] = ["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"];

/// The keyword arguments of `from_single_file`.
#[derive(Debug, Clone, Default)]
pub struct SingleFileLoadOptions {
    /// `config=`: a diffusers pipeline folder or Hub repo id whose `model_index.json`, model
    /// configs, tokenizers and scheduler describe the checkpoint. `None` takes the repo diffusers
    /// uses for the detected family ([`ModelType::default_config_repo`]).
    pub config: Option<String>,
    /// Take the UNet from the checkpoint's EMA weights (`model_ema.*`) when it has them
    /// (diffusers' `extract_ema=True`).
    pub extract_ema: bool,
    /// What `from_pretrained` takes: dtype, device, components passed in or dropped, scalar
    /// config, the pipeline class, and the revision, hub settings and `local_files_only` used
    /// to fetch a config repo (`variant` and `use_safetensors` do not apply to a single file).
    pub load: LoadOptions,
}

/// Whether `model` names a single-file checkpoint rather than a diffusers folder or a repo id:
/// an existing file (diffusers' `os.path.isfile`).
pub fn is_single_file(model: &str) -> bool {
    Path::new(model).is_file()
}

/// The local folder of a `config=` value: a directory as it is, a repo id through the Hugging
/// Face cache with only [`CONFIG_PATTERNS`] downloaded (the cache alone with
/// `local_files_only`). A file, or a string that is neither a folder nor a repo id, is an error.
pub fn config_folder(config: &str, options: &LoadOptions) -> Result<PathBuf, PipelineError> {
    let path = Path::new(config);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.is_file() {
        return Err(PipelineError::arg(
            "config",
            format!(
                "\"{config}\" is a file; `config` is a diffusers pipeline folder (with model_index.json) or a Hub repo id"
            ),
        ));
    }
    if config.matches('/').count() > 1 || config.is_empty() {
        return Err(PipelineError::arg(
            "config",
            format!(
                "The provided config \"{config}\" is neither a valid local path nor a valid repo id (a repo id is `owner/name`)"
            ),
        ));
    }
    let mut hub = match &options.hub {
        Some(c) => c.clone(),
        None => diff_hub::HubConfig::from_env()?,
    };
    if options.local_files_only {
        hub.offline = true;
    }
    let snapshot = diff_hub::SnapshotOptions {
        revision: options
            .revision
            .clone()
            .unwrap_or_else(|| "main".to_string()),
        allow_patterns: Some(CONFIG_PATTERNS.map(String::from).to_vec()),
        local_files_only: options.local_files_only,
        ..Default::default()
    };
    let progress = crate::progress::hub_progress(options.progress.as_deref());
    Ok(diff_hub::HubApi::new(hub).snapshot_download(config, &snapshot, progress)?)
}

/// The config folder to use: `config` when given, else the family's default repo; a checkpoint
/// whose family cannot be told needs `config`.
fn choose_config(ckpt: &Checkpoint, config: Option<&str>) -> Result<String, PipelineError> {
    let family = detect_model_type(ckpt);
    match (config, family) {
        (Some(c), Ok(family)) => {
            tracing::info!(
                family = family.diffusers_name(),
                config = c,
                "single-file checkpoint"
            );
            Ok(c.to_string())
        }
        (Some(c), Err(e)) => {
            // diffusers converts with the configs it is given whatever the keys say; the
            // conversion's checks catch a checkpoint that does not fit them.
            tracing::warn!("{e}; converting with the configs of {c} as asked");
            Ok(c.to_string())
        }
        (None, Ok(family)) => {
            let repo = family.default_config_repo();
            tracing::info!(
                family = family.diffusers_name(),
                config = repo,
                "single-file checkpoint: no `config` given, using the configs diffusers uses for this family"
            );
            if family == ModelType::V2 {
                tracing::warn!(
                    "SD 2.x checkpoints do not record their prediction type; {repo} is the 768 v-prediction model (pass config=\"stabilityai/stable-diffusion-2-1-base\" for a 512 epsilon model)"
                );
            }
            Ok(repo.to_string())
        }
        (None, Err(e)) => Err(e.into()),
    }
}

impl DiffusionPipeline {
    /// `Pipeline.from_single_file(path, config=..., **options)`: detects the checkpoint's
    /// family, converts its models in memory and loads them, with tokenizers and scheduler from
    /// the config folder (see the module doc for the flow and the memory it needs).
    pub fn from_single_file(
        path: impl AsRef<Path>,
        options: &SingleFileLoadOptions,
    ) -> Result<Self, PipelineError> {
        let path = path.as_ref();
        let _span =
            tracing::info_span!("DiffusionPipeline::from_single_file", path = %path.display())
                .entered();
        if !path.is_file() {
            return Err(PipelineError::NotFound {
                what: path.display().to_string(),
                message: "no such checkpoint file (from_single_file takes a .safetensors, .ckpt, .pt or .bin file)".into(),
            });
        }
        if let Some(variant) = &options.load.variant {
            tracing::warn!(
                "variant `{variant}` is ignored: a single-file checkpoint has no weight variants (use the dtype option to load it in half precision)"
            );
        }
        let mut ckpt = open_checkpoint(path)?;
        let config = choose_config(&ckpt, options.config.as_deref())?;
        let folder = config_folder(&config, &options.load).map_err(|e| match e {
            // The repo was not asked for: say where it comes from and how to avoid it.
            PipelineError::Hub(hub) if options.config.is_none() => PipelineError::NotFound {
                what: config.clone(),
                message: format!(
                    "{hub}; this is the config repo diffusers uses for the detected family (only its config and tokenizer files are needed): pass `config` (generate --config) with a local diffusers folder or another repo id"
                ),
            },
            other => other,
        })?;
        let index_path = folder.join("model_index.json");
        if !index_path.is_file() {
            return Err(PipelineError::NotFound {
                what: folder.display().to_string(),
                message: format!(
                    "the config `{config}` has no model_index.json; `config` must be a diffusers pipeline folder or repo (model_index.json, one folder per component with its config)"
                ),
            });
        }
        let index = ModelIndex::load(&index_path)?;
        let class = pipeline_class(&index, &index_path, &options.load)?;
        let model_options =
            ModelLoadOptions::new(&options.load.device).with_dtype(options.load.dtype);

        // The models to convert, in the table's order, which puts the UNet last: the VAE and
        // text encoders are copied out of the checkpoint, whose originals are then dropped, and
        // the UNet is moved out. Others are loaded from the config folder, or refused there as
        // unsupported.
        let mut to_convert: Vec<(&ComponentSlot, &str)> = Vec::new();
        for slot in &COMPONENTS {
            let Some(ComponentEntry::Class {
                library,
                class_name,
            }) = index.components.get(slot.name)
            else {
                continue;
            };
            if slot.role(class) != Role::Absent
                && slot.converts_from_single_file()
                && slot.accepts(library, class_name)
                && slot.passed(&options.load.components) == PassedKind::Default
            {
                to_convert.push((slot, class_name));
            }
        }

        let mut preloaded = PassedComponents::default();
        for (i, (slot, class_name)) in to_convert.iter().enumerate() {
            let name = slot.name;
            let config_path = folder.join(name).join(slot.config_file);
            let raw = read_json_map(&config_path)?;
            let component_error = |reason: String| PipelineError::SingleFileComponent {
                component: name.to_string(),
                class_name: (*class_name).to_string(),
                path: path.to_path_buf(),
                reason,
            };
            let converted = take_component(&mut ckpt, class_name, &raw, options.extract_ema)
                .map_err(|e| component_error(e.to_string()))?
                .ok_or_else(|| component_error("not converted from single files".into()))?;
            let source = TensorSource::from_memory(
                path,
                converted
                    .1
                    .into_iter()
                    .map(|(key, t)| (key, RawDType::from_safetensors(t.dtype), t.shape, t.data)),
            )?;
            slot.convert(&mut preloaded, &config_path, &source, &model_options)?;
            drop(source);
            // Free the originals of what no later component reads (the original layout keeps
            // each model under its own prefix; SDXL's two text encoders share `conditioner.`).
            let later = &to_convert[i + 1..];
            let done: Vec<&str> = slot
                .checkpoint_prefixes
                .iter()
                .copied()
                .filter(|p| !later.iter().any(|(s, _)| s.checkpoint_prefixes.contains(p)))
                .collect();
            drop_prefixes(&mut ckpt, &done);
        }
        // The rest of the checkpoint (EMA copies, optimizer state, what was copied rather than
        // moved) is not needed any more.
        drop(ckpt);

        let mut load = options.load.clone();
        // The config folder has no weights: no variant applies (warned about above).
        load.variant = None;
        if matches!(load.components.safety_checker, Passed::Default) {
            load.components.safety_checker = Passed::Drop;
        }
        DiffusionPipeline::from_folder(&folder, &path.display().to_string(), &load, &preloaded)
    }
}

/// `AutoencoderKL.from_single_file(path, config=config, subfolder=subfolder)`: a VAE alone in
/// a single file (the original layout, `encoder.*` / `decoder.*` as in
/// `vae-ft-mse-840000-ema-pruned.safetensors`, with or without the `first_stage_model.` prefix,
/// or the diffusers layout), built from the config of `config`'s `subfolder` (usually `vae`;
/// `config` is a folder or a repo id, fetched as for [`DiffusionPipeline::from_single_file`]).
/// Pass the result in as [`PassedComponents::vae`] to replace a checkpoint's VAE or supply a
/// missing one.
pub fn autoencoder_kl_from_single_file(
    path: impl AsRef<Path>,
    config: &str,
    subfolder: &str,
    options: &LoadOptions,
) -> Result<AutoencoderKL, PipelineError> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(PipelineError::NotFound {
            what: path.display().to_string(),
            message: "no such VAE checkpoint file".into(),
        });
    }
    let mut ckpt = open_checkpoint(path)?;
    let folder = config_folder(config, options)?;
    let config_path = folder.join(subfolder).join("config.json");
    if !config_path.is_file() {
        return Err(PipelineError::NotFound {
            what: folder.display().to_string(),
            message: format!("no `{subfolder}/config.json` for the VAE's config"),
        });
    }
    let raw = read_json_map(&config_path)?;
    let (_, tensors) =
        take_component(&mut ckpt, "AutoencoderKL", &raw, false)?.ok_or_else(|| {
            PipelineError::SingleFileComponent {
                component: "vae".into(),
                class_name: "AutoencoderKL".into(),
                path: path.to_path_buf(),
                reason: "not converted from single files".into(),
            }
        })?;
    drop(ckpt);
    let source = TensorSource::from_memory(
        path,
        tensors
            .into_iter()
            .map(|(key, t)| (key, RawDType::from_safetensors(t.dtype), t.shape, t.data)),
    )?;
    let config = diff_format::load_config(&config_path)?;
    let model_options = ModelLoadOptions::new(&options.device).with_dtype(options.dtype);
    let (vae, report) = <AutoencoderKL as diff_models::FromPretrained>::from_source(
        &config,
        &source,
        &model_options,
    )?;
    if !report.is_clean() {
        tracing::warn!("vae: {}", report.summary());
    }
    Ok(vae)
}

fn drop_prefixes(ckpt: &mut Checkpoint, prefixes: &[&str]) {
    ckpt.tensors
        .retain(|key, _| !prefixes.iter().any(|p| key.starts_with(p)));
}

/// Reads a checkpoint whole, as diff-checkpoint's [`Checkpoint::open`], but a `.safetensors` file
/// through a memory map whose pages are released tensor by tensor as they are copied: the peak
/// is then one copy of the file plus one tensor, not the copy plus the whole mapping. Pickle
/// checkpoints, and safetensors files with a dtype the map reader does not name (fp8), go
/// through [`Checkpoint::open`].
fn open_checkpoint(path: &Path) -> Result<Checkpoint, PipelineError> {
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_safetensors {
        return Ok(Checkpoint::open(path)?);
    }
    let source = TensorSource::open_file(path)?;
    let mut tensors = std::collections::BTreeMap::new();
    for (name, info) in source.tensors() {
        let Some(dtype) = safetensors_dtype(info.dtype) else {
            return Ok(Checkpoint::open(path)?);
        };
        let data = source.read(name)?.into_owned();
        source.release(name);
        let tensor =
            diff_checkpoint::RawTensor::new(dtype, info.shape.clone(), data).map_err(|reason| {
                diff_checkpoint::CheckpointError::BadWeights {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{name}`: {reason}"),
                }
            })?;
        tensors.insert(name.clone(), tensor);
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        tensors,
    })
}

fn safetensors_dtype(dtype: RawDType) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Some(match dtype {
        RawDType::F16 => D::F16,
        RawDType::BF16 => D::BF16,
        RawDType::F32 => D::F32,
        RawDType::F64 => D::F64,
        RawDType::I64 => D::I64,
        RawDType::I32 => D::I32,
        RawDType::Bool => D::BOOL,
        RawDType::U8 => D::U8,
        RawDType::Other("I8") => D::I8,
        RawDType::Other("I16") => D::I16,
        RawDType::Other("U16") => D::U16,
        RawDType::Other("U32") => D::U32,
        RawDType::Other("U64") => D::U64,
        _ => return None,
    })
}
