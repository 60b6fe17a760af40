#!/usr/bin/env bash
# GPU check in one go, for a machine with a GPU: the GPU parity tests, then the benchmark
# against diffusers on CUDA.
#
#   scripts/gpu-check.sh [cuda|wgpu] [f32|f16] [--quick]
#
# - `cargo test --features <backend>` of the GPU backend test (every SD op against flex) and of
#   diff-models' parity tests on the GPU device (BURN_DIFFUSERS_TEST_DEVICE);
# - `cargo xtask bench --device <backend> --dtype <dtype>`: UNet / VAE / CLIP and the SD 1.5
#   pipeline at 512x512, ours against diffusers on CUDA (PyTorch needs a CUDA build of torch in
#   the fixtures venv).
#
# The first `cuda` build downloads an LLVM bundle (cubecl's CUDA compiler); a wgpu build takes
# about 30 minutes on 2 cores. Fusion and autotune are on with either feature.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-cuda}"
dtype="${2:-f32}"
quick="${3:-}"
case "$backend" in cuda|wgpu) ;; *) echo "backend must be cuda or wgpu" >&2; exit 2 ;; esac
case "$dtype" in f32|f16) ;; *) echo "dtype must be f32 or f16" >&2; exit 2 ;; esac
export BURN_DIFFUSERS_TEST_DEVICE="${BURN_DIFFUSERS_TEST_DEVICE:-$backend}"

echo "== GPU parity tests ($backend)"
cargo test --release -p diff-pipelines --features "$backend" --test gpu_backends
cargo test --release -p diff-models --features "$backend"

echo "== bench ($backend, $dtype)"
cargo xtask bench --device "$backend" --dtype "$dtype" $quick
