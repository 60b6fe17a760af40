//! Property tests for the parsers and the Python-spelling JSON writer: no input panics, and
//! what we write parses back to what we wrote from.

use diff_format::json::{DumpOptions, dumps, python_float_repr};
use diff_format::safetensors_header::parse_header;
use proptest::prelude::*;
use serde_json::Value;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".*", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Python's float spelling round-trips exactly (tolerance: bit-exact).
    #[test]
    fn python_float_repr_round_trips(bits in any::<u64>()) {
        let x = f64::from_bits(bits);
        prop_assume!(x.is_finite());
        let text = python_float_repr(x);
        let back: f64 = text.parse().unwrap();
        prop_assert_eq!(back.to_bits(), x.to_bits(), "{}", text);
    }

    /// Every document we write parses back to the same value, in both ASCII modes.
    #[test]
    fn dumps_output_parses_back_to_the_same_value(value in arb_json()) {
        for options in [DumpOptions::diffusers(), DumpOptions::tokenizer()] {
            let text = dumps(&value, &options);
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &value);
        }
    }

    /// Arbitrary bytes give a header or a typed error, never a panic.
    #[test]
    fn safetensors_header_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_header(&bytes);
    }

    /// A small valid header built from random shapes is accepted with the right byte ranges.
    #[test]
    fn valid_random_headers_are_accepted(shapes in prop::collection::vec(prop::collection::vec(0u64..5, 0..3), 1..6)) {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for (i, shape) in shapes.iter().enumerate() {
            let bytes = shape.iter().product::<u64>() * 4;
            header.insert(format!("t{i}"), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}));
            offset += bytes;
        }
        let text = serde_json::to_string(&header).unwrap();
        let mut file = (text.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(text.as_bytes());
        file.extend(std::iter::repeat_n(0u8, offset as usize));
        let parsed = parse_header(&file).unwrap();
        prop_assert_eq!(parsed.tensors.len(), shapes.len());
        prop_assert_eq!(parsed.data_len, offset);
    }
}
