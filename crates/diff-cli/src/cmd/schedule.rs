//! `burn-diffusers schedule`: build a scheduler from a `scheduler_config.json` (optionally as
//! another class, with overrides), print its schedule, or replay a recorded denoising trace.

use anyhow::{Context, Result, bail};
use burn_diffusers::schedulers::{Scheduler, StepOptions, replay_trace};
use clap::Args as ClapArgs;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// How `--replay` consumes a trace; shown at the end of `--help`.
const REPLAY_HELP: &str = "\
Replay (--replay trace.safetensors --seed S --out out.safetensors):
  The trace holds `sample` [B,C,H,W] and `model_outputs` [T,B,C,H,W] (float32; float64,
  float16 and bfloat16 are converted to float32). After set_timesteps(--steps), T must equal
  the number of the scheduler's timesteps (e.g. 2n-1 for Heun / KDPM2, n+1 for PNDM with
  skip_prk_steps). The loop is the pipeline's: x = sample, used as given (already multiplied
  by init_noise_sigma); for i = 0..T with t = timesteps[i]: scale_model_input(x, t) is called
  (its result is not used: model_outputs[i] is the recorded model answer to it), then
  x = step(model_outputs[i], t, x, generator). Step noise (ancestral / SDE schedulers) comes
  from one torch-compatible CPU generator seeded with --seed, except DPMSolverSDEScheduler,
  which (as in diffusers) draws it from a Brownian tree seeded by the config's
  noise_sampler_seed (--set noise_sampler_seed=N; when null, a random seed, as torch's
  unseeded global generator gives, logged so that the run can be repeated). The output file gets
  `prev_samples` [T,B,C,H,W] (the output of every step, in order) and `final` [B,C,H,W].";

/// Print a scheduler's timesteps, sigmas and init_noise_sigma, or replay a trace.
#[derive(ClapArgs, Debug)]
#[command(after_help = REPLAY_HELP)]
pub struct Args {
    /// The scheduler_config.json to read.
    #[arg(long)]
    config: PathBuf,
    /// Build this class from the config, as `Class.from_config(config, **overrides)`
    /// (default: the config's `_class_name`).
    #[arg(long)]
    class: Option<String>,
    /// Override a config key: `key=value`, the value read as JSON where it parses (`true`,
    /// `0.5`, `[1, 2]`) and as a bare string otherwise (`trailing`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Number of inference steps for set_timesteps.
    #[arg(long)]
    steps: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Replay this trace (safetensors with `sample` and `model_outputs`).
    #[arg(long, requires = "out")]
    replay: Option<PathBuf>,
    /// Seed of the step-noise generator for --replay.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where --replay writes `prev_samples` and `final` (safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Parses `key=value` overrides: JSON where the value parses, a bare string otherwise.
fn parse_overrides(items: &[String]) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for item in items {
        let Some((key, raw)) = item.split_once('=') else {
            bail!("--set expects key=value, got `{item}`");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--set `{item}` has an empty key");
        }
        let value =
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        map.insert(key.to_string(), value);
    }
    Ok(map)
}

/// Reads a float tensor from the trace as f32 values plus its shape.
fn read_f32(st: &SafeTensors<'_>, name: &str, path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let view = st
        .tensor(name)
        .with_context(|| format!("{}: no tensor `{name}` in the trace", path.display()))?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        other => bail!(
            "{}: tensor `{name}` has dtype {other:?}, expected a float type",
            path.display()
        ),
    };
    Ok((values, view.shape().to_vec()))
}

