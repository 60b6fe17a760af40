//! Model cards (`README.md`) for saved pipelines.
//!
//! diffusers' `push_to_hub` keeps a card the repo already has, only filling `library_name:
//! diffusers` when it is missing (`populate_model_card`, `utils/hub_utils.py`); otherwise it
//! starts from huggingface_hub's default template with almost empty metadata. We keep the first
//! rule exactly, and for a new card write the metadata the Hub uses to list and run a diffusers
//! pipeline: `library_name: diffusers`, `pipeline_tag`, `license` and `base_model` when known,
//! and tags with the pipeline class and `diffusers:<Class>` (the tag the Hub derives from
//! `model_index.json`), followed by a usage section for burn-diffusers and Python diffusers.

use crate::ConvertError;
use crate::save::write_file;
use std::path::Path;

/// What a new card says.
#[derive(Debug, Clone, Default)]
pub struct ModelCardOptions {
    /// The Hub repo id the folder is (or will be) published as; used in the usage snippets.
    pub repo_id: Option<String>,
    /// An SPDX-style license id or a Hub license name (`creativeml-openrail-m`, `openrail++`).
    pub license: Option<String>,
    /// The repo this model derives from.
    pub base_model: Option<String>,
}

/// The Hub `pipeline_tag` of a diffusers pipeline class.
pub fn pipeline_tag(class_name: &str) -> &'static str {
    if class_name.contains("Img2Img") || class_name.contains("Inpaint") {
        "image-to-image"
    } else {
        "text-to-image"
    }
}

fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+".contains(c))
        && !s.starts_with(['-', '.']);
    if plain {
        return s.to_string();
    }
    // A YAML double-quoted scalar with every control character escaped, so a newline in a
    // license or base model can never end the front matter or add a key.
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' || c == '\u{feff}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` on one line for the card's Markdown body: control characters shown as `\u{..}`.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The text of a new card for a pipeline of class `class_name`.
pub fn render_model_card(class_name: &str, options: &ModelCardOptions) -> String {
    let mut out = String::from("---\nlibrary_name: diffusers\n");
    if let Some(l) = &options.license {
        out.push_str(&format!("license: {}\n", yaml_scalar(l)));
    }
    if let Some(b) = &options.base_model {
        out.push_str(&format!("base_model: {}\n", yaml_scalar(b)));
    }
    out.push_str(&format!("pipeline_tag: {}\n", pipeline_tag(class_name)));
    out.push_str("tags:\n- diffusers\n");
    out.push_str(&format!(
        "- {}\n- {}\n",
        yaml_scalar(class_name),
        yaml_scalar(&format!("diffusers:{class_name}"))
    ));
    out.push_str("- burn-diffusers\n---\n\n");
    let repo = one_line(options.repo_id.as_deref().unwrap_or("<this-repo>"));
    let class_name = &one_line(class_name);
    out.push_str(&format!("# {repo}\n\n"));
    out.push_str(&format!(
        "A 🧨 diffusers `{class_name}` saved in the diffusers layout by burn-diffusers.\n\n"
    ));
    out.push_str("## Usage\n\n### burn-diffusers (Rust)\n\n```bash\n");
    out.push_str(&format!(
        "burn-diffusers generate {repo} --prompt \"a photo of an astronaut riding a horse\"\n"
    ));
    out.push_str(
        "```\n\n### Python diffusers\n\n```python\nfrom diffusers import DiffusionPipeline\n\n",
    );
    out.push_str(&format!(
        "pipe = DiffusionPipeline.from_pretrained(\"{repo}\")\n"
    ));
    out.push_str("image = pipe(\"a photo of an astronaut riding a horse\").images[0]\n```\n");
    out
}

/// Adds `library_name: diffusers` to an existing card's front matter when it lacks one (and a
/// front matter when it has none), leaving everything else as it was.
pub fn populate_existing_card(text: &str) -> String {
    if let Some(rest) = text.strip_prefix("---\n")
        && let Some(end) = rest.find("\n---")
    {
        let front = &rest[..end];
        if front.lines().any(|l| l.starts_with("library_name:")) {
            return text.to_string();
        }
        let sep = if front.is_empty() { "" } else { "\n" };
        return format!("---\n{front}{sep}library_name: diffusers{}", &rest[end..]);
    }
    format!("---\nlibrary_name: diffusers\n---\n{text}")
}

