//! Every error mapping (`X-Error-Code` and status), bounded retries, and the rule that the
//! token never appears in a log line or an error message.

mod common;

use common::*;
use diff_hub::{DownloadOptions, HubError, NoProgress, SnapshotOptions};
use diff_hub_server::Fault;
use std::sync::{Arc, Mutex};

fn download(
    api: &diff_hub::HubApi,
    repo: &str,
    rev: &str,
    path: &str,
) -> Result<std::path::PathBuf, HubError> {
    api.hf_hub_download(
        repo,
        path,
        &DownloadOptions {
            revision: rev.into(),
            ..Default::default()
        },
    )
}

#[test]
fn hub_error_codes_map_to_typed_errors() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    tiny_repo(env.root.path(), "user/gated");
    tiny_repo(env.root.path(), "user/private");
    env.server.set_gated("user/gated", true);
    env.server.set_private("user/private", true);
    let anonymous = env.api(None);
    let reader = env.api(Some(READ_TOKEN));
    let bad_token = env.api(Some("hf_notAValidToken"));

    let err =
        download(&anonymous, "user/missing", "main", "model_index.json").expect_err("missing repo");
    assert!(
        matches!(err, HubError::RepoNotFound { ref repo_id, .. } if repo_id == "user/missing"),
        "{err:?}"
    );
    let err =
        download(&anonymous, "user/tiny", "v9", "model_index.json").expect_err("missing revision");
    assert!(
        matches!(err, HubError::RevisionNotFound { ref revision, .. } if revision == "v9"),
        "{err:?}"
    );
    let err = anonymous
        .repo_info("user/tiny", "v9")
        .expect_err("missing revision");
    assert!(matches!(err, HubError::RevisionNotFound { .. }), "{err:?}");
    let err = download(&anonymous, "user/tiny", "main", "nope.json").expect_err("missing entry");
    assert!(
        matches!(err, HubError::EntryNotFound { ref path, .. } if path == "nope.json"),
        "{err:?}"
    );
    let err = download(&anonymous, "user/gated", "main", "model_index.json")
        .expect_err("gated, no token");
    assert!(matches!(err, HubError::GatedRepo { .. }), "{err:?}");
    let err =
        download(&reader, "user/gated", "main", "model_index.json").expect_err("gated, read token");
    assert!(matches!(err, HubError::GatedRepo { .. }), "{err:?}");
    let err =
        download(&anonymous, "user/private", "main", "model_index.json").expect_err("private");
    assert!(matches!(err, HubError::RepoNotFound { .. }), "{err:?}");
    assert!(download(&reader, "user/private", "main", "model_index.json").is_ok());
    let err = bad_token
        .repo_info("user/tiny", "main")
        .expect_err("bad token");
    assert!(matches!(err, HubError::Unauthorized { .. }), "{err:?}");
    let err = reader
        .create_repo("user/new", false, false)
        .expect_err("read-only token writes");
    assert!(matches!(err, HubError::Forbidden { .. }), "{err:?}");
    let writer = env.api(Some(WRITE_TOKEN));
    let err = writer
        .create_repo("user/tiny", false, false)
        .expect_err("exists");
    assert!(matches!(err, HubError::Conflict { .. }), "{err:?}");
    assert!(
        writer.create_repo("user/tiny", false, true).is_ok(),
        "exist_ok swallows 409"
    );
    env.server
        .inject(Fault::status("/api/models/user/tiny/revision/", 400, 1));
    let err = writer.repo_info("user/tiny", "main").expect_err("400");
    assert!(matches!(err, HubError::BadRequest { .. }), "{err:?}");
    env.server
        .inject(Fault::status("/api/models/user/tiny/revision/", 418, 1));
    let err = writer.repo_info("user/tiny", "main").expect_err("418");
    assert!(matches!(err, HubError::Http { status: 418, .. }), "{err:?}");
    let stale = diff_hub::CommitOptions {
        parent_commit: Some("0".repeat(40)),
        ..Default::default()
    };
    let op = diff_hub::CommitOperation::Delete {
        path_in_repo: "README.md".into(),
    };
    let err = writer
        .create_commit("user/tiny", &[op], &stale, &NoProgress)
        .expect_err("stale parent");
    assert!(
        matches!(err, HubError::PreconditionFailed { .. }),
        "{err:?}"
    );
}

