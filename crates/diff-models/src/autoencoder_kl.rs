//! `AutoencoderKL` (diffusers `models/autoencoders/autoencoder_kl.py`): the SD/SDXL VAE, with
//! diffusers' tiled encode/decode (overlapping tiles blended linearly, bit-for-bit the same
//! tile grid and blend weights) and sliced (one sample at a time) encode/decode.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Device, Tensor, TensorData};
use diff_format::configs::vae::AutoencoderKLConfig;

use crate::ModelError;
use crate::resnet::{Activation, check_groups, conv2d};
use crate::vae::{CoderConfig, Decoder, DiagonalGaussianDistribution, Encoder};

const MODEL: &str = "AutoencoderKL";

fn unsupported(key: &str, value: impl std::fmt::Debug, reason: &str) -> ModelError {
    ModelError::UnsupportedConfig {
        model: MODEL.to_owned(),
        key: key.to_owned(),
        value: format!("{value:?}"),
        reason: reason.to_owned(),
    }
}

fn to_usize(key: &str, v: u64) -> Result<usize, ModelError> {
    usize::try_from(v).map_err(|_| unsupported(key, v, "does not fit in usize"))
}

/// Values derived from the config, and the tiling/slicing switches (diffusers' attributes of
/// the same names).
#[derive(Debug, Clone)]
pub struct VaeSettings {
    /// Image channels in.
    pub in_channels: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// `scaling_factor`.
    pub scaling_factor: f64,
    /// `shift_factor`.
    pub shift_factor: Option<f64>,
    /// `force_upcast`: pipelines run this VAE in f32 even when the rest is f16.
    pub force_upcast: bool,
    /// Encode/decode one sample at a time (`enable_slicing`).
    pub use_slicing: bool,
    /// Encode/decode large inputs in overlapping tiles (`enable_tiling`).
    pub use_tiling: bool,
    /// Image tile side (`sample_size`).
    pub tile_sample_min_size: usize,
    /// Latent tile side (`sample_size / 2^(blocks - 1)`).
    pub tile_latent_min_size: usize,
    /// Fraction of a tile that overlaps its neighbour (0.25).
    pub tile_overlap_factor: f64,
    /// The dtype the model computes in.
    pub dtype: DType,
}

/// diffusers' `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    /// Image to moments.
    pub encoder: Encoder,
    /// Latents to image.
    pub decoder: Decoder,
    /// 1x1 convolution on the moments.
    pub quant_conv: Option<Conv2d>,
    /// 1x1 convolution on the latents before decoding.
    pub post_quant_conv: Option<Conv2d>,
    /// Derived values and switches.
    #[module(skip)]
    pub settings: VaeSettings,
    /// The config the model was built from.
    #[module(skip)]
    pub config: AutoencoderKLConfig,
}

impl AutoencoderKL {
    /// Builds the model from its config on `device` (parameters lazy until loaded); `dtype` is
    /// the dtype it computes in.
    pub fn from_config(
        config: &AutoencoderKLConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let c = config;
        for (key, kinds, want) in [
            (
                "down_block_types",
                &c.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &c.up_block_types, "UpDecoderBlock2D"),
        ] {
            if let Some(bad) = kinds.iter().find(|k| k.as_str() != want) {
                return Err(unsupported(key, bad, &format!("only {want} is supported")));
            }
        }
        let n = c.block_out_channels.len();
        if n == 0 || c.down_block_types.len() != n || c.up_block_types.len() != n {
            return Err(unsupported(
                "block_out_channels",
                &c.block_out_channels,
                "needs one entry per down and up block",
            ));
        }
        let boc: Vec<usize> = c
            .block_out_channels
            .iter()
            .map(|v| to_usize("block_out_channels", *v))
            .collect::<Result<_, _>>()?;
        let groups = to_usize("norm_num_groups", c.norm_num_groups)?;
        for &ch in &boc {
            check_groups(MODEL, groups, ch)?;
        }
        let act = Activation::from_name(&c.act_fn, MODEL, "act_fn")?;
        let latent = to_usize("latent_channels", c.latent_channels)?;
        let in_channels = to_usize("in_channels", c.in_channels)?;
        let layers = to_usize("layers_per_block", c.layers_per_block)?;
        let sample = c.sample_size_side().ok_or_else(|| {
            unsupported("sample_size", &c.sample_size, "expected an int or [h, w]")
        })?;
        let sample = to_usize("sample_size", sample)?;
        let base = CoderConfig {
            in_channels,
            out_channels: 2 * latent,
            block_out_channels: boc.clone(),
            layers_per_block: layers,
            norm_num_groups: groups,
            act,
            mid_block_add_attention: c.mid_block_add_attention,
        };
        let encoder = Encoder::new(MODEL, &base, device)?;
        let decoder = Decoder::new(
            MODEL,
            &CoderConfig {
                in_channels: latent,
                out_channels: to_usize("out_channels", c.out_channels)?,
                ..base
            },
            device,
        )?;
        Ok(Self {
            encoder,
            decoder,
            quant_conv: c
                .use_quant_conv
                .then(|| conv2d(2 * latent, 2 * latent, 1, 1, 0, device)),
            post_quant_conv: c
                .use_post_quant_conv
                .then(|| conv2d(latent, latent, 1, 1, 0, device)),
            settings: VaeSettings {
                in_channels,
                latent_channels: latent,
                scaling_factor: c.scaling_factor,
                shift_factor: c.shift_factor,
                force_upcast: c.force_upcast,
                use_slicing: false,
                use_tiling: false,
                tile_sample_min_size: sample,
                tile_latent_min_size: sample >> (n - 1),
                tile_overlap_factor: 0.25,
                dtype,
            },
            config: c.clone(),
        })
    }

