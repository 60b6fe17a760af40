//! `push_to_hub`: save a pipeline in the diffusers layout and publish it through diff-hub.
//!
//! diffusers' `PushToHubMixin.push_to_hub` (`utils/hub_utils.py`): create the repo
//! (`exist_ok=True`), load the repo's existing model card or create one, `save_pretrained` into
//! a temporary folder (with the variant asked for), write the card, and upload the folder in
//! one commit (or a pull request), with the default message `"Upload <ClassName>"`. We do the
//! same; the card is [`crate::card`]'s (an existing remote `README.md` is kept, with
//! `library_name` filled in), and the save is [`crate::save::save_pipeline`] (so the dtype cast
//! and `max_shard_size` apply too).

use crate::ConvertError;
use crate::card::{ModelCardOptions, populate_existing_card, write_model_card};
use crate::save::{SaveOptions, save_pipeline, write_file};
use diff_hub::{CommitInfo, CommitOptions, DownloadOptions, HubApi, Progress, UploadFolderOptions};
use std::path::Path;

/// Options of [`push_to_hub`].
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// How to save (variant, dtype, shard size); `name_or_path` defaults to the source.
    pub save: SaveOptions,
    /// Card metadata for a new card (`repo_id` is filled in).
    pub card: ModelCardOptions,
    /// Create the repo private (when it does not exist yet).
    pub private: bool,
    /// Open a pull request instead of committing to `revision`.
    pub create_pr: bool,
    /// Branch to commit to (default `main`).
    pub revision: Option<String>,
    /// Commit message (default: diffusers' `"Upload <ClassName>"`).
    pub commit_message: Option<String>,
}

fn hub_err(what: &str, e: diff_hub::HubError) -> ConvertError {
    ConvertError::Hub(format!("{what}: {e}"))
}

/// Saves the pipeline folder `src` and publishes it as `repo_id`; returns the commit (or pull
/// request) information.
pub fn push_to_hub(
    api: &HubApi,
    src: &Path,
    repo_id: &str,
    options: &PushOptions,
    progress: &dyn Progress,
) -> Result<CommitInfo, ConvertError> {
    api.create_repo(repo_id, options.private, true)
        .map_err(|e| hub_err(&format!("creating repo `{repo_id}`"), e))?;
    let tmp = std::env::temp_dir().join(format!(
        "burn-diffusers-push-{}-{}",
        std::process::id(),
        repo_id.replace('/', "--")
    ));
    let out = tmp.join("repo");
    let result = (|| {
        save_pipeline(src, &out, &options.save)?;
        // An existing card on the Hub is kept (diffusers' `load_or_create_model_card`).
        let revision = options.revision.clone().unwrap_or_else(|| "main".into());
        let download = DownloadOptions {
            revision: revision.clone(),
            ..DownloadOptions::default()
        };
        match api.hf_hub_download(repo_id, "README.md", &download) {
            Ok(remote) => {
                let text =
                    std::fs::read_to_string(&remote).map_err(|e| ConvertError::io(&remote, e))?;
                write_file(
                    &out.join("README.md"),
                    populate_existing_card(&text).as_bytes(),
                )?;
            }
            Err(e) => {
                tracing::debug!("no model card on the Hub for {repo_id} ({e}); writing a new one");
                let card = ModelCardOptions {
                    repo_id: Some(repo_id.to_string()),
                    ..options.card.clone()
                };
                write_model_card(&out, &card)?;
            }
        }
        let class = std::fs::read_to_string(out.join("model_index.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v.get("_class_name")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "DiffusionPipeline".into());
        let upload = UploadFolderOptions {
            commit: CommitOptions {
                commit_message: options
                    .commit_message
                    .clone()
                    .unwrap_or_else(|| default_commit_message(&class)),
                revision,
                create_pr: options.create_pr,
                ..CommitOptions::default()
            },
            ..UploadFolderOptions::default()
        };
        api.upload_folder(repo_id, &out, &upload, progress)
            .map_err(|e| hub_err(&format!("uploading to `{repo_id}`"), e))
    })();
    // Best effort: the temporary copy is garbage whether the push worked or not.
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// diffusers' default commit message (`_upload_folder`): `"Upload model"` for class names
/// containing `Model`, `"Upload scheduler"` for `Scheduler`, else `"Upload <ClassName>"`.
pub fn default_commit_message(class_name: &str) -> String {
    if class_name.contains("Model") {
        "Upload model".into()
    } else if class_name.contains("Scheduler") {
        "Upload scheduler".into()
    } else {
        format!("Upload {class_name}")
    }
}
