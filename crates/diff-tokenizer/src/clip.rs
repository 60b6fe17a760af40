//! The CLIP tokenizer, as transformers 5's `CLIPTokenizer` runs when diffusers loads a
//! `tokenizer/` folder.
//!
//! In transformers 5 the "slow" Python tokenizer is gone: `CLIPTokenizer` is a `tokenizers`
//! (Rust library) pipeline built from `vocab.json` + `merges.txt` (or `tokenizer.json`), and ftfy
//! is never used. That pipeline is, in order:
//!
//! 1. added tokens (the special tokens, and `!` when it is the pad token given as a plain string)
//!    are cut out of the raw text first when they are "not normalized", then out of the
//!    normalized text when they are;
//! 2. normalizer: Unicode NFC, every run of whitespace (`\s+`) becomes one space, then per-char
//!    lower-casing (`char::to_lowercase`, so no final-sigma rule);
//! 3. pre-tokenizer: keep the matches of
//!    `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (whitespace is dropped), then split each with the GPT-2 byte-level regex and map its UTF-8
//!    bytes to the byte-level alphabet;
//! 4. BPE with the suffix `</w>` on the last symbol of each word, merging the lowest-ranked pair
//!    first (leftmost on ties);
//! 5. `<|startoftext|>` ids `<|endoftext|>`, then truncation to `model_max_length` (keeping
//!    BOS/EOS) and padding with the pad token.
//!
//! Every step above is checked against transformers on the prompts of
//! `tests/fixtures/30-tokenizer`.

use crate::error::TokenizerError;
use diff_format::configs::tokenizer::{SpecialToken, SpecialTokensMap, TokenizerConfig};
use regex::Regex;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::RwLock;
use unicode_normalization::UnicodeNormalization;

const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// GPT-2's byte-level regex without its whitespace alternatives: after the CLIP split no piece
/// holds whitespace, so `\s+(?!\S)` and `\s+` never match and the optional leading space of the
/// other alternatives is never present.
const BYTE_LEVEL_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";
const END_OF_WORD: &str = "</w>";
/// Words held by the BPE cache at most (tokenizers' `DEFAULT_CACHE_CAPACITY`); once full, new
/// words are computed and not stored.
const CACHE_CAPACITY: usize = 10_000;
/// Only words shorter than this many characters are cached (tokenizers' `MAX_LENGTH`), so one
/// huge word cannot fill the cache's memory.
const CACHE_MAX_WORD_CHARS: usize = 256;

/// A token cut out of the text before BPE (a special token or a `added_tokens` entry).
#[derive(Debug, Clone)]
struct AddedTok {
    content: String,
    id: u32,
    lstrip: bool,
    rstrip: bool,
}

/// The CLIP BPE tokenizer (`CLIPTokenizer`).
#[derive(Debug)]
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    added_raw: Vec<AddedTok>,
    added_normalized: Vec<AddedTok>,
    special_ids: Vec<u32>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    unk_id: Option<u32>,
    model_max_length: Option<usize>,
    split_re: Regex,
    byte_level_re: Regex,
    whitespace_re: Regex,
    config: TokenizerConfig,
    /// Word -> ids of words already through BPE (bounded, as tokenizers' BPE cache).
    cache: RwLock<HashMap<String, Vec<u32>>>,
}

/// The byte -> printable-char table of GPT-2 / CLIP byte-level BPE.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut n = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|e| TokenizerError::io(path, e))
}

fn tok_err(path: &Path, message: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// One `added_tokens` entry of a `tokenizer.json`.
#[derive(serde::Deserialize)]
struct JsonAddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    normalized: bool,
}

