//! Any text given to the config, model_index and shard-index parsers yields a value or a typed
//! error, never a panic; an accepted config re-saves to JSON that parses back to the same value
//! and re-saves to the same bytes (the Python-spelling writer is a fixed point).
#![no_main]

use diff_format::ModelIndex;
use diff_format::config::ConfigFile;
use diff_format::shard_index::ShardIndex;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("fuzz.json");
    if let Ok(file) =
        ConfigFile::<serde_json::Map<String, serde_json::Value>>::from_json_str(text, origin)
    {
        let saved = file.to_json_string().expect("a map always serializes");
        let again =
            ConfigFile::<serde_json::Map<String, serde_json::Value>>::from_json_str(&saved, origin)
                .expect("our own output parses");
        assert_eq!(again.to_json_string().expect("serializes"), saved);
    }
    let _ = ModelIndex::from_json_str(text, origin).map(|i| i.to_json_string());
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) {
        let _ = ShardIndex::from_object(map, origin);
    }
});
