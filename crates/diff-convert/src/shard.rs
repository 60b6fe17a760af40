//! Shard sizes, shard assignment and file names, as huggingface_hub and diffusers do them.
//!
//! - [`parse_size_to_int`] is huggingface_hub's `parse_size_to_int`: the last two characters are
//!   a decimal unit (`KB` = 10^3 … `TB` = 10^12, case-insensitive), the rest a float, the product
//!   truncated. A bare number is taken as bytes (diffusers also accepts an `int`).
//! - [`split_into_shards`] is `split_state_dict_into_shards_factory`: walk tensors in state-dict
//!   order; a tensor larger than the limit gets its own shard at once (the running shard stays
//!   open); otherwise close the running shard when the next tensor would overflow it.
//! - Names: `diffusion_pytorch_model[.variant]-00001-of-00003.safetensors`, index
//!   `diffusion_pytorch_model.safetensors.index[.variant].json`, and a single shard keeps the
//!   un-suffixed name with no index.

use crate::ConvertError;

/// huggingface_hub's `parse_size_to_int`, plus plain byte counts.
pub fn parse_size_to_int(size: &str) -> Result<u64, ConvertError> {
    let s = size.trim();
    let invalid = |reason: &str| ConvertError::InvalidSize {
        value: size.to_string(),
        reason: reason.to_string(),
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map_err(|_| invalid("too large"));
    }
    if s.len() < 2 || !s.is_char_boundary(s.len() - 2) {
        return Err(invalid("no unit"));
    }
    let (value, unit) = s.split_at(s.len() - 2);
    let multiplier: f64 = match unit.to_ascii_uppercase().as_str() {
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return Err(invalid("unit must be one of TB, GB, MB, KB (decimal)")),
    };
    let value: f64 = value
        .trim()
        .parse()
        .map_err(|_| invalid("the value before the unit is not a number"))?;
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(invalid("out of range"));
    }
    // Python's `int()` truncates toward zero.
    Ok(bytes.trunc() as u64)
}

/// The outcome of sharding: file name → tensor names (in assignment order), and total size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// `(file name, tensor names)` in shard order.
    pub shards: Vec<(String, Vec<String>)>,
    /// Sum of the tensors' byte sizes (`metadata.total_size` of the index).
    pub total_size: u64,
}

impl ShardPlan {
    /// Whether more than one file is written (and hence an index).
    pub fn is_sharded(&self) -> bool {
        self.shards.len() > 1
    }
}

/// Assigns tensors, given in state-dict order as `(name, byte size)`, to shards named from
/// `pattern` (which contains `{suffix}`).
pub fn split_into_shards(
    tensors: &[(String, u64)],
    max_shard_size: u64,
    pattern: &str,
) -> ShardPlan {
    let mut shards: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut current_size = 0u64;
    let mut total = 0u64;
    for (name, size) in tensors {
        if *size > max_shard_size {
            total += size;
            shards.push(vec![name.clone()]);
            continue;
        }
        if current_size + size > max_shard_size {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(name.clone());
        current_size += size;
        total += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    let n = shards.len();
    let named = if n <= 1 {
        vec![(
            pattern.replace("{suffix}", ""),
            shards.pop().unwrap_or_default(),
        )]
    } else {
        shards
            .into_iter()
            .enumerate()
            .map(|(i, names)| {
                (
                    pattern.replace("{suffix}", &format!("-{:05}-of-{n:05}", i + 1)),
                    names,
                )
            })
            .collect()
    };
    ShardPlan {
        shards: named,
        total_size: total,
    }
}

/// diffusers' `_add_variant`: insert `variant` before the last dot-segment.
pub fn add_variant(name: &str, variant: Option<&str>) -> String {
    match (variant, name.rsplit_once('.')) {
        (Some(v), Some((stem, ext))) => format!("{stem}.{v}.{ext}"),
        _ => name.to_string(),
    }
}

/// The weights file name for a library: `diffusion_pytorch_model.safetensors` (diffusers) or
/// `model.safetensors` (transformers), with the variant.
pub fn weights_name(transformers: bool, variant: Option<&str>) -> String {
    let base = if transformers {
        "model.safetensors"
    } else {
        "diffusion_pytorch_model.safetensors"
    };
    add_variant(base, variant)
}

/// The shard file-name pattern: `{suffix}` inserted before `.safetensors`.
pub fn shard_pattern(weights_name: &str) -> String {
    weights_name.replacen(".safetensors", "{suffix}.safetensors", 1)
}

/// The index name: `…safetensors.index[.variant].json`.
pub fn index_name(transformers: bool, variant: Option<&str>) -> String {
    let base = if transformers {
        "model.safetensors.index.json"
    } else {
        "diffusion_pytorch_model.safetensors.index.json"
    };
    add_variant(base, variant)
}

/// Whether `stem` (a file name without `.safetensors`/`.bin`) fully matches `(.*?)-\d{5}-of-\d{5}`.
pub fn is_shard_stem(stem: &str) -> bool {
    let b = stem.as_bytes();
    if b.len() < 15 {
        return false;
    }
    let tail = &b[b.len() - 15..];
    tail[0] == b'-'
        && tail[1..6].iter().all(u8::is_ascii_digit)
        && &tail[6..10] == b"-of-"
        && tail[10..15].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_matches_huggingface_hub() {
        assert_eq!(parse_size_to_int("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size_to_int("200KB").unwrap(), 200_000);
        assert_eq!(parse_size_to_int(" 5mb ").unwrap(), 5_000_000);
        assert_eq!(parse_size_to_int("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size_to_int("1.1KB").unwrap(), 1100);
        assert_eq!(parse_size_to_int("12345").unwrap(), 12345);
        assert!(parse_size_to_int("5GiB").is_err());
        assert!(parse_size_to_int("GB").is_err());
        assert!(parse_size_to_int("").is_err());
        assert!(parse_size_to_int("éé").is_err());
    }

    #[test]
    fn oversized_tensor_gets_own_shard_without_closing_running_one() {
        let t: Vec<(String, u64)> = [("a", 6), ("b", 12), ("c", 2), ("d", 6), ("e", 2)]
            .iter()
            .map(|(n, s)| (n.to_string(), *s))
            .collect();
        let plan = split_into_shards(&t, 10, "m{suffix}.safetensors");
        let names: Vec<Vec<String>> = plan.shards.iter().map(|(_, n)| n.clone()).collect();
        assert_eq!(names, vec![vec!["b"], vec!["a", "c"], vec!["d", "e"]]);
        assert_eq!(plan.shards[0].0, "m-00001-of-00003.safetensors");
        assert_eq!(plan.total_size, 28);
    }

    #[test]
    fn variant_names_follow_diffusers() {
        assert_eq!(
            weights_name(false, Some("fp16")),
            "diffusion_pytorch_model.fp16.safetensors"
        );
        assert_eq!(
            shard_pattern(&weights_name(false, Some("fp16"))),
            "diffusion_pytorch_model.fp16{suffix}.safetensors"
        );
        assert_eq!(
            index_name(true, Some("fp16")),
            "model.safetensors.index.fp16.json"
        );
        assert!(is_shard_stem("model.fp16-00001-of-00002"));
        assert!(!is_shard_stem("model.fp16"));
    }
}
