//! Helpers shared by this crate's fixture tests: fixture paths, the float32 safetensors the
//! generators write, the JSON shapes of their recorded call arguments, and the max / mean
//! absolute-error check every parity comparison states its tolerances in.
//!
//! Each test binary includes this module and uses only part of it.
#![allow(dead_code, unused_macros)]

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The workspace's `tests/fixtures` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The float32 (little-endian) tensor `key` of the safetensors file `path`: (shape, values).
pub fn read_tensor(path: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("{} is committed: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("{}: {key}: {e:?}", path.display()));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{key} is float32");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), data)
}

/// A prompt as the generators record it: one string or a list of strings.
pub fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// A `[a, b]` pair of sizes (e.g. `original_size`).
pub fn pair(v: Option<&Value>) -> Option<(usize, usize)> {
    let a = v?.as_array()?;
    Some((a.first()?.as_u64()? as usize, a.get(1)?.as_u64()? as usize))
}

/// Compares `got` with `want`: the maximum absolute difference must be at most `max_tol` and
/// the mean absolute difference below `mean_tol`. Returns (max, mean), or why it failed.
pub fn compare(
    what: &str,
    got: &[f32],
    want: &[f32],
    max_tol: f32,
    mean_tol: f32,
) -> Result<(f32, f32), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut max = 0f32;
    let mut sum = 0f64;
    for (a, b) in got.iter().zip(want) {
        let d = (a - b).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    let mean = (sum / want.len().max(1) as f64) as f32;
    if !(max <= max_tol && mean < mean_tol) {
        return Err(format!(
            "{what}: max abs {max:.3e} (tol {max_tol:.3e}), mean abs {mean:.3e} (tol {mean_tol:.3e})"
        ));
    }
    Ok((max, mean))
}

/// Copies the folder `from` into `to` (created, with every sub-folder).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The entry of `meta[list]` whose `"name"` is `name`, or a panic naming the missing case.
pub fn case_named(meta: &Value, list: &str, name: &str) -> Value {
    meta[list]
        .as_array()
        .and_then(|cases| cases.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no case {name} in the fixture's `{list}`"))
}

/// The fixture's recorded image tolerances: (`tolerance.max_abs`, `tolerance.mean_abs`).
pub fn tolerance(meta: &Value) -> (f32, f32) {
    let get = |key: &str| {
        meta["tolerance"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("the fixture records tolerance.{key}")) as f32
    };
    (get("max_abs"), get("mean_abs"))
}

/// One `#[test]` per fixture case (`case => test_name;`), each calling the file's
/// `run_case("case")`, and `TESTED`, the list of cases covered (checked against the fixture
/// so that no recorded case goes untested).
macro_rules! parity {
    ($($case:ident => $test:ident;)*) => {
        const TESTED: &[&str] = &[$(stringify!($case)),*];
        $(
            #[test]
            fn $test() {
                run_case(stringify!($case));
            }
        )*
    };
}
