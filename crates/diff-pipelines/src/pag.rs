//! Perturbed-Attention Guidance (diffusers 0.42.1 `pipelines/pag/pag_utils.py`, `PAGMixin`;
//! Ahn et al., <https://huggingface.co/papers/2403.17377>): what the PAG classes
//! (`StableDiffusionPAGPipeline`, `StableDiffusionXLPAGPipeline`, ...) add to their base task.
//!
//! - `pag_applied_layers` (a pipeline attribute set at construction, default `["mid"]`): each
//!   entry is a regular expression searched in the UNet's self-attention module names
//!   (`mid_block.attentions.0.transformer_blocks.0.attn1`); an entry and a name both ending in
//!   a number must not be a "fake integral match" (`blocks.1` against `blocks.10`); an entry
//!   matching nothing is an error.
//! - For the call, those layers get `PAGCFGIdentitySelfAttnProcessor2_0` (with classifier-free
//!   guidance) or `PAGIdentitySelfAttnProcessor2_0` (without); the UNet's processors are put
//!   back afterwards (here also when the call fails, so a shared UNet never keeps them).
//! - The batch gains a perturbed copy of the conditional rows: `[uncond, cond, cond]` with CFG,
//!   `[cond, cond]` without (`_prepare_perturbed_attention_guidance`, also for SDXL's pooled
//!   embeddings and time ids), and the prediction is
//!   `uncond + g·(text − uncond) + s·(text − perturbed)` (without CFG `text + s·(text −
//!   perturbed)`), `s = max(pag_scale − pag_adaptive_scale·(1000 − t), 0)` when
//!   `pag_adaptive_scale > 0`; then `rescale_noise_cfg` with `guidance_rescale` where the class
//!   takes it.
//!
//! PAG runs when `pag_scale > 0` and `pag_applied_layers` is not empty; otherwise the class
//! behaves as its base task.

use crate::call::{CallArgs, StepCallback};
use crate::denoise::{DenoiseLoop, Denoised, Guidance, StepContext, StepHook, rescale_noise_cfg};
use crate::error::PipelineError;
use crate::pipeline::{DiffusionPipeline, PipelineClass};
use burn::tensor::Tensor;
use diff_models::{
    AttnProcessorRef, AttnProcessorSetting, PAGCFGIdentitySelfAttnProcessor2_0,
    PAGIdentitySelfAttnProcessor2_0, UNet2DConditionInput, UNet2DConditionModel,
};
use diff_schedulers::precision::round_tensor;
use diff_schedulers::{NoiseDtype, Scheduler, TorchGenerator};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The `__call__` arguments only the PAG classes take.
#[derive(Debug, Clone, Copy)]
pub struct PagArgs {
    /// `pag_scale` (default 3.0): the weight of the perturbed-attention term; 0 turns PAG off.
    pub pag_scale: f32,
    /// `pag_adaptive_scale` (default 0.0): when > 0 the scale at timestep `t` is
    /// `max(pag_scale - pag_adaptive_scale * (1000 - t), 0)`.
    pub pag_adaptive_scale: f32,
}

impl Default for PagArgs {
    fn default() -> Self {
        Self {
            pag_scale: 3.0,
            pag_adaptive_scale: 0.0,
        }
    }
}

impl CallArgs {
    /// Sets Perturbed-Attention Guidance's `pag_scale`.
    pub fn with_pag_scale(mut self, pag_scale: f32) -> Self {
        self.pag.pag_scale = pag_scale;
        self
    }

    /// Sets Perturbed-Attention Guidance's `pag_adaptive_scale`.
    pub fn with_pag_adaptive_scale(mut self, pag_adaptive_scale: f32) -> Self {
        self.pag.pag_adaptive_scale = pag_adaptive_scale;
        self
    }
}

/// The PAG classes' `__init__` default of `pag_applied_layers` (`"mid"`).
pub const DEFAULT_PAG_APPLIED_LAYERS: &[&str] = &["mid"];

