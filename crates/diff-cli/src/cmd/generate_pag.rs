//! `generate --pag-scale F [--pag-adaptive-scale F] [--pag-applied-layers L,...]`:
//! Perturbed-Attention Guidance (diffusers' PAG classes).
//!
//! Semantics, as a diffusers user gets them:
//! - with `--pipeline` naming a PAG class (`StableDiffusionPAGPipeline`, ...), the flags are
//!   that class's `pag_scale` / `pag_adaptive_scale` and its `pag_applied_layers`;
//! - without `--pipeline`, or with an AutoPipeline, a PAG flag is diffusers' `enable_pag=True`:
//!   the model's class (after --image / --mask picked the task) becomes its PAG class, as
//!   `AutoPipelineFor<Task>.from_pipe(pipe, enable_pag=True)` maps it (SD and SDXL
//!   text-to-image, img2img and inpaint; an unmapped class, such as SAG's, is an error);
//! - with `--pipeline` naming a class that is not a PAG class it is an error: diffusers'
//!   `__call__` of that class takes no `pag_scale`.

use anyhow::{Result, bail};
use burn_diffusers::pipelines::{AutoTask, DiffusionPipeline, PipelineClass};
use std::collections::BTreeMap;

/// The PAG flags of `generate`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PagArgs {
    /// Perturbed-Attention Guidance's `pag_scale` (the PAG classes' default 3.0; 0 turns it
    /// off). Without --pipeline (or with an AutoPipeline) it picks the model's PAG class, as
    /// diffusers' `enable_pag=True` does.
    #[arg(long, allow_negative_numbers = true)]
    pub pag_scale: Option<f32>,
    /// `pag_adaptive_scale` (default 0): when > 0 the PAG scale at timestep t is
    /// `max(pag_scale - pag_adaptive_scale * (1000 - t), 0)`.
    #[arg(long, allow_negative_numbers = true)]
    pub pag_adaptive_scale: Option<f32>,
    /// `pag_applied_layers`: comma-separated regular expressions searched in the UNet's
    /// self-attention names (default `mid`; e.g. `down_blocks.1,up_blocks.0`).
    #[arg(long, value_delimiter = ',', value_name = "LAYERS")]
    pub pag_applied_layers: Vec<String>,
}

impl PagArgs {
    /// Whether any PAG flag was given.
    pub fn wanted(&self) -> bool {
        self.pag_scale.is_some()
            || self.pag_adaptive_scale.is_some()
            || !self.pag_applied_layers.is_empty()
    }

    /// The `__call__` arguments.
    pub fn call_args(&self) -> burn_diffusers::pipelines::PagArgs {
        let d = burn_diffusers::pipelines::PagArgs::default();
        burn_diffusers::pipelines::PagArgs {
            pag_scale: self.pag_scale.unwrap_or(d.pag_scale),
            pag_adaptive_scale: self.pag_adaptive_scale.unwrap_or(d.pag_adaptive_scale),
        }
    }
}

/// The task of a class, for `enable_pag`.
fn task_of(class: PipelineClass) -> Option<AutoTask> {
    use PipelineClass as C;
    match class {
        C::StableDiffusion
        | C::StableDiffusionXL
        | C::StableDiffusionPAG
        | C::StableDiffusionXLPAG => Some(AutoTask::Text2Image),
        C::StableDiffusionImg2Img
        | C::StableDiffusionXLImg2Img
        | C::StableDiffusionPAGImg2Img
        | C::StableDiffusionXLPAGImg2Img => Some(AutoTask::Image2Image),
        C::StableDiffusionInpaint
        | C::StableDiffusionXLInpaint
        | C::StableDiffusionPAGInpaint
        | C::StableDiffusionXLPAGInpaint => Some(AutoTask::Inpainting),
        _ => None,
    }
}

