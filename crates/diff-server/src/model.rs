//! Loading the one pipeline the server serves, with `generate`'s loading options.

use burn_diffusers::pipelines::{AdapterWeight, DiffusionPipeline, LoadOptions};
use serde_json::{Map, Value};

/// An error and its causes on one line (a cause already quoted is not repeated).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// What to load and how: `DiffusionPipeline::from_pretrained(model, load)`, then the
/// scheduler swap and the LoRAs, as `burn-diffusers generate` does.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// A diffusers folder or a Hub repo id.
    pub model: String,
    /// `from_pretrained`'s options (revision, variant, dtype, device, offline, Hub settings,
    /// dropped safety checker).
    pub load: LoadOptions,
    /// `--scheduler CLASS` and its `--scheduler-set` overrides: the server's default scheduler.
    pub scheduler: Option<(String, Map<String, Value>)>,
    /// LoRAs (file, folder or repo id) and their weights, activated together.
    pub loras: Vec<(String, f64)>,
    /// Fuse the LoRAs into the weights (`fuse_lora`).
    pub fuse_lora: bool,
}

impl ModelSpec {
    /// A spec loading `model` with default options.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            load: LoadOptions::default(),
            scheduler: None,
            loras: Vec::new(),
            fuse_lora: false,
        }
    }

    /// The id `GET /v1/models` reports: the repo id, or the folder's name.
    pub fn id(&self) -> String {
        let path = std::path::Path::new(&self.model);
        if path.is_dir() {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.model.clone())
        } else {
            self.model.clone()
        }
    }

    /// Loads the pipeline (blocking: call it on the worker thread). The error is the loader's
    /// message with its causes.
    pub fn load(&self) -> Result<DiffusionPipeline, String> {
        let mut pipe =
            DiffusionPipeline::from_pretrained(&self.model, &self.load).map_err(|e| chain(&e))?;
        if let Some((class, overrides)) = &self.scheduler {
            pipe.swap_scheduler(class, overrides)
                .map_err(|e| format!("--scheduler {class}: {}", chain(&e)))?;
        }
        if !self.loras.is_empty() {
            let mut names = Vec::new();
            for (src, _) in &self.loras {
                let name = pipe
                    .load_lora_weights(src, None, None)
                    .map_err(|e| format!("--lora {src}: {}", chain(&e)))?;
                names.push(name);
            }
            let weights: Vec<AdapterWeight> = self
                .loras
                .iter()
                .map(|(_, w)| AdapterWeight::Uniform(*w))
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            pipe.set_adapters(&refs, &weights).map_err(|e| chain(&e))?;
            if self.fuse_lora {
                pipe.fuse_lora(1.0, None);
            }
        }
        Ok(pipe)
    }
}