/// The config key `from_pretrained` / `from_pipe` read `pag_applied_layers` from (a string or
/// a list of strings, as the Python keyword argument).
pub const PAG_APPLIED_LAYERS_KEY: &str = "pag_applied_layers";

/// `pag_applied_layers` from the keyword arguments of `from_pretrained` / `from_pipe`
/// (`LoadOptions::config`), `None` when not given.
pub(crate) fn applied_layers_from(
    config: &BTreeMap<String, Value>,
) -> Result<Option<Vec<String>>, PipelineError> {
    let Some(value) = config.get(PAG_APPLIED_LAYERS_KEY) else {
        return Ok(None);
    };
    let bad = |v: &Value| {
        PipelineError::arg(
            PAG_APPLIED_LAYERS_KEY,
            format!("Expected either a string or a list of string but got {v}"),
        )
    };
    let layers = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad(v)))
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(bad(other)),
    };
    for layer in &layers {
        compile(layer)?;
    }
    Ok(Some(layers))
}

/// The default layers as owned strings.
pub(crate) fn default_applied_layers() -> Vec<String> {
    DEFAULT_PAG_APPLIED_LAYERS
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

fn compile(layer_id: &str) -> Result<regex::Regex, PipelineError> {
    regex::Regex::new(layer_id).map_err(|e| {
        PipelineError::arg(
            PAG_APPLIED_LAYERS_KEY,
            format!("\"{layer_id}\" is not a regular expression this library reads: {e}"),
        )
    })
}

impl DiffusionPipeline {
    /// `pipe.pag_applied_layers`: the PAG layer patterns (used by the PAG classes only).
    pub fn pag_applied_layers(&self) -> &[String] {
        &self.pag_applied_layers
    }

    /// `pipe.set_pag_applied_layers(layers)`: each entry is a regular expression searched in
    /// the UNet's self-attention names (`"mid"`, `"down_blocks.1"`,
    /// `"up_blocks.1.attentions.0"`); checked to be a valid expression here, matched when a
    /// PAG call runs.
    pub fn set_pag_applied_layers(&mut self, layers: Vec<String>) -> Result<(), PipelineError> {
        for layer in &layers {
            compile(layer)?;
        }
        self.pag_applied_layers = layers;
        Ok(())
    }

    /// The self-attention layers `pag_applied_layers` selects, by module name, as
    /// `_set_pag_attn_processor` finds them (an entry matching none is an error).
    pub fn pag_layer_names(&self) -> Result<Vec<String>, PipelineError> {
        let unet = self.require(self.unet(), "unet")?;
        Ok(matched_layers(unet, &self.pag_applied_layers)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }
}

/// `is_fake_integral_match`: both last dotted parts numeric and equal.
fn is_fake_integral_match(layer_id: &str, name: &str) -> bool {
    let last = |s: &str| s.rsplit('.').next().unwrap_or("").to_owned();
    let (a, b) = (last(layer_id), last(name));
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    numeric(&a) && numeric(&b) && a == b
}

fn matched_layers<'a>(
    unet: &'a UNet2DConditionModel,
    patterns: &[String],
) -> Result<Vec<(String, &'a diff_models::attention::Attention)>, PipelineError> {
    let layers = unet.self_attention_layers();
    let mut out: Vec<(String, &diff_models::attention::Attention)> = Vec::new();
    for layer_id in patterns {
        let re = compile(layer_id)?;
        let mut found = 0usize;
        for (name, attn) in &layers {
            if re.is_match(name) && !is_fake_integral_match(layer_id, name) {
                found += 1;
                if !out.iter().any(|(n, _)| n == name) {
                    out.push((name.clone(), attn));
                }
            }
        }
        if found == 0 {
            return Err(PipelineError::arg(
                PAG_APPLIED_LAYERS_KEY,
                format!("Cannot find PAG layer to set attention processor for: {layer_id}"),
            ));
        }
    }
    Ok(out)
}

/// Whether PAG runs (`do_perturbed_attention_guidance`).
pub(crate) fn enabled(pipe: &DiffusionPipeline, args: &CallArgs) -> bool {
    args.pag.pag_scale > 0.0 && !pipe.pag_applied_layers.is_empty()
}

/// `StableDiffusionPAGInpaintPipeline`'s `guidance_rescale`: used with classifier-free guidance
/// when PAG is off; with PAG on diffusers 0.42.1 fails on it (`noise_pred_text` is unset on that
/// path), so it is refused here with a clear error instead.
pub(crate) fn inpaint_guidance_rescale(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    guidance_scale: f32,
) -> Result<f32, PipelineError> {
    let cfg = guidance_scale > 1.0;
    if args.guidance_rescale > 0.0 && cfg && enabled(pipe, args) {
        return Err(PipelineError::arg(
            "guidance_rescale",
            "StableDiffusionPAGInpaintPipeline cannot rescale the guidance while perturbed-attention guidance runs (diffusers 0.42.1 fails there: its PAG branch does not return the text prediction); pass guidance_rescale=0 or pag_scale=0",
        ));
    }
    Ok(args.guidance_rescale)
}

/// The UNet's processors before the call, put back when the guard is restored or dropped.
pub(crate) struct PagProcessors<'a> {
    unet: &'a UNet2DConditionModel,
    original: Option<Vec<(String, AttnProcessorRef)>>,
}

