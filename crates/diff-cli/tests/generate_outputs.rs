//! `generate`'s outputs through the built binary (issue 17): the recipe in each PNG and
//! `--from-png` reproducing the image bit for bit, AUTOMATIC1111's `parameters` text, a drawn
//! seed printed and recorded, batch seeds (image k of `--num-images` equals a single run with
//! seed + k), formats by extension (PNG, JPEG, WebP decode), no overwrite without
//! `--overwrite`, `--prompts` files. All on the tiny SD pipeline at 32x32, 2 steps.

mod common;

use burn_diffusers::image::read_png_text;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"));
    c.env_remove("RUST_LOG");
    c
}

fn tiny_sd() -> String {
    common::fixture_path("tiny-sd").display().to_string()
}

/// `generate` on the tiny pipeline with `extra` arguments; the output of the process.
fn generate(extra: &[&str]) -> Output {
    let model = tiny_sd();
    let mut args = vec![
        "generate",
        "--model",
        &model,
        "--steps",
        "2",
        "--height",
        "32",
        "--width",
        "32",
        "--no-safety-checker",
        "--scheduler",
        "EulerAncestralDiscreteScheduler",
    ];
    args.extend_from_slice(extra);
    bin().args(&args).output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
        .into_raw()
}

fn texts(path: &Path) -> Vec<(String, String)> {
    let bytes = std::fs::read(path).unwrap();
    read_png_text(&bytes, path)
        .unwrap()
        .into_iter()
        .map(|t| (t.keyword, t.text))
        .collect()
}

fn text(path: &Path, key: &str) -> String {
    texts(path)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{}: no `{key}` chunk", path.display()))
        .1
}

fn recipe(path: &Path) -> Value {
    serde_json::from_str(&text(path, "burn-diffusers")).unwrap()
}

fn out(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn from_png_reproduces_the_image_bit_for_bit_and_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let first = out(dir.path(), "first.png");
    ok(generate(&[
        "--prompt",
        "a red circle, on a blue background",
        "--negative-prompt",
        "blurry",
        "--guidance",
        "6.5",
        "--seed",
        "1234",
        "--out",
        first.to_str().unwrap(),
    ]));
    let again = out(dir.path(), "again.png");
    ok(bin()
        .args(["-q", "generate", "--from-png"])
        .arg(&first)
        .arg("--out")
        .arg(&again)
        .output()
        .unwrap());
    assert_eq!(pixels(&first), pixels(&again), "--from-png is bit for bit");
    assert_eq!(
        recipe(&first)["arguments"]["negative-prompt"],
        recipe(&again)["arguments"]["negative-prompt"]
    );
    // An explicit flag overrides the recipe's value.
    let other = out(dir.path(), "other.png");
    ok(bin()
        .args(["-q", "generate", "--from-png"])
        .arg(&first)
        .args(["--seed", "99", "--out"])
        .arg(&other)
        .output()
        .unwrap());
    assert_ne!(pixels(&first), pixels(&other));
    assert_eq!(recipe(&other)["seed"], 99);
    // A PNG without a recipe is refused with a message.
    let plain = out(dir.path(), "plain.png");
    image::RgbImage::new(8, 8).save(&plain).unwrap();
    let o = bin()
        .args(["generate", "--from-png"])
        .arg(&plain)
        .args(["--out", "x.png"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no `burn-diffusers` recipe"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn pngs_carry_the_a1111_parameters_and_the_full_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let png = out(dir.path(), "a.png");
    ok(generate(&[
        "--prompt",
        "a red circle",
        "--negative-prompt",
        "blurry, dark",
        "--seed",
        "7",
        "--clip-skip",
        "1",
        "--out",
        png.to_str().unwrap(),
    ]));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        text(&png, "parameters"),
        format!(
            "a red circle\nNegative prompt: blurry, dark\nSteps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 32x32, Model: tiny-sd, Clip skip: 2, Version: burn-diffusers {version}"
        )
    );
    let r = recipe(&png);
    assert_eq!(r["pipeline_class"], "StableDiffusionPipeline");
    assert_eq!(r["scheduler"]["class"], "EulerAncestralDiscreteScheduler");
    assert_eq!(
        r["scheduler"]["config"]["_class_name"],
        "EulerAncestralDiscreteScheduler"
    );
    assert_eq!(r["scheduler"]["config"]["num_train_timesteps"], 1000);
    assert_eq!(r["seed"], 7);
    assert_eq!(r["model"]["name_or_path"], tiny_sd());
    assert_eq!(
        r["model"]["commit"],
        Value::Null,
        "a local folder has no commit"
    );
    let args = &r["arguments"];
    assert_eq!(args["steps"], "2");
    assert_eq!(args["clip-skip"], "1");
    assert_eq!(args["no-safety-checker"], true);
    assert_eq!(args["dtype"], "f32", "defaulted arguments are recorded too");
}

#[test]
fn a_drawn_seed_is_printed_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let png = out(dir.path(), "a.png");
    let o = ok(generate(&["--prompt", "x", "--out", png.to_str().unwrap()]));
    let err = stderr(&o);
    let seed: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("seed "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seed line in {err}"));
    assert_eq!(recipe(&png)["seed"], seed);
    assert!(text(&png, "parameters").contains(&format!("Seed: {seed},")));
    // The printed seed makes the same image.
    let again = out(dir.path(), "b.png");
    let s = seed.to_string();
    ok(generate(&[
        "--prompt",
        "x",
        "--seed",
        &s,
        "--out",
        again.to_str().unwrap(),
    ]));
    assert_eq!(pixels(&png), pixels(&again));
    // -q prints nothing but errors and warnings.
    let quiet = out(dir.path(), "q.png");
    let o = ok(generate(&[
        "-q",
        "--prompt",
        "x",
        "--out",
        quiet.to_str().unwrap(),
    ]));
    assert!(!stderr(&o).contains("seed "), "{}", stderr(&o));
}

#[test]
fn batch_image_k_equals_a_single_run_with_seed_plus_k() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = dir.path().join("img-{seed}-{index}.png");
    ok(generate(&[
        "--prompt",
        "a blue square",
        "--seed",
        "40",
        "--num-images",
        "3",
        "--out",
        pattern.to_str().unwrap(),
    ]));
    for k in 0..3u64 {
        let batch = dir.path().join(format!("img-{}-{k}.png", 40 + k));
        assert_eq!(recipe(&batch)["seed"], 40 + k);
        let single = dir.path().join(format!("single-{k}.png"));
        let s = (40 + k).to_string();
        ok(generate(&[
            "--prompt",
            "a blue square",
            "--seed",
            &s,
            "--out",
            single.to_str().unwrap(),
        ]));
        assert_eq!(pixels(&batch), pixels(&single), "image {k}");
    }
    // Without a pattern: -1, -2, ... before the extension.
    let plain = dir.path().join("plain.png");
    ok(generate(&[
        "--prompt",
        "a blue square",
        "--seed",
        "40",
        "--num-images",
        "2",
        "--out",
        plain.to_str().unwrap(),
    ]));
    assert_eq!(
        pixels(&dir.path().join("plain-2.png")),
        pixels(&dir.path().join("img-41-1.png"))
    );
}

