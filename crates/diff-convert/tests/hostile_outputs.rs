//! Issue 18: output-folder rules of `save_pipeline` (and so of `save` / `convert --out`) on
//! hostile or unlucky paths. The source is the small pipeline of `tests/fixtures/50-convert`.

use diff_convert::save::{SaveOptions, save_pipeline};
use std::path::{Path, PathBuf};

mod common;

fn src() -> PathBuf {
    common::fixture_path("50-convert/save/src")
}

fn options() -> SaveOptions {
    SaveOptions {
        name_or_path: Some("src".into()),
        ..SaveOptions::default()
    }
}

/// Copies the fixture pipeline into `to` so a test may save inside or onto it.
fn copy_src(to: &Path) {
    common::copy_tree(&src(), to);
}

#[test]
fn an_existing_file_at_the_output_is_an_error_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("notes.txt");
    std::fs::write(&out, b"precious").unwrap();
    let msg = save_pipeline(&src(), &out, &options())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("a file is there"), "{msg}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["notes.txt"], "nothing else was created");
}

#[test]
fn saving_into_the_source_or_a_folder_inside_it_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pipe = tmp.path().join("pipe");
    copy_src(&pipe);
    let before = common::tree(&pipe);
    for out in [
        pipe.clone(),
        pipe.join("."),
        pipe.join("unet/../copy"),
        pipe.join("sub/out"),
    ] {
        let msg = save_pipeline(&pipe, &out, &options())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("inside it"), "{}: {msg}", out.display());
    }
    assert_eq!(common::tree(&pipe), before, "the source is unchanged");
    assert!(!pipe.join("copy").exists() && !pipe.join("sub").exists());
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn folders_left_by_a_dead_save_are_cleaned_up_and_a_lost_destination_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let pid = dead_pid();
    let stale = tmp.path().join(format!(".out.incomplete-{pid}"));
    std::fs::create_dir_all(stale.join("unet")).unwrap();
    std::fs::write(stale.join("unet/partial"), b"x").unwrap();
    // Not ours to touch: another name, and a pid that is alive (this process's parent).
    let other = tmp.path().join(".other.incomplete-1");
    std::fs::create_dir_all(&other).unwrap();
    save_pipeline(&src(), &out, &options()).unwrap();
    assert!(!stale.exists(), "the stale folder was removed");
    assert!(other.exists());
    assert!(out.join("model_index.json").is_file());

    // A save that died between its two renames left the old destination aside: it comes back.
    let aside = tmp.path().join(format!(".out.previous-{pid}"));
    std::fs::write(out.join("marker"), b"old").unwrap();
    std::fs::rename(&out, &aside).unwrap();
    save_pipeline(&src(), &out, &options()).unwrap();
    // The next save started from the restored folder, whose extra files it keeps.
    assert_eq!(
        std::fs::read(out.join("marker")).unwrap(),
        b"old",
        "restored"
    );
    assert!(!aside.exists());
}

#[cfg(unix)]
#[test]
fn saved_files_have_mode_0644() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    save_pipeline(&src(), &out, &options()).unwrap();
    for (name, _) in common::tree(&out) {
        let mode = std::fs::metadata(out.join(&name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{name}");
    }
}
