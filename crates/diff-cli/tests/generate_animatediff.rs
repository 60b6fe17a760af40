//! `generate --pipeline AnimateDiffPipeline` through the built binary, on the tiny SD pipeline
//! and the tiny motion adapter of `tests/fixtures/70-animatediff`: the `--out-array` frames
//! against diffusers' `ddim_linear_16f` case (every pixel within 2/255, mean under 0.5/255, from
//! the fixture's `cases.json`), the GIF decoded by the image crate's GIF decoder (frame count,
//! size, delay), one PNG per frame, and the refusals of bad inputs.

use image::AnimationDecoder;
use image::codecs::gif::GifDecoder;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/70-animatediff")
}

fn generate(extra: &[&str]) -> Output {
    let model = root().join("tests/fixtures/tiny-sd");
    let adapter = fixture().join("motion_adapter");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"));
    cmd.args(["generate", "--model"])
        .arg(&model)
        .args(["--pipeline", "AnimateDiffPipeline", "--motion-adapter"])
        .arg(&adapter)
        .args(["--no-safety-checker"]);
    cmd.args(extra);
    cmd.output().unwrap()
}

fn floats(path: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let data = match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("{key} is {other:?}"),
    };
    (t.shape().to_vec(), data)
}

#[test]
fn animatediff_gif_frames_and_array_match_diffusers() {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("cases.json")).unwrap())
            .unwrap();
    let case = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ddim_linear_16f")
        .unwrap()
        .clone();
    let args = &case["args"];
    let dir = tempfile::tempdir().unwrap();
    let gif = dir.path().join("out.gif");
    let array = dir.path().join("frames.safetensors");
    let frames_dir = dir.path().join("frames");
    std::fs::create_dir(&frames_dir).unwrap();
    let out = generate(&[
        "--prompt",
        args["prompt"].as_str().unwrap(),
        "--num-frames",
        "16",
        "--steps",
        "3",
        "--guidance",
        "7.5",
        "--height",
        "32",
        "--width",
        "32",
        "--seed",
        "33",
        "--scheduler",
        "DDIMScheduler",
        "--scheduler-set",
        "beta_schedule=linear",
        "--fps",
        "8",
        "--decode-chunk-size",
        "5",
        "--out",
        gif.to_str().unwrap(),
        "--frames-dir",
        frames_dir.to_str().unwrap(),
        "--out-array",
        array.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The float frames against diffusers.
    let (shape, got) = floats(&array, "frames");
    let (want_shape, want) = floats(&fixture().join("ddim_linear_16f.safetensors"), "frames");
    assert_eq!(shape, want_shape);
    assert_eq!(shape, vec![1, 16, 32, 32, 3]);
    let (max_tol, mean_tol) = (
        meta["tolerance"]["max_abs"].as_f64().unwrap() as f32,
        meta["tolerance"]["mean_abs"].as_f64().unwrap() as f32,
    );
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let mean = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / got.len() as f32;
    eprintln!("CLI frames vs diffusers: max {max:.2e}, mean {mean:.2e}");
    assert!(max <= max_tol && mean < mean_tol, "max {max}, mean {mean}");

    // The GIF in a real decoder: 16 frames of 32x32, 1000 // 8 = 125 ms each (centiseconds).
    let file = std::io::BufReader::new(std::fs::File::open(&gif).unwrap());
    let decoded = GifDecoder::new(file)
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(decoded.len(), 16);
    for f in &decoded {
        assert_eq!(f.buffer().dimensions(), (32, 32));
        let (n, d) = f.delay().numer_denom_ms();
        assert!((120..=130).contains(&(n / d.max(1))), "delay {n}/{d}");
    }

    // One PNG per frame.
    let pngs = std::fs::read_dir(&frames_dir).unwrap().count();
    assert_eq!(pngs, 16);
    assert!(frames_dir.join("frame-000.png").is_file());
    assert!(frames_dir.join("frame-015.png").is_file());
}

#[test]
fn animatediff_bad_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gif = dir.path().join("x.gif");
    let gif = gif.to_str().unwrap();
    // More frames than the adapter's motion_max_seq_length (32).
    let out = generate(&[
        "--prompt",
        "x",
        "--num-frames",
        "33",
        "--steps",
        "1",
        "--height",
        "16",
        "--width",
        "16",
        "--out",
        gif,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("num_frames"), "{err}");
    assert!(!Path::new(gif).exists());
    // A PNG name for the animated output.
    let png = dir.path().join("x.png");
    let out = generate(&["--prompt", "x", "--out", png.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(".gif"), "{err}");
    // The AnimateDiff flags without the class.
    let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["generate", "--model"])
        .arg(root().join("tests/fixtures/tiny-sd"))
        .args(["--prompt", "x", "--num-frames", "4", "--out", gif])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("AnimateDiffPipeline"),
        "{err}"
    );
}

#[test]
fn convert_motion_module_is_wired_and_refuses_a_file_without_motion_modules() {
    let dir = tempfile::tempdir().unwrap();
    // A diffusers UNet file has no original motion-module keys.
    let not_mm = root().join("tests/fixtures/tiny-sd/unet/diffusion_pytorch_model.safetensors");
    let out_dir = dir.path().join("adapter");
    let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["convert", "--motion-module"])
        .arg(&not_mm)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("motion modules"),
        "{err}"
    );
    assert!(!out_dir.exists());
    let help = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["convert", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--motion-module"));
}
