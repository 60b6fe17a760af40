//! IP-Adapters on a pipeline (diffusers `loaders/ip_adapter.py`, `IPAdapterMixin`):
//! `load_ip_adapter`, `set_ip_adapter_scale`, `unload_ip_adapter`, and the call side
//! (`encode_image`, `prepare_ip_adapter_image_embeds`, the image tokens the UNet attends to).
//!
//! The UNet half (projections and `IPAdapterAttnProcessor2_0`s) is diff-models'
//! `ip_adapter`: it lives in the shared UNet, so every pipeline made by `from_pipe` sees a load
//! or an unload. The image encoder and the feature extractor are this pipeline's components, as
//! in diffusers.
//!
//! [`ip_hidden_states`] is the reusable step of every flow: the call's `ip_adapter_image` or
//! `ip_adapter_image_embeds` in, the projected image tokens (`UNet2DConditionInput::
//! ip_hidden_states`, batch-doubled with CFG, negative first) out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, Tensor};
use diff_format::configs::clip::{CLIPImageProcessorConfig, SizeSpec};
use diff_format::pickle::{PickleCheckpoint, StorageDtype, Value};
use diff_models::image_processor::ImageU8;
use diff_models::ip_adapter::{
    ImageEmbeds, IpAdapterStateDict, MultiIPAdapterImageProjection, StateTensor,
};
use diff_models::{
    CLIPImageProcessor, CLIPVisionModelWithProjection, FromPretrained, ModelError,
    ModelLoadOptions, ScaleConfig, UNet2DConditionModel,
};
use image::RgbImage;

use crate::lora::lora_num_params;

use crate::error::PipelineError;
use crate::pipeline::DiffusionPipeline;

/// The IP-Adapter part of the call arguments (`ip_adapter_image`, `ip_adapter_image_embeds`).
#[derive(Debug, Clone, Default)]
pub struct IpAdapterArgs {
    /// `ip_adapter_image`: one list of images per loaded adapter (diffusers' `[img]` for one
    /// adapter and one image is `vec![vec![img]]`).
    pub ip_adapter_image: Option<Vec<Vec<RgbImage>>>,
    /// `ip_adapter_image_embeds`: one per adapter, `[batch, images, dim]` (plain) or
    /// `[batch, images, seq, dim]` (Plus / Full); with classifier-free guidance the negative
    /// half first, as `prepare_ip_adapter_image_embeds` returns them.
    pub ip_adapter_image_embeds: Option<Vec<ImageEmbeds>>,
}

impl IpAdapterArgs {
    /// Whether the call uses IP-Adapters.
    pub fn is_set(&self) -> bool {
        self.ip_adapter_image.is_some() || self.ip_adapter_image_embeds.is_some()
    }
}

/// One IP-Adapter checkpoint to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAdapterSource {
    /// A Hub repo id or a local folder.
    pub repo_or_folder: String,
    /// The folder of the weight file in it (`"models"`, `"sdxl_models"`; `""` for the root).
    pub subfolder: String,
    /// The weight file (`ip-adapter_sd15.bin`, `ip-adapter-plus_sd15.safetensors`).
    pub weight_name: String,
}

/// The arguments of `load_ip_adapter(pretrained_model_name_or_path_or_dict, subfolder,
/// weight_name, image_encoder_folder)`.
#[derive(Debug, Clone)]
pub struct LoadIpAdapter {
    /// The adapters, loaded together (several adapters at once, as diffusers' lists).
    pub sources: Vec<IpAdapterSource>,
    /// `image_encoder_folder` (default `"image_encoder"`): a name without `/` is taken inside
    /// the first adapter's `subfolder`, a path with `/` from the repo's root; `None` loads no
    /// image encoder (then only `ip_adapter_image_embeds` can be used).
    pub image_encoder_folder: Option<String>,
    /// Hub endpoint, token and cache for repo ids; `None` reads the environment (`HF_ENDPOINT`,
    /// `HF_TOKEN`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, ...).
    pub hub: Option<diff_hub::HubConfig>,
}

