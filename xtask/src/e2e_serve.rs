//! `cargo xtask e2e`, scenario 5: `burn-diffusers serve` on loopback with the tiny SD fixture.
//!
//! - [5a] the official OpenAI Python client (`openai`, in the e2e venv) generates an image; its
//!   pixels equal `burn-diffusers generate`'s for the same seed and settings;
//! - [5b] curl drives the A1111 routes (txt2img, img2img, progress, samplers, sd-models,
//!   interrupt);
//! - [5c] bad requests (malformed JSON, size 7x7, steps 10^6, a 100 MB body, a corrupt image,
//!   a wrong token) each get a 4xx with a JSON error body, and the server goes on serving;
//! - [5d] a load test: 32 concurrent requests against a queue of 4, each answered with an
//!   image or a clean 429 / 503, none lost or hung; the server's peak RSS is printed and it is
//!   healthy afterwards;
//! - [5e] headless Chromium (Debian's `chromium` and `chromium-driver`, installed with apt-get
//!   when missing and possible; selenium in the venv) types a prompt, clicks, waits for the
//!   image, checks it decodes, and regenerates with the seed the page shows: same pixels. The
//!   screenshot goes to `target/e2e-work/serve-page.png`;
//! - [5f] SIGTERM: the server exits cleanly within its grace period.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "e2e-serve-key";
const PROMPT: &str = "a photo of an astronaut riding a horse on mars";

