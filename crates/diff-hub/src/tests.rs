//! Unit tests: environment configuration, cache layout rules, patterns, URL helpers.

use crate::cache::HubCache;
use crate::config::HubConfig;
use crate::http::{join_location, origin_of, quote, quote_path};
use crate::{CachedFile, filter_paths};
use std::collections::HashMap;

fn config(vars: &[(&str, &str)]) -> crate::Result<HubConfig> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    HubConfig::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn cache_dir_follows_python_precedence() {
    let c = config(&[("HOME", "/home/u")]).expect("config");
    assert_eq!(
        c.cache_dir,
        std::path::Path::new("/home/u/.cache/huggingface/hub")
    );
    let c = config(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]).expect("config");
    assert_eq!(c.cache_dir, std::path::Path::new("/x/huggingface/hub"));
    let c = config(&[("HOME", "/home/u"), ("HF_HOME", "~/hf")]).expect("config");
    assert_eq!(c.cache_dir, std::path::Path::new("/home/u/hf/hub"));
    let c = config(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy")]).expect("config");
    assert_eq!(c.cache_dir, std::path::Path::new("/legacy"));
    let c = config(&[
        ("HF_HOME", "/hf"),
        ("HUGGINGFACE_HUB_CACHE", "/legacy"),
        ("HF_HUB_CACHE", "/new"),
    ])
    .expect("config");
    assert_eq!(c.cache_dir, std::path::Path::new("/new"));
    assert!(matches!(config(&[]), Err(crate::HubError::NoCacheDir)));
}

#[test]
fn endpoint_offline_and_symlink_switches_are_read() {
    let c = config(&[
        ("HF_HUB_CACHE", "/c"),
        ("HF_ENDPOINT", "http://127.0.0.1:8080/"),
    ])
    .expect("config");
    assert_eq!(c.endpoint, "http://127.0.0.1:8080");
    assert!(!c.offline);
    for value in ["1", "ON", "yes", "True"] {
        assert!(
            config(&[("HF_HUB_CACHE", "/c"), ("HF_HUB_OFFLINE", value)])
                .expect("config")
                .offline,
            "{value}"
        );
    }
    assert!(
        config(&[("HF_HUB_CACHE", "/c"), ("TRANSFORMERS_OFFLINE", "1")])
            .expect("config")
            .offline
    );
    assert!(
        !config(&[("HF_HUB_CACHE", "/c"), ("HF_HUB_OFFLINE", "0")])
            .expect("config")
            .offline
    );
    assert!(
        config(&[("HF_HUB_CACHE", "/c"), ("HF_HUB_DISABLE_SYMLINKS", "1")])
            .expect("config")
            .disable_symlinks
    );
    assert_eq!(
        config(&[("HF_HUB_CACHE", "/c")]).expect("config").endpoint,
        "https://huggingface.co"
    );
}

#[test]
fn token_comes_from_env_then_file_and_is_never_printed() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(home.path().join("token"), "hf_fromFile\n").expect("write");
    let hf_home = home.path().to_string_lossy().into_owned();
    let c = config(&[("HF_HOME", &hf_home)]).expect("config");
    assert_eq!(c.token, Some(crate::Token::new("hf_fromFile")));
    let c = config(&[("HF_HOME", &hf_home), ("HF_TOKEN", "hf_fromEnv")]).expect("config");
    assert_eq!(c.token, Some(crate::Token::new("hf_fromEnv")));
    let c = config(&[
        ("HF_HOME", &hf_home),
        ("HF_TOKEN", "hf_fromEnv"),
        ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1"),
    ])
    .expect("config");
    assert_eq!(c.token, None);
    let c = config(&[("HF_HOME", &hf_home), ("HF_TOKEN", "hf_fromEnv")]).expect("config");
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hf_fromEnv") && shown.contains("redacted"),
        "{shown}"
    );
}