    /// The factor between image and latent sides, `2^(len(block_out_channels) - 1)`
    /// (pipelines' `vae_scale_factor`).
    pub fn vae_scale_factor(&self) -> usize {
        1 << self.config.block_out_channels.len().saturating_sub(1)
    }

    /// `scaling_factor` from the config.
    pub fn scaling_factor(&self) -> f64 {
        self.settings.scaling_factor
    }

    /// `shift_factor` from the config.
    pub fn shift_factor(&self) -> Option<f64> {
        self.settings.shift_factor
    }

    /// `force_upcast` from the config.
    pub fn force_upcast(&self) -> bool {
        self.settings.force_upcast
    }

    /// diffusers' `enable_tiling` / `disable_tiling`.
    pub fn set_tiling(&mut self, on: bool) {
        self.settings.use_tiling = on;
    }

    /// diffusers' `enable_slicing` / `disable_slicing`.
    pub fn set_slicing(&mut self, on: bool) {
        self.settings.use_slicing = on;
    }

    fn check(&self, what: &str, x: &Tensor<4>, channels: usize) -> Result<(), ModelError> {
        let c = x.dims()[1];
        if c != channels {
            return Err(ModelError::InvalidInput {
                model: MODEL.to_owned(),
                reason: format!("`{what}` has {c} channels, expected {channels}"),
            });
        }
        Ok(())
    }

