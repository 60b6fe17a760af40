//! The LoRA flags `generate` and `save` share: `--lora SRC` (a file, a folder or a Hub repo id,
//! fetched with the command's `--revision` / `--endpoint` / `--offline` / `--cache-dir`),
//! `--lora-scale W` paired by position, and fusing (`fuse_lora`).

use anyhow::{Context, Result, bail};
use burn_diffusers::pipelines::{AdapterWeight, DiffusionPipeline, LoraLoadOptions};

/// Loads each LoRA (`default_0`, `default_1`, ...), activates them together with their weights
/// (`set_adapters`) and fuses them when `fuse` is set.
pub fn apply(
    pipe: &DiffusionPipeline,
    loras: &[String],
    scales: &[f64],
    fuse: bool,
    hub: &super::download::HubArgs,
) -> Result<()> {
    if scales.len() > loras.len() {
        bail!(
            "{} --lora-scale values for {} --lora; each --lora-scale pairs with the --lora at the same position",
            scales.len(),
            loras.len()
        );
    }
    if loras.is_empty() {
        return Ok(());
    }
    let options = LoraLoadOptions {
        hub: Some(hub.config()?),
        revision: Some(hub.revision.clone()),
        local_files_only: hub.offline,
    };
    let mut names = Vec::new();
    for src in loras {
        let name = pipe
            .load_lora_weights_with(src, None, None, &options)
            .with_context(|| format!("--lora {src}"))?;
        names.push(name);
    }
    let weights: Vec<AdapterWeight> = (0..names.len())
        .map(|i| AdapterWeight::Uniform(scales.get(i).copied().unwrap_or(1.0)))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    pipe.set_adapters(&refs, &weights)?;
    if fuse {
        pipe.fuse_lora(1.0, None);
    }
    Ok(())
}
