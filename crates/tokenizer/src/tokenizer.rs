//! [`Tokenizer`]: normalization + special tokens + pre-tokenizer + byte-pair encoder.

use std::borrow::Cow;

use rayon::prelude::*;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::bpe::BytePairEncoder;
use crate::error::{Result, TokenizerError};
use crate::pretokenize::Pretokenizer;
use crate::special::{AllowedSpecial, Segment, SpecialTokens};

/// Unicode normalization applied to text before encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalization {
    /// Text is encoded as given (tiktoken).
    #[default]
    None,
    /// NFC, as Qwen-1's `tokenize()` and the `tokenizer.json` normalizer do.
    Nfc,
}

impl Normalization {
    /// Applies the normalization, borrowing when the text is already normal.
    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self {
            Self::None => Cow::Borrowed(text),
            Self::Nfc => match is_nfc_quick(text.chars()) {
                IsNormalized::Yes => Cow::Borrowed(text),
                _ => Cow::Owned(text.nfc().collect()),
            },
        }
    }
}

/// A byte-level BPE tokenizer. Cheap to share across threads (`&Tokenizer` is `Sync`).
///
/// ```no_run
/// use qwen_tokenizer::{AllowedSpecial, Tokenizer};
/// let tok = Tokenizer::qwen_from_file("vocab/qwen.tiktoken")?;
/// let ids = tok.encode("Hello, 世界! 2024", &AllowedSpecial::None)?;
/// assert_eq!(tok.decode(&ids)?, "Hello, 世界! 2024");
/// # Ok::<(), qwen_tokenizer::TokenizerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub(crate) bpe: BytePairEncoder,
    pub(crate) specials: SpecialTokens,
    pub(crate) pretokenizer: Pretokenizer,
    pub(crate) normalization: Normalization,
}

impl Tokenizer {
    /// Assembles a tokenizer; special ids must not collide with ordinary ones.
    pub fn new(
        bpe: BytePairEncoder,
        specials: SpecialTokens,
        pretokenizer: Pretokenizer,
        normalization: Normalization,
    ) -> Result<Self> {
        for (name, id) in specials.iter() {
            if let Some(bytes) = bpe.token_bytes(id) {
                if bytes != name.as_bytes() {
                    return Err(TokenizerError::InvalidVocab(format!(
                        "special token {name:?} has id {id}, which is already the ordinary token {:?}",
                        String::from_utf8_lossy(bytes)
                    )));
                }
            }
        }
        Ok(Self { bpe, specials, pretokenizer, normalization })
    }

    /// Replaces the normalization (e.g. NFC on a tiktoken vocabulary, as Qwen-1 does).
    pub fn with_normalization(mut self, normalization: Normalization) -> Self {
        self.normalization = normalization;
        self
    }

    /// Replaces the pre-tokenizer.
    pub fn with_pretokenizer(mut self, pretokenizer: Pretokenizer) -> Self {
        self.pretokenizer = pretokenizer;
        self
    }

    /// The normalization applied before encoding.
    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// The pre-tokenizer.
    pub fn pretokenizer(&self) -> &Pretokenizer {
        &self.pretokenizer
    }

    /// The byte-pair encoder (ordinary vocabulary and merges).
    pub fn bpe(&self) -> &BytePairEncoder {
        &self.bpe
    }

    /// The special tokens.
    pub fn specials(&self) -> &SpecialTokens {
        &self.specials
    }

    /// The id of a special token, e.g. `"<|im_end|>"`.
    pub fn special_id(&self, name: &str) -> Result<u32> {
        self.specials.id(name).ok_or_else(|| TokenizerError::UnknownSpecial(name.to_string()))
    }

    /// One past the largest id, ordinary or special (151,851 for Qwen-1; the model's embedding
    /// table may be padded beyond it).
    pub fn vocab_size(&self) -> usize {
        self.bpe.len().max(self.specials.max_id().map_or(0, |m| m as usize + 1))
    }

    /// Encodes `text`, producing special ids only for the special tokens `allowed` names; all
    /// other special-token strings are encoded as plain text.
    pub fn encode(&self, text: &str, allowed: &AllowedSpecial) -> Result<Vec<u32>> {
        let text = self.normalization.apply(text);
        self.encode_normalized_with_literals(&text, allowed, &[])
    }

    /// Encodes text that is already normalized ([`Normalization::apply`]), as
    /// [`Tokenizer::encode`] does, except that no special token is produced inside the `literal`
    /// byte ranges (sorted, disjoint): they are plain text, encoded together with the text around
    /// them exactly as if the special-token strings in them were ordinary text.
    pub fn encode_normalized_with_literals(
        &self,
        normalized: &str,
        allowed: &AllowedSpecial,
        literal: &[std::ops::Range<usize>],
    ) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(normalized.len() / 3 + 1);
        self.specials.split_outside(normalized, allowed, literal, |segment| match segment {
            Segment::Text(chunk) => self.encode_chunk(chunk, &mut out),
            Segment::Special(id) => {
                out.push(id);
                Ok(())
            }
        })?;
        Ok(out)
    }

    /// Encodes `text` with no special tokens at all.
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        let text = self.normalization.apply(text);
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_chunk(&text, &mut out)?;
        Ok(out)
    }

    /// Encodes many texts on all cores (rayon); the result is in input order.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S], allowed: &AllowedSpecial) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t.as_ref(), allowed)).collect()
    }

    /// Encodes many texts with no special tokens, on all cores.
    pub fn encode_ordinary_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode_ordinary(t.as_ref())).collect()
    }

    #[inline]
    fn encode_chunk(&self, chunk: &str, out: &mut Vec<u32>) -> Result<()> {
        self.pretokenizer.for_each_piece(chunk, |piece| self.bpe.encode_piece(piece.as_bytes(), out))
    }

    /// The bytes of one id (ordinary or special).
    #[inline]
    pub fn id_bytes(&self, id: u32) -> Result<&[u8]> {
        self.bpe
            .token_bytes(id)
            .or_else(|| self.specials.name(id).map(str::as_bytes))
            .ok_or(TokenizerError::UnknownId { id, vocab_size: self.vocab_size() })
    }

    /// The bytes the ids stand for (special tokens as their text).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.id_bytes(id)?);
        }
        Ok(out)
    }

    /// Decodes to a string; invalid UTF-8 (a multi-byte character cut by the ids) is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        String::from_utf8(self.decode_bytes(ids)?)
            .map_err(|e| TokenizerError::InvalidUtf8 { valid_up_to: e.utf8_error().valid_up_to() })
    }

    /// Decodes to a string, replacing invalid UTF-8 with U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
}