impl LoadIpAdapter {
    /// One adapter: `load_ip_adapter(repo, subfolder=..., weight_name=...)`.
    pub fn new(repo_or_folder: &str, subfolder: &str, weight_name: &str) -> Self {
        Self {
            sources: vec![IpAdapterSource {
                repo_or_folder: repo_or_folder.to_owned(),
                subfolder: subfolder.to_owned(),
                weight_name: weight_name.to_owned(),
            }],
            image_encoder_folder: Some("image_encoder".to_owned()),
            hub: None,
        }
    }

    /// diffusers' list form: one entry of `repo_or_folder` or `subfolder` is used for every
    /// weight name; otherwise the lists must have the same length.
    pub fn lists(
        repo_or_folder: &[&str],
        subfolder: &[&str],
        weight_name: &[&str],
    ) -> Result<Self, PipelineError> {
        let n = weight_name.len();
        let widen = |v: &[&str]| -> Vec<String> {
            if v.len() == 1 {
                vec![v[0].to_owned(); n]
            } else {
                v.iter().map(|s| (*s).to_owned()).collect()
            }
        };
        let (repos, subs) = (widen(repo_or_folder), widen(subfolder));
        if n == 0 || repos.len() != n {
            return Err(PipelineError::arg(
                "weight_name",
                "`weight_name` and `pretrained_model_name_or_path_or_dict` must have the same length.",
            ));
        }
        if subs.len() != n {
            return Err(PipelineError::arg(
                "subfolder",
                "`weight_name` and `subfolder` must have the same length.",
            ));
        }
        let sources = repos
            .into_iter()
            .zip(subs)
            .zip(weight_name)
            .map(|((r, s), w)| IpAdapterSource {
                repo_or_folder: r,
                subfolder: s,
                weight_name: (*w).to_owned(),
            })
            .collect();
        Ok(Self {
            sources,
            image_encoder_folder: Some("image_encoder".to_owned()),
            hub: None,
        })
    }

    /// Sets the Hub configuration used for repo ids.
    pub fn with_hub(mut self, hub: diff_hub::HubConfig) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Sets `image_encoder_folder` (`None`: no image encoder).
    pub fn with_image_encoder_folder(mut self, folder: Option<&str>) -> Self {
        self.image_encoder_folder = folder.map(str::to_owned);
        self
    }
}

fn ip_err(checkpoint: &Path, key: &str, reason: impl Into<String>) -> PipelineError {
    ModelError::IpAdapter {
        checkpoint: checkpoint.display().to_string(),
        key: key.to_owned(),
        reason: reason.into(),
    }
    .into()
}

/// `repo_or_folder` + `subfolder/name`: a local file, or the file fetched from the Hub
/// (through the cache and `HF_HUB_OFFLINE`).
fn resolve_file(
    hub: Option<&diff_hub::HubConfig>,
    repo_or_folder: &str,
    subfolder: &str,
    name: &str,
) -> Result<PathBuf, PipelineError> {
    let rel = if subfolder.is_empty() {
        name.to_owned()
    } else {
        format!("{}/{name}", subfolder.trim_end_matches('/'))
    };
    let folder = Path::new(repo_or_folder);
    if folder.is_dir() {
        let path = folder.join(&rel);
        if path.is_file() {
            return Ok(path);
        }
        return Err(PipelineError::NotFound {
            what: repo_or_folder.to_owned(),
            message: format!("no file named {rel} (subfolder {subfolder:?})"),
        });
    }
    diff_hub::validate_repo_id(repo_or_folder).map_err(|_| {
        PipelineError::arg(
            "pretrained_model_name_or_path_or_dict",
            format!("\"{repo_or_folder}\" is neither a local folder nor a valid repo id"),
        )
    })?;
    let api = match hub {
        Some(config) => diff_hub::HubApi::new(config.clone()),
        None => diff_hub::HubApi::from_env()?,
    };
    Ok(api.hf_hub_download(repo_or_folder, &rel, &diff_hub::DownloadOptions::default())?)
}

