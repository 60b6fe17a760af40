//! Perturbed-Attention Guidance's processors (diffusers 0.42.1 `models/attention_processor.py`
//! `PAGIdentitySelfAttnProcessor2_0` and `PAGCFGIdentitySelfAttnProcessor2_0`; Ahn et al.,
//! <https://huggingface.co/papers/2403.17377>), and the UNet's self-attention layers by
//! diffusers' module names, which PAG's layer matching walks.
//!
//! A PAG processor splits the batch: its leading part (the conditional rows, and with
//! classifier-free guidance the unconditional rows before them) runs the ordinary fused
//! attention; its last part, the perturbed rows, replaces the attention map by the identity, so
//! each token's output is its own value (`to_out(to_v(x))`, then the residual and the output
//! rescaling as usual). The pipeline arranges the batch (`[cond, cond]`, or `[uncond, cond,
//! cond]` with CFG) and combines the predictions.

use std::any::Any;

use burn::tensor::Tensor;

use crate::UNet2DConditionModel;
use crate::attention::{
    Attention, EncoderHiddenStates, Transformer2DModel, scaled_dot_product_attention,
};
use crate::attention_processor::AttentionProcessor;

/// diffusers' `PAGIdentitySelfAttnProcessor2_0`: the batch as `[original, perturbed]`
/// (`chunk(2)`), for PAG without classifier-free guidance.
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct PAGIdentitySelfAttnProcessor2_0;

/// diffusers' `PAGCFGIdentitySelfAttnProcessor2_0`: the batch as `[uncond, original,
/// perturbed]` (`chunk(3)`, the first two attended together), for PAG with classifier-free
/// guidance.
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct PAGCFGIdentitySelfAttnProcessor2_0;

impl AttentionProcessor for PAGIdentitySelfAttnProcessor2_0 {
    fn name(&self) -> &str {
        "PAGIdentitySelfAttnProcessor2_0"
    }

    fn call(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        _context: Option<&EncoderHiddenStates>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        perturbed_call(attn, x, bias, 2)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl AttentionProcessor for PAGCFGIdentitySelfAttnProcessor2_0 {
    fn name(&self) -> &str {
        "PAGCFGIdentitySelfAttnProcessor2_0"
    }

    fn call(
        &self,
        attn: &Attention,
        x: Tensor<3>,
        _context: Option<&EncoderHiddenStates>,
        bias: Option<Tensor<4>>,
    ) -> Tensor<3> {
        perturbed_call(attn, x, bias, 3)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The shared body: torch's `chunk(chunks)` of the batch (chunks of `ceil(b / chunks)` rows),
/// the last chunk perturbed, the others attended together. diffusers' processors read no
/// `encoder_hidden_states` (they are only installed on self-attention layers).
fn perturbed_call(
    attn: &Attention,
    x: Tensor<3>,
    bias: Option<Tensor<4>>,
    chunks: usize,
) -> Tensor<3> {
    let b = x.dims()[0];
    let per = b.div_ceil(chunks).max(1);
    let n_org = (per * (chunks - 1)).min(b);
    if n_org == 0 || n_org == b {
        // A batch too small to split: diffusers' `chunk` would fail to unpack; keep the plain
        // attention so that the layer still gives a result of the right shape.
        return original_path(attn, x, bias);
    }
    let org = x.clone().narrow(0, 0, n_org);
    let ptb = x.narrow(0, n_org, b - n_org);
    let bias = bias.map(|m| {
        if m.dims()[0] == b {
            m.narrow(0, 0, n_org)
        } else {
            m
        }
    });
    let org = original_path(attn, org, bias);
    let ptb = identity_path(attn, ptb);
    Tensor::cat(vec![org, ptb], 0)
}

/// `AttnProcessor2_0`'s self-attention.
fn original_path(attn: &Attention, x: Tensor<3>, bias: Option<Tensor<4>>) -> Tensor<3> {
    let residual = x.clone();
    let (h, strided) = attn.prepare_input(x);
    let q = attn.project(&attn.to_q, h.clone(), strided);
    let k = attn.project(&attn.to_k, h.clone(), strided);
    let v = attn.project(&attn.to_v, h, strided);
    let out = scaled_dot_product_attention(q, k, v, attn.heads, bias);
    attn.finish(out, residual)
}

/// The identity attention map: `to_out(to_v(x))`.
fn identity_path(attn: &Attention, x: Tensor<3>) -> Tensor<3> {
    let residual = x.clone();
    let (h, strided) = attn.prepare_input(x);
    let v = attn.project(&attn.to_v, h, strided);
    attn.finish(v, residual)
}

impl UNet2DConditionModel {
    /// The self-attention layers (diffusers' `Attention` modules with `is_cross_attention`
    /// false: each transformer block's `attn1` unless the block is `only_cross_attention`), by
    /// module name (`mid_block.attentions.0.transformer_blocks.0.attn1`), in `named_modules`
    /// order (down blocks, up blocks, mid block).
    pub fn self_attention_layers(&self) -> Vec<(String, &Attention)> {
        fn walk<'a>(
            prefix: &str,
            attentions: &'a [Transformer2DModel],
            out: &mut Vec<(String, &'a Attention)>,
        ) {
            for (j, t) in attentions.iter().enumerate() {
                for (k, block) in t.transformer_blocks.iter().enumerate() {
                    if !block.only_cross_attention {
                        out.push((
                            format!("{prefix}.attentions.{j}.transformer_blocks.{k}.attn1"),
                            &block.attn1,
                        ));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (i, block) in self.down_blocks.iter().enumerate() {
            walk(&format!("down_blocks.{i}"), &block.attentions, &mut out);
        }
        for (i, block) in self.up_blocks.iter().enumerate() {
            walk(&format!("up_blocks.{i}"), &block.attentions, &mut out);
        }
        if let Some(mid) = &self.mid_block {
            walk("mid_block", &mid.attentions, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttentionConfig;
    use burn::tensor::{Distribution, Tolerance};

    fn layer() -> Attention {
        let device = Default::default();
        AttentionConfig {
            query_dim: 8,
            cross_attention_dim: None,
            heads: 2,
            dim_head: 4,
            bias: false,
            group_norm: None,
            residual_connection: false,
            rescale_output_factor: 1.0,
        }
        .init(&device)
    }

    #[test]
    fn the_perturbed_rows_see_the_identity_map_and_the_others_plain_attention() {
        let attn = layer();
        let device = Default::default();
        let x = Tensor::<3>::random([3, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let out = PAGCFGIdentitySelfAttnProcessor2_0.call(&attn, x.clone(), None, None);
        let plain = original_path(&attn, x.clone().narrow(0, 0, 2), None);
        out.clone()
            .narrow(0, 0, 2)
            .into_data()
            .assert_approx_eq::<f32>(&plain.into_data(), Tolerance::default());
        let ptb = x.narrow(0, 2, 1);
        let identity = attn.finish(attn.project(&attn.to_v, ptb.clone(), false), ptb);
        out.narrow(0, 2, 1)
            .into_data()
            .assert_approx_eq::<f32>(&identity.into_data(), Tolerance::default());
    }

    #[test]
    fn without_cfg_the_batch_splits_in_halves() {
        let attn = layer();
        let device = Default::default();
        let x = Tensor::<3>::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let out = PAGIdentitySelfAttnProcessor2_0.call(&attn, x.clone(), None, None);
        let plain = original_path(&attn, x.clone().narrow(0, 0, 1), None);
        out.narrow(0, 0, 1)
            .into_data()
            .assert_approx_eq::<f32>(&plain.into_data(), Tolerance::default());
    }
}
