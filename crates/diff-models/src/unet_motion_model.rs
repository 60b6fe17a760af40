//! `UNetMotionModel` (diffusers `models/unets/unet_motion_model.py`): a 2D UNet with
//! AnimateDiff's motion modules after each resnet / attention pair of its down, mid and up
//! blocks (`CrossAttnDownBlockMotion`, `DownBlockMotion`, `UNetMidBlockCrossAttnMotion`,
//! `UpBlockMotion`, `CrossAttnUpBlockMotion`).
//!
//! diffusers' `UNetMotionModel.from_unet2d(unet, motion_adapter)` builds a new model and copies
//! the 2D weights into it. Here [`UNetMotionModel::from_unet2d`] holds the
//! `Arc<UNet2DConditionModel>` and the `Arc<MotionAdapter>` it is given and runs the 2D blocks'
//! own layers on `batch * frames` images: no weight is copied, and an adapter, LoRA or attention
//! processor set on the shared 2D UNet is seen here as well.
//!
//! Deviations, as diffusers: no class embedding, no `time_embedding_act_fn` (the motion UNet
//! has neither), and the encoder attention mask is not taken.

use std::sync::Arc;

use burn::tensor::{DType, Tensor};

use crate::ModelError;
use crate::attention::EncoderHiddenStates;
use crate::attention_processor::{AttnProcessorRef, AttnProcessorSetting};
use crate::motion_adapter::{MotionAdapter, MotionModules};
use crate::named::{NamedLayer, NamedLayers};
use crate::unet_2d_blocks::{DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D};
use crate::{UNet2DConditionInput, UNet2DConditionModel};

const MODEL: &str = "UNetMotionModel";

fn invalid(reason: String) -> ModelError {
    ModelError::InvalidInput {
        model: MODEL.to_owned(),
        reason,
    }
}

fn incompatible(key: &str, value: String, reason: String) -> ModelError {
    ModelError::UnsupportedConfig {
        model: "MotionAdapter".to_owned(),
        key: key.to_owned(),
        value,
        reason,
    }
}

/// `x.repeat_interleave(n, dim=0)` for `[N, D]`.
fn repeat_interleave(x: Tensor<2>, n: usize) -> Tensor<2> {
    let [rows, d] = x.dims();
    let t: Tensor<3> = x.reshape([rows, 1, d]);
    t.expand([rows, n, d]).reshape([rows * n, d])
}

/// `x.repeat_interleave(n, dim=0)` for `[N, T, D]`.
fn repeat_interleave3(x: Tensor<3>, n: usize) -> Tensor<3> {
    let [rows, t, d] = x.dims();
    let x: Tensor<4> = x.reshape([rows, 1, t, d]);
    x.expand([rows, n, t, d]).reshape([rows * n, t, d])
}

/// diffusers' `UNetMotionModel`, sharing its 2D UNet and motion adapter (see the module doc).
#[derive(Debug, Clone)]
pub struct UNetMotionModel {
    /// The 2D UNet whose layers run per frame.
    pub unet: Arc<UNet2DConditionModel>,
    /// The motion modules.
    pub motion_adapter: Arc<MotionAdapter>,
    /// The group count of the motion modules' norms (the UNet's `norm_num_groups`, as
    /// diffusers builds them).
    groups: usize,
}

