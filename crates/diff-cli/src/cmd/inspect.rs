//! `burn-diffusers inspect PATH [--variant V] [--use-safetensors true|false] [--json]`.
//!
//! Shows what a diffusers pipeline folder holds and which weight files diffusers would load for
//! the given `variant` / `use_safetensors` (the selection rules live in
//! `diff_format::selection`). Safetensors files are inspected from their headers only (tensor
//! count, dtypes, parameter count); `.bin` pickles through diff-format's restricted reader,
//! which never executes pickle code and reads no tensor data.
//!
//! Sources: a local folder as is; a Hub repo id is resolved by diff-hub (`download`'s
//! `resolve_source`): the pipeline's selection for the variant is downloaded into the standard
//! cache (or found there with `--offline`), then that snapshot folder is inspected.

use anyhow::{Context, Result, bail};
use burn_diffusers::format::{
    ComponentEntry, ModelIndex, PipelineClass,
    folder::list_files,
    pickle::PickleCheckpoint,
    safetensors_header::read_header,
    selection::{SelectionOptions, download_plan},
    shard_index::ShardIndex,
    weights,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A local diffusers folder, or a Hub repo id (its selected files are downloaded first).
    pub path: String,
    /// Load this weight variant (e.g. `fp16`, `non_ema`), as diffusers' `variant=`.
    #[arg(long)]
    pub variant: Option<String>,
    /// Require safetensors (`true`) or pickle `.bin` files (`false`); unset prefers safetensors
    /// and falls back to `.bin`, as diffusers' `use_safetensors=None`.
    #[arg(long, value_name = "true|false")]
    pub use_safetensors: Option<bool>,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Hub options, used only when PATH is a repo id.
    #[command(flatten)]
    pub hub: super::download::HubArgs,
}