impl<'a> PagProcessors<'a> {
    /// `_set_pag_attn_processor`: the PAG processor of the guidance mode on every selected
    /// layer (nothing changes when a pattern matches nothing).
    pub(crate) fn install(
        unet: &'a UNet2DConditionModel,
        patterns: &[String],
        do_cfg: bool,
    ) -> Result<Self, PipelineError> {
        let layers = matched_layers(unet, patterns)?;
        let processor: AttnProcessorRef = if do_cfg {
            Arc::new(PAGCFGIdentitySelfAttnProcessor2_0)
        } else {
            Arc::new(PAGIdentitySelfAttnProcessor2_0)
        };
        let original = unet.attn_processors();
        for (_, attn) in layers {
            attn.set_processor(processor.clone());
        }
        Ok(Self {
            unet,
            original: Some(original),
        })
    }

    /// `unet.set_attn_processor(original_attn_proc)`.
    pub(crate) fn restore(mut self) -> Result<(), PipelineError> {
        match self.original.take() {
            Some(o) => Ok(self
                .unet
                .set_attn_processor(AttnProcessorSetting::ByName(o))?),
            None => Ok(()),
        }
    }
}

impl Drop for PagProcessors<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.original.take() {
            // An early return or a panic: the names come from the same UNet, so this cannot fail.
            let _ = self
                .unet
                .set_attn_processor(AttnProcessorSetting::ByName(o));
        }
    }
}

/// The PAG step: the batch made `[uncond, cond, cond]` / `[cond, cond]` at the UNet input and
/// the three (two) predictions combined after it. The loop itself runs without guidance.
pub(crate) struct PagHook<'h> {
    /// The base task's hook (inpaint's), run on the batch as the base task makes it.
    inner: &'h mut dyn StepHook,
    guidance: Option<Guidance>,
    pag: PagArgs,
    dtype: NoiseDtype,
}

