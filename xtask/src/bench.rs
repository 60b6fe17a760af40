//! `cargo xtask bench`: ours against PyTorch/diffusers on the same machine and thread count.
//!
//! 1. Makes random-weight models with the real SD 1.5 structure once, with Python, under
//!    `target/bench-models/` (UNet 859.5 M params, VAE, CLIP text encoder; safetensors).
//! 2. Builds `diff-models`' `unet_vae_bench` example (release by default, `--dev` to reuse the
//!    dev build); burn-flex is built with SIMD and rayon threads workspace-wide.
//! 3. Runs, for ours and for PyTorch: a fresh process that loads the UNet from safetensors and
//!    runs one forward (timed from spawn to exit, with its peak RSS), then a process that times
//!    a warm UNet forward (batch 2, 32x32 latents, f32), a VAE decode of a 32x32 latent and a CLIP
//!    text encode of 77 tokens.
//! 4. Runs the whole SD 1.5 text-to-image pipeline (a folder under `target/bench-models/sd15`
//!    linking those models, with the real CLIP tokenizer and SD 1.5's PNDM scheduler from
//!    `tests/fixtures/tiny-sd`) at 512x512 with classifier-free guidance: per-step time, VAE
//!    decode, total and peak RSS, ours (also with `--offload model` on the CPU) and diffusers.
//! 5. Prints a table with the ratio ours / PyTorch per row: every figure is the median of
//!    `--runs N` runs (default 3), ours and PyTorch interleaved.
//!
//! Both sides use `--threads N` threads (default: all cores): `RAYON_NUM_THREADS` for burn,
//! `torch.set_num_threads` for PyTorch. `--quick` (about 10 minutes on 2 cores) runs the
//! pipeline with 2 steps instead of 4. `--device wgpu|cuda` builds ours with that feature and
//! runs PyTorch on CUDA; `--dtype f16` loads both in float16. `--skip-pipeline` leaves out step 4.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PYTHON: &str = r#"
import json, os, resource, statistics, sys, time
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
mode, root = sys.argv[1], sys.argv[2]
DEV = "cuda" if os.environ.get("BENCH_DEVICE", "cpu") in ("cuda", "wgpu") else "cpu"
DTYPE = torch.float16 if os.environ.get("BENCH_DTYPE") == "f16" else torch.float32
REPS = int(os.environ.get("BENCH_REPS", "1"))

def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()

def unet_input():
    sample = ((torch.arange(2 * 4 * 32 * 32) % 97).float() / 97 - 0.5).reshape(2, 4, 32, 32)
    text = ((torch.arange(2 * 77 * 768) % 89).float() / 89 - 0.5).reshape(2, 77, 768)
    return sample.to(DEV, DTYPE), torch.tensor([500.0, 500.0]).to(DEV), text.to(DEV, DTYPE)

def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def peak_device():
    return torch.cuda.max_memory_allocated() if DEV == "cuda" else 0

if mode == "make":
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    if not os.path.exists(os.path.join(root, "unet", "config.json")):
        UNet2DConditionModel(cross_attention_dim=768, sample_size=64).save_pretrained(os.path.join(root, "unet"))
    if not os.path.exists(os.path.join(root, "vae", "config.json")):
        AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=512,
        ).save_pretrained(os.path.join(root, "vae"))
    if not os.path.exists(os.path.join(root, "text_encoder", "config.json")):
        CLIPTextModel(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            hidden_act="quick_gelu", max_position_embeddings=77, projection_dim=768,
        )).save_pretrained(os.path.join(root, "text_encoder"))
elif mode == "first-forward":
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet"), torch_dtype=DTYPE).to(DEV).eval()
    with torch.no_grad():
        out = unet(*unet_input()).sample
        sync()
    print(json.dumps({"peak_rss": peak_rss(), "check": float(out.sum())}))
