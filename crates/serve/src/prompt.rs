//! Chat messages → prompt ids: the seam between the API and a chat format.
//!
//! [`ChatFormat::ChatMl`] renders Qwen-1's ChatML as `make_context` does (a system message — the
//! default one when the conversation has none — then every message, then an open assistant
//! turn). Message text is encoded as plain text: a special-token string typed in a message stays
//! text and can never become a control id.

use qwen_tokenizer::{AllowedSpecial, ChatMl, Message, Tokenize, Tokenizer, DEFAULT_SYSTEM};

use crate::api::{ChatMessage, Role};
use crate::error::{Result, ServeError};

/// How a conversation becomes a prompt.
#[derive(Debug, Clone, Default)]
pub enum ChatFormat {
    /// Qwen-1 ChatML (`make_context`).
    #[default]
    ChatMl,
}

impl ChatFormat {
    /// The prompt ids for `messages`, ending with an open assistant turn.
    ///
    /// # Errors
    /// [`ServeError::BadRequest`] for no messages or content that is not text.
    pub fn prompt(&self, tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        if messages.is_empty() {
            return Err(ServeError::bad("messages", "`messages` must hold at least one message"));
        }
        let mut texts = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let text = m.content.text().map_err(|kind| {
                ServeError::bad("messages", format!("messages[{i}]: content parts of type `{kind}` are not supported"))
            })?;
            texts.push((m.role, text));
        }
        match self {
            Self::ChatMl => chatml(tokenizer, &texts),
        }
    }
}

fn chatml(tokenizer: &Tokenizer, messages: &[(Role, String)]) -> Result<Vec<u32>> {
    let chat = ChatMl::new(tokenizer)?;
    let (system, rest) = match messages.split_first() {
        Some(((Role::System | Role::Developer, text), rest)) => (text.as_str(), rest),
        _ => (DEFAULT_SYSTEM, messages),
    };
    let rest: Vec<Message> = rest
        .iter()
        .map(|(role, text)| {
            let role = match role {
                Role::System | Role::Developer => qwen_tokenizer::Role::System,
                Role::User => qwen_tokenizer::Role::User,
                Role::Assistant => qwen_tokenizer::Role::Assistant,
            };
            Message::new(role, text.clone())
        })
        .collect();
    let mut ids = chat.render(system, &rest)?.ids;
    // The open assistant turn, piece by piece as make_context encodes it.
    let im_start = Tokenize::special_id(tokenizer, qwen_tokenizer::special::IM_START)
        .ok_or_else(|| ServeError::Unavailable("the vocabulary has no <|im_start|>".into()))?;
    ids.push(im_start);
    ids.extend(tokenizer.encode("assistant", &AllowedSpecial::None)?);
    ids.extend(tokenizer.encode("\n", &AllowedSpecial::None)?);
    Ok(ids)
}
