//! How an image was made, written into it and read back: `generate`'s reproducibility.
//!
//! Each PNG `generate` writes carries two text chunks:
//!
//! - `parameters`: AUTOMATIC1111's infotext (what A1111, ComfyUI, civitai and image browsers
//!   read): the prompt, `Negative prompt: ...`, then `Steps: N, Sampler: S, CFG scale: G,
//!   Seed: N, Size: WxH, Model: M, ...`, our scheduler named by A1111's sampler name where one
//!   exists ([`a1111_sampler`]);
//! - `burn-diffusers`: the JSON recipe ([`RECIPE_KEY`]): the model and the commit its files
//!   came from, the pipeline class, the scheduler class and its full config, the seed, the
//!   prompt, and every argument of the command line (given or defaulted) by its flag name.
//!
//! `generate --from-png x.png` reads the recipe back and runs the same command line again
//! ([`expand_from_png`]): the recipe's arguments first, except those given on the new command
//! line (they override) and the output ones (`--out`, ...); a Hub model is pinned to the
//! recorded commit. Arguments are captured generically from clap's matches
//! ([`Invocation::from_matches`]), so a flag added to `generate` is recorded and replayed
//! without a change here.

use anyhow::{Context, Result, bail};
use burn_diffusers::image::{PngText, read_png_text};
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;

/// The PNG text keyword of the JSON recipe.
pub const RECIPE_KEY: &str = "burn-diffusers";

/// The PNG text keyword AUTOMATIC1111 reads and writes.
pub const A1111_KEY: &str = "parameters";

/// Arguments never replayed by `--from-png`: where outputs go, how the run is shown, the batch
/// source, and `--from-png` itself. They are still recorded.
const NOT_REPLAYED: &[&str] = &[
    "from-png",
    "out",
    "out-array",
    "out-latents",
    "overwrite",
    "jpeg-quality",
    "prompts",
    "threads",
    "quiet",
    "verbose",
    "help",
];

/// One argument's value as clap parsed it (the raw text, so that it replays exactly).
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// A switch (`--overwrite`).
    Flag(bool),
    /// One value (`--steps 4`).
    One(String),
    /// A repeatable argument (`--lora a --lora b`).
    Many(Vec<String>),
}

impl ArgValue {
    fn to_json(&self) -> Value {
        match self {
            ArgValue::Flag(b) => Value::Bool(*b),
            ArgValue::One(s) => Value::String(s.clone()),
            ArgValue::Many(v) => Value::Array(v.iter().cloned().map(Value::String).collect()),
        }
    }

    fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::Bool(b) => Some(ArgValue::Flag(*b)),
            Value::String(s) => Some(ArgValue::One(s.clone())),
            Value::Number(n) => Some(ArgValue::One(n.to_string())),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(ArgValue::Many),
            _ => None,
        }
    }
}

/// The command line of a `generate` run: every argument with a value (given or defaulted), by
/// long flag name, and which of them were given.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// Argument values by long flag name (`steps`, `negative-prompt`, ...).
    pub arguments: BTreeMap<String, ArgValue>,
    /// The flags given on the command line (the others have their default).
    pub explicit: BTreeSet<String>,
}

impl Invocation {
    /// Reads `matches` of the subcommand `command` (`generate`).
    pub fn from_matches(command: &clap::Command, matches: &ArgMatches) -> Self {
        let mut inv = Invocation::default();
        for arg in command.get_arguments() {
            let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
                continue;
            };
            let Some(source) = matches.value_source(id) else {
                continue;
            };
            let value = match arg.get_action() {
                clap::ArgAction::SetTrue | clap::ArgAction::SetFalse => {
                    ArgValue::Flag(matches.get_flag(id))
                }
                action => {
                    let raw: Vec<String> = matches
                        .get_raw(id)
                        .map(|vals| {
                            vals.map(|v| v.to_string_lossy().into_owned())
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    if matches!(action, clap::ArgAction::Append) {
                        ArgValue::Many(raw)
                    } else if let [one] = raw.as_slice() {
                        ArgValue::One(one.clone())
                    } else {
                        continue;
                    }
                }
            };
            if source == ValueSource::CommandLine {
                inv.explicit.insert(long.to_string());
            }
            inv.arguments.insert(long.to_string(), value);
        }
        inv
    }
}

/// Where the model came from: what was asked for and, for a Hub repo, the commit of the files.
#[derive(Debug, Clone, Default)]
pub struct ModelSource {
    /// `--model` as given (a repo id, a folder or a single file).
    pub name_or_path: String,
    /// `--revision` as given.
    pub revision: String,
    /// The commit hash of the snapshot the files came from (Hub repos only).
    pub commit: Option<String>,
}

impl ModelSource {
    /// The source of `generate`'s `--model` (`name`), loaded from `loaded` (the same, or the
    /// folder an AutoPipeline resolved): for a Hub repo, the commit of the cached snapshot
    /// (looked up offline: the load has just fetched it).
    pub fn resolve(
        name: &str,
        loaded: &str,
        hub: &super::download::HubArgs,
        options: &burn_diffusers::pipelines::LoadOptions,
    ) -> Self {
        let commit = if burn_diffusers::pipelines::single_file::is_single_file(name) {
            None
        } else {
            let mut offline = options.clone();
            offline.local_files_only = true;
            offline.progress = None;
            burn_diffusers::pipelines::pipeline::resolve_folder(loaded, &offline)
                .ok()
                .and_then(|f| Self::commit_of(&f))
        };
        Self {
            name_or_path: name.to_string(),
            revision: hub.revision.clone(),
            commit,
        }
    }

