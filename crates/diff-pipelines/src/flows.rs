//! Which `__call__` flow each pipeline class runs: one registration per class, in
//! [`FLOWS`]. A new task is a new flow file (`stable_diffusion*/<task>.rs`) plus one line here.

use crate::call::{CallArgs, PipelineOutput, StepCallback};
use crate::error::PipelineError;
use crate::pipeline::{DiffusionPipeline, PipelineClass};
use crate::{stable_diffusion as sd, stable_diffusion_xl as sdxl};

/// A task's `__call__`: the pipeline, the arguments, the per-step callback.
pub(crate) type Flow = fn(
    &DiffusionPipeline,
    &CallArgs,
    Option<&mut StepCallback<'_>>,
) -> Result<PipelineOutput, PipelineError>;

/// The flow of every pipeline class.
pub(crate) const FLOWS: &[(PipelineClass, Flow)] = &[
    (PipelineClass::StableDiffusion, sd::text2img::call),
    (PipelineClass::StableDiffusionImg2Img, sd::img2img::call),
    (PipelineClass::StableDiffusionInpaint, sd::inpaint::call),
    (PipelineClass::StableDiffusionXL, sdxl::text2img::call),
    (PipelineClass::StableDiffusionXLImg2Img, sdxl::img2img::call),
    (PipelineClass::StableDiffusionXLInpaint, sdxl::inpaint::call),
    (PipelineClass::StableDiffusionSAG, sd::sag::call),
    // The PAG classes run their base task's flow; `pag::run_loop` adds the guidance.
    (PipelineClass::StableDiffusionPAG, sd::text2img::call),
    (PipelineClass::StableDiffusionPAGImg2Img, sd::img2img::call),
    (PipelineClass::StableDiffusionXLPAG, sdxl::text2img::call),
    (PipelineClass::StableDiffusionPAGInpaint, sd::inpaint::call),
    (
        PipelineClass::StableDiffusionXLPAGInpaint,
        sdxl::inpaint::call,
    ),
    (
        PipelineClass::StableDiffusionXLPAGImg2Img,
        sdxl::img2img::call,
    ),
    (
        PipelineClass::AnimateDiff,
        crate::animatediff::text2video::call,
    ),
];

/// The flow registered for `class`.
pub(crate) fn flow(class: PipelineClass) -> Option<Flow> {
    FLOWS.iter().find(|(c, _)| *c == class).map(|(_, f)| *f)
}

impl DiffusionPipeline {
    /// Runs the pipeline's `__call__` with `args` (the flow registered for its class);
    /// `callback` sees every step and may stop the loop early (the output then holds the
    /// latents reached).
    pub fn call(
        &self,
        args: &CallArgs,
        callback: Option<&mut StepCallback<'_>>,
    ) -> Result<PipelineOutput, PipelineError> {
        let flow = flow(self.class()).ok_or_else(|| {
            PipelineError::arg(
                "pipeline",
                format!(
                    "no `__call__` flow is registered for {}",
                    self.class().name()
                ),
            )
        })?;
        let out = flow(self, args, callback);
        self.offload_release_all();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::SUPPORTED_PIPELINES;

    #[test]
    fn every_supported_class_has_one_flow() {
        for class in SUPPORTED_PIPELINES {
            let n = FLOWS.iter().filter(|(c, _)| *c == class).count();
            assert_eq!(n, 1, "{} has {n} flows", class.name());
        }
    }
}
