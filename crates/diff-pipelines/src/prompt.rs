//! Prompt encoding the flows share (diffusers' step "3. Encode input prompt"): SD 1.x / 2.x's
//! `encode_prompt` (one CLIP text encoder, `clip_skip` through the final layer norm) and
//! SDXL's (two encoders whose penultimate hidden states are concatenated, the pooled projection
//! of `text_encoder_2`, zero negatives with `force_zeros_for_empty_prompt`).

use crate::call::CallArgs;
use crate::clip_tokenizer::ClipTokenizer;
use crate::error::PipelineError;
use crate::pipeline::DiffusionPipeline;
use burn::tensor::{Device, Int, Tensor, TensorData};
use diff_models::CLIPTextModel;
use serde_json::Value;

/// Tokenizes a batch as diffusers' `encode_prompt` does (max-length padding, truncation with
/// diffusers' warning) and returns the ids tensor `[B, 77]`.
pub(crate) fn tokenize(
    tokenizer: &ClipTokenizer,
    prompts: &[String],
    device: &Device,
) -> Tensor<2, Int> {
    let (ids, removed) = tokenizer.encode_for_pipeline(prompts);
    if let Some(removed) = removed {
        tracing::warn!(
            "The following part of your input was truncated because CLIP can only handle sequences up to {} tokens: {:?}",
            tokenizer.model_max_length().unwrap_or(77),
            removed
        );
    }
    let seq = ids.first().map_or(0, Vec::len);
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(flat, [prompts.len(), seq]), device)
}

/// `[B, S, C]` -> `[B * n, S, C]` with each prompt's copies next to each other
/// (`repeat(1, n, 1).view(B * n, S, C)`).
pub(crate) fn repeat_per_prompt(x: Tensor<3>, n: usize) -> Tensor<3> {
    if n == 1 {
        return x;
    }
    let [b, s, c] = x.dims();
    x.unsqueeze_dim::<4>(1)
        .repeat_dim(1, n)
        .reshape([b * n, s, c])
}

/// `[B, C]` -> `[B * n, C]`, each row's copies together.
pub(crate) fn repeat_rows(x: Tensor<2>, n: usize) -> Tensor<2> {
    if n == 1 {
        return x;
    }
    let [b, c] = x.dims();
    x.unsqueeze_dim::<3>(1).repeat_dim(1, n).reshape([b * n, c])
}

/// The negative prompts for a batch of `batch` prompts: `""` each when none is given, one
/// string for all, or one per prompt.
pub(crate) fn negative_prompts(
    negative: Option<&Vec<String>>,
    batch: usize,
) -> Result<Vec<String>, PipelineError> {
    match negative {
        None => Ok(vec![String::new(); batch]),
        Some(v) if v.len() == 1 => Ok(vec![v.first().cloned().unwrap_or_default(); batch]),
        Some(v) if v.len() == batch => Ok(v.clone()),
        Some(v) => Err(PipelineError::arg(
            "negative_prompt",
            format!(
                "`negative_prompt` has batch size {}, but `prompt` has batch size {batch}; they must match",
                v.len()
            ),
        )),
    }
}

/// The text encoder's output for `ids`: the last hidden state, or with `clip_skip` the
/// hidden state `clip_skip` layers earlier through the final layer norm.
fn encode_text(
    encoder: &CLIPTextModel,
    ids: Tensor<2, Int>,
    clip_skip: Option<usize>,
) -> Result<Tensor<3>, PipelineError> {
    let out = encoder.forward(ids)?;
    match clip_skip {
        None => Ok(out.last_hidden_state),
        Some(k) => {
            // hidden_states[-(k + 1)], then the final layer norm.
            let idx = out.hidden_states.len().checked_sub(k + 1).ok_or_else(|| {
                PipelineError::arg(
                    "clip_skip",
                    format!(
                        "clip_skip {k} is deeper than the text encoder's {} layers",
                        out.hidden_states.len().saturating_sub(1)
                    ),
                )
            })?;
            let h = out
                .hidden_states
                .get(idx)
                .cloned()
                .ok_or_else(|| PipelineError::arg("clip_skip", "no such hidden state"))?;
            Ok(encoder.final_layer_norm.forward(h))
        }
    }
}

/// SDXL prompt embeddings: `[B*n, 77, C1 + C2]` and pooled `[B*n, P]`, with the negatives when
/// CFG is on.
pub struct XlEmbeds {
    /// `prompt_embeds`.
    pub prompt_embeds: Tensor<3>,
    /// `pooled_prompt_embeds`.
    pub pooled: Tensor<2>,
    /// `negative_prompt_embeds` (CFG only).
    pub negative_prompt_embeds: Option<Tensor<3>>,
    /// `negative_pooled_prompt_embeds` (CFG only).
    pub negative_pooled: Option<Tensor<2>>,
}

fn hidden_index(len: usize, clip_skip: Option<usize>) -> Result<usize, PipelineError> {
    let back = clip_skip.map_or(2, |k| k + 2);
    len.checked_sub(back).ok_or_else(|| {
        PipelineError::arg(
            "clip_skip",
            format!(
                "clip_skip {clip_skip:?} is deeper than the text encoder's {} layers",
                len.saturating_sub(1)
            ),
        )
    })
}