/// Runs `inspect`. Exits non-zero when the report lists problems: what would make `generate`
/// fail to load the folder (each printed with its reason).
pub fn run(args: Args) -> Result<()> {
    let root = super::download::resolve_source(&args.path, &args.hub, args.variant.as_deref())?;
    let report = build_report(&root, &args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    let problems = report["problems"].as_array().map_or(0, Vec::len);
    if problems > 0 {
        bail!(
            "{problems} problem(s): `generate` could not load {}",
            report["source"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// What would stop `generate` from loading the pipeline: an unknown pipeline class, a required
/// component that is `[null, null]` or absent, a component folder that is missing, a config
/// that does not load as its class's typed config, weights that cannot be read. Each entry
/// says which component and why.
fn load_problems(root: &Path, index: &ModelIndex) -> Vec<String> {
    use burn_diffusers::convert::single_file::pipeline::{PIPELINES, spec};
    use burn_diffusers::format::configs::{
        clip::CLIPTextConfig, unet::UNet2DConditionConfig, vae::AutoencoderKLConfig,
    };
    use burn_diffusers::format::load_config;
    let mut problems = Vec::new();
    let class = match &index.class_name {
        PipelineClass::Builtin(name) => name.clone(),
        PipelineClass::Custom { class_name, .. } => class_name.clone(),
    };
    let pipeline = spec(&class);
    if pipeline.is_none() {
        problems.push(format!(
            "pipeline class `{class}` is not one burn-diffusers can run (known: {})",
            PIPELINES
                .iter()
                .map(|p| p.class)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(p) = pipeline {
        for name in p.components.iter().filter(|c| !p.optional.contains(c)) {
            match index.components.get(*name) {
                None => problems.push(format!(
                    "component `{name}` is required by {class} but model_index.json does not list it"
                )),
                Some(ComponentEntry::Null) => problems.push(format!(
                    "component `{name}` is [null, null], but {class} requires it"
                )),
                Some(_) => {}
            }
        }
    }
    for (name, entry) in &index.components {
        let Some(class_name) = entry.class_name() else {
            continue;
        };
        let folder = root.join(name);
        if !folder.is_dir() {
            problems.push(format!(
                "component `{name}` ({class_name}): its folder {name}/ is missing"
            ));
            continue;
        }
        let config = folder.join("config.json");
        let loaded = match class_name {
            "UNet2DConditionModel" => load_config::<UNet2DConditionConfig>(&config).map(|_| ()),
            "AutoencoderKL" => load_config::<AutoencoderKLConfig>(&config).map(|_| ()),
            "CLIPTextModel" | "CLIPTextModelWithProjection" => {
                load_config::<CLIPTextConfig>(&config).map(|_| ())
            }
            c if c.ends_with("Scheduler") => {
                if let Err(e) = burn_diffusers::schedulers::Scheduler::from_pretrained(&folder) {
                    problems.push(format!("component `{name}` ({class_name}): {e}"));
                }
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = loaded {
            problems.push(format!("component `{name}` ({class_name}): {e}"));
        }
    }
    problems
}

/// Everything `inspect` reports, as JSON (the text output is rendered from it).
fn build_report(root: &Path, args: &Args) -> Result<Value> {
    let index = ModelIndex::load(root)?;
    let files = list_files(root)?;
    let options = SelectionOptions {
        variant: args.variant.clone(),
        use_safetensors: args.use_safetensors,
        ..Default::default()
    };
    let source = root.display().to_string();
    let plan = download_plan(&files, &index, &options, &source)?;

    let mut components = Vec::new();
    let warnings: Vec<String> = plan.warnings.iter().map(|w| w.to_string()).collect();
    let mut problems = load_problems(root, &index);
    for (name, entry) in &index.components {
        let (library, class_name) = match entry {
            ComponentEntry::Null => (Value::Null, Value::Null),
            ComponentEntry::Class {
                library,
                class_name,
            } => (json!(library), json!(class_name)),
        };
        let folder = root.join(name);
        let selected = plan.component_files(name);
        let prefix = format!("{name}/");
        let has_model_files = files.iter().any(|f| {
            f.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('/') && weights::is_model_file(rest))
        });
        if has_model_files && selected.weights.is_empty() {
            // diffusers downloads nothing for such a component and then fails to load it.
            problems.push(format!(
                "component `{name}` has weight files, but none match variant={} use_safetensors={}; loading it would fail",
                args.variant.as_deref().unwrap_or("None"),
                args.use_safetensors.map_or("None".to_owned(), |b| b.to_string())
            ));
        }
        let mut weight_files = Vec::new();
        let mut total_bytes = 0u64;
        let mut tensors = 0u64;
        let mut parameters = 0u64;
        let mut dtypes: BTreeMap<String, u64> = BTreeMap::new();
        let mut inspected_all = true;
        for rel in &selected.weights {
            let path = root.join(rel);
            let bytes = std::fs::metadata(&path)
                .with_context(|| format!("reading the size of {}", path.display()))?
                .len();
            total_bytes = total_bytes.saturating_add(bytes);
            let mut file = json!({"file": rel, "bytes": bytes});
            if rel.ends_with(".safetensors") {
                let header = read_header(&path)?;
                let count = header.tensors.len() as u64;
                tensors = tensors.saturating_add(count);
                parameters = parameters.saturating_add(header.parameter_count());
                for t in &header.tensors {
                    *dtypes.entry(t.dtype.to_string()).or_default() += 1;
                }
                file["tensors"] = json!(count);
                file["parameters"] = json!(header.parameter_count());
            } else if rel.ends_with(".bin") {
                // diff-format's restricted pickle reader interprets only the opcodes and
                // globals of a state dict and never executes code; tensor data is not read.
                match PickleCheckpoint::open(&path).and_then(|c| c.state_dict()) {
                    Ok(state) => {
                        let count = state.len() as u64;
                        let params = state.iter().fold(0u64, |acc, (_, t)| {
                            acc.saturating_add(t.numel().map_or(u64::MAX, |n| n as u64))
                        });
                        tensors = tensors.saturating_add(count);
                        parameters = parameters.saturating_add(params);
                        for (_, t) in &state {
                            *dtypes
                                .entry(t.dtype.safetensors_name().to_owned())
                                .or_default() += 1;
                        }
                        file["tensors"] = json!(count);
                        file["parameters"] = json!(params);
                    }
                    Err(err) => {
                        inspected_all = false;
                        file["note"] = json!(format!("pickle checkpoint not readable: {err}"));
                        problems.push(format!("component `{name}`: {rel} cannot be loaded: {err}"));
                    }
                }
            } else {
                inspected_all = false;
                file["note"] = json!("not a safetensors or pickle file: size only");
            }
            weight_files.push(file);
        }
        for rel in &selected.indexes {
            // Shards named by an index must all have been selected, or loading would fail.
            let shard_index = ShardIndex::load(root.join(rel))?;
            let dir = Path::new(rel).parent().unwrap_or(Path::new(""));
            for shard in shard_index.shard_files() {
                let shard_rel = dir.join(shard).to_string_lossy().replace('\\', "/");
                if !files.contains(&shard_rel) {
                    bail!("{rel} lists shard {shard}, which is missing from {source}");
                }
            }
        }
        components.push(json!({
            "name": name,
            "library": library,
            "class": class_name,
            "folder": if folder.is_dir() { json!(name) } else { Value::Null },
            "weight_files": weight_files,
            "index_files": selected.indexes,
            "total_bytes": total_bytes,
            "tensors": tensors,
            "parameters": parameters,
            "dtypes": dtypes,
            "fully_inspected": inspected_all,
        }));
    }

    // A scheduler config that does not parse is listed as a problem above.
    let scheduler = scheduler_config(root, &index).unwrap_or(Value::Null);
    let pipeline_class = match &index.class_name {
        PipelineClass::Builtin(name) => name.clone(),
        PipelineClass::Custom { class_name, .. } => class_name.clone(),
    };
    let loaded: BTreeSet<&String> = plan
        .model_filenames
        .iter()
        .filter(|f| !weights::is_index_file(f))
        .collect();
    Ok(json!({
        "source": source,
        "pipeline_class": pipeline_class,
        "diffusers_version": index.diffusers_version,
        "variant": args.variant,
        "use_safetensors": args.use_safetensors,
        "config": index.config,
        "components": components,
        "weight_files": loaded,
        "selected_files": plan.model_filenames,
        "allow_patterns": plan.allow_patterns,
        "ignore_patterns": plan.ignore_patterns,
        "warnings": warnings,
        "problems": problems,
        "scheduler": scheduler,
    }))
}

/// The raw scheduler config of the first component whose class name ends in `Scheduler`.
fn scheduler_config(root: &Path, index: &ModelIndex) -> Result<Value> {
    for (name, entry) in &index.components {
        if entry.class_name().is_some_and(|c| c.ends_with("Scheduler")) {
            let path = root.join(name).join("scheduler_config.json");
            let map = burn_diffusers::format::config::read_json_object(&path)?;
            return Ok(json!({"component": name, "config": map}));
        }
    }
    Ok(Value::Null)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn print_text(report: &Value) {
    println!("source:    {}", report["source"].as_str().unwrap_or(""));
    println!(
        "pipeline:  {}",
        report["pipeline_class"].as_str().unwrap_or("")
    );
    if let Some(v) = report["diffusers_version"].as_str() {
        println!("written by diffusers {v}");
    }
    println!(
        "selection: variant={} use_safetensors={}",
        report["variant"].as_str().unwrap_or("None"),
        report["use_safetensors"]
            .as_bool()
            .map_or("None".to_owned(), |b| b.to_string())
    );
    if let Some(config) = report["config"].as_object() {
        for (k, v) in config {
            println!("config:    {k} = {v}");
        }
    }
    println!();
    for c in report["components"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        match (c["library"].as_str(), c["class"].as_str()) {
            (Some(lib), Some(class)) => println!(
                "{name}: {lib}.{class} (folder {})",
                c["folder"].as_str().unwrap_or("<missing>")
            ),
            _ => {
                println!("{name}: [null, null] (absent)");
                continue;
            }
        }
        let files = c["weight_files"].as_array().cloned().unwrap_or_default();
        if files.is_empty() {
            continue;
        }
        for f in &files {
            println!(
                "    {}  {}",
                f["file"].as_str().unwrap_or(""),
                human_bytes(f["bytes"].as_u64().unwrap_or(0))
            );
        }
        for i in c["index_files"].as_array().into_iter().flatten() {
            println!("    {} (shard index)", i.as_str().unwrap_or(""));
        }
        let dtypes: Vec<String> = c["dtypes"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}×{v}")).collect())
            .unwrap_or_default();
        println!(
            "    total {} in {} file(s); {} tensors; {} parameters; dtypes {}{}",
            human_bytes(c["total_bytes"].as_u64().unwrap_or(0)),
            files.len(),
            c["tensors"],
            c["parameters"],
            if dtypes.is_empty() {
                "-".to_owned()
            } else {
                dtypes.join(", ")
            },
            if c["fully_inspected"].as_bool() == Some(false) {
                " (some files could not be inspected)"
            } else {
                ""
            }
        );
    }
    for w in report["warnings"].as_array().into_iter().flatten() {
        println!("\nwarning: {}", w.as_str().unwrap_or(""));
    }
    for p in report["problems"].as_array().into_iter().flatten() {
        println!(
            "\nproblem: {}",
            burn_diffusers::hub::printable(p.as_str().unwrap_or(""))
        );
    }
    if let Some(s) = report["scheduler"].as_object() {
        println!(
            "\nscheduler ({}/scheduler_config.json):",
            s.get("component").and_then(Value::as_str).unwrap_or("")
        );
        if let Some(cfg) = s.get("config").and_then(Value::as_object) {
            for (k, v) in cfg {
                println!("    {k} = {v}");
            }
        }
    }
}