impl ClipTokenizer {
    /// Loads a tokenizer folder as `CLIPTokenizer.from_pretrained(folder)` does: `tokenizer.json`
    /// if present, else `vocab.json` + `merges.txt`; `tokenizer_config.json` and (when that has
    /// no `added_tokens_decoder`) `special_tokens_map.json` for the special tokens and
    /// `model_max_length`.
    pub fn from_pretrained(folder: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let folder = folder.as_ref();
        let config_path = folder.join("tokenizer_config.json");
        let mut config: TokenizerConfig = if config_path.is_file() {
            let text = read_text(&config_path)?;
            serde_json::from_str(&text).map_err(|e| TokenizerError::json(&config_path, &e))?
        } else {
            TokenizerConfig::default()
        };
        let map_path = folder.join("special_tokens_map.json");
        if config.added_tokens_decoder.is_none() && map_path.is_file() {
            let text = read_text(&map_path)?;
            let map: SpecialTokensMap =
                serde_json::from_str(&text).map_err(|e| TokenizerError::json(&map_path, &e))?;
            // Entries of the legacy map override the config's, as transformers does.
            for (slot, value) in [
                (&mut config.bos_token, map.bos_token),
                (&mut config.eos_token, map.eos_token),
                (&mut config.pad_token, map.pad_token),
                (&mut config.unk_token, map.unk_token),
            ] {
                if let Some(v) = value {
                    *slot = Some(match v {
                        // transformers builds `AddedToken(**value, special=True)` from a dict:
                        // `normalized` then defaults to `not special`, i.e. false.
                        SpecialToken::Added(mut a) => {
                            a.normalized = Some(a.normalized.unwrap_or(false));
                            SpecialToken::Added(a)
                        }
                        other => other,
                    });
                }
            }
        }
        let json_path = folder.join("tokenizer.json");
        if json_path.is_file() {
            Self::from_tokenizer_json(&json_path, config)
        } else {
            let vocab_path = folder.join("vocab.json");
            let merges_path = folder.join("merges.txt");
            if !vocab_path.is_file() || !merges_path.is_file() {
                return Err(tok_err(
                    folder,
                    "expected `tokenizer.json`, or `vocab.json` and `merges.txt`; found neither",
                ));
            }
            Self::from_vocab_and_merges(&vocab_path, &merges_path, config)
        }
    }