#[test]
fn rate_limits_and_server_errors_are_retried_a_bounded_number_of_times() {
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    let api = env.api(None);
    // Two 429s (with Retry-After) then success: retried transparently.
    let mut fault = Fault::status("/api/models/user/tiny/revision/", 429, 2);
    fault.retry_after = Some(0);
    env.server.inject(fault);
    assert!(api.repo_info("user/tiny", "main").is_ok());
    // Always 429: RateLimited after max_attempts (5) tries.
    env.server.clear_requests();
    env.server
        .inject(Fault::status("/api/models/user/tiny/revision/", 429, 100));
    let err = api
        .repo_info("user/tiny", "main")
        .expect_err("rate limited");
    assert!(
        matches!(err, HubError::RateLimited { attempts: 5, .. }),
        "{err:?}"
    );
    assert_eq!(env.server.requests().len(), 5);
    // 503 forever on a download: Server error after 5 tries, nothing cached.
    let mut fault = Fault::status("/resolve/", 503, 100);
    fault.method = Some("HEAD".into());
    env.server.inject(fault);
    let err = download(&api, "user/tiny", "main", "model_index.json").expect_err("503");
    assert!(
        matches!(
            err,
            HubError::Server {
                status: 503,
                attempts: 5,
                ..
            }
        ),
        "{err:?}"
    );
    // A 500 on the second call of a download falls back to the cache like Python.
    let server_env = start(|_| {});
    tiny_repo(server_env.root.path(), "user/tiny");
    let api = server_env.api(None);
    download(&api, "user/tiny", "main", "model_index.json").expect("first download");
    let mut fault = Fault::status("/resolve/", 500, 100);
    fault.method = Some("HEAD".into());
    server_env.server.inject(fault);
    assert!(
        download(&api, "user/tiny", "main", "model_index.json").is_ok(),
        "cached copy served when the Hub fails"
    );
    // But a missing revision is never masked by the cache.
    let err = download(&api, "user/tiny", "v9", "model_index.json").expect_err("v9");
    assert!(
        !matches!(err, HubError::LocalEntryNotFound { .. }),
        "{err:?}"
    );
}

#[test]
fn network_failure_is_a_network_error_naming_the_url() {
    let env = start(|_| {});
    let mut config = env.config(None);
    config.endpoint = "http://127.0.0.1:9".into();
    config.max_attempts = 2;
    let err = diff_hub::HubApi::new(config)
        .repo_info("user/tiny", "main")
        .expect_err("refused");
    match err {
        HubError::Network { url, attempts, .. } => {
            assert_eq!(attempts, 2);
            assert!(
                url.starts_with("http://127.0.0.1:9/api/models/user/tiny"),
                "{url}"
            );
        }
        other => panic!("expected Network, got {other:?}"),
    }
}

