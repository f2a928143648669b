//! HF chat templates: the Jinja `chat_template` of a model folder, rendered as transformers'
//! `apply_chat_template` renders it, and the rendered prompt tokenized so that special-token
//! strings typed inside a message stay plain text.
//!
//! The environment mirrors transformers' (`utils/chat_template_utils.py`): `trim_blocks` and
//! `lstrip_blocks`, loop controls, `raise_exception(msg)`, `strftime_now(fmt)`, a `tojson` filter
//! that writes what Python's `json.dumps(x, ensure_ascii=False)` writes (`", "` and `": "`
//! separators, `indent`, `sort_keys`), Python string and dict methods (`.startswith`, `.split`,
//! `.strip('\n')`, `.get`, ... via minijinja-contrib's pycompat), and insertion-ordered maps.
//! Rendering runs on fuel ([`DEFAULT_FUEL`] instructions, [`ChatTemplate::with_fuel`]): a template
//! that loops without end (a hostile `tokenizer_config.json`) is an error, not a hung server. Its
//! output is bounded too ([`DEFAULT_MAX_OUTPUT`] bytes, [`ChatTemplate::with_max_output`]): a short
//! loop over a long string can write megabytes within its fuel, which the tokenizer would then spend
//! seconds on.
//! Template variables: `messages`, `tools`, `add_generation_prompt`, `bos_token`, `eos_token`,
//! `enable_thinking` when set (Qwen3: `false` renders an empty `<think>\n\n</think>\n\n` block
//! after the generation prompt) and any extra keyword arguments (OpenAI's `chat_template_kwargs`).
//!
//! ```
//! use qwen_tokenizer::template::{ChatTemplate, RenderOptions};
//! let t = ChatTemplate::new(
//!     "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
//!      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
//! )?;
//! let messages = [serde_json::json!({"role": "user", "content": "Hi"})];
//! let text = t.render(&messages, &RenderOptions::generation())?;
//! assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
//! # Ok::<(), qwen_tokenizer::TokenizerError>(())
//! ```

use std::ops::Range;
use std::path::Path;

use minijinja::value::{Kwargs, Value as JinjaValue, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::{Map, Value};

use crate::error::{Result, TokenizerError};
use crate::special::AllowedSpecial;
use crate::tokenizer::Tokenizer;

/// How to render: the arguments of `apply_chat_template`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderOptions {
    /// End with the assistant header, ready for the model to answer.
    pub add_generation_prompt: bool,
    /// Qwen3's switch; `None` leaves the variable undefined (the template's default: thinking).
    pub enable_thinking: Option<bool>,
    /// OpenAI-style tool definitions (`[{"type": "function", "function": {...}}]`).
    pub tools: Option<Vec<Value>>,
    /// Further template variables (`chat_template_kwargs`); they override the ones above.
    pub extra: Map<String, Value>,
}

impl RenderOptions {
    /// `add_generation_prompt=True`, nothing else.
    pub fn generation() -> Self {
        Self { add_generation_prompt: true, ..Self::default() }
    }

    /// Sets `enable_thinking`.
    pub fn with_thinking(mut self, enable: bool) -> Self {
        self.enable_thinking = Some(enable);
        self
    }
}

/// A rendered and tokenized prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    max_output: usize,
}

const NAME: &str = "chat_template";

/// The template instructions one render may run: ample for any published template on a
/// conversation of thousands of messages (Qwen3's costs a few hundred per message), and small
/// enough that a runaway template fails within about a second.
pub const DEFAULT_FUEL: u64 = 20_000_000;

/// The most bytes one render may write: far above any context window a Qwen model has (1M
/// tokens is ~4 MB of text) plus the messages themselves, so only a runaway template reaches it.
pub const DEFAULT_MAX_OUTPUT: usize = 64 << 20;

