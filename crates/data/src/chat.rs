//! Chat and preference datasets as JSON Lines, for SFT, reward modelling, PPO prompts and DPO.
//!
//! A chat record is one conversation, in either of the two layouts in common use:
//!
//! ```text
//! {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}, ...]}
//! {"conversations": [{"from": "user", "value": "..."}, {"from": "assistant", "value": "..."}]}
//! ```
//!
//! (the second is Qwen's `finetune.py` format; `human`/`gpt` are accepted for `user`/`assistant`).
//! A leading system message becomes [`ChatRecord::system`].
//!
//! A preference record is a prompt and two responses, the preferred one first:
//!
//! ```text
//! {"prompt": "...", "chosen": "...", "rejected": "..."}
//! {"prompt": [{"role": "user", "content": "..."}], "chosen": "...", "rejected": "..."}
//! ```
//!
//! A prompt record is what RL (PPO, GRPO) samples responses to, with an optional reference answer
//! that a verifier checks responses against:
//!
//! ```text
//! {"prompt": "..."}
//! {"prompt": [{"role": "user", "content": "..."}], "answer": "..."}
//! ```
//!
//! The readers ([`ChatJsonl`], [`PreferenceJsonl`], [`PromptJsonl`]) stream: iterators that parse one line at
//! a time. A malformed line yields [`DataError::MalformedJsonl`] with its line number, and the
//! iterator goes on with the next line; blank lines are skipped. A line longer than
//! [`MAX_LINE_BYTES`](crate::MAX_LINE_BYTES) yields [`DataError::LineTooLong`] without being held in
//! memory, and the iterator goes on after it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use qwen_tokenizer::{Message, Role};
use serde_json::Value;

use crate::error::{DataError, Result};

/// One conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRecord {
    /// The system prompt, when the conversation starts with one.
    pub system: Option<String>,
    /// User and assistant turns, in order.
    pub messages: Vec<Message>,
}

/// A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceRecord {
    /// The system prompt, when the prompt starts with one.
    pub system: Option<String>,
    /// The conversation so far; its last message is the user's.
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
}

/// A prompt to sample responses to (PPO, GRPO), with an optional reference answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRecord {
    /// The system prompt, when the prompt starts with one.
    pub system: Option<String>,
    /// The conversation so far; its last message is the user's.
    pub prompt: Vec<Message>,
    /// The `answer` field, for verifiers.
    pub answer: Option<String>,
}

fn role(name: &str) -> std::result::Result<Role, String> {
    match name {
        "system" => Ok(Role::System),
        "user" | "human" => Ok(Role::User),
        "assistant" | "gpt" => Ok(Role::Assistant),
        other => Err(format!("unknown role {other:?}")),
    }
}

/// Messages from a JSON array in either layout; a leading system message is split off.
fn messages(v: &Value) -> std::result::Result<(Option<String>, Vec<Message>), String> {
    let list = v.as_array().ok_or("messages must be an array")?;
    let mut system = None;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let field = |a: &str, b: &str| m.get(a).or_else(|| m.get(b)).and_then(Value::as_str);
        let r = role(field("role", "from").ok_or(format!("message {i} has no string role/from"))?)?;
        let content = field("content", "value").ok_or(format!("message {i} has no string content/value"))?;
        match r {
            Role::System if i == 0 => system = Some(content.to_owned()),
            Role::System => return Err(format!("message {i}: a system message may only come first")),
            _ => out.push(Message::new(r, content)),
        }
    }
    Ok((system, out))
}

impl ChatRecord {
    /// Parses one JSON object (see the module docs). Fails if there are no user/assistant turns.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let list =
            v.get("messages").or_else(|| v.get("conversations")).ok_or("no \"messages\" or \"conversations\"")?;
        let (system, messages) = messages(list)?;
        if messages.is_empty() {
            return Err("the conversation has no user or assistant message".into());
        }
        Ok(Self { system, messages })
    }
}

