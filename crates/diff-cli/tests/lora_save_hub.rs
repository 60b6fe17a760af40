//! Issue 12: `save --lora` writes the fused weights, and `--lora user/repo` loads a LoRA from a
//! Hub repo (the local Hub server). Issue 18: a repo whose UNet `sample_size` asks for a huge
//! default size is refused before any weight is downloaded.

mod common;

use common::{copy_tree, fixture_path, read_tensor};
use diff_hub_server::{HubServer, ServerConfig};
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"));
    cmd.env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("RUST_LOG");
    cmd
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `generate` on `model` (2 steps of its own scheduler, seed 0, no safety checker) into
/// `out`, with `extra` flags.
fn generate(model: &str, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["generate", "--model", model, "--prompt", "a red circle"])
        .args([
            "--steps",
            "2",
            "--seed",
            "0",
            "--no-safety-checker",
            "--out-array",
        ])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn images(path: &Path) -> Vec<f32> {
    read_tensor(path, "images").1
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `save --lora FILE` writes the fused UNet and text-encoder weights: the saved folder, loaded
/// with no LoRA, gives the image of `generate --lora FILE --fuse-lora` on the original. The LoRA
/// is kohya's with LoCon (convolutions) and a text-encoder part, so linear, convolution and
/// text-encoder layers are all fused and written.
#[test]
fn save_with_lora_writes_the_fused_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture_path("tiny-sd");
    let model = model.to_str().unwrap();
    let lora = fixture_path("25-lora-formats/sd_kohya/lora.safetensors");
    let lora = lora.to_str().unwrap();
    let saved = dir.path().join("fused");
    let out = bin()
        .args(["save", model, "--out"])
        .arg(&saved)
        .args(["--lora", lora, "--lora-scale", "0.8"])
        .output()
        .unwrap();
    ok(&out);
    // The fused pipeline, in memory.
    let want = dir.path().join("want.safetensors");
    ok(&generate(
        model,
        &want,
        &["--lora", lora, "--lora-scale", "0.8", "--fuse-lora"],
    ));
    // The saved folder, with no LoRA.
    let got = dir.path().join("got.safetensors");
    ok(&generate(saved.to_str().unwrap(), &got, &[]));
    let (want, got) = (images(&want), images(&got));
    let diff = max_abs(&want, &got);
    // Float32 rounding only: the fused layers in memory and the same weights read back from
    // the saved folder take different matmul paths (in place vs transposed-weight kernels).
    assert!(diff <= 1e-5, "saved fused folder differs by {diff}");
    // And the LoRA changed the image: the saved weights are not the base ones.
    let base = dir.path().join("base.safetensors");
    ok(&generate(model, &base, &[]));
    assert!(
        max_abs(&images(&base), &got) > 1e-3,
        "the fused save equals the base model"
    );
    // The weights that LoRA does not touch are byte-identical to a plain save.
    let plain = dir.path().join("plain");
    ok(&bin()
        .args(["save", model, "--out"])
        .arg(&plain)
        .output()
        .unwrap());
    for file in [
        "vae/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "text_encoder/config.json",
    ] {
        assert_eq!(
            std::fs::read(plain.join(file)).unwrap(),
            std::fs::read(saved.join(file)).unwrap(),
            "{file}"
        );
    }
    assert_ne!(
        std::fs::read(plain.join("unet/diffusion_pytorch_model.safetensors")).unwrap(),
        std::fs::read(saved.join("unet/diffusion_pytorch_model.safetensors")).unwrap(),
    );
}

/// A LoRA from a Hub repo id (`--lora user/repo`, fetched with the command's `--endpoint` and
/// `--cache-dir`) gives the same image as the same file given as a path.
#[test]
fn lora_from_a_hub_repo_id_matches_the_local_file() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let lora_dir = fixture_path("25-lora-formats/sd_peft_metadata");
    std::fs::create_dir_all(root.path().join("someone/tiny-lora")).unwrap();
    std::fs::copy(
        lora_dir.join("pytorch_lora_weights.safetensors"),
        root.path()
            .join("someone/tiny-lora/pytorch_lora_weights.safetensors"),
    )
    .unwrap();
    let server = HubServer::start(ServerConfig::new(root.path())).unwrap();
    let model = fixture_path("tiny-sd");
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let from_hub = dir.path().join("hub.safetensors");
    let cache_dir = cache.path().to_str().unwrap();
    ok(&generate(
        model,
        &from_hub,
        &[
            "--lora",
            "someone/tiny-lora",
            "--endpoint",
            server.endpoint(),
            "--cache-dir",
            cache_dir,
        ],
    ));
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.url.contains("someone/tiny-lora")
                && r.url.contains("pytorch_lora_weights.safetensors")),
        "the LoRA was fetched from the Hub"
    );
    let from_file = dir.path().join("file.safetensors");
    let file = lora_dir.join("pytorch_lora_weights.safetensors");
    ok(&generate(
        model,
        &from_file,
        &["--lora", file.to_str().unwrap()],
    ));
    assert_eq!(images(&from_hub), images(&from_file));
    // Offline, from the cache the first run filled.
    server.shutdown();
    let offline = dir.path().join("offline.safetensors");
    ok(&generate(
        model,
        &offline,
        &[
            "--lora",
            "someone/tiny-lora",
            "--offline",
            "--cache-dir",
            cache_dir,
        ],
    ));
    assert_eq!(images(&offline), images(&from_file));
}

/// A Hub repo whose UNet config has `sample_size: 1e9`: refused by name before any weight is
/// downloaded (only the two config files are fetched).
#[test]
fn huge_sample_size_of_a_repo_id_is_refused_before_downloading_weights() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let repo = root.path().join("someone/huge-unet");
    copy_tree(&fixture_path("tiny-sd"), &repo);
    let config = repo.join("unet/config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"sample_size\": 8", "\"sample_size\": 1000000000");
    std::fs::write(&config, text).unwrap();
    let server = HubServer::start(ServerConfig::new(root.path())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = generate(
        "someone/huge-unet",
        &dir.path().join("x.safetensors"),
        &[
            "--endpoint",
            server.endpoint(),
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("sample_size") && err.contains("limit") && !err.contains("panicked"),
        "{err}"
    );
    let urls: Vec<String> = server.requests().iter().map(|r| r.url.clone()).collect();
    assert!(
        !urls.iter().any(|u| u.contains(".safetensors")),
        "no weights fetched: {urls:?}"
    );
}
