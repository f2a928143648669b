//! The tokenizer stored in a llama.cpp GGUF file's `tokenizer.ggml.*` metadata, as llama.cpp's
//! `convert_hf_to_gguf.py` writes it for a byte-level BPE (`tokenizer.ggml.model = "gpt2"`):
//! `tokens` (by id, byte-level strings as in `tokenizer.json`), `token_type` (1 normal, 3 control,
//! 4 user-defined, 5 unused padding), `merges` (`"a b"`, in priority order) and the pre-tokenizer
//! name `pre`. This crate reads the metadata values only; the GGUF file itself is parsed by
//! `qwen_model::gguf`.
//!
//! Normal tokens become the byte-pair vocabulary; control and user-defined tokens become special
//! tokens (found in text only when allowed, as for `tokenizer.json` added tokens); unused ones are
//! skipped; a merge whose result is not a normal token is dropped. `pre = "qwen2"` (Qwen2, Qwen2.5, Qwen3) is [`QWEN_PATTERN`](crate::QWEN_PATTERN), `"gpt-2"`/`"default"`
//! GPT-2's; any other pre-tokenizer or model is [`TokenizerError::Unsupported`]. No normalization
//! is applied, as llama.cpp applies none (`with_normalization` adds HF's NFC).

use crate::bpe::BytePairEncoder;
use crate::error::{Result, TokenizerError};
use crate::hf::{byte_level_inverse, chars_to_bytes};
use crate::pretokenize::{Pretokenizer, GPT2_PATTERN};
use crate::special::SpecialTokens;
use crate::tokenizer::{Normalization, Tokenizer};

/// The `tokenizer.ggml.*` values of a GGUF file.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab<'a> {
    /// `tokenizer.ggml.model`.
    pub model: &'a str,
    /// `tokenizer.ggml.pre`, if present.
    pub pre: Option<&'a str>,
    /// `tokenizer.ggml.tokens`, by id.
    pub tokens: Vec<&'a str>,
    /// `tokenizer.ggml.token_type`, by id (absent: all normal).
    pub token_types: Option<Vec<i64>>,
    /// `tokenizer.ggml.merges`.
    pub merges: Vec<&'a str>,
}

/// llama.cpp's `llama_token_type` values.
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const UNUSED: i64 = 5;

fn unsupported(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Unsupported(format!("GGUF tokenizer: {}", msg.into()))
}

fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::InvalidVocab(format!("GGUF tokenizer: {}", msg.into()))
}

impl Tokenizer {
    /// The byte-level BPE tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Self> {
        if v.model != "gpt2" {
            return Err(unsupported(format!("model {:?} (only the byte-level BPE \"gpt2\" is read)", v.model)));
        }
        let pre = match v.pre.unwrap_or("default") {
            "qwen2" => Pretokenizer::Qwen,
            "gpt-2" | "default" => Pretokenizer::regex(GPT2_PATTERN)?,
            other => return Err(unsupported(format!("pre-tokenizer {other:?}"))),
        };
        if let Some(types) = &v.token_types {
            if types.len() != v.tokens.len() {
                return Err(invalid(format!("{} token types for {} tokens", types.len(), v.tokens.len())));
            }
        }
        let inverse = byte_level_inverse();
        let mut vocab = Vec::with_capacity(v.tokens.len());
        let mut specials = Vec::new();
        for (id, &token) in v.tokens.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| invalid("more than 2^32 tokens"))?;
            let ty = v.token_types.as_ref().map_or(NORMAL, |t| t[id as usize]);
            match ty {
                NORMAL => {
                    let bytes = chars_to_bytes(token, &inverse)
                        .ok_or_else(|| unsupported(format!("normal token {id} {token:?} is not byte-level")))?;
                    vocab.push((bytes, id));
                }
                CONTROL | USER_DEFINED | UNKNOWN => specials.push((token.to_string(), id)),
                UNUSED => {}
                other => return Err(unsupported(format!("token {id} has type {other}"))),
            }
        }
        let known: rustc_hash::FxHashSet<&[u8]> = vocab.iter().map(|(b, _): &(Vec<u8>, u32)| b.as_slice()).collect();
        let mut merges = Vec::with_capacity(v.merges.len());
        for (i, m) in v.merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| invalid(format!("merge {i} {m:?} has no space")))?;
            let conv = |t: &str| {
                chars_to_bytes(t, &inverse)
                    .ok_or_else(|| unsupported(format!("merge {i} token {t:?} is not byte-level")))
            };
            let (a, b) = (conv(a)?, conv(b)?);
            // A merge whose result is no token is dropped: llama.cpp keeps it but, finding no
            // token for the merged piece, emits the piece's bytes one by one.
            if known.contains([a.as_slice(), b.as_slice()].concat().as_slice()) {
                merges.push((a, b));
            }
        }
        let bpe = BytePairEncoder::from_merges(vocab, &merges)?;
        Tokenizer::new(bpe, SpecialTokens::new(specials)?, pre, Normalization::None)
    }
}
