//! JSON written byte for byte as Python's `json.dumps` writes it.
//!
//! diffusers writes every config, `model_index.json` and shard index with
//! `json.dumps(obj, indent=2, sort_keys=True) + "\n"` (`diffusers/configuration_utils.py`,
//! `models/modeling_utils.py`); transformers writes model configs the same way
//! (`configuration_utils.py`, default `ensure_ascii=True`) but its tokenizer files
//! (`tokenizer_config.json`, `special_tokens_map.json`, `vocab.json`, `added_tokens.json`) with
//! `ensure_ascii=False` (`tokenization_utils_base.py`, `tokenization_python.py`). serde_json's own
//! pretty printer differs in float spelling (`1e-5` vs Python's `1e-05`) and non-ASCII handling,
//! so a config re-saved with it would not be byte-identical; this module reproduces Python's rules:
//!
//! - separators `",\n"` + indentation and `": "` with an indent, `", "` and `": "` without;
//!   empty containers are `[]` / `{}`;
//! - keys sorted by code point when `sort_keys` (Rust's `str` order is the same order);
//! - floats as Python `repr`: the shortest digits that round-trip, fixed notation when the decimal
//!   exponent is in `-4..16` (always with a `.0` if integral), otherwise `1e-05` / `1.5e+16` style;
//! - integers stay integers (`serde_json::Number` keeps the distinction);
//! - with `ensure_ascii`, every character outside `' '..='~'` is escaped `\uXXXX` (lowercase hex,
//!   astral characters as surrogate pairs); without it only `"`, `\` and control characters are.
//!
//! Python's non-finite floats: `json.dumps` writes `float('-inf')` as the bare token `-Infinity`
//! (also `Infinity`, `NaN`), which is not JSON and which serde_json can neither read nor hold
//! (DPMSolverMultistepScheduler's default `lambda_min_clipped` is `-inf`, so every config it
//! saves has one). [`loads`] reads those tokens into a marker string
//! ([`PY_NONFINITE_PREFIX`] + the token), the writer spells the marker back as the bare token,
//! and [`serialize_py_float`] / [`deserialize_py_float`] convert typed `f64` fields.
//!
//! Integers beyond 64 bits cannot be represented in `serde_json::Value` without the
//! `arbitrary_precision` feature; they never occur in diffusers configs.
//!
//! ```
//! use diff_format::json::{dumps, DumpOptions};
//! let v = serde_json::json!({"b": 1e-5, "a": [1, 1.0], "c": {}});
//! assert_eq!(
//!     dumps(&v, &DumpOptions::diffusers()),
//!     "{\n  \"a\": [\n    1,\n    1.0\n  ],\n  \"b\": 1e-05,\n  \"c\": {}\n}"
//! );
//! ```

use serde_json::Value;
use std::fmt::Write as _;

/// The `json.dumps` keyword arguments that change the output bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpOptions {
    /// `indent=`: `Some(n)` puts every element on its own line indented by `n` spaces per level;
    /// `None` writes everything on one line with `", "` between items.
    pub indent: Option<usize>,
    /// `sort_keys=`: write object keys in code-point order (otherwise the map's own order).
    pub sort_keys: bool,
    /// `ensure_ascii=`: escape every non-ASCII character as `\uXXXX`.
    pub ensure_ascii: bool,
}

impl DumpOptions {
    /// `indent=2, sort_keys=True` (ASCII-only): diffusers configs, `model_index.json`, shard
    /// indexes, transformers model configs and `preprocessor_config.json`.
    pub const fn diffusers() -> Self {
        DumpOptions {
            indent: Some(2),
            sort_keys: true,
            ensure_ascii: true,
        }
    }

    /// `indent=2, sort_keys=True, ensure_ascii=False`: transformers tokenizer files.
    pub const fn tokenizer() -> Self {
        DumpOptions {
            indent: Some(2),
            sort_keys: true,
            ensure_ascii: false,
        }
    }
}

/// Returns `json.dumps(value, **options)` exactly as Python writes it (no trailing newline).
pub fn dumps(value: &Value, options: &DumpOptions) -> String {
    let mut out = String::new();
    write_value(&mut out, value, options, 0);
    out
}

/// Returns the bytes of a config file as diffusers writes it:
/// `json.dumps(value, indent=2, sort_keys=True) + "\n"`.
pub fn to_config_string(value: &Value) -> String {
    let mut out = dumps(value, &DumpOptions::diffusers());
    out.push('\n');
    out
}

/// The prefix of the marker string that stands for a Python non-finite float in a
/// `serde_json::Value` (see the module doc). It starts with a NUL so it cannot clash with a
/// string a config would hold.
pub const PY_NONFINITE_PREFIX: &str = "\u{0}python-float:";