/// Step "Denoising loop" of every task a PAG class shares with its base class: the base loop
/// when PAG does not run (a non-PAG class, `pag_scale` 0, no layers), else the PAG loop:
/// the conditioning gets the perturbed copy of its conditional rows
/// (`_prepare_perturbed_attention_guidance`; SDXL text-to-image time ids as
/// [`xl_text2img_time_ids`]), the loop's guidance moves into [`PagHook`], the PAG processors
/// are installed on the selected layers for the loop and the UNet's processors restored after.
pub(crate) fn run_loop(
    pipe: &DiffusionPipeline,
    args: &CallArgs,
    mut denoise: DenoiseLoop<'_>,
    (scheduler, timesteps): (&mut Scheduler, &[f64]),
    (latents, gens): (Tensor<4>, &mut [TorchGenerator]),
    inner: &mut dyn StepHook,
    callback: Option<&mut StepCallback<'_>>,
) -> Result<Denoised, PipelineError> {
    if !(pipe.class().is_pag() && enabled(pipe, args)) {
        return denoise.run(scheduler, timesteps, latents, gens, inner, callback);
    }
    let guidance = denoise.guidance.take();
    let do_cfg = guidance.is_some();
    let total = latents.dims()[0];
    let c = &mut denoise.conditioning;
    c.encoder_hidden_states = perturbed_batch(c.encoder_hidden_states.clone(), do_cfg);
    c.text_embeds = c.text_embeds.take().map(|t| perturbed_batch(t, do_cfg));
    // diffusers perturbs the IP-Adapter image embeddings the same way (before the projection,
    // which works row by row, so after it is the same).
    c.ip_hidden_states = c.ip_hidden_states.take().map(|states| {
        states
            .into_iter()
            .map(|t| perturbed_batch(t, do_cfg))
            .collect()
    });
    c.time_ids = c.time_ids.take().map(|t| {
        if pipe.class() == PipelineClass::StableDiffusionXLPAG {
            xl_text2img_time_ids(&t, total, do_cfg)
        } else {
            perturbed_batch(t, do_cfg)
        }
    });
    let mut hook = PagHook {
        inner,
        guidance,
        pag: args.pag,
        dtype: denoise.dtype,
    };
    let processors = PagProcessors::install(denoise.unet, &pipe.pag_applied_layers, do_cfg)?;
    let out = denoise.run(scheduler, timesteps, latents, gens, &mut hook, callback);
    processors.restore()?;
    out
}

/// `_prepare_perturbed_attention_guidance` on a `[uncond; cond]` (CFG) or `cond` batch.
fn perturbed_batch<const D: usize>(x: Tensor<D>, do_cfg: bool) -> Tensor<D> {
    if do_cfg {
        let half = x.dims()[0] / 2;
        let cond = x.clone().narrow(0, half, x.dims()[0] - half);
        Tensor::cat(vec![x, cond], 0)
    } else {
        Tensor::cat(vec![x.clone(), x], 0)
    }
}

impl PagHook<'_> {
    /// `_get_pag_scale(t)`.
    fn scale_at(&self, t: f64) -> f32 {
        let PagArgs {
            pag_scale,
            pag_adaptive_scale,
        } = self.pag;
        if pag_adaptive_scale > 0.0 && pag_scale > 0.0 {
            (pag_scale - pag_adaptive_scale * (1000.0 - t as f32)).max(0.0)
        } else {
            pag_scale
        }
    }
}

impl StepHook for PagHook<'_> {
    /// The base task's input (the latents doubled with CFG, then its hook: inpaint's mask and
    /// masked-image latents on the channel axis), then the perturbed copy of its conditional
    /// rows, as `_prepare_perturbed_attention_guidance` makes the latents, mask and masked-image
    /// latents.
    fn unet_input(
        &mut self,
        mut input: UNet2DConditionInput,
        ctx: &StepContext<'_>,
    ) -> Result<UNet2DConditionInput, PipelineError> {
        let do_cfg = self.guidance.is_some();
        if do_cfg {
            input.sample = Tensor::cat(vec![input.sample.clone(), input.sample], 0);
        }
        let mut input = self.inner.unet_input(input, ctx)?;
        input.sample = perturbed_batch(input.sample, do_cfg);
        Ok(input)
    }

    fn after_step(
        &mut self,
        latents: Tensor<4>,
        ctx: &StepContext<'_>,
    ) -> Result<Tensor<4>, PipelineError> {
        self.inner.after_step(latents, ctx)
    }

    fn noise_pred(
        &mut self,
        guided: Tensor<4>,
        raw: &Tensor<4>,
        latents: &Tensor<4>,
        ctx: &StepContext<'_>,
    ) -> Result<Tensor<4>, PipelineError> {
        let pred = self.guide(guided, ctx)?;
        self.inner.noise_pred(pred, raw, latents, ctx)
    }
}

