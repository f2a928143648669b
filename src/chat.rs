//! A multi-turn chat with a model folder: load, talk, stream, cancel.
//!
//! [`Chat::load`] finds what an HF model folder holds: `config.json` and the safetensors weights,
//! the tokenizer (`tokenizer.json`, or a `.tiktoken` file such as Qwen-1's `qwen.tiktoken`) and,
//! when present, `generation_config.json` (its stop ids, sampling defaults and Qwen-1's
//! `max_window_size`) and the folder's chat template (`chat_template.jinja` or
//! `tokenizer_config.json`'s `chat_template`, see [`qwen_tokenizer::template`]). Each
//! [`Chat::send`] renders the conversation, with the folder's template as transformers'
//! `apply_chat_template(..., add_generation_prompt=True)` does, or with Qwen-1's `make_context`
//! when the folder has none (Qwen-1 itself), keeping as many of the newest turns as fit in the
//! window (the oldest dropped first); streams the reply through a callback that may cancel; and
//! returns its text, ids and why it stopped. Qwen3's thinking switch is [`Chat::with_thinking`].
//!
//! ```no_run
//! use qwen::chat::{Chat, Flow};
//! use qwen::backend::{device, Backend};
//!
//! let mut chat = Chat::<Backend>::load("runs/align/sft", &device())?.with_system("You are terse.");
//! let reply = chat.send("Capitalise: hello", |piece| {
//!     print!("{piece}");
//!     Flow::Continue
//! })?;
//! println!("\n[{} tokens, {:?}]", reply.ids.len(), reply.stop);
//! # Ok::<(), qwen::chat::ChatError>(())
//! ```

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use qwen_model::{GenerateConfig, ModelError, QwenModel, SamplingConfig};
use qwen_tokenizer::template::{ChatTemplate, RenderOptions};
use qwen_tokenizer::{
    ChatMl, Normalization, StreamDecoder, Tokenizer, TokenizerError, DEFAULT_MAX_WINDOW, DEFAULT_SYSTEM,
};

/// What can go wrong loading a model folder or chatting with it.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The folder has neither `tokenizer.json` nor a `.tiktoken` file.
    #[error("no tokenizer in {0} (expected tokenizer.json or a .tiktoken file)")]
    NoTokenizer(PathBuf),
    #[error("cannot read {path}: {reason}")]
    GenerationConfig { path: PathBuf, reason: String },
    /// The newest message alone does not fit in the window.
    #[error("the message needs {len} tokens with the system prompt; the window is {window}")]
    TooLong { len: usize, window: usize },
}

/// `Result` with [`ChatError`].
pub type Result<T, E = ChatError> = std::result::Result<T, E>;

/// What the streaming callback tells the generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop now; the reply so far is kept and returned with [`StopReason::Cancelled`].
    Cancel,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced this stop id (not part of the reply's text or ids).
    Stop(u32),
    /// `max_new_tokens` reached.
    Length,
    /// The callback returned [`Flow::Cancel`].
    Cancelled,
}

/// One assistant reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
    /// The generated ids, without the stop id.
    pub ids: Vec<u32>,
    pub stop: StopReason,
    /// Tokens of the rendered prompt.
    pub prompt_tokens: usize,
}

/// What a folder's `generation_config.json` says (the fields chat uses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// `eos_token_id` (one or a list) and Qwen-1's single-token `stop_words_ids`.
    pub stop_ids: Vec<u32>,
    /// Qwen-1's `max_window_size`.
    pub max_window_size: Option<usize>,
    /// Sampling as the file sets it (`do_sample: false` = greedy).
    pub sampling: Option<SamplingConfig>,
    pub max_new_tokens: Option<usize>,
}

impl GenerationDefaults {
    /// Reads `generation_config.json`.
    ///
    /// # Errors
    /// [`ChatError::GenerationConfig`] when the file is unreadable, not JSON, or has ids that are
    /// not non-negative integers.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |reason: String| ChatError::GenerationConfig { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let id = |x: &serde_json::Value| {
            x.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| bad(format!("{x} is not a token id")))
        };
        let mut stop_ids = Vec::new();
        match v.get("eos_token_id") {
            Some(serde_json::Value::Array(ids)) => {
                for x in ids {
                    stop_ids.push(id(x)?);
                }
            }
            Some(serde_json::Value::Null) | None => {}
            Some(x) => stop_ids.push(id(x)?),
        }
        // Qwen-1: `stop_words_ids: [[151643]]`; a multi-token stop word is not one id.
        if let Some(words) = v.get("stop_words_ids").and_then(|w| w.as_array()) {
            for w in words {
                if let Some([x]) = w.as_array().map(Vec::as_slice) {
                    stop_ids.push(id(x)?);
                }
            }
        }
        let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let sampling = match v.get("do_sample").and_then(serde_json::Value::as_bool) {
            Some(false) => Some(SamplingConfig::default()),
            Some(true) => Some(SamplingConfig {
                temperature: f("temperature").unwrap_or(1.0) as f32,
                top_p: f("top_p").unwrap_or(1.0) as f32,
                top_k: v.get("top_k").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize,
                repetition_penalty: f("repetition_penalty").unwrap_or(1.0) as f32,
                seed: 0,
            }),
            None => None,
        };
        let size = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).map(|n| n as usize);
        Ok(Self {
            stop_ids,
            max_window_size: size("max_window_size"),
            sampling,
            max_new_tokens: size("max_new_tokens"),
        })
    }
}

