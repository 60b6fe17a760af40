//! `generate`'s IP-Adapter flags: `--ip-adapter REPO_OR_DIR [--ip-adapter-subfolder S]
//! --ip-adapter-weight-name NAME --ip-adapter-image IMG [--ip-adapter-scale F]`, i.e.
//! diffusers'
//!
//! ```python
//! pipe.load_ip_adapter(REPO_OR_DIR, subfolder=S, weight_name=NAME)
//! pipe.set_ip_adapter_scale(F)
//! pipe(..., ip_adapter_image=load_image(IMG))
//! ```
//!
//! with the subfolder of diffusers' examples (`models`; SDXL adapters are in `sdxl_models`).

use anyhow::{Context, Result, bail};
use burn_diffusers::pipelines::image_processor::load_image;
use burn_diffusers::pipelines::ip_adapter::scales_from_json;
use burn_diffusers::pipelines::{CallArgs, DiffusionPipeline, LoadIpAdapter};
use clap::Args;
use std::path::PathBuf;

/// The IP-Adapter flags of `generate` (flattened into its arguments).
#[derive(Args, Debug, Clone, Default)]
pub struct IpAdapterFlags {
    /// Load an IP-Adapter (`load_ip_adapter`): a Hub repo id (`h94/IP-Adapter`) or a local
    /// folder laid out the same way; needs --ip-adapter-weight-name and --ip-adapter-image.
    #[arg(long = "ip-adapter", value_name = "REPO_OR_DIR")]
    pub ip_adapter: Option<String>,
    /// The folder of the weight file in the repo (`subfolder`; default `models` for SD
    /// pipelines and `sdxl_models` for SDXL ones, as h94/IP-Adapter lays them out). The image
    /// encoder is read from `<subfolder>/image_encoder`.
    #[arg(long = "ip-adapter-subfolder", value_name = "S")]
    pub ip_adapter_subfolder: Option<String>,
    /// The weight file (`weight_name`): `ip-adapter_sd15.bin`,
    /// `ip-adapter-plus_sd15.safetensors`, `ip-adapter_sdxl.safetensors`, ... Optional for a
    /// local folder whose subfolder holds exactly one `.bin` / `.safetensors` file.
    #[arg(long = "ip-adapter-weight-name", value_name = "NAME")]
    pub ip_adapter_weight_name: Option<String>,
    /// The image prompt (`ip_adapter_image`): a PNG or JPEG file.
    #[arg(long = "ip-adapter-image", value_name = "IMG")]
    pub ip_adapter_image: Option<PathBuf>,
    /// `set_ip_adapter_scale` (default 1.0): a number, or InstantStyle's per-block JSON
    /// dictionary (`'{"up": {"block_0": [0.0, 1.0, 0.0]}}'`).
    #[arg(
        long = "ip-adapter-scale",
        value_name = "F",
        allow_negative_numbers = true
    )]
    pub ip_adapter_scale: Option<String>,
}

impl IpAdapterFlags {
    /// Whether any IP-Adapter flag was given.
    fn any(&self) -> bool {
        self.ip_adapter.is_some()
            || self.ip_adapter_weight_name.is_some()
            || self.ip_adapter_image.is_some()
            || self.ip_adapter_scale.is_some()
    }
}

/// Loads the IP-Adapter of `flags` into `pipe`, sets its scale, and puts the image prompt into
/// `call`. The image is read first, so a missing or corrupt `--ip-adapter-image` fails before
/// any weights are read. Nothing happens without `--ip-adapter`.
pub fn apply(
    pipe: &mut DiffusionPipeline,
    flags: &IpAdapterFlags,
    call: &mut CallArgs,
) -> Result<()> {
    if !flags.any() {
        return Ok(());
    }
    let Some(repo) = &flags.ip_adapter else {
        bail!(
            "--ip-adapter-image / --ip-adapter-weight-name / --ip-adapter-scale need --ip-adapter REPO_OR_DIR"
        );
    };
    let subfolder = flags.ip_adapter_subfolder.clone().unwrap_or_else(|| {
        if pipe.class().is_xl() {
            "sdxl_models".to_string()
        } else {
            "models".to_string()
        }
    });
    let weight_name = match &flags.ip_adapter_weight_name {
        Some(name) => name.clone(),
        None => only_weight_file(repo, &subfolder)?,
    };
    let weight_name = &weight_name;
    let Some(image_path) = &flags.ip_adapter_image else {
        bail!("--ip-adapter needs --ip-adapter-image IMG (the image prompt)");
    };
    let image = load_image(image_path)
        .with_context(|| format!("reading --ip-adapter-image {}", image_path.display()))?;
    let scales = match &flags.ip_adapter_scale {
        None => None,
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text).with_context(|| {
                format!("--ip-adapter-scale {text}: expected a number or a JSON dictionary")
            })?;
            Some(scales_from_json(&value).with_context(|| format!("--ip-adapter-scale {text}"))?)
        }
    };
    let load = LoadIpAdapter::new(repo, &subfolder, weight_name);
    pipe.load_ip_adapter(&load).with_context(|| {
        format!("--ip-adapter {repo} (subfolder {subfolder:?}, weight name {weight_name})")
    })?;
    if let Some(scales) = scales {
        pipe.set_ip_adapter_scale(&scales)
            .context("--ip-adapter-scale")?;
    }
    call.ip_adapter.ip_adapter_image = Some(vec![vec![image]]);
    Ok(())
}

