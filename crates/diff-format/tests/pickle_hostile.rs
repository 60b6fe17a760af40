//! Issue 18: hostile PyTorch pickles, built here byte by byte in the legacy `torch.save` format
//! (magic number, protocol version, system info, the object pickle, the storage keys, then each
//! storage). Each must give a typed error quickly, without a panic or a large allocation.

use diff_format::pickle::{PickleCheckpoint, PickleError};

/// One pickle string (BINUNICODE).
fn s(out: &mut Vec<u8>, text: &str) {
    out.push(b'X');
    out.extend((text.len() as u32).to_le_bytes());
    out.extend(text.as_bytes());
}

/// One pickle integer (LONG1, 8 bytes, so any u63 fits).
fn int(out: &mut Vec<u8>, v: u64) {
    out.extend([0x8a, 8]);
    out.extend(v.to_le_bytes());
}

/// A tensor rebuilt from float32 storage `key` of `numel` elements.
fn tensor(out: &mut Vec<u8>, key: &str, numel: u64, shape: &[u64], stride: &[u64]) {
    out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    out.push(b'(');
    s(out, "storage");
    out.extend(b"ctorch\nFloatStorage\n");
    s(out, key);
    s(out, "cpu");
    int(out, numel);
    out.extend(b"tQ");
    int(out, 0);
    out.push(b'(');
    for &d in shape {
        int(out, d);
    }
    out.extend(b"t(");
    for &d in stride {
        int(out, d);
    }
    out.extend(b"t\x89ccollections\nOrderedDict\n)Rt");
    out.push(b'R');
}

/// A legacy checkpoint whose object pickle body is `root` (without protocol header and STOP)
/// and whose storages are `(key, numel)` float32 zeros.
fn legacy(root: &[u8], storages: &[(&str, u64)]) -> Vec<u8> {
    let mut out = vec![0x80, 2, 0x8a, 10];
    out.extend(0x1950_A86A_20F9_469C_FC6Cu128.to_le_bytes()[..10].iter());
    out.push(b'.');
    out.extend([0x80, 2, b'M', 0xe9, 0x03, b'.']);
    out.extend([0x80, 2, b'}', b'.']);
    out.extend([0x80, 2]);
    out.extend(root);
    out.push(b'.');
    out.extend([0x80, 2, b']', b'(']);
    for (key, _) in storages {
        s(&mut out, key);
    }
    out.extend([b'e', b'.']);
    for (_, numel) in storages {
        out.extend(numel.to_le_bytes());
        out.extend(std::iter::repeat_n(0u8, *numel as usize * 4));
    }
    out
}

/// One tensor of a hand-built state dict: name, storage key, storage elements, shape, stride.
type TensorSpec<'a> = (&'a str, &'a str, u64, Vec<u64>, Vec<u64>);

