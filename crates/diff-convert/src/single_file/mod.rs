//! `from_single_file`: original Stable Diffusion checkpoints (CompVis / LDM and SGM key layouts)
//! to a diffusers pipeline folder.
//!
//! # Flow (diffusers `FromSingleFileMixin.from_single_file`)
//! 1. Read the checkpoint ([`Checkpoint::open`]): `.safetensors`, or a PyTorch pickle (`.ckpt`,
//!    `.pt`, `.bin`) through the restricted reader, descending into `"state_dict"` as diffusers
//!    does for Lightning checkpoints. A truncated or corrupt file is an error before anything is
//!    written.
//! 2. Detect the family from keys and shapes ([`detect_model_type`]: diffusers'
//!    `infer_diffusers_model_type` for the SD families, in its order of checks, refusing other
//!    families and files without an SD UNet). The family only picks the default config repo
//!    ([`ModelType::default_config_repo`], diffusers' `DIFFUSERS_DEFAULT_PIPELINE_PATHS`); the
//!    conversion itself follows the config. SD 2.x 512-base (epsilon) and 768-v (v-prediction)
//!    checkpoints have the same keys and shapes: diffusers 0.42.1 takes the v-prediction repo
//!    for both unless `config=` says otherwise, and so do we.
//! 3. Plan the pipeline from the config folder's `model_index.json` as the pipeline class's
//!    `__init__` sees it ([`pipeline`]: the safety checker is skipped, absent optional components
//!    are `[null, null]`, registered parameters get their `__init__` defaults).
//! 4. For each component, in name order: convert the UNet ([`unet`], optionally from its EMA
//!    copy), VAE ([`vae`]) and text encoders ([`clip`]) from the checkpoint, or from a separate
//!    file or folder given for that component (diffusers' `vae=`); check the result against the
//!    config (`check`: essential tensors present, widths and channels as configured); copy
//!    tokenizers, scheduler and feature extractor from the config folder; save with
//!    [`crate::save`] (variant, dtype, sharding) into a temporary folder that replaces `out` only
//!    when everything succeeded.
//!
//! diffusers' `from_single_file` + `save_pretrained` writes the config folder's configs
//! unchanged (no `_name_or_path`), so we re-serialise them; with the same config folder the
//! result is byte-identical (tested per family against diffusers 0.42.1:
//! `tests/fixtures/50-convert/single_file`, `tests/fixtures/51-single-file`).

pub mod pipeline;

/// The key conversions and the family detection (diff-checkpoint), under their former paths.
pub use diff_checkpoint::{Checkpoint, ModelType, clip, infer_model_type, unet, vae};

/// [`diff_checkpoint::detect_model_type`], with this crate's error.
pub fn detect_model_type(ckpt: &Checkpoint) -> Result<ModelType, ConvertError> {
    Ok(diff_checkpoint::detect_model_type(ckpt)?)
}

/// [`diff_checkpoint::convert_component`] (one component to diffusers keys, checked against
/// its config), with this crate's error.
pub fn convert_component(
    ckpt: &Checkpoint,
    class_name: &str,
    config: &Map<String, Value>,
    extract_ema: bool,
) -> Result<Option<(Library, crate::StateDict)>, ConvertError> {
    Ok(diff_checkpoint::convert_component(
        ckpt,
        class_name,
        config,
        extract_ema,
    )?)
}

/// [`diff_checkpoint::take_component`] (the UNet moved out of `ckpt`, not copied), with this
/// crate's error.
pub fn take_component(
    ckpt: &mut Checkpoint,
    class_name: &str,
    config: &Map<String, Value>,
    extract_ema: bool,
) -> Result<Option<(Library, crate::StateDict)>, ConvertError> {
    Ok(diff_checkpoint::take_component(
        ckpt,
        class_name,
        config,
        extract_ema,
    )?)
}

use crate::ConvertError;
use crate::save::{
    Library, SaveOptions, atomic_folder, rewrite_config, save_component, save_weights,
};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn read_object(path: &Path) -> Result<Map<String, Value>, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConvertError::io(path, e))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ConvertError::BadJson {
            path: path.to_path_buf(),
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(ConvertError::BadJson {
            path: path.to_path_buf(),
            reason: format!("invalid JSON: {e}"),
        }),
    }
}

