//! diffusers' AutoPipelines (0.42.1 `pipelines/auto_pipeline.py`): `AutoPipelineForText2Image`,
//! `AutoPipelineForImage2Image` and `AutoPipelineForInpainting` pick the task class of a model's
//! family, by name, as diffusers does:
//!
//! - `_get_model(class_name)`: the mapping key (`"stable-diffusion"`, `"stable-diffusion-xl"`,
//!   `"stable-diffusion-pag"`, `"stable-diffusion-xl-pag"`) of the first task mapping
//!   (text-to-image, image-to-image, inpainting) holding `class_name`;
//! - `_get_task_class(mapping, class_name)`: that key's class in the task's mapping, or
//!   "AutoPipeline can't find a pipeline linked to ...";
//! - `from_pretrained`: the `_class_name` of `model_index.json`, with `enable_pag=True` turning
//!   its `Pipeline` suffix (`Img2ImgPipeline` / `InpaintPipeline` for those checkpoints) into
//!   `PAGPipeline` (`PAGImg2ImgPipeline`, ...) first;
//! - `from_pipe`: the task class of the pipeline's class, then `enable_pag=True` strips `PAG`
//!   and inserts it before the task suffix, `enable_pag=False` strips it; the new pipeline
//!   shares every component, keeps `_name_or_path` and stashes config the class does not take.
//!   A component the class requires (not in its `_optional_components`) that neither the source
//!   pipeline has nor the caller passes is an error.
//!
//! Classes of other families (ControlNet, Kandinsky, ...) are outside these mappings: the error
//! says so.

use crate::components::{COMPONENTS, PassedKind, Role};
use crate::error::PipelineError;
use crate::pipeline::{
    DiffusionPipeline, LoadOptions, PassedComponents, PipelineClass, SUPPORTED_PIPELINES,
    resolve_folder,
};
use diff_format::model_index::{ModelIndex, PipelineClass as IndexClass};
use serde_json::Value;
use std::collections::BTreeMap;

/// The three AutoPipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutoTask {
    /// `AutoPipelineForText2Image`.
    Text2Image,
    /// `AutoPipelineForImage2Image`.
    Image2Image,
    /// `AutoPipelineForInpainting`.
    Inpainting,
}

/// Every AutoPipeline, in the order listed in errors.
pub const AUTO_TASKS: [AutoTask; 3] = [
    AutoTask::Text2Image,
    AutoTask::Image2Image,
    AutoTask::Inpainting,
];

/// diffusers' mappings restricted to the Stable Diffusion families: key, then the
/// text-to-image, image-to-image and inpainting class names.
const MAPPINGS: [(&str, [&str; 3]); 4] = [
    (
        "stable-diffusion",
        [
            "StableDiffusionPipeline",
            "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline",
        ],
    ),
    (
        "stable-diffusion-xl",
        [
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
        ],
    ),
    (
        "stable-diffusion-pag",
        [
            "StableDiffusionPAGPipeline",
            "StableDiffusionPAGImg2ImgPipeline",
            "StableDiffusionPAGInpaintPipeline",
        ],
    ),
    (
        "stable-diffusion-xl-pag",
        [
            "StableDiffusionXLPAGPipeline",
            "StableDiffusionXLPAGImg2ImgPipeline",
            "StableDiffusionXLPAGInpaintPipeline",
        ],
    ),
];

/// Which missing-component rule `from_pipe` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FromPipeRule {
    /// `DiffusionPipeline.from_pipe`: missing = expected − the source's optional components −
    /// given − those the new `__init__` has a default for.
    Pipeline,
    /// `AutoPipeline*.from_pipe`: missing = expected − the new class's optional components −
    /// given.
    Auto,
}

/// `_get_model`: the mapping key of `class_name`.
fn model_key(class_name: &str) -> Option<&'static str> {
    (0..3).find_map(|task| {
        MAPPINGS
            .iter()
            .find(|(_, names)| names[task] == class_name)
            .map(|(key, _)| *key)
    })
}

fn supported_auto_list() -> String {
    MAPPINGS
        .iter()
        .flat_map(|(_, names)| names.iter().copied())
        .filter(|n| PipelineClass::from_name(n).is_some())
        .collect::<Vec<_>>()
        .join(", ")
}

