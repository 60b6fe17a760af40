//! `enable_model_cpu_offload` on the CPU device.
//!
//! diffusers moves each model to the accelerator when its forward starts and back to the host
//! when the next model in `model_cpu_offload_seq` starts. On the CPU device (flex) host and
//! device memory are one, so the same schedule is applied to resident memory instead: each
//! model that was loaded from the pipeline's folder is loaded again with its float parameters
//! left in the memory-mapped safetensors files (`diff_models::offload`; no copy, the values are
//! the file's bytes, so every result is bit for bit the same), and a model's pages are dropped
//! from the process when the next model of the sequence starts, and all of them at the end of a
//! call (diffusers' `maybe_free_model_hooks`). Peak memory is then about the largest model
//! plus activations instead of the sum of all models.
//!
//! Order: `text_encoder -> text_encoder_2 -> image_encoder -> unet -> vae` (diffusers'
//! `model_cpu_offload_seq`), then `safety_checker`, which diffusers leaves out of the sequence
//! (it stays on the host); here it is released after use like the others.
//!
//! Models that were passed in, converted from a single file, or whose dtype differs from the
//! one on disk (float16 weights loaded as float32) keep their copied weights: their hook runs,
//! but releasing them frees nothing. On a GPU device the call is refused
//! ([`PipelineError::Arg`]): moving weights between host and device per model is not built.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Device;
use diff_models::offload::{MappedWeights, OffloadSequence};
use diff_models::weights::load_component;
use diff_models::{FromPretrained, ModelLoadOptions};

use crate::error::PipelineError;
use crate::pipeline::{DiffusionPipeline, LoadOptions};

/// diffusers' `model_cpu_offload_seq` for the Stable Diffusion and SDXL pipelines.
pub const MODEL_CPU_OFFLOAD_SEQ: &str = "text_encoder->text_encoder_2->image_encoder->unet->vae";

/// Where a pipeline's models were loaded from, and its offload sequence once enabled.
#[derive(Debug, Clone, Default)]
pub(crate) struct OffloadState {
    /// The local folder, the variant and `use_safetensors` of `from_pretrained`.
    folder: Option<(PathBuf, Option<String>, Option<bool>)>,
    /// Slots whose models were loaded from that folder (not passed in or converted).
    from_folder: BTreeSet<String>,
    /// The registered sequence (`None` until `enable_model_cpu_offload`).
    sequence: Option<Arc<OffloadSequence>>,
}

impl OffloadState {
    /// The state of a pipeline loaded from `folder`: `loaded` names the slots whose models came
    /// from the folder's own weights.
    pub(crate) fn from_folder(
        folder: &std::path::Path,
        options: &LoadOptions,
        loaded: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            folder: Some((
                folder.to_path_buf(),
                options.variant.clone(),
                options.use_safetensors,
            )),
            from_folder: loaded.into_iter().collect(),
            sequence: None,
        }
    }

    /// The state a `from_pipe` pipeline starts from: the same folder; the sequence is applied
    /// again by [`DiffusionPipeline::reapply_offload`].
    pub(crate) fn for_pipe(&self) -> Self {
        Self {
            folder: self.folder.clone(),
            from_folder: self.from_folder.clone(),
            sequence: None,
        }
    }
}

/// Loads `model` again from `folder/name` with its parameters left in the mapping, when it was
/// loaded from there; otherwise (or when that fails) returns it unchanged with no mapping.
fn remap<M: FromPretrained + Clone>(
    state: &OffloadState,
    name: &str,
    model: &Arc<M>,
    device: &Device,
    dtype: burn::tensor::DType,
    previous: Option<&Arc<OffloadSequence>>,
) -> (Arc<M>, MappedWeights) {
    let address = Arc::as_ptr(model).cast::<()>();
    if let Some(weights) = previous.and_then(|s| s.weights_at(address))
        && !weights.is_empty()
    {
        return (Arc::clone(model), weights.clone());
    }
    let Some((folder, variant, use_safetensors)) = &state.folder else {
        return (Arc::clone(model), MappedWeights::default());
    };
    if !state.from_folder.contains(name) {
        return (Arc::clone(model), MappedWeights::default());
    }
    let mut options = ModelLoadOptions::new(device).with_dtype(dtype);
    options.map_weights = true;
    let loaded = load_component(
        (**model).clone(),
        &folder.join(name),
        M::NAMING,
        variant.as_deref(),
        *use_safetensors,
        &M::load_options(&options),
    );
    match loaded {
        Ok((mapped, report)) if !report.mapped.is_empty() => (Arc::new(mapped), report.mapped),
        Ok(_) => (Arc::clone(model), MappedWeights::default()),
        Err(e) => {
            tracing::warn!("model offload: {name} keeps its copied weights ({e})");
            (Arc::clone(model), MappedWeights::default())
        }
    }
}

