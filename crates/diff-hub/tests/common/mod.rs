//! Shared setup: a local Hub server over a temporary root, and clients pointed at it.

#![allow(dead_code)]

use diff_hub::{HubApi, HubConfig};
use diff_hub_server::{HubServer, ServerConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const WRITE_TOKEN: &str = "hf_writeTOKENsecret0123456789";
pub const READ_TOKEN: &str = "hf_readTOKENsecret9876543210";

pub struct Env {
    pub server: HubServer,
    pub root: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write(root: &Path, rel: &str, content: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

/// A tiny pipeline-shaped repo: two regular JSON files and one LFS weight file.
pub fn tiny_repo(root: &Path, repo: &str) {
    let base = root.join(repo);
    write(
        &base,
        "model_index.json",
        br#"{"_class_name": "X", "unet": ["diffusers", "UNet2DConditionModel"]}"#,
    );
    write(&base, "unet/config.json", br#"{"sample_size": 8}"#);
    write(
        &base,
        "unet/diffusion_pytorch_model.safetensors",
        &bytes(300_000, 1),
    );
    write(
        &base,
        "README.md",
        b"---\nlibrary_name: diffusers\n---\n# tiny\n",
    );
}

pub fn start(configure: impl FnOnce(&mut ServerConfig)) -> Env {
    let root = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::new(root.path());
    config.write_tokens = vec![WRITE_TOKEN.into()];
    config.read_tokens = vec![READ_TOKEN.into()];
    configure(&mut config);
    let server = HubServer::start(config).expect("server starts");
    Env {
        server,
        root,
        cache,
    }
}

impl Env {
    pub fn config(&self, token: Option<&str>) -> HubConfig {
        let cache = self.cache.path().to_string_lossy().into_owned();
        let mut config = HubConfig::from_lookup(|k| (k == "HF_HUB_CACHE").then(|| cache.clone()))
            .expect("config");
        config.endpoint = self.server.endpoint().to_string();
        config.cache_dir = self.cache.path().to_path_buf();
        config.token = token.map(diff_hub::Token::new);
        config.retry_delay = Duration::from_millis(5);
        config.max_retry_delay = Duration::from_millis(20);
        config.timeout = Duration::from_secs(5);
        // Keep a stalled transfer short in tests (cut bodies close their socket, so the client
        // normally notices at once).
        config.read_timeout = Duration::from_secs(1);
        config
    }

    pub fn api(&self, token: Option<&str>) -> HubApi {
        HubApi::new(self.config(token))
    }

    pub fn offline_api(&self) -> HubApi {
        let mut config = self.config(Some(WRITE_TOKEN));
        config.offline = true;
        HubApi::new(config)
    }

    pub fn repo_cache(&self, repo: &str) -> PathBuf {
        self.cache
            .path()
            .join(format!("models--{}", repo.replace('/', "--")))
    }
}

/// Every file under a folder, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for item in std::fs::read_dir(&d).expect("read_dir") {
            let path = item.expect("entry").path();
            if std::fs::metadata(&path).expect("metadata").is_dir() {
                stack.push(path);
            } else {
                out.push(
                    path.strip_prefix(dir)
                        .expect("prefix")
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    out.sort();
    out
}
