//! `cargo xtask e2e`: burn-diffusers against the real Python `huggingface_hub`, through the
//! local Hub server, on loopback only.
//!
//! 1. Python `upload_folder` → `burn-diffusers download` → Python offline `snapshot_download`
//!    from the cache we wrote finds every file (and `scan_cache_dir` reports it clean); and the
//!    reverse: Python downloads, `burn-diffusers download --offline` resolves Python's cache.
//! 2. `burn-diffusers push` (LFS basic and multipart) → Python downloads → byte-identical; a
//!    `--create-pr` push lands on `refs/pr/1` only; `push --from` (save, fp16 variant, model
//!    card) → Python downloads it, `generate` loads it from the Hub, and `validate` of the
//!    fixture against the repo id passes (tensors and forward).
//! 3. An interrupted download (the server process exits mid-file) resumes with `Range` on the
//!    next run and ends with a verified blob.
//!
//! 4. (run after 2, printed as `[2d]`) `--with-diffusers` only (maintainers, not CI: it needs
//!    torch): the pushed repos load back
//!    in Python diffusers' `from_pretrained` from the local Hub (`HF_ENDPOINT`): the fp16-variant
//!    push of 2c and a sharded push (`push --from --max-shard-size 30KB`). Each runs one
//!    generation (fixed seed, few steps, `output_type="np"`, `tests/e2e/diffusers_peer.py`) that
//!    is compared with `burn-diffusers generate` on the same repo: every pixel within 2/255 and
//!    the mean absolute error under 0.5/255. Python then re-saves the sharded pipeline with
//!    `save_pretrained` (transformers 5.23 rewrites the tokenizer as `tokenizer.json`), and
//!    `burn-diffusers validate` must accept that save against the original fixture (files,
//!    tokenizers, forward: exact).
//!
//! Python comes from a venv of its own (`target/e2e-venv`, `huggingface_hub` only, never torch),
//! run with `HF_HUB_DISABLE_XET=1`; `--with-diffusers` also uses the fixture venv
//! (`.venv-fixtures/`, made by `cargo xtask fixtures`) and fails with a clear message without it.
//! Every wait is bounded and every server is stopped.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Python client version the protocol notes were verified with.
const HF_HUB_VERSION: &str = "2.4.0";
/// The OpenAI client and selenium versions scenario 5 (`serve`) runs.
const OPENAI_VERSION: &str = "3.51.0";
const SELENIUM_VERSION: &str = "4.40.0";
const TOKEN: &str = "hf_e2eWriteToken0000000000000000";
const REPO_PY: &str = "user/e2e-from-python";
const REPO_RS: &str = "user/e2e-from-rust";
const REPO_BIG: &str = "user/e2e-big";
const REPO_FROM: &str = "user/e2e-push-from";
const REPO_SHARDED: &str = "user/e2e-push-sharded";
/// The generation both diffusers and burn-diffusers run in scenario 4.
const GEN_PROMPT: &str = "an astronaut riding a horse";
const GEN_STEPS: &str = "3";
const GEN_SIZE: &str = "32";
/// Scenario 4's limits, in units of 1/255: the largest pixel difference and the mean one.
const MAX_PIXEL_DIFF: f64 = 2.0;
const MAX_MEAN_DIFF: f64 = 0.5;
const BIG_SIZE: usize = 6 * 1024 * 1024;

