//! `LoadOptions::progress`: a repo id's download reports its files and bytes (diff-hub's
//! callbacks) and every component read from files reports its start and end; a local folder
//! downloads nothing.

use diff_pipelines::progress::{LoadProgress, Progress};
use diff_pipelines::{DiffusionPipeline, LoadOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};

mod common;
use common::copy_dir;

#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    bytes: Mutex<(u64, u64)>,
}

impl Progress for Recorder {
    fn on_start(&self, files: usize, bytes: u64) {
        self.events.lock().unwrap().push(format!("start {files}"));
        self.bytes.lock().unwrap().0 = bytes;
    }
    fn on_bytes(&self, _path: &str, bytes: u64) {
        self.bytes.lock().unwrap().1 += bytes;
    }
}

impl LoadProgress for Recorder {
    fn on_component_start(&self, name: &str, class_name: &str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("load {name} {class_name}"));
    }
    fn on_component_done(&self, name: &str) {
        self.events.lock().unwrap().push(format!("done {name}"));
    }
}

fn tiny_sd() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

#[test]
fn downloads_and_component_loads_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hub");
    copy_dir(&tiny_sd(), &root.join("org/tiny-sd"));
    let server =
        diff_hub_server::HubServer::start(diff_hub_server::ServerConfig::new(&root)).unwrap();
    let mut hub = diff_hub::HubConfig::from_env().unwrap();
    hub.endpoint = server.endpoint().to_string();
    hub.cache_dir = dir.path().join("cache");
    hub.offline = false;
    hub.token = None;
    let recorder = Arc::new(Recorder::default());
    let options = LoadOptions {
        hub: Some(hub),
        progress: Some(recorder.clone()),
        ..LoadOptions::default()
    };
    DiffusionPipeline::from_pretrained("org/tiny-sd", &options).unwrap();
    let events = recorder.events.lock().unwrap().clone();
    assert!(events[0].starts_with("start "), "{events:?}");
    let (total, got) = *recorder.bytes.lock().unwrap();
    assert!(
        total > 0 && got == total,
        "{total} announced, {got} reported"
    );
    for name in [
        "unet UNet2DConditionModel",
        "vae AutoencoderKL",
        "text_encoder CLIPTextModel",
    ] {
        let start = events.iter().position(|e| *e == format!("load {name}"));
        let short = name.split(' ').next().unwrap();
        let done = events.iter().position(|e| *e == format!("done {short}"));
        assert!(
            matches!((start, done), (Some(s), Some(d)) if s < d),
            "{name}: {events:?}"
        );
    }
    // A local folder: components only, no download.
    let local = Arc::new(Recorder::default());
    let options = LoadOptions {
        progress: Some(local.clone()),
        ..LoadOptions::default()
    };
    DiffusionPipeline::from_pretrained(tiny_sd().to_str().unwrap(), &options).unwrap();
    let events = local.events.lock().unwrap().clone();
    assert!(!events.iter().any(|e| e.starts_with("start")), "{events:?}");
    assert!(events.iter().any(|e| e == "done unet"), "{events:?}");
}