/// Writes `README.md` into a pipeline folder: a new card if there is none, else the existing one
/// with `library_name` filled in. Returns whether a new card was written.
pub fn write_model_card(folder: &Path, options: &ModelCardOptions) -> Result<bool, ConvertError> {
    let readme = folder.join("README.md");
    if readme.is_file() {
        let text = std::fs::read_to_string(&readme).map_err(|e| ConvertError::io(&readme, e))?;
        let updated = populate_existing_card(&text);
        if updated != text {
            write_file(&readme, updated.as_bytes())?;
        }
        return Ok(false);
    }
    let index = folder.join("model_index.json");
    let class = std::fs::read_to_string(&index)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("_class_name")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "DiffusionPipeline".to_string());
    write_file(&readme, render_model_card(&class, options).as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_card_has_hub_metadata_and_usage() {
        let card = render_model_card(
            "StableDiffusionXLPipeline",
            &ModelCardOptions {
                repo_id: Some("me/tiny-sdxl".into()),
                license: Some("openrail++".into()),
                base_model: Some("stabilityai/stable-diffusion-xl-base-1.0".into()),
            },
        );
        assert!(card.starts_with(
            "---\nlibrary_name: diffusers\nlicense: openrail++\nbase_model: stabilityai/stable-diffusion-xl-base-1.0\npipeline_tag: text-to-image\ntags:\n- diffusers\n- StableDiffusionXLPipeline\n- \"diffusers:StableDiffusionXLPipeline\"\n- burn-diffusers\n---\n"
        ), "{card}");
        assert!(card.contains("DiffusionPipeline.from_pretrained(\"me/tiny-sdxl\")"));
        assert!(card.contains("burn-diffusers generate me/tiny-sdxl"));
    }

    #[test]
    fn existing_card_is_kept_and_library_name_filled_like_diffusers() {
        assert_eq!(
            populate_existing_card("---\nlicense: mit\n---\n# Hi\n"),
            "---\nlicense: mit\nlibrary_name: diffusers\n---\n# Hi\n"
        );
        let done = "---\nlibrary_name: other\n---\nx";
        assert_eq!(populate_existing_card(done), done);
        assert_eq!(
            populate_existing_card("# Bare\n"),
            "---\nlibrary_name: diffusers\n---\n# Bare\n"
        );
    }

    /// Issue 18: newlines and other control characters in `--license` / `--base-model` stay
    /// inside one quoted YAML scalar, so the front matter keeps exactly its keys.
    #[test]
    fn control_characters_cannot_break_the_front_matter() {
        let card = render_model_card(
            "StableDiffusionPipeline\n---\nevil: 1",
            &ModelCardOptions {
                repo_id: Some("me/x\n# injected".into()),
                license: Some("mit\n---\npipeline_tag: evil".into()),
                base_model: Some("a\"b\\c\u{1b}[31m\r\t".into()),
            },
        );
        let front = card
            .strip_prefix("---\n")
            .and_then(|rest| rest.split_once("\n---\n"))
            .map(|(front, _)| front)
            .unwrap();
        assert!(
            front.contains("license: \"mit\\n---\\npipeline_tag: evil\"\n"),
            "{front}"
        );
        assert!(
            front.contains("base_model: \"a\\\"b\\\\c\\u001b[31m\\r\\t\"\n"),
            "{front}"
        );
        let keys: Vec<&str> = front
            .lines()
            .filter(|l| !l.starts_with("- ") && !l.starts_with(' '))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "library_name",
                "license",
                "base_model",
                "pipeline_tag",
                "tags"
            ]
        );
        assert!(!card.contains("\n# injected"), "{card}");
    }

    #[test]
    fn inpainting_and_img2img_are_image_to_image() {
        assert_eq!(
            pipeline_tag("StableDiffusionInpaintPipeline"),
            "image-to-image"
        );
        assert_eq!(
            pipeline_tag("StableDiffusionXLImg2ImgPipeline"),
            "image-to-image"
        );
        assert_eq!(pipeline_tag("StableDiffusionPipeline"), "text-to-image");
    }
}
