//! Special (control) tokens and which of them an encode call may produce.
//!
//! User text never yields a control id unless the caller says so: by default a special-token
//! string such as `<|im_end|>` inside text is encoded as the plain text it is (tiktoken
//! `encode(text, disallowed_special=())`). Finding them is one Aho-Corasick pass over all
//! specials; a match that is not allowed is skipped and the search resumes one character later,
//! exactly as tiktoken does, so an allowed special overlapping a disallowed one is still found.

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};
use rustc_hash::FxHashMap;

use crate::error::{Result, TokenizerError};

/// Qwen-1's end-of-document token (also its pad token).
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// ChatML turn start.
pub const IM_START: &str = "<|im_start|>";
/// ChatML turn end.
pub const IM_END: &str = "<|im_end|>";

/// Qwen-1's 208 special tokens in id order from 151643: `<|endoftext|>`, `<|im_start|>`,
/// `<|im_end|>`, `<|extra_0|>` ... `<|extra_204|>`.
pub fn qwen_specials(first_id: u32) -> Vec<(String, u32)> {
    let mut names = vec![ENDOFTEXT.to_string(), IM_START.to_string(), IM_END.to_string()];
    names.extend((0..205).map(|i| format!("<|extra_{i}|>")));
    names.into_iter().zip(first_id..).collect()
}

/// Which special tokens an encode call may produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedSpecial {
    /// None: special-token strings are plain text.
    #[default]
    None,
    /// Every special token of the vocabulary.
    All,
    /// Only these (by their text).
    Some(HashSet<String>),
}

impl AllowedSpecial {
    /// Allows the given special tokens.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self::Some(names.into_iter().map(Into::into).collect())
    }

    #[inline]
    fn allows(&self, name: &str) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::Some(set) => set.contains(name),
        }
    }
}

/// The special tokens of a vocabulary.
#[derive(Debug, Clone)]
pub struct SpecialTokens {
    names: Vec<String>,
    ids: Vec<u32>,
    by_name: FxHashMap<String, u32>,
    by_id: FxHashMap<u32, usize>,
    matcher: Option<AhoCorasick>,
}

impl SpecialTokens {
    /// Builds the set from `(text, id)` pairs.
    pub fn new(specials: Vec<(String, u32)>) -> Result<Self> {
        let mut by_name = FxHashMap::default();
        let mut by_id = FxHashMap::default();
        let (mut names, mut ids) = (Vec::new(), Vec::new());
        for (i, (name, id)) in specials.into_iter().enumerate() {
            if name.is_empty() {
                return Err(TokenizerError::InvalidVocab(format!("special token {id} is empty")));
            }
            if by_name.insert(name.clone(), id).is_some() || by_id.insert(id, i).is_some() {
                return Err(TokenizerError::InvalidVocab(format!("special token {name:?} ({id}) is duplicated")));
            }
            names.push(name);
            ids.push(id);
        }
        let matcher = if names.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&names)
                    .map_err(|e| TokenizerError::InvalidVocab(format!("special tokens: {e}")))?,
            )
        };
        Ok(Self { names, ids, by_name, by_id, matcher })
    }

    /// Number of special tokens.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The id of a special token.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The text of a special id.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(|&i| self.names[i].as_str())
    }

    /// `(text, id)` pairs in the order given at construction.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.names.iter().map(String::as_str).zip(self.ids.iter().copied())
    }

    /// Largest special id, if any.
    pub fn max_id(&self) -> Option<u32> {
        self.ids.iter().copied().max()
    }

    /// Cuts `text` at allowed special tokens: calls `f` with each stretch of ordinary text between
    /// them and with each allowed special id, in order.
    pub fn split<'t, E>(
        &self,
        text: &'t str,
        allowed: &AllowedSpecial,
        f: impl FnMut(Segment<'t>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.split_outside(text, allowed, &[], f)
    }

    /// [`SpecialTokens::split`], except that a special token overlapping one of the `literal` byte
    /// ranges (sorted, disjoint) is plain text: a chat prompt whose messages spell `<|im_end|>`.
    pub fn split_outside<'t, E>(
        &self,
        text: &'t str,
        allowed: &AllowedSpecial,
        literal: &[std::ops::Range<usize>],
        mut f: impl FnMut(Segment<'t>) -> Result<(), E>,
    ) -> Result<(), E> {
        let matcher = match (&self.matcher, allowed) {
            (Some(m), AllowedSpecial::All) => m,
            (Some(m), AllowedSpecial::Some(set)) if !set.is_empty() => m,
            _ => return f(Segment::Text(text)),
        };
        let mut start = 0; // start of the pending ordinary text
        let mut find_from = 0;
        while let Some(m) = matcher.find(aho_corasick::Input::new(text).span(find_from..text.len())) {
            let i = m.pattern().as_usize();
            // Literal ranges are few (one per message) and sorted: the first that ends after the
            // match start is the only one that can overlap it.
            let first_after = literal.partition_point(|r| r.end <= m.start());
            let in_literal = literal.get(first_after).is_some_and(|r| r.start < m.end());
            if allowed.allows(&self.names[i]) && !in_literal {
                if start < m.start() {
                    f(Segment::Text(&text[start..m.start()]))?;
                }
                f(Segment::Special(self.ids[i]))?;
                start = m.end();
                find_from = m.end();
            } else {
                // Resume one character after this match's start (tiktoken: `start_find = m.start() + 1`).
                let c = text[m.start()..].chars().next().map_or(1, char::len_utf8);
                find_from = m.start() + c;
            }
        }
        if start < text.len() {
            f(Segment::Text(&text[start..]))?;
        }
        Ok(())
    }
}

/// A stretch of text between special tokens, or an allowed special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'t> {
    Text(&'t str),
    Special(u32),
}
