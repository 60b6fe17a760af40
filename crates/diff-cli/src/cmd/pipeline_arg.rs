//! `generate --pipeline CLASS`: the pipeline class a model is loaded into, as
//! `CLASS.from_pretrained(model)` would load it. `CLASS` is one of the supported pipeline classes
//! or one of diffusers' AutoPipelines, which pick the task class of the model's family from its
//! `model_index.json` `_class_name` (diffusers 0.42.1 `pipelines/auto_pipeline.py`: the
//! `"stable-diffusion"`, `"stable-diffusion-xl"` and their `-pag` entries of the text-to-image,
//! image-to-image and inpainting mappings; `burn_diffusers::pipelines::auto_pipeline`).

use anyhow::{Result, bail};
use burn_diffusers::pipelines::{PipelineClass, SUPPORTED_PIPELINES};

/// What `--pipeline` named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// A pipeline class (`StableDiffusionSAGPipeline`).
    Class(PipelineClass),
    /// An AutoPipeline: the task class of the model's family.
    Auto(AutoTask),
}

/// The three AutoPipelines (the library's; `class_for` follows diffusers' mappings, PAG
/// families included).
pub use burn_diffusers::pipelines::AutoTask;
use burn_diffusers::pipelines::auto_pipeline::AUTO_TASKS;

/// Every name `--pipeline` accepts, as listed in errors.
pub fn supported_names() -> Vec<&'static str> {
    SUPPORTED_PIPELINES
        .iter()
        .map(|c| c.name())
        .chain(AUTO_TASKS.iter().map(|t| t.name()))
        .collect()
}

/// Reads `--pipeline NAME`; an unknown name is an error listing the supported ones.
pub fn parse(name: &str) -> Result<Requested> {
    if let Some(class) = PipelineClass::from_name(name) {
        return Ok(Requested::Class(class));
    }
    if let Some(task) = AUTO_TASKS.into_iter().find(|t| t.name() == name) {
        return Ok(Requested::Auto(task));
    }
    bail!(
        "--pipeline {name}: unknown pipeline class; supported: {}",
        supported_names().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_pipelines_map_as_diffusers_mappings() {
        let cases = [
            (
                AutoTask::Text2Image,
                "StableDiffusionInpaintPipeline",
                PipelineClass::StableDiffusion,
            ),
            (
                AutoTask::Image2Image,
                "StableDiffusionPipeline",
                PipelineClass::StableDiffusionImg2Img,
            ),
            (
                AutoTask::Inpainting,
                "StableDiffusionImg2ImgPipeline",
                PipelineClass::StableDiffusionInpaint,
            ),
            (
                AutoTask::Text2Image,
                "StableDiffusionXLImg2ImgPipeline",
                PipelineClass::StableDiffusionXL,
            ),
            (
                AutoTask::Image2Image,
                "StableDiffusionXLPipeline",
                PipelineClass::StableDiffusionXLImg2Img,
            ),
            (
                AutoTask::Inpainting,
                "StableDiffusionXLPipeline",
                PipelineClass::StableDiffusionXLInpaint,
            ),
        ];
        for (task, from, want) in cases {
            assert_eq!(
                task.class_for(from, None).unwrap(),
                want,
                "{} {from}",
                task.name()
            );
        }
    }

    #[test]
    fn auto_pipelines_refuse_classes_outside_their_mappings() {
        for name in ["StableDiffusionSAGPipeline", "KandinskyPipeline"] {
            let msg = AutoTask::Text2Image
                .class_for(name, None)
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("can't find a pipeline linked to {name}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn parse_names_classes_and_auto_pipelines() {
        assert_eq!(
            parse("StableDiffusionSAGPipeline").unwrap(),
            Requested::Class(PipelineClass::StableDiffusionSAG)
        );
        assert_eq!(
            parse("AutoPipelineForInpainting").unwrap(),
            Requested::Auto(AutoTask::Inpainting)
        );
        assert_eq!(
            parse("StableDiffusionXLPAGPipeline").unwrap(),
            Requested::Class(PipelineClass::StableDiffusionXLPAG)
        );
        let msg = parse("StableDiffusionControlNetPipeline")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("unknown pipeline class")
                && msg.contains("StableDiffusionSAGPipeline")
                && msg.contains("AutoPipelineForText2Image"),
            "{msg}"
        );
    }
}
