//! Chat messages → prompt ids: the seam between the API and a chat format.
//!
//! [`ChatFormat::Template`] renders the model folder's Jinja chat template as transformers'
//! `apply_chat_template(messages, add_generation_prompt=True, **chat_template_kwargs)` does (Qwen2.5,
//! Qwen3 with its `enable_thinking` switch, any HF template). [`ChatFormat::ChatMl`], for folders
//! without one (Qwen-1), renders ChatML as Qwen-1's `make_context` does (a system message — the
//! default one when the conversation has none — then every message, then an open assistant
//! turn). Either way message text is encoded as plain text: a special-token string typed in a
//! message stays text and can never become a control id.

use std::path::Path;
use std::sync::Arc;

use qwen_tokenizer::template::{ChatTemplate, RenderOptions};
use qwen_tokenizer::{AllowedSpecial, ChatMl, Message, Tokenize, Tokenizer, TokenizerError, DEFAULT_SYSTEM};
use serde_json::{Map, Value};

use crate::api::{ChatMessage, Role};
use crate::error::{Result, ServeError};

/// How a conversation becomes a prompt.
#[derive(Debug, Clone, Default)]
pub enum ChatFormat {
    /// Qwen-1 ChatML (`make_context`).
    #[default]
    ChatMl,
    /// A Jinja chat template (the model folder's).
    Template(Arc<ChatTemplate>),
}

impl ChatFormat {
    /// The folder's chat template (`chat_template.jinja` or `tokenizer_config.json`'s), else
    /// ChatML.
    ///
    /// # Errors
    /// The template does not parse, or the files are malformed.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(ChatTemplate::from_model_dir(dir)?.map_or(Self::ChatMl, |t| Self::Template(Arc::new(t))))
    }

    /// The prompt ids for `messages`, ending with an open assistant turn. `kwargs` are the
    /// request's `chat_template_kwargs` (e.g. `{"enable_thinking": false}`), template variables
    /// that ChatML ignores.
    ///
    /// # Errors
    /// [`ServeError::BadRequest`] for no messages, content that is not text, or a conversation
    /// the template refuses (its `raise_exception`).
    pub fn prompt(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        kwargs: &Map<String, Value>,
    ) -> Result<Vec<u32>> {
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
            Self::Template(t) => templated(t, tokenizer, &texts, kwargs),
        }
    }
}

fn templated(
    t: &ChatTemplate,
    tokenizer: &Tokenizer,
    messages: &[(Role, String)],
    kwargs: &Map<String, Value>,
) -> Result<Vec<u32>> {
    let messages: Vec<Value> = messages
        .iter()
        .map(|(role, text)| {
            let role = match role {
                // HF templates know `system`; OpenAI's `developer` is its newer name.
                Role::System | Role::Developer => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            serde_json::json!({ "role": role, "content": text })
        })
        .collect();
    let options = RenderOptions { extra: kwargs.clone(), ..RenderOptions::generation() };
    match t.encode(tokenizer, &messages, &options) {
        Ok(p) => Ok(p.ids),
        // What the template raises is about this conversation: the client's to fix.
        Err(TokenizerError::Template(m)) => Err(ServeError::bad("messages", m)),
        Err(e) => Err(e.into()),
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