const NONFINITE_TOKENS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];

/// The bare Python token a marker string stands for, if it is one.
fn nonfinite_token(s: &str) -> Option<&'static str> {
    let rest = s.strip_prefix(PY_NONFINITE_PREFIX)?;
    NONFINITE_TOKENS.iter().copied().find(|t| *t == rest)
}

/// A float as a `Value`: a JSON number when finite, the marker string otherwise.
pub fn py_float_value(x: f64) -> Value {
    match serde_json::Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None => Value::String(format!("{PY_NONFINITE_PREFIX}{}", nonfinite_name(x))),
    }
}

fn nonfinite_name(x: f64) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// The float a value stands for: a JSON number or a marker string.
pub fn as_py_float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match nonfinite_token(s)? {
            "-Infinity" => Some(f64::NEG_INFINITY),
            "Infinity" => Some(f64::INFINITY),
            _ => Some(f64::NAN),
        },
        _ => None,
    }
}

/// A serde error message with every marker string (see the module doc) written back as the bare
/// Python token, so a `NaN` in a config reads `invalid type: non-finite float NaN, expected
/// f64`, not the internal marker.
pub fn clean_message(message: &str) -> String {
    if !message.contains("python-float:") {
        return message.to_string();
    }
    let mut out = message.to_string();
    // serde quotes a string with `{:?}`: the NUL may appear raw or escaped.
    for prefix in [
        PY_NONFINITE_PREFIX,
        "\\0python-float:",
        "\\u{0}python-float:",
        "\\u0000python-float:",
    ] {
        for token in NONFINITE_TOKENS {
            let marker = format!("{prefix}{token}");
            out = out
                .replace(
                    &format!("string \"{marker}\""),
                    &format!("non-finite float {token}"),
                )
                .replace(&format!("\"{marker}\""), token)
                .replace(&marker, token);
        }
    }
    out
}

/// Parses JSON text as Python's `json.loads` does, including the bare tokens `-Infinity`,
/// `Infinity` and `NaN` outside strings (they become marker strings, see the module doc).
///
/// # Errors
/// serde_json's error for text that is not JSON (positions refer to the original text except
/// after a non-finite token on the same line).
pub fn loads(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(&replace_nonfinite_tokens(text))
}

/// Rewrites non-finite tokens outside strings into quoted marker strings.
fn replace_nonfinite_tokens(text: &str) -> std::borrow::Cow<'_, str> {
    if !NONFINITE_TOKENS.iter().any(|t| text.contains(t)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 32);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = NONFINITE_TOKENS.iter().find(|t| rest.starts_with(**t)) {
            out.push_str("\"\\u0000python-float:");
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// serde `serialize_with` for `f64` config fields that may be non-finite (written as Python
/// writes them once the value goes through [`dumps`]).
///
/// # Errors
/// Never fails itself; passes on the serializer's error.
pub fn serialize_py_float<S: serde::Serializer>(x: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        serializer.serialize_f64(*x)
    } else {
        serializer.serialize_str(&format!("{PY_NONFINITE_PREFIX}{}", nonfinite_name(*x)))
    }
}

/// serde `deserialize_with` for `f64` config fields that may be non-finite: accepts a number, a
/// marker string from [`loads`], or `null` (read as `-inf`, which is what older serde_json-based
/// writers left for diffusers' `-inf` defaults).
///
/// # Errors
/// Any other value.
pub fn deserialize_py_float<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<f64, D::Error> {
    use serde::Deserialize as _;
    let value = Value::deserialize(deserializer)?;
    match value {
        Value::Null => Ok(f64::NEG_INFINITY),
        other => as_py_float(&other).ok_or_else(|| {
            serde::de::Error::custom(format!("expected a float or -Infinity, got {other}"))
        }),
    }
}

fn newline(out: &mut String, options: &DumpOptions, level: usize) {
    if let Some(indent) = options.indent {
        out.push('\n');
        for _ in 0..indent.saturating_mul(level) {
            out.push(' ');
        }
    }
}

fn item_separator(options: &DumpOptions) -> &'static str {
    if options.indent.is_some() { "," } else { ", " }
}

fn write_value(out: &mut String, value: &Value, options: &DumpOptions, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if n.is_f64() {
                // `is_f64` is only true when the number is not an integer, so `as_f64` succeeds.
                out.push_str(&python_float_repr(n.as_f64().unwrap_or(f64::NAN)));
            } else {
                // u64/i64 display as plain decimal integers, as Python's int does.
                let _ = write!(out, "{n}");
            }
        }
        Value::String(s) => match nonfinite_token(s) {
            Some(token) => out.push_str(token),
            None => write_string(out, s, options.ensure_ascii),
        },
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator(options));
                }
                newline(out, options, level + 1);
                write_value(out, item, options, level + 1);
            }
            newline(out, options, level);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator(options));
                }
                newline(out, options, level + 1);
                write_string(out, key, options.ensure_ascii);
                out.push_str(": ");
                write_value(out, item, options, level + 1);
            }
            newline(out, options, level);
            out.push('}');
        }
    }
}

