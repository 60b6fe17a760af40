//! Downloads against the local Hub server: cache layout, offline resolution, integrity,
//! resume, redirects and auth placement.

mod common;

use common::*;
use diff_hub::{CachedFile, DownloadOptions, HubError, NoProgress, SnapshotOptions};
use diff_hub_server::{Fault, Origin};
use sha2::Digest;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn git_sha1(bytes: &[u8]) -> String {
    diff_hub_server::git_blob_sha1(bytes)
}

#[test]
fn snapshot_download_writes_the_python_cache_layout() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let api = env.api(Some(WRITE_TOKEN));
    let dir = api
        .snapshot_download("user/tiny", &SnapshotOptions::default(), &NoProgress)
        .expect("snapshot");
    let repo = env.repo_cache("user/tiny");
    let commit = std::fs::read_to_string(repo.join("refs/main")).expect("refs/main");
    // Python reads refs without trimming: exactly 40 hex, no newline.
    assert_eq!(commit.len(), 40, "refs/main = {commit:?}");
    assert_eq!(dir, repo.join("snapshots").join(&commit));
    let weights = bytes(300_000, 1);
    let config = br#"{"sample_size": 8}"#;
    let link = |p: &str| {
        std::fs::read_link(dir.join(p))
            .expect("symlink")
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(
        link("unet/config.json"),
        format!("../../../blobs/{}", git_sha1(config))
    );
    assert_eq!(
        link("unet/diffusion_pytorch_model.safetensors"),
        format!("../../../blobs/{}", hex(&sha2::Sha256::digest(&weights)))
    );
    assert!(link("model_index.json").starts_with("../../blobs/"));
    assert_eq!(
        std::fs::read(dir.join("unet/diffusion_pytorch_model.safetensors")).expect("read"),
        weights
    );
    assert!(env.cache.path().join("CACHEDIR.TAG").is_file());
    let tree: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("trees").join(format!("{commit}.json"))).expect("trees"),
    )
    .expect("json");
    assert_eq!(tree["format_version"], 1);
    assert_eq!(
        tree["files"]["unet/diffusion_pytorch_model.safetensors"]["lfs_size"],
        300_000
    );
    // No temporary or partial files are left behind.
    assert!(
        files_under(&repo)
            .iter()
            .all(|f| !f.contains("incomplete") && !f.ends_with(".tmp"))
    );
}

#[test]
fn token_goes_to_the_hub_origin_only_never_to_storage() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    env.api(Some(WRITE_TOKEN))
        .snapshot_download("user/tiny", &SnapshotOptions::default(), &NoProgress)
        .expect("snapshot");
    let requests = env.server.requests();
    let storage: Vec<_> = requests
        .iter()
        .filter(|r| r.origin == Origin::Storage)
        .collect();
    assert!(
        !storage.is_empty(),
        "the LFS file must come from the storage origin"
    );
    assert!(storage.iter().all(|r| r.header("authorization").is_none()));
    let hub: Vec<_> = requests
        .iter()
        .filter(|r| r.origin == Origin::Hub)
        .collect();
    assert!(
        hub.iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {WRITE_TOKEN}")))
    );
    // HEAD before GET for each file, and the regular files went through the relative 307 hop.
    assert!(
        hub.iter()
            .any(|r| r.method == "HEAD" && r.url.contains("/resolve/"))
    );
    assert!(hub.iter().any(|r| r.url.starts_with("/api/resolve-cache/")));
}

#[test]
fn offline_resolution_makes_no_request_and_names_what_is_missing() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let online = env.api(None);
    let dir = online
        .snapshot_download(
            "user/tiny",
            &SnapshotOptions {
                allow_patterns: Some(vec!["*.json".into()]),
                ..Default::default()
            },
            &NoProgress,
        )
        .expect("snapshot");
    env.server.clear_requests();
    let offline = env.offline_api();
    // Same pattern set: complete.
    let again = offline
        .snapshot_download(
            "user/tiny",
            &SnapshotOptions {
                allow_patterns: Some(vec!["*.json".into()]),
                ..Default::default()
            },
            &NoProgress,
        )
        .expect("offline snapshot");
    assert_eq!(again, dir);
    // Everything: the cached tree listing says the weights are missing.
    match offline.snapshot_download("user/tiny", &SnapshotOptions::default(), &NoProgress) {
        Err(HubError::IncompleteSnapshot { missing, .. }) => {
            assert!(
                missing.iter().any(|m| m.ends_with(".safetensors")),
                "{missing:?}"
            )
        }
        other => panic!("expected IncompleteSnapshot, got {other:?}"),
    }
    let file = offline
        .hf_hub_download("user/tiny", "unet/config.json", &DownloadOptions::default())
        .expect("cached file");
    assert!(file.ends_with("unet/config.json"));
    match offline.hf_hub_download(
        "user/tiny",
        "unet/diffusion_pytorch_model.safetensors",
        &DownloadOptions::default(),
    ) {
        Err(e @ HubError::LocalEntryNotFound { .. }) => assert!(
            e.to_string()
                .contains("diffusion_pytorch_model.safetensors")
        ),
        other => panic!("expected LocalEntryNotFound, got {other:?}"),
    }
    match offline.hf_hub_download(
        "user/tiny",
        "model_index.json",
        &DownloadOptions {
            revision: "v2".into(),
            ..Default::default()
        },
    ) {
        Err(e @ HubError::LocalEntryNotFound { .. }) => assert!(e.to_string().contains("refs/v2")),
        other => panic!("expected LocalEntryNotFound, got {other:?}"),
    }
    // local_files_only on an online client behaves the same.
    let local_only = online.hf_hub_download(
        "user/tiny",
        "model_index.json",
        &DownloadOptions {
            local_files_only: true,
            ..Default::default()
        },
    );
    assert!(local_only.is_ok());
    assert!(
        env.server.requests().is_empty(),
        "offline must make zero requests: {:?}",
        env.server.requests()
    );
}

