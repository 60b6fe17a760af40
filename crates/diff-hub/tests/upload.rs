//! Uploads against the local Hub server: create repo, preupload decisions, LFS basic and
//! multipart transfers with verify, NDJSON commits, pull requests, deletions.

mod common;

use common::*;
use diff_hub::{CommitOperation, CommitOptions, NoProgress, SnapshotOptions, UploadFolderOptions};
use diff_hub_server::Origin;

#[test]
fn upload_folder_round_trips_byte_identical_through_lfs_basic_and_multipart() {
    // Parts of 64 KiB: the 200 KB file goes multipart, the 30 KB one basic.
    let env = start(|c| c.multipart_chunk_size = 64 * 1024);
    let local = tempfile::tempdir().expect("tempdir");
    write(local.path(), "model_index.json", br#"{"_class_name": "X"}"#);
    write(local.path(), "unet/config.json", br#"{"a": 1}"#);
    write(
        local.path(),
        "unet/diffusion_pytorch_model.safetensors",
        &bytes(30_000, 7),
    );
    write(
        local.path(),
        "vae/diffusion_pytorch_model.bin",
        &bytes(200_000, 8),
    );
    write(local.path(), "empty.txt", b"");
    // Binary content under a name no default pattern covers: LFS, and tracked in .gitattributes.
    write(
        local.path(),
        "extra/weights.dat",
        &[&[0u8][..], &bytes(2000, 9)].concat(),
    );
    write(local.path(), ".git/HEAD", b"ref: refs/heads/main");
    let api = env.api(Some(WRITE_TOKEN));
    let url = api
        .create_repo("user/pushed", false, false)
        .expect("create");
    assert_eq!(url, format!("{}/user/pushed", env.server.endpoint()));
    let info = api
        .upload_folder(
            "user/pushed",
            local.path(),
            &UploadFolderOptions::default(),
            &NoProgress,
        )
        .expect("upload");
    assert_eq!(info.commit_oid.len(), 40);
    assert!(info.pr_url.is_none());
    let requests = env.server.requests();
    let puts: Vec<_> = requests.iter().filter(|r| r.method == "PUT").collect();
    // Two basic PUTs plus ceil(200000 / 65536) = 4 part PUTs, all on the storage origin, no token.
    assert_eq!(
        puts.len(),
        6,
        "{:?}",
        puts.iter().map(|r| &r.url).collect::<Vec<_>>()
    );
    assert!(
        puts.iter()
            .all(|r| r.origin == Origin::Storage && r.header("authorization").is_none())
    );
    assert!(
        requests.iter().any(|r| r.url.ends_with("/complete")),
        "multipart completion"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.url.ends_with("/objects/verify"))
            .count(),
        3
    );
    let attributes =
        std::fs::read_to_string(env.root.path().join("user/pushed/.gitattributes")).expect("attrs");
    assert!(
        attributes.contains("extra/weights.dat filter=lfs diff=lfs merge=lfs -text\n"),
        "{attributes}"
    );
    let commit = requests
        .iter()
        .find(|r| r.url.contains("/commit/main"))
        .expect("commit request");
    assert_eq!(commit.header("content-type"), Some("application/x-ndjson"));
    // Download into a fresh cache: byte-identical, `.git/` was not uploaded.
    let dir = api
        .snapshot_download("user/pushed", &SnapshotOptions::default(), &NoProgress)
        .expect("download");
    for rel in files_under(local.path())
        .iter()
        .filter(|r| !r.starts_with(".git/"))
    {
        assert_eq!(
            std::fs::read(dir.join(rel)).expect("downloaded"),
            std::fs::read(local.path().join(rel)).expect("local"),
            "{rel}"
        );
    }
    assert!(!dir.join(".git").exists());
    // The server stored the weights as LFS (they come from the storage origin).
    env.server.clear_requests();
    let fresh = tempfile::tempdir().expect("tempdir");
    let mut config = env.config(None);
    config.cache_dir = fresh.path().to_path_buf();
    diff_hub::HubApi::new(config)
        .snapshot_download("user/pushed", &SnapshotOptions::default(), &NoProgress)
        .expect("download");
    assert_eq!(
        env.server
            .requests()
            .iter()
            .filter(|r| r.origin == Origin::Storage)
            .count(),
        3,
        "three LFS files"
    );
}

#[test]
fn unchanged_files_are_skipped_and_an_empty_commit_is_not_sent() {
    let env = start(|_| {});
    let local = tempfile::tempdir().expect("tempdir");
    write(local.path(), "a.json", b"{}");
    write(local.path(), "w.safetensors", &bytes(5000, 2));
    let api = env.api(Some(WRITE_TOKEN));
    api.create_repo("user/r", false, true).expect("create");
    let first = api
        .upload_folder(
            "user/r",
            local.path(),
            &UploadFolderOptions::default(),
            &NoProgress,
        )
        .expect("first");
    env.server.clear_requests();
    let second = api
        .upload_folder(
            "user/r",
            local.path(),
            &UploadFolderOptions::default(),
            &NoProgress,
        )
        .expect("second");
    assert_eq!(second.commit_oid, first.commit_oid);
    assert!(
        env.server
            .requests()
            .iter()
            .all(|r| !r.url.contains("/commit/") && r.method != "PUT")
    );
}

#[test]
fn pull_request_goes_to_refs_pr_and_deletions_apply() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let api = env.api(Some(WRITE_TOKEN));
    let pr = api
        .create_pr(
            "user/tiny",
            &[CommitOperation::Delete {
                path_in_repo: "README.md".into(),
            }],
            &CommitOptions {
                commit_message: "Drop the card".into(),
                ..Default::default()
            },
            &NoProgress,
        )
        .expect("pr");
    assert_eq!(
        pr.pr_url,
        Some(format!("{}/user/tiny/discussions/1", env.server.endpoint()))
    );
    assert_eq!(pr.pr_num, Some(1));
    assert_eq!(pr.repo_url, format!("{}/user/tiny", env.server.endpoint()));
    let pr_files: Vec<String> = api
        .list_repo_tree("user/tiny", "refs/pr/1")
        .expect("pr tree")
        .into_iter()
        .filter(|e| e.kind == "file")
        .map(|e| e.path)
        .collect();
    assert!(!pr_files.contains(&"README.md".to_string()));
    assert!(
        env.root.path().join("user/tiny/README.md").exists(),
        "main is untouched"
    );
    // On main: delete a folder, with the right parent commit.
    let head = api
        .repo_info("user/tiny", "main")
        .expect("info")
        .sha
        .expect("sha");
    let info = api
        .create_commit(
            "user/tiny",
            &[CommitOperation::DeleteFolder {
                path_in_repo: "unet".into(),
            }],
            &CommitOptions {
                parent_commit: Some(head),
                ..Default::default()
            },
            &NoProgress,
        )
        .expect("delete folder");
    assert!(!env.root.path().join("user/tiny/unet").exists());
    let after = api
        .repo_info("user/tiny", "main")
        .expect("info")
        .sha
        .expect("sha");
    assert_eq!(after, info.commit_oid);
    // A file deletion through the helper.
    api.delete_file("user/tiny", "README.md", &CommitOptions::default())
        .expect("delete");
    assert!(!env.root.path().join("user/tiny/README.md").exists());
}

#[test]
fn upload_folder_honours_path_in_repo_and_patterns() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let api = env.api(Some(WRITE_TOKEN));
    let local = tempfile::tempdir().expect("tempdir");
    write(local.path(), "sub/keep.json", b"{}");
    write(local.path(), "sub/skip.log", b"x");
    api.upload_folder(
        "user/tiny",
        local.path(),
        &UploadFolderOptions {
            path_in_repo: "extra".into(),
            ignore_patterns: Some(vec!["*.log".into()]),
            delete_patterns: Some(vec!["*.md".into()]),
            commit: CommitOptions {
                commit_message: "Add extra".into(),
                commit_description: "why".into(),
                ..Default::default()
            },
            ..Default::default()
        },
        &NoProgress,
    )
    .expect("upload");
    let repo = env.root.path().join("user/tiny");
    assert!(repo.join("extra/sub/keep.json").exists());
    assert!(!repo.join("extra/sub/skip.log").exists());
    // delete_patterns only apply under path_in_repo, and never to .gitattributes.
    assert!(repo.join("README.md").exists());
}
