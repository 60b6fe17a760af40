//! `diff_format::pickle` against checkpoints written by real `torch.save`
//! (`tests/fixtures/50-convert/gen_pickle.py`). Tensor bytes must be identical (tolerance: exact,
//! they are the same bits) to torch's `.contiguous()` of each tensor, saved by safetensors.

use diff_format::pickle::{PickleCheckpoint, PickleError, StorageDtype, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/50-convert/pickle")
        .join(name)
}

/// A minimal safetensors reader (this crate does not depend on the safetensors crate).
fn read_safetensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (k, v) in header.as_object().unwrap() {
        if k == "__metadata__" {
            continue;
        }
        let dtype = v["dtype"].as_str().unwrap().to_string();
        let shape = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let off = v["data_offsets"].as_array().unwrap();
        let (a, b) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        out.insert(k.clone(), (dtype, shape, data[a..b].to_vec()));
    }
    out
}

fn expected_order(section: &str) -> Vec<String> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    meta[section]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

fn check_matches_torch(file: &str, prefix: &str, section: &str) {
    let ckpt = PickleCheckpoint::open(fixture(file)).unwrap();
    let expected = read_safetensors(&fixture("expected.safetensors"));
    let tensors = ckpt.read_state_dict().unwrap();
    let names: Vec<String> = tensors.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(
        names,
        expected_order(section),
        "{file}: key order must be the pickle's"
    );
    for (name, info, data) in tensors {
        let (dtype, shape, bytes) = &expected[&format!("{prefix}{name}")];
        assert_eq!(
            info.dtype.safetensors_name(),
            dtype,
            "{file}: dtype of {name}"
        );
        assert_eq!(&info.shape, shape, "{file}: shape of {name}");
        assert_eq!(&data, bytes, "{file}: bytes of {name} (exact)");
        // `read_tensor` (one at a time) must agree with the batched reader.
        assert_eq!(
            ckpt.read_tensor(&name, &info).unwrap(),
            data,
            "{file}: read_tensor({name})"
        );
    }
}

#[test]
fn zip_checkpoint_tensors_match_torch_bit_for_bit() {
    check_matches_torch("state_dict.bin", "", "state_dict");
}

#[test]
fn protocol4_checkpoint_tensors_match_torch_bit_for_bit() {
    check_matches_torch("state_dict_protocol4.bin", "", "state_dict");
}

#[test]
fn legacy_format_checkpoint_tensors_match_torch_bit_for_bit() {
    check_matches_torch("state_dict_legacy.bin", "", "state_dict");
}

#[test]
fn lightning_ckpt_descends_into_nested_state_dict() {
    check_matches_torch("nested.ckpt", "", "state_dict");
    let ckpt = PickleCheckpoint::open(fixture("nested.ckpt")).unwrap();
    assert_eq!(
        ckpt.root().get("global_step").and_then(Value::as_int),
        Some(1234)
    );
    assert_eq!(ckpt.root().get("lr"), Some(&Value::Float(1e-4)));
}

#[test]
fn module_state_dict_with_metadata_reads() {
    check_matches_torch("model_state_dict.bin", "module.", "model_state_dict");
}

#[test]
fn in_memory_checkpoint_reads_like_the_file() {
    let bytes = std::fs::read(fixture("nested.ckpt")).unwrap();
    let memory = PickleCheckpoint::from_bytes(bytes, "nested.ckpt").unwrap();
    let file = PickleCheckpoint::open(fixture("nested.ckpt")).unwrap();
    assert_eq!(
        memory.read_state_dict().unwrap(),
        file.read_state_dict().unwrap()
    );
}

#[test]
fn views_keep_their_strides_and_offsets() {
    let ckpt = PickleCheckpoint::open(fixture("state_dict.bin")).unwrap();
    let sd: BTreeMap<_, _> = ckpt.state_dict().unwrap().into_iter().collect();
    let t = &sd["f32_step_slice"];
    assert_eq!((t.stride.clone(), t.storage_offset), (vec![6, 2], 1));
    assert_eq!(sd["f32_offset_slice"].storage_offset, 6);
    assert_eq!(sd["f32_expanded"].stride, vec![1, 0]);
    assert_eq!(sd["f32"].storage_key, sd["f32_tied"].storage_key);
    assert_eq!(sd["bf16"].dtype, StorageDtype::BF16);
    assert_eq!(sd["scalar"].shape, Vec::<usize>::new());
}

fn assert_forbidden(file: &str, module: &str, name: &str) {
    match PickleCheckpoint::open(fixture(file)) {
        Err(PickleError::ForbiddenGlobal {
            module: m, name: n, ..
        }) => {
            assert_eq!((m.as_str(), n.as_str()), (module, name));
        }
        other => panic!("{file}: expected ForbiddenGlobal({module}.{name}), got {other:?}"),
    }
}

#[test]
fn refuses_pickle_calling_os_system() {
    assert_forbidden("malicious_os_system.bin", "posix", "system");
    let err = PickleCheckpoint::open(fixture("malicious_os_system.bin")).unwrap_err();
    assert!(err.to_string().contains("posix.system"), "{err}");
}

#[test]
fn refuses_pickle_calling_eval() {
    // Protocol 2 writes Python 3's `builtins` under its Python 2 name.
    assert_forbidden("malicious_eval.bin", "__builtin__", "eval");
}

#[test]
fn non_checkpoint_file_is_a_typed_error() {
    let dir = std::env::temp_dir().join(format!("pickle-not-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.bin");
    std::fs::write(&p, b"hello world").unwrap();
    assert!(matches!(
        PickleCheckpoint::open(&p),
        Err(PickleError::NotACheckpoint { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn open_bytes(bytes: &[u8], _tag: &str) -> Result<(), PickleError> {
        PickleCheckpoint::from_bytes(bytes.to_vec(), "fuzz.bin")
            .and_then(|c| c.read_state_dict().map(|_| ()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Arbitrary bytes behind a pickle or zip header never panic.
        #[test]
        fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), zip in any::<bool>()) {
            if zip { bytes.splice(0..0, *b"PK\x03\x04"); } else { bytes.splice(0..0, [0x80, 0x02]); }
            let _ = open_bytes(&bytes, "rand");
        }

        /// Corrupting bytes of real checkpoints (zip and legacy) never panics.
        #[test]
        fn corrupted_checkpoints_never_panic(file in prop::sample::select(vec!["state_dict.bin", "state_dict_legacy.bin", "nested.ckpt"]),
                                             edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                             cut in any::<prop::sample::Index>()) {
            let mut bytes = std::fs::read(fixture(file)).unwrap();
            for (at, b) in edits { let i = at.index(bytes.len()); bytes[i] = b; }
            let _ = open_bytes(&bytes, "edit");
            let keep = cut.index(bytes.len());
            let _ = open_bytes(&bytes[..keep], "cut");
        }
    }
}