#[test]
fn server_that_is_not_a_hub_is_a_protocol_error() {
    // A plain web server: 200 without X-Repo-Commit or ETag.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    let env = start(|_| {});
    let mut config = env.config(None);
    config.endpoint = format!("http://127.0.0.1:{port}");
    let err = diff_hub::HubApi::new(config)
        .get_file_metadata("user/tiny", "main", "x.json")
        .expect_err("not a hub");
    assert!(matches!(err, HubError::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("X-Repo-Commit"), "{err}");
    handle.join().expect("server thread");
}

#[test]
fn invalid_ids_paths_and_revisions_are_refused_before_any_request() {
    let env = start(|_| {});
    let api = env.api(None);
    for bad in [
        "",
        "a/b/c",
        "../etc",
        "a--b/c",
        "user/.hidden",
        "user/na me",
    ] {
        assert!(
            matches!(
                api.repo_info(bad, "main"),
                Err(HubError::InvalidRepoId { .. })
            ),
            "{bad}"
        );
    }
    for bad in ["../x", "/abs", "a\\b", "a//b", "a/./b", ""] {
        assert!(
            matches!(
                download(&api, "user/tiny", "main", bad),
                Err(HubError::InvalidPath { .. })
            ),
            "{bad}"
        );
    }
    for bad in ["../main", "refs/../../x", "a\nb"] {
        assert!(
            matches!(
                download(&api, "user/tiny", bad, "x.json"),
                Err(HubError::InvalidPath { .. })
            ),
            "{bad}"
        );
    }
    assert!(env.server.requests().is_empty());
}

/// A `tracing` writer that keeps every formatted line.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn token_never_appears_in_logs_or_errors() {
    let captured = Captured::default();
    let writer = captured.clone();
    // Global, with the `log` bridge: ureq's own `log` records (and every test running in
    // parallel in this binary) are captured too, at TRACE, with the filter a program must add
    // (`SECRET_LOG_TARGETS` off; the CLI adds it after RUST_LOG).
    let mut filter = tracing_subscriber::EnvFilter::new("trace");
    for target in diff_hub::SECRET_LOG_TARGETS {
        filter = filter.add_directive(format!("{target}=off").parse().expect("directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("first global subscriber of this test binary");
    let env = start(|_| {});
    tiny_repo(env.root.path(), "user/tiny");
    env.server.set_gated("user/tiny", true);
    let mut messages = Vec::new();
    for token in [WRITE_TOKEN, READ_TOKEN] {
        let api = env.api(Some(token));
        messages.push(format!("{api:?}"));
        messages.push(format!("{:?}", api.config()));
        env.server.inject(Fault::status("/api/models/", 503, 2));
        env.server.inject(Fault::truncate("/lfs/", 1000, 1));
        for result in [
            api.snapshot_download("user/tiny", &SnapshotOptions::default(), &NoProgress)
                .map(|_| ()),
            api.snapshot_download("user/missing", &SnapshotOptions::default(), &NoProgress)
                .map(|_| ()),
            api.create_repo("user/tiny", false, false).map(|_| ()),
            download(&api, "user/tiny", "v1", "a.json").map(|_| ()),
        ] {
            if let Err(e) = result {
                messages.push(e.to_string());
                messages.push(format!("{e:?}"));
            }
        }
    }
    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(logs.lines().count() > 3, "logging was captured: {logs}");
    assert!(
        logs.contains("ureq"),
        "the HTTP client's own log records were captured"
    );
    assert!(messages.len() > 8);
    for secret in [WRITE_TOKEN, READ_TOKEN] {
        assert!(!logs.contains(secret), "token in logs");
        // The HTTP library's wire dump prints 16 bytes a line: look for any 8 characters of
        // the token, not just the whole of it.
        for window in secret.as_bytes().windows(8) {
            let window = std::str::from_utf8(window).expect("ascii");
            assert!(
                !logs.contains(window),
                "part of the token in logs: {window}"
            );
        }
        assert!(
            messages.iter().all(|m| !m.contains(secret)),
            "token in {messages:?}"
        );
    }
}

/// Issue 18: a server whose tree pagination links back to the same page is detected instead
/// of being followed until memory runs out.
#[test]
fn pagination_that_links_back_to_itself_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut served = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            if request.starts_with("QUIT") {
                break;
            }
            let path = request.split(' ').nth(1).unwrap_or("/").to_string();
            let body = br#"[{"type":"file","oid":"0","size":1,"path":"a.json"}]"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nLink: <http://127.0.0.1:{port}{path}>; rel=\"next\"\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
            served += 1;
            if served > 50 {
                break;
            }
        }
        served
    });
    let env = start(|_| {});
    let mut config = env.config(None);
    config.endpoint = format!("http://127.0.0.1:{port}");
    let err = diff_hub::HubApi::new(config)
        .list_repo_tree("user/tiny", "main")
        .expect_err("looping pagination");
    assert!(
        matches!(err, HubError::Protocol { .. }) && err.to_string().contains("links back"),
        "{err}"
    );
    {
        use std::io::Write;
        let mut quit = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = quit.write_all(b"QUIT");
    }
    // The first page only: its link repeats it, so it is not fetched again.
    assert_eq!(handle.join().expect("server thread"), 1);
}

/// Issue 18: an endpoint that is not http(s) fails at once, without retries or waits.
#[test]
fn a_non_http_endpoint_fails_fast() {
    let env = start(|_| {});
    for endpoint in ["ftp://127.0.0.1:9", "localhost:9", "file:///etc"] {
        let mut config = env.config(None);
        config.endpoint = endpoint.into();
        config.retry_delay = std::time::Duration::from_secs(5);
        let started = std::time::Instant::now();
        let err = diff_hub::HubApi::new(config)
            .repo_info("user/tiny", "main")
            .expect_err("not http");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{endpoint}"
        );
        assert!(
            err.to_string().contains("only http:// and https://"),
            "{err}"
        );
    }
}

/// Issue 18: a huge HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT is clamped, never a panic.
#[test]
fn huge_timeouts_are_clamped() {
    for value in ["1e300", "18446744073709551616", "99999999999999999999"] {
        let config = diff_hub::HubConfig::from_lookup(|k| match k {
            "HF_HUB_CACHE" => Some("/c".into()),
            "HF_HUB_ETAG_TIMEOUT" | "HF_HUB_DOWNLOAD_TIMEOUT" => Some(value.into()),
            _ => None,
        })
        .expect("config");
        let max = std::time::Duration::from_secs_f64(diff_hub::MAX_TIMEOUT_SECS);
        assert_eq!(config.timeout, max, "{value}");
        assert_eq!(config.read_timeout, max, "{value}");
        // The client builds with it.
        let _ = diff_hub::HubApi::new(config);
    }
}

#[test]
fn printable_escapes_terminal_control_sequences() {
    assert_eq!(diff_hub::printable("unet/a.json"), "unet/a.json");
    assert_eq!(
        diff_hub::printable("x\u{1b}]0;owned\u{7}\r\n.bin"),
        "x\\u{1b}]0;owned\\u{7}\\u{d}\\u{a}.bin"
    );
}
