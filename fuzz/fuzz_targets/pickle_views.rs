//! Tensor views from fuzzed shapes, strides, storage offsets and storage sizes, wrapped in a
//! well-formed legacy `torch.save` checkpoint (the same layout as
//! `crates/diff-format/tests/pickle_hostile.rs` builds), so that the fuzzer spends its time in
//! the view arithmetic and the materialisation budget rather than in the pickle framing. Every
//! input must give tensors or a typed error: no panic, no allocation beyond the budget.
#![no_main]

use diff_format::pickle::PickleCheckpoint;
use libfuzzer_sys::fuzz_target;

fn s(out: &mut Vec<u8>, text: &str) {
    out.push(b'X');
    out.extend((text.len() as u32).to_le_bytes());
    out.extend(text.as_bytes());
}

fn int(out: &mut Vec<u8>, v: u64) {
    out.extend([0x8a, 8]);
    out.extend(v.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    // Layout: [rank, numel(1 byte), offset(8), then rank x (size 8, stride 8)].
    if data.len() < 10 {
        return;
    }
    let rank = usize::from(data[0] % 6);
    let numel = u64::from(data[1]);
    let word = |i: usize| {
        data.get(i..i + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let offset = word(2) % 64;
    let mut root = vec![b'}', b'('];
    s(&mut root, "w");
    root.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    s(&mut root, "storage");
    root.extend(b"ctorch\nFloatStorage\n");
    s(&mut root, "0");
    s(&mut root, "cpu");
    int(&mut root, numel);
    root.extend(b"tQ");
    int(&mut root, offset);
    root.push(b'(');
    for d in 0..rank {
        int(&mut root, word(10 + 16 * d) >> 1);
    }
    root.extend(b"t(");
    for d in 0..rank {
        int(&mut root, word(18 + 16 * d) >> 1);
    }
    root.extend(b"t\x89ccollections\nOrderedDict\n)RtRu");
    let mut file = vec![0x80, 2, 0x8a, 10];
    file.extend(&0x1950_A86A_20F9_469C_FC6Cu128.to_le_bytes()[..10]);
    file.extend([
        b'.', 0x80, 2, b'M', 0xe9, 0x03, b'.', 0x80, 2, b'}', b'.', 0x80, 2,
    ]);
    file.extend(root);
    file.extend([b'.', 0x80, 2, b']', b'(']);
    s(&mut file, "0");
    file.extend([b'e', b'.']);
    file.extend(numel.to_le_bytes());
    file.extend(std::iter::repeat_n(0u8, numel as usize * 4));
    if let Ok(ckpt) = PickleCheckpoint::from_bytes(file, "fuzz.bin") {
        let _ = ckpt.read_state_dict();
    }
});