/// IEEE half to f32 (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m · 2^-24.
            let v = m as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<()> {
    super::check_steps(args.steps, super::MAX_SCHEDULE_STEPS)?;
    // Check where --out goes before any work, so a missing folder fails at once.
    let out = args
        .out
        .as_deref()
        .map(|p| super::check_out("--out", p))
        .transpose()?;
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config: Map<String, Value> = match burn_diffusers::format::json::loads(&text)
        .with_context(|| format!("{} is not valid JSON", args.config.display()))?
    {
        Value::Object(map) => map,
        other => bail!(
            "{}: expected a JSON object, got {other}",
            args.config.display()
        ),
    };
    let overrides = parse_overrides(&args.set)?;
    let class = match (&args.class, config.get("_class_name")) {
        (Some(c), _) => c.clone(),
        (None, Some(Value::String(c))) => c.clone(),
        (None, _) => bail!(
            "{} has no `_class_name`; pass --class",
            args.config.display()
        ),
    };
    if let Some(keys) = Scheduler::config_keys(&class) {
        for key in overrides.keys().filter(|k| !keys.contains(&k.as_str())) {
            eprintln!(
                "warning: {class} does not take `{key}`; the override is ignored (as diffusers \
                 ignores it). {class} takes: {}",
                keys.join(", ")
            );
        }
    }
    let mut scheduler = Scheduler::from_config_as(&class, &config, &overrides)
        .with_context(|| format!("building {class} from {}", args.config.display()))?;
    scheduler
        .set_timesteps(args.steps)
        .with_context(|| format!("{class}.set_timesteps({})", args.steps))?;

    if let Some(trace) = &args.replay {
        let out = out.context("--replay needs --out")?;
        return replay(&mut scheduler, trace, &out, args.seed);
    }

    let timesteps = scheduler.timesteps().to_vec();
    let sigmas: Option<Vec<f32>> = scheduler.sigmas().map(<[f32]>::to_vec);
    let init = scheduler.init_noise_sigma();
    if args.json {
        let doc = serde_json::json!({
            "class": class,
            "num_inference_steps": args.steps,
            "order": scheduler.order(),
            "timesteps": timesteps,
            "sigmas": sigmas,
            "init_noise_sigma": init,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("class: {class}");
        println!("order: {}", scheduler.order());
        println!("init_noise_sigma: {init}");
        println!("timesteps ({}): {timesteps:?}", timesteps.len());
        match sigmas {
            Some(s) => println!("sigmas ({}): {s:?}", s.len()),
            None => println!("sigmas: none (this scheduler has no sigma table)"),
        }
    }
    Ok(())
}

fn replay(scheduler: &mut Scheduler, trace: &Path, out: &Path, seed: u64) -> Result<()> {
    let bytes = std::fs::read(trace).with_context(|| format!("reading {}", trace.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", trace.display()))?;
    let (sample, sample_shape) = read_f32(&st, "sample", trace)?;
    let (outputs, out_shape) = read_f32(&st, "model_outputs", trace)?;
    let shape: [usize; 4] = sample_shape.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{}: `sample` must be [B,C,H,W], got {sample_shape:?}",
            trace.display()
        )
    })?;
    let t = scheduler.timesteps().len();
    if out_shape.len() != 5 || out_shape[1..] != sample_shape[..] || out_shape[0] != t {
        bail!(
            "{}: `model_outputs` must be [T,B,C,H,W] = [{t}, {}, {}, {}, {}] (one per timestep), got {out_shape:?}",
            trace.display(),
            shape[0],
            shape[1],
            shape[2],
            shape[3]
        );
    }
    let result = replay_trace(
        scheduler,
        &sample,
        shape,
        &outputs,
        seed,
        &StepOptions::default(),
    )?;
    let prev_bytes = f32_bytes(&result.prev_samples);
    let final_bytes = f32_bytes(&result.final_sample);
    let prev_view = TensorView::new(Dtype::F32, out_shape.clone(), &prev_bytes)?;
    let final_view = TensorView::new(Dtype::F32, sample_shape.clone(), &final_bytes)?;
    let data = safetensors::serialize([("final", final_view), ("prev_samples", prev_view)], None)?;
    // Written beside the target, then renamed, so a failure never leaves a half-written file;
    // never over anything but a regular file.
    burn_diffusers::format::fsutil::write_atomic(out, &data)?;
    crate::info_line!("wrote {} ({} steps)", out.display(), t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_parse_as_json_or_bare_strings() {
        let m = parse_overrides(&[
            "use_karras_sigmas=true".into(),
            "beta_end=0.5".into(),
            "trained_betas=[1, 2]".into(),
            "timestep_spacing=trailing".into(),
        ])
        .expect("valid overrides");
        assert_eq!(m["use_karras_sigmas"], Value::Bool(true));
        assert_eq!(m["beta_end"].as_f64(), Some(0.5));
        assert_eq!(m["trained_betas"], serde_json::json!([1, 2]));
        assert_eq!(m["timestep_spacing"], Value::String("trailing".into()));
        assert!(parse_overrides(&["novalue".into()]).is_err());
    }

    #[test]
    fn half_conversion_is_exact_for_normal_and_subnormal_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }
}