    /// The commit of a Hugging Face cache snapshot folder (`.../snapshots/<commit>`), if
    /// `folder` is one.
    pub fn commit_of(folder: &Path) -> Option<String> {
        let parent = folder.parent()?.file_name()?.to_str()?;
        let name = folder.file_name()?.to_str()?;
        (parent == "snapshots" && name.len() == 40 && name.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| name.to_string())
    }
}

/// What every image of one `generate` run shares in its recipe.
#[derive(Debug, Clone)]
pub struct RunContext<'a> {
    /// The command line.
    pub invocation: &'a Invocation,
    /// The model and its commit.
    pub model: &'a ModelSource,
    /// diffusers' pipeline class.
    pub pipeline_class: &'static str,
    /// The scheduler class (empty when the pipeline has none).
    pub scheduler_class: &'static str,
    /// The scheduler's config.
    pub scheduler_config: Map<String, Value>,
    /// `guidance_scale` as used.
    pub guidance_scale: f32,
    /// `--jpeg-quality`.
    pub jpeg_quality: u8,
}

impl<'a> RunContext<'a> {
    /// The context of a run of `pipe` with `args`.
    pub fn new(
        pipe: &burn_diffusers::pipelines::DiffusionPipeline,
        args: &'a super::generate::Args,
        model: &'a ModelSource,
    ) -> Self {
        let class = pipe.class();
        let default_guidance = if class.is_xl() { 5.0 } else { 7.5 };
        Self {
            invocation: &args.output.invocation,
            model,
            pipeline_class: class.name(),
            scheduler_class: pipe.scheduler().map_or("", |s| s.class_name()),
            scheduler_config: pipe.component_config("scheduler").unwrap_or_default(),
            guidance_scale: args.guidance.unwrap_or(default_guidance),
            jpeg_quality: args.output.jpeg_quality,
        }
    }

    /// The recipe of image `index` of the run (its `prompt`, `seed` and size).
    pub fn image(
        &'a self,
        prompt: &'a str,
        seed: u64,
        index: usize,
        (width, height): (u32, u32),
    ) -> ImageRecipe<'a> {
        ImageRecipe {
            invocation: self.invocation,
            model: self.model,
            pipeline_class: self.pipeline_class,
            scheduler_class: self.scheduler_class,
            scheduler_config: &self.scheduler_config,
            prompt,
            seed,
            index,
            guidance_scale: self.guidance_scale,
            width,
            height,
        }
    }
}

/// Everything a recipe holds about one image.
#[derive(Debug, Clone)]
pub struct ImageRecipe<'a> {
    /// The command line.
    pub invocation: &'a Invocation,
    /// The model and its commit.
    pub model: &'a ModelSource,
    /// diffusers' pipeline class (`StableDiffusionPipeline`).
    pub pipeline_class: &'a str,
    /// The scheduler class.
    pub scheduler_class: &'a str,
    /// The scheduler's config as used.
    pub scheduler_config: &'a Map<String, Value>,
    /// This image's prompt.
    pub prompt: &'a str,
    /// This image's seed.
    pub seed: u64,
    /// Position of the image in the run (0-based).
    pub index: usize,
    /// `guidance_scale` as used (the class default when not given).
    pub guidance_scale: f32,
    /// Output size.
    pub width: u32,
    /// Output size.
    pub height: u32,
}