#[test]
fn refs_are_written_without_newline_and_a_newline_makes_them_unreadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = HubCache::new(dir.path());
    let commit = "a".repeat(40);
    cache
        .write_ref("org/name", "refs/pr/3", &commit)
        .expect("write");
    let path = dir.path().join("models--org--name/refs/refs/pr/3");
    assert_eq!(std::fs::read(&path).expect("read"), commit.as_bytes());
    assert_eq!(
        cache.read_ref("org/name", "refs/pr/3"),
        Some(commit.clone())
    );
    // Python reads refs with a raw read(): "<sha>\n" is not a commit, for it or for us.
    std::fs::write(&path, format!("{commit}\n")).expect("write");
    assert_eq!(cache.read_ref("org/name", "refs/pr/3"), None);
    assert_eq!(
        cache.resolve_commit("org/name", &commit),
        Some(commit.clone()),
        "a full hash needs no ref"
    );
    assert!(cache.write_ref("org/name", "../escape", &commit).is_err());
}

#[test]
fn snapshot_links_are_relative_with_depth_and_copies_when_disabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    for disabled in [false, true] {
        let cache = HubCache::new(dir.path()).with_symlinks_disabled(disabled);
        let blob = cache.blob_path("o/n", "etag1");
        std::fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
        std::fs::write(&blob, b"content").expect("write");
        let commit = if disabled {
            "c".repeat(40)
        } else {
            "d".repeat(40)
        };
        let deep = cache
            .link_snapshot("o/n", &commit, "a/b/file.bin", "etag1")
            .expect("link");
        let top = cache
            .link_snapshot("o/n", &commit, "top.json", "etag1")
            .expect("link");
        assert_eq!(std::fs::read(&deep).expect("read"), b"content");
        if disabled {
            assert!(std::fs::read_link(&deep).is_err(), "a copy, not a link");
        } else {
            assert_eq!(
                std::fs::read_link(&deep).expect("link"),
                std::path::Path::new("../../../../blobs/etag1")
            );
            assert_eq!(
                std::fs::read_link(&top).expect("link"),
                std::path::Path::new("../../blobs/etag1")
            );
        }
        assert_eq!(
            cache.try_to_load_from_cache("o/n", &commit, "top.json"),
            CachedFile::Found(top)
        );
    }
    let repo = HubCache::repo_folder_name("julien-c/EsperBERTo-small");
    assert_eq!(repo, "models--julien-c--EsperBERTo-small");
    assert_eq!(HubCache::repo_folder_name("gpt2"), "models--gpt2");
}

#[test]
fn patterns_follow_huggingface_hub_filter_repo_objects() {
    let files: Vec<String> = [
        "model_index.json",
        "unet/config.json",
        "unet/w.safetensors",
        "unet/w.bin",
        "README.md",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(filter_paths(&files, None, None), files);
    // `*` crosses `/`; a trailing `/` means the whole folder.
    assert_eq!(
        filter_paths(&files, Some(&["*.json".into()]), None),
        vec!["model_index.json", "unet/config.json"]
    );
    assert_eq!(
        filter_paths(&files, Some(&["unet/".into()]), Some(&["*.bin".into()])),
        vec!["unet/config.json", "unet/w.safetensors"]
    );
}

#[test]
fn url_helpers_quote_and_compare_origins_like_python() {
    assert_eq!(quote("refs/pr/1"), "refs%2Fpr%2F1");
    assert_eq!(quote_path("unet/a b[1].json"), "unet/a%20b%5B1%5D.json");
    assert_eq!(
        origin_of("https://huggingface.co/x"),
        origin_of("https://HuggingFace.co:443/y")
    );
    assert_ne!(
        origin_of("http://127.0.0.1:80/x"),
        origin_of("http://localhost:80/x")
    );
    assert_ne!(
        origin_of("http://127.0.0.1:1/x"),
        origin_of("http://127.0.0.1:2/x")
    );
    assert_eq!(
        join_location("http://h:1/a/b?x=1", "/api/c"),
        "http://h:1/api/c"
    );
    assert_eq!(
        join_location("http://h:1/a/b", "http://other/z"),
        "http://other/z"
    );
}