impl UNetMotionModel {
    /// `UNetMotionModel.from_unet2d(unet, motion_adapter)`, without copying weights.
    ///
    /// Errors name what does not fit: the number of blocks, the layers per block, the channels
    /// of each block, a motion mid block on a UNet without a mid block, or a different dtype.
    pub fn from_unet2d(
        unet: Arc<UNet2DConditionModel>,
        motion_adapter: Arc<MotionAdapter>,
    ) -> Result<Self, ModelError> {
        let a = &motion_adapter.settings;
        let n = unet.down_blocks.len();
        if motion_adapter.down_blocks.len() != n || motion_adapter.up_blocks.len() != n {
            return Err(incompatible(
                "block_out_channels",
                format!("{:?}", a.block_out_channels),
                format!(
                    "Incompatible Motion Adapter, got different number of blocks: the UNet has {n}, the adapter {}",
                    motion_adapter.down_blocks.len()
                ),
            ));
        }
        let unet_channels: Vec<usize> = unet
            .down_blocks
            .iter()
            .map(|b| b.resnets.first().map_or(0, |r| r.norm2.num_channels))
            .collect();
        if unet_channels != a.block_out_channels {
            return Err(incompatible(
                "block_out_channels",
                format!("{:?}", a.block_out_channels),
                format!(
                    "the motion adapter's channels do not match the UNet's block_out_channels {unet_channels:?}"
                ),
            ));
        }
        let unet_layers: Vec<usize> = unet.down_blocks.iter().map(|b| b.resnets.len()).collect();
        let up_layers: Vec<usize> = unet.up_blocks.iter().map(|b| b.resnets.len()).collect();
        let adapter_up: Vec<usize> = motion_adapter
            .up_blocks
            .iter()
            .map(|b| b.motion_modules.len())
            .collect();
        if unet_layers != a.layers_per_block || up_layers != adapter_up {
            return Err(incompatible(
                "motion_layers_per_block",
                format!("{:?}", a.layers_per_block),
                format!(
                    "Incompatible Motion Adapter, got different number of layers per block: the UNet has {unet_layers:?}"
                ),
            ));
        }
        if let Some(mid) = &motion_adapter.mid_block {
            let Some(unet_mid) = &unet.mid_block else {
                return Err(incompatible(
                    "use_motion_mid_block",
                    "true".to_owned(),
                    "the UNet has no mid block".to_owned(),
                ));
            };
            if mid.motion_modules.len() != unet_mid.attentions.len() {
                return Err(incompatible(
                    "motion_mid_block_layers_per_block",
                    mid.motion_modules.len().to_string(),
                    format!(
                        "the UNet's mid block has {} attention layers",
                        unet_mid.attentions.len()
                    ),
                ));
            }
        }
        if unet.encoder_hid_proj.is_some() {
            return Err(ModelError::UnsupportedConfig {
                model: MODEL.to_owned(),
                key: "encoder_hid_dim_type".to_owned(),
                value: "\"text_proj\"".to_owned(),
                reason: "UNetMotionModel takes no text projection".to_owned(),
            });
        }
        if a.dtype != unet.settings.dtype {
            return Err(invalid(format!(
                "the motion adapter is loaded as {:?} but the UNet as {:?}; load both in one dtype",
                a.dtype, unet.settings.dtype
            )));
        }
        let groups = unet.config.norm_num_groups.map_or(32, |g| g as usize);
        Ok(Self {
            unet,
            motion_adapter,
            groups,
        })
    }

    /// `motion_max_seq_length`: the most frames one call may have.
    pub fn max_num_frames(&self) -> usize {
        self.motion_adapter.max_seq_length()
    }

    /// The noise prediction of a video.
    ///
    /// # Shapes
    /// - `sample`: `[batch, in_channels, num_frames, height, width]`
    /// - `encoder_hidden_states`: `[batch * num_frames, tokens, dim]` (the pipeline repeats the
    ///   prompt embeddings per frame); `ip_hidden_states`: `[batch, tokens, dim]` each (repeated
    ///   per frame here, as diffusers does with `image_embeds`)
    /// - output: `[batch, out_channels, num_frames, height, width]`
    pub fn forward(
        &self,
        sample: Tensor<5>,
        mut input: UNet2DConditionInput,
    ) -> Result<Tensor<5>, ModelError> {
        let [b, c, f, h, w] = sample.dims();
        input.sample = sample.permute([0, 2, 1, 3, 4]).reshape([b * f, c, h, w]);
        let out = self.forward_frames(input, f)?;
        let oc = out.dims()[1];
        Ok(out.reshape([b, f, oc, h, w]).permute([0, 2, 1, 3, 4]))
    }