/// A `Write` that refuses to grow past `limit` bytes (minijinja stops the render on its error).
struct BoundedOutput {
    buf: Vec<u8>,
    limit: usize,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other(format!("the rendered prompt exceeds {} bytes", self.limit)));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compiles a template.
    ///
    /// # Errors
    /// [`TokenizerError::Template`] when the source is not valid Jinja.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(DEFAULT_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |message: String| -> std::result::Result<JinjaValue, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| chrono::Local::now().format(&format).to_string());
        env.add_template_owned(NAME, source.clone()).map_err(template_error)?;
        Ok(Self { env, source, bos_token: None, eos_token: None, max_output: DEFAULT_MAX_OUTPUT })
    }

    /// Sets the `bos_token` / `eos_token` variables (transformers passes the tokenizer's).
    pub fn with_special_tokens(mut self, bos: Option<String>, eos: Option<String>) -> Self {
        self.bos_token = bos;
        self.eos_token = eos;
        self
    }

    /// Sets the instructions one render may run (see [`DEFAULT_FUEL`]).
    pub fn with_fuel(mut self, fuel: u64) -> Self {
        self.env.set_fuel(Some(fuel));
        self
    }

    /// Sets the most bytes one render may write (see [`DEFAULT_MAX_OUTPUT`]).
    pub fn with_max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The template of a model folder, as transformers finds it: `chat_template.jinja` (what
    /// transformers 5 writes), else `tokenizer_config.json`'s `chat_template` (a string, or a list
    /// of named templates of which `default` is taken). `bos_token`/`eos_token` come from
    /// `tokenizer_config.json`. `Ok(None)` when the folder has no template.
    ///
    /// # Errors
    /// [`TokenizerError::Io`] for an unreadable file, [`TokenizerError::Template`] for malformed
    /// JSON, a `chat_template` of the wrong type, or a template that does not compile.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() { Some(read_json(&config_path)?) } else { None };
        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.is_file() {
            Some(read_text(&jinja_path)?)
        } else {
            match &config {
                Some(c) => template_in_config(c)?,
                None => None,
            }
        };
        let Some(source) = source else { return Ok(None) };
        let token = |key: &str| config.as_ref().and_then(|c| token_text(c.get(key)?));
        Ok(Some(Self::new(source)?.with_special_tokens(token("bos_token"), token("eos_token"))))
    }

    /// Renders `messages` (JSON objects with at least `role` and `content`).
    ///
    /// # Errors
    /// [`TokenizerError::Template`] when rendering fails (a `raise_exception` of the template, a
    /// method on a value that lacks it, ...).
    pub fn render(&self, messages: &[Value], options: &RenderOptions) -> Result<String> {
        let mut ctx = Map::new();
        ctx.insert("messages".into(), Value::Array(messages.to_vec()));
        ctx.insert("tools".into(), options.tools.clone().map_or(Value::Null, Value::Array));
        ctx.insert("add_generation_prompt".into(), Value::Bool(options.add_generation_prompt));
        // transformers passes the tokenizer's special tokens that are set; an unset one is
        // undefined in the template (it renders as nothing), not Python's `None`.
        for (key, token) in [("bos_token", &self.bos_token), ("eos_token", &self.eos_token)] {
            if let Some(t) = token {
                ctx.insert(key.into(), Value::String(t.clone()));
            }
        }
        if let Some(enable) = options.enable_thinking {
            ctx.insert("enable_thinking".into(), Value::Bool(enable));
        }
        ctx.extend(options.extra.clone());
        let template = self.env.get_template(NAME).map_err(template_error)?;
        let mut out = BoundedOutput { buf: Vec::new(), limit: self.max_output };
        template.render_captured_to(JinjaValue::from_serialize(&ctx), &mut out).map_err(template_error)?;
        // minijinja writes whole `str` pieces: the bytes are UTF-8.
        String::from_utf8(out.buf).map_err(|e| TokenizerError::Template(format!("rendered prompt: {e}")))
    }

    /// Renders and tokenizes: the template's own text may produce any special token; the text of
    /// each message (`content`, `reasoning_content`) stays plain text even if it spells
    /// `<|im_end|>`. A message's text is found in the rendered prompt in message order. When the
    /// template rewrote a text that spells a special token, so that it cannot be found as written:
    /// for an assistant message that is the template's own editing of the model's reply (Qwen3
    /// drops the `<think>` block of earlier turns) and what is left is encoded as the template
    /// wrote it; for any other role it is an error rather than a silent control token.
    ///
    /// # Errors
    /// What [`ChatTemplate::render`] and [`Tokenizer::encode`] return, and
    /// [`TokenizerError::Template`] for a rewritten message text that spells a special token.
    pub fn encode(&self, tokenizer: &Tokenizer, messages: &[Value], options: &RenderOptions) -> Result<Prompt> {
        let text = self.render(messages, options)?;
        let normal = tokenizer.normalization().apply(&text);
        let mut literal: Vec<Range<usize>> = Vec::new();
        let mut cursor = 0;
        for (i, message) in messages.iter().enumerate() {
            for key in ["reasoning_content", "content"] {
                let Some(part) = message.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) else {
                    continue;
                };
                let part = tokenizer.normalization().apply(part);
                match normal[cursor..].find(part.as_ref()) {
                    Some(at) => {
                        literal.push(cursor + at..cursor + at + part.len());
                        cursor += at + part.len();
                    }
                    None if is_assistant(message) => {}
                    None if spells_special(tokenizer, &part) => {
                        return Err(TokenizerError::Template(format!(
                            "the {key} of message {i} spells a special token and the template rewrote it, \
                             so it cannot be kept as plain text"
                        )))
                    }
                    None => {}
                }
            }
        }
        let ids = tokenizer.encode_normalized_with_literals(&normal, &AllowedSpecial::All, &literal)?;
        Ok(Prompt { text, ids })
    }
}