/// A `"prompt"` field: a string (one user message) or a message list ending with the user's.
fn prompt_field(v: &Value) -> std::result::Result<(Option<String>, Vec<Message>), String> {
    let prompt = v.get("prompt").ok_or("no \"prompt\"")?;
    let (system, prompt) = match prompt {
        Value::String(s) => (None, vec![Message::new(Role::User, s.as_str())]),
        other => messages(other)?,
    };
    if prompt.last().is_none_or(|m| m.role != Role::User) {
        return Err("the prompt must end with a user message".into());
    }
    Ok((system, prompt))
}

impl PromptRecord {
    /// Parses one JSON object (see the module docs): `prompt` as in a preference record, `answer`
    /// (optional) a string.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let (system, prompt) = prompt_field(v)?;
        let answer = match v.get("answer") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("\"answer\" must be a string".into()),
        };
        Ok(Self { system, prompt, answer })
    }
}

impl PreferenceRecord {
    /// Parses one JSON object (see the module docs). The prompt is a string (one user message)
    /// or a message list ending with a user message; both responses must be strings.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let (system, prompt) = prompt_field(v)?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned).ok_or(format!("no string \"{k}\""));
        Ok(Self { system, prompt, chosen: text("chosen")?, rejected: text("rejected")? })
    }
}

/// Streams records of type `T` from a JSON Lines file.
pub struct Jsonl<T> {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    line_no: usize,
    line: String,
    parse: fn(&Value) -> std::result::Result<T, String>,
}

/// Conversations from a JSON Lines file.
pub type ChatJsonl = Jsonl<ChatRecord>;
/// Preference pairs from a JSON Lines file.
pub type PreferenceJsonl = Jsonl<PreferenceRecord>;
/// RL prompts from a JSON Lines file.
pub type PromptJsonl = Jsonl<PromptRecord>;

impl ChatJsonl {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Jsonl::with_parser(path, ChatRecord::from_json)
    }

    /// Conversations from any reader; `name` stands for the path in errors.
    pub fn from_reader(name: impl Into<PathBuf>, reader: impl BufRead + Send + 'static) -> Self {
        Jsonl::new(name.into(), Box::new(reader), ChatRecord::from_json)
    }
}

impl PreferenceJsonl {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Jsonl::with_parser(path, PreferenceRecord::from_json)
    }

    /// Preference pairs from any reader; `name` stands for the path in errors.
    pub fn from_reader(name: impl Into<PathBuf>, reader: impl BufRead + Send + 'static) -> Self {
        Jsonl::new(name.into(), Box::new(reader), PreferenceRecord::from_json)
    }
}

impl PromptJsonl {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Jsonl::with_parser(path, PromptRecord::from_json)
    }
}

impl<T> Jsonl<T> {
    fn with_parser(path: impl AsRef<Path>, parse: fn(&Value) -> std::result::Result<T, String>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let reader = File::open(&path).map(BufReader::new).map_err(|e| DataError::io(&path, e))?;
        Ok(Self::new(path, Box::new(reader), parse))
    }

    fn new(
        path: PathBuf,
        reader: Box<dyn BufRead + Send>,
        parse: fn(&Value) -> std::result::Result<T, String>,
    ) -> Self {
        Self { path, reader, line_no: 0, line: String::new(), parse }
    }
}

impl<T> Iterator for Jsonl<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line_no += 1;
            match crate::line::read_line(&mut self.reader, &mut self.line, &self.path, self.line_no) {
                Ok(0) => return None,
                Ok(_) if self.line.trim().is_empty() => continue,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            let bad =
                |reason: String| DataError::MalformedJsonl { path: self.path.clone(), line: self.line_no, reason };
            let parsed = serde_json::from_str::<Value>(&self.line).map_err(|e| bad(e.to_string()));
            return Some(parsed.and_then(|v| (self.parse)(&v).map_err(bad)));
        }
    }
}
