//! `save_pretrained` at the raw-tensor level: model weights, component folders, pipelines.
//!
//! # What diffusers does, and what we do
//! - Weights are `diffusion_pytorch_model[.variant].safetensors` (diffusers models) or
//!   `model[.variant].safetensors` (transformers models), with safetensors metadata
//!   `{"format": "pt"}`, sharded by [`crate::shard`] when larger than `max_shard_size`
//!   (diffusers' default `"10GB"`; transformers 5's `"50GB"`). The index is written with
//!   `json.dumps(indent=2, sort_keys=True) + "\n"`; transformers adds `total_parameters`.
//! - A `variant` save writes only the variant's files; other files in the folder are kept.
//! - Before writing, diffusers deletes files whose name starts with the weights stem and that
//!   look like shards (`…-00001-of-00002`) unless they are about to be written; so a non-variant
//!   save also deletes *variant* shards. We do the same.
//! - **The stale-index trap.** diffusers leaves an old index (and an old single file) in place.
//!   Re-saving a formerly sharded model unsharded therefore leaves
//!   `diffusion_pytorch_model.safetensors.index.json` pointing at shards it just deleted, and the
//!   next `from_pretrained` (which tries the index first) fails. We remove the index of the same
//!   variant when writing a single file, and the single file of the same variant when writing
//!   shards, so the folder always loads the weights just written.
//! - **Configs.** diffusers configs are re-written with every `__init__` default filled in;
//!   transformers CLIP model configs and `CLIPImageProcessor` configs as transformers 5.23 writes
//!   them after loading (see [`crate::transformers_config`]: old 4.x files change a lot); other
//!   transformers configs are copied (only `dtype` / `torch_dtype` follow a cast). A
//!   `CLIPFeatureExtractor` entry of `model_index.json` is written as `CLIPImageProcessor`, and
//!   for the Stable Diffusion pipeline classes `model_index.json` holds what the class registers
//!   (missing optional components as `[null, null]`, parameters with their defaults), with
//!   the fixes their `__init__` makes to outdated scheduler and UNet configs (`steps_offset`,
//!   `clip_sample`, `skip_prk_steps`, `sample_size`; see `apply_init_fixes`).
//! - **transformers' load dtype.** diffusers loads transformers models with `dtype=None`, which
//!   transformers 5 treats as `"auto"`: the config's `dtype` / `torch_dtype` (else the weights'
//!   dtype) decides the dtype the weights are loaded and so re-saved in. A plain save therefore
//!   casts an SD 2.x text encoder whose config says float16 to float16; [`SaveOptions::dtype`]
//!   overrides it, as `torch_dtype=` does in Python.
//! - **Streaming.** Each safetensors file is streamed (header, then each tensor) to a temporary
//!   name and renamed, so a save holds the tensors once, not once more as a file image.
//! - **Atomicity.** diffusers writes in place. We build the new folder beside the destination
//!   (`.<name>.incomplete-<pid>`), hard-linking (or copying) the files of an existing destination
//!   that are kept, then swap it in with two renames: the old folder is renamed aside, the new one
//!   renamed to the destination, the old one deleted. A failure at any point before the swap
//!   leaves the destination untouched; the swap itself leaves either the old or the new folder
//!   under the destination name (or, if the process dies between the two renames, the old one
//!   under `.<name>.previous-<pid>`).

use crate::ConvertError;
use crate::cast::{SaveDtype, cast};
use crate::order::{sort_state_dict_keys, sort_transformers_keys};
use crate::shard::{
    add_variant, index_name, is_shard_stem, parse_size_to_int, shard_pattern, split_into_shards,
    weights_name,
};
use crate::tensors::{RawTensor, StateDict, read_index, read_pickle, read_safetensors};
use crate::transformers_config;
use safetensors::tensor::TensorView;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

mod outdir;
mod replace;
use outdir::{check_not_inside, clean_stale, resolved};
pub use replace::Replacements;

/// diffusers' default `max_shard_size` for its models.
pub const DIFFUSERS_MAX_SHARD_SIZE: u64 = 10_000_000_000;
/// transformers 5's default `max_shard_size`.
pub const TRANSFORMERS_MAX_SHARD_SIZE: u64 = 50_000_000_000;

/// Options of a save.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Save under this variant name (`fp16`, `non_ema`, ...): only renames the files.
    pub variant: Option<String>,
    /// Cast floating tensors to this dtype. `None`: diffusers models keep each tensor's dtype;
    /// transformers models take the dtype their config names (`dtype` / `torch_dtype`, else the
    /// checkpoint's), as transformers 5 loads them (see the module doc).
    pub dtype: Option<SaveDtype>,
    /// Shard limit in bytes; `None` uses each library's default (10GB diffusers, 50GB
    /// transformers), as `DiffusionPipeline.save_pretrained(max_shard_size=None)` does.
    pub max_shard_size: Option<u64>,
    /// `_name_or_path` to record (the repo id or folder the pipeline was loaded from).
    pub name_or_path: Option<String>,
}

