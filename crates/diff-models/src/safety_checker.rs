//! diffusers' `StableDiffusionSafetyChecker`
//! (`pipelines/stable_diffusion/safety_checker.py`, diffusers 0.42.1).
//!
//! A CLIP vision tower and projection embed the `clip_input` (from `CLIPImageProcessor`); the
//! embedding's cosine similarities to 3 "special care" and 17 concept embeddings are compared
//! with per-concept thresholds. The embeddings and thresholds are weights of the checkpoint
//! (`concept_embeds`, `concept_embeds_weights`, `special_care_embeds`,
//! `special_care_embeds_weights`), never constants here.
//!
//! The rule, per image, as diffusers' `forward` has it: `adjustment = 0`; for each special
//! concept `s = round(cos - threshold + adjustment, 3)` and if `s > 0` the adjustment becomes
//! 0.01 (for the later special concepts too); then for each concept
//! `c = round(cos - threshold + adjustment, 3)`, and the image is NSFW if any `c > 0`. Flagged
//! images are replaced by zeros (black). The arithmetic is float32 as NumPy 2 does it for a
//! `float32` similarity and Python-float thresholds, and `round(x, 3)` is NumPy's
//! `rint(x * 1000) / 1000` (ties to even).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use diff_format::configs::clip::CLIPConfig;

use crate::ModelError;
use crate::clip::to_usize;
use crate::clip_vision::CLIPVisionModel;

const MODEL: &str = "StableDiffusionSafetyChecker";

/// What the checker decided for a batch.
#[derive(Debug, Clone)]
pub struct SafetyCheckerOutput {
    /// The images, with flagged ones replaced by zeros.
    pub images: Tensor<4>,
    /// One flag per image (diffusers' `has_nsfw_concepts`).
    pub has_nsfw_concepts: Vec<bool>,
    /// Per image, the rounded special-care scores (`special_scores`).
    pub special_scores: Vec<Vec<f32>>,
    /// Per image, the rounded concept scores (`concept_scores`).
    pub concept_scores: Vec<Vec<f32>>,
}

/// diffusers' `StableDiffusionSafetyChecker` (config: a transformers `CLIPConfig`).
#[derive(Module, Debug)]
pub struct StableDiffusionSafetyChecker {
    /// `vision_model`: a full `CLIPVisionModel`.
    pub vision_model: CLIPVisionModel,
    /// `visual_projection` (no bias).
    pub visual_projection: Linear,
    /// `concept_embeds`, `[17, projection_dim]`.
    pub concept_embeds: Param<Tensor<2>>,
    /// `special_care_embeds`, `[3, projection_dim]`.
    pub special_care_embeds: Param<Tensor<2>>,
    /// `concept_embeds_weights` (thresholds), `[17]`.
    pub concept_embeds_weights: Param<Tensor<1>>,
    /// `special_care_embeds_weights` (thresholds), `[3]`.
    pub special_care_embeds_weights: Param<Tensor<1>>,
    /// The config the checker was built from.
    #[module(skip)]
    pub config: CLIPConfig,
}

fn host_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    t.cast(DType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::InvalidInput {
            model: MODEL.to_string(),
            reason: format!("could not read a tensor back: {e:?}"),
        })
}

/// Rows of `x` scaled to unit length, as `torch.nn.functional.normalize` (eps 1e-12).
fn normalize_rows(x: &[f32], dim: usize) -> Vec<f32> {
    x.chunks(dim.max(1))
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter().map(move |v| v / norm)
        })
        .collect()
}

/// `round(x, 3)` on a float32 as NumPy does it.
fn round3(x: f32) -> f32 {
    (x * 1000.0).round_ties_even() / 1000.0
}