/// A running `xtask hub-server` child; killed on drop.
struct Server {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl Server {
    fn start(work: &Path, root: &Path, name: &str, extra: &[&str]) -> Result<Self> {
        let ready = work.join(format!("{name}.ready"));
        let log = work.join(format!("{name}.log.jsonl"));
        let _ = std::fs::remove_file(&ready);
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("hub-server")
            .arg("--root")
            .arg(root)
            .args([
                "--port",
                "0",
                "--token",
                TOKEN,
                "--multipart-chunk-size",
                "1048576",
            ])
            .arg("--log")
            .arg(&log)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdin(Stdio::null());
        let mut child = cmd.spawn().context("starting the hub server")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: Value = serde_json::from_str(&text).context("parsing the ready file")?;
                let endpoint = v["endpoint"]
                    .as_str()
                    .context("ready file has no endpoint")?
                    .to_string();
                return Ok(Self {
                    child,
                    endpoint,
                    log,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!("the hub server exited before listening ({status})");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the hub server did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    fn wait_exit(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the server did not exit within {limit:?}")
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment every peer runs with.
struct Peers {
    python: PathBuf,
    script: PathBuf,
    cli: PathBuf,
    home: PathBuf,
}

impl Peers {
    fn env(&self, cmd: &mut Command, endpoint: &str, cache: &Path, offline: bool) {
        for var in [
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_TOKEN_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HF_ENDPOINT", endpoint)
            .env("HF_HOME", &self.home)
            .env("HF_HUB_CACHE", cache)
            .env("HF_TOKEN", TOKEN)
            .env("HF_HUB_DISABLE_XET", "1")
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            .env("HF_HUB_ETAG_TIMEOUT", "5")
            .env("HF_HUB_DOWNLOAD_TIMEOUT", "5")
            .stdin(Stdio::null());
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
    }

    fn python(&self, args: &[&str], endpoint: &str, cache: &Path, offline: bool) -> Result<Value> {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script).args(args);
        self.env(&mut cmd, endpoint, cache, offline);
        let out = run_bounded(cmd, Duration::from_secs(120))?;
        ensure!(
            out.status.success(),
            "python peer {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .last()
            .context("python peer printed nothing")?;
        serde_json::from_str(line).with_context(|| format!("python peer output {line:?}"))
    }

    fn cli(&self, args: &[&str], endpoint: &str, cache: &Path) -> Result<Output> {
        let mut cmd = Command::new(&self.cli);
        cmd.args(args);
        self.env(&mut cmd, endpoint, cache, false);
        run_bounded(cmd, Duration::from_secs(180))
    }

    fn cli_ok(&self, args: &[&str], endpoint: &str, cache: &Path) -> Result<String> {
        let out = self.cli(args, endpoint, cache)?;
        ensure!(
            out.status.success(),
            "burn-diffusers {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// Runs a command with a time limit (the child is killed past it).
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output> {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("command timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn files_under(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for item in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = item?.path();
            if std::fs::metadata(&path)?.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir)?.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every file of `got` but those in `skip` exists in `want` with the same bytes (and `got` is
/// not empty).
fn same_files(got: &Path, want: &Path, what: &str, skip: &[&str]) -> Result<Vec<String>> {
    let mut files = files_under(got)?;
    // The Hub adds `.gitattributes` to every new repo; it is not part of what was uploaded.
    files.retain(|f| f != ".gitattributes" && !skip.contains(&f.as_str()));
    ensure!(!files.is_empty(), "{what}: {} is empty", got.display());
    for rel in &files {
        let a = std::fs::read(got.join(rel))?;
        let b = std::fs::read(want.join(rel))
            .with_context(|| format!("{what}: {rel} is not in {}", want.display()))?;
        ensure!(a == b, "{what}: {rel} differs from {}", want.display());
    }
    Ok(files)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for rel in files_under(from)? {
        let target = to.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from.join(&rel), &target)?;
    }
    Ok(())
}

fn pseudo_random(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn ensure_venv(target: &Path) -> Result<PathBuf> {
    let venv = target.join("e2e-venv");
    let python = if cfg!(windows) {
        venv.join("Scripts/python.exe")
    } else {
        venv.join("bin/python")
    };
    let stamp = venv.join(format!(
        ".huggingface_hub-{HF_HUB_VERSION}-openai-{OPENAI_VERSION}-selenium-{SELENIUM_VERSION}"
    ));
    if stamp.exists() {
        return Ok(python);
    }
    eprintln!(
        "xtask e2e: creating {} (huggingface_hub=={HF_HUB_VERSION} only)",
        venv.display()
    );
    let interpreter = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&interpreter)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .with_context(|| format!("running {interpreter} -m venv"))?;
    ensure!(status.success(), "creating the venv failed");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("huggingface_hub=={HF_HUB_VERSION}"))
        // `burn-diffusers serve`'s clients (scenario 5): the OpenAI client and selenium.
        .arg(format!("openai=={OPENAI_VERSION}"))
        .arg(format!("selenium=={SELENIUM_VERSION}"))
        .status()
        .context("pip install huggingface_hub")?;
    ensure!(
        status.success(),
        "pip install huggingface_hub=={HF_HUB_VERSION} failed"
    );
    std::fs::write(&stamp, b"")?;
    Ok(python)
}

/// Runs the task.
pub fn run(args: &[String]) -> Result<()> {
    // `--serve-only`: scenario 5 (`burn-diffusers serve`) alone, for work on the server.
    let serve_only = args.iter().any(|a| a == "--serve-only");
    let args: Vec<String> = args
        .iter()
        .filter(|a| *a != "--serve-only")
        .cloned()
        .collect();
    let with_diffusers = match args.as_slice() {
        [] => false,
        [flag] if flag == "--with-diffusers" => true,
        [arg, ..] => {
            bail!("unknown argument `{arg}` (cargo xtask e2e takes --with-diffusers, --serve-only)")
        }
    };
    let started = Instant::now();
    let root = crate::repo_root()?;
    let diffusers_python = if with_diffusers {
        Some(fixture_python(&root)?)
    } else {
        None
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask e2e: building burn-diffusers");
    let status = Command::new(&cargo)
        .args(["build", "-p", "diff-cli", "--bin", "burn-diffusers"])
        .current_dir(&root)
        .status()?;
    ensure!(status.success(), "building burn-diffusers failed");
    let cli = target.join("debug").join(if cfg!(windows) {
        "burn-diffusers.exe"
    } else {
        "burn-diffusers"
    });
    let python = ensure_venv(&target)?;
    let work = target.join("e2e-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let peers = Peers {
        python,
        script: root.join("tests/e2e/peer.py"),
        cli,
        home: work.join("hf-home"),
    };
    std::fs::create_dir_all(&peers.home)?;
    if serve_only {
        return crate::e2e_serve::run(&peers.cli, &peers.python, &root, &work);
    }
    let hub_root = work.join("hub");
    let fixture = root.join("tests/fixtures/tiny-sd");
    ensure!(
        fixture.join("model_index.json").is_file(),
        "{} is missing",
        fixture.display()
    );
    let scenarios = Instant::now();

    // 1. Python uploads; we download; Python reads our cache offline. And the reverse.
    let server = Server::start(&work, &hub_root, "hub", &[])?;
    let ep = server.endpoint.clone();
    let c1 = work.join("cache-rust");
    let c2 = work.join("cache-python");
    let up = peers.python(
        &["upload", REPO_PY, &fixture.to_string_lossy()],
        &ep,
        &work.join("cache-unused"),
        false,
    )?;
    eprintln!(
        "  python upload_folder -> commit {}",
        up["commit"].as_str().unwrap_or("?")
    );
    let ours = PathBuf::from(peers.cli_ok(&["download", REPO_PY], &ep, &c1)?);
    let selected = same_files(&ours, &fixture, "burn-diffusers download", &[])?;
    ensure!(
        selected.contains(&"unet/diffusion_pytorch_model.safetensors".to_string())
            && !selected.iter().any(|f| f.contains(".fp16.")),
        "pipeline selection: {selected:?}"
    );
    let before = server.requests().len();
    let mut py_args = vec!["snapshot", REPO_PY];
    for f in &selected {
        py_args.push("--allow");
        py_args.push(f);
    }
    let py_offline = peers.python(&py_args, &ep, &c1, true)?;
    ensure!(
        Path::new(py_offline["path"].as_str().unwrap_or("")) == ours,
        "python offline snapshot path {py_offline} vs {}",
        ours.display()
    );
    let scan = peers.python(&["scan"], &ep, &c1, true)?;
    ensure!(
        scan["warnings"].as_array().is_some_and(|w| w.is_empty()),
        "scan_cache_dir warnings: {scan}"
    );
    let scanned: Vec<String> = scan["repos"][0]["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        scanned == selected,
        "scan_cache_dir files {scanned:?} vs {selected:?}"
    );
    ensure!(
        scan["repos"][0]["refs"] == serde_json::json!(["main"]),
        "refs: {scan}"
    );
    ensure!(
        server.requests().len() == before,
        "python offline made requests"
    );
    eprintln!(
        "  [1a] python offline snapshot_download found all {} files burn-diffusers downloaded; scan_cache_dir clean",
        selected.len()
    );
    let theirs = peers.python(&["snapshot", REPO_PY], &ep, &c2, false)?;
    let theirs = PathBuf::from(theirs["path"].as_str().context("python snapshot path")?);
    let before = server.requests().len();
    let ours_offline =
        PathBuf::from(peers.cli_ok(&["download", REPO_PY, "--offline"], &ep, &c2)?);
    ensure!(
        ours_offline == theirs,
        "offline resolution {} vs python {}",
        ours_offline.display(),
        theirs.display()
    );
    same_files(&ours_offline, &fixture, "python download", &[])?;
    ensure!(
        server.requests().len() == before,
        "burn-diffusers --offline made requests"
    );
    eprintln!(
        "  [1b] burn-diffusers --offline resolved python's cache ({}), zero requests",
        theirs.display()
    );

    // 2. We push (LFS basic + multipart); Python downloads; byte-identical. Then a PR.
    let push_src = work.join("push-src");
    copy_dir(&fixture, &push_src)?;
    std::fs::create_dir_all(push_src.join("extra"))?;
    std::fs::write(
        push_src.join("extra/big.safetensors"),
        pseudo_random(3 * 1024 * 1024 + 17, 42),
    )?;
    let url = peers.cli_ok(
        &["push", &push_src.to_string_lossy(), "--repo", REPO_RS],
        &ep,
        &c1,
    )?;
    ensure!(
        url.contains("/user/e2e-from-rust/commit/"),
        "push printed {url}"
    );
    let requests = server.requests();
    let parts = requests
        .iter()
        .filter(|r| r["url"].as_str().is_some_and(|u| u.contains("/part/")))
        .count();
    ensure!(
        parts >= 4,
        "expected a multipart upload, saw {parts} part PUTs"
    );
    let pulled = peers.python(
        &["snapshot", REPO_RS],
        &ep,
        &work.join("cache-python-2"),
        false,
    )?;
    let pulled = PathBuf::from(pulled["path"].as_str().context("python snapshot path")?);
    let mut pushed_files = files_under(&push_src)?;
    pushed_files.retain(|f| f != ".gitattributes");
    // `push DIR` adds a model card when the folder has none (the folder itself is left alone).
    ensure!(
        !pushed_files.iter().any(|f| f == "README.md"),
        "the push source unexpectedly has a README.md"
    );
    let card = std::fs::read_to_string(pulled.join("README.md"))
        .context("python download of our push: the model card README.md is missing")?;
    ensure!(
        card.starts_with("---\nlibrary_name: diffusers\n"),
        "the pushed model card does not start with diffusers' front matter:\n{card}"
    );
    let mut got_files = same_files(
        &pulled,
        &push_src,
        "python download of our push",
        &["README.md"],
    )?;
    got_files.retain(|f| f != ".gitattributes");
    ensure!(
        got_files == pushed_files,
        "python got {got_files:?}, we pushed {pushed_files:?}"
    );
    eprintln!(
        "  [2a] burn-diffusers push ({parts} multipart parts) -> python snapshot_download: {} files byte-identical",
        got_files.len()
    );
    let pr_src = work.join("push-pr");
    std::fs::create_dir_all(&pr_src)?;
    std::fs::write(pr_src.join("notes.txt"), b"proposed change\n")?;
    let pr_url = peers.cli_ok(
        &[
            "push",
            &pr_src.to_string_lossy(),
            "--repo",
            REPO_RS,
            "--create-pr",
        ],
        &ep,
        &c1,
    )?;
    ensure!(
        pr_url.ends_with("/user/e2e-from-rust/discussions/1"),
        "PR push printed {pr_url}"
    );
    let pr_file = peers.python(
        &["file", REPO_RS, "notes.txt", "--revision", "refs/pr/1"],
        &ep,
        &work.join("cache-python-3"),
        false,
    )?;
    let pr_bytes = std::fs::read(pr_file["path"].as_str().context("path")?)?;
    ensure!(pr_bytes == b"proposed change\n", "PR file content");
    let mut cmd = Command::new(&peers.python);
    cmd.arg(&peers.script).args(["file", REPO_RS, "notes.txt"]);
    peers.env(&mut cmd, &ep, &work.join("cache-python-3"), false);
    ensure!(
        !run_bounded(cmd, Duration::from_secs(60))?.status.success(),
        "the PR must not touch main"
    );
    eprintln!(
        "  [2b] burn-diffusers push --create-pr -> {pr_url}; python reads it at refs/pr/1, main untouched"
    );

    // 2c. Save and publish in one step (`push --from`, fp16 variant, model card), then load the
    // pushed repo back: Python downloads it, and `generate` runs it through from_pretrained.
    let from_url = peers.cli_ok(
        &[
            "push",
            "--from",
            &fixture.to_string_lossy(),
            "--repo",
            REPO_FROM,
            "--variant",
            "fp16",
        ],
        &ep,
        &c1,
    )?;
    ensure!(
        from_url.contains("/user/e2e-push-from/commit/"),
        "push --from printed {from_url}"
    );
    let pulled = peers.python(
        &["snapshot", REPO_FROM],
        &ep,
        &work.join("cache-python-4"),
        false,
    )?;
    let pulled = PathBuf::from(pulled["path"].as_str().context("python snapshot path")?);
    let card = std::fs::read_to_string(pulled.join("README.md"))
        .context("push --from: no model card in the pushed repo")?;
    ensure!(
        card.starts_with("---\nlibrary_name: diffusers\n")
            && card.contains("diffusers:StableDiffusionPipeline"),
        "push --from: unexpected model card:\n{card}"
    );
    ensure!(
        pulled
            .join("unet/diffusion_pytorch_model.fp16.safetensors")
            .is_file(),
        "push --from --variant fp16: no fp16 UNet weights in the pushed repo"
    );
    let png = work.join("push-from.png");
    peers.cli_ok(
        &[
            "generate",
            "--model",
            REPO_FROM,
            "--endpoint",
            &ep,
            "--variant",
            "fp16",
            "--prompt",
            "an astronaut",
            "--steps",
            "2",
            "--seed",
            "0",
            "--out",
            &png.to_string_lossy(),
        ],
        &ep,
        &work.join("cache-rust-from"),
    )?;
    ensure!(
        png.is_file(),
        "generate from the pushed repo wrote no image"
    );
    // The pushed repo, read back through the Hub, is the fixture: configs, every tensor (exact
    // after the f16 cast), tokenizer and one forward of each model (within the f16 tolerance).
    let validated = peers.cli_ok(
        &[
            "validate",
            &fixture.to_string_lossy(),
            REPO_FROM,
            "--variant",
            "fp16",
        ],
        &ep,
        &work.join("cache-rust-validate"),
    )?;
    let forward_lines = validated
        .lines()
        .filter(|l| l.starts_with("ok") && l.contains(" forward "))
        .count();
    ensure!(
        forward_lines == 4,
        "validate of the pushed repo: expected 4 forward lines (safety_checker, text_encoder, \
         unet, vae):\n{validated}"
    );
    eprintln!(
        "  [2c] burn-diffusers push --from (fp16 variant, model card) -> python downloads it; generate loads it back from the hub; validate (fixture vs the hub repo) passes with {forward_lines} forward checks"
    );
    if let Some(python) = &diffusers_python {
        load_in_diffusers(&peers, python, &root, &work, &ep, &fixture)?;
    }
    drop(server);

    // 3. The server dies mid-file; the next run resumes with Range and verifies the blob.
    let big = pseudo_random(BIG_SIZE, 7);
    std::fs::create_dir_all(hub_root.join(REPO_BIG))?;
    std::fs::write(hub_root.join(REPO_BIG).join("big.safetensors"), &big)?;
    std::fs::write(
        hub_root.join(REPO_BIG).join("config.json"),
        b"{\"size\": 6291456}\n",
    )?;
    let c4 = work.join("cache-resume");
    let mut dying = Server::start(
        &work,
        &hub_root,
        "dying",
        &["--exit-after-bytes", "2000000"],
    )?;
    let out = peers.cli(
        &["download", REPO_BIG, "--all"],
        &dying.endpoint.clone(),
        &c4,
    )?;
    ensure!(
        !out.status.success(),
        "the download should fail when the server dies"
    );
    dying.wait_exit(Duration::from_secs(10))?;
    let blobs = c4.join("models--user--e2e-big/blobs");
    let partial: Vec<(String, u64)> = files_under(&blobs)?
        .into_iter()
        .map(|f| {
            let len = std::fs::metadata(blobs.join(&f))
                .map(|m| m.len())
                .unwrap_or(0);
            (f, len)
        })
        .filter(|(f, _)| f.ends_with(".incomplete"))
        .collect();
    let [(incomplete, partial_len)] = partial.as_slice() else {
        bail!("expected one .incomplete file, found {partial:?}");
    };
    ensure!(
        *partial_len > 0 && (*partial_len as usize) < BIG_SIZE,
        "partial length {partial_len}"
    );
    let sha = incomplete.trim_end_matches(".incomplete").to_string();
    ensure!(
        !blobs.join(&sha).exists(),
        "a cut download must not leave a blob"
    );
    eprintln!(
        "  [3a] server exited mid-file: {partial_len} of {BIG_SIZE} bytes kept as {incomplete}"
    );
    let server = Server::start(&work, &hub_root, "restarted", &[])?;
    let folder =
        PathBuf::from(peers.cli_ok(&["download", REPO_BIG, "--all"], &server.endpoint, &c4)?);
    ensure!(
        std::fs::read(folder.join("big.safetensors"))? == big,
        "resumed file differs"
    );
    ensure!(std::fs::read(blobs.join(&sha))? == big, "blob differs");
    ensure!(!blobs.join(incomplete).exists(), ".incomplete left behind");
    let wanted = format!("bytes={partial_len}-");
    let resumed = server.requests().iter().any(|r| {
        r["method"] == "GET"
            && r["headers"].as_array().is_some_and(|h| {
                h.iter()
                    .any(|kv| kv[0] == "range" && kv[1] == wanted.as_str())
            })
    });
    ensure!(resumed, "no GET with Range: {wanted} in the server log");
    let py = peers.python(
        &["file", REPO_BIG, "big.safetensors"],
        &server.endpoint,
        &c4,
        true,
    )?;
    ensure!(
        std::fs::read(py["path"].as_str().context("path")?)? == big,
        "python offline read of the resumed blob"
    );
    eprintln!(
        "  [3b] restarted: resumed with Range: {wanted}; blob {sha} verified (sha256); python offline reads it"
    );
    drop(server);
    crate::e2e_serve::run(&peers.cli, &peers.python, &root, &work)?;
    eprintln!(
        "xtask e2e: all scenarios passed in {:.1} s ({:.1} s total including build and venv)",
        scenarios.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The fixture venv's Python, checked to import diffusers and torch.
fn fixture_python(root: &Path) -> Result<PathBuf> {
    let python = root.join(if cfg!(windows) {
        ".venv-fixtures/Scripts/python.exe"
    } else {
        ".venv-fixtures/bin/python"
    });
    ensure!(
        python.is_file(),
        "cargo xtask e2e --with-diffusers needs the fixture venv with torch and diffusers, and {} \
         does not exist: run `cargo xtask fixtures` once to create it (it installs \
         tests/fixtures/requirements.txt), or run `cargo xtask e2e` without --with-diffusers",
        python.display()
    );
    let mut cmd = Command::new(&python);
    cmd.args([
        "-c",
        "import diffusers, torch; print(diffusers.__version__, torch.__version__)",
    ]);
    let out = run_bounded(cmd, Duration::from_secs(120))?;
    ensure!(
        out.status.success(),
        "cargo xtask e2e --with-diffusers: {} cannot import diffusers and torch (re-create the \
         venv with `cargo xtask fixtures`):\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "xtask e2e: --with-diffusers using {} (diffusers, torch: {})",
        python.display(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(python)
}

/// The float32 tensor `images` of a safetensors file (the layout both generators write), with
/// its shape.
fn read_images(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let len = usize::try_from(u64::from_le_bytes(head))?;
    let header: Value = serde_json::from_slice(
        bytes
            .get(8..8 + len)
            .with_context(|| format!("{}: truncated header", path.display()))?,
    )?;
    let info = &header["images"];
    ensure!(
        info["dtype"] == "F32",
        "{}: `images` is {} (expected F32)",
        path.display(),
        info["dtype"]
    );
    let shape: Vec<usize> = info["shape"]
        .as_array()
        .context("no shape")?
        .iter()
        .filter_map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
        .collect();
    let offsets: Vec<usize> = info["data_offsets"]
        .as_array()
        .context("no data_offsets")?
        .iter()
        .filter_map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
        .collect();
    let [begin, end] = offsets.as_slice() else {
        bail!("{}: bad data_offsets", path.display());
    };
    let data = bytes
        .get(8 + len + begin..8 + len + end)
        .with_context(|| format!("{}: data out of range", path.display()))?;
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ensure!(
        values.len() == shape.iter().product::<usize>(),
        "{}: {} values for shape {shape:?}",
        path.display(),
        values.len()
    );
    Ok((shape, values))
}

/// Scenario 4: Python diffusers loads what burn-diffusers pushed, and both generate alike.
fn load_in_diffusers(
    peers: &Peers,
    python: &Path,
    root: &Path,
    work: &Path,
    ep: &str,
    fixture: &Path,
) -> Result<()> {
    let url = peers.cli_ok(
        &[
            "push",
            "--from",
            &fixture.to_string_lossy(),
            "--repo",
            REPO_SHARDED,
            "--max-shard-size",
            "30KB",
        ],
        ep,
        &work.join("cache-rust"),
    )?;
    ensure!(
        url.contains("/user/e2e-push-sharded/commit/"),
        "push --from --max-shard-size printed {url}"
    );
    let cases: [(&str, &str, Option<&str>, &str); 2] = [
        (
            "fp16",
            REPO_FROM,
            Some("fp16"),
            "unet/diffusion_pytorch_model.fp16.safetensors",
        ),
        (
            "sharded",
            REPO_SHARDED,
            None,
            "unet/diffusion_pytorch_model.safetensors.index.json",
        ),
    ];
    for (label, repo, variant, must_have) in cases {
        let cache = work.join(format!("cache-diffusers-{label}"));
        let py_out = work.join(format!("diffusers-{label}.safetensors"));
        let mut cmd = Command::new(python);
        cmd.arg(root.join("tests/e2e/diffusers_peer.py"))
            .args(["generate", repo, "--out"])
            .arg(&py_out)
            .args([
                "--prompt", GEN_PROMPT, "--steps", GEN_STEPS, "--seed", "0", "--height", GEN_SIZE,
                "--width", GEN_SIZE,
            ]);
        if let Some(v) = variant {
            cmd.args(["--variant", v]);
        }
        let py_saved = work.join(format!("diffusers-saved-{label}"));
        if variant.is_none() {
            cmd.arg("--save").arg(&py_saved);
        }
        peers.env(&mut cmd, ep, &cache, false);
        let out = run_bounded(cmd, Duration::from_secs(600))?;
        ensure!(
            out.status.success(),
            "[2d {label}] Python diffusers from_pretrained({repo}) / generation failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let info: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
            .with_context(|| format!("diffusers peer output {stdout:?}"))?;
        let downloaded = files_under(&cache)?;
        ensure!(
            downloaded.iter().any(|f| f.ends_with(must_have)),
            "[2d {label}] Python diffusers did not load {must_have}; it downloaded {downloaded:?}"
        );
        if label == "sharded" {
            ensure!(
                downloaded
                    .iter()
                    .any(|f| f.contains("unet/diffusion_pytorch_model-00001-of-")),
                "[2d sharded] Python diffusers did not download the UNet shards: {downloaded:?}"
            );
        }
        let rs_out = work.join(format!("burn-diffusers-{label}.safetensors"));
        let mut args = vec![
            "generate",
            "--model",
            repo,
            "--endpoint",
            ep,
            "--prompt",
            GEN_PROMPT,
            "--steps",
            GEN_STEPS,
            "--seed",
            "0",
            "--height",
            GEN_SIZE,
            "--width",
            GEN_SIZE,
        ];
        if let Some(v) = variant {
            args.extend(["--variant", v]);
        }
        let rs_path = rs_out.to_string_lossy().into_owned();
        args.extend(["--out-array", rs_path.as_str()]);
        peers.cli_ok(&args, ep, &work.join(format!("cache-rust-{label}")))?;
        let (shape_py, py) = read_images(&py_out)?;
        let (shape_rs, rs) = read_images(&rs_out)?;
        ensure!(
            shape_py == shape_rs,
            "[2d {label}] image shapes: diffusers {shape_py:?}, burn-diffusers {shape_rs:?}"
        );
        let (mut max, mut sum) = (0f64, 0f64);
        for (a, b) in py.iter().zip(&rs) {
            let d = f64::from((a - b).abs()) * 255.0;
            max = max.max(d);
            sum += d;
        }
        let mean = sum / py.len().max(1) as f64;
        ensure!(
            max <= MAX_PIXEL_DIFF && mean < MAX_MEAN_DIFF,
            "[2d {label}] burn-diffusers vs diffusers on {repo}: max pixel difference {max:.4}/255 \
             (limit {MAX_PIXEL_DIFF}/255), mean {mean:.4}/255 (limit {MAX_MEAN_DIFF}/255)"
        );
        let (lo, hi) = py
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        eprintln!(
            "  [2d {label}] python diffusers {} from_pretrained({repo}) -> {}, {} weights; {GEN_STEPS} \
             steps, images {shape_py:?} with values in [{lo:.3}, {hi:.3}], NSFW flags {}; vs \
             burn-diffusers generate: max |diff| {max:.2e}/255, mean {mean:.2e}/255 (limits \
             {MAX_PIXEL_DIFF}/255, {MAX_MEAN_DIFF}/255)",
            info["diffusers"].as_str().unwrap_or("?"),
            info["class"].as_str().unwrap_or("?"),
            info["dtype"].as_str().unwrap_or("?"),
            info["nsfw"],
        );
        if variant.is_none() {
            let report = peers.cli(
                &[
                    "validate",
                    &fixture.to_string_lossy(),
                    &py_saved.to_string_lossy(),
                ],
                ep,
                &cache,
            )?;
            let text = String::from_utf8_lossy(&report.stdout);
            ensure!(
                report.status.success(),
                "[2d {label}] burn-diffusers validate rejects Python diffusers' save_pretrained of \
                 {repo}:\n{text}{}",
                String::from_utf8_lossy(&report.stderr)
            );
            let lines = text.lines().count();
            let tokens = text
                .lines()
                .find(|l| l.contains(" tokens "))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            eprintln!(
                "  [2d {label}] python save_pretrained of it validates against the fixture ({lines} \
                 report lines, all ok; {tokens})"
            );
        }
    }
    Ok(())
}
