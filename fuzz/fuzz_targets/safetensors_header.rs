//! Any byte string given to the safetensors header parser yields a header or a typed error,
//! never a panic, and an accepted header's tensors tile the data section exactly.
#![no_main]

use diff_format::safetensors_header::parse_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = parse_header(data) {
        let mut cursor = 0u64;
        for t in &header.tensors {
            assert_eq!(t.begin, cursor);
            cursor = t.end;
        }
        assert_eq!(cursor, header.data_len);
    }
});
