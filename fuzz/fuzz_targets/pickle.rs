//! Any bytes given to the restricted pickle reader (zip archive or legacy stream) yield a
//! checkpoint or a typed error, never a panic, a hang or an unbounded allocation; an accepted
//! checkpoint's tensors read back (or fail with a typed error).
#![no_main]

use diff_format::pickle::PickleCheckpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = PickleCheckpoint::from_bytes(data.to_vec(), "fuzz.bin") {
        let _ = ckpt.read_state_dict();
    }
});