/// The `serve` child; killed on drop.
struct ServeProcess {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `curl` with a bounded time; returns (status, body).
fn curl(args: &[&str]) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-m", "180", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .context("running curl (is it installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

fn auth() -> String {
    format!("Authorization: Bearer {KEY}")
}

fn post_json(base: &str, path: &str, body: &str) -> Result<(u16, Value)> {
    let (code, text) = curl(&[
        "-H",
        &auth(),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        &format!("{base}{path}"),
    ])?;
    Ok((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn get_json(base: &str, path: &str) -> Result<(u16, Value)> {
    let (code, text) = curl(&["-H", &auth(), &format!("{base}{path}")])?;
    Ok((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn b64_decode(text: &str) -> Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .context("not base64")? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

fn pixels(png: &[u8]) -> Result<image::RgbImage> {
    Ok(image::load_from_memory(png)
        .context("decoding a served PNG")?
        .to_rgb8())
}

fn start(cli: &Path, root: &Path, work: &Path) -> Result<ServeProcess> {
    let port = free_port()?;
    let log = work.join("serve.log");
    let child = Command::new(cli)
        .args(["serve", "--model"])
        .arg(root.join("tests/fixtures/tiny-sd"))
        .args([
            "--offline",
            "--no-safety-checker",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api-key",
            KEY,
            "--queue",
            "4",
            "--default-steps",
            "4",
            "--max-body-mib",
            "8",
            "--shutdown-grace",
            "5",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting burn-diffusers serve")?;
    let server = ServeProcess {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok((200, _)) = curl(&[&format!("{}/ready", server.base)]) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "serve not ready in 180 s; log:\n{}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(server)
}

fn python_json(python: &Path, script: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .context("running the serve peer")?;
    ensure!(
        out.status.success(),
        "serve_peer.py {:?} failed:\n{}",
        args.first(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).context("serve peer output")
}

/// Makes sure Chromium, its driver and selenium are there; `false` (with a note) when they
/// cannot be installed here.
fn ensure_browser(python: &Path) -> bool {
    let have = |p: &str| Path::new(p).exists();
    if !(have("/usr/bin/chromium") && have("/usr/bin/chromedriver")) {
        eprintln!("  [5e] installing chromium and chromium-driver with apt-get");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-qq", "chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            || (Command::new("apt-get")
                .args(["update", "-qq"])
                .status()
                .is_ok_and(|s| s.success())
                && Command::new("apt-get")
                    .args(["install", "-y", "-qq", "chromium", "chromium-driver"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()));
        if !ok {
            return false;
        }
    }
    Command::new(python)
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs scenario 5.
pub fn run(cli: &Path, python: &Path, root: &Path, work: &Path) -> Result<()> {
    let work = work.join("serve");
    std::fs::create_dir_all(&work)?;
    let script = root.join("tests/e2e/serve_peer.py");
    let server = start(cli, root, &work)?;
    let base = server.base.clone();

    // [5a] OpenAI client vs `generate`.
    let cli_png = work.join("generate.png");
    let out = Command::new(cli)
        .args(["generate", "--model"])
        .arg(root.join("tests/fixtures/tiny-sd"))
        .args([
            "--offline",
            "--no-safety-checker",
            "--prompt",
            PROMPT,
            "--steps",
            "4",
            "--seed",
            "0",
            "--guidance",
            "7.5",
            "--height",
            "32",
            "--width",
            "32",
            "--scheduler",
            "DDIMScheduler",
            "--out",
        ])
        .arg(&cli_png)
        .output()?;
    ensure!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let openai_png = work.join("openai.png");
    let r = python_json(
        python,
        &script,
        &["openai", &base, KEY, &openai_png.to_string_lossy()],
    )?;
    let (a, b) = (
        pixels(&std::fs::read(&cli_png)?)?,
        pixels(&std::fs::read(&openai_png)?)?,
    );
    ensure!(
        a == b,
        "the OpenAI client's image differs from generate's for the same seed"
    );
    eprintln!(
        "  [5a] openai client: model {}, {} bytes; pixels equal to `generate --seed 0`",
        r["model"], r["bytes"]
    );

    // [5b] A1111 routes by curl.
    let (code, v) = post_json(
        &base,
        "/sdapi/v1/txt2img",
        &format!(
            r#"{{"prompt":"{PROMPT}","steps":4,"cfg_scale":7.5,"seed":0,"width":32,"height":32,"sampler_name":"DDIM"}}"#
        ),
    )?;
    ensure!(code == 200, "txt2img: {code} {v}");
    let txt = pixels(&b64_decode(v["images"][0].as_str().context("images")?)?)?;
    ensure!(
        txt == a,
        "A1111 txt2img differs from generate for the same seed"
    );
    let init = v["images"][0].as_str().unwrap_or_default().to_string();
    let (code, v) = post_json(
        &base,
        "/sdapi/v1/img2img",
        &format!(
            r#"{{"prompt":"a horse","steps":4,"seed":1,"init_images":["{init}"],"denoising_strength":0.5}}"#
        ),
    )?;
    ensure!(
        code == 200 && v["images"][0].is_string(),
        "img2img: {code} {v}"
    );
    for path in [
        "/sdapi/v1/progress",
        "/sdapi/v1/samplers",
        "/sdapi/v1/sd-models",
    ] {
        let (code, v) = get_json(&base, path)?;
        ensure!(code == 200 && !v.is_null(), "{path}: {code}");
    }
    let (code, _) = post_json(&base, "/sdapi/v1/interrupt", "{}")?;
    ensure!(code == 200, "interrupt: {code}");
    eprintln!(
        "  [5b] curl: txt2img (same pixels), img2img, progress, samplers, sd-models, interrupt"
    );

    // [5c] Bad requests.
    let big = work.join("big.json");
    {
        let f = std::fs::File::create(&big)?;
        f.set_len(100 * 1024 * 1024)?;
    }
    let corrupt =
        r#"{"prompt":"a","init_images":["iVBORw0KGgoAAAANSUhEUgAAACAAAAAgZ2FyYmFnZQ=="]}"#;
    let cases: Vec<(&str, Vec<String>, u16)> = vec![
        (
            "malformed JSON",
            vec![
                "--data-binary".into(),
                "{\"prompt\": ".into(),
                format!("{base}/v1/images/generations"),
            ],
            400,
        ),
        (
            "size 7x7",
            vec![
                "--data-binary".into(),
                r#"{"prompt":"a","size":"7x7"}"#.into(),
                format!("{base}/v1/images/generations"),
            ],
            400,
        ),
        (
            "steps 10^6",
            vec![
                "--data-binary".into(),
                r#"{"prompt":"a","steps":1000000}"#.into(),
                format!("{base}/sdapi/v1/txt2img"),
            ],
            400,
        ),
        (
            "100 MB body",
            vec![
                "--data-binary".into(),
                format!("@{}", big.display()),
                format!("{base}/v1/images/generations"),
            ],
            413,
        ),
        (
            "corrupt image",
            vec![
                "--data-binary".into(),
                corrupt.into(),
                format!("{base}/sdapi/v1/img2img"),
            ],
            400,
        ),
    ];
    for (what, args, want) in cases {
        let mut all = vec![
            "-H".to_string(),
            auth(),
            "-H".into(),
            "Content-Type: application/json".into(),
        ];
        all.extend(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, text) = curl(&refs)?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        ensure!(
            code == want && body["error"]["message"].is_string(),
            "{what}: expected {want} with a JSON error, got {code} {text}"
        );
        eprintln!("  [5c] {what}: {code} {}", body["error"]["message"]);
    }
    let (code, text) = curl(&[
        "-H",
        "Authorization: Bearer wrong",
        "--data-binary",
        r#"{"prompt":"a"}"#,
        &format!("{base}/v1/images/generations"),
    ])?;
    ensure!(
        code == 401 && text.contains("API key"),
        "wrong token: {code} {text}"
    );
    eprintln!("  [5c] wrong token: 401");
    let _ = std::fs::remove_file(&big);
    let (code, _) = get_json(&base, "/health")?;
    ensure!(code == 200, "unhealthy after bad requests");

    // [5d] Load: 32 concurrent requests, queue of 4.
    let pid = server.child.id().to_string();
    let r = python_json(python, &script, &["load", &base, KEY, &pid, "32"])?;
    let counts = r["counts"].as_object().context("counts")?;
    let n = |k: &str| counts.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (ok, busy) = (n("200"), n("429") + n("503"));
    ensure!(
        ok + busy == 32 && ok >= 1 && r["hung"] == 0,
        "load test: {r} (every request must be an image or a clean 429/503)"
    );
    let (code, _) = get_json(&base, "/health")?;
    ensure!(code == 200, "unhealthy after the load test");
    let (code, _) = post_json(
        &base,
        "/v1/images/generations",
        r#"{"prompt":"after","size":"16x16","steps":2}"#,
    )?;
    ensure!(code == 200, "no image after the load test: {code}");
    eprintln!(
        "  [5d] load: 32 concurrent, queue 4: {ok} images, {busy} refused (429/503), 0 lost or hung, {} s; peak RSS {} MiB; healthy after",
        r["seconds"],
        r["peak_rss_kib"].as_u64().unwrap_or(0) / 1024
    );

    // [5e] Browser.
    if ensure_browser(python) {
        let shot = work.join("serve-page.png");
        let r = python_json(
            python,
            &script,
            &["browser", &base, &shot.to_string_lossy(), KEY],
        )?;
        ensure!(r["status"] == "done", "browser: {r}");
        ensure!(
            r["decoded"][0] == true && r["decoded"][1] == 32,
            "browser image did not decode: {}",
            r["decoded"]
        );
        let page = pixels(&b64_decode(r["b64"].as_str().unwrap_or_default())?)?;
        let seed = r["seed"].as_str().unwrap_or_default();
        let (code, v) = post_json(
            &base,
            "/v1/images/generations",
            &format!(
                r#"{{"prompt":"a red circle on a blue square","size":"32x32","steps":4,"guidance":7.5,"seed":{seed}}}"#
            ),
        )?;
        ensure!(code == 200, "regenerating with the page's seed: {code} {v}");
        let again = pixels(&b64_decode(
            v["data"][0]["b64_json"].as_str().unwrap_or_default(),
        )?)?;
        ensure!(
            page == again,
            "the seed shown ({seed}) does not reproduce the page's image"
        );
        eprintln!(
            "  [5e] chromium: image decoded (32x32), seed {seed} reproduces it, history {}; screenshot {}",
            r["history"],
            shot.display()
        );
    } else {
        eprintln!("  [5e] SKIPPED: chromium / chromium-driver / selenium not installable here");
    }

    // [5f] Graceful stop on SIGTERM.
    let mut server = server;
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    ensure!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = server.child.try_wait()? {
            ensure!(s.success(), "serve exited with {s} after SIGTERM");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "serve did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("  [5f] SIGTERM: exited cleanly");
    Ok(())
}