impl ImageRecipe<'_> {
    /// The arguments that re-make this one image: the command line with this image's prompt
    /// and seed and one image per prompt.
    fn arguments(&self) -> BTreeMap<String, ArgValue> {
        let mut args = self.invocation.arguments.clone();
        args.insert("prompt".into(), ArgValue::One(self.prompt.to_string()));
        args.insert("seed".into(), ArgValue::One(self.seed.to_string()));
        args.insert("num-images".into(), ArgValue::One("1".into()));
        args.remove("prompts");
        args
    }

    /// The JSON recipe.
    pub fn to_json(&self) -> Value {
        let arguments: Map<String, Value> = self
            .arguments()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        json!({
            "format": 1,
            "software": format!("burn-diffusers {}", env!("CARGO_PKG_VERSION")),
            "model": {
                "name_or_path": self.model.name_or_path,
                "revision": self.model.revision,
                "commit": self.model.commit,
            },
            "pipeline_class": self.pipeline_class,
            "scheduler": {
                "class": self.scheduler_class,
                "config": self.scheduler_config,
            },
            "seed": self.seed,
            "index": self.index,
            "prompt": self.prompt,
            "arguments": arguments,
        })
    }

    fn arg(&self, name: &str) -> Option<&str> {
        match self.invocation.arguments.get(name) {
            Some(ArgValue::One(v)) => Some(v),
            _ => None,
        }
    }

    /// AUTOMATIC1111's `parameters` text for this image.
    pub fn a1111(&self) -> String {
        let negative = self.arg("negative-prompt").unwrap_or("");
        let mut fields: Vec<(&str, String)> = Vec::new();
        fields.push(("Steps", self.arg("steps").unwrap_or("50").to_string()));
        let (sampler, schedule) = a1111_sampler(self.scheduler_class, self.scheduler_config);
        fields.push(("Sampler", sampler));
        if let Some(s) = schedule {
            fields.push(("Schedule type", s.to_string()));
        }
        fields.push(("CFG scale", short_float(f64::from(self.guidance_scale))));
        fields.push(("Seed", self.seed.to_string()));
        fields.push(("Size", format!("{}x{}", self.width, self.height)));
        fields.push(("Model", model_name(&self.model.name_or_path)));
        if let Some(vae) = self.arg("vae") {
            fields.push(("VAE", model_name(vae)));
        }
        if let Some(strength) = self.arg("strength") {
            fields.push(("Denoising strength", strength.to_string()));
        }
        // A1111 counts the last layer as 1: diffusers' clip_skip=1 is A1111's "Clip skip: 2".
        if let Some(skip) = self.arg("clip-skip").and_then(|s| s.parse::<u64>().ok()) {
            fields.push(("Clip skip", (skip + 1).to_string()));
        }
        if let Some(eta) = self.arg("eta") {
            fields.push(("Eta", eta.to_string()));
        }
        fields.push((
            "Version",
            format!("burn-diffusers {}", env!("CARGO_PKG_VERSION")),
        ));
        let line = fields
            .iter()
            .map(|(k, v)| format!("{k}: {}", a1111_quote(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = self.prompt.to_string();
        if !negative.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(negative);
        }
        text.push('\n');
        text.push_str(&line);
        text
    }

    /// The PNG text chunks: `parameters` and the JSON recipe.
    pub fn png_texts(&self) -> Vec<PngText> {
        vec![
            PngText::new(A1111_KEY, self.a1111()),
            PngText::new(RECIPE_KEY, self.to_json().to_string()),
        ]
    }
}

/// A1111's `quote`: a value with a comma, a colon or a newline is written as a JSON string.
fn a1111_quote(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        Value::String(value.to_string()).to_string()
    } else {
        value.to_string()
    }
}

/// A float as A1111 shows it: `7` for 7.0, `7.5` for 7.5 (shortest form).
fn short_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{}", v as f32)
    }
}

/// The model's short name as A1111 shows a checkpoint: the file name without its extension,
/// the folder's name, or the repo id.
fn model_name(model: &str) -> String {
    let path = Path::new(model);
    if path.exists() {
        let name = if path.is_file() {
            path.file_stem()
        } else {
            path.file_name()
        };
        if let Some(n) = name {
            return n.to_string_lossy().into_owned();
        }
    }
    model.to_string()
}

