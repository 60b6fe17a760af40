//! `burn-diffusers download REPO`: fetch exactly the files a pipeline needs (diffusers' selection
//! rules for the variant) into the standard Hugging Face cache and print the snapshot folder.
//!
//! Also home of the pieces every command shares to accept a repo id where it takes a folder:
//! [`HubArgs`] (flatten it into a command's arguments) and [`resolve_source`].

use anyhow::{Context, Result, bail};
use burn_diffusers::format::SelectionOptions;
use burn_diffusers::hub::{HubApi, HubConfig, HubError, Progress, SnapshotOptions};
use clap::Parser;
use indicatif::ProgressBar;
use std::path::PathBuf;

/// Hub options shared by every command that accepts a repo id.
#[derive(Parser, Debug, Clone)]
pub struct HubArgs {
    /// Branch, tag, full commit hash or refs/pr/N.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Hub endpoint (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Use only the local cache; make no request (like HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl Default for HubArgs {
    /// `main`, the environment's endpoint and cache, online.
    fn default() -> Self {
        Self {
            revision: "main".into(),
            endpoint: None,
            offline: false,
            cache_dir: None,
        }
    }
}

impl HubArgs {
    /// The client these options describe (environment first, flags on top). The token comes
    /// from HF_TOKEN or the token file only, never from the command line.
    pub fn api(&self) -> Result<HubApi> {
        Ok(HubApi::new(self.config()?))
    }

    /// The environment's Hub settings with these flags applied.
    pub fn config(&self) -> Result<HubConfig> {
        let mut config = HubConfig::from_env().context("reading the Hugging Face environment")?;
        if let Some(endpoint) = &self.endpoint {
            config.endpoint = endpoint.trim_end_matches('/').to_string();
        }
        if let Some(dir) = &self.cache_dir {
            config.cache_dir = dir.clone();
        }
        config.offline |= self.offline;
        Ok(config)
    }
}

/// A local folder as is, or a repo id downloaded (pipeline selection for `variant`) into the
/// cache; returns the folder to load from. Every command taking a pipeline "folder or repo
/// id" calls this, which calls diff-hub's `HubApi::resolve`, the one place of the rule.
pub fn resolve_source(source: &str, hub: &HubArgs, variant: Option<&str>) -> Result<PathBuf> {
    let api = hub.api()?;
    let selection = SelectionOptions {
        variant: variant.map(str::to_string),
        ..Default::default()
    };
    let bar = Bar::new();
    let folder = api
        .resolve(source, &hub.revision, &selection, &bar)
        .with_context(|| format!("resolving `{source}`"))?;
    bar.0.finish_and_clear();
    Ok(folder)
}

/// [`resolve_source`] for a pattern selection (`allow_patterns`; every file when `None`)
/// rather than a pipeline's: diff-hub's `HubApi::resolve_snapshot`.
pub fn resolve_snapshot_source(
    source: &str,
    hub: &HubArgs,
    allow_patterns: Option<Vec<String>>,
) -> Result<PathBuf> {
    let api = hub.api()?;
    let options = SnapshotOptions {
        revision: hub.revision.clone(),
        allow_patterns,
        local_files_only: hub.offline,
        ..Default::default()
    };
    let bar = Bar::new();
    let folder = api
        .resolve_snapshot(source, &options, &bar)
        .with_context(|| format!("resolving `{source}`"))?;
    bar.0.finish_and_clear();
    Ok(folder)
}

/// Arguments of `download`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Repo id, e.g. stable-diffusion-v1-5/stable-diffusion-v1-5.
    pub repo: String,
    /// Weight variant to select (e.g. fp16).
    #[arg(long)]
    pub variant: Option<String>,
    /// Download every file of the repo instead of the pipeline's selection.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub hub: HubArgs,
}

/// An indicatif bar driven by diff-hub's progress callbacks.
pub struct Bar(pub ProgressBar);

impl Bar {
    /// A byte-count bar on stderr (hidden when stderr is not a terminal, and under `-q`).
    pub fn new() -> Self {
        Self(super::progress::bar(0, super::progress::DOWNLOAD_TEMPLATE))
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn on_start(&self, files: usize, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_message(format!("downloading {files} files"));
    }
    fn on_bytes(&self, _path: &str, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// Runs `download`: prints the snapshot folder on stdout.
pub fn run(args: Args) -> Result<()> {
    let api = args.hub.api()?;
    let bar = Bar::new();
    let result = if args.all {
        let options = SnapshotOptions {
            revision: args.hub.revision.clone(),
            ..Default::default()
        };
        api.resolve_snapshot(&args.repo, &options, &bar)
    } else {
        let selection = SelectionOptions {
            variant: args.variant.clone(),
            ..Default::default()
        };
        api.resolve(&args.repo, &args.hub.revision, &selection, &bar)
    };
    let folder = match result {
        Err(HubError::EntryNotFound { path, .. }) if path == "model_index.json" => bail!(
            "`{}` has no model_index.json at `{}`: not a diffusers pipeline (use --all to download every file)",
            args.repo,
            args.hub.revision
        ),
        other => other
            .with_context(|| format!("downloading `{}` at `{}`", args.repo, args.hub.revision))?,
    };
    bar.0.finish_and_clear();
    println!("{}", folder.display());
    Ok(())
}
