//! The optional GPU backends against burn's `flex` CPU backend, on the tensor operations the
//! Stable Diffusion models are made of: batched matmul (attention, linear layers), conv2d
//! (ResNet blocks, down-sampling), softmax, GELU and the mean/variance reductions of group norm.
//!
//! Only built with `--features wgpu` or `--features cuda` (see diff-models' README, "GPU
//! backends"). On a machine without a GPU, `wgpu` runs on Mesa's software Vulkan driver
//! (lavapipe, Debian package `mesa-vulkan-drivers`). The device comes from
//! `BURN_DIFFUSERS_TEST_DEVICE` (any string `parse_device` takes, e.g. `wgpu:cpu`, `cuda:1`),
//! else `wgpu` when compiled in, else `cuda:0`.
//!
//! Tolerance: max |gpu - flex| <= 1e-4 x max |flex| in f32, the models' parity gate; the two
//! backends add in different orders, which costs a few ulps, not more.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use diff_pipelines::{DeviceChoice, parse_device};

const TOL: f32 = 1e-4;

fn gpu_spec() -> String {
    std::env::var("BURN_DIFFUSERS_TEST_DEVICE").unwrap_or_else(|_| {
        if cfg!(feature = "wgpu") {
            "wgpu".to_string()
        } else {
            "cuda:0".to_string()
        }
    })
}

fn gpu() -> Device {
    let spec = gpu_spec();
    let choice: DeviceChoice = spec.parse().expect("BURN_DIFFUSERS_TEST_DEVICE");
    assert_ne!(
        choice,
        DeviceChoice::Flex,
        "the test device must be a GPU backend"
    );
    parse_device(&spec).unwrap_or_else(|e| panic!("{e}"))
}

/// Deterministic values in [-1, 1) from a 64-bit LCG, the same on every backend (burn's own
/// random generators differ between backends).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor<const D: usize>(seed: u64, shape: [usize; D], device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(seed, n), shape), device)
}

/// The same input on flex and on the GPU.
fn pair<const D: usize>(seed: u64, shape: [usize; D], gpu: &Device) -> (Tensor<D>, Tensor<D>) {
    (
        tensor(seed, shape, &Device::flex()),
        tensor(seed, shape, gpu),
    )
}

fn assert_close<const D: usize>(what: &str, gpu: Tensor<D>, flex: Tensor<D>) {
    assert_eq!(gpu.dims(), flex.dims(), "{what}: shape");
    let got = gpu.into_data().try_to_vec::<f32>().expect("f32 data");
    let want = flex.into_data().try_to_vec::<f32>().expect("f32 data");
    let scale = want
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let rel = err / scale;
    eprintln!("{what}: max abs error {err:.3e}, relative {rel:.3e} (tolerance {TOL:.0e})");
    assert!(rel <= TOL, "{what}: relative error {rel:.3e} > {TOL:.0e}");
}

#[test]
fn batched_matmul_on_gpu_matches_flex() {
    let device = gpu();
    // Attention-shaped: [batch, heads, tokens, head_dim] x [batch, heads, head_dim, tokens].
    let (a_cpu, a_gpu) = pair(1, [2, 3, 64, 40], &device);
    let (b_cpu, b_gpu) = pair(2, [2, 3, 40, 77], &device);
    assert_close("matmul", a_gpu.matmul(b_gpu), a_cpu.matmul(b_cpu));
}

#[test]
fn conv2d_on_gpu_matches_flex() {
    let device = gpu();
    let (x_cpu, x_gpu) = pair(3, [2, 8, 16, 16], &device);
    let (w_cpu, w_gpu) = pair(4, [16, 8, 3, 3], &device);
    let (b_cpu, b_gpu) = pair(5, [16], &device);
    // A ResNet block's 3x3 same-padding conv, and the Downsample2D stride-2 conv.
    for stride in [1, 2] {
        let options = || ConvOptions::new([stride, stride], [1, 1], [1, 1], 1);
        assert_close(
            &format!("conv2d 3x3 stride {stride}"),
            conv2d(x_gpu.clone(), w_gpu.clone(), Some(b_gpu.clone()), options()),
            conv2d(x_cpu.clone(), w_cpu.clone(), Some(b_cpu.clone()), options()),
        );
    }
}

#[test]
fn softmax_gelu_and_group_statistics_on_gpu_match_flex() {
    let device = gpu();
    let (s_cpu, s_gpu) = pair(6, [2, 4, 64, 77], &device);
    let scale = |t: Tensor<4>| t.mul_scalar(8.0);
    assert_close(
        "softmax",
        softmax(scale(s_gpu), 3),
        softmax(scale(s_cpu), 3),
    );
    let (g_cpu, g_gpu) = pair(7, [2, 32, 4 * 8 * 8], &device);
    assert_close("gelu", gelu(g_gpu.clone()), gelu(g_cpu.clone()));
    // Group norm's statistics: per (batch, group) mean and biased variance.
    let var = |t: Tensor<3>| t.var_mean_bias(2);
    let (v_gpu, m_gpu) = var(g_gpu);
    let (v_cpu, m_cpu) = var(g_cpu);
    assert_close("group mean", m_gpu, m_cpu);
    assert_close("group variance", v_gpu, v_cpu);
}