elif mode == "steady":
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    unet = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet"), torch_dtype=DTYPE).to(DEV).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(root, "vae"), torch_dtype=DTYPE).to(DEV).eval()
    clip = CLIPTextModel.from_pretrained(os.path.join(root, "text_encoder"), torch_dtype=DTYPE).to(DEV).eval()
    z = ((torch.arange(4 * 32 * 32) % 83).float() / 83 - 0.5).reshape(1, 4, 32, 32).to(DEV, DTYPE)
    ids = torch.tensor([[49407 if i == 76 else 320 + i for i in range(77)]]).to(DEV)
    def timed(f):
        sync(); t = time.perf_counter(); v = f(); return v, time.perf_counter() - t
    with torch.no_grad():
        unet(*unet_input()); vae.decode(z); clip(ids)
        ts = {"unet": [], "vae": [], "clip": []}
        for _ in range(REPS):
            c1, s = timed(lambda: float(unet(*unet_input()).sample.float().sum())); ts["unet"].append(s)
            c2, s = timed(lambda: float(vae.decode(z).sample.float().sum())); ts["vae"].append(s)
            c3, s = timed(lambda: float(clip(ids).last_hidden_state.float().sum())); ts["clip"].append(s)
    med = {k: statistics.median_low(v) for k, v in ts.items()}
    print(json.dumps({"unet_forward_s": med["unet"], "vae_decode_s": med["vae"], "clip_encode_s": med["clip"],
                      "peak_rss": peak_rss(), "peak_device": peak_device(), "checks": [c1, c2, c3]}))
elif mode == "pipeline":
    from diffusers import StableDiffusionPipeline
    steps, size = int(sys.argv[3]), int(sys.argv[4])
    t = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        os.path.join(root, "sd15"), safety_checker=None, requires_safety_checker=False, torch_dtype=DTYPE
    ).to(DEV)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t
    marks = []
    def on_step(p, i, ts, kw):
        sync(); marks.append(time.perf_counter() - t0); return kw
    g = torch.Generator("cpu").manual_seed(0)
    with torch.no_grad():
        t0 = time.perf_counter()
        lat = pipe("a photograph of an astronaut riding a horse", negative_prompt="",
                   num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                   generator=g, output_type="latent", callback_on_step_end=on_step).images
        sync(); steps_done = time.perf_counter() - t0
        t1 = time.perf_counter()
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
        img = pipe.image_processor.postprocess(img, output_type="np")
        sync(); decode_s = time.perf_counter() - t1
    deltas = [b - a for a, b in zip(marks, marks[1:])] or marks[:1]
    print(json.dumps({"load_s": load_s, "step_s": statistics.median_low(deltas), "decode_s": decode_s,
                      "total_s": steps_done + decode_s, "peak_rss": peak_rss(), "peak_device": peak_device(),
                      "check": float(lat.float().sum())}))
"#;

/// The options of `cargo xtask bench`.
struct Options {
    threads: usize,
    release: bool,
    quick: bool,
    runs: usize,
    device: String,
    dtype: String,
    pipeline: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        release: true,
        quick: false,
        runs: 3,
        device: "cpu".into(),
        dtype: "f32".into(),
        pipeline: true,
    };
    let mut it = args.iter();
    let number = |v: Option<&String>, flag: &str| -> Result<usize> {
        v.with_context(|| format!("{flag} needs a number"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--threads" => o.threads = number(it.next(), "--threads")?,
            "--runs" => o.runs = number(it.next(), "--runs")?.max(1),
            "--dev" => o.release = false,
            "--quick" => o.quick = true,
            "--skip-pipeline" => o.pipeline = false,
            "--device" => {
                o.device = it
                    .next()
                    .context("--device needs cpu, wgpu or cuda")?
                    .clone();
                if !matches!(o.device.as_str(), "cpu" | "wgpu" | "cuda") {
                    bail!("--device {}: expected cpu, wgpu or cuda", o.device);
                }
            }
            "--dtype" => {
                o.dtype = it.next().context("--dtype needs f32 or f16")?.clone();
                if !matches!(o.dtype.as_str(), "f32" | "f16") {
                    bail!("--dtype {}: expected f32 or f16", o.dtype);
                }
            }
            other => bail!(
                "unknown argument `{other}` (expected --threads N, --runs N, --dev, --quick, \
                 --device cpu|wgpu|cuda, --dtype f32|f16, --skip-pipeline)"
            ),
        }
    }
    Ok(o)
}

