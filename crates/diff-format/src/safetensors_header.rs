//! safetensors header inspection without reading tensor data.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of UTF-8 JSON
//! `{"__metadata__": {str: str}, "<tensor>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}}`,
//! then the data section. Validation follows the safetensors crate's rules: the header length is
//! capped ([`MAX_HEADER_LEN`]) and must fit in the file; every dtype must be known; each tensor's
//! byte range must equal `product(shape) × dtype size` (checked arithmetic); sorted by offset,
//! the ranges must be contiguous from 0 (no overlap, no gap) and cover the data section exactly.
//! Only the header is read from disk, so inspecting a 10 GB checkpoint reads a few kilobytes.

use crate::error::{FormatError, HeaderError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The largest header accepted (100 MB, as the safetensors crate caps it).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// A tensor element type as safetensors names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
#[allow(non_camel_case_types)]
pub enum Dtype {
    /// Boolean (1 byte).
    BOOL,
    /// 4-bit float (two per byte; only in even counts).
    F4,
    /// 6-bit float e2m3 (packed).
    F6_E2M3,
    /// 6-bit float e3m2 (packed).
    F6_E3M2,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// 8-bit float e5m2.
    F8_E5M2,
    /// 8-bit float e4m3.
    F8_E4M3,
    /// 8-bit float e8m0.
    F8_E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// Half precision float.
    F16,
    /// Brain float.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// Single precision float.
    F32,
    /// Double precision float.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Parses the header's dtype string.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Dtype::BOOL,
            "F4" => Dtype::F4,
            "F6_E2M3" => Dtype::F6_E2M3,
            "F6_E3M2" => Dtype::F6_E3M2,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E5M2" => Dtype::F8_E5M2,
            "F8_E4M3" => Dtype::F8_E4M3,
            "F8_E8M0" => Dtype::F8_E8M0,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            _ => return None,
        })
    }

    /// The header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6_E2M3 => "F6_E2M3",
            Dtype::F6_E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Size in bits of one element.
    pub fn bits(self) -> u64 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6_E2M3 | Dtype::F6_E3M2 => 6,
            Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::F8_E5M2
            | Dtype::F8_E4M3
            | Dtype::F8_E8M0 => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (state-dict key).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<u64>,
    /// Start offset within the data section.
    pub begin: u64,
    /// End offset (exclusive) within the data section.
    pub end: u64,
}

impl TensorInfo {
    /// Number of elements (the product of the shape; validated not to overflow).
    pub fn numel(&self) -> u64 {
        self.shape
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(*d))
            .unwrap_or(u64::MAX)
    }
    /// Bytes in the data section.
    pub fn byte_len(&self) -> u64 {
        self.end.saturating_sub(self.begin)
    }
}

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Tensors sorted by data offset.
    pub tensors: Vec<TensorInfo>,
    /// `__metadata__` (e.g. `{"format": "pt"}`).
    pub metadata: BTreeMap<String, String>,
    /// Length of the JSON header in bytes.
    pub header_len: u64,
    /// Length of the data section in bytes.
    pub data_len: u64,
}

impl SafetensorsHeader {
    /// Total elements over all tensors.
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.numel()))
    }

    /// Absolute file offset where the data section starts.
    pub fn data_start(&self) -> u64 {
        self.header_len.saturating_add(8)
    }
}

/// Reads and validates the header of a safetensors file, reading only the header bytes.
pub fn read_header(path: impl AsRef<Path>) -> Result<SafetensorsHeader, FormatError> {
    let path = path.as_ref();
    let io = |e| FormatError::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let bad = |kind| FormatError::SafetensorsHeader {
        path: path.to_path_buf(),
        kind,
    };
    if file_len < 8 {
        return Err(bad(HeaderError::TooShort { len: file_len }));
    }
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(io)?;
    let header_len = u64::from_le_bytes(prefix);
    let limit = MAX_HEADER_LEN.min(file_len - 8);
    if header_len > limit {
        return Err(bad(HeaderError::HeaderTooLarge { header_len, limit }));
    }
    // header_len <= MAX_HEADER_LEN, which fits in usize on every supported platform.
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    parse_header_json(&header, file_len - 8 - header_len).map_err(bad)
}

/// Parses and validates a whole safetensors buffer's header (the buffer holds the full file).
pub fn parse_header(bytes: &[u8]) -> Result<SafetensorsHeader, HeaderError> {
    let len = bytes.len() as u64;
    let Some(prefix) = bytes.get(..8) else {
        return Err(HeaderError::TooShort { len });
    };
    let mut raw = [0u8; 8];
    raw.copy_from_slice(prefix);
    let header_len = u64::from_le_bytes(raw);
    let limit = MAX_HEADER_LEN.min(len - 8);
    if header_len > limit {
        return Err(HeaderError::HeaderTooLarge { header_len, limit });
    }
    let end = 8 + header_len as usize;
    parse_header_json(&bytes[8..end], len - 8 - header_len)
}

