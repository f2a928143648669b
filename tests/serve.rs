//! The OpenAI-compatible server over real HTTP on loopback (hyper's client against axum on 127.0.0.1:0),
//! on a small random Qwen2 with the real Qwen2 `tokenizer.json`: every endpoint whole and
//! streamed, the error table, a client that disconnects (mid-stream, or before a whole reply) freeing its row, and
//! concurrent requests (greedy and seeded) getting exactly what each gets alone. Then the `serve`
//! example on a model folder: it prints its address, answers as the library does with the weights
//! `--dtype` chose (f32, Q8_0), and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use qwen_model::{GenerateConfig, QwenConfigBuilder, QwenModel, SamplingConfig, SaveDtype, WeightDtype};
use qwen_serve::api::ChatMessage;
use qwen_serve::{ChatFormat, Engine, EngineConfig, ServerConfig};
use qwen_tokenizer::template::{ChatTemplate, RenderOptions};
use qwen_tokenizer::{ChatMl, Tokenizer};
use serde_json::{json, Value};

mod common;

type B = Flex;

/// Positions of the test model.
const CONTEXT: usize = 4096;

fn model() -> (QwenModel<B>, Tokenizer) {
    let tok = common::qwen2_json();
    // The model's vocabulary is the tokenizer's, so every id it samples decodes.
    let config = QwenConfigBuilder::new(tok.vocab_size(), 32, 64, 1, 2).max_positions(CONTEXT).build().unwrap();
    (QwenModel::<B>::random(config, 0.2, &Default::default()), tok)
}

/// A server on a free loopback port.
struct Server {
    addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<qwen_serve::Result<()>>>,
}

struct Options {
    max_batch: usize,
    max_queue: usize,
    stop_ids: bool,
    api_key: Option<String>,
    body_limit: usize,
    chat_format: ChatFormat,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_queue: 16,
            stop_ids: true,
            api_key: None,
            body_limit: 2 << 20,
            chat_format: ChatFormat::ChatMl,
        }
    }
}

/// One HTTP/1.1 exchange on its own connection (hyper's client). Dropping it closes the
/// connection: what a client that goes away does.
struct Exchange {
    response: hyper::Response<hyper::body::Incoming>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Exchange {
    fn status(&self) -> u16 {
        self.response.status().as_u16()
    }

    /// The next piece of the body (`None` at its end).
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            let frame = self.response.body_mut().frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                return Some(data.to_vec());
            }
        }
    }

    async fn text(mut self) -> String {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await {
            out.extend(c);
        }
        String::from_utf8(out).unwrap()
    }

    async fn json(self) -> (u16, Value) {
        let status = self.status();
        let text = self.text().await;
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }
}

impl Server {
    async fn start(model: &QwenModel<B>, tok: &Tokenizer, o: Options) -> Self {
        let stop_ids = if o.stop_ids { ChatMl::new(tok).unwrap().stop_ids() } else { vec![] };
        let engine = Engine::start(
            model.clone(),
            tok.clone(),
            EngineConfig { max_batch: o.max_batch, max_queue: o.max_queue, stop_ids },
        );
        let config = ServerConfig {
            api_key: o.api_key,
            body_limit: o.body_limit,
            max_tokens_limit: 3000,
            chat_format: o.chat_format,
            ..ServerConfig::new("tiny", CONTEXT)
        };
        let app = qwen_serve::router(engine, tok.clone(), config);
        let (listener, addr) = qwen_serve::server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(qwen_serve::serve(listener, app, async {
            let _ = rx.await;
        }));
        Self { addr, shutdown: Some(tx), task: Some(task) }
    }