impl SaveOptions {
    /// Parses and sets `max_shard_size` from a string such as `"10GB"` or `"200KB"`.
    pub fn with_max_shard_size(mut self, size: &str) -> Result<Self, ConvertError> {
        self.max_shard_size = Some(parse_size_to_int(size)?);
        Ok(self)
    }
}

fn check_variant(variant: Option<&str>) -> Result<(), ConvertError> {
    if let Some(v) = variant
        && (v.is_empty()
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(ConvertError::InvalidVariant(v.to_string()));
    }
    Ok(())
}

pub use diff_checkpoint::Library;

/// Writes a model's weights into `dir` (which must exist) as diffusers / transformers
/// `save_pretrained` would. `state_dict` must be in PyTorch `state_dict()` order for shard
/// boundaries to match (see [`crate::order`]). Returns the file names written.
pub fn save_weights(
    dir: &Path,
    library: Library,
    state_dict: StateDict,
    options: &SaveOptions,
) -> Result<Vec<String>, ConvertError> {
    let variant = options.variant.as_deref();
    check_variant(variant)?;
    let transformers = library == Library::Transformers;
    let max = options.max_shard_size.unwrap_or(if transformers {
        TRANSFORMERS_MAX_SHARD_SIZE
    } else {
        DIFFUSERS_MAX_SHARD_SIZE
    });
    let mut tensors = Vec::with_capacity(state_dict.len());
    for (name, t) in state_dict {
        let t = match options.dtype {
            Some(d) => cast(&name, t, d)?,
            None => t,
        };
        tensors.push((name, t));
    }
    let name = weights_name(transformers, variant);
    let sizes: Vec<(String, u64)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.data.len() as u64))
        .collect();
    let plan = split_into_shards(&sizes, max, &shard_pattern(&name));
    let written: Vec<String> = plan.shards.iter().map(|(f, _)| f.clone()).collect();

    // 1. Clean the folder as diffusers does, plus the stale-index fix (module doc).
    let stem = name.trim_end_matches(".safetensors").to_string();
    let index = index_name(transformers, variant);
    for entry in std::fs::read_dir(dir).map_err(|e| ConvertError::io(dir, e))? {
        let entry = entry.map_err(|e| ConvertError::io(dir, e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if written.contains(&file) || !entry.path().is_file() {
            continue;
        }
        let bare = file.replace(".bin", "").replace(".safetensors", "");
        let stale_shard = file.starts_with(&stem) && is_shard_stem(&bare);
        let stale_index = !plan.is_sharded() && file == index;
        let stale_single = plan.is_sharded() && file == name;
        if stale_shard || stale_index || stale_single {
            tracing::debug!(file = %entry.path().display(), "removing stale weights file");
            std::fs::remove_file(entry.path()).map_err(|e| ConvertError::io(entry.path(), e))?;
        }
    }

    // 2. Write each shard.
    let by_name: BTreeMap<&str, &RawTensor> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let metadata: Option<std::collections::HashMap<String, String>> = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    for (file, names) in &plan.shards {
        let path = dir.join(file);
        let mut views = Vec::with_capacity(names.len());
        for n in names {
            let t = by_name[n.as_str()];
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.data).map_err(|e| {
                ConvertError::Safetensors {
                    path: path.clone(),
                    reason: format!("tensor `{n}`: {e}"),
                }
            })?;
            views.push((n.clone(), view));
        }
        write_safetensors(&path, views, metadata.clone())?;
    }

    // 3. The index.
    if plan.is_sharded() {
        let mut meta = Map::new();
        if transformers {
            let params: usize = tensors.iter().map(|(_, t)| t.numel()).sum();
            meta.insert("total_parameters".into(), Value::from(params as u64));
        }
        meta.insert("total_size".into(), Value::from(plan.total_size));
        let mut weight_map = Map::new();
        for (file, names) in &plan.shards {
            for n in names {
                weight_map.insert(n.clone(), Value::String(file.clone()));
            }
        }
        let mut root = Map::new();
        root.insert("metadata".into(), Value::Object(meta));
        root.insert("weight_map".into(), Value::Object(weight_map));
        let text = diff_format::json::to_config_string(&Value::Object(root));
        write_file(&dir.join(&index), text.as_bytes())?;
    }
    Ok(written)
}

/// Writes `bytes` to `path` through a temporary sibling and a rename. Never writes into an
/// existing file: inside [`atomic_folder`] existing files are hard links to the previous folder's
/// files, and writing into them would change the previous folder.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ConvertError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let result = std::fs::write(&tmp, bytes)
        .and_then(|()| set_saved_mode(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ConvertError::io(path, e));
    }
    Ok(())
}

/// Streams one safetensors file to a temporary sibling of `path`, then renames it into place.
///
/// `safetensors::serialize_to_file` writes the header and then each tensor's bytes through a
/// buffered writer, so peak memory stays at the tensors already held (one copy), where
/// `safetensors::serialize` would first build the whole file in memory (a second copy: about
/// 10 GB for an SDXL UNet in f32). Both lay out the same bytes (same header, same tensor order),
/// so the output is unchanged. Like [`write_file`], it never writes into an existing file.
fn write_safetensors(
    path: &Path,
    views: Vec<(String, TensorView<'_>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), ConvertError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    if let Err(e) = safetensors::serialize_to_file(views, metadata, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ConvertError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        });
    }
    if let Err(e) = set_saved_mode(&tmp).and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ConvertError::io(path, e));
    }
    Ok(())
}

