//! The loading guide's "Reuse a pipeline" walkthrough, step by step, in Rust:
//!
//! 1. a StableDiffusionPipeline with an IP-Adapter (`load_ip_adapter`, `set_ip_adapter_scale`),
//!    generating with `ip_adapter_image`;
//! 2. a StableDiffusionSAGPipeline made by `from_pipe` (the same models, the same loaded
//!    IP-Adapter), generating with `guidance_scale=1.0, sag_scale=0.75`; it gives the output of
//!    a SAG pipeline loaded afresh with the same IP-Adapter, and adds no parameters;
//! 3. `unload_ip_adapter` on the SAG pipeline, seen by the SD pipeline too (they share the
//!    UNet): calling it with `ip_adapter_image` is then an error, as in the guide.
//!
//! Run on the repository's tiny fixtures (what CI does through `tests/walkthrough.rs`):
//! `cargo run -p burn-diffusers --example walkthrough`; or on real models:
//! `cargo run --release -p burn-diffusers --example walkthrough -- SD_REPO_OR_DIR IP_REPO_OR_DIR
//! WEIGHT_NAME IMAGE` (e.g. `SG161222/Realistic_Vision_V6.0_B1_noVAE h94/IP-Adapter
//! ip-adapter_sd15.bin load_neg_embed.png`).

use burn_diffusers::models::ScaleConfig;
use burn_diffusers::pipelines::ip_adapter::{distinct_parameter_bytes, parameter_bytes};
use burn_diffusers::pipelines::{
    CallArgs, DiffusionPipeline, LoadIpAdapter, LoadOptions, OutputType, Passed, PassedComponents,
    PipelineClass, PipelineError, PipelineOutput,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    Ok(Report {
        out_sd,
        out_sag,
        out_sag_fresh,
        bytes_sd,
        bytes_sd_and_sag,
        after_unload,
        out_sd_unloaded,
        processors_after_unload,
    })
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let inputs = match argv.as_slice() {
        [] => Inputs::tiny(),
        [model, ip_repo, weight_name, image] => Inputs {
            model: model.clone(),
            ip_repo: ip_repo.clone(),
            weight_name: weight_name.clone(),
            image: PathBuf::from(image),
            steps: 50,
            size: None,
            seed: 33,
            prompt: "bear eats pizza".into(),
            negative_prompt: "wrong white balance, dark, sketches,worst quality,low quality".into(),
        },
        _ => {
            return Err(
                "usage: walkthrough [SD_REPO_OR_DIR IP_REPO_OR_DIR WEIGHT_NAME IMAGE]".into(),
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