impl StableDiffusionSafetyChecker {
    /// Builds the checker (uninitialised parameters) from its `CLIPConfig`.
    pub fn new(config: &CLIPConfig, device: &Device) -> Result<Self, ModelError> {
        let vision =
            config
                .effective_vision_config()
                .map_err(|e| ModelError::UnsupportedConfig {
                    model: MODEL.to_string(),
                    key: "vision_config".to_string(),
                    value: "<object>".to_string(),
                    reason: e.to_string(),
                })?;
        let hidden = to_usize(vision.hidden_size, MODEL, "vision_config.hidden_size")?;
        let proj = to_usize(
            config.projection_dim.unwrap_or(512),
            MODEL,
            "projection_dim",
        )?;
        Ok(Self {
            vision_model: CLIPVisionModel::new(&vision, device)?,
            visual_projection: LinearConfig::new(hidden, proj)
                .with_bias(false)
                .init(device),
            concept_embeds: Param::from_tensor(Tensor::ones([17, proj], device)),
            special_care_embeds: Param::from_tensor(Tensor::ones([3, proj], device)),
            concept_embeds_weights: Param::from_tensor(Tensor::ones([17], device)),
            special_care_embeds_weights: Param::from_tensor(Tensor::ones([3], device)),
            config: config.clone(),
        })
    }

    /// The projected image embeddings of `clip_input`, `[batch, projection_dim]`.
    pub fn image_embeds(&self, clip_input: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        let pooled = self.vision_model.forward(clip_input)?.pooler_output;
        Ok(self.visual_projection.forward(pooled))
    }

    /// Checks a batch: `clip_input` from `CLIPImageProcessor` (`[batch, 3, size, size]`) and the
    /// `images` to return (any layout with the batch first, e.g. `[batch, h, w, 3]`).
    pub fn forward(
        &self,
        clip_input: Tensor<4>,
        images: Tensor<4>,
    ) -> Result<SafetyCheckerOutput, ModelError> {
        let _span = tracing::debug_span!("StableDiffusionSafetyChecker::forward").entered();
        crate::offload::enter(self);
        let batch = clip_input.dims()[0];
        if images.dims()[0] != batch {
            return Err(ModelError::InvalidInput {
                model: MODEL.to_string(),
                reason: format!(
                    "clip_input has {batch} images but images has {}",
                    images.dims()[0]
                ),
            });
        }
        let embeds = self.image_embeds(clip_input)?;
        let dim = embeds.dims()[1];
        let emb = normalize_rows(&host_f32(embeds)?, dim);
        let concepts = normalize_rows(&host_f32(self.concept_embeds.val())?, dim);
        let special = normalize_rows(&host_f32(self.special_care_embeds.val())?, dim);
        let concept_w = host_f32(self.concept_embeds_weights.val())?;
        let special_w = host_f32(self.special_care_embeds_weights.val())?;
        let cos = |row: &[f32], table: &[f32]| -> Vec<f32> {
            table
                .chunks(dim.max(1))
                .map(|c| row.iter().zip(c).map(|(a, b)| a * b).sum::<f32>())
                .collect()
        };

        let mut has_nsfw_concepts = Vec::with_capacity(batch);
        let mut special_scores = Vec::with_capacity(batch);
        let mut concept_scores = Vec::with_capacity(batch);
        for row in emb.chunks(dim.max(1)) {
            let mut adjustment = 0.0f32;
            let mut specials = Vec::new();
            for (c, w) in cos(row, &special).into_iter().zip(&special_w) {
                let s = round3(c - w + adjustment);
                if s > 0.0 {
                    adjustment = 0.01;
                }
                specials.push(s);
            }
            let scores: Vec<f32> = cos(row, &concepts)
                .into_iter()
                .zip(&concept_w)
                .map(|(c, w)| round3(c - w + adjustment))
                .collect();
            has_nsfw_concepts.push(scores.iter().any(|&s| s > 0.0));
            special_scores.push(specials);
            concept_scores.push(scores);
        }

        let images = if has_nsfw_concepts.iter().any(|&f| f) {
            tracing::warn!(
                "Potential NSFW content was detected in one or more images. A black image will be \
                 returned instead. Try again with a different prompt and/or seed."
            );
            let dims = images.dims();
            let device = images.device();
            let flags = TensorData::new(has_nsfw_concepts.clone(), [batch, 1, 1, 1]);
            let mask = Tensor::<4, Bool>::from_data(flags, &device).expand(dims);
            images.mask_fill(mask, 0.0)
        } else {
            images
        };
        Ok(SafetyCheckerOutput {
            images,
            has_nsfw_concepts,
            special_scores,
            concept_scores,
        })
    }
}
