//! `burn-diffusers push DIR --repo ID` / `push --from MODEL --repo ID`: publish a pipeline.
//!
//! With DIR the folder is uploaded as it is (create the repo if needed, one commit or a pull
//! request); when it has no `README.md`, a model card is added to what is uploaded (a staged
//! copy, so the user's folder is never modified). With `--from`, MODEL (a folder or a repo id) is
//! first re-saved with the variant / dtype / shard size asked for, exactly as `save` does, and
//! published through `diff_convert::publish::push_to_hub` (diffusers' `push_to_hub`: a card
//! already on the Hub is kept). Either way the commit or PR URL is printed.

use super::download::Bar;
use anyhow::{Context, Result, bail};
use burn_diffusers::convert::SaveOptions;
use burn_diffusers::convert::card::{ModelCardOptions, write_model_card};
use burn_diffusers::convert::publish::{PushOptions, push_to_hub};
use burn_diffusers::hub::{CommitOptions, HubApi, HubConfig, UploadFolderOptions};
use clap::Parser;
use std::path::{Path, PathBuf};

/// Arguments of `push`.
#[derive(Parser, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["dir", "from"])))]
pub struct Args {
    /// The folder to upload as it is (e.g. one written by `save`).
    pub dir: Option<PathBuf>,
    /// Save this pipeline (a folder or a Hub repo id) with the options below, then upload it.
    #[arg(long, value_name = "MODEL")]
    pub from: Option<String>,
    /// Target repo id (`namespace/name`).
    #[arg(long)]
    pub repo: String,
    /// With --from: write the weights under this variant name (`fp16` / `bf16` also cast).
    #[arg(long, requires = "from")]
    pub variant: Option<String>,
    /// With --from: cast floating-point weights to f32, f16 or bf16.
    #[arg(long, value_name = "f32|f16|bf16", requires = "from")]
    pub dtype: Option<String>,
    /// With --from: shard weights larger than this ("10GB", "200KB" or bytes).
    #[arg(long, value_name = "SIZE", requires = "from")]
    pub max_shard_size: Option<String>,
    /// License for a new model card (e.g. `creativeml-openrail-m`).
    #[arg(long)]
    pub license: Option<String>,
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
    /// Commit summary (default with --from: diffusers' `Upload <ClassName>`).
    #[arg(long)]
    pub commit_message: Option<String>,
}

/// Runs `push`; the token comes from HF_TOKEN or the token file.
pub fn run(args: Args) -> Result<()> {
    super::check_card_field("--license", args.license.as_deref())?;
    if args.dir.is_some()
        && (args.variant.is_some() || args.dtype.is_some() || args.max_shard_size.is_some())
    {
        bail!(
            "--variant, --dtype and --max-shard-size apply to --from MODEL; DIR is uploaded as it is"
        );
    }
    let mut config = HubConfig::from_env().context("reading the Hugging Face environment")?;
    if let Some(endpoint) = &args.endpoint {
        config.endpoint = endpoint.trim_end_matches('/').to_string();
    }
    if config.token.is_none() {
        tracing::warn!("no token (HF_TOKEN or the token file): the Hub will refuse the upload");
    }
    let api = HubApi::new(config);
    let info = match (&args.dir, &args.from) {
        (Some(dir), None) => push_dir(&api, dir, &args)?,
        (None, Some(from)) => push_from(&api, from, &args)?,
        _ => bail!("give exactly one of DIR or --from MODEL"),
    };
    println!("{}", info.pr_url.unwrap_or(info.commit_url));
    Ok(())
}

/// `push --from`: re-save MODEL as `save` would, then `push_to_hub`.
fn push_from(api: &HubApi, from: &str, args: &Args) -> Result<burn_diffusers::hub::CommitInfo> {
    let dtype = super::convert::save_dtype(args.dtype.as_deref(), args.variant.as_deref())?;
    let mut save = SaveOptions {
        variant: args.variant.clone(),
        dtype,
        max_shard_size: None,
        name_or_path: Some(from.to_string()),
    };
    if let Some(size) = &args.max_shard_size {
        save = save.with_max_shard_size(size)?;
    }
    // A repo id source is read through the same endpoint the push goes to, from its main
    // branch (`--revision` names the branch pushed to).
    let hub = super::download::HubArgs {
        endpoint: args.endpoint.clone(),
        ..Default::default()
    };
    let src = super::download::resolve_source(from, &hub, args.variant.as_deref())?;
    let is_repo = !Path::new(from).exists();
    let options = PushOptions {
        save,
        card: ModelCardOptions {
            repo_id: Some(args.repo.clone()),
            license: args.license.clone(),
            base_model: is_repo.then(|| from.to_string()),
        },
        private: args.private,
        create_pr: args.create_pr,
        revision: Some(args.revision.clone()),
        commit_message: args.commit_message.clone(),
    };
    let bar = Bar::new();
    let info = push_to_hub(api, &src, &args.repo, &options, &bar)
        .with_context(|| format!("pushing {from} to `{}`", args.repo))?;
    bar.0.finish_and_clear();
    Ok(info)
}

/// `push DIR`: upload the folder as it is, plus a model card when it has none.
fn push_dir(api: &HubApi, dir: &Path, args: &Args) -> Result<burn_diffusers::hub::CommitInfo> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    api.create_repo(&args.repo, args.private, true)
        .with_context(|| format!("creating repo `{}`", args.repo))?;
    let staged = if dir.join("README.md").exists() {
        None
    } else {
        let tmp = std::env::temp_dir().join(format!(
            "burn-diffusers-push-dir-{}-{}",
            std::process::id(),
            args.repo.replace('/', "--")
        ));
        // Best effort: a leftover of an earlier crashed run with the same pid.
        let _ = std::fs::remove_dir_all(&tmp);
        stage_copy(dir, &tmp).with_context(|| format!("staging {} for upload", dir.display()))?;
        let card = ModelCardOptions {
            repo_id: Some(args.repo.clone()),
            license: args.license.clone(),
            base_model: None,
        };
        write_model_card(&tmp, &card)?;
        Some(tmp)
    };
    let folder = staged.as_deref().unwrap_or(dir);
    let bar = Bar::new();
    let options = UploadFolderOptions {
        commit: CommitOptions {
            commit_message: args
                .commit_message
                .clone()
                .unwrap_or_else(|| "Upload pipeline with burn-diffusers".into()),
            revision: args.revision.clone(),
            create_pr: args.create_pr,
            ..Default::default()
        },
        ..Default::default()
    };
    let result = api
        .upload_folder(&args.repo, folder, &options, &bar)
        .with_context(|| format!("uploading {} to `{}`", dir.display(), args.repo));
    bar.0.finish_and_clear();
    if let Some(tmp) = &staged {
        // Best effort: the staged copy is garbage whether the upload worked or not.
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

/// Mirrors `src` into `dst` with hard links (a copy where linking fails, e.g. across file
/// systems), so staging a multi-GB folder costs no disk space in the common case.
fn stage_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() || from.is_dir() {
            stage_copy(&from, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}
