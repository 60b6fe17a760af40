//! Floating-point dtype casts on save, bit-identical to torch's `.to(dtype)` on CPU.
//!
//! torch rounds to nearest, ties to even, for both half types (`c10::Half` via
//! `fp16_ieee_from_fp32_value`, `c10::BFloat16` via `round_to_nearest_even`). The one place the
//! `half` crate differs is NaN: torch's bfloat16 NaN is always `0x7FC0`, so bf16 is done here.
//! f64 sources are first rounded to f32, as torch does for `double -> half`
//! (`static_cast<float>` then the f32 conversion); the fixture checks that too.

use crate::ConvertError;
use crate::tensors::RawTensor;
use safetensors::Dtype;

/// The floating dtypes a saved model can be cast to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// `torch.float32`.
    F32,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
}

impl SaveDtype {
    /// Parses `f32|fp32|float32`, `f16|fp16|float16`, `bf16|bfloat16`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Self::F32,
            "f16" | "fp16" | "float16" | "half" => Self::F16,
            "bf16" | "bfloat16" => Self::BF16,
            _ => return None,
        })
    }

    /// The safetensors dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::BF16 => Dtype::BF16,
        }
    }
}

/// `float -> bfloat16` as torch does it: round to nearest even, NaN to `0x7FC0`.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0;
    }
    let bits = x.to_bits();
    let rounding_bias = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding_bias) >> 16) as u16
}

fn read_f32s(t: &RawTensor) -> Option<Vec<f32>> {
    Some(match t.dtype {
        Dtype::F32 => t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => t
            .data
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        Dtype::F16 => t
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => t
            .data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Casts a floating tensor to `to`; integer and bool tensors are returned unchanged (as
/// diffusers' dtype handling leaves them).
pub fn cast(name: &str, t: RawTensor, to: SaveDtype) -> Result<RawTensor, ConvertError> {
    if !t.is_float() || t.dtype == to.dtype() {
        return Ok(t);
    }
    let values = read_f32s(&t).ok_or_else(|| ConvertError::UnsupportedCast {
        tensor: name.to_string(),
        from: format!("{:?}", t.dtype),
        to: format!("{to:?}"),
    })?;
    let data: Vec<u8> = match to {
        SaveDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        SaveDtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        SaveDtype::BF16 => values
            .iter()
            .flat_map(|&v| f32_to_bf16_bits(v).to_le_bytes())
            .collect(),
    };
    Ok(RawTensor {
        dtype: to.dtype(),
        shape: t.shape,
        data,
    })
}
