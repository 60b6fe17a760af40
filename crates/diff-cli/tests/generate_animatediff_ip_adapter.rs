//! `generate --pipeline AnimateDiffPipeline --motion-adapter DIR --ip-adapter ... --lora ...`
//! through the built binary: the loading guide's last step (AnimateDiff on the SD pipeline with
//! an IP-Adapter and the "zoom-out" motion LoRA at 0.75, DDIM with `beta_schedule="linear"`, 16
//! frames) against diffusers' `ip_cfg_lora075_16f` case of
//! `tests/fixtures/71-animatediff-ip-adapter` (every pixel of every frame within 2/255, mean
//! under 0.5/255, from the fixture's `cases.json`), and the GIF it writes.

use image::AnimationDecoder;
use image::codecs::gif::GifDecoder;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
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
fn animatediff_with_ip_adapter_and_motion_lora_matches_diffusers() {
    let dir71 = fixtures().join("71-animatediff-ip-adapter");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir71.join("cases.json")).unwrap()).unwrap();
    let case = meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ip_cfg_lora075_16f")
        .unwrap()
        .clone();
    let args = &case["args"];
    let tmp = tempfile::tempdir().unwrap();
    let gif = tmp.path().join("out_animate.gif");
    let array = tmp.path().join("frames.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_burn-diffusers"))
        .args(["generate", "--model"])
        .arg(fixtures().join("tiny-sd"))
        .args(["--no-safety-checker", "--pipeline", "AnimateDiffPipeline"])
        .arg("--motion-adapter")
        .arg(fixtures().join("70-animatediff/motion_adapter"))
        .args(["--scheduler", "DDIMScheduler"])
        .args(["--scheduler-set", "beta_schedule=linear"])
        .arg("--ip-adapter")
        .arg(fixtures().join("47-ip-adapter/repo"))
        .args(["--ip-adapter-weight-name", "ip-adapter_tiny.bin"])
        .arg("--ip-adapter-image")
        .arg(fixtures().join("47-ip-adapter/ip_image.png"))
        .arg("--lora")
        .arg(fixtures().join("70-animatediff/motion_lora"))
        .args(["--lora-scale", &case["lora"].as_f64().unwrap().to_string()])
        .args(["--prompt", args["prompt"].as_str().unwrap()])
        .args(["--num-frames", &args["num_frames"].to_string()])
        .args(["--steps", &args["num_inference_steps"].to_string()])
        .args(["--height", &args["height"].to_string()])
        .args(["--width", &args["width"].to_string()])
        .args(["--seed", &args["seed"].to_string()])
        .arg("--out")
        .arg(&gif)
        .arg("--out-array")
        .arg(&array)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (shape, got) = floats(&array, "frames");
    let (want_shape, want) = floats(&dir71.join("ip_cfg_lora075_16f.safetensors"), "frames");
    assert_eq!(shape, want_shape);
    assert_eq!(shape, vec![1, 16, 32, 32, 3]);
    let max_tol = meta["tolerance"]["max_abs"].as_f64().unwrap() as f32;
    let mean_tol = meta["tolerance"]["mean_abs"].as_f64().unwrap() as f32;
    let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
    let max = diffs.iter().copied().fold(0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    eprintln!(
        "CLI AnimateDiff + IP-Adapter + motion LoRA vs diffusers: max {max:.2e}, mean {mean:.2e}"
    );
    assert!(max <= max_tol && mean < mean_tol, "max {max}, mean {mean}");

    let file = std::io::BufReader::new(std::fs::File::open(&gif).unwrap());
    let decoded = GifDecoder::new(file)
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(decoded.len(), 16);
    assert_eq!(decoded[0].buffer().dimensions(), (32, 32));
}