/// The tokenizer file of a model folder: `tokenizer.json`, else the first `.tiktoken` file.
pub fn find_tokenizer(dir: &Path) -> Result<PathBuf> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return Ok(json);
    }
    let mut tiktoken: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::Io { path: dir.to_path_buf(), source: e })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "tiktoken"))
        .collect();
    tiktoken.sort();
    tiktoken.into_iter().next().ok_or_else(|| ChatError::NoTokenizer(dir.to_path_buf()))
}

/// A conversation with a model.
pub struct Chat<B: Backend> {
    model: QwenModel<B>,
    tokenizer: Tokenizer,
    /// The folder's chat template; `None`: Qwen-1 ChatML.
    template: Option<ChatTemplate>,
    /// `None` until set: then ChatML uses [`DEFAULT_SYSTEM`] and a template its own default.
    system: Option<String>,
    enable_thinking: Option<bool>,
    /// Finished turns, oldest first: (user, assistant).
    history: Vec<(String, String)>,
    max_window: usize,
    stop_ids: Vec<u32>,
    sampling: SamplingConfig,
    max_new_tokens: usize,
}

impl<B: Backend> Chat<B> {
    /// A chat with a loaded model and tokenizer, rendered as Qwen-1 ChatML (its stop ids, the
    /// default system prompt, greedy, up to 512 new tokens, Qwen-1's 6144-token window).
    ///
    /// # Errors
    /// [`ChatError::Tokenizer`] when the vocabulary has no ChatML tokens.
    pub fn new(model: QwenModel<B>, tokenizer: Tokenizer) -> Result<Self> {
        let stop_ids = ChatMl::new(&tokenizer)?.stop_ids();
        Ok(Self {
            model,
            tokenizer,
            template: None,
            system: None,
            enable_thinking: None,
            history: Vec::new(),
            max_window: DEFAULT_MAX_WINDOW,
            stop_ids,
            sampling: SamplingConfig::default(),
            max_new_tokens: 512,
        })
    }