/// Applies the PAG flags to the loaded pipeline: the PAG class (see the module doc) and its
/// `pag_applied_layers`. `explicit_class` is the class `--pipeline` named, if it named one.
pub fn apply(
    args: &PagArgs,
    pipe: DiffusionPipeline,
    explicit_class: Option<PipelineClass>,
) -> Result<DiffusionPipeline> {
    if !args.wanted() {
        return Ok(pipe);
    }
    let mut pipe = if pipe.class().is_pag() {
        pipe
    } else if let Some(class) = explicit_class {
        bail!(
            "--pag-scale / --pag-adaptive-scale / --pag-applied-layers are for the PAG classes; --pipeline {} does not take `pag_scale` (name a PAG class such as StableDiffusionPAGPipeline, an AutoPipeline, or leave --pipeline out)",
            class.name()
        );
    } else {
        let Some(task) = task_of(pipe.class()) else {
            bail!(
                "--pag-scale: {} has no Perturbed-Attention Guidance class (AutoPipeline can't find a pipeline linked to it)",
                pipe.class().name()
            );
        };
        let class = task.class_for_pipe(pipe.class(), Some(true))?;
        tracing::info!(
            "--pag-scale: using {} (enable_pag=True) for {}",
            class.name(),
            pipe.class().name()
        );
        pipe.from_pipe(class, &Default::default(), &BTreeMap::new())?
    };
    if !args.pag_applied_layers.is_empty() {
        let layers = args.pag_applied_layers.clone();
        pipe.set_pag_applied_layers(layers)
            .map_err(|e| anyhow::anyhow!("--pag-applied-layers: {e}"))?;
        // The patterns must match: check now, before any denoising.
        pipe.pag_layer_names()
            .map_err(|e| anyhow::anyhow!("--pag-applied-layers: {e}"))?;
    }
    Ok(pipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_diffusers::pipelines::LoadOptions;
    use std::path::Path;

    fn tiny_sd() -> DiffusionPipeline {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd");
        DiffusionPipeline::from_pretrained(&dir.display().to_string(), &LoadOptions::default())
            .unwrap()
    }

    #[test]
    fn a_pag_flag_picks_the_pag_class_as_enable_pag_does() {
        let args = PagArgs {
            pag_scale: Some(2.0),
            pag_applied_layers: vec!["down_blocks.0".into()],
            ..PagArgs::default()
        };
        let pipe = apply(&args, tiny_sd(), None).unwrap();
        assert_eq!(pipe.class(), PipelineClass::StableDiffusionPAG);
        assert_eq!(pipe.pag_applied_layers(), ["down_blocks.0"]);
        assert_eq!(args.call_args().pag_scale, 2.0);
        assert_eq!(args.call_args().pag_adaptive_scale, 0.0);
    }

    #[test]
    fn a_pag_flag_with_a_non_pag_class_is_refused() {
        let args = PagArgs {
            pag_scale: Some(2.0),
            ..PagArgs::default()
        };
        let e = apply(&args, tiny_sd(), Some(PipelineClass::StableDiffusion))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--pipeline StableDiffusionPipeline does not take `pag_scale`"),
            "{e}"
        );
        let bad = PagArgs {
            pag_applied_layers: vec!["nowhere".into()],
            ..PagArgs::default()
        };
        let e = apply(&bad, tiny_sd(), None).unwrap_err().to_string();
        assert!(
            e.contains("Cannot find PAG layer to set attention processor for: nowhere"),
            "{e}"
        );
    }

    /// `generate --pag-scale 3 --pag-applied-layers down_blocks.0` on tiny-sd (no --pipeline:
    /// enable_pag picks StableDiffusionPAGPipeline) against the
    /// `sd_text2img_auto_from_pipe_cfg_off` case of tests/fixtures/56-pag (2/255 per pixel,
    /// 0.5/255 mean).
    #[test]
    fn generate_with_pag_flags_matches_the_diffusers_fixture() {
        use burn_diffusers::pipelines::outputs::load_float_images;
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: super::super::generate::Args,
        }
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let dir = std::env::temp_dir().join(format!("burn-diffusers-pag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.safetensors");
        let model = fixtures.join("tiny-sd");
        let cli = Cli::try_parse_from([
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a photo of an astronaut riding a horse on mars",
            "--steps",
            "3",
            "--guidance",
            "1.0",
            "--scheduler",
            "EulerDiscreteScheduler",
            "--seed",
            "6",
            "--height",
            "32",
            "--width",
            "32",
            "--no-safety-checker",
            "--pag-scale",
            "3",
            "--pag-applied-layers",
            "down_blocks.0",
            "--out-array",
            out.to_str().unwrap(),
        ])
        .unwrap();
        super::super::generate::run(cli.args).unwrap();
        let got = load_float_images(&out).unwrap();
        let want = load_float_images(
            &fixtures.join("56-pag/sd_text2img_auto_from_pipe_cfg_off.safetensors"),
        )
        .unwrap();
        assert_eq!(
            (got.count, got.height, got.width),
            (want.count, want.height, want.width)
        );
        let diffs: Vec<f32> = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().copied().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(
            max <= 2.0 / 255.0 && mean < 0.5 / 255.0,
            "max {max}, mean {mean}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