impl DiffusionPipeline {
    /// SD 1.x/2.x `encode_prompt`: `(prompt_embeds, negative_prompt_embeds)`, both repeated
    /// `num_images_per_prompt` times; the negative is `None` without CFG.
    pub fn encode_prompt(
        &self,
        args: &CallArgs,
        do_cfg: bool,
    ) -> Result<(Tensor<3>, Option<Tensor<3>>), PipelineError> {
        let device = self.device();
        let n = args.num_images_per_prompt.max(1);
        let cond = match &args.prompt_embeds {
            Some(e) => e.clone(),
            None => {
                let tok = self.require(self.tokenizer(), "tokenizer")?;
                let te = self.require(self.text_encoder(), "text_encoder")?;
                encode_text(te, tokenize(tok, &args.prompt, device), args.clip_skip)?
            }
        };
        let batch = cond.dims()[0];
        let uncond = if do_cfg {
            Some(match &args.negative_prompt_embeds {
                Some(e) => e.clone(),
                None => {
                    let tok = self.require(self.tokenizer(), "tokenizer")?;
                    let te = self.require(self.text_encoder(), "text_encoder")?;
                    let neg = negative_prompts(args.negative_prompt.as_ref(), batch)?;
                    // diffusers never applies clip_skip to the negative prompt.
                    encode_text(te, tokenize(tok, &neg, device), None)?
                }
            })
        } else {
            None
        };
        Ok((
            repeat_per_prompt(cond, n),
            uncond.map(|u| repeat_per_prompt(u, n)),
        ))
    }

    /// Encodes one side (prompts or negative prompts) with both encoders: the concatenated
    /// hidden states and the pooled projection of `text_encoder_2`.
    fn encode_xl_side(
        &self,
        prompts: &[String],
        prompts_2: &[String],
        clip_skip: Option<usize>,
    ) -> Result<(Tensor<3>, Tensor<2>), PipelineError> {
        let device = self.device();
        let mut parts = Vec::new();
        // diffusers zips `[prompt, prompt_2]` with the tokenizers present: without the first
        // text encoder (the refiner) `text_encoder_2` gets `prompt`, and `prompt_2` is unused.
        let second_prompts = match (self.tokenizer(), self.text_encoder()) {
            (Some(tok), Some(te)) => {
                let out = te.forward(tokenize(tok, prompts, device))?;
                let idx = hidden_index(out.hidden_states.len(), clip_skip)?;
                parts.push(
                    out.hidden_states
                        .get(idx)
                        .cloned()
                        .ok_or_else(|| PipelineError::arg("clip_skip", "no such hidden state"))?,
                );
                prompts_2
            }
            _ => prompts,
        };
        let tok2 = self.require(self.tokenizer_2(), "tokenizer_2")?;
        let te2 = self.require(self.text_encoder_2(), "text_encoder_2")?;
        let out = te2.forward(tokenize(tok2, second_prompts, device))?;
        let idx = hidden_index(out.hidden_states.len(), clip_skip)?;
        parts.push(
            out.hidden_states
                .get(idx)
                .cloned()
                .ok_or_else(|| PipelineError::arg("clip_skip", "no such hidden state"))?,
        );
        Ok((Tensor::cat(parts, 2), out.text_embeds))
    }

    /// SDXL `encode_prompt`.
    pub fn encode_prompt_xl(
        &self,
        args: &CallArgs,
        do_cfg: bool,
    ) -> Result<XlEmbeds, PipelineError> {
        let n = args.num_images_per_prompt.max(1);
        let (cond, pooled) = match (&args.prompt_embeds, &args.xl.pooled_prompt_embeds) {
            (Some(e), Some(p)) => (e.clone(), p.clone()),
            (Some(_), None) => {
                return Err(PipelineError::arg(
                    "pooled_prompt_embeds",
                    "If `prompt_embeds` are provided, `pooled_prompt_embeds` also have to be passed.",
                ));
            }
            _ => {
                let p2 = args
                    .xl
                    .prompt_2
                    .clone()
                    .unwrap_or_else(|| args.prompt.clone());
                self.encode_xl_side(&args.prompt, &p2, args.clip_skip)?
            }
        };
        let batch = cond.dims()[0];
        let force_zeros = self
            .config()
            .get("force_zeros_for_empty_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let (neg, neg_pooled) = if !do_cfg {
            (None, None)
        } else if let (Some(e), Some(p)) = (
            &args.negative_prompt_embeds,
            &args.xl.negative_pooled_prompt_embeds,
        ) {
            (Some(e.clone()), Some(p.clone()))
        } else if args.negative_prompt.is_none() && force_zeros {
            (Some(cond.zeros_like()), Some(pooled.zeros_like()))
        } else {
            let neg = negative_prompts(args.negative_prompt.as_ref(), batch)?;
            let neg2 = negative_prompts(
                args.xl
                    .negative_prompt_2
                    .as_ref()
                    .or(args.negative_prompt.as_ref()),
                batch,
            )?;
            // The negative side never uses clip_skip.
            let (e, p) = self.encode_xl_side(&neg, &neg2, None)?;
            (Some(e), Some(p))
        };
        Ok(XlEmbeds {
            prompt_embeds: repeat_per_prompt(cond, n),
            pooled: repeat_rows(pooled, n),
            negative_prompt_embeds: neg.map(|e| repeat_per_prompt(e, n)),
            negative_pooled: neg_pooled.map(|p| repeat_rows(p, n)),
        })
    }
}
