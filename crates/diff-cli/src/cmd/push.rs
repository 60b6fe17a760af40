//! `burn-diffusers push DIR --repo ID`: upload a folder as it is (create the repo if needed,
//! one commit or a pull request) and print the commit or PR URL.

use super::download::Bar;
use anyhow::{Context, Result, bail};
use burn_diffusers::hub::{CommitOptions, HubApi, HubConfig, UploadFolderOptions};
use clap::Parser;
use std::path::PathBuf;

/// Arguments of `push`.
#[derive(Parser, Debug)]
pub struct Args {
    /// The folder to upload (e.g. one written by `save`).
    pub dir: PathBuf,
    /// Target repo id (`namespace/name`).
    #[arg(long)]
    pub repo: String,
    /// Hub endpoint (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Create the repo as private (ignored when it exists).
    #[arg(long)]
    pub private: bool,
    /// Open a pull request instead of committing to the branch.
    #[arg(long)]
    pub create_pr: bool,
    /// Branch to commit to (the PR base with --create-pr).
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Commit summary.
    #[arg(long, default_value = "Upload pipeline with burn-diffusers")]
    pub commit_message: String,
}

/// Runs `push`; the token comes from HF_TOKEN or the token file.
pub fn run(args: Args) -> Result<()> {
    if !args.dir.is_dir() {
        bail!("{} is not a folder", args.dir.display());
    }
    let mut config = HubConfig::from_env().context("reading the Hugging Face environment")?;
    if let Some(endpoint) = &args.endpoint {
        config.endpoint = endpoint.trim_end_matches('/').to_string();
    }
    if config.token.is_none() {
        tracing::warn!("no token (HF_TOKEN or the token file): the Hub will refuse the upload");
    }
    let api = HubApi::new(config);
    api.create_repo(&args.repo, args.private, true)
        .with_context(|| format!("creating repo `{}`", args.repo))?;
    let bar = Bar::new();
    let options = UploadFolderOptions {
        commit: CommitOptions {
            commit_message: args.commit_message.clone(),
            revision: args.revision.clone(),
            create_pr: args.create_pr,
            ..Default::default()
        },
        ..Default::default()
    };
    let info = api
        .upload_folder(&args.repo, &args.dir, &options, &bar)
        .with_context(|| format!("uploading {} to `{}`", args.dir.display(), args.repo))?;
    bar.0.finish_and_clear();
    println!("{}", info.pr_url.unwrap_or(info.commit_url));
    Ok(())
}
