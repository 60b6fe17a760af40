//! The CLIP tokenizer against transformers 5.23's `CLIPTokenizer` on the prompts of
//! `tests/fixtures/30-tokenizer` (ids must be equal: tolerance zero). The SD tokenizers are the
//! bundled tiny pipelines' (`tiny-sd/tokenizer`, `tiny-sdxl/tokenizer_2`).

use diff_tokenizer::ClipTokenizer;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    untruncated: Vec<u32>,
    removed_text: Option<String>,
}

#[derive(Deserialize)]
struct Variant {
    folder: String,
    pad_token_id: u32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Expected {
    max_length: usize,
    tokenizer: Variant,
    tokenizer_2: Variant,
    tokenizer_json: Variant,
}

fn fixture_dir() -> PathBuf {
    fixtures_root().join("30-tokenizer")
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load(variant: &Variant) -> ClipTokenizer {
    ClipTokenizer::from_pretrained(fixtures_root().join(&variant.folder)).unwrap()
}

fn check(name: &str, tok: &ClipTokenizer, variant: &Variant, max_length: usize) {
    assert_eq!(tok.pad_token_id(), variant.pad_token_id, "{name}: pad id");
    assert_eq!(
        tok.model_max_length(),
        Some(max_length),
        "{name}: model_max_length"
    );
    assert!(
        variant.cases.len() >= 200,
        "{name}: fixture has {} prompts",
        variant.cases.len()
    );
    let mut failures = Vec::new();
    for case in &variant.cases {
        let untruncated = tok.encode(&case.prompt);
        let padded = tok.encode_padded(&case.prompt, max_length);
        let (batch, removed) = tok.encode_for_pipeline(std::slice::from_ref(&case.prompt));
        if untruncated != case.untruncated || padded != case.ids || batch.first() != Some(&case.ids)
        {
            failures.push(format!(
                "{:?}\n  want {:?}\n  got  {:?}",
                case.prompt, case.untruncated, untruncated
            ));
        }
        let removed = removed.and_then(|r| r.into_iter().next());
        if removed != case.removed_text {
            failures.push(format!(
                "{:?}: removed text want {:?} got {:?}",
                case.prompt, case.removed_text, removed
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sd1_tokenizer_from_vocab_and_merges_matches_transformers_on_fixture_prompts() {
    let exp = expected();
    check(
        "tokenizer",
        &load(&exp.tokenizer),
        &exp.tokenizer,
        exp.max_length,
    );
}

#[test]
fn sdxl_tokenizer_2_padding_with_exclamation_mark_matches_transformers() {
    let exp = expected();
    check(
        "tokenizer_2",
        &load(&exp.tokenizer_2),
        &exp.tokenizer_2,
        exp.max_length,
    );
}

#[test]
fn tokenizer_json_folder_matches_transformers_on_fixture_prompts() {
    let exp = expected();
    check(
        "tokenizer_json",
        &load(&exp.tokenizer_json),
        &exp.tokenizer_json,
        exp.max_length,
    );
}

#[test]
fn folder_without_vocabulary_is_a_typed_error_naming_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_pretrained(tmp.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("vocab.json") && msg.contains(&tmp.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn corrupt_merges_line_is_a_typed_error_with_the_line_number() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("vocab.json"),
        r#"{"a": 0, "b": 1, "ab": 2}"#,
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("merges.txt"),
        "#version: 0.2\na b\nthree parts here\n",
    )
    .unwrap();
    let msg = ClipTokenizer::from_pretrained(tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("line 3") && msg.contains("merges.txt"),
        "{msg}"
    );
}

#[test]
fn merge_with_unknown_symbol_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("vocab.json"), r#"{"a": 0, "b": 1}"#).unwrap();
    std::fs::write(tmp.path().join("merges.txt"), "#version: 0.2\na b\n").unwrap();
    let msg = ClipTokenizer::from_pretrained(tmp.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`ab` is not in the vocabulary"), "{msg}");
}

#[test]
fn decode_round_trips_words_with_spaces() {
    let tok = load(&expected().tokenizer);
    let ids = tok.encode("A photo of an astronaut, riding!");
    assert_eq!(tok.decode(&ids, true), "a photo of an astronaut , riding !");
}

#[test]
fn a_very_long_word_tokenizes_fast_and_as_short_words_do() {
    let tok = load(&expected().tokenizer);
    // One 20,000-letter word: the BPE must not rescan the word per merge (quadratic).
    let word: String = "abcdefghij".repeat(2_000);
    let start = std::time::Instant::now();
    let ids = tok.tokenize(&word);
    let elapsed = start.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(2),
        "20,000-char word took {elapsed:?}"
    );
    assert!(!ids.is_empty());
    // Through the cache and without it, the same ids; a repeated short word hits the cache.
    assert_eq!(tok.tokenize("astronaut astronaut"), {
        let one = tok.tokenize("astronaut");
        [one.clone(), one].concat()
    });
    assert_eq!(tok.tokenize(&word), ids);
}
