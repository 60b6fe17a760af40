//! The loading guide's "Reuse a pipeline" walkthrough, step by step, in Rust:
//!
//! 1. a StableDiffusionPipeline with an IP-Adapter (`load_ip_adapter`, `set_ip_adapter_scale`),
//!    generating with `ip_adapter_image`;
//! 2. a StableDiffusionSAGPipeline made by `from_pipe` (the same models, the same loaded
//!    IP-Adapter), generating with `guidance_scale=1.0, sag_scale=0.75`; it gives the output of
//!    a SAG pipeline loaded afresh with the same IP-Adapter, and adds no parameters;
//! 3. `unload_ip_adapter` on the SAG pipeline, seen by the SD pipeline too (they share the
//!    UNet): calling it with `ip_adapter_image` is then an error, as in the guide;
//! 4. an AnimateDiffPipeline made by `from_pipe(pipe_sd, motion_adapter=adapter)`, with DDIM
//!    (`beta_schedule="linear"`), the IP-Adapter loaded again, the "zoom-out" motion LoRA at
//!    0.75, 16 frames with `ip_adapter_image`, exported to a GIF; it adds only the motion
//!    adapter's and the LoRA's parameters to the SD pipeline's.
//!
//! Run on the repository's tiny fixtures (what CI does through `tests/walkthrough.rs`):
//! `cargo run -p burn-diffusers --example walkthrough`; or on real models:
//! `cargo run --release -p burn-diffusers --example walkthrough -- SD_REPO_OR_DIR IP_REPO_OR_DIR
//! WEIGHT_NAME IMAGE [MOTION_ADAPTER MOTION_LORA]` (e.g. `SG161222/Realistic_Vision_V6.0_B1_noVAE
//! h94/IP-Adapter ip-adapter_sd15.bin load_neg_embed.png guoyww/animatediff-motion-adapter-v1-5-2
//! guoyww/animatediff-motion-lora-zoom-out`).