    /// Loads a model folder (see the module docs).
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::load_as(dir, device, qwen_model::WeightDtype::F32)
    }

    /// [`Chat::load`] with the projection and head weights kept as `dtype`
    /// ([`qwen_model::packed`], CPU inference).
    pub fn load_as(dir: impl AsRef<Path>, device: &B::Device, dtype: qwen_model::WeightDtype) -> Result<Self> {
        let dir = dir.as_ref();
        let tokenizer = Tokenizer::from_file(find_tokenizer(dir)?)?.with_normalization(Normalization::Nfc);
        let model = qwen_model::load_as::<B>(dir, device, dtype)?;
        let mut chat = Self::new(model, tokenizer)?;
        chat.template = ChatTemplate::from_model_dir(dir)?;
        let gen = dir.join("generation_config.json");
        if gen.is_file() {
            let d = GenerationDefaults::from_file(&gen)?;
            for id in d.stop_ids {
                if !chat.stop_ids.contains(&id) {
                    chat.stop_ids.push(id);
                }
            }
            chat.max_window = d.max_window_size.unwrap_or(chat.max_window);
            chat.sampling = d.sampling.unwrap_or(chat.sampling);
            chat.max_new_tokens = d.max_new_tokens.unwrap_or(chat.max_new_tokens);
        }
        Ok(chat)
    }

    /// The model with the LoRA adapter in `dir` (PEFT's layout) merged into its weights.
    ///
    /// # Errors
    /// The model crate's errors for a missing, malformed or mismatched adapter.
    pub fn with_adapter(mut self, dir: impl AsRef<Path>) -> Result<Self> {
        self.model = self.model.load_adapter(dir)?.merged();
        Ok(self)
    }

    pub fn with_system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// Renders with this chat template instead of the folder's (or ChatML).
    pub fn with_template(mut self, template: ChatTemplate) -> Self {
        self.template = Some(template);
        self
    }

    /// Qwen3's `enable_thinking`: `false` starts every reply with an empty `<think>` block, so the
    /// model answers at once; `true` (the template's default) lets it reason first. Only templates
    /// that read the variable change.
    pub fn with_thinking(mut self, enable: bool) -> Self {
        self.enable_thinking = Some(enable);
        self
    }

    /// The chat template in use, if any (else Qwen-1 ChatML).
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    pub fn with_sampling(mut self, sampling: SamplingConfig) -> Self {
        self.sampling = sampling;
        self
    }

    pub fn with_max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    pub fn with_max_window(mut self, n: usize) -> Self {
        self.max_window = n;
        self
    }

    /// Replaces the system prompt (the history stays).
    pub fn set_system(&mut self, system: impl Into<String>) {
        self.system = Some(system.into());
    }

    /// The system prompt set, if any (ChatML renders [`DEFAULT_SYSTEM`] without one; a template
    /// its own default, or none).
    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// Forgets every turn.
    pub fn reset(&mut self) {
        self.history.clear();
    }

    /// Finished turns, oldest first: (user, assistant).
    pub fn history(&self) -> &[(String, String)] {
        &self.history
    }

    /// Ids that end a reply.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn model(&self) -> &QwenModel<B> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The prompt ids [`Chat::send`] would run for `user` now.
    pub fn prompt(&self, user: &str) -> Result<Vec<u32>> {
        let ids = match &self.template {
            None => {
                let chat = ChatMl::new(&self.tokenizer)?;
                let system = self.system.as_deref().unwrap_or(DEFAULT_SYSTEM);
                chat.make_context(system, &self.history, user, self.max_window)?.ids
            }
            Some(template) => self.templated_prompt(template, user)?,
        };
        if ids.len() >= self.max_window {
            return Err(ChatError::TooLong { len: ids.len(), window: self.max_window });
        }
        Ok(ids)
    }

    /// The newest turns that fit in the window, rendered by the template (as `make_context` keeps
    /// them for ChatML: the oldest turn goes first).
    fn templated_prompt(&self, template: &ChatTemplate, user: &str) -> Result<Vec<u32>> {
        let message = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
        let mut options = RenderOptions::generation();
        options.enable_thinking = self.enable_thinking;
        let mut first_turn = 0;
        loop {
            let mut messages = Vec::with_capacity(2 * (self.history.len() - first_turn) + 2);
            if let Some(system) = &self.system {
                messages.push(message("system", system));
            }
            for (q, a) in &self.history[first_turn..] {
                messages.push(message("user", q));
                messages.push(message("assistant", a));
            }
            messages.push(message("user", user));
            let ids = template.encode(&self.tokenizer, &messages, &options)?.ids;
            if ids.len() < self.max_window || first_turn == self.history.len() {
                return Ok(ids);
            }
            first_turn += 1;
        }
    }

    /// Sends a user message and streams the reply: `on_text` gets each piece of text as soon as
    /// it is whole characters, and may cancel. The turn joins the history (a cancelled reply too,
    /// as far as it got).
    pub fn send(&mut self, user: &str, mut on_text: impl FnMut(&str) -> Flow) -> Result<Reply> {
        let prompt = self.prompt(user)?;
        let config = GenerateConfig {
            max_new_tokens: self.max_new_tokens,
            stop_ids: self.stop_ids.clone(),
            sampling: self.sampling.clone(),
        };
        let mut stream = StreamDecoder::new(&self.tokenizer);
        let mut cancelled = false;
        let mut failure = None;
        let mut ids = self.model.generate(&prompt, &config, |t| {
            if config.stop_ids.contains(&t) {
                return true;
            }
            match stream.push(t) {
                Ok(piece) if piece.is_empty() => true,
                Ok(piece) => {
                    cancelled = on_text(&piece) == Flow::Cancel;
                    !cancelled
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        let rest = stream.finish();
        if !rest.is_empty() && !cancelled {
            on_text(&rest);
        }
        let stop = match ids.last() {
            Some(&t) if config.stop_ids.contains(&t) => {
                ids.pop();
                StopReason::Stop(t)
            }
            _ if cancelled => StopReason::Cancelled,
            _ => StopReason::Length,
        };
        let text = self.tokenizer.decode_lossy(&ids)?;
        self.history.push((user.to_string(), text.clone()));
        Ok(Reply { text, ids, stop, prompt_tokens: prompt.len() })
    }
}