/// A state dict `{name: tensor, ...}` as the body of an object pickle.
fn state_dict(tensors: &[TensorSpec<'_>]) -> Vec<u8> {
    let mut out = vec![b'}', b'('];
    for (name, key, numel, shape, stride) in tensors {
        s(&mut out, name);
        tensor(&mut out, key, *numel, shape, stride);
    }
    out.push(b'u');
    out
}

fn open(bytes: Vec<u8>) -> PickleCheckpoint {
    PickleCheckpoint::from_bytes(bytes, "hostile.bin").expect("parses")
}

#[test]
fn a_valid_hand_built_checkpoint_reads() {
    let root = state_dict(&[("w", "0", 6, vec![2, 3], vec![3, 1])]);
    let ckpt = open(legacy(&root, &[("0", 6)]));
    let tensors = ckpt.read_state_dict().expect("reads");
    assert_eq!(tensors.len(), 1);
    assert_eq!(tensors[0].2, vec![0u8; 24]);
}

#[test]
fn element_count_times_size_overflowing_is_a_typed_error() {
    for shape in [
        vec![1u64 << 62],
        vec![1 << 40, 1 << 40],
        vec![u64::MAX >> 1, 3],
    ] {
        let stride = vec![0; shape.len()];
        let root = state_dict(&[("w", "0", 1, shape.clone(), stride)]);
        let ckpt = open(legacy(&root, &[("0", 1)]));
        let (name, info) = ckpt.state_dict().expect("parses").remove(0);
        let err = ckpt.read_tensor(&name, &info).expect_err("refused");
        assert!(
            matches!(
                err,
                PickleError::MaterializeBudget { .. } | PickleError::TensorOutOfBounds { .. }
            ),
            "{shape:?}: {err}"
        );
        assert!(ckpt.read_state_dict().is_err(), "{shape:?}");
    }
}

#[test]
fn stride_zero_views_of_one_element_are_refused_before_allocating() {
    // 100,000 x 100,000 float32 = 40 GB from a storage of one element.
    let root = state_dict(&[("w", "0", 1, vec![100_000, 100_000], vec![0, 0])]);
    let bytes = legacy(&root, &[("0", 1)]);
    assert!(bytes.len() < 1024, "{} bytes", bytes.len());
    let ckpt = open(bytes);
    let started = std::time::Instant::now();
    let err = ckpt.read_state_dict().expect_err("refused");
    assert!(
        matches!(err, PickleError::MaterializeBudget { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("budget"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn many_tensors_aliasing_one_storage_count_against_the_budget() {
    // 200 views of one 100,000-element storage (400 KB): 80 MB materialised from a file of
    // about 430 KB.
    let names: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    let tensors: Vec<_> = names
        .iter()
        .map(|n| (n.as_str(), "0", 100_000u64, vec![100_000u64], vec![1u64]))
        .collect();
    let ckpt = open(legacy(&state_dict(&tensors), &[("0", 100_000)]));
    let err = ckpt.read_state_dict().expect_err("refused");
    assert!(
        matches!(err, PickleError::MaterializeBudget { .. }),
        "{err}"
    );
    // The budget can be raised by a caller that expects this much (known parameter count).
    let ckpt = ckpt.with_materialize_limit(100 << 20);
    assert_eq!(ckpt.read_state_dict().expect("within budget").len(), 200);
    // And lowered: three 4000-byte views are 12,000 bytes.
    let tensors: Vec<_> = names[..3]
        .iter()
        .map(|n| (n.as_str(), "0", 1000u64, vec![1000u64], vec![1u64]))
        .collect();
    let ckpt = open(legacy(&state_dict(&tensors), &[("0", 1000)])).with_materialize_limit(10_000);
    assert!(ckpt.read_state_dict().is_err());
    let ckpt = ckpt.with_materialize_limit(12_000);
    assert!(ckpt.read_state_dict().is_ok());
}

#[test]
fn memo_billion_laughs_is_refused_quickly() {
    // L0 = ["lol"]; Li = [L(i-1)] * 10 via memo references; 30 levels: 10^30 leaves.
    let mut root = vec![b']', b'('];
    s(&mut root, "lol");
    root.extend([b'e', b'q', 0]);
    for level in 1u8..=30 {
        root.extend([b']', b'(']);
        for _ in 0..10 {
            root.extend([b'h', level - 1]);
        }
        root.extend([b'e', b'q', level]);
    }
    let bytes = legacy(&root, &[]);
    assert!(bytes.len() < 1024, "{} bytes", bytes.len());
    let started = std::time::Instant::now();
    let err = PickleCheckpoint::from_bytes(bytes, "laughs.bin").expect_err("refused");
    assert!(err.to_string().contains("billion laughs"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

mod fuzz {
    //! Random tensor views (shapes, strides, offsets, storage sizes) never panic and never
    //! allocate beyond the budget.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_tensor_views_never_panic(
            shape in proptest::collection::vec(prop_oneof![0u64..5, Just(u64::MAX >> 2), Just(1u64 << 31)], 0..5),
            strides in proptest::collection::vec(prop_oneof![0u64..7, Just(u64::MAX >> 3)], 5),
            numel in 0u64..16,
        ) {
            let stride = strides[..shape.len()].to_vec();
            let root = state_dict(&[("w", "0", numel, shape, stride)]);
            if let Ok(ckpt) = PickleCheckpoint::from_bytes(legacy(&root, &[("0", numel)]), "f.bin") {
                let _ = ckpt.read_state_dict();
                if let Ok(mut tensors) = ckpt.state_dict() && let Some((name, info)) = tensors.pop() {
                    let _ = ckpt.read_tensor(&name, &info);
                }
            }
        }
    }
}

#[test]
fn a_100000_dimension_shape_gives_a_short_message() {
    // One element in a 100,000-dimension view of an empty storage: out of bounds, and the
    // message names the layout.
    let shape = vec![1u64; 100_000];
    let stride = vec![1u64; 100_000];
    let root = state_dict(&[("w", "0", 0, shape, stride)]);
    let ckpt = open(legacy(&root, &[("0", 0)]));
    let msg = ckpt.read_state_dict().expect_err("refused").to_string();
    assert!(msg.len() < 1000, "{} bytes", msg.len());
    assert!(msg.contains("(100000 dimensions)"), "{msg}");
    assert_eq!(diff_format::short_shape(&[1, 2, 3]), "[1, 2, 3]");
    assert_eq!(
        diff_format::short_shape(&[7u8; 9]),
        "[7, 7, 7, 7, 7, 7, 7, 7, ... (9 dimensions)]"
    );
}