impl PagHook<'_> {
    /// `_apply_perturbed_attention_guidance`, then `rescale_noise_cfg` where the class takes
    /// `guidance_rescale`.
    fn guide(&self, guided: Tensor<4>, ctx: &StepContext<'_>) -> Result<Tensor<4>, PipelineError> {
        let r = |t: Tensor<4>| round_tensor(t, self.dtype);
        let s = self.scale_at(ctx.timestep);
        let b = guided.dims()[0];
        match self.guidance {
            Some(g) => {
                let n = b / 3;
                let uncond = guided.clone().narrow(0, 0, n);
                let text = guided.clone().narrow(0, n, n);
                let ptb = guided.narrow(0, 2 * n, n);
                let cfg = r(uncond.clone() + r(r(text.clone() - uncond).mul_scalar(g.scale)));
                let pred = r(cfg + r(r(text.clone() - ptb).mul_scalar(s)));
                Ok(if g.rescale > 0.0 {
                    r(rescale_noise_cfg(pred, text, g.rescale))
                } else {
                    pred
                })
            }
            None => {
                let n = b / 2;
                let text = guided.clone().narrow(0, 0, n);
                let ptb = guided.narrow(0, n, n);
                Ok(r(text.clone() + r(r(text - ptb).mul_scalar(s))))
            }
        }
    }
}

/// SDXL text-to-image time ids for PAG: `_prepare_perturbed_attention_guidance(add_time_ids,
/// negative_add_time_ids)` then `.repeat(batch_size * num_images_per_prompt, 1)`, from the
/// base task's tensor (`[neg, pos]` repeated with CFG, `[pos]` repeated without).
pub(crate) fn xl_text2img_time_ids(time_ids: &Tensor<2>, total: usize, do_cfg: bool) -> Tensor<2> {
    let pattern = if do_cfg {
        let neg = time_ids.clone().narrow(0, 0, 1);
        let pos = time_ids.clone().narrow(0, 1, 1);
        vec![neg, pos.clone(), pos]
    } else {
        let pos = time_ids.clone().narrow(0, 0, 1);
        vec![pos.clone(), pos]
    };
    let row = Tensor::cat(pattern, 0);
    Tensor::cat(vec![row; total.max(1)], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_integral_matches_are_refused() {
        assert!(is_fake_integral_match("blocks.1", "x.blocks.1"));
        assert!(!is_fake_integral_match("blocks.1", "x.blocks.10"));
        assert!(!is_fake_integral_match(
            "mid",
            "mid_block.attentions.0.transformer_blocks.0.attn1"
        ));
    }

    #[test]
    fn applied_layers_read_a_string_or_a_list() {
        let mut c = BTreeMap::new();
        assert_eq!(applied_layers_from(&c).unwrap(), None);
        c.insert(PAG_APPLIED_LAYERS_KEY.to_owned(), Value::from("mid"));
        assert_eq!(
            applied_layers_from(&c).unwrap(),
            Some(vec!["mid".to_owned()])
        );
        c.insert(
            PAG_APPLIED_LAYERS_KEY.to_owned(),
            serde_json::json!(["down_blocks.1", "up"]),
        );
        assert_eq!(
            applied_layers_from(&c).unwrap(),
            Some(vec!["down_blocks.1".to_owned(), "up".to_owned()])
        );
        c.insert(PAG_APPLIED_LAYERS_KEY.to_owned(), serde_json::json!([1]));
        assert!(applied_layers_from(&c).is_err());
        c.insert(PAG_APPLIED_LAYERS_KEY.to_owned(), Value::from("mid(("));
        let e = applied_layers_from(&c).unwrap_err().to_string();
        assert!(e.contains("mid(("), "{e}");
    }
}