impl DiffusionPipeline {
    /// diffusers' `enable_model_cpu_offload()` on the CPU device (see the module doc): each
    /// model's weights stay memory-mapped and are resident only from its forward until the next
    /// model of [`MODEL_CPU_OFFLOAD_SEQ`] starts. Models shared with other pipelines
    /// (`from_pipe`) are replaced in this pipeline by their mapped copies; the other pipelines
    /// keep theirs. Results are bit for bit those without offload.
    ///
    /// # Errors
    /// [`PipelineError::Arg`] on a device other than the CPU.
    pub fn enable_model_cpu_offload(&mut self) -> Result<(), PipelineError> {
        if *self.device() != Device::flex() {
            return Err(PipelineError::arg(
                "device",
                "enable_model_cpu_offload is implemented for the CPU device (flex) only"
                    .to_string(),
            ));
        }
        let (device, dtype) = (self.device().clone(), self.dtype());
        let state = self.offload_state().clone();
        let previous = state.sequence.as_ref();
        let mut members: Vec<(String, *const (), MappedWeights)> = Vec::new();
        let comps = self.components_mut();
        if let Some(m) = &comps.text_encoder {
            let (m, w) = remap(&state, "text_encoder", m, &device, dtype, previous);
            members.push(("text_encoder".into(), Arc::as_ptr(&m).cast(), w));
            comps.text_encoder = Some(m);
        }
        if let Some(m) = &comps.text_encoder_2 {
            let (m, w) = remap(&state, "text_encoder_2", m, &device, dtype, previous);
            members.push(("text_encoder_2".into(), Arc::as_ptr(&m).cast(), w));
            comps.text_encoder_2 = Some(m);
        }
        if let Some(m) = &comps.unet {
            let (m, w) = remap(&state, "unet", m, &device, dtype, previous);
            members.push(("unet".into(), Arc::as_ptr(&m).cast(), w));
            comps.unet = Some(m);
        }
        if let Some(m) = &comps.vae {
            let (m, w) = remap(&state, "vae", m, &device, dtype, previous);
            members.push(("vae".into(), Arc::as_ptr(&m).cast(), w));
            comps.vae = Some(m);
        }
        if let Some(m) = &comps.safety_checker {
            let (m, w) = remap(&state, "safety_checker", m, &device, dtype, previous);
            members.push(("safety_checker".into(), Arc::as_ptr(&m).cast(), w));
            comps.safety_checker = Some(m);
        }
        let mapped: Vec<&str> = members
            .iter()
            .filter(|(_, _, w)| !w.is_empty())
            .map(|(n, _, _)| n.as_str())
            .collect();
        tracing::info!(mapped = ?mapped, "enable_model_cpu_offload");
        let sequence = OffloadSequence::register(members);
        // Nothing has run yet: start with every model released.
        sequence.release_all();
        self.offload_state_mut().sequence = Some(sequence);
        Ok(())
    }

    /// Whether [`Self::enable_model_cpu_offload`] is in effect.
    pub fn model_cpu_offload_enabled(&self) -> bool {
        self.offload_state().sequence.is_some()
    }

    /// The names of the offload sequence in order, with whether each model's weights are
    /// mapped (releasable); empty when offload is off.
    pub fn model_cpu_offload_models(&self) -> Vec<(String, bool)> {
        self.offload_state()
            .sequence
            .as_ref()
            .map(|s| {
                s.names()
                    .into_iter()
                    .map(|n| (n.to_string(), s.weights(n).is_some_and(|w| !w.is_empty())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// After `from_pipe`: applies offload to the new pipeline when `source` had it (diffusers'
    /// guide asks the user to re-apply it; its hooks follow one pipeline's sequence).
    pub(crate) fn reapply_offload(
        &mut self,
        source: &DiffusionPipeline,
    ) -> Result<(), PipelineError> {
        if let Some(seq) = &source.offload_state().sequence {
            self.offload_state_mut().sequence = Some(Arc::clone(seq));
            return self.enable_model_cpu_offload();
        }
        Ok(())
    }

    /// The end of a call: every model of the sequence released.
    pub(crate) fn offload_release_all(&self) {
        if let Some(seq) = &self.offload_state().sequence {
            seq.release_all();
        }
    }
}
