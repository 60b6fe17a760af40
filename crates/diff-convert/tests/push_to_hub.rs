//! `push_to_hub` against the local Hub server (`diff-hub-server`): save with a variant, cast and
//! shards, card, one commit; the pushed repo downloads back and validates against the source
//! (every tensor exact after torch's rounding).

use diff_convert::publish::{PushOptions, push_to_hub};
use diff_convert::save::SaveOptions;
use diff_convert::validate::validate_pipeline;
use diff_hub::{HubApi, HubConfig, NoProgress, SnapshotOptions, Token};
use diff_hub_server::{HubServer, ServerConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WRITE_TOKEN: &str = "hf_writeTOKENsecret0123456789";

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/50-convert/save/src")
}

fn api(server: &HubServer, cache: &Path) -> HubApi {
    let c = cache.to_string_lossy().into_owned();
    let mut config = HubConfig::from_lookup(|k| (k == "HF_HUB_CACHE").then(|| c.clone())).unwrap();
    config.endpoint = server.endpoint().to_string();
    config.cache_dir = cache.to_path_buf();
    config.token = Some(Token::new(WRITE_TOKEN));
    config.retry_delay = Duration::from_millis(5);
    config.max_retry_delay = Duration::from_millis(20);
    config.timeout = Duration::from_secs(5);
    HubApi::new(config)
}

#[test]
fn pushed_fp16_sharded_pipeline_downloads_back_and_validates() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(root.path());
    config.write_tokens = vec![WRITE_TOKEN.into()];
    let server = HubServer::start(config).unwrap();
    let api = api(&server, cache.path());
    let options = PushOptions {
        save: SaveOptions {
            variant: Some("fp16".into()),
            dtype: Some(diff_convert::SaveDtype::F16),
            ..SaveOptions::default()
        }
        .with_max_shard_size("20KB")
        .unwrap(),
        ..PushOptions::default()
    };
    let info = push_to_hub(&api, &src(), "user/tiny-sd", &options, &NoProgress).unwrap();
    assert_eq!(info.commit_oid.len(), 40);
    let commits: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.url.contains("/commit/"))
        .collect();
    assert_eq!(commits.len(), 1, "one commit");

    let snapshot = api
        .snapshot_download("user/tiny-sd", &SnapshotOptions::default(), &NoProgress)
        .unwrap();
    let reports = validate_pipeline(&src(), &snapshot, Some("fp16")).unwrap();
    assert!(reports.iter().all(|r| r.ok()), "{reports:#?}");
    assert!(
        snapshot
            .join("unet/diffusion_pytorch_model.safetensors.index.fp16.json")
            .is_file()
    );
    let card = std::fs::read_to_string(snapshot.join("README.md")).unwrap();
    assert!(card.starts_with("---\nlibrary_name: diffusers\n"), "{card}");
    assert!(card.contains("diffusers:StableDiffusionPipeline"), "{card}");

    // A second push keeps the card already on the Hub, as diffusers does.
    let custom = "---\nlicense: mit\n---\n# My model\n";
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("README.md"), custom).unwrap();
    let upload = diff_hub::UploadFolderOptions::default();
    api.upload_folder("user/tiny-sd", local.path(), &upload, &NoProgress)
        .unwrap();
    push_to_hub(
        &api,
        &src(),
        "user/tiny-sd",
        &PushOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let again = self::api(&server, fresh.path())
        .snapshot_download("user/tiny-sd", &SnapshotOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(again.join("README.md")).unwrap(),
        "---\nlicense: mit\nlibrary_name: diffusers\n---\n# My model\n"
    );
}

#[test]
fn default_commit_messages_follow_diffusers() {
    use diff_convert::publish::default_commit_message;
    assert_eq!(
        default_commit_message("StableDiffusionPipeline"),
        "Upload StableDiffusionPipeline"
    );
    assert_eq!(
        default_commit_message("UNet2DConditionModel"),
        "Upload model"
    );
    assert_eq!(default_commit_message("DDIMScheduler"), "Upload scheduler");
}
