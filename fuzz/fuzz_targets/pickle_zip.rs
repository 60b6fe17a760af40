//! The zip (`torch.save` default) path of the restricted pickle reader, structure-aware: each
//! input builds a well-formed stored archive (`archive/data.pkl`, `archive/data/0`,
//! `archive/version`, optionally with zip64 records and torch's alignment padding) holding one
//! tensor whose shape, strides, storage offset and storage size come from the input, then
//! overwrites up to 32 header bytes at input-chosen places (sizes, offsets, name lengths,
//! signatures, the zip64 extra field), so the runs spend their time in the central-directory
//! walk, the entry bounds and the view arithmetic. Every input must give tensors or a typed
//! error: no panic, no allocation beyond the materialisation budget.
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

/// The object pickle of `{"w": tensor}` over persistent storage "0".
fn data_pkl(numel: u64, offset: u64, shape: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    s(&mut p, "w");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    s(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    s(&mut p, "0");
    s(&mut p, "cpu");
    int(&mut p, numel);
    p.extend(b"tQ");
    int(&mut p, offset);
    p.push(b'(');
    for &d in shape {
        int(&mut p, d);
    }
    p.extend(b"t(");
    for &d in stride {
        int(&mut p, d);
    }
    p.extend(b"t\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

/// A stored zip of `entries`; zip64 puts 0xFFFFFFFF in the classic fields and the real values
/// in zip64 extra fields and end records, as torch's writer does for large archives.
fn zip(entries: &[(&str, Vec<u8>)], zip64: bool, pad: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, body) in entries {
        let local = out.len() as u64;
        let extra_local = vec![0u8; pad % 64];
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(0u32.to_le_bytes()); // crc (not checked by torch's reader)
        out.extend((body.len() as u32).to_le_bytes());
        out.extend((body.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend((extra_local.len() as u16).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(&extra_local);
        out.extend(body);
        let mut extra = Vec::new();
        if zip64 {
            extra.extend(1u16.to_le_bytes());
            extra.extend(24u16.to_le_bytes());
            extra.extend((body.len() as u64).to_le_bytes());
            extra.extend((body.len() as u64).to_le_bytes());
            extra.extend(local.to_le_bytes());
        }
        let small = |v: u64| if zip64 { u32::MAX } else { v as u32 };
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(0u32.to_le_bytes());
        central.extend(small(body.len() as u64).to_le_bytes());
        central.extend(small(body.len() as u64).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend((extra.len() as u16).to_le_bytes());
        central.extend([0u8; 8]); // comment len, disk, internal attrs
        central.extend(0u32.to_le_bytes()); // external attrs
        central.extend(small(local).to_le_bytes());
        central.extend(name.as_bytes());
        central.extend(&extra);
    }
    let cd_offset = out.len() as u64;
    out.extend(&central);
    let count = entries.len() as u64;
    if zip64 {
        let z64 = out.len() as u64;
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(count.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend((central.len() as u64).to_le_bytes());
        out.extend(cd_offset.to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(z64.to_le_bytes());
        out.extend(1u32.to_le_bytes());
    }
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    let c16 = if zip64 { u16::MAX } else { count as u16 };
    out.extend(c16.to_le_bytes());
    out.extend(c16.to_le_bytes());
    let c32 = |v: u64| if zip64 { u32::MAX } else { v as u32 };
    out.extend(c32(central.len() as u64).to_le_bytes());
    out.extend(c32(cd_offset).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fuzz_target!(|data: &[u8]| {
    // Layout: [flags, rank, numel, offset, then rank x (size 4, stride 4), then patches of
    // (position u16, byte)].
    if data.len() < 4 {
        return;
    }
    let flags = data[0];
    let rank = usize::from(data[1] % 5);
    let numel = u64::from(data[2]);
    let offset = u64::from(data[3] % 32);
    let word = |i: usize| {
        data.get(i..i + 4).map_or(0, |b| {
            u64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
        })
    };
    let shape: Vec<u64> = (0..rank).map(|d| word(4 + 8 * d) >> (flags & 7)).collect();
    let stride: Vec<u64> = (0..rank).map(|d| word(8 + 8 * d) >> 1).collect();
    let prefix = if flags & 0x40 != 0 {
        "model"
    } else {
        "archive"
    };
    let storage = vec![0u8; numel as usize * 4];
    let names = [
        format!("{prefix}/data.pkl"),
        format!("{prefix}/data/0"),
        format!("{prefix}/version"),
    ];
    let mut entries = vec![
        (names[0].as_str(), data_pkl(numel, offset, &shape, &stride)),
        (names[1].as_str(), storage),
    ];
    if flags & 0x10 != 0 {
        entries.push((names[2].as_str(), b"3\n".to_vec()));
    }
    let mut file = zip(&entries, flags & 0x80 != 0, usize::from(flags >> 1));
    let patches = data.get(4 + 8 * rank..).unwrap_or(&[]);
    for patch in patches.chunks_exact(3).take(32) {
        let at = usize::from(u16::from_le_bytes([patch[0], patch[1]]));
        // Aim at the tail (central directory and end records) as often as at the head.
        let at = if at & 1 == 0 {
            at >> 1
        } else {
            file.len().saturating_sub(1 + (at >> 1))
        };
        if let Some(b) = file.get_mut(at) {
            *b = patch[2];
        }
    }
    if flags & 0x20 != 0 {
        // A truncated archive.
        let keep = file.len().saturating_sub(usize::from(data[3]));
        file.truncate(keep);
    }
    if let Ok(ckpt) = PickleCheckpoint::from_bytes(file, "fuzz.bin") {
        let _ = ckpt.read_state_dict();
    }
});
