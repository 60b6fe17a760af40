//! Bit-exact checks of [`TorchGenerator`] against vectors recorded with real torch 2.15 by
//! `tests/fixtures/10-schedulers/generate.py` (`rng.json`). Every comparison is exact: the
//! float bit patterns must be identical (tolerance: zero ulp).

use diff_schedulers::{NoiseDtype, TorchGenerator, randn_tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;
use common::u64s;

fn fixture() -> Value {
    common::fixture_json("10-schedulers/rng.json")
}

fn bits32(values: &[f32]) -> Vec<u64> {
    values.iter().map(|v| u64::from(v.to_bits())).collect()
}

#[test]
fn randn_float32_matches_torch_bits_for_odd_sizes_and_seeds() {
    let f = fixture();
    let cases = f["randn_f32"].as_array().expect("randn_f32");
    let mut checked = 0;
    for case in cases {
        let seed = case["seed"].as_u64().expect("seed");
        let n = case["n"].as_u64().expect("n") as usize;
        let got = TorchGenerator::new(seed).randn(n, NoiseDtype::Float32);
        if let Some(sha) = case["sha256"].as_str() {
            // The 1000003-element draw: sampled positions and a hash of all bytes.
            let idx = u64s(&case["sample_indices"]);
            let want = u64s(&case["sample_bits"]);
            let sampled: Vec<u64> = idx
                .iter()
                .map(|i| u64::from(got[*i as usize].to_bits()))
                .collect();
            assert_eq!(sampled, want, "seed {seed} n {n}: sampled bits differ");
            let bytes: Vec<u8> = got.iter().flat_map(|v| v.to_le_bytes()).collect();
            let digest: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                digest, sha,
                "seed {seed} n {n}: sha256 of all values differs"
            );
        } else {
            assert_eq!(bits32(&got), u64s(&case["bits"]), "seed {seed} n {n}");
        }
        checked += 1;
    }
    assert!(
        checked >= 50,
        "expected the full fixture, checked {checked}"
    );
}

#[test]
fn rand_float32_matches_torch_bits() {
    let f = fixture();
    for case in f["rand_f32"].as_array().expect("rand_f32") {
        let seed = case["seed"].as_u64().expect("seed");
        let n = case["n"].as_u64().expect("n") as usize;
        let got = TorchGenerator::new(seed).rand(n, NoiseDtype::Float32);
        assert_eq!(bits32(&got), u64s(&case["bits"]), "seed {seed} n {n}");
    }
}

#[test]
fn generator_state_carries_across_calls_like_torch() {
    let f = fixture();
    for case in f["chains"].as_array().expect("chains") {
        let seed = case["seed"].as_u64().expect("seed");
        let mut g = TorchGenerator::new(seed);
        let sizes = u64s(&case["sizes"]);
        let draws = case["bits"].as_array().expect("bits");
        for (n, want) in sizes.iter().zip(draws) {
            let got = g.randn(*n as usize, NoiseDtype::Float32);
            assert_eq!(
                bits32(&got),
                u64s(want),
                "seed {seed}, chain {sizes:?}, size {n}"
            );
        }
    }
}

#[test]
fn randn_half_and_bfloat16_match_torch_2_15_bits() {
    let f = fixture();
    for case in f["randn_half"].as_array().expect("randn_half") {
        let seed = case["seed"].as_u64().expect("seed");
        let n = case["n"].as_u64().expect("n") as usize;
        let dtype = case["dtype"].as_str().expect("dtype");
        let got: Vec<u64> = match dtype {
            "float16" => TorchGenerator::new(seed)
                .randn(n, NoiseDtype::Float16)
                .into_iter()
                .map(|v| u64::from(half::f16::from_f32(v).to_bits()))
                .collect(),
            _ => TorchGenerator::new(seed)
                .randn(n, NoiseDtype::BFloat16)
                .into_iter()
                .map(|v| u64::from(half::bf16::from_f32(v).to_bits()))
                .collect(),
        };
        assert_eq!(got, u64s(&case["bits"]), "{dtype} seed {seed} n {n}");
    }
}

#[test]
fn randn_tensor_with_generator_lists_matches_diffusers() {
    let f = fixture();
    for case in f["randn_tensor_lists"].as_array().expect("lists") {
        let seeds = u64s(&case["seeds"]);
        let shape: Vec<usize> = u64s(&case["shape"])
            .into_iter()
            .map(|v| v as usize)
            .collect();
        let mut gens: Vec<TorchGenerator> = seeds.iter().map(|s| TorchGenerator::new(*s)).collect();
        let got = randn_tensor(&shape, &mut gens, NoiseDtype::Float32).expect("randn_tensor");
        assert_eq!(
            bits32(&got),
            u64s(&case["bits"]),
            "seeds {seeds:?} shape {shape:?}"
        );
    }
}

#[test]
fn randn_tensor_rejects_a_generator_list_of_the_wrong_length() {
    let mut gens = vec![TorchGenerator::new(1), TorchGenerator::new(2)];
    let err = randn_tensor(&[3, 4], &mut gens, NoiseDtype::Float32);
    assert!(
        err.is_err(),
        "3 batch items with 2 generators must be an error"
    );
}