use burn_diffusers::models::{FromPretrained, ModelLoadOptions, MotionAdapter, ScaleConfig};
use burn_diffusers::pipelines::animatediff::{export_to_gif, video_frames};
use burn_diffusers::pipelines::ip_adapter::{distinct_parameter_bytes, parameter_bytes};
use burn_diffusers::pipelines::pipeline::resolve_folder;
use burn_diffusers::pipelines::{
    AdapterWeight, CallArgs, DiffusionPipeline, LoadIpAdapter, LoadOptions, OutputType, Passed,
    PassedComponents, PipelineClass, PipelineError, PipelineOutput,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the AnimateDiff step runs on.
pub struct AnimateInputs {
    /// The motion adapter: a folder or Hub repo id
    /// (`guoyww/animatediff-motion-adapter-v1-5-2` in the guide).
    pub motion_adapter: String,
    /// The motion LoRA: a folder, file or Hub repo id
    /// (`guoyww/animatediff-motion-lora-zoom-out`), loaded as "zoom-out".
    pub motion_lora: String,
    /// Its weight (`set_adapters("zoom-out", adapter_weights=0.75)`).
    pub lora_weight: f64,
    /// `num_frames` (16).
    pub num_frames: usize,
    /// The prompt ("bear eats pizza").
    pub prompt: String,
    /// The seed (33).
    pub seed: u64,
    /// Where `export_to_gif` writes (`out_animate.gif`).
    pub gif: PathBuf,
}

/// What the walkthrough runs on.
pub struct Inputs {
    /// The SD pipeline (`SG161222/Realistic_Vision_V6.0_B1_noVAE` in the guide).
    pub model: String,
    /// The IP-Adapter repo (`h94/IP-Adapter`).
    pub ip_repo: String,
    /// Its weight file in `models/` (`ip-adapter_sd15.bin`).
    pub weight_name: String,
    /// The image prompt.
    pub image: PathBuf,
    /// Steps (50 in the guide).
    pub steps: usize,
    /// Output size (`None`: the model's default).
    pub size: Option<(usize, usize)>,
    /// The seed (33 in the guide).
    pub seed: u64,
    /// The prompt ("bear eats pizza" in the guide).
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
    /// The AnimateDiff step (skipped when `None`).
    pub animate: Option<AnimateInputs>,
}

impl Inputs {
    /// The repository's tiny fixtures (`tests/fixtures/tiny-sd`, `47-ip-adapter`).
    pub fn tiny() -> Self {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let ip = fixtures.join("47-ip-adapter");
        Self {
            model: fixtures.join("tiny-sd").display().to_string(),
            ip_repo: ip.join("repo").display().to_string(),
            weight_name: "ip-adapter_tiny.bin".into(),
            image: ip.join("ip_image.png"),
            steps: 3,
            size: Some((32, 32)),
            seed: 0,
            // The prompts of the fixture's diffusers runs.
            prompt: "a photo of an astronaut riding a horse on mars".into(),
            negative_prompt: "blurry".into(),
            // The motion adapter and LoRA of `70-animatediff`, the call of
            // `71-animatediff-ip-adapter`'s `ip_cfg_lora075_16f`.
            animate: Some(AnimateInputs {
                motion_adapter: fixtures
                    .join("70-animatediff/motion_adapter")
                    .display()
                    .to_string(),
                motion_lora: fixtures
                    .join("70-animatediff/motion_lora")
                    .display()
                    .to_string(),
                lora_weight: 0.75,
                num_frames: 16,
                prompt: "bear eats pizza".into(),
                seed: 33,
                gif: PathBuf::from("out_animate.gif"),
            }),
        }
    }
}

/// What the walkthrough shows.
pub struct Report {
    /// `out_sd`.
    pub out_sd: PipelineOutput,
    /// `out_sag` (SAG by `from_pipe`).
    pub out_sag: PipelineOutput,
    /// The same call on a SAG pipeline loaded afresh with the same IP-Adapter.
    pub out_sag_fresh: PipelineOutput,
    /// Bytes of parameters: the SD pipeline alone, and the SD and SAG pipelines together.
    pub bytes_sd: usize,
    /// Bytes of the distinct parameters both pipelines hold.
    pub bytes_sd_and_sag: usize,
    /// The error of `pipe_sd(..., ip_adapter_image=...)` after `pipe_sag.unload_ip_adapter()`.
    pub after_unload: PipelineError,
    /// `pipe_sd(...)` without the image prompt after the unload.
    pub out_sd_unloaded: PipelineOutput,
    /// The attention processor classes of the shared UNet after the unload.
    pub processors_after_unload: Vec<String>,
    /// The AnimateDiff step, when it ran.
    pub animate: Option<AnimateReport>,
}

/// What the AnimateDiff step shows.
pub struct AnimateReport {
    /// `pipe_animate(...)` (`output_type="np"`: the frames as floats).
    pub out: PipelineOutput,
    /// Frames written to the GIF.
    pub gif_frames: usize,
    /// Bytes of the GIF file.
    pub gif_bytes: usize,
    /// Bytes of the SD pipeline's parameters just before (its IP-Adapter unloaded).
    pub bytes_sd_before: usize,
    /// Bytes of the distinct parameters the SD, SAG and AnimateDiff pipelines hold together.
    pub bytes_all: usize,
    /// Bytes of the motion adapter's own parameters.
    pub bytes_motion_adapter: usize,
    /// Bytes of the LoRA adapters the pipeline holds (the motion LoRA).
    pub bytes_lora: usize,
    /// Bytes of the IP-Adapter layers loaded again on the shared UNet.
    pub bytes_ip_adapter: usize,
}

fn load(model: &str, class: PipelineClass) -> Result<DiffusionPipeline, PipelineError> {
    // The tiny model's safety checker is dropped so the images can be compared with diffusers'
    // (the guide keeps it; it does not change what is shown).
    let mut options = LoadOptions {
        pipeline_class: Some(class),
        ..LoadOptions::default()
    };
    options.components.safety_checker = Passed::Drop;
    options
        .config
        .insert("requires_safety_checker".into(), false.into());
    DiffusionPipeline::from_pretrained(model, &options)
}

fn print_bytes(name: &str, pipe: &DiffusionPipeline) {
    let parts = parameter_bytes(pipe);
    let total: usize = parts.iter().map(|(_, b)| b).sum();
    println!("{name}: {total} bytes of parameters");
    for (component, bytes) in parts {
        println!("  {component}: {bytes}");
    }
}

/// Runs the walkthrough.
pub fn run(inputs: &Inputs) -> Result<Report, PipelineError> {
    let image = burn_diffusers::image::load_image(&inputs.image)?;
    let ip_adapter = LoadIpAdapter::new(&inputs.ip_repo, "models", &inputs.weight_name);
    let call = |guidance: f32, sag_scale: Option<f32>, with_image: bool| {
        let mut args = CallArgs::prompt(inputs.prompt.clone())
            .with_negative_prompt(inputs.negative_prompt.clone())
            .with_steps(inputs.steps)
            .with_seed(inputs.seed)
            .with_guidance_scale(guidance)
            .with_output_type(OutputType::Np);
        if let Some((h, w)) = inputs.size {
            args = args.with_size(h, w);
        }
        if let Some(s) = sag_scale {
            args = args.with_sag_scale(s);
        }
        if with_image {
            args = args.with_ip_adapter_image(image.clone());
        }
        args
    };

    // pipe_sd = DiffusionPipeline.from_pretrained(...)
    // pipe_sd.load_ip_adapter("h94/IP-Adapter", subfolder="models", weight_name=...)
    // pipe_sd.set_ip_adapter_scale(0.6)
    let mut pipe_sd = load(&inputs.model, PipelineClass::StableDiffusion)?;
    pipe_sd.load_ip_adapter(&ip_adapter)?;
    pipe_sd.set_ip_adapter_scale(&[ScaleConfig::Uniform(0.6)])?;
    let out_sd = pipe_sd.call(&call(7.5, None, true), None)?;
    print_bytes("StableDiffusionPipeline", &pipe_sd);

    // pipe_sag = StableDiffusionSAGPipeline.from_pipe(pipe_sd)
    let mut pipe_sag = pipe_sd.from_pipe(
        PipelineClass::StableDiffusionSAG,
        &PassedComponents::default(),
        &BTreeMap::new(),
    )?;
    let out_sag = pipe_sag.call(&call(1.0, Some(0.75), true), None)?;
    print_bytes("StableDiffusionSAGPipeline (from_pipe)", &pipe_sag);
    let bytes_sd = distinct_parameter_bytes(&[&pipe_sd]);
    let bytes_sd_and_sag = distinct_parameter_bytes(&[&pipe_sd, &pipe_sag]);
    println!(
        "both pipelines together: {bytes_sd_and_sag} bytes (from_pipe added {})",
        bytes_sd_and_sag - bytes_sd
    );

    // The same SAG call on a pipeline loaded afresh with the same IP-Adapter.
    let mut fresh = load(&inputs.model, PipelineClass::StableDiffusionSAG)?;
    fresh.load_ip_adapter(&ip_adapter)?;
    fresh.set_ip_adapter_scale(&[ScaleConfig::Uniform(0.6)])?;
    let out_sag_fresh = fresh.call(&call(1.0, Some(0.75), true), None)?;
    drop(fresh);

    // pipe_sag.unload_ip_adapter(): the SD pipeline shares the UNet and loses it too.
    pipe_sag.unload_ip_adapter()?;
    let after_unload = match pipe_sd.call(&call(7.5, None, true), None) {
        Ok(_) => {
            return Err(PipelineError::InvalidArgument {
                name: "ip_adapter_image".into(),
                message: "the SD pipeline still used the IP-Adapter after unload_ip_adapter".into(),
            });
        }
        Err(e) => e,
    };
    println!("pipe_sd with ip_adapter_image after pipe_sag.unload_ip_adapter(): {after_unload}");
    let out_sd_unloaded = pipe_sd.call(&call(7.5, None, false), None)?;
    let processors_after_unload = pipe_sd
        .unet()
        .map(|u| {
            u.attn_processors()
                .iter()
                .map(|(_, p)| p.name().to_string())
                .collect()
        })
        .unwrap_or_default();
    let animate = match &inputs.animate {
        Some(a) => Some(animate(inputs, &pipe_sd, &pipe_sag, &ip_adapter, a)?),
        None => None,
    };
    Ok(Report {
        out_sd,
        out_sag,
        out_sag_fresh,
        bytes_sd,
        bytes_sd_and_sag,
        after_unload,
        out_sd_unloaded,
        processors_after_unload,
        animate,
    })
}

/// The guide's last step:
///
/// ```python
/// adapter = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2")
/// pipe_animate = AnimateDiffPipeline.from_pipe(pipe_sd, motion_adapter=adapter)
/// pipe_animate.scheduler = DDIMScheduler.from_config(pipe_animate.scheduler.config,
///                                                    beta_schedule="linear")
/// pipe_animate.load_ip_adapter("h94/IP-Adapter", subfolder="models", weight_name=...)
/// pipe_animate.load_lora_weights("guoyww/animatediff-motion-lora-zoom-out",
///                                adapter_name="zoom-out")
/// pipe_animate.set_adapters("zoom-out", adapter_weights=0.75)
/// out = pipe_animate(prompt="bear eats pizza", num_frames=16, ip_adapter_image=image,
///                    generator=torch.Generator("cpu").manual_seed(33)).frames[0]
/// export_to_gif(out, "out_animate.gif")
/// ```
///
/// Here the models are shared, not copied: the IP-Adapter loaded again sits on the UNet the SD
/// and SAG pipelines hold too (diffusers' `from_pipe` copies the UNet into a new
/// `UNetMotionModel`, which is why the guide unloads first and loads again).
fn animate(
    inputs: &Inputs,
    pipe_sd: &DiffusionPipeline,
    pipe_sag: &DiffusionPipeline,
    ip_adapter: &LoadIpAdapter,
    a: &AnimateInputs,
) -> Result<AnimateReport, PipelineError> {
    let image = burn_diffusers::image::load_image(&inputs.image)?;
    let bytes_sd_before = distinct_parameter_bytes(&[pipe_sd]);
    let folder = resolve_folder(&a.motion_adapter, &LoadOptions::default())?;
    let device = Default::default();
    let (adapter, report) =
        MotionAdapter::from_pretrained(&folder, &ModelLoadOptions::new(&device))?;
    if !report.is_clean() {
        println!("MotionAdapter: {}", report.summary());
    }
    let bytes_motion_adapter = adapter.parameter_count() * 4;
    let mut pipe_animate = pipe_sd.animatediff_from_pipe(Arc::new(adapter))?;
    let mut linear = serde_json::Map::new();
    linear.insert("beta_schedule".into(), "linear".into());
    pipe_animate.swap_scheduler("DDIMScheduler", &linear)?;
    pipe_animate.load_ip_adapter(ip_adapter)?;
    let bytes_ip_adapter = pipe_animate
        .unet()
        .map_or(0, |u| u.ip_adapter_num_params() * 4);
    pipe_animate.load_lora_weights(&a.motion_lora, None, Some("zoom-out"))?;
    pipe_animate.set_adapters(&["zoom-out"], &[AdapterWeight::Uniform(a.lora_weight)])?;
    print_bytes("AnimateDiffPipeline (from_pipe)", &pipe_animate);
    let bytes_lora = parameter_bytes(&pipe_animate)
        .into_iter()
        .filter(|(name, _)| name == "lora")
        .map(|(_, b)| b)
        .sum();
    let bytes_all = distinct_parameter_bytes(&[pipe_sd, pipe_sag, &pipe_animate]);
    println!(
        "SD + SAG + AnimateDiff pipelines together: {bytes_all} bytes (from_pipe added {}: motion \
         adapter {bytes_motion_adapter}, motion LoRA {bytes_lora}, IP-Adapter loaded again \
         {bytes_ip_adapter})",
        bytes_all - bytes_sd_before
    );

    let mut args = CallArgs::prompt(a.prompt.clone())
        .with_steps(inputs.steps)
        .with_seed(a.seed)
        .with_ip_adapter_image(image)
        .with_output_type(OutputType::Np);
    if let Some((h, w)) = inputs.size {
        args = args.with_size(h, w);
    }
    args.video.num_frames = a.num_frames;
    let out = pipe_animate.call(&args, None)?;
    // .frames[0], then export_to_gif(out, "out_animate.gif") (diffusers' default fps of 10).
    let frames = video_frames(&out, a.num_frames);
    let first = frames
        .first()
        .ok_or_else(|| PipelineError::InvalidArgument {
            name: "num_frames".into(),
            message: "the AnimateDiff call returned no video".into(),
        })?;
    let gif_bytes = export_to_gif(first, &a.gif, 10)?;
    println!(
        "wrote {} ({} frames, {gif_bytes} bytes)",
        a.gif.display(),
        first.len()
    );
    Ok(AnimateReport {
        gif_frames: first.len(),
        gif_bytes,
        out,
        bytes_sd_before,
        bytes_all,
        bytes_motion_adapter,
        bytes_lora,
        bytes_ip_adapter,
    })
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let inputs = match argv.as_slice() {
        [] => Inputs::tiny(),
        [model, ip_repo, weight_name, image, rest @ ..] if rest.is_empty() || rest.len() == 2 => {
            Inputs {
                model: model.clone(),
                ip_repo: ip_repo.clone(),
                weight_name: weight_name.clone(),
                image: PathBuf::from(image),
                steps: 50,
                size: None,
                seed: 33,
                prompt: "bear eats pizza".into(),
                negative_prompt: "wrong white balance, dark, sketches,worst quality,low quality"
                    .into(),
                animate: match rest {
                    [adapter, lora] => Some(AnimateInputs {
                        motion_adapter: adapter.clone(),
                        motion_lora: lora.clone(),
                        lora_weight: 0.75,
                        num_frames: 16,
                        prompt: "bear eats pizza".into(),
                        seed: 33,
                        gif: PathBuf::from("out_animate.gif"),
                    }),
                    _ => None,
                },
            }
        }
        _ => {
            return Err(
                "usage: walkthrough [SD_REPO_OR_DIR IP_REPO_OR_DIR WEIGHT_NAME IMAGE \
                 [MOTION_ADAPTER MOTION_LORA]]"
                    .into(),
            );
        }
    };
    let report = run(&inputs)?;
    for (name, out) in [
        ("out_sd.png", &report.out_sd),
        ("out_sag.png", &report.out_sag),
    ] {
        if let Some(img) = out.rgb8().first() {
            img.save(name)?;
            println!("wrote {name}");
        }
    }
    Ok(())
}