impl AutoTask {
    /// diffusers' class name.
    pub fn name(self) -> &'static str {
        match self {
            AutoTask::Text2Image => "AutoPipelineForText2Image",
            AutoTask::Image2Image => "AutoPipelineForImage2Image",
            AutoTask::Inpainting => "AutoPipelineForInpainting",
        }
    }

    /// The AutoPipeline of a diffusers class name.
    pub fn from_name(name: &str) -> Option<Self> {
        AUTO_TASKS.into_iter().find(|t| t.name() == name)
    }

    fn index(self) -> usize {
        match self {
            AutoTask::Text2Image => 0,
            AutoTask::Image2Image => 1,
            AutoTask::Inpainting => 2,
        }
    }

    /// The suffix `enable_pag` works on in `from_pipe`.
    fn suffix(self) -> &'static str {
        match self {
            AutoTask::Text2Image => "Pipeline",
            AutoTask::Image2Image => "Img2ImgPipeline",
            AutoTask::Inpainting => "InpaintPipeline",
        }
    }

    /// `_get_task_class(mapping, class_name)`: the class name of this task for the family of
    /// `class_name` (which need not be implemented here).
    fn task_class_name(self, class_name: &str) -> Result<&'static str, PipelineError> {
        let key = model_key(class_name);
        key.and_then(|k| MAPPINGS.iter().find(|(m, _)| *m == k))
            .map(|(_, names)| names[self.index()])
            .ok_or_else(|| {
                PipelineError::arg(
                    "pipeline",
                    format!(
                        "{}: AutoPipeline can't find a pipeline linked to {class_name} for {} (the mappings here hold: {})",
                        self.name(),
                        key.unwrap_or("None"),
                        supported_auto_list()
                    ),
                )
            })
    }

    /// The class a task class name stands for here.
    fn implemented(self, name: &str) -> Result<PipelineClass, PipelineError> {
        PipelineClass::from_name(name).ok_or_else(|| {
            PipelineError::arg(
                "pipeline",
                format!(
                    "{}: diffusers maps this model to {name}, which is not implemented here; supported: {}",
                    self.name(),
                    SUPPORTED_PIPELINES
                        .iter()
                        .map(|c| c.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// The class `from_pretrained` builds for a checkpoint whose `model_index.json`
    /// `_class_name` is `class_name` (`enable_pag`: diffusers' keyword, `None` when not given).
    pub fn class_for(
        self,
        class_name: &str,
        enable_pag: Option<bool>,
    ) -> Result<PipelineClass, PipelineError> {
        let to_replace = match self {
            AutoTask::Image2Image if class_name.contains("Img2Img") => "Img2ImgPipeline",
            AutoTask::Inpainting if class_name.contains("Inpaint") => "InpaintPipeline",
            _ => "Pipeline",
        };
        let name = if enable_pag == Some(true) {
            class_name.replace(to_replace, &format!("PAG{to_replace}"))
        } else {
            class_name.to_owned()
        };
        self.implemented(self.task_class_name(&name)?)
    }

    /// The class `from_pipe` builds from a pipeline of class `source`.
    pub fn class_for_pipe(
        self,
        source: PipelineClass,
        enable_pag: Option<bool>,
    ) -> Result<PipelineClass, PipelineError> {
        let mut name = self.task_class_name(source.name())?.to_owned();
        match (enable_pag, self) {
            (Some(true), _) => {
                let suffix = self.suffix();
                name = name
                    .replace("PAG", "")
                    .replace(suffix, &format!("PAG{suffix}"));
                name = self.task_class_name(&name)?.to_owned();
            }
            (Some(false), AutoTask::Inpainting) => {
                name = name.replace("PAGInpaintPipeline", "InpaintPipeline");
                name = self.task_class_name(&name)?.to_owned();
            }
            (Some(false), _) => {
                name = name.replace("PAG", "");
                name = self.task_class_name(&name)?.to_owned();
            }
            (None, _) => {}
        }
        self.implemented(&name)
    }

    /// `AutoPipelineFor<Task>.from_pretrained(repo_or_folder, enable_pag=..., **options)`:
    /// the task class of the checkpoint's family, loaded as `Class.from_pretrained` loads it
    /// (`options.pipeline_class` is ignored).
    pub fn from_pretrained(
        self,
        repo_or_folder: &str,
        options: &LoadOptions,
        enable_pag: Option<bool>,
    ) -> Result<DiffusionPipeline, PipelineError> {
        let folder = resolve_folder(repo_or_folder, options)?;
        let index_path = folder.join("model_index.json");
        let index = ModelIndex::load(&index_path)?;
        let class_name = match &index.class_name {
            IndexClass::Builtin(n) => n.clone(),
            IndexClass::Custom { module, class_name } => format!("[{module}, {class_name}]"),
        };
        let class = self.class_for(&class_name, enable_pag)?;
        let options = LoadOptions {
            pipeline_class: Some(class),
            ..options.clone()
        };
        DiffusionPipeline::from_folder(
            &folder,
            repo_or_folder,
            &options,
            &PassedComponents::default(),
        )
    }

    /// `AutoPipelineFor<Task>.from_pipe(pipe, enable_pag=..., **kwargs)`: `passed` replaces or
    /// drops components, `config` overrides scalar config and may hold `pag_applied_layers`.
    pub fn from_pipe(
        self,
        pipe: &DiffusionPipeline,
        passed: &PassedComponents,
        config: &BTreeMap<String, Value>,
        enable_pag: Option<bool>,
    ) -> Result<DiffusionPipeline, PipelineError> {
        let class = self.class_for_pipe(pipe.class(), enable_pag)?;
        pipe.check_from_pipe(class, passed, FromPipeRule::Auto)?;
        pipe.share_into(class, passed, config)
    }
}

/// Whether `class.__init__` has a default for the component (`image_encoder=None`, and SDXL's
/// `feature_extractor=None`): diffusers' `true_optional_modules`.
fn init_has_default(class: PipelineClass, component: &str) -> bool {
    component == "image_encoder" || (class.is_xl() && component == "feature_extractor")
}

impl DiffusionPipeline {
    /// diffusers' `missing_modules` check of `from_pipe`: each component the new class takes
    /// must be passed or held by this pipeline (a `None` it holds counts), unless the rule
    /// excuses it.
    pub(crate) fn check_from_pipe(
        &self,
        class: PipelineClass,
        passed: &PassedComponents,
        rule: FromPipeRule,
    ) -> Result<(), PipelineError> {
        let source = self.class();
        let mut missing = Vec::new();
        for slot in &COMPONENTS {
            let role = slot.role(class);
            if role == Role::Absent
                || slot.role(source) != Role::Absent
                || slot.passed(passed) != PassedKind::Default
            {
                continue;
            }
            let excused = match rule {
                FromPipeRule::Pipeline => init_has_default(class, slot.name),
                FromPipeRule::Auto => role == Role::Optional,
            };
            if !excused {
                missing.push(slot.name);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let expected: Vec<&str> = class
            .expected_components()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        Err(PipelineError::arg(
            missing[0],
            format!(
                "Pipeline {} expected {expected:?}, but {} has no {}: pass {} to from_pipe",
                class.name(),
                source.name(),
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() == 1 { "it" } else { "them" },
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PipelineClass as C;

    #[test]
    fn from_pretrained_classes_follow_diffusers_mappings() {
        let t = AutoTask::Text2Image;
        let i = AutoTask::Image2Image;
        let p = AutoTask::Inpainting;
        assert_eq!(
            t.class_for("StableDiffusionInpaintPipeline", None).unwrap(),
            C::StableDiffusion
        );
        assert_eq!(
            i.class_for("StableDiffusionPipeline", None).unwrap(),
            C::StableDiffusionImg2Img
        );
        assert_eq!(
            p.class_for("StableDiffusionXLPipeline", None).unwrap(),
            C::StableDiffusionXLInpaint
        );
        assert_eq!(
            t.class_for("StableDiffusionPipeline", Some(true)).unwrap(),
            C::StableDiffusionPAG
        );
        assert_eq!(
            t.class_for("StableDiffusionXLPipeline", Some(true))
                .unwrap(),
            C::StableDiffusionXLPAG
        );
        assert_eq!(
            i.class_for("StableDiffusionXLImg2ImgPipeline", Some(true))
                .unwrap(),
            C::StableDiffusionXLPAGImg2Img
        );
        assert_eq!(
            i.class_for("StableDiffusionPipeline", Some(true)).unwrap(),
            C::StableDiffusionPAGImg2Img
        );
        // An img2img checkpoint with enable_pag for text-to-image: no such class in diffusers.
        let e = t
            .class_for("StableDiffusionImg2ImgPipeline", Some(true))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "can't find a pipeline linked to StableDiffusionImg2ImgPAGPipeline for None"
            ),
            "{e}"
        );
        assert_eq!(
            p.class_for("StableDiffusionInpaintPipeline", Some(true))
                .unwrap(),
            C::StableDiffusionPAGInpaint
        );
        let e = t
            .class_for("StableDiffusionSAGPipeline", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("can't find a pipeline linked to StableDiffusionSAGPipeline for None"),
            "{e}"
        );
    }

    #[test]
    fn from_pipe_classes_add_and_strip_pag() {
        let t = AutoTask::Text2Image;
        let i = AutoTask::Image2Image;
        assert_eq!(
            t.class_for_pipe(C::StableDiffusionImg2Img, Some(true))
                .unwrap(),
            C::StableDiffusionPAG
        );
        assert_eq!(
            t.class_for_pipe(C::StableDiffusionPAG, Some(false))
                .unwrap(),
            C::StableDiffusion
        );
        assert_eq!(
            t.class_for_pipe(C::StableDiffusionPAG, None).unwrap(),
            C::StableDiffusionPAG
        );
        assert_eq!(
            i.class_for_pipe(C::StableDiffusionXLPAG, None).unwrap(),
            C::StableDiffusionXLPAGImg2Img
        );
        assert_eq!(
            i.class_for_pipe(C::StableDiffusionXL, Some(true)).unwrap(),
            C::StableDiffusionXLPAGImg2Img
        );
        assert_eq!(
            AutoTask::Inpainting
                .class_for_pipe(C::StableDiffusionXLPAG, Some(false))
                .unwrap(),
            C::StableDiffusionXLInpaint
        );
    }
}
