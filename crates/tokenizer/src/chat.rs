//! ChatML, exactly as Qwen-1 renders it (`qwen_generation_utils.make_context`, chat format
//! `chatml`), with the role of every token so that SFT can build its loss mask.
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>
//! \n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{r}<|im_end|>      (each history turn)
//! \n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n
//! ```
//! Role names and contents are encoded separately (`"user"`, `"\n"`, content), never as one
//! string, and always with special tokens disallowed: a user who types `<|im_end|>` gets the
//! plain text.

use crate::error::Result;
use crate::error::TokenizerError;
use crate::special::{AllowedSpecial, ENDOFTEXT, IM_END, IM_START};
use crate::Tokenize;

/// Qwen-1's default system prompt (`chat()`).
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";
/// Qwen-1's default `max_window_size`.
pub const DEFAULT_MAX_WINDOW: usize = 6144;

/// Who a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name as written after `<|im_start|>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// What a token is within its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// `<|im_start|>`, `<|im_end|>` and the `\n` after `<|im_end|>`.
    Marker,
    /// The role name and the `\n` after it.
    Header,
    /// The message text.
    Content,
}

/// The role and part of one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    pub role: Role,
    pub part: Part,
}

impl Tag {
    /// Whether Qwen's SFT (`finetune.py`) trains on this token: all markers, and the content of
    /// assistant messages; never headers, system or user content.
    pub fn is_sft_target(self) -> bool {
        match self.part {
            Part::Marker => true,
            Part::Header => false,
            Part::Content => self.role == Role::Assistant,
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// A rendered conversation: ids, one tag per id, and the text they decode to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatTokens {
    pub ids: Vec<u32>,
    pub tags: Vec<Tag>,
    pub raw_text: String,
}

impl ChatTokens {
    fn push(&mut self, ids: &[u32], role: Role, part: Part) {
        self.ids.extend_from_slice(ids);
        self.tags.extend(std::iter::repeat_n(Tag { role, part }, ids.len()));
    }

    fn extend(&mut self, other: &ChatTokens) {
        self.ids.extend_from_slice(&other.ids);
        self.tags.extend_from_slice(&other.tags);
        self.raw_text.push_str(&other.raw_text);
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Renders ChatML with a tokenizer that has `<|im_start|>` and `<|im_end|>`.
#[derive(Clone)]
pub struct ChatMl<'t> {
    tokenizer: &'t dyn Tokenize,
    im_start: u32,
    im_end: u32,
    endoftext: Option<u32>,
    nl: Vec<u32>,
}

impl std::fmt::Debug for ChatMl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatMl").field("im_start", &self.im_start).field("im_end", &self.im_end).finish_non_exhaustive()
    }
}

impl<'t> ChatMl<'t> {
    /// Fails with [`TokenizerError::UnknownSpecial`](crate::TokenizerError::UnknownSpecial) when
    /// the vocabulary has no ChatML tokens.
    pub fn new(tokenizer: &'t dyn Tokenize) -> Result<Self> {
        let special =
            |name: &str| tokenizer.special_id(name).ok_or_else(|| TokenizerError::UnknownSpecial(name.into()));
        Ok(Self {
            tokenizer,
            im_start: special(IM_START)?,
            im_end: special(IM_END)?,
            endoftext: tokenizer.special_id(ENDOFTEXT),
            nl: tokenizer.encode("\n", &AllowedSpecial::None)?,
        })
    }

    /// The id of `<|im_end|>`, which closes every message.
    pub fn im_end(&self) -> u32 {
        self.im_end
    }

    /// Ids that end an assistant turn in generation: `<|im_end|>`, `<|im_start|>` (Qwen-1's chat
    /// stop words) and `<|endoftext|>` (its eos).
    pub fn stop_ids(&self) -> Vec<u32> {
        [Some(self.im_end), Some(self.im_start), self.endoftext].into_iter().flatten().collect()
    }

    fn text(&self, s: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(s, &AllowedSpecial::None)
    }

    /// `<|im_start|>{role}\n{content}<|im_end|>`, or without the content and `<|im_end|>` when
    /// `content` is `None` (the open assistant turn that asks for a reply).
    fn message(&self, role: Role, content: Option<&str>) -> Result<ChatTokens> {
        let mut m = ChatTokens::default();
        m.push(&[self.im_start], role, Part::Marker);
        m.push(&self.text(role.as_str())?, role, Part::Header);
        m.push(&self.nl, role, Part::Header);
        m.raw_text = format!("{IM_START}{}\n", role.as_str());
        if let Some(c) = content {
            m.push(&self.text(c)?, role, Part::Content);
            m.push(&[self.im_end], role, Part::Marker);
            m.raw_text.push_str(c);
            m.raw_text.push_str(IM_END);
        }
        Ok(m)
    }

    fn newline(&self, after: Role) -> ChatTokens {
        let mut t = ChatTokens { raw_text: "\n".into(), ..Default::default() };
        t.push(&self.nl, after, Part::Marker);
        t
    }

    /// Qwen-1's `make_context`: system message, as much of `history` (oldest first, each
    /// `(query, response)`) as fits under `max_window_size` tokens — dropping the oldest turns
    /// first — then `query` and an open assistant turn.
    pub fn make_context<Q: AsRef<str>, R: AsRef<str>>(
        &self,
        system: &str,
        history: &[(Q, R)],
        query: &str,
        max_window_size: usize,
    ) -> Result<ChatTokens> {
        let system_tokens = self.message(Role::System, Some(system))?;
        // Newest turn first; stop at the first one that no longer fits (not just skip it).
        let mut turns: Vec<ChatTokens> = Vec::new();
        let mut context_len = 0;
        for (q, r) in history.iter().rev() {
            let mut turn = self.message(Role::User, Some(q.as_ref()))?;
            turn.extend(&self.newline(Role::User));
            turn.extend(&self.message(Role::Assistant, Some(r.as_ref()))?);
            let turn_len = self.nl.len() + turn.len();
            if system_tokens.len() + turn_len + context_len >= max_window_size {
                break;
            }
            context_len += turn_len;
            turns.push(turn);
        }
        let mut out = system_tokens;
        let mut prev = Role::System;
        for turn in turns.iter().rev() {
            out.extend(&self.newline(prev));
            out.extend(turn);
            prev = Role::Assistant;
        }
        out.extend(&self.newline(prev));
        out.extend(&self.message(Role::User, Some(query))?);
        out.extend(&self.newline(Role::User));
        out.extend(&self.message(Role::Assistant, None)?);
        Ok(out)
    }

    /// A whole conversation for training: `system` then every message, each closed by
    /// `<|im_end|>` and a `\n` (Qwen's `finetune.py` layout).
    pub fn render(&self, system: &str, messages: &[Message]) -> Result<ChatTokens> {
        let mut out = self.message(Role::System, Some(system))?;
        out.extend(&self.newline(Role::System));
        for m in messages {
            out.extend(&self.message(m.role, Some(&m.content))?);
            out.extend(&self.newline(m.role));
        }
        Ok(out)
    }
}