    /// Builds from a `vocab.json` and a `merges.txt` (the files SD repos ship).
    pub fn from_vocab_and_merges(
        vocab_path: &Path,
        merges_path: &Path,
        config: TokenizerConfig,
    ) -> Result<Self, TokenizerError> {
        let vocab: HashMap<String, u32> = serde_json::from_str(&read_text(vocab_path)?)
            .map_err(|e| TokenizerError::json(vocab_path, &e))?;
        let text = read_text(merges_path)?;
        let mut merges = Vec::new();
        for (n, line) in text.lines().enumerate() {
            // The first line is `#version: ...`; tokenizers skips any line starting with it.
            if line.starts_with("#version") || line.is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                _ => {
                    return Err(tok_err(
                        merges_path,
                        format!(
                            "line {}: expected two symbols separated by one space, got {line:?}",
                            n + 1
                        ),
                    ));
                }
            }
        }
        Self::build(merges_path, vocab, merges, Vec::new(), config)
    }

    fn from_tokenizer_json(path: &Path, config: TokenizerConfig) -> Result<Self, TokenizerError> {
        let value: serde_json::Value =
            serde_json::from_str(&read_text(path)?).map_err(|e| TokenizerError::json(path, &e))?;
        let model = value
            .get("model")
            .ok_or_else(|| tok_err(path, "no `model` object"))?;
        let kind = model.get("type").and_then(|v| v.as_str()).unwrap_or("");
        let suffix = model.get("end_of_word_suffix").and_then(|v| v.as_str());
        if kind != "BPE" || suffix != Some(END_OF_WORD) {
            return Err(tok_err(
                path,
                format!(
                    "expected a CLIP BPE model (type \"BPE\", end_of_word_suffix \"</w>\"), got type {kind:?}, end_of_word_suffix {suffix:?}"
                ),
            ));
        }
        let vocab: HashMap<String, u32> = serde_json::from_value(
            model
                .get("vocab")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        )
        .map_err(|e| tok_err(path, format!("model.vocab: {e}")))?;
        let mut merges = Vec::new();
        for (n, m) in model
            .get("merges")
            .and_then(|v| v.as_array())
            .ok_or_else(|| tok_err(path, "model.merges is not a list"))?
            .iter()
            .enumerate()
        {
            // Two spellings exist: `["a", "b"]` (tokenizers >= 0.20) and `"a b"` (older).
            let pair = match m {
                serde_json::Value::Array(a) => match (a.first(), a.get(1), a.len()) {
                    (Some(serde_json::Value::String(x)), Some(serde_json::Value::String(y)), 2) => {
                        Some((x.clone(), y.clone()))
                    }
                    _ => None,
                },
                serde_json::Value::String(s) => s
                    .split_once(' ')
                    .map(|(x, y)| (x.to_string(), y.to_string())),
                _ => None,
            };
            merges.push(pair.ok_or_else(|| {
                tok_err(
                    path,
                    format!("model.merges[{n}]: expected a pair of symbols, got {m}"),
                )
            })?);
        }
        let added: Vec<JsonAddedToken> = match value.get("added_tokens") {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| tok_err(path, format!("added_tokens: {e}")))?,
            None => Vec::new(),
        };
        let added = added
            .into_iter()
            .map(|a| {
                (
                    AddedTok {
                        content: a.content,
                        id: a.id,
                        lstrip: a.lstrip,
                        rstrip: a.rstrip,
                    },
                    a.normalized,
                )
            })
            .collect();
        Self::build(path, vocab, merges, added, config)
    }

    fn build(
        origin: &Path,
        mut encoder: HashMap<String, u32>,
        merge_list: Vec<(String, String)>,
        mut added: Vec<(AddedTok, bool)>,
        config: TokenizerConfig,
    ) -> Result<Self, TokenizerError> {
        let mut merges = HashMap::with_capacity(merge_list.len());
        for (rank, (a, b)) in merge_list.iter().enumerate() {
            let lookup = |s: &str| {
                encoder.get(s).copied().ok_or_else(|| {
                    tok_err(
                        origin,
                        format!("merge {rank} ({a} {b}): `{s}` is not in the vocabulary"),
                    )
                })
            };
            let merged = format!("{a}{b}");
            let key = (lookup(a)?, lookup(b)?);
            let new_id = lookup(&merged)?;
            let rank = u32::try_from(rank).map_err(|_| tok_err(origin, "too many merges"))?;
            merges.entry(key).or_insert((rank, new_id));
        }
        // Added tokens from `added_tokens_decoder` (newer configs) come with their ids.
        if let Some(dec) = &config.added_tokens_decoder {
            for (id, tok) in dec {
                let id: u32 = id.parse().map_err(|_| {
                    tok_err(
                        origin,
                        format!("added_tokens_decoder key {id:?} is not an id"),
                    )
                })?;
                if added.iter().all(|(a, _)| a.content != tok.content) {
                    added.push((
                        AddedTok {
                            content: tok.content.clone(),
                            id,
                            lstrip: tok.lstrip,
                            rstrip: tok.rstrip,
                        },
                        tok.normalized.unwrap_or(!tok.special.unwrap_or(false)),
                    ));
                }
            }
        }
        let mut next_id = encoder
            .values()
            .chain(added.iter().map(|(a, _)| &a.id))
            .max()
            .map_or(0, |m| m.saturating_add(1));
        let mut special_ids = Vec::new();
        let fixed = added.len();
        let mut special = |tok: &Option<SpecialToken>,
                           default: &str,
                           added: &mut Vec<(AddedTok, bool)>,
                           encoder: &mut HashMap<String, u32>|
         -> u32 {
            let (content, normalized, lstrip, rstrip) = match tok {
                Some(SpecialToken::Text(s)) => (s.clone(), false, false, false),
                Some(SpecialToken::Added(a)) => (
                    a.content.clone(),
                    a.normalized.unwrap_or(false),
                    a.lstrip,
                    a.rstrip,
                ),
                None => (default.to_string(), false, false, false),
            };
            if let Some(i) = added.iter().position(|(a, _)| a.content == content) {
                let Some((a, norm)) = added.get_mut(i) else {
                    return 0;
                };
                // A token from tokenizer.json / added_tokens_decoder keeps its flags; one
                // registered by an earlier special token of the config is replaced, as
                // tokenizers' `add_tokens` replaces an equal-content token (so a plain-string
                // pad `<|endoftext|>` makes eos's `<|endoftext|>` match the raw text only).
                if i >= fixed {
                    *norm = normalized;
                    a.lstrip = lstrip;
                    a.rstrip = rstrip;
                }
                special_ids.push(a.id);
                return a.id;
            }
            let id = match encoder.get(&content) {
                Some(id) => *id,
                None => {
                    // transformers appends a special token missing from the vocabulary.
                    let id = next_id;
                    next_id = next_id.saturating_add(1);
                    encoder.insert(content.clone(), id);
                    id
                }
            };
            added.push((
                AddedTok {
                    content,
                    id,
                    lstrip,
                    rstrip,
                },
                normalized,
            ));
            special_ids.push(id);
            id
        };
        // transformers registers the special tokens in this order (bos, eos, unk, pad); the
        // last registration of a content sets its flags.
        let bos_id = special(
            &config.bos_token,
            "<|startoftext|>",
            &mut added,
            &mut encoder,
        );
        let eos_id = special(&config.eos_token, "<|endoftext|>", &mut added, &mut encoder);
        let unk_id = Some(special(
            &config.unk_token,
            "<|endoftext|>",
            &mut added,
            &mut encoder,
        ));
        let pad_id = special(&config.pad_token, "<|endoftext|>", &mut added, &mut encoder);
        let decoder = encoder.iter().map(|(k, v)| (*v, k.clone())).collect();
        let (normalized, raw): (Vec<_>, Vec<_>) = added.into_iter().partition(|(_, n)| *n);
        let byte_encoder = bytes_to_unicode();
        let byte_decoder = byte_encoder
            .iter()
            .enumerate()
            .map(|(b, c)| (*c, b as u8))
            .collect();
        let re = |p: &str| {
            Regex::new(p).map_err(|e| tok_err(origin, format!("internal regex error: {e}")))
        };
        Ok(ClipTokenizer {
            encoder,
            decoder,
            merges,
            byte_encoder,
            byte_decoder,
            added_raw: raw.into_iter().map(|(a, _)| a).collect(),
            added_normalized: normalized.into_iter().map(|(a, _)| a).collect(),
            special_ids,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            model_max_length: config.max_length(),
            split_re: re(CLIP_SPLIT)?,
            byte_level_re: re(BYTE_LEVEL_SPLIT)?,
            whitespace_re: re(r"\s+")?,
            config,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The parsed `tokenizer_config.json` (with `special_tokens_map.json` merged in).
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// `model_max_length` (77 for CLIP), or `None` when the config leaves it unbounded.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// The id of the padding token (49407 for SD 1.x, 0 = `!` for SD 2.x / SDXL `tokenizer_2`).
    pub fn pad_token_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of `<|startoftext|>`.
    pub fn bos_token_id(&self) -> u32 {
        self.bos_id
    }

    /// The id of `<|endoftext|>`.
    pub fn eos_token_id(&self) -> u32 {
        self.eos_id
    }

    /// Number of entries in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.encoder.get(token).copied()
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.decoder.get(&id).map(String::as_str)
    }

    /// Token ids of `text` without BOS/EOS, truncation or padding.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for (piece, token) in split_on_added(text, &self.added_raw) {
            if let Some(id) = token {
                ids.push(id);
                continue;
            }
            let normalized = self.normalize(piece);
            for (inner, token) in split_on_added(&normalized, &self.added_normalized) {
                match token {
                    Some(id) => ids.push(id),
                    None => self.encode_normalized(inner, &mut ids),
                }
            }
        }
        ids
    }

    /// `tokenizer(text).input_ids`: BOS, the tokens, EOS; no truncation or padding (what
    /// diffusers' `padding="longest"` call returns for one prompt).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() + 2);
        ids.push(self.bos_id);
        ids.extend(self.tokenize(text));
        ids.push(self.eos_id);
        ids
    }

    /// `tokenizer(text, padding="max_length", max_length=max_length, truncation=True)`: keeps
    /// the first `max_length - 2` tokens between BOS and EOS, then pads with the pad token.
    pub fn encode_padded(&self, text: &str, max_length: usize) -> Vec<u32> {
        let tokens = self.tokenize(text);
        let keep = tokens.len().min(max_length.saturating_sub(2));
        let mut ids = Vec::with_capacity(max_length.max(2));
        ids.push(self.bos_id);
        ids.extend(tokens.iter().take(keep));
        ids.push(self.eos_id);
        ids.resize(ids.len().max(max_length), self.pad_id);
        ids
    }

    /// What diffusers' `encode_prompt` does with a batch of prompts: the `max_length`-padded,
    /// truncated ids of each (`model_max_length`, or 77 when unbounded), and, when any prompt
    /// was longer, the text diffusers prints in its warning ("The following part of your input
    /// was truncated because CLIP can only handle sequences up to 77 tokens: [...]"), one
    /// string per prompt, computed as `batch_decode(untruncated_ids[:, 76:-1])` on the batch
    /// padded to its longest member.
    pub fn encode_for_pipeline(&self, prompts: &[String]) -> (Vec<Vec<u32>>, Option<Vec<String>>) {
        let max_length = self.model_max_length.unwrap_or(77);
        let untruncated: Vec<Vec<u32>> = prompts.iter().map(|p| self.encode(p)).collect();
        let longest = untruncated.iter().map(Vec::len).max().unwrap_or(0);
        let padded = untruncated
            .iter()
            .map(|ids| {
                let tokens = ids.get(1..ids.len().saturating_sub(1)).unwrap_or(&[]);
                let keep = tokens.len().min(max_length.saturating_sub(2));
                let mut out = vec![self.bos_id];
                out.extend(tokens.iter().take(keep));
                out.push(self.eos_id);
                out.resize(out.len().max(max_length), self.pad_id);
                out
            })
            .collect();
        let removed = (longest > max_length).then(|| {
            untruncated
                .iter()
                .map(|ids| {
                    let mut row = ids.clone();
                    row.resize(longest, self.pad_id);
                    let end = longest.saturating_sub(1);
                    let start = max_length.saturating_sub(1).min(end);
                    self.decode(row.get(start..end).unwrap_or(&[]), false)
                })
                .collect()
        });
        (padded, removed)
    }

    /// `tokenizer.decode(ids, skip_special_tokens=...)`: byte-level decoding, then every `</w>`
    /// becomes a space and the result is stripped (CLIPTokenizer's decode wrapper).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let mut bytes = Vec::new();
        for id in ids {
            if skip_special_tokens && self.special_ids.contains(id) {
                continue;
            }
            let Some(token) = self.decoder.get(id) else {
                continue;
            };
            for c in token.chars() {
                match self.byte_decoder.get(&c) {
                    Some(b) => bytes.push(*b),
                    None => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes)
            .replace(END_OF_WORD, " ")
            .trim()
            .to_string()
    }

    fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().collect();
        let spaced = self.whitespace_re.replace_all(&nfc, " ");
        // Per char, as tokenizers' `Lowercase` does (no context-dependent final sigma).
        spaced.chars().flat_map(char::to_lowercase).collect()
    }

    fn encode_normalized(&self, text: &str, ids: &mut Vec<u32>) {
        for word in self.split_re.find_iter(text) {
            for piece in self.byte_level_re.find_iter(word.as_str()) {
                let mapped: String = piece
                    .as_str()
                    .bytes()
                    .map(|b| self.byte_encoder[usize::from(b)])
                    .collect();
                self.bpe(&mapped, ids);
            }
        }
    }

    /// Byte-level BPE of one pre-tokenized word, through the cache.
    fn bpe(&self, word: &str, ids: &mut Vec<u32>) {
        let cacheable = word.chars().count() < CACHE_MAX_WORD_CHARS;
        if cacheable
            && let Ok(cache) = self.cache.read()
            && let Some(hit) = cache.get(word)
        {
            ids.extend_from_slice(hit);
            return;
        }
        let start = ids.len();
        self.bpe_uncached(word, ids);
        if cacheable
            && let Ok(mut cache) = self.cache.write()
            && cache.len() < CACHE_CAPACITY
        {
            cache.insert(word.to_string(), ids[start..].to_vec());
        }
    }

    /// Merges the lowest-ranked adjacent pair first, leftmost on ties, until no pair merges.
    ///
    /// The symbols form a linked list and candidate merges wait in a min-heap keyed by
    /// `(rank, position)`, as tokenizers' `Word::merge_all` does, so a word of `n` symbols
    /// costs `O(n log n)` rather than a rescan of the whole word per merge. An entry is applied
    /// only if its pair is still adjacent and still merges with the same rank and result, so
    /// the heap gives exactly the greedy order of the plain loop.
    fn bpe_uncached(&self, word: &str, ids: &mut Vec<u32>) {
        let chars: Vec<char> = word.chars().collect();
        let mut symbols: Vec<u32> = Vec::with_capacity(chars.len());
        let mut buf = String::new();
        for (i, c) in chars.iter().enumerate() {
            buf.clear();
            buf.push(*c);
            if i + 1 == chars.len() {
                buf.push_str(END_OF_WORD);
            }
            match self.encoder.get(&buf) {
                Some(id) => symbols.push(*id),
                // Every byte symbol is in a CLIP vocabulary; a cut vocabulary falls back to
                // the unknown token per symbol (`fuse_unk=False`).
                None => symbols.extend(self.unk_id),
            }
        }
        let n = symbols.len();
        // Linked list over positions; `alive[i]` is false once `i` was merged into its left.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<std::cmp::Reverse<(u32, usize, u32)>>,
                    symbols: &[u32],
                    left: usize,
                    right: usize| {
            if let (Some(a), Some(b)) = (symbols.get(left), symbols.get(right))
                && let Some((rank, id)) = self.merges.get(&(*a, *b))
            {
                heap.push(std::cmp::Reverse((*rank, left, *id)));
            }
        };
        for i in 1..n {
            push(&mut heap, &symbols, i - 1, i);
        }
        while let Some(std::cmp::Reverse((rank, left, id))) = heap.pop() {
            let right = next[left];
            if !alive[left] || right >= n {
                continue;
            }
            if self.merges.get(&(symbols[left], symbols[right])) != Some(&(rank, id)) {
                continue;
            }
            symbols[left] = id;
            alive[right] = false;
            next[left] = next[right];
            if let Some(after) = next.get(right).copied()
                && after < n
            {
                prev[after] = Some(left);
            }
            if let Some(before) = prev[left] {
                push(&mut heap, &symbols, before, left);
            }
            if next[left] < n {
                push(&mut heap, &symbols, left, next[left]);
            }
        }
        ids.extend(
            symbols
                .iter()
                .zip(&alive)
                .filter_map(|(s, a)| a.then_some(*s)),
        );
    }
}

/// Splits `text` on the leftmost-longest occurrences of the added tokens; pieces between them
/// come back with `None`.
fn split_on_added<'a>(text: &'a str, tokens: &[AddedTok]) -> Vec<(&'a str, Option<u32>)> {
    let mut out = Vec::new();
    if tokens.is_empty() {
        out.push((text, None));
        return out;
    }
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = text.get(pos..).unwrap_or("");
        let hit = tokens
            .iter()
            .filter(|t| !t.content.is_empty() && rest.starts_with(t.content.as_str()))
            .max_by_key(|t| t.content.len());
        let Some(tok) = hit else {
            pos += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let mut match_start = pos;
        let mut match_end = pos + tok.content.len();
        if tok.lstrip {
            let before = text.get(start..match_start).unwrap_or("");
            match_start = start + before.trim_end().len();
        }
        if tok.rstrip {
            let after = text.get(match_end..).unwrap_or("");
            match_end += after.len() - after.trim_start().len();
        }
        if match_start > start {
            out.push((text.get(start..match_start).unwrap_or(""), None));
        }
        out.push(("", Some(tok.id)));
        start = match_end;
        pos = match_end;
    }
    if start < text.len() {
        out.push((text.get(start..).unwrap_or(""), None));
    }
    out
}
