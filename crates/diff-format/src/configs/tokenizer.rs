//! `tokenizer_config.json` and `special_tokens_map.json` of a transformers tokenizer folder
//! (`tokenizer/`, `tokenizer_2/` in Stable Diffusion repos).
//!
//! Only what a CLIP tokenizer needs is typed; every other key is kept in `extra` so a load -> save
//! round-trips it. Special tokens are written either as a plain string (`"pad_token": "!"`) or as
//! a serialized `AddedToken` object (`{"__type": "AddedToken", "content": ..., "normalized": ...}`);
//! [`SpecialToken`] accepts both and remembers which one it was.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A special token as it appears in `tokenizer_config.json` / `special_tokens_map.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SpecialToken {
    /// A plain string, e.g. `"pad_token": "!"`. transformers turns it into an added token that is
    /// matched on the raw text (`normalized: false`).
    Text(String),
    /// A serialized `AddedToken` (`{"content": "<|endoftext|>", "normalized": true, ...}`).
    Added(AddedToken),
}

impl SpecialToken {
    /// The token's text.
    pub fn content(&self) -> &str {
        match self {
            SpecialToken::Text(s) => s,
            SpecialToken::Added(a) => &a.content,
        }
    }

    /// Whether the token is matched on the normalized text (`AddedToken.normalized`); a plain
    /// string special token is matched on the raw text, as transformers does.
    pub fn normalized(&self) -> bool {
        match self {
            SpecialToken::Text(_) => false,
            SpecialToken::Added(a) => a.normalized.unwrap_or(false),
        }
    }
}

/// A serialized `tokenizers.AddedToken` (`AddedToken.__getstate__` fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddedToken {
    /// The token's text.
    pub content: String,
    /// Absorb the whitespace on the left of a match. Python default `False`.
    #[serde(default)]
    pub lstrip: bool,
    /// Absorb the whitespace on the right of a match. Python default `False`.
    #[serde(default)]
    pub rstrip: bool,
    /// Match only whole words. Python default `False`.
    #[serde(default)]
    pub single_word: bool,
    /// Match on the normalized text. Python default: `not special`; absent here means "use that
    /// default".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalized: Option<bool>,
    /// Whether the token is special (skipped by `decode(skip_special_tokens=True)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub special: Option<bool>,
    /// Other keys (`__type`), kept for re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `tokenizer_config.json` of a (CLIP) tokenizer folder.
///
/// Defaults are `CLIPTokenizer.__init__`'s (`unk`/`eos`/`pad` = `<|endoftext|>`, `bos` =
/// `<|startoftext|>`) and `PreTrainedTokenizerBase`'s (`model_max_length` = `int(1e30)`, i.e.
/// unbounded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenizerConfig {
    /// Beginning-of-sequence token. Default `<|startoftext|>`.
    pub bos_token: Option<SpecialToken>,
    /// End-of-sequence token. Default `<|endoftext|>`.
    pub eos_token: Option<SpecialToken>,
    /// Padding token. Default `<|endoftext|>`; SD 2.x and SDXL `tokenizer_2` use `!`.
    pub pad_token: Option<SpecialToken>,
    /// Unknown token. Default `<|endoftext|>`.
    pub unk_token: Option<SpecialToken>,
    /// Longest sequence the model accepts (77 for CLIP). Default `int(1e30)` ("no limit"); kept
    /// as a JSON number because Hub files carry values that overflow `u64`.
    pub model_max_length: Option<serde_json::Number>,
    /// The class transformers instantiates, e.g. `CLIPTokenizer`. Default absent.
    pub tokenizer_class: Option<String>,
    /// Added tokens by id (`{"49406": {"content": ...}}`), written by newer transformers. Default
    /// absent; when present, transformers ignores `special_tokens_map.json`.
    pub added_tokens_decoder: Option<BTreeMap<String, AddedToken>>,
    /// Unknown keys (`do_lower_case`, `errors`, `name_or_path`, ...), kept for re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            bos_token: Some(SpecialToken::Text("<|startoftext|>".into())),
            eos_token: Some(SpecialToken::Text("<|endoftext|>".into())),
            pad_token: Some(SpecialToken::Text("<|endoftext|>".into())),
            unk_token: Some(SpecialToken::Text("<|endoftext|>".into())),
            model_max_length: None,
            tokenizer_class: None,
            added_tokens_decoder: None,
            extra: BTreeMap::new(),
        }
    }
}

impl TokenizerConfig {
    /// `model_max_length` as a length, or `None` when it is absent or the "unbounded" sentinel
    /// (anything above `u32::MAX`, such as `int(1e30)`).
    pub fn max_length(&self) -> Option<usize> {
        let n = self.model_max_length.as_ref()?;
        let v = n.as_u64()?;
        if v > u64::from(u32::MAX) {
            return None;
        }
        usize::try_from(v).ok()
    }
}

/// `special_tokens_map.json`: the legacy file whose entries override `tokenizer_config.json`'s
/// special tokens (when that file has no `added_tokens_decoder`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecialTokensMap {
    /// Beginning-of-sequence token, if set.
    pub bos_token: Option<SpecialToken>,
    /// End-of-sequence token, if set.
    pub eos_token: Option<SpecialToken>,
    /// Padding token, if set.
    pub pad_token: Option<SpecialToken>,
    /// Unknown token, if set.
    pub unk_token: Option<SpecialToken>,
    /// Other entries (`additional_special_tokens`, ...), kept for re-save.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd2_tokenizer_config_with_added_token_objects_and_string_pad_parses() {
        let json = r#"{"add_prefix_space": false,
            "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": false,
                          "normalized": true, "rstrip": false, "single_word": false},
            "model_max_length": 77, "pad_token": "!", "tokenizer_class": "CLIPTokenizer"}"#;
        let cfg: TokenizerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.max_length(), Some(77));
        assert_eq!(cfg.pad_token.as_ref().map(|t| t.content()), Some("!"));
        assert!(!cfg.pad_token.as_ref().is_some_and(|t| t.normalized()));
        assert!(cfg.bos_token.as_ref().is_some_and(|t| t.normalized()));
        // The eos default is CLIPTokenizer's.
        assert_eq!(
            cfg.eos_token.as_ref().map(|t| t.content()),
            Some("<|endoftext|>")
        );
        assert!(cfg.extra.contains_key("add_prefix_space"));
        let back = serde_json::to_value(&cfg).unwrap();
        assert_eq!(back["bos_token"]["__type"], "AddedToken");
    }

    #[test]
    fn unbounded_model_max_length_is_none() {
        let cfg: TokenizerConfig =
            serde_json::from_str(r#"{"model_max_length": 1000000000000000019884624838656}"#)
                .unwrap();
        assert_eq!(cfg.max_length(), None);
    }
}
