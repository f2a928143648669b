//! The continuous-batching engine: one thread that owns the model and runs every request.
//!
//! Each step it (1) drops the rows whose client has gone (their event channel is closed),
//! (2) admits waiting requests while the batch has room, prefilling them together as one
//! left-padded batch in a cache of their own, and joins that cache to the running one
//! ([`KvCache::join`]), (3) decodes one token for every running row and samples it with the
//! row's own sampler (seed, temperature, top-p), and (4) sends each row's new text over its
//! own unbounded channel, so a slow reader never holds up the step, and lets finished rows
//! leave at once ([`KvCache::retain`], then [`KvCache::compact`] so later steps stop reading
//! padding nobody needs).
//!
//! The queue between the HTTP handlers and the engine is bounded: [`Engine::submit`] fails
//! with [`ServeError::QueueFull`] instead of piling up work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use qwen_model::{Batch, KvCache, Logits, QwenModel, Sampler, SamplingConfig};
use qwen_tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::api::FinishReason;
use crate::error::{Result, ServeError};

/// Columns a running cache grows by when it is full (a grow copies the cache once).
const GROW: usize = 64;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Rows decoded together at most.
    pub max_batch: usize,
    /// Requests waiting for a row at most.
    pub max_queue: usize,
    /// Ids that end a reply (not part of its text).
    pub stop_ids: Vec<u32>,
}

/// One generation.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    /// New tokens at most (the stop id, when one ends the reply, counts as one).
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Strings that end the reply (the text stops before the first one).
    pub stop: Vec<String>,
}

/// What a request hears from the engine, in order: text pieces, then one `Done` (or `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Done { finish: FinishReason, prompt_tokens: usize, completion_tokens: usize },
    Failed(String),
}

/// Rows running and requests waiting now.
#[derive(Debug, Default)]
pub struct Load {
    running: AtomicUsize,
    waiting: AtomicUsize,
}

impl Load {
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

struct Job {
    request: GenRequest,
    events: UnboundedSender<Event>,
}

/// A handle to the engine thread. Dropping it (every clone) lets the engine finish the rows it
/// runs and stop.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Job>,
    load: Arc<Load>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("load", &self.load).finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the engine thread on `model`.
    pub fn start<B: Backend>(model: QwenModel<B>, tokenizer: Tokenizer, config: EngineConfig) -> Self {
        let (queue, jobs) = mpsc::sync_channel(config.max_queue);
        let load = Arc::new(Load::default());
        let thread_load = load.clone();
        let thread = std::thread::Builder::new()
            .name("qwen-serve-engine".into())
            .spawn(move || run(&model, &tokenizer, &config, &jobs, &thread_load))
            .expect("spawning the engine thread");
        Self { queue, load, thread: Arc::new(std::sync::Mutex::new(Some(thread))) }
    }

    /// Queues a request; its events arrive on the returned channel. Dropping the receiver
    /// cancels the request (its row leaves the batch at the next step).
    ///
    /// # Errors
    /// [`ServeError::QueueFull`] when `max_queue` requests already wait;
    /// [`ServeError::Unavailable`] when the engine has stopped.
    pub fn submit(&self, request: GenRequest) -> Result<UnboundedReceiver<Event>> {
        let (events, rx) = unbounded_channel();
        self.load.waiting.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(Job { request, events }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.load.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => ServeError::QueueFull { waiting: self.load.waiting() },
                    TrySendError::Disconnected(_) => ServeError::Unavailable("the engine thread has stopped".into()),
                })
            }
        }
    }

    /// Rows running and requests waiting.
    pub fn load(&self) -> &Load {
        &self.load
    }

    /// Stops taking requests and waits until the engine has finished the running ones (other
    /// clones of this handle must be dropped first, or this waits for them too).
    pub fn shutdown(self) {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        drop(self);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A running request.
struct Row<'t> {
    events: UnboundedSender<Event>,
    sampler: Sampler,
    /// Prompt and generated ids (what the repetition penalty reads).
    seq: Vec<u32>,
    prompt_tokens: usize,
    generated: usize,
    max_tokens: usize,
    stop: Vec<String>,
    decoder: StreamDecoder<'t>,
    /// The reply's text so far, and how much of it has been sent.
    text: String,
    sent: usize,
}

