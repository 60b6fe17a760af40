//! `burn-diffusers push` against the in-process Hub server (`diff-hub-server`): `push --from`
//! re-saves a pipeline with a variant and publishes it with a model card, and the pushed repo
//! loads back with `DiffusionPipeline::from_pretrained`; `push DIR` adds a card to what it
//! uploads without touching the user's folder.

use burn_diffusers::hub::{DownloadOptions, HubApi, HubConfig, Token};
use burn_diffusers::pipelines::{DiffusionPipeline, LoadOptions, Passed, PipelineClass};
use diff_hub_server::{HubServer, ServerConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WRITE_TOKEN: &str = "hf_writeTOKENsecret0123456789";

fn tiny_sd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

fn start_server(root: &Path) -> HubServer {
    let mut config = ServerConfig::new(root);
    config.write_tokens = vec![WRITE_TOKEN.into()];
    HubServer::start(config).unwrap()
}

fn hub_config(server: &HubServer, cache: &Path) -> HubConfig {
    let c = cache.to_string_lossy().into_owned();
    let mut config = HubConfig::from_lookup(|k| (k == "HF_HUB_CACHE").then(|| c.clone())).unwrap();
    config.endpoint = server.endpoint().to_string();
    config.cache_dir = cache.to_path_buf();
    config.token = Some(Token::new(WRITE_TOKEN));
    config.retry_delay = Duration::from_millis(5);
    config.max_retry_delay = Duration::from_millis(20);
    config.timeout = Duration::from_secs(5);
    config
}

/// Runs the built CLI with a write token and a private cache; returns stdout.
fn run_cli(args: &[&str], cache: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(args)
        .env("HF_TOKEN", WRITE_TOKEN)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache)
        .env_remove("HF_ENDPOINT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "burn-diffusers {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn remote_text(api: &HubApi, repo: &str, path: &str) -> String {
    let file = api
        .hf_hub_download(repo, path, &DownloadOptions::default())
        .unwrap();
    std::fs::read_to_string(file).unwrap()
}

#[test]
fn push_from_saves_fp16_variant_with_card_and_loads_back_from_the_hub() {
    let root = tempfile::tempdir().unwrap();
    let cli_cache = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let server = start_server(root.path());
    let endpoint = server.endpoint().to_string();
    let src = tiny_sd();
    let stdout = run_cli(
        &[
            "push",
            "--from",
            src.to_str().unwrap(),
            "--repo",
            "org/pushed",
            "--endpoint",
            &endpoint,
            "--variant",
            "fp16",
        ],
        cli_cache.path(),
    );
    assert!(stdout.contains("/org/pushed/commit/"), "{stdout}");

    let hub = hub_config(&server, cache.path());
    let api = HubApi::new(hub.clone());
    let index: serde_json::Value =
        serde_json::from_str(&remote_text(&api, "org/pushed", "model_index.json")).unwrap();
    assert_eq!(index["_class_name"], "StableDiffusionPipeline");
    let card = remote_text(&api, "org/pushed", "README.md");
    assert!(card.starts_with("---\nlibrary_name: diffusers\n"), "{card}");
    assert!(card.contains("diffusers:StableDiffusionPipeline"), "{card}");

    // The fp16 variant holds half-precision floats (exact dtype, no tolerance involved).
    let unet = api
        .hf_hub_download(
            "org/pushed",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            &DownloadOptions::default(),
        )
        .unwrap();
    let bytes = std::fs::read(unet).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(!tensors.names().is_empty());
    for (name, view) in tensors.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F16, "{name}");
    }

    let mut options = LoadOptions {
        hub: Some(hub),
        variant: Some("fp16".into()),
        ..LoadOptions::default()
    };
    options.components.safety_checker = Passed::Drop;
    options.config.insert(
        "requires_safety_checker".into(),
        serde_json::Value::Bool(false),
    );
    let pipe = DiffusionPipeline::from_pretrained("org/pushed", &options).unwrap();
    assert_eq!(pipe.class(), PipelineClass::StableDiffusion);
    assert_eq!(pipe.name_or_path(), "org/pushed");
}

#[test]
fn push_dir_without_readme_uploads_a_card_and_leaves_the_folder_alone() {
    let root = tempfile::tempdir().unwrap();
    let cli_cache = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let server = start_server(root.path());
    let endpoint = server.endpoint().to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model_index.json"),
        r#"{"_class_name": "StableDiffusionImg2ImgPipeline", "_diffusers_version": "0.42.1"}"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("scheduler")).unwrap();
    std::fs::write(
        dir.path().join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "DDIMScheduler"}"#,
    )
    .unwrap();
    run_cli(
        &[
            "push",
            dir.path().to_str().unwrap(),
            "--repo",
            "org/folder",
            "--endpoint",
            &endpoint,
        ],
        cli_cache.path(),
    );
    assert!(
        !dir.path().join("README.md").exists(),
        "user folder modified"
    );
    let api = HubApi::new(hub_config(&server, cache.path()));
    let card = remote_text(&api, "org/folder", "README.md");
    assert!(card.starts_with("---\nlibrary_name: diffusers\n"), "{card}");
    assert!(card.contains("pipeline_tag: image-to-image"), "{card}");
    assert!(card.contains("# org/folder"), "{card}");
    let sched = remote_text(&api, "org/folder", "scheduler/scheduler_config.json");
    assert!(sched.contains("DDIMScheduler"), "{sched}");

    // A card already in the folder is uploaded as it is.
    std::fs::write(
        dir.path().join("README.md"),
        "---\nlicense: mit\n---\n# Mine\n",
    )
    .unwrap();
    run_cli(
        &[
            "push",
            dir.path().to_str().unwrap(),
            "--repo",
            "org/folder",
            "--endpoint",
            &endpoint,
        ],
        cli_cache.path(),
    );
    let cache2 = tempfile::tempdir().unwrap();
    let api = HubApi::new(hub_config(&server, cache2.path()));
    assert_eq!(
        remote_text(&api, "org/folder", "README.md"),
        "---\nlicense: mit\n---\n# Mine\n"
    );
}

#[test]
fn push_needs_exactly_one_of_dir_or_from() {
    for args in [
        vec!["push", "--repo", "org/x"],
        vec!["push", "some-dir", "--from", "other", "--repo", "org/x"],
        vec!["push", "some-dir", "--variant", "fp16", "--repo", "org/x"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--from"), "{args:?}: {err}");
    }
}
