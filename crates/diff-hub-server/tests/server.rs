//! The server's own behaviour, over raw HTTP/1.1 (diff-hub's tests cover the full protocol
//! through the real client; these pin the server-side rules a client cannot see).

use diff_hub_server::{HubServer, ServerConfig};
use std::io::{Read, Write};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

fn request(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let authority = base
        .trim_start_matches("http://")
        .replace("localhost", "127.0.0.1");
    let mut stream = std::net::TcpStream::connect(&authority).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn repo(root: &std::path::Path) {
    let base = root.join("user/tiny");
    std::fs::create_dir_all(base.join("unet")).expect("mkdir");
    std::fs::write(base.join("model_index.json"), b"{}").expect("write");
    std::fs::write(base.join("unet/w.safetensors"), vec![7u8; 5000]).expect("write");
}

#[test]
fn main_commit_comes_from_folder_content_and_survives_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    repo(root.path());
    let server = HubServer::start(ServerConfig::new(root.path())).expect("start");
    let first = request(
        server.endpoint(),
        "GET",
        "/api/models/user/tiny/revision/main",
        &[],
        b"",
    )
    .json()["sha"]
        .clone();
    // A pull request through the NDJSON commit endpoint.
    let body = b"{\"key\":\"header\",\"value\":{\"summary\":\"pr\",\"description\":\"\"}}\n{\"key\":\"file\",\"value\":{\"path\":\"notes.txt\",\"content\":\"aGk=\",\"encoding\":\"base64\"}}\n";
    let pr = request(
        server.endpoint(),
        "POST",
        "/api/models/user/tiny/commit/main?create_pr=1",
        &[("Content-Type", "application/x-ndjson")],
        body,
    );
    assert_eq!(pr.status, 200);
    assert!(
        pr.json()["pullRequestUrl"]
            .as_str()
            .expect("url")
            .ends_with("/user/tiny/discussions/1")
    );
    server.shutdown();
    let server = HubServer::start(ServerConfig::new(root.path())).expect("restart");
    let again = request(
        server.endpoint(),
        "GET",
        "/api/models/user/tiny/revision/main",
        &[],
        b"",
    )
    .json()["sha"]
        .clone();
    assert_eq!(first, again, "same folder, same commit");
    let pr_file = request(
        server.endpoint(),
        "GET",
        "/user/tiny/resolve/refs%2Fpr%2F1/notes.txt",
        &[],
        b"",
    );
    // Regular files first hop through /api/resolve-cache/ (a relative 307, as the Hub does).
    assert_eq!(pr_file.status, 307);
    let hop = pr_file.header("location").expect("location").to_string();
    assert!(
        hop.starts_with("/api/resolve-cache/models/user/tiny/"),
        "{hop}"
    );
    let served = request(server.endpoint(), "GET", &hop, &[], b"");
    assert_eq!(
        (served.status, served.body.as_slice()),
        (200, &b"hi"[..]),
        "PR refs persist across restarts"
    );
}

#[test]
fn lfs_files_redirect_to_a_storage_origin_that_honours_range() {
    let root = tempfile::tempdir().expect("tempdir");
    repo(root.path());
    let server = HubServer::start(ServerConfig::new(root.path())).expect("start");
    let head = request(
        server.endpoint(),
        "HEAD",
        "/user/tiny/resolve/main/unet/w.safetensors",
        &[],
        b"",
    );
    assert_eq!(head.status, 302);
    assert_eq!(head.header("x-linked-size"), Some("5000"));
    assert!(head.header("x-repo-commit").is_some_and(|c| c.len() == 40));
    let location = head.header("location").expect("location").to_string();
    assert!(
        location.starts_with(server.storage_url())
            && server.storage_url().starts_with("http://localhost:")
    );
    let path = location.trim_start_matches(server.storage_url());
    // The end past EOF is clamped.
    let part = request(
        server.storage_url(),
        "GET",
        path,
        &[("Range", "bytes=4990-99999")],
        b"",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 4990-4999/5000"));
    assert_eq!(part.body, vec![7u8; 10]);
    let beyond = request(
        server.storage_url(),
        "GET",
        path,
        &[("Range", "bytes=5000-")],
        b"",
    );
    assert_eq!(beyond.status, 416);
    let missing = request(
        server.endpoint(),
        "HEAD",
        "/user/tiny/resolve/main/nope.json",
        &[],
        b"",
    );
    assert_eq!(
        (missing.status, missing.header("x-error-code")),
        (404, Some("EntryNotFound"))
    );
    assert!(
        missing.header("x-repo-commit").is_some(),
        "needed for Python's .no_exist marker"
    );
}

#[test]
fn commits_refuse_unknown_lfs_objects_and_oversized_regular_files() {
    let root = tempfile::tempdir().expect("tempdir");
    repo(root.path());
    let mut config = ServerConfig::new(root.path());
    config.regular_file_limit = 4;
    let server = HubServer::start(config).expect("start");
    let unknown = format!(
        "{{\"key\":\"header\",\"value\":{{\"summary\":\"x\"}}}}\n{{\"key\":\"lfsFile\",\"value\":{{\"path\":\"a.bin\",\"algo\":\"sha256\",\"oid\":\"{}\",\"size\":3}}}}\n",
        "a".repeat(64)
    );
    let reply = request(
        server.endpoint(),
        "POST",
        "/api/models/user/tiny/commit/main",
        &[],
        unknown.as_bytes(),
    );
    assert_eq!(reply.status, 400);
    let big = b"{\"key\":\"header\",\"value\":{\"summary\":\"x\"}}\n{\"key\":\"file\",\"value\":{\"path\":\"a.txt\",\"content\":\"aGVsbG8=\",\"encoding\":\"base64\"}}\n";
    let reply = request(
        server.endpoint(),
        "POST",
        "/api/models/user/tiny/commit/main",
        &[],
        big,
    );
    assert_eq!(reply.status, 400);
    let traversal = b"{\"key\":\"header\",\"value\":{\"summary\":\"x\"}}\n{\"key\":\"file\",\"value\":{\"path\":\"../evil\",\"content\":\"\",\"encoding\":\"base64\"}}\n";
    let reply = request(
        server.endpoint(),
        "POST",
        "/api/models/user/tiny/commit/main",
        &[],
        traversal,
    );
    assert_eq!(reply.status, 400);
    assert!(!root.path().join("user/evil").exists());
}