    /// Sends `method path` with an optional bearer key and body.
    async fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<String>) -> Exchange {
        call(self.addr, method, path, key, body).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, None, Some(body.to_string())).await.json().await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None, None).await.json().await
    }

    /// A streamed request's events (the JSON ones; `[DONE]` checked to be last).
    async fn stream(&self, path: &str, body: &Value) -> Vec<Value> {
        let r = self.call("POST", path, None, Some(body.to_string())).await;
        assert_eq!(r.status(), 200);
        assert!(r.response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        let raw = r.text().await;
        let data: Vec<&str> = raw.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{raw}");
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect()
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> Exchange {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    let connection = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = hyper::Request::builder().method(method).uri(path).header("host", addr.to_string());
    if let Some(k) = key {
        request = request.header("authorization", format!("Bearer {k}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let response = sender.send_request(request).await.unwrap();
    Exchange { response, connection }
}

/// The text of a streamed chat reply, its finish reason and (if asked) its usage.
fn chat_stream_text(events: &[Value]) -> (String, String, Option<Value>) {
    let mut text = String::new();
    let mut finish = String::new();
    let mut usage = None;
    for e in events {
        assert_eq!(e["object"], "chat.completion.chunk");
        if let Some(c) = e["choices"].get(0) {
            text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                finish = f.to_string();
            }
        } else {
            usage = Some(e["usage"].clone());
        }
    }
    (text, finish, usage)
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// What the model itself says greedily to `messages` rendered as the server renders them.
fn greedy_reply(model: &QwenModel<B>, tok: &Tokenizer, messages: &Value, max: usize) -> (String, usize, usize) {
    let msgs: Vec<ChatMessage> = serde_json::from_value(messages.clone()).unwrap();
    let prompt = ChatFormat::ChatMl.prompt(tok, &msgs, &serde_json::Map::new()).unwrap();
    greedy_from(model, tok, &prompt, max)
}

/// The model's greedy reply to `prompt` ids: text, prompt length, tokens generated.
fn greedy_from(model: &QwenModel<B>, tok: &Tokenizer, prompt: &[u32], max: usize) -> (String, usize, usize) {
    let stop_ids = ChatMl::new(tok).unwrap().stop_ids();
    let gen = GenerateConfig { max_new_tokens: max, stop_ids: stop_ids.clone(), sampling: SamplingConfig::default() };
    let mut ids = model.generate(prompt, &gen, |_| true).unwrap();
    let generated = ids.len();
    if ids.last().is_some_and(|t| stop_ids.contains(t)) {
        ids.pop();
    }
    (tok.decode_lossy(&ids).unwrap(), prompt.len(), generated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_answers_in_openai_shapes() {
    let (model, tok) = model();
    let s = Server::start(&model, &tok, Options::default()).await;

    let (code, health) = s.get("/health").await;
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    let (code, models) = s.get("/v1/models").await;
    assert_eq!(code, 200);
    assert_eq!((models["object"].as_str(), models["data"][0]["id"].as_str()), (Some("list"), Some("tiny")));

    // Chat, whole: the model's own greedy reply, exact usage. Special-token text stays text.
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello <|im_end|> there"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "again?"}]}
    ]);
    let (want, prompt_len, generated) = greedy_reply(&model, &tok, &messages, 20);
    let body = json!({"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 20});
    let (code, r) = s.post("/v1/chat/completions", &body).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["message"]["content"].as_str().unwrap(), want);
    let finish = if generated < 20 { "stop" } else { "length" };
    assert_eq!(r["choices"][0]["finish_reason"], finish);
    assert_eq!(
        r["usage"],
        json!({"prompt_tokens": prompt_len, "completion_tokens": generated, "total_tokens": prompt_len + generated})
    );

    // Chat, streamed: a role chunk first, pieces that add up to the same text, usage last.
    let events = s
        .stream(
            "/v1/chat/completions",
            &json!({"messages": messages, "temperature": 0, "max_completion_tokens": 20,
            "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(events[..events.len() - 1].iter().all(|e| e["usage"].is_null()));
    let (text, finish_s, usage) = chat_stream_text(&events);
    assert_eq!((text.as_str(), finish_s.as_str()), (want.as_str(), finish));
    assert_eq!(usage.unwrap(), r["usage"]);
    // Without include_usage no chunk has a usage field.
    let events = s
        .stream(
            "/v1/chat/completions",
            &json!({"messages": messages, "temperature": 0, "max_tokens": 20, "stream": true}),
        )
        .await;
    assert!(events.iter().all(|e| e.get("usage").is_none()));
    assert_eq!(chat_stream_text(&events).0, want);

    // max_tokens ends the reply with `length`; the same seed gives the same sampled reply.
    let sampled =
        json!({"messages": user("Tell me a story"), "temperature": 1.5, "top_p": 0.9, "seed": 7, "max_tokens": 8});
    let (_, a) = s.post("/v1/chat/completions", &sampled).await;
    let (_, b) = s.post("/v1/chat/completions", &sampled).await;
    assert_eq!(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() <= 8);

    // Completions: a string prompt, the same prompt as ids, streamed; a stop string cuts the text.
    let prompt = "The quick brown fox";
    let ids = tok.encode_ordinary(prompt).unwrap();
    let gen = GenerateConfig {
        max_new_tokens: 16,
        stop_ids: ChatMl::new(&tok).unwrap().stop_ids(),
        sampling: SamplingConfig::default(),
    };
    let mut direct = model.generate(&ids, &gen, |_| true).unwrap();
    if direct.last().is_some_and(|t| gen.stop_ids.contains(t)) {
        direct.pop();
    }
    let want = tok.decode_lossy(&direct).unwrap();
    let (code, c) = s.post("/v1/completions", &json!({"prompt": prompt, "temperature": 0, "max_tokens": 16})).await;
    assert_eq!(code, 200, "{c}");
    assert_eq!(
        (c["object"].as_str(), c["choices"][0]["text"].as_str()),
        (Some("text_completion"), Some(want.as_str()))
    );
    assert_eq!(c["usage"]["prompt_tokens"], ids.len());
    let (_, by_ids) = s.post("/v1/completions", &json!({"prompt": ids, "temperature": 0, "max_tokens": 16})).await;
    assert_eq!(by_ids["choices"][0]["text"], c["choices"][0]["text"]);
    let events = s
        .stream(
            "/v1/completions",
            &json!({"prompt": [prompt], "temperature": 0, "max_tokens": 16, "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    let streamed: String = events.iter().filter_map(|e| e["choices"].get(0)?["text"].as_str()).collect();
    assert_eq!(streamed, want);
    assert_eq!(events.last().unwrap()["usage"], c["usage"]);
    // A stop string taken from the middle of the greedy text: the reply ends just before it.
    let chars: Vec<char> = want.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..5].iter().collect();
        let cut = &want[..want.find(&stop).unwrap()];
        let (_, c) = s
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "temperature": 0, "max_tokens": 16, "stop": [stop, "\u{1}never"]}),
            )
            .await;
        assert_eq!(
            (c["choices"][0]["text"].as_str(), c["choices"][0]["finish_reason"].as_str()),
            (Some(cut), Some("stop"))
        );
        let events = s
            .stream(
                "/v1/completions",
                &json!({"prompt": prompt, "temperature": 0, "max_tokens": 16, "stop": stop, "stream": true}),
            )
            .await;
        let streamed: String = events.iter().filter_map(|e| e["choices"].get(0)?["text"].as_str()).collect();
        assert_eq!(streamed, cut, "streamed text never shows the start of a stop string");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chat_template_renders_the_prompt_with_the_request_kwargs() {
    let (model, tok) = model();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_template/templates");
    let qwen3 = Arc::new(ChatTemplate::new(std::fs::read_to_string(dir.join("qwen3.jinja")).unwrap()).unwrap());
    let s =
        Server::start(&model, &tok, Options { chat_format: ChatFormat::Template(qwen3.clone()), ..Options::default() })
            .await;
    // Special-token strings typed in a message stay text under a template too.
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <|im_end|> <think>"}
    ]);
    let mut prompts = Vec::new();
    for kwargs in [None, Some(json!({"enable_thinking": false}))] {
        let options = RenderOptions {
            extra: kwargs.as_ref().map(|k| k.as_object().unwrap().clone()).unwrap_or_default(),
            ..RenderOptions::generation()
        };
        let prompt = qwen3.encode(&tok, messages.as_array().unwrap(), &options).unwrap();
        let (want, prompt_len, generated) = greedy_from(&model, &tok, &prompt.ids, 8);
        let mut body = json!({"messages": messages, "temperature": 0, "max_tokens": 8});
        if let Some(k) = kwargs {
            body["chat_template_kwargs"] = k;
        }
        let (code, r) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(code, 200, "{r}");
        assert_eq!(r["choices"][0]["message"]["content"].as_str().unwrap(), want);
        assert_eq!(
            (r["usage"]["prompt_tokens"].as_u64(), r["usage"]["completion_tokens"].as_u64()),
            (Some(prompt_len as u64), Some(generated as u64))
        );
        prompts.push(prompt.text);
    }
    assert!(prompts[0].ends_with("<|im_start|>assistant\n"), "{}", prompts[0]);
    assert_eq!(prompts[1], format!("{}<think>\n\n</think>\n\n", prompts[0]));
    s.stop().await;

    // What a template raises about a conversation is the client's 400, in OpenAI's shape.
    let strict = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('the first message must be a user message') }}{% endif %}\
         {% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
    )
    .unwrap();
    let s = Server::start(
        &model,
        &tok,
        Options { chat_format: ChatFormat::Template(Arc::new(strict)), ..Options::default() },
    )
    .await;
    let (code, r) = s.post("/v1/chat/completions", &json!({"messages": [{"role": "assistant", "content": "x"}]})).await;
    assert_eq!(code, 400, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("the first message must be a user message"), "{r}");
    assert_eq!(r["error"]["param"], "messages");
    let (code, _) = s.post("/v1/chat/completions", &json!({"messages": user("ok"), "max_tokens": 2})).await;
    assert_eq!(code, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_have_openai_shapes_and_statuses() {
    let (model, tok) = model();
    let key = "sk-test".to_string();
    let s = Server::start(
        &model,
        &tok,
        Options {
            max_batch: 1,
            max_queue: 1,
            stop_ids: false,
            api_key: Some(key.clone()),
            body_limit: 64 << 10,
            ..Options::default()
        },
    )
    .await;
    let k = Some(key.as_str());
    let post = |path: &'static str, body: String| s.call("POST", path, k, Some(body));
    let check = |(code, body): (u16, Value), want: u16, says: &str| {
        assert_eq!(code, want, "{body}");
        let e = &body["error"];
        assert!(e["message"].as_str().unwrap().contains(says), "{body}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{body}");
    };
    let chat = |body: Value| post("/v1/chat/completions", body.to_string());
    // 401 without or with a wrong key; /health needs none.
    check(s.post("/v1/chat/completions", &json!({"messages": user("hi")})).await, 401, "API key");
    check(s.call("GET", "/v1/models", Some("nope"), None).await.json().await, 401, "API key");
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.call("GET", "/v1/models", k, None).await.status(), 200);
    // 400: malformed JSON, wrong types, bad values, a prompt past the context (with the lengths).
    check(post("/v1/chat/completions", "{\"messages\": [".into()).await.json().await, 400, "invalid request body");
    check(chat(json!({"messages": "hi"})).await.json().await, 400, "invalid request body");
    check(chat(json!({"messages": user("hi"), "temperature": "hot"})).await.json().await, 400, "invalid");
    check(chat(json!({"messages": []})).await.json().await, 400, "at least one message");
    check(chat(json!({"messages": user("hi"), "temperature": 3})).await.json().await, 400, "temperature");
    check(chat(json!({"messages": user("hi"), "n": 2})).await.json().await, 400, "n = 1");
    check(chat(json!({"messages": user("hi"), "max_tokens": 5000})).await.json().await, 400, "at most 3000");
    let long: Vec<u32> = (0..CONTEXT as u32).map(|i| 100 + i % 1000).collect();
    let completion = |body: Value| post("/v1/completions", body.to_string());
    check(
        completion(json!({"prompt": long, "max_tokens": 10})).await.json().await,
        400,
        "maximum context length is 4096 tokens",
    );
    let (_, body) = completion(json!({"prompt": long[..4000], "max_tokens": 200})).await.json().await;
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("4200") && msg.contains("4000 in the prompt") && msg.contains("200 for the completion"),
        "{msg}"
    );
    check(completion(json!({"prompt": [tok.vocab_size() as u32]})).await.json().await, 400, "vocabulary size");
    // 404 for an unknown route, 405 for a wrong method, 413 past the body limit.
    check(s.call("GET", "/v1/nothing", k, None).await.json().await, 404, "/v1/nothing");
    check(s.call("GET", "/v1/chat/completions", k, None).await.json().await, 405, "method");
    let big = json!({"messages": user(&"x".repeat(100 << 10))});
    check(chat(big).await.json().await, 413, "larger than the limit");

    // 429: one row (busy with a long stream), one queue place (taken): the next is refused.
    let long_req = json!({"prompt": "Once", "max_tokens": 3000, "temperature": 0, "stream": true});
    let mut first = completion(long_req.clone()).await;
    assert_eq!(first.status(), 200);
    first.chunk().await.expect("the first piece: the row is running");
    let second = completion(long_req.clone()).await;
    assert_eq!(second.status(), 200, "queued");
    check(completion(long_req).await.json().await, 429, "busy");
    drop(first);
    drop(second);
    // Nobody left: the bad requests and the refused one did not disturb the server.
    wait_idle(&s).await;
    let (code, r) = chat(json!({"messages": user("hi"), "max_tokens": 3})).await.json().await;
    assert_eq!((code, r["usage"]["completion_tokens"].as_u64()), (200, Some(3)), "{r}");
    s.stop().await;
}

/// Polls `/health` until `done` says so; until then every reading must pass `meanwhile`, and it
/// must come within 10 s.
async fn wait_health(s: &Server, done: impl Fn(&Value) -> bool, meanwhile: impl Fn(&Value) -> bool, what: &str) {
    let t = Instant::now();
    loop {
        let (_, h) = s.get("/health").await;
        if done(&h) {
            return;
        }
        assert!(meanwhile(&h) && t.elapsed() < Duration::from_secs(10), "{what}: {h}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the engine runs nothing and nothing waits.
async fn wait_idle(s: &Server) {
    wait_health(s, |h| h["running"] == 0 && h["waiting"] == 0, |_| true, "rows still held").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_mid_stream_frees_its_row() {
    let (model, tok) = model();
    let s = Server::start(&model, &tok, Options { max_batch: 1, max_queue: 4, stop_ids: false, ..Options::default() })
        .await;
    // 3000 tokens would keep the only row busy far longer than the test waits.
    let body = json!({"messages": user("Talk forever"), "max_tokens": 3000, "temperature": 0, "stream": true});
    let mut r = s.call("POST", "/v1/chat/completions", None, Some(body.to_string())).await;
    for _ in 0..3 {
        r.chunk().await.unwrap();
    }
    assert_eq!(s.get("/health").await.1["running"], 1);
    let gone = Instant::now();
    drop(r);
    wait_idle(&s).await;
    // The next request gets the slot at once.
    let (code, reply) = s.post("/v1/chat/completions", &json!({"messages": user("hi"), "max_tokens": 4})).await;
    assert_eq!(code, 200, "{reply}");
    // Decoding all 3000 tokens takes ~9 s here (dev profile); the row must go long before that.
    assert!(gone.elapsed() < Duration::from_secs(3), "freed after {:?}", gone.elapsed());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_before_a_whole_reply_frees_its_row() {
    use std::io::Write;
    let (model, tok) = model();
    let s = Server::start(&model, &tok, Options { max_batch: 1, max_queue: 4, stop_ids: false, ..Options::default() })
        .await;
    // Not streamed: nothing is sent back until the reply is whole, 3000 tokens from now. The client
    // sends its request on a plain socket and closes it while the row decodes.
    let body = json!({"messages": user("Talk forever"), "max_tokens": 3000, "temperature": 0}).to_string();
    let mut socket = std::net::TcpStream::connect(s.addr).unwrap();
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .unwrap();
    wait_health(&s, |h| h["running"] == 1, |h| h["running"] == 0, "the request never started").await;
    let gone = Instant::now();
    drop(socket); // hyper sees the end of the stream and drops the handler, and with it the channel
    wait_idle(&s).await;
    let (code, reply) = s.post("/v1/chat/completions", &json!({"messages": user("hi"), "max_tokens": 4})).await;
    assert_eq!(code, 200, "{reply}");
    // Decoding all 3000 tokens takes ~9 s here (dev profile); the row must go long before that.
    assert!(gone.elapsed() < Duration::from_secs(3), "freed after {:?}", gone.elapsed());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_does_not_hold_up_the_others() {
    let (model, tok) = model();
    let s = Server::start(&model, &tok, Options { max_batch: 2, max_queue: 4, stop_ids: false, ..Options::default() })
        .await;
    // A stream nobody reads: its text piles up in its own channel (and socket), not in the engine.
    let body = json!({"messages": user("Talk forever"), "max_tokens": 3000, "temperature": 0, "stream": true});
    let slow = s.call("POST", "/v1/chat/completions", None, Some(body.to_string())).await;
    assert_eq!(slow.status(), 200);
    for _ in 0..3 {
        let (code, r) = s.post("/v1/chat/completions", &json!({"messages": user("hi"), "max_tokens": 16})).await;
        assert_eq!((code, r["usage"]["completion_tokens"].as_u64()), (200, Some(16)), "{r}");
    }
    // The last reply is out before the engine has let its row go: wait for that, not longer.
    wait_health(&s, |h| h["running"] == 1, |h| h["running"] == 2, "the unread stream is still decoding").await;
    drop(slow);
    wait_idle(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_get_exactly_what_they_get_alone() {
    let (model, tok) = model();
    let s = Server::start(&model, &tok, Options::default()).await;
    // Eight prompts of different lengths, greedy and seeded-sampled, some streamed.
    let bodies: Vec<Value> = (0..8)
        .map(|i| {
            let text = format!("Request {i}: {}", "tell me more ".repeat(i * 3));
            let mut b =
                json!({"messages": user(&text), "max_tokens": 12 + 2 * i, "temperature": 0, "stream": i % 2 == 1});
            if i >= 6 {
                b["temperature"] = json!(1.2);
                b["seed"] = json!(100 + i);
            }
            b
        })
        .collect();
    async fn reply(s: &Server, body: &Value) -> String {
        if body["stream"] == true {
            chat_stream_text(&s.stream("/v1/chat/completions", body).await).0
        } else {
            let (code, r) = s.post("/v1/chat/completions", body).await;
            assert_eq!(code, 200, "{r}");
            r["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        }
    }
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(reply(&s, b).await);
    }
    let (want, _, _) = greedy_reply(&model, &tok, &bodies[0]["messages"], 12);
    assert_eq!(alone[0], want, "the server's greedy reply is the model's");
    // Every request is in flight at once (all polled together).
    let together = join_all(bodies.iter().map(|b| reply(&s, b)).collect()).await;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i}: batched reply differs from its reply alone");
    }
    s.stop().await;
}

/// Polls all futures together (a small join_all).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// A model folder for the example: random weights saved, the tokenizer and a generation config.
fn model_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-serve-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (model, _) = model();
    model.save(&dir, SaveDtype::F32).unwrap();
    std::fs::copy(common::vocab_file("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [151643, 151645], "do_sample": false}"#)
        .unwrap();
    dir
}

#[test]
fn serve_example_prints_its_address_answers_and_stops_on_sigterm() {
    let dir = model_dir();
    let tok = common::qwen2_json();
    // The weights as loaded by `--dtype` (f32, and Q8_0 blocks through the packed kernels): the
    // server's greedy reply is the library's on the same model. A prompt whose two replies
    // differ (this random model's top logits are close: about 5 prompts in 6 do) makes the reply
    // tell which weights the server loaded.
    const REPLY: usize = 32;
    let [f32_model, q8_model] =
        [WeightDtype::F32, WeightDtype::Q8_0].map(|d| qwen_model::load_as::<B>(&dir, &Default::default(), d).unwrap());
    let (prompt, wants) = (0..32)
        .map(|i| {
            let prompt = user(&format!("hello {i}"));
            let wants = [(WeightDtype::F32, &f32_model), (WeightDtype::Q8_0, &q8_model)]
                .map(|(d, m)| (d, greedy_reply(m, &tok, &prompt, REPLY).0));
            (prompt, wants)
        })
        .find(|(_, [a, b])| a.1 != b.1)
        .expect("some prompt's f32 and q8_0 replies differ");
    for (dtype, want) in wants {
        let mut child = Command::new(common::example("serve"))
            .args(["--model", dir.to_str().unwrap(), "--port", "0", "--max-batch", "2", "--api-key", "k"])
            .args(["--dtype", &dtype.to_string()])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr: std::net::SocketAddr =
            line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{line}")).parse().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir_name = dir.file_name().unwrap().to_string_lossy().into_owned();
        rt.block_on(async {
            let (_, models) = call(addr, "GET", "/v1/models", Some("k"), None).await.json().await;
            assert_eq!(models["data"][0]["id"].as_str(), Some(dir_name.as_str()));
            // generation_config.json says greedy: a request without a temperature is greedy.
            let body = json!({"messages": prompt, "max_tokens": REPLY}).to_string();
            let (code, r) = call(addr, "POST", "/v1/chat/completions", Some("k"), Some(body)).await.json().await;
            assert_eq!(code, 200, "{r}");
            assert_eq!(r["choices"][0]["message"]["content"].as_str(), Some(want.as_str()), "--dtype {dtype}");
        });
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
        let rest: String = stderr.lines().map_while(Result::ok).collect::<Vec<_>>().join("\n");
        assert!(rest.contains("shutting down"), "{rest}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