    /// [`forward`](Self::forward) on frames already flattened into the batch:
    /// `input.sample` is `[batch * num_frames, in_channels, height, width]`, the frames of a
    /// video consecutive (diffusers' `sample.permute(0, 2, 1, 3, 4).reshape(...)`); the output
    /// has the same layout.
    pub fn forward_frames(
        &self,
        input: UNet2DConditionInput,
        num_frames: usize,
    ) -> Result<Tensor<4>, ModelError> {
        let _span = tracing::debug_span!("UNetMotionModel::forward").entered();
        let unet = &*self.unet;
        let s = &unet.settings;
        let dtype = s.dtype;
        let [bf, ch, height, width] = input.sample.dims();
        let f = num_frames;
        if f == 0 || !bf.is_multiple_of(f) {
            return Err(invalid(format!(
                "`sample` holds {bf} frames, not a multiple of num_frames = {f}"
            )));
        }
        if f > self.max_num_frames() {
            return Err(invalid(format!(
                "num_frames = {f} is above the motion adapter's motion_max_seq_length = {}",
                self.max_num_frames()
            )));
        }
        let b = bf / f;
        if ch != s.in_channels {
            return Err(invalid(format!(
                "`sample` has {ch} channels, expected in_channels = {}",
                s.in_channels
            )));
        }
        let [eb, _, ed] = input.encoder_hidden_states.dims();
        if eb != bf || ed != s.context_dim {
            return Err(invalid(format!(
                "`encoder_hidden_states` is [{eb}, _, {ed}], expected [{bf}, _, {}] (batch * num_frames)",
                s.context_dim
            )));
        }
        if input.encoder_attention_mask.is_some() {
            return Err(invalid(
                "UNetMotionModel takes no `encoder_attention_mask`".to_owned(),
            ));
        }
        let t = input.timestep.dims()[0];
        if t != 1 && t != b {
            return Err(invalid(format!(
                "`timestep` has {t} entries, expected 1 or the batch size {b}"
            )));
        }

        // 1. Time: embedded per video, then repeated per frame.
        let timesteps = if t == b {
            input.timestep
        } else {
            input.timestep.expand([b])
        };
        let t_emb = s.time_proj.forward(timesteps.cast(DType::F32)).cast(dtype);
        let mut emb = unet
            .time_embedding
            .forward(t_emb, input.timestep_cond.map(|t| t.cast(dtype)));
        if let (Some(proj), Some(add)) = (&s.add_time_proj, &unet.add_embedding) {
            let (Some(text), Some(ids)) = (input.text_embeds, input.time_ids) else {
                return Err(invalid(
                    "addition_embed_type \"text_time\" needs `text_embeds` and `time_ids`"
                        .to_owned(),
                ));
            };
            let n_ids = ids.dims()[1];
            if text.dims()[0] != b || ids.dims()[0] != b {
                return Err(invalid(format!(
                    "`text_embeds` {:?} and `time_ids` {:?} must have batch size {b}",
                    text.dims(),
                    ids.dims()
                )));
            }
            let time_embeds = proj
                .forward(ids.reshape([b * n_ids]).cast(DType::F32))
                .reshape([b, n_ids * proj.num_channels]);
            let add_embeds = Tensor::cat(vec![text.cast(dtype), time_embeds.cast(dtype)], 1);
            emb = emb + add.forward(add_embeds, None);
        }
        let emb = repeat_interleave(emb, f);

        // IP-Adapter image tokens: one row per video, repeated per frame.
        let mut ip = Vec::new();
        for t in input.ip_hidden_states.unwrap_or_default() {
            let n = t.dims()[0];
            let t = t.cast(dtype);
            ip.push(if n == b {
                repeat_interleave3(t, f)
            } else if n == bf {
                t
            } else {
                return Err(invalid(format!(
                    "`ip_hidden_states` holds {:?}, expected batch size {b} (or {bf})",
                    t.dims()
                )));
            });
        }
        let context = EncoderHiddenStates {
            hidden_states: input.encoder_hidden_states.cast(dtype),
            ip_hidden_states: ip,
        };

        // 2. Pre-process.
        let factor = 1usize << s.num_upsamplers;
        let forward_upsample_size = height % factor != 0 || width % factor != 0;
        let mut hs = unet.conv_in.forward(input.sample.cast(dtype));

        // 3. Down.
        let mut skips = vec![hs.clone()];
        for (block, motion) in unet
            .down_blocks
            .iter()
            .zip(&self.motion_adapter.down_blocks)
        {
            let (out, states) = self.down_block(block, motion, hs, &emb, &context, f);
            hs = out;
            skips.extend(states);
        }
        if let Some(res) = input.down_block_additional_residuals {
            skips = crate::unet_2d_condition::add_down_residuals(skips, res, dtype)?;
        }

        // 4. Mid.
        if let Some(mid) = &unet.mid_block {
            hs = match &self.motion_adapter.mid_block {
                Some(motion) => self.mid_block(mid, motion, hs, &emb, &context, f),
                None => mid.forward(hs, Some(&emb), &context, None),
            };
        }
        if let Some(r) = input.mid_block_additional_residual {
            hs = crate::unet_2d_condition::add_mid_residual(hs, r, dtype)?;
        }

        // 5. Up: each block consumes one skip state per resnet from the end of the list.
        let n_up = unet.up_blocks.len();
        for (i, (block, motion)) in unet
            .up_blocks
            .iter()
            .zip(&self.motion_adapter.up_blocks)
            .enumerate()
        {
            let take = block.resnets.len();
            let upsample_size = if i + 1 < n_up && forward_upsample_size {
                skips
                    .len()
                    .checked_sub(take + 1)
                    .and_then(|j| skips.get(j))
                    .map(|t| {
                        let [_, _, hh, ww] = t.dims();
                        [hh, ww]
                    })
            } else {
                None
            };
            hs = self.up_block(
                block,
                motion,
                hs,
                &mut skips,
                &emb,
                &context,
                upsample_size,
                f,
            );
        }

        // 6. Post-process.
        if let Some(norm) = &unet.conv_norm_out {
            hs = s.conv_act.forward(crate::precision::group_norm(norm, hs));
        }
        Ok(unet.conv_out.forward(hs))
    }