/// AUTOMATIC1111's sampler name for a diffusers scheduler, and its `Schedule type` (Karras or
/// Exponential sigmas), as diffusers' documentation maps them; the class name where A1111 has
/// no equivalent (DDPM, DEIS, TCD, ...).
pub fn a1111_sampler(class: &str, config: &Map<String, Value>) -> (String, Option<&'static str>) {
    let flag = |k: &str| config.get(k).and_then(Value::as_bool).unwrap_or(false);
    let text = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or("");
    let order = config
        .get("solver_order")
        .and_then(Value::as_u64)
        .unwrap_or(2);
    let name = match class {
        "DDIMScheduler" => "DDIM",
        "PNDMScheduler" => "PLMS",
        "LMSDiscreteScheduler" => "LMS",
        "EulerDiscreteScheduler" => "Euler",
        "EulerAncestralDiscreteScheduler" => "Euler a",
        "HeunDiscreteScheduler" => "Heun",
        "KDPM2DiscreteScheduler" => "DPM2",
        "KDPM2AncestralDiscreteScheduler" => "DPM2 a",
        "DPMSolverSDEScheduler" => "DPM++ SDE",
        "UniPCMultistepScheduler" => "UniPC",
        "LCMScheduler" => "LCM",
        "DPMSolverMultistepScheduler" => match (text("algorithm_type"), order) {
            ("dpmsolver++", 2) => "DPM++ 2M",
            ("sde-dpmsolver++", 2) => "DPM++ 2M SDE",
            ("sde-dpmsolver++", 3) => "DPM++ 3M SDE",
            _ => class,
        },
        _ => class,
    };
    let schedule = if flag("use_karras_sigmas") {
        Some("Karras")
    } else if flag("use_exponential_sigmas") {
        Some("Exponential")
    } else {
        None
    };
    (name.to_string(), schedule)
}

/// The recipe JSON of a PNG file written by `generate`.
pub fn read_recipe(png: &Path) -> Result<Value> {
    let bytes = std::fs::read(png).with_context(|| format!("--from-png {}", png.display()))?;
    let texts =
        read_png_text(&bytes, png).with_context(|| format!("--from-png {}", png.display()))?;
    let Some(chunk) = texts.iter().find(|t| t.keyword == RECIPE_KEY) else {
        let a1111 = texts.iter().any(|t| t.keyword == A1111_KEY);
        bail!(
            "--from-png {}: no `{RECIPE_KEY}` recipe chunk{}",
            png.display(),
            if a1111 {
                " (it has AUTOMATIC1111 `parameters`, which do not name everything needed to reproduce an image bit for bit)"
            } else {
                "; only PNGs written by `burn-diffusers generate` carry one"
            }
        );
    };
    serde_json::from_str(&chunk.text).with_context(|| {
        format!(
            "--from-png {}: the `{RECIPE_KEY}` chunk is not valid JSON",
            png.display()
        )
    })
}

