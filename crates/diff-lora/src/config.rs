//! The adapter config peft builds for one model (`LoraConfig`: `r`, `lora_alpha`,
//! `rank_pattern`, `alpha_pattern`, `target_modules`), either from the file's
//! `lora_adapter_metadata` or derived from the state dict as diffusers' `get_peft_kwargs` does,
//! and peft's rules for which layers it wraps and with which rank and alpha.

use serde_json::{Map, Value};

use crate::{LoraError, LoraTensor};

/// Which modules an adapter targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Names: a module matches when its name equals one or ends with `.` + one.
    Names(Vec<String>),
    /// A regular expression the whole module name must match (`re.fullmatch`).
    Regex(String),
}

/// The parts of peft's `LoraConfig` that decide what is built.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// Per-module ranks: patterns (regular expressions) in insertion order.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alphas: patterns in insertion order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// Modules to wrap.
    pub target_modules: Targets,
    /// Modules never wrapped.
    pub exclude_modules: Option<Targets>,
    /// `scaling = alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl AdapterConfig {
    /// `LoraConfig(**metadata)`: the file's own config for this model.
    pub fn from_metadata(meta: &Map<String, Value>) -> Result<Self, LoraError> {
        let bad = |m: String| LoraError::Metadata {
            path: Default::default(),
            message: m,
        };
        if meta.get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(LoraError::Unsupported {
                what: "DoRA (`use_dora=True`)".into(),
            });
        }
        if meta.get("lora_bias").and_then(Value::as_bool) == Some(true) {
            return Err(LoraError::Unsupported {
                what: "LoRA bias (`lora_bias=True`)".into(),
            });
        }
        let r = match meta.get("r") {
            None => 8,
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .filter(|r| *r > 0)
                .ok_or_else(|| bad(format!("`r` must be a positive integer, got {v}")))?,
        };
        let lora_alpha = match meta.get("lora_alpha") {
            None => 8.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("`lora_alpha` must be a number, got {v}")))?,
        };
        let mut rank_pattern = Vec::new();
        if let Some(Value::Object(m)) = meta.get("rank_pattern") {
            for (k, v) in m {
                let v = v
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|r| *r > 0)
                    .ok_or_else(|| bad(format!("rank_pattern `{k}`: not a positive integer")))?;
                rank_pattern.push((k.clone(), v));
            }
        }
        let mut alpha_pattern = Vec::new();
        if let Some(Value::Object(m)) = meta.get("alpha_pattern") {
            for (k, v) in m {
                let v = v
                    .as_f64()
                    .ok_or_else(|| bad(format!("alpha_pattern `{k}`: not a number")))?;
                alpha_pattern.push((k.clone(), v));
            }
        }
        let targets = |key: &str| -> Result<Option<Targets>, LoraError> {
            match meta.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(Targets::Regex(s.clone()))),
                Some(Value::Array(items)) => Ok(Some(Targets::Names(
                    items
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| bad(format!("`{key}` holds a non-string")))
                        })
                        .collect::<Result<_, _>>()?,
                ))),
                Some(other) => Err(bad(format!(
                    "`{key}` must be a list or a string, got {other}"
                ))),
            }
        };
        let target_modules = targets("target_modules")?
            .ok_or_else(|| bad("the adapter config names no `target_modules`".into()))?;
        Ok(Self {
            r,
            lora_alpha,
            rank_pattern,
            alpha_pattern,
            target_modules,
            exclude_modules: targets("exclude_modules")?,
            use_rslora: meta.get("use_rslora").and_then(Value::as_bool) == Some(true),
        })
    }

    /// diffusers' `get_peft_kwargs(rank_dict, network_alpha_dict, peft_state_dict, is_unet)`.
    pub fn from_state_dict(
        rank: &[(String, usize)],
        alphas: Option<&[(String, f32)]>,
        tensors: &[(String, LoraTensor)],
        is_unet: bool,
    ) -> Result<Self, LoraError> {
        let first = rank.first().ok_or_else(|| LoraError::Argument(
            "the LoRA has no `lora_B` weight of two or more dimensions for this model, so its rank is unknown".into(),
        ))?;
        let mut r = first.1;
        let mut lora_alpha = first.1 as f64;
        let mut rank_pattern = Vec::new();
        let mut alpha_pattern: Vec<(String, f64)> = Vec::new();
        let has_alphas = alphas.is_some_and(|a| !a.is_empty());
        if distinct(rank.iter().map(|(_, v)| *v as f64)) > 1 {
            r = most_common(rank.iter().map(|(_, v)| *v as f64)) as usize;
            rank_pattern = rank
                .iter()
                .filter(|(_, v)| *v != r)
                .map(|(k, v)| (before(k, ".lora_B.").to_string(), *v))
                .collect();
            if !has_alphas {
                lora_alpha = r as f64;
                alpha_pattern = rank_pattern
                    .iter()
                    .map(|(k, v)| (k.clone(), *v as f64))
                    .collect();
            }
        }
        if let Some(alphas) = alphas.filter(|a| !a.is_empty()) {
            let values = alphas.iter().map(|(_, v)| *v as f64);
            if distinct(values.clone()) > 1 {
                lora_alpha = most_common(values);
                alpha_pattern = alphas
                    .iter()
                    .filter(|(_, v)| *v as f64 != lora_alpha)
                    .map(|(k, v)| {
                        let key = if is_unet {
                            before(k, ".lora_A.").replace(".alpha", "")
                        } else {
                            let head = before(k, ".down.");
                            match head.rfind('.') {
                                Some(i) => head[..i].to_string(),
                                None => String::new(),
                            }
                        };
                        (key, *v as f64)
                    })
                    .collect();
            } else {
                lora_alpha = alphas[0].1 as f64;
            }
        }
        let mut targets: Vec<String> = Vec::new();
        for (k, _) in tensors {
            let name = before(k, ".lora").to_string();
            if !targets.contains(&name) {
                targets.push(name);
            }
        }
        if tensors
            .iter()
            .any(|(k, _)| k.contains("lora_magnitude_vector"))
        {
            return Err(LoraError::Unsupported {
                what: "DoRA (`lora_magnitude_vector`)".into(),
            });
        }
        if tensors
            .iter()
            .any(|(k, _)| k.contains("lora_B") && k.ends_with(".bias"))
        {
            return Err(LoraError::Unsupported {
                what: "LoRA bias (`lora_B.bias`)".into(),
            });
        }
        Ok(Self {
            r,
            lora_alpha,
            rank_pattern,
            alpha_pattern,
            target_modules: Targets::Names(targets),
            exclude_modules: None,
            use_rslora: false,
        })
    }

    /// The config with its patterns compiled, ready to be asked about many modules.
    pub fn matcher(&self) -> Result<Matcher<'_>, LoraError> {
        let compile = |key: &str| {
            regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
                .map_err(|e| LoraError::Argument(format!("pattern `{key}`: {e}")))
        };
        let targets = |t: &Targets| -> Result<CompiledTargets, LoraError> {
            Ok(match t {
                Targets::Names(n) => CompiledTargets::Names(n.clone()),
                Targets::Regex(re) => {
                    CompiledTargets::Regex(regex::Regex::new(&format!("^(?:{re})$")).map_err(
                        |e| LoraError::Argument(format!("target_modules regex `{re}`: {e}")),
                    )?)
                }
            })
        };
        Ok(Matcher {
            config: self,
            rank: self
                .rank_pattern
                .iter()
                .map(|(k, v)| Ok((k.clone(), compile(k)?, *v)))
                .collect::<Result<_, LoraError>>()?,
            alpha: self
                .alpha_pattern
                .iter()
                .map(|(k, v)| Ok((k.clone(), compile(k)?, *v)))
                .collect::<Result<_, LoraError>>()?,
            targets: targets(&self.target_modules)?,
            exclude: self.exclude_modules.as_ref().map(targets).transpose()?,
        })
    }

    /// peft's `scaling` for a rank and alpha.
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