#[test]
fn the_extension_picks_the_format_and_each_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let png = out(dir.path(), "a.png");
    ok(generate(&[
        "--prompt",
        "x",
        "--seed",
        "3",
        "--out",
        png.to_str().unwrap(),
    ]));
    let reference = pixels(&png);
    for (name, format) in [
        ("a.webp", image::ImageFormat::WebP),
        ("a.jpg", image::ImageFormat::Jpeg),
        ("b.JPEG", image::ImageFormat::Jpeg),
    ] {
        let path = out(dir.path(), name);
        ok(generate(&[
            "--prompt",
            "x",
            "--seed",
            "3",
            "--out",
            path.to_str().unwrap(),
        ]));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), format, "{name}");
        // AUTOMATIC1111's `parameters` ride in the EXIF UserComment, as A1111 writes them.
        let exif = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .map(|mut d| {
                use image::ImageDecoder;
                d.exif_metadata().unwrap()
            })
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no EXIF"));
        let comment = burn_diffusers::image::read_exif_user_comment(&exif).unwrap();
        assert!(
            comment.starts_with("x\nSteps: 2, Sampler: Euler a,") && comment.contains("Seed: 3,"),
            "{name}: {comment}"
        );
        let got = pixels(&path);
        if format == image::ImageFormat::WebP {
            assert_eq!(got, reference, "lossless WebP");
        } else {
            assert_eq!(got.len(), reference.len());
        }
    }
    // A lower --jpeg-quality gives a smaller file.
    let low = out(dir.path(), "low.jpg");
    ok(generate(&[
        "--prompt",
        "x",
        "--seed",
        "3",
        "--jpeg-quality",
        "10",
        "--out",
        low.to_str().unwrap(),
    ]));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&low) < size(&out(dir.path(), "a.jpg")));
    // An unknown extension fails before the model is loaded (the model does not exist here).
    let o = bin()
        .args([
            "generate",
            "--model",
            "no/such/model/x",
            "--prompt",
            "x",
            "--out",
        ])
        .arg(out(dir.path(), "a.gif"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("use one of .png, .jpg, .jpeg, .webp"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn existing_files_are_not_overwritten_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let png = out(dir.path(), "a.png");
    std::fs::write(&png, b"keep me").unwrap();
    // Refused before any work: the model path does not even exist.
    let o = bin()
        .args([
            "generate",
            "--model",
            "no/such/model/x",
            "--prompt",
            "x",
            "--out",
        ])
        .arg(&png)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&png).unwrap(), b"keep me");
    // One existing file of a batch is enough to refuse the batch.
    std::fs::write(dir.path().join("b-2.png"), b"keep").unwrap();
    let b = out(dir.path(), "b.png");
    let o = generate(&[
        "--prompt",
        "x",
        "--num-images",
        "2",
        "--out",
        b.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && stderr(&o).contains("b-2.png"));
    assert!(!dir.path().join("b-1.png").exists(), "nothing written");
    let arr = out(dir.path(), "arr.safetensors");
    std::fs::write(&arr, b"keep").unwrap();
    let o = generate(&["--prompt", "x", "--out-array", arr.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("--out-array"));
    ok(generate(&[
        "--prompt",
        "x",
        "--overwrite",
        "--out",
        png.to_str().unwrap(),
    ]));
    assert_eq!(pixels(&png).len(), 32 * 32 * 3);
}

#[test]
fn a_prompt_file_runs_one_job_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("prompts.txt");
    std::fs::write(&list, "# shapes\na red circle\n\na green square\r\n").unwrap();
    let pattern = dir.path().join("{job}-{seed}.png");
    ok(generate(&[
        "--prompts",
        list.to_str().unwrap(),
        "--seed",
        "10",
        "--num-images",
        "2",
        "--out",
        pattern.to_str().unwrap(),
    ]));
    for (name, prompt, seed) in [
        ("0-10.png", "a red circle", 10),
        ("0-11.png", "a red circle", 11),
        ("1-12.png", "a green square", 12),
        ("1-13.png", "a green square", 13),
    ] {
        let r = recipe(&dir.path().join(name));
        assert_eq!(
            (r["prompt"].as_str(), r["seed"].as_u64()),
            (Some(prompt), Some(seed))
        );
    }
    // Job 1's second image is a single run of its prompt with its seed.
    let single = dir.path().join("single.png");
    ok(generate(&[
        "--prompt",
        "a green square",
        "--seed",
        "13",
        "--out",
        single.to_str().unwrap(),
    ]));
    assert_eq!(pixels(&single), pixels(&dir.path().join("1-13.png")));
}

#[test]
fn vae_switches_and_threads_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let plain = out(dir.path(), "plain.png");
    let sliced = out(dir.path(), "sliced.png");
    ok(generate(&[
        "--prompt",
        "x",
        "--seed",
        "1",
        "--num-images",
        "2",
        "--out",
        plain.to_str().unwrap(),
    ]));
    ok(generate(&[
        "--prompt",
        "x",
        "--seed",
        "1",
        "--num-images",
        "2",
        "--vae-slicing",
        "--vae-tiling",
        "--threads",
        "1",
        "--out",
        sliced.to_str().unwrap(),
    ]));
    // A 32x32 image is below the tile size, and slicing decodes the same samples one by one.
    for k in 1..=2 {
        let a = pixels(&dir.path().join(format!("plain-{k}.png")));
        let b = pixels(&dir.path().join(format!("sliced-{k}.png")));
        let max = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(max <= 1, "image {k}: {max}");
    }
    let r = recipe(&dir.path().join("sliced-1.png"));
    assert_eq!(r["arguments"]["vae-slicing"], true);
    let never = dir.path().join("never.safetensors");
    let o = generate(&[
        "--prompt",
        "x",
        "--threads",
        "0",
        "--out-array",
        never.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && stderr(&o).contains("--threads 0"));
    assert!(!never.exists());
}

/// A Hub repo id: the recipe records the commit the files came from, and `--from-png` pins the
/// model to it (here offline, from the cache the first run filled).
#[test]
fn a_hub_model_is_recorded_with_its_commit_and_replayed_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hub");
    common::copy_tree(&common::fixture_path("tiny-sd"), &root.join("org/tiny-sd"));
    let server =
        diff_hub_server::HubServer::start(diff_hub_server::ServerConfig::new(&root)).unwrap();
    let cache = dir.path().join("cache");
    let png = dir.path().join("hub.png");
    let run = |args: &[&str]| {
        bin()
            .args(args)
            .env("HF_HOME", dir.path().join("home"))
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_ENDPOINT")
            .env_remove("HF_TOKEN")
            .output()
            .unwrap()
    };
    ok(run(&[
        "generate",
        "--model",
        "org/tiny-sd",
        "--endpoint",
        server.endpoint(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--height",
        "32",
        "--width",
        "32",
        "--seed",
        "5",
        "--no-safety-checker",
        "--out",
        png.to_str().unwrap(),
    ]));
    let r = recipe(&png);
    let commit = r["model"]["commit"].as_str().unwrap().to_string();
    assert_eq!(commit.len(), 40, "{r}");
    assert_eq!(r["model"]["revision"], "main");
    let again = dir.path().join("again.png");
    ok(run(&[
        "-q",
        "generate",
        "--from-png",
        png.to_str().unwrap(),
        "--offline",
        "--out",
        again.to_str().unwrap(),
    ]));
    assert_eq!(pixels(&png), pixels(&again));
    assert_eq!(recipe(&again)["arguments"]["revision"], commit.as_str());
}