    /// Encodes images in [-1, 1] to the latent distribution.
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`
    /// - moments of the result: `[batch, latent_channels, h / 2^(blocks - 1), ...]`
    pub fn encode(&self, x: Tensor<4>) -> Result<DiagonalGaussianDistribution, ModelError> {
        let _span = tracing::debug_span!("AutoencoderKL::encode").entered();
        crate::offload::enter(self);
        self.check("x", &x, self.settings.in_channels)?;
        let x = x.cast(self.settings.dtype);
        let b = x.dims()[0];
        let moments = if self.settings.use_slicing && b > 1 {
            let parts = (0..b)
                .map(|i| self.encode_one(x.clone().narrow(0, i, 1)))
                .collect();
            Tensor::cat(parts, 0)
        } else {
            self.encode_one(x)
        };
        Ok(DiagonalGaussianDistribution::new(moments))
    }

    fn encode_one(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let s = &self.settings;
        if s.use_tiling && (w > s.tile_sample_min_size || h > s.tile_sample_min_size) {
            return self.tiled(x, s.tile_sample_min_size, s.tile_latent_min_size, |t| {
                self.encode_tile(t)
            });
        }
        self.encode_tile(x)
    }

    fn encode_tile(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.encoder.forward(x);
        match &self.quant_conv {
            Some(q) => crate::precision::conv2d(q, h),
            None => h,
        }
    }

    /// Decodes latents (already divided by `scaling_factor`) to images in about [-1, 1].
    ///
    /// # Shapes
    /// - `z`: `[batch, latent_channels, h, w]`
    /// - output: `[batch, out_channels, h * 2^(blocks - 1), w * 2^(blocks - 1)]`
    pub fn decode(&self, z: Tensor<4>) -> Result<Tensor<4>, ModelError> {
        let _span = tracing::debug_span!("AutoencoderKL::decode").entered();
        crate::offload::enter(self);
        self.check("z", &z, self.settings.latent_channels)?;
        let z = z.cast(self.settings.dtype);
        let b = z.dims()[0];
        Ok(if self.settings.use_slicing && b > 1 {
            let parts = (0..b)
                .map(|i| self.decode_one(z.clone().narrow(0, i, 1)))
                .collect();
            Tensor::cat(parts, 0)
        } else {
            self.decode_one(z)
        })
    }

    fn decode_one(&self, z: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = z.dims();
        let s = &self.settings;
        if s.use_tiling && (w > s.tile_latent_min_size || h > s.tile_latent_min_size) {
            return self.tiled(z, s.tile_latent_min_size, s.tile_sample_min_size, |t| {
                self.decode_tile(t)
            });
        }
        self.decode_tile(z)
    }

    fn decode_tile(&self, z: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(q) => crate::precision::conv2d(q, z),
            None => z,
        };
        self.decoder.forward(z)
    }

    /// diffusers' tiling: tiles of side `tile_in` every `tile_in * (1 - overlap)` pixels, each
    /// run through `f` (giving tiles of side about `tile_out`), blended with the tile above and
    /// the tile to the left over `tile_out * overlap` rows/columns, then cropped to
    /// `tile_out - blend` and concatenated. As in diffusers, blending updates the stored tiles in
    /// place, so a tile's neighbours below and to the right see its blended version.
    fn tiled(
        &self,
        x: Tensor<4>,
        tile_in: usize,
        tile_out: usize,
        f: impl Fn(Tensor<4>) -> Tensor<4>,
    ) -> Tensor<4> {
        let _span = tracing::debug_span!("AutoencoderKL::tiled").entered();
        let overlap = self.settings.tile_overlap_factor;
        let stride = ((tile_in as f64) * (1.0 - overlap)) as usize;
        let stride = stride.max(1);
        let blend_extent = ((tile_out as f64) * overlap) as usize;
        let row_limit = tile_out.saturating_sub(blend_extent);
        let [_, _, h, w] = x.dims();

        let mut rows: Vec<Vec<Tensor<4>>> = Vec::new();
        for i in (0..h).step_by(stride) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride) {
                let th = tile_in.min(h - i);
                let tw = tile_in.min(w - j);
                let tile = x.clone().narrow(2, i, th).narrow(3, j, tw);
                row.push(f(tile));
            }
            rows.push(row);
        }
        let mut result_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut result_row = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let mut tile = rows[i][j].clone();
                if i > 0 {
                    tile = blend(&rows[i - 1][j], tile, blend_extent, 2);
                }
                if j > 0 {
                    tile = blend(&rows[i][j - 1], tile, blend_extent, 3);
                }
                rows[i][j] = tile.clone();
                let [_, _, th, tw] = tile.dims();
                result_row.push(tile.narrow(2, 0, row_limit.min(th)).narrow(
                    3,
                    0,
                    row_limit.min(tw),
                ));
            }
            result_rows.push(Tensor::cat(result_row, 3));
        }
        Tensor::cat(result_rows, 2)
    }
}

/// Maps the names of diffusers' deprecated `AttentionBlock` (`query`, `key`, `value`,
/// `proj_attn`), which older VAE checkpoints still use, to the `Attention` names, as diffusers'
/// `_convert_deprecated_attention_blocks` does on load.
pub(crate) fn rename_deprecated_attention(key: &str) -> Option<String> {
    if !key.contains(".attentions.") {
        return None;
    }
    const MAP: [(&str, &str); 4] = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    MAP.iter()
        .find(|(old, _)| key.contains(old))
        .map(|(old, new)| key.replacen(old, new, 1))
}

/// diffusers' `blend_v` (`dim == 2`) / `blend_h` (`dim == 3`): the first `extent` rows/columns
/// of `b` become `a`'s last ones weighted `1 - k / extent` plus `b`'s weighted `k / extent`.
/// The weights are computed in f64 and rounded to f32, as PyTorch rounds the Python floats.
fn blend(a: &Tensor<4>, b: Tensor<4>, extent: usize, dim: usize) -> Tensor<4> {
    let extent = extent.min(a.dims()[dim]).min(b.dims()[dim]);
    if extent == 0 {
        return b;
    }
    let device = b.device();
    let dtype = b.dtype();
    let wb: Vec<f32> = (0..extent)
        .map(|k| (k as f64 / extent as f64) as f32)
        .collect();
    let wa: Vec<f32> = (0..extent)
        .map(|k| (1.0 - k as f64 / extent as f64) as f32)
        .collect();
    let shape = if dim == 2 {
        [1, 1, extent, 1]
    } else {
        [1, 1, 1, extent]
    };
    let wa = Tensor::<4>::from_data(TensorData::new(wa, shape), &device).cast(dtype);
    let wb = Tensor::<4>::from_data(TensorData::new(wb, shape), &device).cast(dtype);
    let a_len = a.dims()[dim];
    let b_len = b.dims()[dim];
    let a_tail = a.clone().narrow(dim, a_len - extent, extent);
    let b_head = b.clone().narrow(dim, 0, extent);
    let mixed = a_tail * wa + b_head * wb;
    if b_len == extent {
        mixed
    } else {
        let rest = b.narrow(dim, extent, b_len - extent);
        Tensor::cat(vec![mixed, rest], dim)
    }
}

#[cfg(test)]
mod tests {
    use super::rename_deprecated_attention;

    #[test]
    fn deprecated_vae_attention_names_map_to_attention_names() {
        assert_eq!(
            rename_deprecated_attention("decoder.mid_block.attentions.0.proj_attn.weight")
                .as_deref(),
            Some("decoder.mid_block.attentions.0.to_out.0.weight")
        );
        assert_eq!(
            rename_deprecated_attention("encoder.mid_block.attentions.0.query.bias").as_deref(),
            Some("encoder.mid_block.attentions.0.to_q.bias")
        );
        assert_eq!(
            rename_deprecated_attention("encoder.mid_block.attentions.0.to_k.weight"),
            None
        );
    }
}
