//! `diff-tokenizer`: the text tokenizers of burn-diffusers' pipelines.
//!
//! Owns [`ClipTokenizer`], transformers 5's `CLIPTokenizer` id for id (NFC, whitespace,
//! lower-case, CLIP's regex split, byte-level BPE with `</w>`, truncation and padding), loaded
//! from a `tokenizer/` folder (`tokenizer.json`, or `vocab.json` + `merges.txt`, with
//! `tokenizer_config.json` / `special_tokens_map.json`). Gate: `tests/clip_tokenizer.rs` on
//! `tests/fixtures/30-tokenizer`.
//!
//! The BPE cost is bounded as tokenizers bounds it: merges wait in a heap (no rescan of the
//! word per merge, so one 130 KB word is linear-logarithmic), and a cache of word -> ids holds
//! at most 10,000 words of under 256 characters.
//!
//! **Must not know:** burn or tensors (the text encoder is `diff-models`), pipelines, the Hub.
//!
//! Dependencies: `diff-format` (the typed `tokenizer_config.json` / `special_tokens_map.json`),
//! `regex` (the pre-tokenizer's Unicode-class split), `unicode-normalization` (NFC, the first
//! step of CLIP's normalizer), `serde` / `serde_json` (vocabulary and `tokenizer.json`),
//! `thiserror` (the typed [`TokenizerError`]).
//!
//! Our own ~500-line BPE rather than the `tokenizers` crate: CLIPTokenizer is a fixed pipeline,
//! so a direct implementation is short, checked id for id against transformers, and avoids
//! `tokenizers`' compile cost (onig or fancy-regex, rayon, esaxx, several dozen crates).
#![deny(missing_docs)]

pub mod clip;
mod error;

pub use clip::ClipTokenizer;
pub use error::TokenizerError;