/// Gives a saved file mode 0644 (owner read-write, everyone read), what diffusers'
/// `save_pretrained` gives its files under the usual umask, whatever mode the temporary file or
/// a linked source had.
fn set_saved_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Copies `from` to `to` without writing into an existing `to` (see [`write_file`]).
fn copy_file(from: &Path, to: &Path) -> Result<(), ConvertError> {
    let bytes = std::fs::read(from).map_err(|e| ConvertError::io(from, e))?;
    write_file(to, &bytes)
}

/// Reads a component folder's weights (for a variant, or the plain files), in PyTorch
/// `state_dict()` order. Looks for, in diffusers' order of preference: the safetensors index,
/// the single safetensors file, then the pickle `.bin` (index or single file).
pub fn read_component_weights(
    folder: &Path,
    variant: Option<&str>,
) -> Result<Option<(Library, StateDict)>, ConvertError> {
    let candidates = [
        (Library::Diffusers, "diffusion_pytorch_model"),
        (Library::Transformers, "model"),
        (Library::Transformers, "pytorch_model"),
    ];
    for (library, stem) in candidates {
        let st = add_variant(&format!("{stem}.safetensors"), variant);
        let st_index = add_variant(&format!("{stem}.safetensors.index.json"), variant);
        let bin = add_variant(&format!("{stem}.bin"), variant);
        let bin_index = add_variant(&format!("{stem}.bin.index.json"), variant);
        let mut tensors: StateDict = if folder.join(&st_index).is_file() {
            read_index(&folder.join(&st_index))?.into_iter().collect()
        } else if folder.join(&st).is_file() {
            read_safetensors(&folder.join(&st))?.0.into_iter().collect()
        } else if folder.join(&bin_index).is_file() {
            read_index(&folder.join(&bin_index))?.into_iter().collect()
        } else if folder.join(&bin).is_file() {
            read_pickle(&folder.join(&bin))?
        } else {
            continue;
        };
        match library {
            Library::Diffusers => sort_state_dict_keys(&mut tensors),
            Library::Transformers => sort_transformers_keys(&mut tensors),
        }
        return Ok(Some((library, tensors)));
    }
    Ok(None)
}

/// The JSON files a component folder may carry, and how each library writes them.
const JSON_FILES: &[&str] = &[
    "config.json",
    "scheduler_config.json",
    "preprocessor_config.json",
    "generation_config.json",
];

/// Re-serialises a config the way diffusers / transformers write it: `json.dumps(indent=2,
/// sort_keys=True) + "\n"`, `_diffusers_version` set to the version we reproduce (diffusers
/// stamps its own version on save) and, for diffusers model configs, `_name_or_path`.
/// transformers CLIP configs are re-serialised as transformers 5.23 writes them
/// ([`crate::transformers_config`]), with the weights' dtype `dtype` and the class named in
/// their `architectures`.
pub(crate) fn rewrite_config(
    src: &Path,
    dst: &Path,
    name_or_path: Option<&str>,
    dtype: Option<SaveDtype>,
) -> Result<(), ConvertError> {
    rewrite_config_as(src, dst, name_or_path, dtype.map(dtype_name), None)
}

/// The name transformers records for a dtype (`str(torch.float16).split(".")[1]`).
pub(crate) fn dtype_name(d: SaveDtype) -> &'static str {
    match d {
        SaveDtype::F32 => "float32",
        SaveDtype::F16 => "float16",
        SaveDtype::BF16 => "bfloat16",
    }
}

