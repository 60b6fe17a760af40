//! `cargo xtask hub-server --root DIR --port PORT`: the local Hub server (crate
//! `diff-hub-server`) in the foreground. `DIR/<org>/<name>/` folders are model repos; uploads land
//! there too. Point clients at it with `HF_ENDPOINT=http://127.0.0.1:PORT`.
//!
//! Options: `--storage-port P` (LFS origin, default PORT+1; 0 picks free ports), `--token T`
//! (write token, repeatable; none = no auth), `--read-token T`, `--log FILE` (JSON lines),
//! `--multipart-chunk-size BYTES`, `--exit-after-bytes N` (die mid-file once, for resume tests),
//! `--ready-file FILE` (written with the endpoints once listening).

use anyhow::{Context, Result, bail};
use diff_hub_server::{HubServer, ServerConfig};
use std::path::PathBuf;

/// Parses the arguments into a server configuration plus the optional ready file.
pub fn parse(args: &[String]) -> Result<(ServerConfig, Option<PathBuf>)> {
    let mut root = None;
    let mut port: Option<u16> = None;
    let mut storage_port: Option<u16> = None;
    let mut config = ServerConfig::new(PathBuf::new());
    let mut ready = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "--root" => root = Some(PathBuf::from(value("--root")?)),
            "--port" => port = Some(value("--port")?.parse().context("--port")?),
            "--storage-port" => {
                storage_port = Some(value("--storage-port")?.parse().context("--storage-port")?)
            }
            "--token" => config.write_tokens.push(value("--token")?),
            "--read-token" => config.read_tokens.push(value("--read-token")?),
            "--log" => config.log_file = Some(PathBuf::from(value("--log")?)),
            "--multipart-chunk-size" => {
                config.multipart_chunk_size = value("--multipart-chunk-size")?
                    .parse()
                    .context("--multipart-chunk-size")?
            }
            "--exit-after-bytes" => {
                config.exit_after_bytes = Some(
                    value("--exit-after-bytes")?
                        .parse()
                        .context("--exit-after-bytes")?,
                )
            }
            "--ready-file" => ready = Some(PathBuf::from(value("--ready-file")?)),
            other => bail!(
                "unknown argument `{other}`\nusage: cargo xtask hub-server --root DIR --port PORT [options]"
            ),
        }
    }
    config.root = root.context("--root DIR is required")?;
    let port = port.context("--port PORT is required (0 picks a free one)")?;
    config.port = port;
    config.storage_port =
        storage_port.unwrap_or(if port == 0 { 0 } else { port.saturating_add(1) });
    Ok((config, ready))
}

/// Runs the server until the process is stopped.
pub fn run(args: &[String]) -> Result<()> {
    let (config, ready) = parse(args)?;
    let root = config.root.clone();
    let server = HubServer::start(config)
        .with_context(|| format!("starting the hub server on {}", root.display()))?;
    eprintln!(
        "hub-server: serving {} at {} (storage {}); stop with Ctrl-C",
        root.display(),
        server.endpoint(),
        server.storage_url()
    );
    if let Some(path) = ready {
        let text = format!(
            "{{\"endpoint\": \"{}\", \"storage\": \"{}\"}}\n",
            server.endpoint(),
            server.storage_url()
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    server.wait();
    Ok(())
}