/// Writes a JSON string literal the way Python's `json` encoder does.
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // Python's ASCII encoder escapes everything outside ' '..='~', DEL included.
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for decimal exponents in
/// `-4..16`, exponent notation (`1e-05`, `1.5e+16`) otherwise; `NaN` / `Infinity` spelled as
/// `json.dumps` spells them.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` prints the shortest digits that round-trip (the same digits Python's
    // `repr` chooses), as `d[.ddd]e<exp>`.
    let shortest = format!("{x:e}");
    // Rust's shortest digits can differ from Python's in the last digit when two shortest
    // strings round-trip: Python picks the one closest to the exact value. Rounding the exact
    // value correctly to the same number of digits gives that one whenever it round-trips.
    let digit_count = shortest
        .split('e')
        .next()
        .map_or(1, |m| m.chars().filter(char::is_ascii_digit).count());
    let closest = format!("{x:.prec$e}", prec = digit_count.saturating_sub(1));
    let sci = if closest.parse::<f64>().is_ok_and(|y| y == x) {
        closest
    } else {
        shortest
    };
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            // exp is in 0..16, so the cast is exact.
            let int_len = exp as usize + 1;
            if digits.len() > int_len {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            } else {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
                out.push_str(".0");
            }
        } else {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python_spelling() {
        // Expected strings are Python 3.11 `repr` outputs; exact string equality.
        let cases = [
            (0.00085, "0.00085"),
            (0.012, "0.012"),
            (1e-5, "1e-05"),
            (1e-6, "1e-06"),
            (0.0001, "0.0001"),
            (1.0, "1.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-7, "1.5e-07"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (123.456, "123.456"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-2.5e-5, "-2.5e-05"),
            (18.215, "18.215"),
            (0.18215, "0.18215"),
            (1e100, "1e+100"),
            (12345678901234567.0, "1.2345678901234568e+16"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "repr of {x:e}");
        }
    }

    #[test]
    fn dumps_indent_two_sorted_matches_python_layout() {
        let v = json!({"z": [], "a": {"y": null, "x": [true, false]}, "_c": "é", "B": 7});
        let got = to_config_string(&v);
        let want = "{\n  \"B\": 7,\n  \"_c\": \"\\u00e9\",\n  \"a\": {\n    \"x\": [\n      true,\n      false\n    ],\n    \"y\": null\n  },\n  \"z\": []\n}\n";
        assert_eq!(got, want);
    }

    #[test]
    fn ensure_ascii_escapes_astral_as_surrogate_pairs() {
        let v = json!("a😀\u{7f}\u{1}\"\\\n");
        assert_eq!(
            dumps(&v, &DumpOptions::diffusers()),
            "\"a\\ud83d\\ude00\\u007f\\u0001\\\"\\\\\\n\""
        );
        assert_eq!(
            dumps(&v, &DumpOptions::tokenizer()),
            "\"a😀\u{7f}\\u0001\\\"\\\\\\n\""
        );
    }

    #[test]
    fn no_indent_uses_comma_space_separators() {
        let v = json!({"b": [1, 2], "a": {}});
        let opts = DumpOptions {
            indent: None,
            sort_keys: true,
            ensure_ascii: true,
        };
        assert_eq!(dumps(&v, &opts), "{\"a\": {}, \"b\": [1, 2]}");
    }

    #[test]
    fn python_nonfinite_floats_round_trip() {
        let text =
            "{\n  \"a\": -Infinity,\n  \"b\": [Infinity, NaN],\n  \"c\": \"-Infinity is text\"\n}";
        let v = loads(text).expect("python json");
        assert_eq!(as_py_float(&v["a"]), Some(f64::NEG_INFINITY));
        assert_eq!(as_py_float(&v["b"][0]), Some(f64::INFINITY));
        assert!(as_py_float(&v["b"][1]).is_some_and(f64::is_nan));
        assert_eq!(v["c"], "-Infinity is text");
        assert_eq!(
            dumps(&v, &DumpOptions::diffusers()),
            "{\n  \"a\": -Infinity,\n  \"b\": [\n    Infinity,\n    NaN\n  ],\n  \"c\": \"-Infinity is text\"\n}"
        );
        assert_eq!(py_float_value(f64::NEG_INFINITY), v["a"]);
    }
}