impl<'t> Row<'t> {
    fn new(job: Job, tokenizer: &'t Tokenizer) -> std::result::Result<Self, (Job, String)> {
        let sampler = match Sampler::new(job.request.sampling.clone()) {
            Ok(s) => s,
            Err(e) => return Err((job, e.to_string())),
        };
        let Job { request, events } = job;
        Ok(Self {
            events,
            sampler,
            prompt_tokens: request.prompt.len(),
            seq: request.prompt,
            generated: 0,
            max_tokens: request.max_tokens,
            stop: request.stop,
            decoder: StreamDecoder::new(tokenizer),
            text: String::new(),
            sent: 0,
        })
    }

    /// Takes the token sampled from `logits`; returns whether the row goes on.
    fn step(&mut self, logits: &mut [f32], stop_ids: &[u32], tokenizer: &'t Tokenizer) -> bool {
        let t = self.sampler.sample(logits, &self.seq);
        self.seq.push(t);
        self.generated += 1;
        let mut finish = None;
        if stop_ids.contains(&t) {
            finish = Some(FinishReason::Stop);
        } else {
            // An id the tokenizer has no bytes for (a padding row of a head wider than the
            // vocabulary) adds no text.
            if let Ok(piece) = self.decoder.push(t) {
                self.text.push_str(&piece);
            }
        }
        if finish.is_none() && self.generated >= self.max_tokens {
            finish = Some(FinishReason::Length);
        }
        if finish.is_some() {
            let rest = std::mem::replace(&mut self.decoder, StreamDecoder::new(tokenizer)).finish();
            self.text.push_str(&rest);
        }
        // A stop string ends the reply where it starts (it can only start in the unsent text:
        // anything that could begin one is held back).
        let found = self.stop.iter().filter_map(|s| self.text[self.sent..].find(s.as_str())).min();
        let end = match found {
            Some(at) => {
                finish = Some(FinishReason::Stop);
                self.sent + at
            }
            None if finish.is_some() => self.text.len(),
            None => self.text.len() - self.held_back(),
        };
        if end > self.sent {
            let piece = self.text[self.sent..end].to_string();
            self.sent = end;
            if self.events.send(Event::Text(piece)).is_err() {
                return false;
            }
        }
        match finish {
            Some(finish) => {
                let _ = self.events.send(Event::Done {
                    finish,
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens: self.generated,
                });
                false
            }
            None => true,
        }
    }

    /// Bytes at the end of the text that may be the start of a stop string.
    fn held_back(&self) -> usize {
        let tail = &self.text[self.sent..];
        self.stop
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&k| s.is_char_boundary(k) && tail.ends_with(&s[..k])))
            .max()
            .unwrap_or(0)
    }

    fn fail(&mut self, reason: String) -> bool {
        let _ = self.events.send(Event::Failed(reason));
        false
    }
}