    /// `CrossAttnDownBlockMotion` / `DownBlockMotion`: resnet, attention, motion module.
    fn down_block(
        &self,
        block: &DownBlock2D,
        motion: &MotionModules,
        x: Tensor<4>,
        emb: &Tensor<2>,
        context: &EncoderHiddenStates,
        f: usize,
    ) -> (Tensor<4>, Vec<Tensor<4>>) {
        let _span = tracing::trace_span!("DownBlockMotion").entered();
        let mut h = x;
        let mut states = Vec::with_capacity(block.resnets.len() + 1);
        for (i, resnet) in block.resnets.iter().enumerate() {
            h = resnet.forward(h, Some(emb));
            if let Some(attn) = block.attentions.get(i) {
                h = attn.forward(h, context, None);
            }
            if let Some(mm) = motion.motion_modules.get(i) {
                h = mm.forward(h, f, self.groups);
            }
            states.push(h.clone());
        }
        for down in &block.downsamplers {
            h = down.forward(h);
            states.push(h.clone());
        }
        (h, states)
    }

    /// `UNetMidBlockCrossAttnMotion`: resnet, then (attention, motion module, resnet).
    fn mid_block(
        &self,
        block: &UNetMidBlock2DCrossAttn,
        motion: &MotionModules,
        x: Tensor<4>,
        emb: &Tensor<2>,
        context: &EncoderHiddenStates,
        f: usize,
    ) -> Tensor<4> {
        let _span = tracing::trace_span!("UNetMidBlockCrossAttnMotion").entered();
        let mut resnets = block.resnets.iter();
        let mut h = match resnets.next() {
            Some(r) => r.forward(x, Some(emb)),
            None => x,
        };
        for ((attn, resnet), mm) in block
            .attentions
            .iter()
            .zip(resnets)
            .zip(&motion.motion_modules)
        {
            h = attn.forward(h, context, None);
            h = mm.forward(h, f, self.groups);
            h = resnet.forward(h, Some(emb));
        }
        h
    }

    /// `CrossAttnUpBlockMotion` / `UpBlockMotion`: skip concatenation, resnet, attention,
    /// motion module; then the upsampler.
    #[allow(clippy::too_many_arguments)]
    fn up_block(
        &self,
        block: &UpBlock2D,
        motion: &MotionModules,
        x: Tensor<4>,
        skips: &mut Vec<Tensor<4>>,
        emb: &Tensor<2>,
        context: &EncoderHiddenStates,
        upsample_size: Option<[usize; 2]>,
        f: usize,
    ) -> Tensor<4> {
        let _span = tracing::trace_span!("UpBlockMotion").entered();
        let mut h = x;
        for (i, resnet) in block.resnets.iter().enumerate() {
            if let Some(skip) = skips.pop() {
                h = Tensor::cat(vec![h, skip], 1);
            }
            h = resnet.forward(h, Some(emb));
            if let Some(attn) = block.attentions.get(i) {
                h = attn.forward(h, context, None);
            }
            if let Some(mm) = motion.motion_modules.get(i) {
                h = mm.forward(h, f, self.groups);
            }
        }
        for up in &block.upsamplers {
            h = up.forward(h, upsample_size);
        }
        h
    }

    /// Every attention layer's processor by name, the 2D UNet's first, then the motion
    /// modules' (`down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.processor`).
    pub fn attn_processors(&self) -> Vec<(String, AttnProcessorRef)> {
        crate::attention_processor::attn_processors(self)
    }

    /// diffusers' `set_attn_processor` over the 2D and the motion attention layers.
    pub fn set_attn_processor(
        &self,
        processor: impl Into<AttnProcessorSetting>,
    ) -> Result<(), ModelError> {
        crate::attention_processor::set_attn_processor(MODEL, self, processor.into())
    }
}

impl NamedLayers for UNetMotionModel {
    /// The 2D UNet's layers under their own names, then the motion modules under
    /// `down_blocks.i.motion_modules.j`, `mid_block.motion_modules.j`, `up_blocks.i...`: the
    /// names diffusers' `UNetMotionModel` gives them (and motion LoRAs target).
    fn visit_named<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, NamedLayer<'a>)) {
        self.unet.visit_named(prefix, f);
        self.motion_adapter.visit_named(prefix, f);
    }
}

crate::named::lora_model_from_named!(UNetMotionModel);

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn repeat_interleave_repeats_rows_in_place() {
        let device = Default::default();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1f32, 2., 3., 4.], [2, 2]), &device);
        let y = repeat_interleave(x, 3);
        let v = y.into_data().try_to_vec::<f32>().unwrap_or_default();
        assert_eq!(v, vec![1., 2., 1., 2., 1., 2., 3., 4., 3., 4., 3., 4.]);
    }
}