/// Validates the JSON header bytes against a data section of `data_len` bytes.
pub fn parse_header_json(header: &[u8], data_len: u64) -> Result<SafetensorsHeader, HeaderError> {
    let header_len = header.len() as u64;
    let value: Value =
        serde_json::from_slice(header).map_err(|e| HeaderError::Json(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(HeaderError::Shape {
            key: ".".into(),
            expected: "a JSON object".into(),
        });
    };
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(map.len());
    for (name, entry) in map {
        if name == "__metadata__" {
            let Value::Object(meta) = entry else {
                return Err(HeaderError::Shape {
                    key: name,
                    expected: "an object of strings".into(),
                });
            };
            for (k, v) in meta {
                match v {
                    Value::String(s) => {
                        metadata.insert(k, s);
                    }
                    _ => {
                        return Err(HeaderError::Shape {
                            key: format!("__metadata__.{k}"),
                            expected: "a string".into(),
                        });
                    }
                }
            }
            continue;
        }
        tensors.push(parse_tensor(name, &entry)?);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    let mut cursor = 0u64;
    for t in &tensors {
        if t.end < t.begin || t.end > data_len {
            return Err(HeaderError::OutOfRange {
                tensor: t.name.clone(),
                begin: t.begin,
                end: t.end,
                data_len,
            });
        }
        if t.begin != cursor {
            return Err(HeaderError::NotContiguous {
                tensor: t.name.clone(),
                begin: t.begin,
                expected_begin: cursor,
            });
        }
        let bits = t
            .shape
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(*d))
            .and_then(|n| n.checked_mul(t.dtype.bits()))
            .ok_or_else(|| HeaderError::Overflow {
                tensor: t.name.clone(),
                shape: t.shape.clone(),
            })?;
        // Sub-byte dtypes must fill whole bytes.
        if bits % 8 != 0 || bits / 8 != t.end - t.begin {
            return Err(HeaderError::SizeMismatch {
                tensor: t.name.clone(),
                begin: t.begin,
                end: t.end,
                expected: bits.div_ceil(8),
                got: t.end - t.begin,
            });
        }
        cursor = t.end;
    }
    if cursor != data_len {
        return Err(HeaderError::NotCovering {
            covered: cursor,
            data_len,
        });
    }
    Ok(SafetensorsHeader {
        tensors,
        metadata,
        header_len,
        data_len,
    })
}

fn parse_tensor(name: String, entry: &Value) -> Result<TensorInfo, HeaderError> {
    let shape_err = |expected: &str| HeaderError::Shape {
        key: name.clone(),
        expected: expected.to_owned(),
    };
    let Value::Object(fields) = entry else {
        return Err(shape_err("an object with dtype, shape and data_offsets"));
    };
    let dtype_str = fields
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| shape_err("a string `dtype`"))?;
    let dtype = Dtype::parse(dtype_str).ok_or_else(|| HeaderError::BadDtype {
        tensor: name.clone(),
        dtype: dtype_str.to_owned(),
    })?;
    let shape = fields
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| shape_err("an array `shape` of non-negative integers"))?
        .iter()
        .map(Value::as_u64)
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| shape_err("an array `shape` of non-negative integers"))?;
    let offsets = fields
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| shape_err("`data_offsets` = [begin, end]"))?;
    let (begin, end) = match offsets.as_slice() {
        [b, e] => match (b.as_u64(), e.as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => {
                return Err(shape_err(
                    "`data_offsets` = [begin, end] of non-negative integers",
                ));
            }
        },
        _ => return Err(shape_err("`data_offsets` = [begin, end]")),
    };
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        begin,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data_len));
        out
    }

    #[test]
    fn reads_names_dtypes_shapes_ranges_and_metadata() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}}"#;
        let header = parse_header(&file(h, 12)).unwrap();
        assert_eq!(header.metadata["format"], "pt");
        assert_eq!(header.tensors[0].name, "a");
        assert_eq!(header.tensors[1].dtype, Dtype::F16);
        assert_eq!(header.parameter_count(), 4);
    }

    #[test]
    fn rejects_file_shorter_than_length_prefix() {
        assert_eq!(
            parse_header(&[1, 2, 3]),
            Err(HeaderError::TooShort { len: 3 })
        );
    }

    #[test]
    fn rejects_header_over_cap_or_file() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(
            parse_header(&bytes),
            Err(HeaderError::HeaderTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_bad_json_and_bad_shape() {
        assert!(matches!(
            parse_header(&file("{nope", 0)),
            Err(HeaderError::Json(_))
        ));
        assert!(matches!(
            parse_header(&file("[]", 0)),
            Err(HeaderError::Shape { .. })
        ));
        let h = r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            parse_header(&file(h, 4)),
            Err(HeaderError::Shape { .. })
        ));
    }

    #[test]
    fn rejects_unknown_dtype() {
        let h = r#"{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#;
        assert!(matches!(
            parse_header(&file(h, 16)),
            Err(HeaderError::BadDtype { .. })
        ));
    }

    #[test]
    fn rejects_out_of_range_overlapping_and_uncovered_offsets() {
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#;
        assert!(matches!(
            parse_header(&file(h, 4)),
            Err(HeaderError::OutOfRange { .. })
        ));
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(matches!(
            parse_header(&file(h, 8)),
            Err(HeaderError::NotContiguous { .. })
        ));
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            parse_header(&file(h, 8)),
            Err(HeaderError::NotCovering { .. })
        ));
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            parse_header(&file(h, 4)),
            Err(HeaderError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn rejects_shape_whose_byte_size_overflows() {
        let h = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            parse_header(&file(h, 4)),
            Err(HeaderError::Overflow { .. })
        ));
    }
}
