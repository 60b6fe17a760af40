//! `generate --pipeline CLASS`: the pipeline class a model is loaded into, as
//! `CLASS.from_pretrained(model)` would load it. `CLASS` is one of the supported pipeline classes
//! or one of diffusers' AutoPipelines, which pick the task class of the model's family from its
//! `model_index.json` `_class_name` (diffusers 0.42.1 `pipelines/auto_pipeline.py`: the
//! `"stable-diffusion"` and `"stable-diffusion-xl"` entries of the text-to-image, image-to-image
//! and inpainting mappings).

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

/// The three AutoPipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoTask {
    /// `AutoPipelineForText2Image`.
    Text2Image,
    /// `AutoPipelineForImage2Image`.
    Image2Image,
    /// `AutoPipelineForInpainting`.
    Inpainting,
}

const AUTO_TASKS: [AutoTask; 3] = [
    AutoTask::Text2Image,
    AutoTask::Image2Image,
    AutoTask::Inpainting,
];

impl AutoTask {
    /// diffusers' class name.
    pub fn name(self) -> &'static str {
        match self {
            AutoTask::Text2Image => "AutoPipelineForText2Image",
            AutoTask::Image2Image => "AutoPipelineForImage2Image",
            AutoTask::Inpainting => "AutoPipelineForInpainting",
        }
    }

    /// diffusers' `_get_task_class(mapping, class_name)`: the family (`_get_model`: the mapping
    /// key of the task class named `class_name`), then this task's class for that family.
    pub fn class_for(self, class_name: &str) -> Result<PipelineClass> {
        let family = PipelineClass::from_name(class_name)
            .filter(|c| {
                !matches!(
                    c,
                    PipelineClass::StableDiffusionSAG | PipelineClass::AnimateDiff
                )
            })
            .map(PipelineClass::is_xl);
        let Some(xl) = family else {
            bail!(
                "{}: AutoPipeline can't find a pipeline linked to {class_name} for None (it maps the classes of the stable-diffusion and stable-diffusion-xl families: {})",
                self.name(),
                SUPPORTED_PIPELINES
                    .iter()
                    .filter(|c| {
                        !matches!(
                            c,
                            PipelineClass::StableDiffusionSAG | PipelineClass::AnimateDiff
                        )
                    })
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        Ok(match (self, xl) {
            (AutoTask::Text2Image, false) => PipelineClass::StableDiffusion,
            (AutoTask::Image2Image, false) => PipelineClass::StableDiffusionImg2Img,
            (AutoTask::Inpainting, false) => PipelineClass::StableDiffusionInpaint,
            (AutoTask::Text2Image, true) => PipelineClass::StableDiffusionXL,
            (AutoTask::Image2Image, true) => PipelineClass::StableDiffusionXLImg2Img,
            (AutoTask::Inpainting, true) => PipelineClass::StableDiffusionXLInpaint,
        })
    }
}

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
                task.class_for(from).unwrap(),
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
                .class_for(name)
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
        let msg = parse("StableDiffusionPAGPipeline").unwrap_err().to_string();
        assert!(
            msg.contains("unknown pipeline class")
                && msg.contains("StableDiffusionSAGPipeline")
                && msg.contains("AutoPipelineForText2Image"),
            "{msg}"
        );
    }
}