/// [`rewrite_config`] for a component of class `class` (the `model_index.json` entry: the model
/// class transformers writes into `architectures`, or the image-processor class), whose weights
/// are saved in `dtype` (a transformers dtype name).
pub(crate) fn rewrite_config_as(
    src: &Path,
    dst: &Path,
    name_or_path: Option<&str>,
    dtype: Option<&str>,
    class: Option<&str>,
) -> Result<(), ConvertError> {
    let mut map = read_json_object(src)?;
    let file = dst.file_name().and_then(|f| f.to_str()).unwrap_or_default();
    if file == "config.json" && transformers_config::is_supported_model_config(&map) {
        let architecture = class.map(str::to_string).or_else(|| {
            map.get("architectures")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let out =
            transformers_config::resave_model_config(map, architecture.as_deref(), dtype, src)?;
        let text = diff_format::json::to_config_string(&Value::Object(out));
        return write_file(dst, text.as_bytes());
    }
    if file == "preprocessor_config.json"
        && class
            .or_else(|| transformers_config::image_processor_class(&map))
            .is_some_and(transformers_config::is_supported_image_processor)
    {
        let out = transformers_config::resave_image_processor_config(map, src)?;
        let text = diff_format::json::to_config_string(&Value::Object(out));
        return write_file(dst, text.as_bytes());
    }
    for key in diff_format::config::DROPPED_ON_SAVE {
        map.remove(key);
    }
    // diffusers re-saves every `__init__` argument (defaults filled in), so old configs with
    // few keys grow on re-save; the typed configs of diff-format know those defaults.
    map = fill_defaults(map, src)?;
    if map.contains_key("_diffusers_version") {
        map.insert(
            "_diffusers_version".into(),
            Value::String(diff_format::DIFFUSERS_VERSION.into()),
        );
        // Models record where they were loaded from; schedulers (scheduler_config.json) do not.
        if let Some(n) = name_or_path
            && file == "config.json"
        {
            map.insert("_name_or_path".into(), Value::String(n.to_string()));
        }
    }
    // Other transformers configs (model types this crate does not re-serialise) are copied;
    // transformers records the dtype the weights were saved in (`dtype`, `torch_dtype` before
    // 4.56), which a cast on save changes, as saving a model loaded in that dtype would.
    if let Some(name) = dtype {
        for key in ["dtype", "torch_dtype"] {
            if map.contains_key(key) && !map.contains_key("_diffusers_version") {
                map.insert(key.into(), Value::String(name.into()));
            }
        }
    }
    let out = diff_format::json::to_config_string(&Value::Object(map));
    write_file(dst, out.as_bytes())
}

/// Reads a JSON object as Python's `json.loads` would (non-finite floats included).
fn read_json_object(src: &Path) -> Result<Map<String, Value>, ConvertError> {
    let text = std::fs::read_to_string(src).map_err(|e| ConvertError::io(src, e))?;
    match diff_format::json::loads(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ConvertError::BadJson {
            path: src.to_path_buf(),
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(ConvertError::BadJson {
            path: src.to_path_buf(),
            reason: format!("invalid JSON: {e}"),
        }),
    }
}

/// Loads `map` into diff-format's typed config `T` and writes it back as diffusers would
/// (every field, raw values kept where unchanged).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
    map: Map<String, Value>,
    src: &Path,
) -> Result<Value, ConvertError> {
    diff_format::config::ConfigFile::<T>::from_value(Value::Object(map), src)
        .and_then(|c| c.to_json_value())
        .map_err(|e| ConvertError::BadJson {
            path: src.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Fills the `__init__` defaults of the classes diff-format has typed configs for (the UNet, the
/// VAE and the schedulers), as diffusers' `register_to_config` records every argument; other
/// configs (transformers', unknown classes) are written with their own keys.
pub(crate) fn fill_defaults(
    map: Map<String, Value>,
    src: &Path,
) -> Result<Map<String, Value>, ConvertError> {
    use diff_format::configs::scheduler as s;
    use diff_format::configs::{unet::UNet2DConditionConfig, vae::AutoencoderKLConfig};
    let class = map
        .get("_class_name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let filled = match class.as_deref() {
        Some("UNet2DConditionModel") => typed::<UNet2DConditionConfig>(map, src)?,
        Some("AutoencoderKL") => typed::<AutoencoderKLConfig>(map, src)?,
        Some("DDIMScheduler") => typed::<s::DDIMSchedulerConfig>(map, src)?,
        Some("DDPMScheduler") => typed::<s::DDPMSchedulerConfig>(map, src)?,
        Some("PNDMScheduler") => typed::<s::PNDMSchedulerConfig>(map, src)?,
        Some("LMSDiscreteScheduler") => typed::<s::LMSDiscreteSchedulerConfig>(map, src)?,
        Some("EulerDiscreteScheduler") => typed::<s::EulerDiscreteSchedulerConfig>(map, src)?,
        Some("HeunDiscreteScheduler") => typed::<s::HeunDiscreteSchedulerConfig>(map, src)?,
        Some("EulerAncestralDiscreteScheduler") => {
            typed::<s::EulerAncestralDiscreteSchedulerConfig>(map, src)?
        }
        Some("DPMSolverMultistepScheduler") => {
            typed::<s::DPMSolverMultistepSchedulerConfig>(map, src)?
        }
        Some("DPMSolverSinglestepScheduler") => {
            typed::<s::DPMSolverSinglestepSchedulerConfig>(map, src)?
        }
        Some("KDPM2DiscreteScheduler") => typed::<s::KDPM2DiscreteSchedulerConfig>(map, src)?,
        Some("KDPM2AncestralDiscreteScheduler") => {
            typed::<s::KDPM2AncestralDiscreteSchedulerConfig>(map, src)?
        }
        Some("DEISMultistepScheduler") => typed::<s::DEISMultistepSchedulerConfig>(map, src)?,
        Some("UniPCMultistepScheduler") => typed::<s::UniPCMultistepSchedulerConfig>(map, src)?,
        Some("EDMEulerScheduler") => typed::<s::EDMEulerSchedulerConfig>(map, src)?,
        Some("LCMScheduler") => typed::<s::LCMSchedulerConfig>(map, src)?,
        Some("TCDScheduler") => typed::<s::TCDSchedulerConfig>(map, src)?,
        Some("FlowMatchEulerDiscreteScheduler") => {
            typed::<s::FlowMatchEulerDiscreteSchedulerConfig>(map, src)?
        }
        _ => return Ok(map),
    };
    match filled {
        Value::Object(m) => Ok(m),
        _ => Err(ConvertError::BadJson {
            path: src.to_path_buf(),
            reason: "config did not serialise to an object".into(),
        }),
    }
}

/// Saves one component folder `src` into `dst` (which must exist): configs re-serialised,
/// weights re-written per `options`, other files (tokenizer files) copied unchanged.
///
/// With a variant, the component's weights are read from the variant files if present, else
/// from the plain ones (as diffusers loads them), and written under the variant name.
pub fn save_component(
    src: &Path,
    dst: &Path,
    options: &SaveOptions,
    name_or_path: Option<&str>,
) -> Result<(), ConvertError> {
    save_component_as(src, dst, options, name_or_path, None)
}

/// [`save_component`] for a component whose class is known (`model_index.json`'s entry, e.g.
/// `StableDiffusionSafetyChecker`): transformers writes that class into `architectures`, and a
/// `CLIPFeatureExtractor` entry is loaded (and written) as `CLIPImageProcessor`.
///
/// transformers models are loaded by diffusers with `dtype=None`, which transformers 5 reads as
/// `"auto"`: the weights are loaded (and so re-saved) in the dtype the config names (`dtype`,
/// or the legacy `torch_dtype`), else in the dtype of the checkpoint's first floating tensor
/// (first by name here).
/// A plain save of an SD 2.x text encoder whose config says `"torch_dtype": "float16"` therefore
/// writes float16 weights, whatever the stored dtype; [`SaveOptions::dtype`] overrides that.
pub fn save_component_as(
    src: &Path,
    dst: &Path,
    options: &SaveOptions,
    name_or_path: Option<&str>,
    class: Option<&str>,
) -> Result<(), ConvertError> {
    save_component_replacing(src, dst, options, name_or_path, class, None)
}

/// [`save_component_as`] with some tensors replaced by in-memory ones (see [`Replacements`]).
fn save_component_replacing(
    src: &Path,
    dst: &Path,
    options: &SaveOptions,
    name_or_path: Option<&str>,
    class: Option<&str>,
    replace: Option<&BTreeMap<String, RawTensor>>,
) -> Result<(), ConvertError> {
    let mut weights = match read_component_weights(src, options.variant.as_deref())? {
        Some(w) => Some(w),
        None => read_component_weights(src, None)?,
    };
    let mut options = options.clone();
    let mut dtype: Option<String> = options.dtype.map(|d| dtype_name(d).to_string());
    if let Some((Library::Transformers, tensors)) = &weights
        && options.dtype.is_none()
    {
        let config = src.join("config.json");
        let from_config = if config.is_file() {
            transformers_config::load_dtype(&read_json_object(&config)?)
        } else {
            None
        };
        let auto = from_config.or_else(|| {
            let mut names: Vec<&(String, RawTensor)> =
                tensors.iter().filter(|(_, t)| t.is_float()).collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            names
                .first()
                .map(|(_, t)| torch_dtype_name(t.dtype).to_string())
        });
        if let Some(name) = auto {
            options.dtype = SaveDtype::parse(&name);
            if options.dtype.is_none() {
                tracing::warn!(
                    config = %config.display(),
                    dtype = %name,
                    "transformers would load this model in a dtype saving cannot cast to (float32, float16, bfloat16); weights are kept as stored"
                );
            }
            dtype = Some(match options.dtype {
                Some(d) => dtype_name(d).to_string(),
                None => name,
            });
        }
    }
    for entry in std::fs::read_dir(src).map_err(|e| ConvertError::io(src, e))? {
        let entry = entry.map_err(|e| ConvertError::io(src, e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !path.is_file() || is_weights_file(&file) {
            continue;
        }
        if JSON_FILES.contains(&file.as_str()) {
            rewrite_config_as(
                &path,
                &dst.join(&file),
                name_or_path,
                dtype.as_deref(),
                class,
            )?;
        } else {
            copy_file(&path, &dst.join(&file))?;
        }
    }
    match (&mut weights, replace) {
        (Some((_, tensors)), Some(replace)) => replace::apply(src, tensors, replace)?,
        (None, Some(replace)) if !replace.is_empty() => {
            return Err(ConvertError::NoWeights {
                folder: src.to_path_buf(),
                looked_for: "the weights the in-memory tensors replace".into(),
            });
        }
        _ => {}
    }
    if let Some((library, tensors)) = weights {
        save_weights(dst, library, tensors, &options)?;
    }
    Ok(())
}

/// torch's name of a safetensors dtype (`float32`, ...), as transformers writes it.
fn torch_dtype_name(d: safetensors::Dtype) -> &'static str {
    match d {
        safetensors::Dtype::F16 => "float16",
        safetensors::Dtype::BF16 => "bfloat16",
        safetensors::Dtype::F64 => "float64",
        _ => "float32",
    }
}

/// Whether a file name is a weights file or index (any variant, any shard).
fn is_weights_file(name: &str) -> bool {
    let prefixes = ["diffusion_pytorch_model", "model", "pytorch_model"];
    let exts = [".safetensors", ".bin", ".json"];
    prefixes
        .iter()
        .any(|p| name.starts_with(&format!("{p}.")) || name.starts_with(&format!("{p}-")))
        && exts.iter().any(|e| name.ends_with(e))
        && (name.ends_with(".safetensors") || name.ends_with(".bin") || name.contains(".index"))
}

/// Re-saves a pipeline folder `src` (with `model_index.json`) into `dst` in the diffusers layout.
///
/// `model_index.json` is re-serialised with `_diffusers_version` and `_name_or_path` set as
/// diffusers' `save_pretrained` writes them (`_name_or_path` is [`SaveOptions::name_or_path`],
/// defaulting to `src` as given). Every component folder named in it is saved with
/// [`save_component`]; `[null, null]` components are skipped. The whole save is atomic (module
/// doc): `dst` is replaced only once everything has been written.
pub fn save_pipeline(src: &Path, dst: &Path, options: &SaveOptions) -> Result<(), ConvertError> {
    save_pipeline_with(src, dst, options, &Replacements::new())
}

/// [`save_pipeline`] with tensors of some components replaced by in-memory ones: diffusers'
/// `save_pretrained` of a pipeline whose weights changed after loading (`fuse_lora`). Each
/// replacement names a stored tensor (with or without a `text_model.` prefix) and is written
/// in that tensor's dtype, then cast by [`SaveOptions::dtype`] like every other tensor. A
/// replacement for a component the pipeline does not have, or for a key or shape its weights
/// do not have, is an error and nothing is written.
pub fn save_pipeline_with(
    src: &Path,
    dst: &Path,
    options: &SaveOptions,
    replacements: &Replacements,
) -> Result<(), ConvertError> {
    check_variant(options.variant.as_deref())?;
    let index_path = src.join("model_index.json");
    let text =
        std::fs::read_to_string(&index_path).map_err(|e| ConvertError::io(&index_path, e))?;
    let mut index: Map<String, Value> = match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(ConvertError::BadJson {
                path: index_path,
                reason: "not a JSON object".into(),
            });
        }
    };
    if let Some(spec) = index
        .get("_class_name")
        .and_then(Value::as_str)
        .and_then(crate::single_file::pipeline::spec)
    {
        index = registered_index(&index, spec);
    }
    let name_or_path = options
        .name_or_path
        .clone()
        .unwrap_or_else(|| src.display().to_string());
    let components: Vec<String> = index
        .iter()
        .filter(|(k, v)| {
            !k.starts_with('_')
                && matches!(v, Value::Array(a) if a.len() == 2 && a.iter().all(Value::is_string))
        })
        .map(|(k, _)| k.clone())
        .collect();
    check_not_inside(src, dst)?;
    for name in &components {
        if !is_plain_name(name) {
            return Err(ConvertError::BadJson {
                path: src.join("model_index.json"),
                reason: format!("component name `{name}` is not a plain folder name"),
            });
        }
    }
    if let Some(unknown) = replacements.keys().find(|c| !components.contains(c)) {
        return Err(ConvertError::BadJson {
            path: src.join("model_index.json"),
            reason: format!("no component `{unknown}` to write in-memory weights into"),
        });
    }
    atomic_folder(dst, |tmp| {
        for name in &components {
            let from = src.join(name);
            if !from.is_dir() && replacements.contains_key(name) {
                return Err(ConvertError::NoWeights {
                    folder: from,
                    looked_for: "the component folder the in-memory weights replace".into(),
                });
            }
            if !from.is_dir() {
                tracing::warn!(component = %name, "component folder missing in {}", src.display());
                continue;
            }
            let to = tmp.join(name);
            std::fs::create_dir_all(&to).map_err(|e| ConvertError::io(&to, e))?;
            let component_path = format!("{name_or_path}/{name}");
            let class = index
                .get(name)
                .and_then(Value::as_array)
                .and_then(|a| a.get(1))
                .and_then(Value::as_str)
                .map(str::to_string);
            save_component_replacing(
                &from,
                &to,
                options,
                Some(&component_path),
                class.as_deref(),
                replacements.get(name),
            )?;
        }
        if let Some(class) = index.get("_class_name").and_then(Value::as_str) {
            apply_init_fixes(class, src, tmp)?;
        }
        // model_index.json last, as diffusers writes it: each component's entry is the class
        // of the object it loaded, so a `CLIPFeatureExtractor` entry (removed in transformers 5;
        // diffusers loads `CLIPImageProcessor` instead) is written as `CLIPImageProcessor`.
        for name in &components {
            if let Some(entry) = index.get_mut(name) {
                *entry = saved_index_entry(entry);
            }
        }
        index.insert(
            "_diffusers_version".into(),
            Value::String(diff_format::DIFFUSERS_VERSION.into()),
        );
        index.insert("_name_or_path".into(), Value::String(name_or_path.clone()));
        let out = diff_format::json::to_config_string(&Value::Object(index.clone()));
        write_file(&tmp.join("model_index.json"), out.as_bytes())
    })
}

/// The config fixes the Stable Diffusion pipelines' `__init__` makes to outdated components
/// before registering them (diffusers 0.42.1 `pipeline_stable_diffusion*.py`), which their
/// `save_pretrained` therefore writes:
/// - the scheduler's `steps_offset` (when its config has one) becomes 1;
/// - `clip_sample: true` becomes `false` (text-to-image and image-to-image);
/// - `skip_prk_steps: false` becomes `true` (inpainting);
/// - a UNet config written by diffusers before 0.9 with an integer `sample_size` below 64 gets
///   `sample_size: 64`.
///
/// SDXL pipelines make none of these. `src` is the source pipeline folder (the UNet's original
/// `_diffusers_version` is read there), `out` the folder being written.
fn apply_init_fixes(class: &str, src: &Path, out: &Path) -> Result<(), ConvertError> {
    let scheduler = out.join("scheduler/scheduler_config.json");
    if scheduler.is_file() {
        let mut map = read_json_object(&scheduler)?;
        if init_fix_scheduler(class, &mut map) {
            let text = diff_format::json::to_config_string(&Value::Object(map));
            write_file(&scheduler, text.as_bytes())?;
        }
    }
    let (unet_src, unet_out) = (src.join("unet/config.json"), out.join("unet/config.json"));
    if unet_src.is_file() && unet_out.is_file() {
        let original = read_json_object(&unet_src)?;
        let version = original.get("_diffusers_version").and_then(Value::as_str);
        let mut map = read_json_object(&unet_out)?;
        if init_fix_unet(class, version, &mut map) {
            let text = diff_format::json::to_config_string(&Value::Object(map));
            write_file(&unet_out, text.as_bytes())?;
        }
    }
    Ok(())
}

/// The scheduler half of [`apply_init_fixes`] on a scheduler config; whether it changed.
pub(crate) fn init_fix_scheduler(class: &str, map: &mut Map<String, Value>) -> bool {
    let (clip_sample, skip_prk) = match class {
        "StableDiffusionPipeline" | "StableDiffusionImg2ImgPipeline" => (true, false),
        "StableDiffusionInpaintPipeline" => (false, true),
        _ => return false,
    };
    let mut changed = false;
    if map
        .get("steps_offset")
        .is_some_and(|v| !transformers_config::py_eq(v, &Value::from(1)))
    {
        map.insert("steps_offset".into(), Value::from(1));
        changed = true;
    }
    // Python tests `is True` / `is False`: only the booleans themselves.
    if clip_sample && map.get("clip_sample") == Some(&Value::Bool(true)) {
        map.insert("clip_sample".into(), Value::Bool(false));
        changed = true;
    }
    if skip_prk && map.get("skip_prk_steps") == Some(&Value::Bool(false)) {
        map.insert("skip_prk_steps".into(), Value::Bool(true));
        changed = true;
    }
    changed
}

/// The UNet half of [`apply_init_fixes`]: `version` is the `_diffusers_version` the UNet config
/// was loaded with; whether `map` changed.
pub(crate) fn init_fix_unet(
    class: &str,
    version: Option<&str>,
    map: &mut Map<String, Value>,
) -> bool {
    if !matches!(
        class,
        "StableDiffusionPipeline"
            | "StableDiffusionImg2ImgPipeline"
            | "StableDiffusionInpaintPipeline"
    ) {
        return false;
    }
    let old = version.is_some_and(|v| release_before(v, [0, 9, 0]));
    let small = map
        .get("sample_size")
        .and_then(Value::as_i64)
        .is_some_and(|s| s < 64);
    if old && small {
        map.insert("sample_size".into(), Value::from(64));
    }
    old && small
}

/// `version.parse(version.parse(v).base_version) < version.parse("X.Y.Z.dev0")`: the release
/// numbers of `v` (pre-release and dev suffixes dropped) compared with `release`.
fn release_before(v: &str, release: [u64; 3]) -> bool {
    let mut parts = Vec::new();
    for piece in v.trim().trim_start_matches('v').split('.') {
        let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
        let Ok(n) = digits.parse::<u64>() else { break };
        parts.push(n);
        if digits.len() != piece.len() {
            break;
        }
    }
    parts.resize(3.max(parts.len()), 0);
    parts.as_slice() < release.as_slice()
}

/// What a pipeline class of known `__init__` registers from a `model_index.json`, and so what
/// its `save_pretrained` writes: every `__init__` component (the folder's entry; `[null, null]`
/// for an optional one the index lacks, as in SD 1.x repos written before `image_encoder`
/// existed) and every registered parameter (the index's value, else the `__init__` default, e.g.
/// `requires_safety_checker: true`). Keys the class does not take are dropped, as diffusers
/// ignores them. A required component missing from the index is left missing (diffusers refuses
/// to load such a pipeline; the save goes on without it).
fn registered_index(
    index: &Map<String, Value>,
    spec: &crate::single_file::pipeline::PipelineSpec,
) -> Map<String, Value> {
    let mut out = Map::new();
    for key in ["_class_name", "_diffusers_version", "_name_or_path"] {
        if let Some(v) = index.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    for name in spec.components {
        match index.get(*name) {
            Some(v) => {
                out.insert((*name).into(), v.clone());
            }
            None if spec.optional.contains(name) => {
                out.insert((*name).into(), serde_json::json!([null, null]));
            }
            None => {
                tracing::warn!(component = %name, class = %spec.class, "model_index.json lacks a required component");
            }
        }
    }
    for (param, default) in spec.params {
        let value = index.get(*param).cloned().unwrap_or(Value::Bool(*default));
        out.insert((*param).into(), value);
    }
    out
}

/// The `model_index.json` entry diffusers writes for a component loaded from `entry`: the class
/// of the object it loaded, which for `["transformers", "CLIPFeatureExtractor"]` (a class
/// transformers 5 no longer has; diffusers 0.42.1 loads `CLIPImageProcessor` instead) is
/// `["transformers", "CLIPImageProcessor"]`.
pub(crate) fn saved_index_entry(entry: &Value) -> Value {
    match entry.as_array().map(Vec::as_slice) {
        Some([Value::String(library), Value::String(class)])
            if library == "transformers" && class == "CLIPFeatureExtractor" =>
        {
            serde_json::json!(["transformers", "CLIPImageProcessor"])
        }
        _ => entry.clone(),
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\\')
}

/// Runs `fill` on a fresh temporary folder seeded with links to `dst`'s current files, then
/// swaps it in place of `dst` (see the module doc). `dst` must be a folder or not exist: an
/// existing file there is an error and stays untouched. Temporary folders left by saves to the
/// same destination whose process died are cleaned up first.
pub fn atomic_folder(
    dst: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let given = dst;
    // `.`, `..` and `out/.` have no usable file name: work on the resolved path.
    let dst = &resolved(dst)?;
    let refuse = |reason: String| ConvertError::OutputFolder {
        path: given.to_path_buf(),
        reason,
    };
    if let Ok(meta) = std::fs::metadata(dst)
        && !meta.is_dir()
    {
        return Err(refuse(
            "a file is there; refusing to replace it with a folder (remove it or pick another path)"
                .into(),
        ));
    }
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => return Err(refuse("it is the root folder".into())),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ConvertError::io(&parent, e))?;
    let base = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    clean_stale(&parent, &base, dst);
    let pid = std::process::id();
    let tmp = parent.join(format!(".{base}.incomplete-{pid}"));
    let old = parent.join(format!(".{base}.previous-{pid}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ConvertError::io(&tmp, e))?;
    }
    let result = (|| {
        if dst.is_dir() {
            link_tree(dst, &tmp)?;
        } else {
            std::fs::create_dir_all(&tmp).map_err(|e| ConvertError::io(&tmp, e))?;
        }
        fill(&tmp)
    })();
    if let Err(e) = result {
        // Best effort: the temporary folder is garbage either way.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dst.exists() {
        std::fs::rename(dst, &old).map_err(|e| ConvertError::io(dst, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, dst) {
        // Put the previous folder back so the destination is never lost.
        let _ = std::fs::rename(&old, dst);
        return Err(ConvertError::io(dst, e));
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| ConvertError::io(&old, e))?;
    }
    Ok(())
}

/// Recreates `src`'s tree at `dst`, hard-linking files (copying where links are impossible).
/// Files are later replaced by writing new files (never by writing into the linked inode), so
/// the original folder's files are never modified.
fn link_tree(src: &Path, dst: &Path) -> Result<(), ConvertError> {
    std::fs::create_dir_all(dst).map_err(|e| ConvertError::io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| ConvertError::io(src, e))? {
        let entry = entry.map_err(|e| ConvertError::io(src, e))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| ConvertError::io(&from, e))?;
        if kind.is_dir() {
            link_tree(&from, &to)?;
        } else if kind.is_file() && std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| ConvertError::io(&from, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_before_compares_base_versions_like_packaging() {
        assert!(release_before("0.8.0", [0, 9, 0]));
        assert!(release_before("0.7.0.dev0", [0, 9, 0]));
        assert!(!release_before("0.9.0.dev0", [0, 9, 0]));
        assert!(!release_before("0.9.0rc1", [0, 9, 0]));
        assert!(!release_before("0.10.0", [0, 9, 0]));
        assert!(!release_before("1.0", [0, 9, 0]));
    }

    #[test]
    fn legacy_feature_extractor_entry_is_renamed_and_others_kept() {
        let legacy = serde_json::json!(["transformers", "CLIPFeatureExtractor"]);
        assert_eq!(
            saved_index_entry(&legacy),
            serde_json::json!(["transformers", "CLIPImageProcessor"])
        );
        let other = serde_json::json!(["diffusers", "CLIPFeatureExtractor"]);
        assert_eq!(saved_index_entry(&other), other);
    }
}