/// `{{ x }}` as Jinja2 prints it: Python's `True`, `False` and `None`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &JinjaValue,
) -> std::result::Result<(), JinjaError> {
    let word = match value.kind() {
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        ValueKind::None => "None",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(word).map_err(JinjaError::from)
}

fn is_assistant(message: &Value) -> bool {
    message.get("role").and_then(Value::as_str) == Some("assistant")
}

fn spells_special(tokenizer: &Tokenizer, text: &str) -> bool {
    tokenizer.specials().iter().any(|(name, _)| text.contains(name))
}

fn template_error(e: JinjaError) -> TokenizerError {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    TokenizerError::Template(reason)
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = crate::tiktoken::read(path)?;
    String::from_utf8(bytes).map_err(|e| TokenizerError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| TokenizerError::Template(format!("{} is not JSON: {e}", path.display())))
}

/// `chat_template` of a `tokenizer_config.json`: a string, a list of `{name, template}`, or absent.
fn template_in_config(config: &Value) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => {
            let default = named.iter().find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
            match default.and_then(|t| t.get("template")).and_then(Value::as_str) {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(TokenizerError::Template("chat_template list has no \"default\" template".into())),
            }
        }
        Some(other) => Err(TokenizerError::Template(format!("chat_template is neither a string nor a list: {other}"))),
    }
}

/// A special token as `tokenizer_config.json` writes it: a string or `{"content": ...}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators,
/// sort_keys=sort_keys)`.
fn tojson(value: JinjaValue, kwargs: Kwargs) -> std::result::Result<JinjaValue, JinjaError> {
    let bad = |m: String| JinjaError::new(ErrorKind::InvalidOperation, m);
    let indent: Option<JinjaValue> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<JinjaValue> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut json = serde_json::to_value(&value).map_err(|e| bad(format!("tojson: {e}")))?;
    if sort_keys == Some(true) {
        sort_maps(&mut json);
    }
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => return Err(bad(format!("tojson: indent must be an integer or a string, not {v}"))),
        },
    };
    // Python's defaults: (', ', ': ') without indent, (',', ': ') with one.
    let (item, key) = match separators {
        Some(s) if !s.is_none() => {
            let pair: Vec<String> = s
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string).ok_or_else(|| bad("tojson: separators are strings".into())))
                .collect::<std::result::Result<_, _>>()?;
            match <[String; 2]>::try_from(pair) {
                Ok([a, b]) => (a, b),
                Err(_) => return Err(bad("tojson: separators is a pair".into())),
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let mut out = Vec::new();
    let formatter = PyFormatter {
        item: item.into_bytes(),
        key: key.into_bytes(),
        indent: indent.map(String::into_bytes),
        open: Vec::new(),
    };
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&json, &mut ser).map_err(|e| bad(format!("tojson: {e}")))?;
    let text = String::from_utf8(out).map_err(|e| bad(format!("tojson: {e}")))?;
    Ok(JinjaValue::from_safe_string(text))
}

fn sort_maps(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, mut v) in entries {
                sort_maps(&mut v);
                map.insert(k, v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(sort_maps),
        _ => {}
    }
}

/// serde_json output in Python's `json.dumps` layout.
struct PyFormatter {
    item: Vec<u8>,
    key: Vec<u8>,
    indent: Option<Vec<u8>>,
    /// One entry per open container: whether it has an element yet.
    open: Vec<bool>,
}

impl PyFormatter {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.open.len() {
                w.write_all(indent)?;
            }
        }
        Ok(())
    }

    /// Closes a container; Python writes `[]` / `{}` for empty ones and, when indenting, a
    /// newline before the bracket of a non-empty one.
    fn close<W: ?Sized + std::io::Write>(&mut self, w: &mut W, c: &[u8]) -> std::io::Result<()> {
        if self.open.pop() == Some(true) {
            self.newline(w)?;
        }
        w.write_all(c)
    }

    fn element<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if let Some(has) = self.open.last_mut() {
            *has = true;
        }
        if !first {
            w.write_all(&self.item)?;
        }
        self.newline(w)
    }
}

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open.push(false);
        w.write_all(b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.element(w, first)
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open.push(false);
        w.write_all(b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        self.element(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.key)
    }
}