/// `generate --from-png X`: the command line `argv` (as given) followed by the recipe's
/// arguments that `explicit` (the flags given now) does not override and that are not output
/// settings, plus `--revision <commit>` for a Hub model unless `--revision` was given. A flag
/// this build does not have (`known` lists its flags) is left out with a warning.
pub fn expand_from_png(
    argv: &[OsString],
    png: &Path,
    explicit: &BTreeSet<String>,
    known: &BTreeSet<String>,
) -> Result<Vec<OsString>> {
    let recipe = read_recipe(png)?;
    let arguments = recipe
        .get("arguments")
        .and_then(Value::as_object)
        .with_context(|| {
            format!(
                "--from-png {}: the recipe has no `arguments`",
                png.display()
            )
        })?;
    let mut out = argv.to_vec();
    let mut push = |flag: &str, value: &ArgValue| match value {
        ArgValue::Flag(true) => out.push(format!("--{flag}").into()),
        ArgValue::Flag(false) => {}
        ArgValue::One(v) => out.push(format!("--{flag}={v}").into()),
        ArgValue::Many(vs) => {
            for v in vs {
                out.push(format!("--{flag}={v}").into());
            }
        }
    };
    for (flag, value) in arguments {
        if NOT_REPLAYED.contains(&flag.as_str()) || explicit.contains(flag) {
            continue;
        }
        if flag == "revision" {
            continue;
        }
        if !known.contains(flag) {
            eprintln!(
                "warning: --from-png {}: the recipe's --{flag} is not a flag of this build; left out",
                png.display()
            );
            continue;
        }
        let value = ArgValue::from_json(value).with_context(|| {
            format!(
                "--from-png {}: argument `{flag}` has an unreadable value {value}",
                png.display()
            )
        })?;
        push(flag, &value);
    }
    if !explicit.contains("revision") {
        let commit = recipe.pointer("/model/commit").and_then(Value::as_str);
        let revision = arguments.get("revision").and_then(Value::as_str);
        if let Some(r) = commit.or(revision) {
            push("revision", &ArgValue::One(r.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe_for<'a>(
        inv: &'a Invocation,
        model: &'a ModelSource,
        config: &'a Map<String, Value>,
    ) -> ImageRecipe<'a> {
        ImageRecipe {
            invocation: inv,
            model,
            pipeline_class: "StableDiffusionPipeline",
            scheduler_class: "DPMSolverMultistepScheduler",
            scheduler_config: config,
            prompt: "a red circle, on a blue background",
            seed: 42,
            index: 0,
            guidance_scale: 7.0,
            width: 64,
            height: 48,
        }
    }

    #[test]
    fn a1111_text_has_the_infotext_layout() {
        let mut inv = Invocation::default();
        for (k, v) in [
            ("steps", "20"),
            ("negative-prompt", "blurry"),
            ("clip-skip", "1"),
        ] {
            inv.arguments.insert(k.into(), ArgValue::One(v.into()));
        }
        let model = ModelSource {
            name_or_path: "org/model".into(),
            revision: "main".into(),
            commit: None,
        };
        let mut config = Map::new();
        config.insert("algorithm_type".into(), json!("dpmsolver++"));
        config.insert("use_karras_sigmas".into(), json!(true));
        let text = recipe_for(&inv, &model, &config).a1111();
        let want = format!(
            "a red circle, on a blue background\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 64x48, Model: org/model, Clip skip: 2, Version: burn-diffusers {}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(text, want);
    }

    #[test]
    fn sampler_names_follow_diffusers_table() {
        let none = Map::new();
        assert_eq!(
            a1111_sampler("EulerAncestralDiscreteScheduler", &none).0,
            "Euler a"
        );
        assert_eq!(a1111_sampler("PNDMScheduler", &none).0, "PLMS");
        assert_eq!(a1111_sampler("DDPMScheduler", &none).0, "DDPMScheduler");
        let mut sde = Map::new();
        sde.insert("algorithm_type".into(), json!("sde-dpmsolver++"));
        assert_eq!(
            a1111_sampler("DPMSolverMultistepScheduler", &sde),
            ("DPM++ 2M SDE".to_string(), None)
        );
        assert_eq!(a1111_quote("a, b"), "\"a, b\"");
        assert_eq!(short_float(7.5), "7.5");
        assert_eq!(short_float(5.0), "5");
    }

    #[test]
    fn from_png_adds_the_recipe_arguments_not_given_now() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("r.png");
        let recipe = json!({
            "model": {"commit": "c0ffee"},
            "arguments": {
                "model": "org/m", "prompt": "-a, b", "seed": "5", "steps": "4",
                "out": "old.png", "overwrite": true, "no-safety-checker": true,
                "fuse-lora": false, "lora": ["x", "y"], "revision": "main", "gone": "1",
            },
        });
        let bytes = burn_diffusers::image::encode_png_with_text(
            &image::RgbImage::new(8, 8),
            &[PngText::new(RECIPE_KEY, recipe.to_string())],
        )
        .unwrap();
        std::fs::write(&png, bytes).unwrap();
        let explicit: BTreeSet<String> = ["steps".to_string()].into();
        let known: BTreeSet<String> = [
            "model",
            "prompt",
            "seed",
            "steps",
            "out",
            "overwrite",
            "no-safety-checker",
            "fuse-lora",
            "lora",
            "revision",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let argv: Vec<OsString> =
            vec!["bd".into(), "generate".into(), "--steps".into(), "9".into()];
        let got = expand_from_png(&argv, &png, &explicit, &known).unwrap();
        let got: Vec<String> = got
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "bd",
                "generate",
                "--steps",
                "9",
                "--lora=x",
                "--lora=y",
                "--model=org/m",
                "--no-safety-checker",
                "--prompt=-a, b",
                "--seed=5",
                "--revision=c0ffee",
            ]
        );
    }

    #[test]
    fn snapshot_folders_give_their_commit() {
        let c = "0123456789abcdef0123456789abcdef01234567";
        let p = format!("/cache/models--a--b/snapshots/{c}");
        assert_eq!(ModelSource::commit_of(Path::new(&p)).as_deref(), Some(c));
        assert_eq!(ModelSource::commit_of(Path::new("/x/tiny-sd")), None);
    }
}
