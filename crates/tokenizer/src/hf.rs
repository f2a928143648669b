//! HF `tokenizer.json`: byte-level BPE (`model.type = "BPE"`), its vocabulary and merges, added
//! tokens, the NFC normalizer and the `Split` + `ByteLevel` pre-tokenizer. Anything else that
//! would change the ids is refused with [`TokenizerError::Unsupported`] rather than ignored.

use std::path::Path;

use serde_json::{json, Value};

use crate::bpe::BytePairEncoder;
use crate::error::{Result, TokenizerError};
use crate::pretokenize::{Pretokenizer, GPT2_PATTERN};
use crate::special::SpecialTokens;
use crate::tiktoken::{read, write_atomic};
use crate::tokenizer::{Normalization, Tokenizer};

/// GPT-2's byte ↔ printable-character table used by byte-level vocabularies.
fn bytes_to_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).expect("valid");
    }
    table
}

/// The inverse of [`bytes_to_chars`].
pub(crate) fn byte_level_inverse() -> rustc_hash::FxHashMap<char, u8> {
    bytes_to_chars().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()
}

pub(crate) fn chars_to_bytes(s: &str, inverse: &rustc_hash::FxHashMap<char, u8>) -> Option<Vec<u8>> {
    s.chars().map(|c| inverse.get(&c).copied()).collect()
}

fn bytes_to_string(b: &[u8], table: &[char; 256]) -> String {
    b.iter().map(|&x| table[x as usize]).collect()
}

fn malformed(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::MalformedTokenizerJson(msg.into())
}

fn unsupported(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Unsupported(msg.into())
}

fn normalization(v: &Value) -> Result<Normalization> {
    match v {
        Value::Null => Ok(Normalization::None),
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("NFC") => Ok(Normalization::Nfc),
            Some("Sequence") => {
                let items = o
                    .get("normalizers")
                    .and_then(Value::as_array)
                    .ok_or_else(|| malformed("normalizer Sequence without normalizers"))?;
                match items.as_slice() {
                    [] => Ok(Normalization::None),
                    [one] => normalization(one),
                    _ => Err(unsupported("a normalizer Sequence of more than one normalizer")),
                }
            }
            Some(t) => Err(unsupported(format!("normalizer {t}"))),
            None => Err(malformed("normalizer without type")),
        },
        _ => Err(malformed("normalizer is not an object")),
    }
}

fn byte_level_ok(o: &serde_json::Map<String, Value>) -> Result<bool> {
    if o.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false) {
        return Err(unsupported("ByteLevel add_prefix_space = true"));
    }
    Ok(o.get("use_regex").and_then(Value::as_bool).unwrap_or(true))
}