/// Without `--ip-adapter-weight-name`: the one `.bin` / `.safetensors` file of a local
/// folder's subfolder (a repo id's files are not listed: its weight name must be given).
fn only_weight_file(repo: &str, subfolder: &str) -> Result<String> {
    let dir = std::path::Path::new(repo).join(subfolder);
    if !std::path::Path::new(repo).is_dir() {
        bail!(
            "--ip-adapter {repo}: pass --ip-adapter-weight-name (e.g. ip-adapter_sd15.bin in subfolder models, ip-adapter_sdxl.safetensors in sdxl_models)"
        );
    }
    let entries = std::fs::read_dir(&dir)
        .with_context(|| format!("--ip-adapter: reading {}", dir.display()))?;
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".bin") || n.ends_with(".safetensors"))
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "--ip-adapter: no .bin or .safetensors file in {}",
            dir.display()
        ),
        many => bail!(
            "--ip-adapter: {} holds several weight files ({}); pass --ip-adapter-weight-name",
            dir.display(),
            many.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::generate;
    use burn_diffusers::pipelines::outputs::load_float_images;
    use clap::Parser;
    use std::path::{Path, PathBuf};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: generate::Args,
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    fn args(out: &Path, extra: &[&str]) -> generate::Args {
        let tiny = fixtures().join("tiny-sd");
        let mut argv: Vec<String> = [
            "generate",
            "--model",
            tiny.to_str().unwrap(),
            "--prompt",
            "a photo of an astronaut riding a horse on mars",
            "--negative-prompt",
            "blurry",
            "--steps",
            "3",
            "--guidance",
            "7.5",
            "--seed",
            "0",
            "--height",
            "32",
            "--width",
            "32",
            "--no-safety-checker",
            "--out-array",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(extra.iter().map(|s| s.to_string()));
        Cli::try_parse_from(argv).unwrap().args
    }

    fn repo() -> String {
        fixtures()
            .join("47-ip-adapter/repo")
            .to_str()
            .unwrap()
            .to_string()
    }

    fn ip_image() -> String {
        fixtures()
            .join("47-ip-adapter/ip_image.png")
            .to_str()
            .unwrap()
            .to_string()
    }

    /// `--ip-adapter repo --ip-adapter-weight-name ip-adapter_tiny.bin --ip-adapter-image IMG
    /// --ip-adapter-scale 0.6` gives diffusers' image of `47-ip-adapter/t2i_plain_bin_cfg`.
    #[test]
    fn generate_with_an_ip_adapter_matches_the_diffusers_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.safetensors");
        let (repo, img) = (repo(), ip_image());
        let a = args(
            &out,
            &[
                "--ip-adapter",
                &repo,
                "--ip-adapter-weight-name",
                "ip-adapter_tiny.bin",
                "--ip-adapter-image",
                &img,
                "--ip-adapter-scale",
                "0.6",
            ],
        );
        generate::run(a).unwrap();
        let got = load_float_images(&out).unwrap();
        let want = fixtures().join("47-ip-adapter/t2i_plain_bin_cfg.safetensors");
        let want = load_float_images(&want).unwrap();
        assert_eq!(got.data.len(), want.data.len());
        let max = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max <= 2.0 / 255.0, "max abs diff {max}");
    }

    /// Without `--ip-adapter-weight-name`, a local subfolder's only weight file is used (here
    /// the SDXL adapter, refused by the SD UNet by its key), and several files are an error
    /// naming them.
    #[test]
    fn the_weight_name_may_be_left_out_when_the_subfolder_has_one_weight_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.safetensors");
        let (repo, img) = (repo(), ip_image());
        let one = args(
            &out,
            &[
                "--ip-adapter",
                &repo,
                "--ip-adapter-subfolder",
                "sdxl_models",
                "--ip-adapter-image",
                &img,
            ],
        );
        let err = format!("{:#}", generate::run(one).unwrap_err());
        assert!(
            err.contains("ip-adapter_tiny_sdxl.safetensors")
                && err.contains("ip_adapter.1.to_k_ip.weight"),
            "{err}"
        );
        let several = args(&out, &["--ip-adapter", &repo, "--ip-adapter-image", &img]);
        let err = format!("{:#}", generate::run(several).unwrap_err());
        assert!(
            err.contains("several weight files") && err.contains("ip-adapter_tiny.bin"),
            "{err}"
        );
    }

    #[test]
    fn missing_or_corrupt_ip_adapter_image_and_wrong_base_model_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.safetensors");
        let repo = repo();
        let missing = dir.path().join("nope.png");
        let corrupt = dir.path().join("corrupt.png");
        std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        for (img, want) in [(&missing, "nope.png"), (&corrupt, "corrupt.png")] {
            let a = args(
                &out,
                &[
                    "--ip-adapter",
                    &repo,
                    "--ip-adapter-weight-name",
                    "ip-adapter_tiny.bin",
                    "--ip-adapter-image",
                    img.to_str().unwrap(),
                ],
            );
            let err = format!("{:#}", generate::run(a).unwrap_err());
            assert!(
                err.contains("--ip-adapter-image") && err.contains(want),
                "{err}"
            );
        }
        // An SDXL IP-Adapter on an SD 1.5 pipeline: the key and both shapes are named.
        let img = ip_image();
        let a = args(
            &out,
            &[
                "--ip-adapter",
                &repo,
                "--ip-adapter-subfolder",
                "sdxl_models",
                "--ip-adapter-weight-name",
                "ip-adapter_tiny_sdxl.safetensors",
                "--ip-adapter-image",
                &img,
            ],
        );
        let err = format!("{:#}", generate::run(a).unwrap_err());
        assert!(
            err.contains("ip_adapter.1.to_k_ip.weight") && err.contains("[32, 32]"),
            "{err}"
        );
        // The image alone, without --ip-adapter.
        let a = args(&out, &["--ip-adapter-image", &img]);
        let err = format!("{:#}", generate::run(a).unwrap_err());
        assert!(err.contains("need --ip-adapter"), "{err}");
        assert!(!out.exists());
    }
}