/// The local folder of the image encoder: `config.json` and its weights (safetensors first).
fn resolve_encoder_folder(
    hub: Option<&diff_hub::HubConfig>,
    repo_or_folder: &str,
    rel: &str,
) -> Result<PathBuf, PipelineError> {
    let folder = Path::new(repo_or_folder);
    if folder.is_dir() {
        let path = folder.join(rel);
        if path.join("config.json").is_file() {
            return Ok(path);
        }
        return Err(PipelineError::NotFound {
            what: repo_or_folder.to_owned(),
            message: format!("no image encoder (config.json) in {rel}"),
        });
    }
    let config = resolve_file(hub, repo_or_folder, rel, "config.json")?;
    if resolve_file(hub, repo_or_folder, rel, "model.safetensors").is_err() {
        resolve_file(hub, repo_or_folder, rel, "pytorch_model.bin")?;
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| PipelineError::NotFound {
            what: repo_or_folder.to_owned(),
            message: format!("no image encoder folder {rel}"),
        })
}

fn to_f32(dtype: StorageDtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        StorageDtype::F32 => chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StorageDtype::F16 => chunks(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StorageDtype::BF16 => chunks(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StorageDtype::F64 => chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect(),
        _ => return None,
    })
}

fn storage_dtype(dtype: safetensors::Dtype) -> Option<StorageDtype> {
    Some(match dtype {
        safetensors::Dtype::F32 => StorageDtype::F32,
        safetensors::Dtype::F16 => StorageDtype::F16,
        safetensors::Dtype::BF16 => StorageDtype::BF16,
        safetensors::Dtype::F64 => StorageDtype::F64,
        _ => return None,
    })
}