#[test]
fn missing_file_leaves_a_no_exist_marker_and_a_ref() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let api = env.api(None);
    match api.hf_hub_download(
        "user/tiny",
        "scheduler/scheduler_config.json",
        &DownloadOptions::default(),
    ) {
        Err(HubError::EntryNotFound { path, .. }) => {
            assert_eq!(path, "scheduler/scheduler_config.json")
        }
        other => panic!("expected EntryNotFound, got {other:?}"),
    }
    assert_eq!(
        api.cache()
            .try_to_load_from_cache("user/tiny", "main", "scheduler/scheduler_config.json"),
        CachedFile::NoExist
    );
    assert_eq!(
        api.cache()
            .try_to_load_from_cache("user/tiny", "main", "other.json"),
        CachedFile::Missing
    );
}

#[test]
fn interrupted_download_resumes_with_range_and_ends_verified() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let mut config = env.config(None);
    config.max_attempts = 1;
    let single_try = diff_hub::HubApi::new(config);
    let path = "unet/diffusion_pytorch_model.safetensors";
    env.server.inject(Fault::truncate("/lfs/", 100_000, 1));
    let err = single_try
        .hf_hub_download("user/tiny", path, &DownloadOptions::default())
        .expect_err("cut");
    assert!(matches!(err, HubError::Network { .. }), "{err:?}");
    let weights = bytes(300_000, 1);
    let sha = hex(&sha2::Sha256::digest(&weights));
    let blobs = env.repo_cache("user/tiny").join("blobs");
    let partial = std::fs::metadata(blobs.join(format!("{sha}.incomplete")))
        .expect("partial kept")
        .len();
    assert!(partial > 0 && partial < 300_000, "partial = {partial}");
    assert!(
        !blobs.join(&sha).exists(),
        "a cut download must not pass for a blob"
    );
    env.server.clear_requests();
    let file = env
        .api(None)
        .hf_hub_download("user/tiny", path, &DownloadOptions::default())
        .expect("resumed");
    assert_eq!(std::fs::read(file).expect("read"), weights);
    let range = env
        .server
        .requests()
        .iter()
        .find(|r| r.origin == Origin::Storage && r.method == "GET")
        .and_then(|r| r.header("range").map(str::to_string));
    assert_eq!(range, Some(format!("bytes={partial}-")));
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
}

#[test]
fn dropped_connection_is_resumed_within_one_call() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    env.server.inject(Fault::truncate("/lfs/", 50_000, 2));
    let file = env
        .api(None)
        .hf_hub_download(
            "user/tiny",
            "unet/diffusion_pytorch_model.safetensors",
            &DownloadOptions::default(),
        )
        .expect("resumed in-call");
    assert_eq!(std::fs::read(file).expect("read"), bytes(300_000, 1));
    let ranges: Vec<String> = env
        .server
        .requests()
        .iter()
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect();
    // Each retry asks for the bytes after what actually arrived (the server cut after at most
    // 50 000 bytes per connection; buffering may deliver less).
    let offsets: Vec<u64> = ranges
        .iter()
        .map(|r| {
            r.trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .expect("offset")
        })
        .collect();
    // Two cuts, two resumes (more only if a loaded machine stalls a transfer past the 1 s
    // read timeout of the tests, which the client also resumes).
    assert!(offsets.len() >= 2, "{ranges:?}");
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{ranges:?}");
    assert!(
        offsets[0] > 0 && offsets[0] <= 50_000 && offsets[1] > offsets[0] && offsets[1] <= 100_000,
        "{ranges:?}"
    );
}