/// The engine loop: until the queue is closed and every row has finished.
fn run<B: Backend>(
    model: &QwenModel<B>,
    tokenizer: &Tokenizer,
    config: &EngineConfig,
    jobs: &Receiver<Job>,
    load: &Load,
) {
    let mut rows: Vec<Row<'_>> = Vec::new();
    let mut cache: Option<KvCache<B>> = None;
    let mut open = true;
    let max_batch = config.max_batch.max(1);
    loop {
        // Clients that went away leave before any work is done for them.
        let gone: Vec<bool> = rows.iter().map(|r| r.events.is_closed()).collect();
        leave(&mut rows, &mut cache, &gone);
        load.running.store(rows.len(), Ordering::SeqCst);

        let mut admitted = Vec::new();
        while open && rows.len() + admitted.len() < max_batch {
            let next = if rows.is_empty() && admitted.is_empty() {
                jobs.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                jobs.try_recv()
            };
            match next {
                Ok(job) => {
                    load.waiting.fetch_sub(1, Ordering::SeqCst);
                    if !job.events.is_closed() {
                        admitted.push(job);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if !admitted.is_empty() {
            admit(model, tokenizer, config, admitted, &mut rows, &mut cache);
        }
        load.running.store(rows.len(), Ordering::SeqCst);
        if rows.is_empty() {
            if open {
                continue;
            }
            return;
        }
        if let Err(e) = decode_step(model, tokenizer, config, &mut rows, &mut cache) {
            for r in &mut rows {
                r.fail(e.to_string());
            }
            rows.clear();
            cache = None;
        }
        load.running.store(rows.len(), Ordering::SeqCst);
    }
}

/// Removes the rows marked in `gone` from the batch and the cache.
fn leave<B: Backend>(rows: &mut Vec<Row<'_>>, cache: &mut Option<KvCache<B>>, gone: &[bool]) {
    if !gone.iter().any(|&g| g) {
        return;
    }
    let keep: Vec<usize> = (0..rows.len()).filter(|&i| !gone[i]).collect();
    let mut i = 0;
    rows.retain(|_| {
        i += 1;
        !gone[i - 1]
    });
    if keep.is_empty() {
        *cache = None;
    } else if let Some(c) = cache.as_mut() {
        // `keep` holds distinct indices below the batch size, so this cannot fail.
        c.retain(&keep).expect("valid rows");
        c.compact();
    }
}

/// Logits `[rows, 1, vocab]` as one host vector per row.
fn host_rows<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<Vec<f32>>> {
    let v = logits.dims()[2];
    let flat: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| ServeError::Unavailable(format!("reading logits: {e:?}")))?;
    Ok(flat.chunks(v).map(<[f32]>::to_vec).collect())
}

/// Prefills the admitted requests as one padded batch, samples their first tokens, and joins
/// those still going to the running batch.
fn admit<'t, B: Backend>(
    model: &QwenModel<B>,
    tokenizer: &'t Tokenizer,
    config: &EngineConfig,
    jobs: Vec<Job>,
    rows: &mut Vec<Row<'t>>,
    cache: &mut Option<KvCache<B>>,
) {
    let mut new = Vec::with_capacity(jobs.len());
    for job in jobs {
        match Row::new(job, tokenizer) {
            Ok(r) => new.push(r),
            Err((job, reason)) => {
                let _ = job.events.send(Event::Failed(reason));
            }
        }
    }
    if new.is_empty() {
        return;
    }
    let prompts: Vec<&[u32]> = new.iter().map(|r| r.seq.as_slice()).collect();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let prefilled = model.batch(&prompts).and_then(|batch| {
        let mut own = KvCache::new(&model.config, new.len(), longest + GROW, &model.device());
        let logits = model.decode(&batch, &mut own, Logits::Last)?;
        Ok((own, logits))
    });
    let (mut own, logits) = match prefilled {
        Ok(x) => x,
        Err(e) => {
            for r in &mut new {
                r.fail(e.to_string());
            }
            return;
        }
    };
    let logits = match host_rows(logits) {
        Ok(l) => l,
        Err(e) => {
            for r in &mut new {
                r.fail(e.to_string());
            }
            return;
        }
    };
    let going: Vec<bool> =
        new.iter_mut().zip(logits).map(|(r, mut l)| r.step(&mut l, &config.stop_ids, tokenizer)).collect();
    let keep: Vec<usize> = (0..new.len()).filter(|&i| going[i]).collect();
    if keep.is_empty() {
        return;
    }
    let mut i = 0;
    new.retain(|_| {
        i += 1;
        going[i - 1]
    });
    if keep.len() < going.len() {
        own.retain(&keep).expect("valid rows");
        own.compact();
    }
    let joined = match cache.as_mut() {
        Some(c) => c.join(own),
        None => {
            *cache = Some(own);
            Ok(())
        }
    };
    match joined {
        Ok(()) => rows.extend(new),
        Err(e) => {
            for r in &mut new {
                r.fail(e.to_string());
            }
        }
    }
}

/// One token for every running row.
fn decode_step<'t, B: Backend>(
    model: &QwenModel<B>,
    tokenizer: &'t Tokenizer,
    config: &EngineConfig,
    rows: &mut Vec<Row<'t>>,
    cache: &mut Option<KvCache<B>>,
) -> Result<()> {
    let Some(c) = cache.as_mut() else { return Ok(()) };
    if c.len() + 1 > c.capacity() {
        c.reserve(c.len() + GROW);
    }
    let last: Vec<i64> = rows.iter().map(|r| *r.seq.last().expect("a row has its prompt") as i64).collect();
    let ids = Tensor::from_data(TensorData::new(last, [rows.len(), 1]), &model.device());
    let logits = host_rows(model.decode(&Batch::unpadded(ids), c, Logits::Last)?)?;
    let gone: Vec<bool> =
        rows.iter_mut().zip(logits).map(|(r, mut l)| !r.step(&mut l, &config.stop_ids, tokenizer)).collect();
    leave(rows, cache, &gone);
    Ok(())
}