fn pretokenizer(v: &Value) -> Result<Pretokenizer> {
    let o = v.as_object().ok_or_else(|| malformed("pre_tokenizer is not an object"))?;
    match o.get("type").and_then(Value::as_str) {
        Some("ByteLevel") => {
            if byte_level_ok(o)? {
                Pretokenizer::regex(GPT2_PATTERN)
            } else {
                Err(unsupported("a ByteLevel pre-tokenizer without a regex split"))
            }
        }
        Some("Sequence") => {
            let items = o
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed("pre_tokenizer Sequence without pretokenizers"))?;
            let mut split = None;
            let mut byte_level = false;
            for item in items {
                let io = item.as_object().ok_or_else(|| malformed("pre_tokenizer item is not an object"))?;
                match io.get("type").and_then(Value::as_str) {
                    Some("Split") if split.is_none() => {
                        let pat = io
                            .get("pattern")
                            .and_then(|p| p.get("Regex").or_else(|| p.get("String")))
                            .and_then(Value::as_str)
                            .ok_or_else(|| malformed("Split without pattern"))?;
                        if io.get("pattern").and_then(|p| p.get("String")).is_some() {
                            return Err(unsupported("Split with a String pattern"));
                        }
                        if io.get("behavior").and_then(Value::as_str) != Some("Isolated")
                            || io.get("invert").and_then(Value::as_bool).unwrap_or(false)
                        {
                            return Err(unsupported("Split other than Isolated, non-inverted"));
                        }
                        split = Some(Pretokenizer::from_pattern(pat)?);
                    }
                    Some("ByteLevel") if !byte_level => {
                        if byte_level_ok(io)? {
                            return Err(unsupported("Split followed by a ByteLevel regex split"));
                        }
                        byte_level = true;
                    }
                    Some(t) => return Err(unsupported(format!("pre-tokenizer {t} in a Sequence"))),
                    None => return Err(malformed("pre_tokenizer item without type")),
                }
            }
            match (split, byte_level) {
                (Some(p), true) => Ok(p),
                _ => Err(unsupported("a pre-tokenizer Sequence other than Split + ByteLevel")),
            }
        }
        Some(t) => Err(unsupported(format!("pre-tokenizer {t}"))),
        None => Err(malformed("pre_tokenizer without type")),
    }
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json` (byte-level BPE). Every added token becomes a special token
    /// of this crate: found in text only when allowed (HF splits them out always; pass
    /// [`AllowedSpecial::All`](crate::AllowedSpecial::All) for HF's behaviour).
    pub fn from_tokenizer_json(data: &[u8]) -> Result<Self> {
        let root: Value = serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
        let model = root.get("model").and_then(Value::as_object).ok_or_else(|| malformed("no model"))?;
        if model.get("type").and_then(Value::as_str).unwrap_or("BPE") != "BPE" {
            return Err(unsupported(format!("model type {}", model["type"])));
        }
        for flag in ["dropout", "unk_token"] {
            if !model.get(flag).unwrap_or(&Value::Null).is_null() {
                return Err(unsupported(format!("BPE {flag}")));
            }
        }
        for flag in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model.get(flag).and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                return Err(unsupported(format!("BPE {flag}")));
            }
        }
        for flag in ["fuse_unk", "byte_fallback"] {
            if model.get(flag).and_then(Value::as_bool).unwrap_or(false) {
                return Err(unsupported(format!("BPE {flag}")));
            }
        }
        let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);

        let inverse = byte_level_inverse();
        let vocab_obj =
            model.get("vocab").and_then(Value::as_object).ok_or_else(|| malformed("model.vocab is not an object"))?;
        let mut vocab = Vec::with_capacity(vocab_obj.len());
        for (s, id) in vocab_obj {
            let id = id
                .as_u64()
                .filter(|&i| i <= u32::MAX as u64)
                .ok_or_else(|| malformed(format!("vocab id of {s:?} is not a u32")))?;
            let bytes = chars_to_bytes(s, &inverse)
                .ok_or_else(|| unsupported(format!("vocab entry {s:?} is not byte-level")))?;
            vocab.push((bytes, id as u32));
        }
        let merges_v =
            model.get("merges").and_then(Value::as_array).ok_or_else(|| malformed("model.merges is not an array"))?;
        let mut merges = Vec::with_capacity(merges_v.len());
        for (i, m) in merges_v.iter().enumerate() {
            let (a, b) = match m {
                Value::String(s) => {
                    s.split_once(' ').ok_or_else(|| malformed(format!("merge {i} {s:?} has no space")))?
                }
                Value::Array(v) if v.len() == 2 => (
                    v[0].as_str().ok_or_else(|| malformed(format!("merge {i} is not strings")))?,
                    v[1].as_str().ok_or_else(|| malformed(format!("merge {i} is not strings")))?,
                ),
                _ => return Err(malformed(format!("merge {i} is neither \"a b\" nor [a, b]"))),
            };
            let conv = |t: &str| {
                chars_to_bytes(t, &inverse)
                    .ok_or_else(|| unsupported(format!("merge {i} token {t:?} is not byte-level")))
            };
            merges.push((conv(a)?, conv(b)?));
        }
        if ignore_merges {
            return Err(unsupported("BPE ignore_merges = true"));
        }
        let bpe = BytePairEncoder::from_merges(vocab, &merges)?;

        let mut specials = Vec::new();
        for t in root.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let content =
                t.get("content").and_then(Value::as_str).ok_or_else(|| malformed("added token without content"))?;
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .filter(|&i| i <= u32::MAX as u64)
                .ok_or_else(|| malformed(format!("added token {content:?} without a u32 id")))?;
            for flag in ["single_word", "lstrip", "rstrip"] {
                if t.get(flag).and_then(Value::as_bool).unwrap_or(false) {
                    return Err(unsupported(format!("added token {content:?} with {flag}")));
                }
            }
            specials.push((content.to_string(), id as u32));
        }
        let norm = normalization(root.get("normalizer").unwrap_or(&Value::Null))?;
        let pre = pretokenizer(root.get("pre_tokenizer").ok_or_else(|| malformed("no pre_tokenizer"))?)?;
        // Added tokens that are also ordinary tokens keep their ordinary entry; `new` checks they agree.
        Tokenizer::new(bpe, SpecialTokens::new(specials)?, pre, norm)
    }

    /// [`Tokenizer::from_tokenizer_json`] on a file.
    pub fn from_tokenizer_json_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_tokenizer_json(&read(path.as_ref())?)
    }

    /// This tokenizer as an HF `tokenizer.json` value (byte-level BPE, merges in priority order).
    pub fn to_tokenizer_json(&self) -> Value {
        let table = bytes_to_chars();
        let vocab: serde_json::Map<String, Value> =
            self.bpe.iter().map(|(b, id)| (bytes_to_string(b, &table), json!(id))).collect();
        let tok = |id: u32| bytes_to_string(self.bpe.token_bytes(id).expect("merge uses known ids"), &table);
        let merges: Vec<Value> = self.bpe.merge_list().into_iter().map(|(a, b, _)| json!([tok(a), tok(b)])).collect();
        let added: Vec<Value> = self
            .specials
            .iter()
            .map(|(content, id)| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let normalizer = match self.normalization {
            Normalization::None => Value::Null,
            Normalization::Nfc => json!({"type": "NFC"}),
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.pretokenizer.pattern()}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
            ]},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        })
    }

    /// Writes [`Tokenizer::to_tokenizer_json`] to `path` (atomically).
    pub fn save_tokenizer_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = serde_json::to_vec(&self.to_tokenizer_json()).expect("serializing a Value cannot fail");
        write_atomic(path.as_ref(), &bytes)
    }
}
