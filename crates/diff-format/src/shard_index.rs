//! Shard indexes: `{"metadata": {"total_size": N}, "weight_map": {"tensor": "shard file"}}`.
//!
//! Written by diffusers (`models/modeling_utils.py`) and transformers with
//! `json.dumps(indent=2, sort_keys=True) + "\n"`. Readers require `metadata` (diffusers reads
//! `index["metadata"]` unconditionally) and ignore unknown metadata keys. Since diffusers 0.40
//! every shard name must be a bare file name; anything with `/`, `\`, `..` or an absolute path
//! is rejected ([`FormatError::UnsafeShardName`]) so an index can never point outside its folder.

use crate::config::read_json_object;
use crate::error::{FormatError, describe};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A parsed shard index.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardIndex {
    /// `metadata` (always holds `total_size` when written by diffusers/transformers).
    pub metadata: Map<String, Value>,
    /// Tensor name → shard file name (bare names only).
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Builds an index for writing.
    pub fn new(total_size: u64, weight_map: BTreeMap<String, String>) -> Self {
        let mut metadata = Map::new();
        metadata.insert("total_size".into(), Value::from(total_size));
        ShardIndex {
            metadata,
            weight_map,
        }
    }

    /// Reads and validates an index file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let path = path.as_ref();
        Self::from_object(read_json_object(path)?, path)
    }

    /// Validates a parsed index; `origin` names it in errors.
    pub fn from_object(mut map: Map<String, Value>, origin: &Path) -> Result<Self, FormatError> {
        let bad = |key: &str, expected: &str, got: String| FormatError::UnexpectedJson {
            path: origin.to_path_buf(),
            key: key.to_owned(),
            expected: expected.to_owned(),
            got,
        };
        let metadata = match map.remove("metadata") {
            Some(Value::Object(m)) => m,
            Some(other) => return Err(bad("metadata", "an object", describe(&other))),
            None => return Err(bad("metadata", "an object", "nothing (key missing)".into())),
        };
        let entries = match map.remove("weight_map") {
            Some(Value::Object(m)) => m,
            Some(other) => return Err(bad("weight_map", "an object", describe(&other))),
            None => {
                return Err(bad(
                    "weight_map",
                    "an object",
                    "nothing (key missing)".into(),
                ));
            }
        };
        let mut weight_map = BTreeMap::new();
        for (tensor, file) in entries {
            let Value::String(file) = file else {
                return Err(bad(
                    &format!("weight_map.{tensor}"),
                    "a shard file name",
                    describe(&file),
                ));
            };
            if !is_bare_file_name(&file) {
                return Err(FormatError::UnsafeShardName {
                    path: origin.to_path_buf(),
                    tensor,
                    name: file,
                });
            }
            weight_map.insert(tensor, file);
        }
        Ok(ShardIndex {
            metadata,
            weight_map,
        })
    }

    /// `metadata.total_size`, if present and an integer.
    pub fn total_size(&self) -> Option<u64> {
        self.metadata.get("total_size").and_then(Value::as_u64)
    }

    /// The distinct shard files, sorted.
    pub fn shard_files(&self) -> BTreeSet<&str> {
        self.weight_map.values().map(String::as_str).collect()
    }

    /// The shard paths inside `folder` (names are validated bare, so they stay inside it).
    pub fn shard_paths(&self, folder: &Path) -> Vec<PathBuf> {
        self.shard_files()
            .into_iter()
            .map(|f| folder.join(f))
            .collect()
    }

    /// The JSON value as diffusers writes it.
    pub fn to_json_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("metadata".into(), Value::Object(self.metadata.clone()));
        out.insert(
            "weight_map".into(),
            Value::Object(
                self.weight_map
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        Value::Object(out)
    }

    /// Writes the index atomically, in diffusers' JSON spelling.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), FormatError> {
        let text = crate::json::to_config_string(&self.to_json_value());
        crate::fsutil::write_atomic(path.as_ref(), text.as_bytes())
    }
}

/// Whether `name` is a plain file name: not empty, no `/` or `\`, not `.`/`..`, not absolute,
/// no NUL, no drive prefix.
pub fn is_bare_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.contains("..")
        && !name.contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_python_layout() {
        let text = "{\n  \"metadata\": {\n    \"total_size\": 12\n  },\n  \"weight_map\": {\n    \"a\": \"m-00001-of-00002.safetensors\",\n    \"b\": \"m-00002-of-00002.safetensors\"\n  }\n}\n";
        let map = crate::config::parse_json_object(text, Path::new("i.json")).unwrap();
        let index = ShardIndex::from_object(map, Path::new("i.json")).unwrap();
        assert_eq!(index.total_size(), Some(12));
        assert_eq!(index.shard_files().len(), 2);
        assert_eq!(crate::json::to_config_string(&index.to_json_value()), text);
    }

    #[test]
    fn rejects_shard_names_that_are_not_bare_file_names() {
        for name in [
            "../x.safetensors",
            "/etc/passwd",
            "a/b.safetensors",
            "a\\b",
            "..",
            "C:x",
            "",
        ] {
            let map = serde_json::json!({"metadata": {}, "weight_map": {"t": name}});
            let err =
                ShardIndex::from_object(map.as_object().unwrap().clone(), Path::new("i.json"))
                    .unwrap_err();
            assert!(
                matches!(err, FormatError::UnsafeShardName { .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn requires_metadata_and_weight_map() {
        let map = serde_json::json!({"weight_map": {}});
        let err = ShardIndex::from_object(map.as_object().unwrap().clone(), Path::new("i.json"))
            .unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
    }
}