enum CompiledTargets {
    Names(Vec<String>),
    Regex(regex::Regex),
}

impl CompiledTargets {
    fn matches(&self, name: &str) -> bool {
        match self {
            CompiledTargets::Names(list) => list.iter().any(|t| {
                name == t
                    || (name.len() > t.len()
                        && name.ends_with(t.as_str())
                        && name.as_bytes()[name.len() - t.len() - 1] == b'.')
            }),
            CompiledTargets::Regex(re) => re.is_match(name),
        }
    }
}

/// An [`AdapterConfig`] with compiled patterns.
pub struct Matcher<'a> {
    config: &'a AdapterConfig,
    rank: Vec<(String, regex::Regex, usize)>,
    alpha: Vec<(String, regex::Regex, f64)>,
    targets: CompiledTargets,
    exclude: Option<CompiledTargets>,
}

impl Matcher<'_> {
    /// Whether peft wraps the module `name` (`check_target_module_exists`).
    pub fn targets(&self, name: &str) -> bool {
        !self.exclude.as_ref().is_some_and(|e| e.matches(name)) && self.targets.matches(name)
    }

    /// The rank and alpha peft gives module `name`: the first pattern matching
    /// `(.*\.)?(pattern)$` (peft's `get_pattern_key`), else the defaults.
    pub fn rank_and_alpha(&self, name: &str) -> (usize, f64) {
        let r = self
            .rank
            .iter()
            .find(|(_, re, _)| re.is_match(name))
            .map_or(self.config.r, |(_, _, v)| *v);
        let alpha = self
            .alpha
            .iter()
            .find(|(_, re, _)| re.is_match(name))
            .map_or(self.config.lora_alpha, |(_, _, v)| *v);
        (r, alpha)
    }

    /// The pattern keys that match none of `names` (peft warns about them).
    pub fn unused_patterns(&self, names: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let keys = self
            .rank
            .iter()
            .map(|(k, re, _)| (k, re))
            .chain(self.alpha.iter().map(|(k, re, _)| (k, re)));
        for (key, re) in keys {
            if !names.iter().any(|n| re.is_match(n)) && !out.contains(key) {
                out.push(key.clone());
            }
        }
        out
    }
}

fn before<'a>(s: &'a str, sep: &str) -> &'a str {
    s.split(sep).next().unwrap_or(s)
}

fn distinct(values: impl Iterator<Item = f64>) -> usize {
    let mut seen: Vec<f64> = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen.len()
}

/// `collections.Counter(values).most_common()[0][0]`: ties go to the value seen first.
fn most_common(values: impl Iterator<Item = f64>) -> f64 {
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some(c) => c.1 += 1,
            None => counts.push((v, 1)),
        }
    }
    let mut best = counts[0];
    for c in &counts[1..] {
        if c.1 > best.1 {
            best = *c;
        }
    }
    best.0
}
