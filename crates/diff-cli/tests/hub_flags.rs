//! The Hub flags every repo-id-or-folder command shares (`--revision`, `--endpoint`,
//! `--offline`, `--cache-dir`), on `save` and `validate`: a local folder is used as it is
//! (the flags make no request), and a repo id offline with an empty cache is a clear error
//! naming the repo, the revision and the cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_sd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

/// Runs the CLI with a Hugging Face environment of its own (nothing read from the user's).
fn cli(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(args)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .output()
        .expect("run burn-diffusers")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn save_and_validate_take_a_local_folder_as_is_with_endpoint_and_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    // A closed port: any request would fail, so success proves none was made.
    let hub = ["--endpoint", "http://127.0.0.1:9", "--offline"];
    let src = tiny_sd();
    let mut args = vec![
        "save",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(hub);
    let o = cli(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("model_index.json").is_file());

    let mut args = vec![
        "validate",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--no-forward",
    ];
    args.extend(hub);
    let o = cli(tmp.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("files"));
}

#[test]
fn a_repo_id_offline_with_an_empty_cache_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("empty-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let cache_arg = cache.to_str().unwrap();
    let out = tmp.path().join("out");
    for args in [
        vec![
            "save",
            "some-org/absent-pipeline",
            "--out",
            out.to_str().unwrap(),
            "--offline",
            "--cache-dir",
            cache_arg,
        ],
        vec![
            "validate",
            "some-org/absent-pipeline",
            "some-org/other",
            "--no-forward",
            "--offline",
            "--cache-dir",
            cache_arg,
            "--revision",
            "v1",
        ],
    ] {
        let o = cli(tmp.path(), &args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = stderr(&o);
        assert!(
            err.contains("some-org/absent-pipeline")
                && err.contains("offline")
                && err.contains(cache_arg),
            "{args:?}: {err}"
        );
        assert_eq!(
            args[0] == "validate",
            err.contains("`v1`"),
            "{args:?}: the revision is named: {err}"
        );
        assert!(!out.exists(), "nothing is written");
    }
}

#[test]
fn a_file_where_a_folder_or_repo_id_is_expected_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny_sd().join("model_index.json");
    let out = tmp.path().join("out");
    let o = cli(
        tmp.path(),
        &[
            "save",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("this is a file"), "{}", stderr(&o));
}