/// Builds one example of `package` (with the device's feature) and returns its path.
fn build_example(root: &Path, o: &Options, package: &str, example: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(&cargo);
    build
        .current_dir(root)
        .args(["build", "-p", package, "--example", example]);
    if o.release {
        build.arg("--release");
    }
    if o.device != "cpu" {
        build.args(["--features", &o.device]);
    }
    if !build.status().context("running cargo build")?.success() {
        bail!("building the {example} example failed");
    }
    Ok(root
        .join("target")
        .join(if o.release { "release" } else { "debug" })
        .join("examples")
        .join(example))
}

/// The SD 1.5 pipeline folder of the bench: links to the bench models, the real CLIP tokenizer
/// and SD 1.5's scheduler config (both from `tests/fixtures/tiny-sd`).
fn make_pipeline_folder(root: &Path, models: &Path) -> Result<PathBuf> {
    let dir = models.join("sd15");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tiny = root.join("tests/fixtures/tiny-sd");
    for sub in ["tokenizer", "scheduler"] {
        let to = dir.join(sub);
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(tiny.join(sub))? {
            let path = entry?.path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, to.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    for sub in ["unet", "vae", "text_encoder"] {
        let link = dir.join(sub);
        if !link.exists() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(models.join(sub), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    std::fs::write(
        dir.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
 "feature_extractor": [null, null], "image_encoder": [null, null],
 "requires_safety_checker": false, "safety_checker": [null, null],
 "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
 "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
 "vae": ["diffusers", "AutoencoderKL"]}
"#,
    )?;
    Ok(dir)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the task with the arguments after `bench`.
pub fn run(args: &[String]) -> Result<()> {
    let root = crate::repo_root()?;
    let o = parse(args)?;
    let threads = o.threads;
    let python = crate::fixtures::ensure_venv(&root)?;
    let models = root.join("target/bench-models");
    std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
    let script = models.join("bench_torch.py");
    std::fs::write(&script, PYTHON).with_context(|| format!("writing {}", script.display()))?;

    eprintln!(
        "xtask bench: making random-weight SD 1.5 models in {}",
        models.display()
    );
    let status = Command::new(&python)
        .arg(&script)
        .args(["make"])
        .arg(&models)
        .env("BENCH_THREADS", threads.to_string())
        .status()
        .context("running the Python model maker")?;
    if !status.success() {
        bail!("making the bench models failed with {status}");
    }
    let pipe_dir = make_pipeline_folder(&root, &models)?;

    eprintln!(
        "xtask bench: building the Rust bench ({})",
        if o.release { "release" } else { "dev" }
    );
    let ours = build_example(&root, &o, "diff-models", "unet_vae_bench")?;
    let ours_pipe = if o.pipeline {
        Some(build_example(
            &root,
            &o,
            "diff-pipelines",
            "sd_pipeline_bench",
        )?)
    } else {
        None
    };

    let unet = models.join("unet");
    let vae = models.join("vae");
    let clip = models.join("text_encoder");
    let env = |cmd: &mut Command, reps: usize| {
        cmd.env("RAYON_NUM_THREADS", threads.to_string())
            .env("BENCH_THREADS", threads.to_string())
            .env("OMP_NUM_THREADS", threads.to_string())
            .env("BENCH_DEVICE", &o.device)
            .env("BENCH_DTYPE", &o.dtype)
            .env("BENCH_REPS", reps.to_string());
    };
    let run_ours = |mode: &str, paths: &[&Path], reps: usize| -> Result<(f64, Json)> {
        let mut cmd = Command::new(&ours);
        cmd.arg(mode).args(paths);
        env(&mut cmd, reps);
        timed_json(cmd)
    };
    let run_torch = |mode: &str, extra: &[String], reps: usize| -> Result<(f64, Json)> {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg(mode).arg(&models).args(extra);
        env(&mut cmd, reps);
        timed_json(cmd)
    };

    // Start to first forward: `runs` fresh processes each, interleaved.
    let (mut of, mut tf, mut orss, mut trss) = (vec![], vec![], vec![], vec![]);
    for i in 0..o.runs {
        eprintln!(
            "xtask bench: start to first forward, run {}/{}",
            i + 1,
            o.runs
        );
        let (secs, json) = run_ours("first-forward", &[&unet], 1)?;
        of.push(secs);
        orss.push(json.get("peak_rss")?);
        let (secs, json) = run_torch("first-forward", &[], 1)?;
        tf.push(secs);
        trss.push(json.get("peak_rss")?);
    }
    // Steady state: one process per side, `runs` timed rounds each, medians.
    eprintln!(
        "xtask bench: steady state, {} rounds (ours, then PyTorch)",
        o.runs
    );
    let (_, ours_steady) = run_ours("steady", &[&unet, &vae, &clip], o.runs)?;
    let (_, torch_steady) = run_torch("steady", &[], o.runs)?;

    let weight_bytes = dir_bytes(&unet, "safetensors")?;
    let mut rows: Vec<(String, f64, f64)> = vec![
        (
            format!("UNet forward, SD 1.5, batch 2, 32x32, {} (s)", o.dtype),
            ours_steady.get("unet_forward_s")?,
            torch_steady.get("unet_forward_s")?,
        ),
        (
            "VAE decode, 32x32 latent (s)".into(),
            ours_steady.get("vae_decode_s")?,
            torch_steady.get("vae_decode_s")?,
        ),
        (
            "CLIP text encode, 77 tokens (s)".into(),
            ours_steady.get("clip_encode_s")?,
            torch_steady.get("clip_encode_s")?,
        ),
        (
            "process start to end of first UNet forward (s)".into(),
            median(of),
            median(tf),
        ),
        (
            "peak RSS of that process / UNet weight bytes".into(),
            median(orss) / weight_bytes as f64,
            median(trss) / weight_bytes as f64,
        ),
    ];
    let steps = if o.quick { 2 } else { 4 };
    if let Some(ours_pipe) = &ours_pipe {
        let pipe_rows = pipeline_rows(&o, ours_pipe, &pipe_dir, steps, &run_torch, &env)?;
        rows.extend(pipe_rows);
    }
    println!(
        "\nthreads: {threads}; device: {}; dtype: {}; UNet weights: {:.2} GB; Rust build: {}; \
         medians of {} runs; pipeline: SD 1.5, 512x512, {steps} steps, CFG 7.5\n",
        o.device,
        o.dtype,
        weight_bytes as f64 / 1e9,
        if o.release {
            "release"
        } else {
            "dev (dependencies at opt-level 2)"
        },
        o.runs
    );
    println!("| row | ours | PyTorch | ours / PyTorch |");
    println!("|---|---|---|---|");
    for (name, a, b) in rows {
        println!("| {name} | {a:.3} | {b:.3} | {:.2}x |", a / b);
    }
    Ok(())
}

type TorchRunner<'a> = dyn Fn(&str, &[String], usize) -> Result<(f64, Json)> + 'a;

/// The whole-pipeline rows: ours, ours with `--offload model` (CPU) and diffusers, interleaved.
fn pipeline_rows(
    o: &Options,
    ours_pipe: &Path,
    pipe_dir: &Path,
    steps: usize,
    run_torch: &TorchRunner<'_>,
    env: &dyn Fn(&mut Command, usize),
) -> Result<Vec<(String, f64, f64)>> {
    let size = 512;
    let run_ours = |offload: bool| -> Result<Json> {
        let mut cmd = Command::new(ours_pipe);
        cmd.arg(pipe_dir)
            .arg(steps.to_string())
            .arg(size.to_string());
        if o.device != "cpu" {
            cmd.args(["--device", &o.device]);
        }
        if o.dtype == "f16" {
            cmd.args(["--dtype", "f16"]);
        }
        if offload {
            cmd.args(["--offload", "model"]);
        }
        env(&mut cmd, 1);
        Ok(timed_json(cmd)?.1)
    };
    let keys = ["step_s", "decode_s", "total_s", "peak_rss"];
    let mut ours: Vec<Vec<f64>> = vec![vec![]; keys.len()];
    let mut offl: Vec<Vec<f64>> = vec![vec![]; keys.len()];
    let mut torch: Vec<Vec<f64>> = vec![vec![]; keys.len()];
    for i in 0..o.runs {
        eprintln!(
            "xtask bench: SD 1.5 pipeline 512x512, run {}/{}",
            i + 1,
            o.runs
        );
        let a = run_ours(false)?;
        let (_, b) = run_torch("pipeline", &[steps.to_string(), size.to_string()], 1)?;
        for (k, key) in keys.iter().enumerate() {
            ours[k].push(a.get(key)?);
            torch[k].push(b.get(key)?);
        }
        if o.device == "cpu" {
            let c = run_ours(true)?;
            for (k, key) in keys.iter().enumerate() {
                offl[k].push(c.get(key)?);
            }
        }
    }
    let m = |v: &Vec<f64>| median(v.clone());
    let gb = 1e9;
    let mut rows = vec![
        (
            "SD 1.5 pipeline 512x512: UNet step with CFG (batch 2, 64x64) (s)".to_string(),
            m(&ours[0]),
            m(&torch[0]),
        ),
        (
            "SD 1.5 pipeline 512x512: VAE decode + postprocess (s)".into(),
            m(&ours[1]),
            m(&torch[1]),
        ),
        (
            format!("SD 1.5 pipeline 512x512: total, {steps} steps + decode (s)"),
            m(&ours[2]),
            m(&torch[2]),
        ),
        (
            "SD 1.5 pipeline 512x512: peak RSS (GB)".into(),
            m(&ours[3]) / gb,
            m(&torch[3]) / gb,
        ),
    ];
    if o.device == "cpu" {
        rows.push((
            "  with --offload model: total (s) [vs diffusers without]".into(),
            m(&offl[2]),
            m(&torch[2]),
        ));
        rows.push((
            "  with --offload model: peak RSS (GB) [vs ours without]".into(),
            m(&offl[3]) / gb,
            m(&ours[3]) / gb,
        ));
    }
    Ok(rows)
}

/// One JSON object line printed by a bench process (numbers only are read).
struct Json(String);

impl Json {
    fn get(&self, key: &str) -> Result<f64> {
        let pat = format!("\"{key}\":");
        let start = self
            .0
            .find(&pat)
            .with_context(|| format!("no `{key}` in bench output: {}", self.0))?
            + pat.len();
        let rest = self.0[start..].trim_start();
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
            .unwrap_or(rest.len());
        rest[..end]
            .parse()
            .with_context(|| format!("`{key}` is not a number in: {}", self.0))
    }
}

/// Runs a command, returning its wall time from spawn to exit and its last stdout line.
fn timed_json(mut cmd: Command) -> Result<(f64, Json)> {
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON line from {cmd:?}: {text}"))?;
    Ok((secs, Json(line.to_owned())))
}

/// Total size of the files in `dir` whose names end with `ext`.
fn dir_bytes(dir: &Path, ext: &str) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path: PathBuf = entry?.path();
        if path.extension().is_some_and(|e| e == ext) {
            total += std::fs::metadata(&path)?.len();
        }
    }
    Ok(total)
}
