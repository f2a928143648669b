//! The HTTP face: axum routes for the OpenAI endpoints, over the [`Engine`].
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions`: whole or streamed (server-sent events
//!   in OpenAI's chunk shapes, ending with `data: [DONE]`).
//! - `GET /v1/models`, `GET /health`.
//! - Every error is OpenAI's `{"error": {...}}` with its status (see [`ServeError::status`]);
//!   `--api-key` guards the `/v1` routes.
//!
//! A streamed reply reads its engine channel as the client reads the response: when the client
//! goes away, hyper drops the response stream, the channel closes, and the engine frees the row.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use qwen_model::SamplingConfig;
use qwen_tokenizer::{AllowedSpecial, Tokenizer};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::*;
use crate::engine::{Engine, Event, GenRequest};
use crate::error::{Result, ServeError};
use crate::prompt::ChatFormat;

/// What the HTTP layer needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id `/v1/models` lists and replies carry.
    pub model_name: String,
    /// The model's context: prompt + completion tokens at most.
    pub context: usize,
    /// `max_tokens` a request may ask for at most.
    pub max_tokens_limit: usize,
    /// When set, `/v1` requests need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Sampling for the fields a request leaves out (OpenAI's: temperature 1, top-p 1).
    pub sampling: SamplingConfig,
    /// Request bodies larger than this are refused with 413.
    pub body_limit: usize,
    pub chat_format: ChatFormat,
}

impl ServerConfig {
    /// Defaults for a model with `context` positions.
    pub fn new(model_name: impl Into<String>, context: usize) -> Self {
        Self {
            model_name: model_name.into(),
            context,
            max_tokens_limit: context,
            api_key: None,
            sampling: SamplingConfig { temperature: 1.0, ..SamplingConfig::default() },
            body_limit: 2 << 20,
            chat_format: ChatFormat::default(),
        }
    }
}

/// Shared by every handler.
struct AppState {
    engine: Engine,
    tokenizer: Tokenizer,
    config: ServerConfig,
    created: u64,
    next_id: AtomicU64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The routes, on an engine and the tokenizer its model was trained with.
pub fn router(engine: Engine, tokenizer: Tokenizer, config: ServerConfig) -> Router {
    let limit = config.body_limit;
    let state = Arc::new(AppState { engine, tokenizer, config, created: now(), next_id: AtomicU64::new(0) });
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .fallback(|uri: Uri| async move { ServeError::NotFound(format!("no route for {}", uri.path())) })
        .method_not_allowed_fallback(|| async { ServeError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets the
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Binds `addr` (port 0 picks a free one) and returns the bound address with the listener.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ServeError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let load = state.engine.load();
    Json(serde_json::json!({"status": "ok", "running": load.running(), "waiting": load.waiting()})).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![Model {
            id: state.config.model_name.clone(),
            object: "model".into(),
            created: state.created,
            owned_by: "qwen-rs".into(),
        }],
    })
}

/// The body as `T`: a 413 past the limit, a 400 with serde's reason for bad JSON or types.
fn parse<T: DeserializeOwned>(body: std::result::Result<Bytes, BytesRejection>) -> Result<T> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ServeError::PayloadTooLarge(format!("the request body is larger than the limit: {}", e.body_text()))
        } else {
            ServeError::BadRequest { message: e.body_text(), param: None }
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ServeError::BadRequest { message: format!("invalid request body: {e}"), param: None })
}

/// Streaming settings of a request.
struct Streaming {
    on: bool,
    usage: bool,
}

impl AppState {
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{:x}{:06x}", self.created, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// The request the engine runs for `prompt` under `options`, checked against the limits.
    fn request(&self, prompt: Vec<u32>, options: &GenerationOptions, max_tokens: Option<u64>) -> Result<GenRequest> {
        let c = &self.config;
        if options.n.is_some_and(|n| n != 1) {
            return Err(ServeError::bad("n", "only n = 1 is supported"));
        }
        if prompt.is_empty() {
            return Err(ServeError::bad("prompt", "the prompt is empty"));
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= self.tokenizer.vocab_size()) {
            let vocab = self.tokenizer.vocab_size();
            return Err(ServeError::bad("prompt", format!("token id {id} is not below the vocabulary size {vocab}")));
        }
        let room = c.context.saturating_sub(prompt.len());
        let max_tokens = match max_tokens {
            Some(0) => return Err(ServeError::bad("max_tokens", "max_tokens must be at least 1")),
            Some(n) if n > c.max_tokens_limit as u64 => {
                return Err(ServeError::bad(
                    "max_tokens",
                    format!("max_tokens is {n}; this server allows at most {}", c.max_tokens_limit),
                ))
            }
            Some(n) => n as usize,
            None => room.min(c.max_tokens_limit),
        };
        if room == 0 || max_tokens > room {
            return Err(ServeError::TooLong {
                prompt: prompt.len(),
                completion: max_tokens.max(1),
                context: c.context,
            });
        }
        let mut sampling = c.sampling.clone();
        if let Some(t) = options.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ServeError::bad("temperature", format!("temperature {t} is not in [0, 2]")));
            }
            sampling.temperature = t;
        }
        if let Some(p) = options.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ServeError::bad("top_p", format!("top_p {p} is not in (0, 1]")));
            }
            sampling.top_p = p;
        }
        sampling.seed = options.seed.map_or_else(rand::random, |s| s as u64);
        let stop = options.stop.clone().map(Stop::into_vec).unwrap_or_default();
        if stop.len() > 16 || stop.iter().any(String::is_empty) {
            return Err(ServeError::bad("stop", "stop takes up to 16 non-empty strings"));
        }
        Ok(GenRequest { prompt, max_tokens, sampling, stop })
    }

    fn streaming(options: &GenerationOptions) -> Streaming {
        Streaming {
            on: options.stream.unwrap_or(false),
            usage: options.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
        }
    }
}

/// A whole reply, gathered from the engine's events.
struct Gathered {
    text: String,
    finish: FinishReason,
    usage: Usage,
}

async fn gather(mut events: UnboundedReceiver<Event>) -> Result<Gathered> {
    let mut text = String::new();
    while let Some(e) = events.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                return Ok(Gathered { text, finish, usage: Usage::new(prompt_tokens, completion_tokens) })
            }
            Event::Failed(reason) => return Err(ServeError::Unavailable(reason)),
        }
    }
    Err(ServeError::Unavailable("the engine stopped before the reply was done".into()))
}

/// What a streamed endpoint sends for each engine event.
trait Chunks: Send + 'static {
    /// The first event, before any text.
    fn start(&self) -> Option<serde_json::Value>;
    fn text(&self, text: String) -> serde_json::Value;
    fn finish(&self, finish: FinishReason) -> serde_json::Value;
    fn usage(&self, usage: Usage) -> serde_json::Value;
}

/// Server-sent events for a streamed reply: the endpoint's chunks, an error object if the
/// engine fails, then `[DONE]`.
fn sse<C: Chunks>(chunks: C, events: UnboundedReceiver<Event>, usage: bool) -> Response {
    struct S<C> {
        chunks: C,
        events: Option<UnboundedReceiver<Event>>,
        pending: VecDeque<SseEvent>,
        usage: bool,
    }
    let json = |v: serde_json::Value| SseEvent::default().data(v.to_string());
    let mut pending = VecDeque::new();
    pending.extend(chunks.start().map(json));
    let state = S { chunks, events: Some(events), pending, usage };
    let stream = futures_util::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(e) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), s));
            }
            let rx = s.events.as_mut()?;
            match rx.recv().await {
                Some(Event::Text(t)) => s.pending.push_back(json(s.chunks.text(t))),
                Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                    s.pending.push_back(json(s.chunks.finish(finish)));
                    if s.usage {
                        s.pending.push_back(json(s.chunks.usage(Usage::new(prompt_tokens, completion_tokens))));
                    }
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.events = None;
                }
                Some(Event::Failed(reason)) => {
                    s.pending.push_back(json(serde_json::to_value(ServeError::Unavailable(reason).body()).ok()?));
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.events = None;
                }
                None => {
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.events = None;
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// The fields every chunk of one reply shares.
struct Head {
    id: String,
    created: u64,
    model: String,
    usage: bool,
}

impl Head {
    /// `usage: null` on every chunk when usage is asked for, absent otherwise.
    fn usage(&self) -> Option<Option<Usage>> {
        self.usage.then_some(None)
    }
}

struct ChatChunks(Head);

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Option<Usage>>) -> serde_json::Value {
        let h = &self.0;
        let c = ChatCompletionChunk {
            id: h.id.clone(),
            object: "chat.completion.chunk".into(),
            created: h.created,
            model: h.model.clone(),
            choices,
            usage,
        };
        serde_json::to_value(c).unwrap_or_default()
    }
    fn delta(&self, delta: Delta, finish_reason: Option<FinishReason>) -> serde_json::Value {
        self.chunk(vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason }], self.0.usage())
    }
}

impl Chunks for ChatChunks {
    fn start(&self) -> Option<serde_json::Value> {
        Some(self.delta(Delta { role: Some("assistant".into()), content: Some(String::new()) }, None))
    }
    fn text(&self, text: String) -> serde_json::Value {
        self.delta(Delta { role: None, content: Some(text) }, None)
    }
    fn finish(&self, finish: FinishReason) -> serde_json::Value {
        self.delta(Delta::default(), Some(finish))
    }
    fn usage(&self, usage: Usage) -> serde_json::Value {
        self.chunk(vec![], Some(Some(usage)))
    }
}

struct CompletionChunks(Head);

impl CompletionChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Option<Usage>>) -> serde_json::Value {
        let h = &self.0;
        let c = Completion {
            id: h.id.clone(),
            object: "text_completion".into(),
            created: h.created,
            model: h.model.clone(),
            choices,
            usage,
        };
        serde_json::to_value(c).unwrap_or_default()
    }
    fn choice(text: String, finish_reason: Option<FinishReason>) -> Vec<CompletionChoice> {
        vec![CompletionChoice { index: 0, text, logprobs: None, finish_reason }]
    }
}

impl Chunks for CompletionChunks {
    fn start(&self) -> Option<serde_json::Value> {
        None
    }
    fn text(&self, text: String) -> serde_json::Value {
        self.chunk(Self::choice(text, None), self.0.usage())
    }
    fn finish(&self, finish: FinishReason) -> serde_json::Value {
        self.chunk(Self::choice(String::new(), Some(finish)), self.0.usage())
    }
    fn usage(&self, usage: Usage) -> serde_json::Value {
        self.chunk(vec![], Some(Some(usage)))
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let req: ChatCompletionRequest = parse(body)?;
    let prompt = state.config.chat_format.prompt(
        &state.tokenizer,
        &req.messages,
        req.chat_template_kwargs.as_ref().unwrap_or(&serde_json::Map::new()),
    )?;
    let max_tokens = req.max_completion_tokens.or(req.options.max_tokens);
    let gen = state.request(prompt, &req.options, max_tokens)?;
    let streaming = AppState::streaming(&req.options);
    let events = state.engine.submit(gen)?;
    let head = Head {
        id: state.id("chatcmpl"),
        created: now(),
        model: state.config.model_name.clone(),
        usage: streaming.usage,
    };
    if streaming.on {
        return Ok(sse(ChatChunks(head), events, streaming.usage));
    }
    let g = gather(events).await?;
    Ok(Json(ChatCompletion {
        id: head.id,
        object: "chat.completion".into(),
        created: head.created,
        model: head.model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage { role: "assistant".into(), content: g.text },
            logprobs: None,
            finish_reason: g.finish,
        }],
        usage: g.usage,
    })
    .into_response())
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let req: CompletionRequest = parse(body)?;
    let one = |n: usize| {
        if n == 1 {
            Ok(())
        } else {
            Err(ServeError::bad("prompt", format!("one prompt per request is served; got {n}")))
        }
    };
    // A raw prompt may spell special tokens (a hand-made ChatML prompt): they are encoded as such.
    let encode = |text: &str| state.tokenizer.encode(text, &AllowedSpecial::All);
    let prompt = match req.prompt {
        Prompt::Text(t) => encode(&t)?,
        Prompt::Ids(ids) => ids,
        Prompt::Texts(t) => {
            one(t.len())?;
            encode(&t[0])?
        }
        Prompt::IdLists(mut l) => {
            one(l.len())?;
            l.remove(0)
        }
    };
    let gen = state.request(prompt, &req.options, req.options.max_tokens)?;
    let streaming = AppState::streaming(&req.options);
    let events = state.engine.submit(gen)?;
    let head =
        Head { id: state.id("cmpl"), created: now(), model: state.config.model_name.clone(), usage: streaming.usage };
    if streaming.on {
        return Ok(sse(CompletionChunks(head), events, streaming.usage));
    }
    let g = gather(events).await?;
    let chunks = CompletionChunks(Head { usage: false, ..head });
    Ok(Json(chunks.chunk(CompletionChunks::choice(g.text, Some(g.finish)), Some(Some(g.usage)))).into_response())
}
