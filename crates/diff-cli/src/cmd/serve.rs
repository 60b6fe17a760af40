//! `burn-diffusers serve --model REPO_OR_DIR [--listen 127.0.0.1:8080] [--api-key KEY]`: the
//! HTTP server of the `diff-server` crate (OpenAI-compatible and AUTOMATIC1111 APIs, jobs with
//! progress, a web page at `/`), with `generate`'s loading options. This file only maps the
//! flags onto `diff_server::ServerConfig`.

use anyhow::{Context, Result, bail};
use burn_diffusers::pipelines::{DType, LoadOptions, Passed};
use diff_server::{Limits, ModelSpec, ServerConfig};
use serde_json::{Map, Value};
use std::time::Duration;

/// The environment variable read for the API key when `--api-key` is not given (keeps the key
/// out of the process list).
pub const API_KEY_ENV: &str = "BURN_DIFFUSERS_API_KEY";

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct Args {
    /// A local diffusers pipeline folder or a Hub repo id, loaded once.
    #[arg(long)]
    pub model: String,
    /// Where a repo id comes from: `--revision`, `--endpoint`, `--offline`, `--cache-dir`.
    #[command(flatten)]
    pub hub: super::download::HubArgs,
    /// Address to listen on (loopback by default; `0.0.0.0:8080` to serve the network).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Require `Authorization: Bearer KEY` on the API routes (default: $BURN_DIFFUSERS_API_KEY).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Weight variant (`fp16`, ...).
    #[arg(long)]
    pub variant: Option<String>,
    /// Model dtype.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// Device: `flex` (or `cpu`), `wgpu`, `wgpu:N`, `cuda`, `cuda:N`.
    #[arg(long, default_value = "flex")]
    pub device: String,
    /// The default scheduler class, built from the loaded scheduler config (requests may pick
    /// another with `scheduler` / `sampler_name`).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// `key=value` override for `--scheduler` (repeatable).
    #[arg(
        long = "scheduler-set",
        value_name = "KEY=VALUE",
        requires = "scheduler"
    )]
    pub scheduler_set: Vec<String>,
    /// A LoRA to load (repeatable): a file, a folder or a Hub repo id.
    #[arg(long, value_name = "SRC")]
    pub lora: Vec<String>,
    /// The weight of the `--lora` at the same position (repeatable; default 1.0 each).
    #[arg(long = "lora-scale", value_name = "W", allow_negative_numbers = true)]
    pub lora_scale: Vec<f64>,
    /// Fuse the LoRAs into the weights.
    #[arg(long, requires = "lora")]
    pub fuse_lora: bool,
    /// Do not load the safety checker.
    #[arg(long)]
    pub no_safety_checker: bool,
    /// Jobs that may wait in the queue (one more runs); a full queue answers 429.
    #[arg(long, default_value_t = 4)]
    pub queue: usize,
    /// The most denoising steps a request may ask.
    #[arg(long, default_value_t = 150)]
    pub max_steps: usize,
    /// The most images one request may make.
    #[arg(long, default_value_t = 8)]
    pub max_images: usize,
    /// The longest image side, in pixels.
    #[arg(long, default_value_t = 2048)]
    pub max_side: usize,
    /// The largest request body, in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Steps when a request gives none.
    #[arg(long, default_value_t = 50)]
    pub default_steps: usize,
    /// At shutdown (ctrl-c, SIGTERM), seconds the running job may go on before it is cancelled.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
}

fn parse_override(item: &str) -> Result<(String, Value)> {
    let (k, v) = item
        .split_once('=')
        .with_context(|| format!("--scheduler-set `{item}`: expected KEY=VALUE"))?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    Ok((k.trim().to_string(), value))
}

/// The server configuration the flags describe.
pub fn config(args: Args) -> Result<ServerConfig> {
    if args.lora_scale.len() > args.lora.len() {
        bail!(
            "{} --lora-scale values for {} --lora",
            args.lora_scale.len(),
            args.lora.len()
        );
    }
    if args.max_steps == 0 || args.max_steps > super::MAX_GENERATE_STEPS {
        bail!(
            "--max-steps {}: expected 1..={}",
            args.max_steps,
            super::MAX_GENERATE_STEPS
        );
    }
    if args.default_steps == 0 || args.default_steps > args.max_steps {
        bail!(
            "--default-steps {}: expected 1..=--max-steps",
            args.default_steps
        );
    }
    let max_pixels = args.max_side.saturating_mul(args.max_side);
    super::check_pixels(args.max_side, args.max_side).context("--max-side")?;
    let device = burn_diffusers::pipelines::parse_device(&args.device)
        .with_context(|| format!("--device {}", args.device))?;
    let dtype = match args.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let mut load = LoadOptions {
        variant: args.variant.clone(),
        dtype,
        device,
        revision: Some(args.hub.revision.clone()),
        local_files_only: args.hub.offline,
        hub: Some(args.hub.config()?),
        ..LoadOptions::default()
    };
    if args.no_safety_checker {
        load.components.safety_checker = Passed::Drop;
    }
    let scheduler = match &args.scheduler {
        Some(class) => {
            let mut overrides = Map::new();
            for item in &args.scheduler_set {
                let (k, v) = parse_override(item)?;
                overrides.insert(k, v);
            }
            Some((class.clone(), overrides))
        }
        None => None,
    };
    let loras = args
        .lora
        .iter()
        .enumerate()
        .map(|(i, src)| (src.clone(), args.lora_scale.get(i).copied().unwrap_or(1.0)))
        .collect();
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var(API_KEY_ENV).ok())
        .filter(|k| !k.is_empty());
    Ok(ServerConfig {
        model: ModelSpec {
            model: args.model.clone(),
            load,
            scheduler,
            loras,
            fuse_lora: args.fuse_lora,
        },
        listen: args.listen.clone(),
        api_key,
        queue: args.queue,
        limits: Limits {
            max_body_bytes: args.max_body_mib.saturating_mul(1024 * 1024),
            max_side: args.max_side,
            max_pixels,
            max_steps: args.max_steps,
            max_images: args.max_images,
            default_steps: args.default_steps,
            ..Limits::default()
        },
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    })
}

/// Runs `serve` until ctrl-c or SIGTERM.
pub fn run(args: Args) -> Result<()> {
    let config = config(args)?;
    diff_server::serve_blocking(config)?;
    Ok(())
}