/// Reads an IP-Adapter checkpoint as diffusers does: a `.safetensors` name splits the keys by
/// their `image_proj.` / `ip_adapter.` prefixes (others ignored); anything else is a pickle
/// (`torch.load`, here diff-format's restricted reader, never executed) holding the two
/// dictionaries.
pub fn read_ip_adapter_file(
    path: &Path,
    weight_name: &str,
) -> Result<IpAdapterStateDict, PipelineError> {
    let mut sd = IpAdapterStateDict {
        source: path.display().to_string(),
        ..Default::default()
    };
    if weight_name.ends_with(".safetensors") {
        let bytes = std::fs::read(path).map_err(|e| PipelineError::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| ip_err(path, "", format!("not a valid safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let (dict, key) = if let Some(k) = name.strip_prefix("image_proj.") {
                (&mut sd.image_proj, k)
            } else if let Some(k) = name.strip_prefix("ip_adapter.") {
                (&mut sd.ip_adapter, k)
            } else {
                continue;
            };
            let values = storage_dtype(view.dtype())
                .and_then(|d| to_f32(d, view.data()))
                .ok_or_else(|| {
                    ip_err(path, &name, format!("unsupported dtype {:?}", view.dtype()))
                })?;
            dict.insert(
                key.to_owned(),
                StateTensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
    } else {
        let pickle = |e: diff_format::pickle::PickleError| ip_err(path, "", e.to_string());
        let ckpt = PickleCheckpoint::open(path).map_err(pickle)?;
        for (part, dict) in [
            ("image_proj", &mut sd.image_proj),
            ("ip_adapter", &mut sd.ip_adapter),
        ] {
            let Some(Value::Dict(items)) = ckpt.root().get(part) else {
                continue;
            };
            for (k, v) in items {
                let (Value::Str(k), Value::Tensor(info)) = (k, v) else {
                    continue;
                };
                let name = format!("{part}.{k}");
                let bytes = ckpt.read_tensor(&name, info).map_err(pickle)?;
                let values = to_f32(info.dtype, &bytes).ok_or_else(|| {
                    ip_err(path, &name, format!("unsupported dtype {:?}", info.dtype))
                })?;
                dict.insert(
                    k.clone(),
                    StateTensor {
                        shape: info.shape.clone(),
                        values,
                    },
                );
            }
        }
    }
    if sd.image_proj.is_empty() && sd.ip_adapter.is_empty() {
        return Err(ip_err(
            path,
            "",
            "Required keys are (`image_proj` and `ip_adapter`) missing from the state dict.",
        ));
    }
    Ok(sd)
}

/// The `CLIPImageProcessor(size=s, crop_size=s)` diffusers makes when the pipeline has no
/// feature extractor (`s` = the image encoder's `image_size`, 224 without one).
pub fn default_feature_extractor(image_size: u64) -> Result<CLIPImageProcessor, PipelineError> {
    let config = CLIPImageProcessorConfig {
        size: Some(SizeSpec::Int(image_size)),
        crop_size: Some(SizeSpec::Int(image_size)),
        ..CLIPImageProcessorConfig::default()
    };
    Ok(CLIPImageProcessor::new(config)?)
}

impl DiffusionPipeline {
    /// `pipe.image_encoder`.
    pub fn image_encoder(&self) -> Option<&Arc<CLIPVisionModelWithProjection>> {
        self.components.image_encoder.as_ref()
    }

    /// diffusers' `load_ip_adapter`: reads every checkpoint, loads the image encoder when the
    /// pipeline has none (from `image_encoder_folder`), makes a `CLIPImageProcessor` when it
    /// has no feature extractor, and loads the adapters into the (shared) UNet, replacing any
    /// loaded before. All or nothing: on any error the pipeline and its UNet are unchanged.
    pub fn load_ip_adapter(&mut self, load: &LoadIpAdapter) -> Result<(), PipelineError> {
        let _span = tracing::info_span!("load_ip_adapter", n = load.sources.len()).entered();
        let unet = self.require(self.unet(), "unet")?.clone();
        let first = load
            .sources
            .first()
            .ok_or_else(|| PipelineError::arg("weight_name", "no IP-Adapter given"))?;
        let mut state_dicts = Vec::with_capacity(load.sources.len());
        for source in &load.sources {
            let path = resolve_file(
                load.hub.as_ref(),
                &source.repo_or_folder,
                &source.subfolder,
                &source.weight_name,
            )?;
            let sd = read_ip_adapter_file(&path, &source.weight_name)?;
            diff_models::ip_adapter::check_supported(&sd.image_proj, &sd.source)?;
            state_dicts.push(sd);
        }
        let mut image_encoder = self.components.image_encoder.clone();
        if image_encoder.is_none() {
            match &load.image_encoder_folder {
                Some(folder) => {
                    let rel = if folder.contains('/') || first.subfolder.is_empty() {
                        folder.clone()
                    } else {
                        format!("{}/{folder}", first.subfolder.trim_end_matches('/'))
                    };
                    tracing::info!("loading image_encoder from {}", first.repo_or_folder);
                    let dir =
                        resolve_encoder_folder(load.hub.as_ref(), &first.repo_or_folder, &rel)?;
                    let options = ModelLoadOptions::new(self.device()).with_dtype(self.dtype());
                    let (model, _) =
                        CLIPVisionModelWithProjection::from_pretrained(&dir, &options)?;
                    image_encoder = Some(Arc::new(model));
                }
                None => tracing::warn!(
                    "image_encoder is not loaded since `image_encoder_folder=None` passed. You will not be able to use `ip_adapter_image` when calling the pipeline with IP-Adapter.Use `ip_adapter_image_embeds` to pass pre-generated image embedding instead."
                ),
            }
        }
        let feature_extractor = match &self.components.feature_extractor {
            Some(f) => f.clone(),
            None => {
                let size = image_encoder
                    .as_ref()
                    .map_or(224, |e| e.vision_model.image_size as u64);
                Arc::new(default_feature_extractor(size)?)
            }
        };
        // The UNet checks everything before changing anything.
        unet.load_ip_adapter_weights(&state_dicts)?;
        let entries = &mut self.components.entries;
        if image_encoder.is_some() && self.components.image_encoder.is_none() {
            entries.insert(
                "image_encoder".into(),
                Some((
                    "transformers".into(),
                    "CLIPVisionModelWithProjection".into(),
                )),
            );
        }
        if self.components.feature_extractor.is_none() {
            entries.insert(
                "feature_extractor".into(),
                Some(("transformers".into(), "CLIPImageProcessor".into())),
            );
        }
        self.components.image_encoder = image_encoder;
        self.components.feature_extractor = Some(feature_extractor);
        Ok(())
    }

    /// diffusers' `set_ip_adapter_scale`: one config for every adapter or one per adapter; a
    /// config is a float or InstantStyle's per-block dictionary (blocks not named get 0).
    pub fn set_ip_adapter_scale(&self, scales: &[ScaleConfig]) -> Result<(), PipelineError> {
        let unet = self.require(self.unet(), "unet")?;
        Ok(unet.set_ip_adapter_scale(scales)?)
    }

    /// diffusers' `unload_ip_adapter`: drops this pipeline's `image_encoder` (and its
    /// `feature_extractor` when the class has no safety checker, as SDXL), and removes the
    /// adapters from the UNet (projections, and `AttnProcessor2_0` in place of every
    /// IP-Adapter processor), which every pipeline sharing the UNet sees.
    pub fn unload_ip_adapter(&mut self) -> Result<(), PipelineError> {
        if self.components.image_encoder.take().is_some() {
            self.components.entries.insert("image_encoder".into(), None);
        }
        let has_safety_slot = self
            .class()
            .expected_components()
            .iter()
            .any(|(name, _)| *name == "safety_checker");
        if !has_safety_slot && self.components.feature_extractor.take().is_some() {
            self.components
                .entries
                .insert("feature_extractor".into(), None);
        }
        if let Some(unet) = self.unet() {
            unet.unload_ip_adapter()?;
        }
        Ok(())
    }

    /// diffusers' `encode_image(image, device, num_images_per_prompt, output_hidden_states)`:
    /// the feature extractor's pixels through the image encoder; `image_embeds` with zeros as
    /// the negative, or the penultimate hidden states with the encoder's states of a zero
    /// image as the negative. Returns `(embeds, negative)` for `images` (repeated
    /// `num_images_per_prompt` times each).
    pub fn encode_image(
        &self,
        images: &[RgbImage],
        num_images_per_prompt: usize,
        output_hidden_states: bool,
    ) -> Result<(ImageEmbedsBatch, ImageEmbedsBatch), PipelineError> {
        let encoder = self.image_encoder().ok_or_else(|| {
            PipelineError::arg(
                "ip_adapter_image",
                "the pipeline has no image_encoder (load_ip_adapter with `image_encoder_folder=None`, or unload_ip_adapter was called): pass `ip_adapter_image_embeds` instead",
            )
        })?;
        let fe = self.require(self.feature_extractor(), "feature_extractor")?;
        let views: Vec<ImageU8<'_>> = images
            .iter()
            .map(|i| ImageU8 {
                width: i.width() as usize,
                height: i.height() as usize,
                channels: 3,
                data: i.as_raw(),
            })
            .collect();
        let dtype = encoder
            .vision_model
            .embeddings
            .patch_embedding
            .weight
            .val()
            .dtype();
        let pixels = fe.preprocess(&views, self.device())?.cast(dtype);
        let repeat = |t: Tensor<3>| repeat_interleave3(t, num_images_per_prompt);
        if output_hidden_states {
            let penultimate = |pixels: Tensor<4>| -> Result<Tensor<3>, PipelineError> {
                let out = encoder.forward(pixels)?;
                let n = out.hidden_states.len();
                out.hidden_states
                    .into_iter()
                    .nth(n.wrapping_sub(2))
                    .ok_or_else(|| {
                        PipelineError::arg(
                            "image_encoder",
                            "the image encoder has no hidden states",
                        )
                    })
            };
            let zeros = pixels.zeros_like();
            let cond = penultimate(pixels)?.cast(DType::F32);
            let uncond = penultimate(zeros)?.cast(DType::F32);
            Ok((
                ImageEmbedsBatch::Hidden(repeat(cond)),
                ImageEmbedsBatch::Hidden(repeat(uncond)),
            ))
        } else {
            let e = encoder.forward(pixels)?.image_embeds.cast(DType::F32);
            let [n, d] = e.dims();
            let e = repeat(e.reshape([n, 1, d]));
            let [n, _, d] = e.dims();
            let e = e.reshape([n, d]);
            let zeros = e.zeros_like();
            Ok((ImageEmbedsBatch::Pooled(e), ImageEmbedsBatch::Pooled(zeros)))
        }
    }
}

/// What `encode_image` returns for a batch of images.
#[derive(Debug, Clone)]
pub enum ImageEmbedsBatch {
    /// `image_embeds`, `[n, dim]`.
    Pooled(Tensor<2>),
    /// Penultimate hidden states, `[n, seq, dim]`.
    Hidden(Tensor<3>),
}

impl ImageEmbedsBatch {
    /// `x[None, :]` repeated `r` times along a new batch axis (`torch.stack([x] * r)`):
    /// `[r, n, ...]`.
    fn stacked(&self, r: usize) -> ImageEmbeds {
        match self {
            Self::Pooled(t) => {
                let [n, d] = t.dims();
                ImageEmbeds::Pooled(t.clone().reshape([1, n, d])).repeat(r)
            }
            Self::Hidden(t) => {
                let [n, s, d] = t.dims();
                ImageEmbeds::Hidden(t.clone().reshape([1, n, s, d])).repeat(r)
            }
        }
    }
}

fn repeat_interleave3(t: Tensor<3>, r: usize) -> Tensor<3> {
    if r <= 1 {
        return t;
    }
    let [n, s, d] = t.dims();
    t.reshape([n, 1, s, d])
        .expand([n, r, s, d])
        .reshape([n * r, s, d])
}

/// How a flow batches the image embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedsRepeat {
    /// SD / SDXL (`prepare_ip_adapter_image_embeds`): `num_images_per_prompt` copies, given
    /// embeddings too.
    PerPrompt(usize),
    /// The SAG pipeline's copy: `batch_size * num_images_per_prompt` copies of encoded
    /// images, given embeddings used as they are.
    Sag(usize),
}

/// diffusers' `prepare_ip_adapter_image_embeds`: one [`ImageEmbeds`] per adapter, batch-doubled
/// with CFG (negative first).
///
/// `projection` is the denoising model's `encoder_hid_proj` (`UNet2DConditionModel::
/// ip_image_projection`; a video model passes its own).
pub fn prepare_ip_adapter_image_embeds(
    pipe: &DiffusionPipeline,
    projection: Option<Arc<MultiIPAdapterImageProjection>>,
    args: &IpAdapterArgs,
    repeat: EmbedsRepeat,
    do_cfg: bool,
) -> Result<Vec<ImageEmbeds>, PipelineError> {
    if args.ip_adapter_image.is_some() && args.ip_adapter_image_embeds.is_some() {
        return Err(PipelineError::arg(
            "ip_adapter_image",
            "Provide either `ip_adapter_image` or `ip_adapter_image_embeds`. Cannot leave both `ip_adapter_image` and `ip_adapter_image_embeds` defined.",
        ));
    }
    let projection = projection.ok_or_else(|| {
        PipelineError::arg(
            "ip_adapter_image",
            "the UNet has no IP-Adapter loaded (`unet.encoder_hid_proj` is None): call load_ip_adapter first; unload_ip_adapter on any pipeline sharing this UNet (from_pipe) removes it for all of them",
        )
    })?;
    let mut pairs: Vec<(ImageEmbeds, Option<ImageEmbeds>)> = Vec::new();
    if let Some(images) = &args.ip_adapter_image {
        let layers = &projection.image_projection_layers;
        if images.len() != layers.len() {
            return Err(PipelineError::arg(
                "ip_adapter_image",
                format!(
                    "`ip_adapter_image` must have same length as the number of IP Adapters. Got {} images and {} IP Adapters.",
                    images.len(),
                    layers.len()
                ),
            ));
        }
        for (per_adapter, layer) in images.iter().zip(layers) {
            let (pos, neg) = pipe.encode_image(per_adapter, 1, layer.uses_hidden_states())?;
            let r = match repeat {
                EmbedsRepeat::PerPrompt(n) | EmbedsRepeat::Sag(n) => n,
            };
            pairs.push((pos.stacked(r), do_cfg.then(|| neg.stacked(r))));
        }
    } else if let Some(given) = &args.ip_adapter_image_embeds {
        for e in given {
            let (neg, pos) = if do_cfg {
                let (n, p) = e.chunk2();
                (Some(n), p)
            } else {
                (None, e.clone())
            };
            match repeat {
                EmbedsRepeat::PerPrompt(n) => pairs.push((pos.repeat(n), neg.map(|x| x.repeat(n)))),
                EmbedsRepeat::Sag(_) => pairs.push((pos, neg)),
            }
        }
    }
    pairs
        .into_iter()
        .map(|(pos, neg)| match neg {
            Some(neg) => ImageEmbeds::cat(&neg, &pos).ok_or_else(|| {
                PipelineError::arg(
                    "ip_adapter_image_embeds",
                    "negative and positive embeddings differ in kind",
                )
            }),
            None => Ok(pos),
        })
        .collect()
}

/// The image tokens of a call (`UNet2DConditionInput::ip_hidden_states`): `None` without
/// `ip_adapter_image` / `ip_adapter_image_embeds`; else the prepared embeddings through the
/// UNet's projections (`encoder_hid_proj`), batch-doubled with CFG (negative first). Computed
/// once per call: the projection does not change between steps.
pub fn ip_hidden_states(
    pipe: &DiffusionPipeline,
    unet: &UNet2DConditionModel,
    args: &IpAdapterArgs,
    repeat: EmbedsRepeat,
    do_cfg: bool,
) -> Result<Option<Vec<Tensor<3>>>, PipelineError> {
    ip_hidden_states_with(pipe, unet.ip_image_projection(), args, repeat, do_cfg)
}

/// [`ip_hidden_states`] with the projections given (a denoising model other than
/// `UNet2DConditionModel`, such as a motion UNet, passes its own `encoder_hid_proj`).
pub fn ip_hidden_states_with(
    pipe: &DiffusionPipeline,
    projection: Option<Arc<MultiIPAdapterImageProjection>>,
    args: &IpAdapterArgs,
    repeat: EmbedsRepeat,
    do_cfg: bool,
) -> Result<Option<Vec<Tensor<3>>>, PipelineError> {
    if !args.is_set() {
        return Ok(None);
    }
    let embeds = prepare_ip_adapter_image_embeds(pipe, projection.clone(), args, repeat, do_cfg)?;
    let projection = projection.ok_or_else(|| {
        PipelineError::arg("ip_adapter_image", "the UNet has no IP-Adapter loaded")
    })?;
    Ok(Some(projection.forward(&embeds)?))
}

/// Bytes of parameters a pipeline holds, model by model (`accelerate`'s
/// `compute_module_sizes` summed per component): `(component, bytes)`, with the IP-Adapter
/// layers (held by the UNet's processors and projections) as `unet.ip_adapter`, an
/// AnimateDiff pipeline's `motion_adapter`, and the LoRA adapters of all of them as `lora`.
pub fn parameter_bytes(pipe: &DiffusionPipeline) -> Vec<(String, usize)> {
    use burn::module::Module;
    let bytes = |n: usize| n * pipe.dtype().size();
    let c = pipe.components();
    let mut out = Vec::new();
    let mut push = |name: &str, n: Option<usize>| {
        if let Some(n) = n {
            out.push((name.to_owned(), bytes(n)));
        }
    };
    push("unet", c.unet.as_ref().map(|m| m.num_params()));
    push(
        "unet.ip_adapter",
        c.unet
            .as_ref()
            .map(|m| m.ip_adapter_num_params())
            .filter(|n| *n > 0),
    );
    push("vae", c.vae.as_ref().map(|m| m.num_params()));
    push(
        "text_encoder",
        c.text_encoder.as_ref().map(|m| m.num_params()),
    );
    push(
        "text_encoder_2",
        c.text_encoder_2.as_ref().map(|m| m.num_params()),
    );
    push(
        "safety_checker",
        c.safety_checker.as_ref().map(|m| m.num_params()),
    );
    push(
        "image_encoder",
        c.image_encoder.as_ref().map(|m| m.num_params()),
    );
    push(
        "motion_adapter",
        c.motion_adapter.as_ref().map(|m| m.num_params()),
    );
    let lora = c.unet.as_ref().map_or(0, |m| lora_num_params(m.as_ref()))
        + c.text_encoder
            .as_ref()
            .map_or(0, |m| lora_num_params(m.as_ref()))
        + c.text_encoder_2
            .as_ref()
            .map_or(0, |m| lora_num_params(m.as_ref()))
        + c.motion_adapter
            .as_ref()
            .map_or(0, |m| lora_num_params(m.as_ref()));
    push("lora", Some(lora).filter(|n| *n > 0));
    out
}

/// Bytes of distinct parameters held by all of `pipes` together: a model shared by `Arc`
/// (`from_pipe`) counts once, with the IP-Adapter layers and LoRA adapters its layers hold.
/// Equal to one pipeline's total when the others add nothing.
pub fn distinct_parameter_bytes(pipes: &[&DiffusionPipeline]) -> usize {
    use burn::module::Module;
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for pipe in pipes {
        let size = pipe.dtype().size();
        let c = pipe.components();
        let mut add = |ptr: usize, n: usize| {
            seen.insert(ptr, n * size);
        };
        if let Some(m) = &c.unet {
            add(
                Arc::as_ptr(m) as usize,
                m.num_params() + m.ip_adapter_num_params() + lora_num_params(m.as_ref()),
            );
        }
        if let Some(m) = &c.vae {
            add(Arc::as_ptr(m) as usize, m.num_params());
        }
        if let Some(m) = &c.text_encoder {
            add(
                Arc::as_ptr(m) as usize,
                m.num_params() + lora_num_params(m.as_ref()),
            );
        }
        if let Some(m) = &c.text_encoder_2 {
            add(
                Arc::as_ptr(m) as usize,
                m.num_params() + lora_num_params(m.as_ref()),
            );
        }
        if let Some(m) = &c.safety_checker {
            add(Arc::as_ptr(m) as usize, m.num_params());
        }
        if let Some(m) = &c.image_encoder {
            add(Arc::as_ptr(m) as usize, m.num_params());
        }
        if let Some(m) = &c.motion_adapter {
            add(
                Arc::as_ptr(m) as usize,
                m.num_params() + lora_num_params(m.as_ref()),
            );
        }
    }
    seen.values().sum()
}

/// A scale as Python writes it for `set_ip_adapter_scale`: a number, or InstantStyle's
/// dictionary (`{"down": {"block_2": [0.0, 1.0]}, "mid": 0.5, "up": {"block_0": 1.0}}`).
pub fn scale_config_from_json(value: &serde_json::Value) -> Result<ScaleConfig, PipelineError> {
    use diff_models::{BlockScale, PartScale};
    use serde_json::Value;
    let bad = |m: String| PipelineError::arg("scale", m);
    let block = |v: &Value, at: &str| -> Result<BlockScale, PipelineError> {
        match v {
            Value::Number(n) => Ok(BlockScale::All(n.as_f64().unwrap_or(0.0))),
            Value::Array(items) => items
                .iter()
                .map(|x| {
                    x.as_f64()
                        .ok_or_else(|| bad(format!("{at}: {x} is not a number")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(BlockScale::PerLayer),
            other => Err(bad(format!(
                "{at}: expected a number or a list, got {other}"
            ))),
        }
    };
    let part = |v: &Value, at: &str| -> Result<PartScale, PipelineError> {
        match v {
            Value::Number(n) => Ok(PartScale::All(n.as_f64().unwrap_or(0.0))),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    let index = k
                        .strip_prefix("block_")
                        .and_then(|i| i.parse::<usize>().ok())
                        .ok_or_else(|| bad(format!("{at}: key {k:?} is not `block_<n>`")))?;
                    Ok((index, block(v, &format!("{at}.{k}"))?))
                })
                .collect::<Result<Vec<_>, PipelineError>>()
                .map(PartScale::Blocks),
            other => Err(bad(format!(
                "{at}: expected a number or a dictionary, got {other}"
            ))),
        }
    };
    match value {
        Value::Number(n) => Ok(ScaleConfig::Uniform(n.as_f64().unwrap_or(0.0))),
        Value::Object(map) => {
            let (mut down, mut mid, mut up) = (None, None, None);
            for (k, v) in map {
                match k.as_str() {
                    "down" => down = Some(part(v, "down")?),
                    "up" => up = Some(part(v, "up")?),
                    "mid" => mid = Some(block(v, "mid")?),
                    other => return Err(bad(format!("unknown part {other:?} (down, mid, up)"))),
                }
            }
            Ok(ScaleConfig::PerBlock { down, mid, up })
        }
        other => Err(bad(format!(
            "expected a number or a dictionary, got {other}"
        ))),
    }
}

/// `set_ip_adapter_scale`'s argument from JSON: a list (one config per adapter) or one config.
pub fn scales_from_json(value: &serde_json::Value) -> Result<Vec<ScaleConfig>, PipelineError> {
    match value {
        serde_json::Value::Array(items) => items.iter().map(scale_config_from_json).collect(),
        one => Ok(vec![scale_config_from_json(one)?]),
    }
}