/// Whether a component folder holds weights (any variant, sharded or not).
fn has_weights(folder: &Path) -> Result<bool, ConvertError> {
    for entry in std::fs::read_dir(folder).map_err(|e| ConvertError::io(folder, e))? {
        let entry = entry.map_err(|e| ConvertError::io(folder, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights_stem = ["diffusion_pytorch_model", "model", "pytorch_model"]
            .iter()
            .any(|p| name.starts_with(&format!("{p}.")) || name.starts_with(&format!("{p}-")));
        if weights_stem && (name.ends_with(".safetensors") || name.ends_with(".bin")) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Options of [`convert_single_file_with`].
#[derive(Debug, Clone, Default)]
pub struct SingleFileOptions {
    /// How to save (variant, dtype, shard size). Without a dtype, models are saved in float32
    /// whatever the checkpoint holds, as diffusers builds them without `torch_dtype`.
    pub save: SaveOptions,
    /// Take the UNet from the EMA weights (`model_ema.*`) when the checkpoint has them
    /// (diffusers' `extract_ema=True`; it needs more than 100 `model_ema` keys, as diffusers).
    pub extract_ema: bool,
    /// The pipeline class to build (default: the config folder's `_class_name`), as the class
    /// `from_single_file` is called on.
    pub pipeline_class: Option<String>,
    /// Components that come from elsewhere, by name (diffusers' `vae=...` arguments): a
    /// single-file checkpoint of that component alone (original or diffusers key layout,
    /// converted with the config folder's config, as `AutoencoderKL.from_single_file(file,
    /// config=..., subfolder="vae")`) or a diffusers component folder (`from_pretrained`).
    pub components: BTreeMap<String, PathBuf>,
}

/// Converts the single-file checkpoint `ckpt_path` into a diffusers pipeline folder `out`, with
/// the layout and configs of the diffusers folder `config_dir` (see the module doc).
pub fn convert_single_file(
    ckpt_path: &Path,
    config_dir: &Path,
    out: &Path,
    options: &SaveOptions,
) -> Result<(), ConvertError> {
    let options = SingleFileOptions {
        save: options.clone(),
        ..SingleFileOptions::default()
    };
    convert_single_file_with(ckpt_path, config_dir, out, &options)
}

/// [`convert_single_file`] with EMA extraction, a pipeline class and replacement components.
/// Nothing is written unless everything converts: `out` is replaced atomically.
pub fn convert_single_file_with(
    ckpt_path: &Path,
    config_dir: &Path,
    out: &Path,
    options: &SingleFileOptions,
) -> Result<(), ConvertError> {
    let mut ckpt = Checkpoint::open(ckpt_path)?;
    match detect_model_type(&ckpt) {
        Ok(family) => {
            tracing::info!(
                family = family.diffusers_name(),
                tensors = ckpt.tensors.len(),
                "read single-file checkpoint"
            )
        }
        // The configs decide the conversion; a family we cannot name is not fatal by itself
        // (the component checks catch checkpoints that do not fit the configs).
        Err(e) => tracing::warn!("{e}"),
    }
    let index_path = config_dir.join("model_index.json");
    let config_index = read_object(&index_path)?;
    let plan = pipeline::plan(
        &config_index,
        &index_path,
        options.pipeline_class.as_deref(),
    )?;
    for (name, _) in &plan.load {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(ConvertError::BadJson {
                path: index_path.clone(),
                reason: format!("component name `{name}` is not a plain folder name"),
            });
        }
    }
    for name in options.components.keys() {
        if !plan.load.iter().any(|(n, _)| n == name) {
            return Err(ConvertError::BadJson {
                path: index_path.clone(),
                reason: format!(
                    "a replacement was given for `{name}`, which the pipeline does not load (it loads: {})",
                    plan.load
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    // diffusers builds the models in the default dtype (float32) and loads the checkpoint into
    // them, so a half-precision checkpoint converts to float32 unless a dtype is asked for
    // (`torch_dtype=`). Checked against diffusers 0.42.1 with an fp16 checkpoint.
    let model_options = SaveOptions {
        dtype: Some(options.save.dtype.unwrap_or(crate::SaveDtype::F32)),
        ..options.save.clone()
    };
    let mut index = plan.index;
    atomic_folder(out, |tmp| {
        for (name, class) in &plan.load {
            let from = config_dir.join(name);
            let to = tmp.join(name);
            std::fs::create_dir_all(&to).map_err(|e| ConvertError::io(&to, e))?;
            let replacement = options.components.get(name);
            if let Some(dir) = replacement.filter(|p| p.is_dir()) {
                // A diffusers component folder: loaded and re-saved as it is.
                save_component(dir, &to, &model_options, None)?;
                continue;
            }
            let config_file = from.join("config.json");
            let converted = if config_file.is_file() {
                let config = read_object(&config_file)?;
                match replacement {
                    Some(file) => {
                        let part = Checkpoint::open(file)?;
                        let converted = convert_component(&part, class, &config, false)?;
                        if converted.is_none() {
                            return Err(ConvertError::UnknownArchitecture {
                                path: file.clone(),
                                reason: format!(
                                    "`{name}` ({class}) cannot be converted from a single file; pass a diffusers folder"
                                ),
                            });
                        }
                        converted
                    }
                    None => take_component(&mut ckpt, class, &config, options.extract_ema)?,
                }
            } else {
                None
            };
            match converted {
                Some((library, mut tensors)) => {
                    for entry in std::fs::read_dir(&from).map_err(|e| ConvertError::io(&from, e))? {
                        let entry = entry.map_err(|e| ConvertError::io(&from, e))?;
                        let file = entry.file_name().to_string_lossy().into_owned();
                        if file.ends_with(".json")
                            && !file.contains(".index")
                            && entry.path().is_file()
                        {
                            rewrite_config(
                                &entry.path(),
                                &to.join(&file),
                                None,
                                model_options.dtype,
                            )?;
                        }
                    }
                    match library {
                        Library::Diffusers => crate::order::sort_state_dict_keys(&mut tensors),
                        Library::Transformers => crate::order::sort_transformers_keys(&mut tensors),
                    }
                    save_weights(&to, library, tensors, &model_options)?;
                }
                // Tokenizers, schedulers, feature extractors (and any model whose weights the
                // config folder carries) come from the config folder, as diffusers loads them.
                // A model (a folder with `config.json`) without weights there is an error, as
                // diffusers' SingleFileComponentError: nothing would be saved for it.
                None => {
                    if config_file.is_file() && !has_weights(&from)? {
                        return Err(ConvertError::NoWeights {
                            folder: from.clone(),
                            looked_for: format!(
                                "`{name}` ({class}) is not converted from single files and the config folder holds no diffusion_pytorch_model / model weights for it; pass it as a diffusers folder"
                            ),
                        });
                    }
                    save_component(&from, &to, &options.save, None)?
                }
            }
        }
        index.insert(
            "_diffusers_version".into(),
            Value::String(diff_format::DIFFUSERS_VERSION.into()),
        );
        let text = diff_format::json::to_config_string(&Value::Object(index.clone()));
        crate::save::write_file(&tmp.join("model_index.json"), text.as_bytes())
    })
}