#[test]
fn corrupted_bytes_are_rejected_and_nothing_is_cached() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let api = env.api(None);
    env.server.inject(Fault::corrupt("/lfs/", 1));
    let err = api
        .hf_hub_download(
            "user/tiny",
            "unet/diffusion_pytorch_model.safetensors",
            &DownloadOptions::default(),
        )
        .expect_err("corrupt");
    assert!(
        matches!(err, HubError::Integrity { what: "sha256", .. }),
        "{err:?}"
    );
    let blobs = env.repo_cache("user/tiny").join("blobs");
    assert!(files_under(&blobs).is_empty(), "{:?}", files_under(&blobs));
    // A regular file is checked against its git blob id.
    let mut fault = Fault::corrupt("/api/resolve-cache/", 1);
    fault.method = Some("GET".into());
    env.server.inject(fault);
    let err = api
        .hf_hub_download("user/tiny", "unet/config.json", &DownloadOptions::default())
        .expect_err("corrupt");
    assert!(
        matches!(
            err,
            HubError::Integrity {
                what: "git sha1",
                ..
            }
        ),
        "{err:?}"
    );
    // And the next, clean attempt works.
    assert!(
        api.hf_hub_download("user/tiny", "unet/config.json", &DownloadOptions::default())
            .is_ok()
    );
}

#[test]
fn revisions_resolve_by_branch_commit_and_refs_pr() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let api = env.api(Some(WRITE_TOKEN));
    let info = api
        .create_pr(
            "user/tiny",
            &[diff_hub::CommitOperation::Add {
                path_in_repo: "extra.txt".into(),
                source: diff_hub::AddSource::Bytes(b"from a PR".to_vec()),
            }],
            &diff_hub::CommitOptions::default(),
            &NoProgress,
        )
        .expect("pr");
    assert_eq!(info.pr_revision.as_deref(), Some("refs/pr/1"));
    let file = api
        .hf_hub_download(
            "user/tiny",
            "extra.txt",
            &DownloadOptions {
                revision: "refs/pr/1".into(),
                ..Default::default()
            },
        )
        .expect("PR file");
    assert_eq!(std::fs::read(file).expect("read"), b"from a PR");
    let pr_ref = std::fs::read_to_string(env.repo_cache("user/tiny").join("refs/refs/pr/1"))
        .expect("nested ref");
    assert_eq!(pr_ref, info.commit_oid);
    // The PR did not move main.
    assert!(matches!(
        api.hf_hub_download("user/tiny", "extra.txt", &DownloadOptions::default()),
        Err(HubError::EntryNotFound { .. })
    ));
    // A full commit hash resolves too, and a second call is served from the cache.
    env.server.clear_requests();
    let by_hash = api
        .hf_hub_download(
            "user/tiny",
            "extra.txt",
            &DownloadOptions {
                revision: info.commit_oid.clone(),
                ..Default::default()
            },
        )
        .expect("by hash");
    assert!(by_hash.exists());
    assert!(
        env.server.requests().is_empty(),
        "full hash + cached snapshot must not hit the network"
    );
}

#[test]
fn tree_pagination_is_followed() {
    let env = start(|c| c.tree_page_size = 2);
    tiny_repo(env.root.path(), "user/tiny");
    let entries = env
        .api(None)
        .list_repo_tree("user/tiny", "main")
        .expect("tree");
    let files: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == "file")
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(
        env.server
            .requests()
            .iter()
            .filter(|r| r.url.contains("/tree/"))
            .count()
            >= 3
    );
}

#[test]
fn pipeline_download_fetches_exactly_what_diffusers_selects() {
    // Gate: tests/fixtures/format/pipeline_selections.json is made by diffusers 0.42.1's own
    // `DiffusionPipeline.download` on the same folder listing.
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let cases: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures.join("format/pipeline_selections.json")).expect("fixture"),
    )
    .expect("json");
    let env = start(|_| {});
    let source = fixtures.join("tiny-sd");
    for rel in files_under(&source) {
        write(
            &env.root.path().join("user/tiny-sd"),
            &rel,
            &std::fs::read(source.join(&rel)).expect("read"),
        );
    }
    let mut checked = 0;
    for case in cases.as_array().expect("list") {
        if case["pipeline"] != "tiny-sd" || case["use_safetensors"] != serde_json::Value::Null {
            continue;
        }
        let variant = case["variant"].as_str().map(str::to_string);
        let cache = tempfile::tempdir().expect("tempdir");
        let mut config = env.config(None);
        config.cache_dir = cache.path().to_path_buf();
        let api = diff_hub::HubApi::new(config);
        let selection = diff_format::SelectionOptions {
            variant: variant.clone(),
            ..Default::default()
        };
        let dir = api
            .download_pipeline("user/tiny-sd", "main", &selection, &NoProgress)
            .expect("download");
        let expected: Vec<String> = case["expected_files"]
            .as_array()
            .expect("expected_files")
            .iter()
            .map(|v| v.as_str().expect("str").to_string())
            .collect();
        assert_eq!(files_under(&dir), expected, "variant {variant:?}");
        checked += 1;
    }
    assert_eq!(
        checked, 2,
        "both the default and the fp16 selection are checked"
    );
}
