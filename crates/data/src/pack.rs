//! Packing, as in the report: shuffle documents, tokenize them, join them with `<|endoftext|>`
//! and cut the token stream into fixed-length training sequences.
//!
//! - Documents are read in buffers of [`PackConfig::buffer_docs`]; each buffer is shuffled with
//!   a seeded RNG (a full shuffle when the buffer holds the whole corpus, a local shuffle
//!   otherwise, so memory stays bounded) and tokenized in parallel with rayon, order preserved.
//! - Every document is followed by the end-of-text id ([`ENDOFTEXT`] looked up with
//!   `special_id`, or [`PackConfig::eot_id`]): so there is one between any two documents and
//!   one after the last. Special-token strings inside documents are encoded as plain text.
//! - [`SequencePacker`] cuts the stream into windows of `L + 1` tokens that overlap by one:
//!   `input = w[..L]`, `target = w[1..]`, and the next window starts at the last token of this
//!   one, so every token is a target exactly once. Documents are not aligned to windows: a window
//!   may span several documents, and attention across the `<|endoftext|>` is left to the model.
//! - The tail (the tokens after the last full window, fewer than `L`) is dropped and counted in
//!   [`PackStats::tail_dropped`]; nothing else is lost.

use qwen_tokenizer::{AllowedSpecial, Tokenize};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng::SplitMix64;
use crate::shard::ShardWriter;
use crate::source::Document;

/// The name of the end-of-text special token.
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// One training sequence: `target[i] == input[i + 1]` for `i < L - 1`, and `target[L - 1]` the
/// token after the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
}

impl Sequence {
    /// The sequence of a window of `L + 1` consecutive tokens: its first `L` are the inputs, its
    /// last `L` the targets.
    pub fn from_window(window: &[u32]) -> Self {
        let l = window.len().saturating_sub(1);
        Self { input: window[..l].to_vec(), target: window[window.len() - l..].to_vec() }
    }
}

/// The windows packing cuts from a token stream: `seq_len + 1` tokens starting every `seq_len`
/// (consecutive windows share one token, so every token but the first is a target once); a tail
/// shorter than a window is left out.
pub fn windows(ids: &[u32], seq_len: usize) -> impl Iterator<Item = Sequence> + '_ {
    let n = ids.len().saturating_sub(1).checked_div(seq_len).unwrap_or(0);
    (0..n).map(move |w| Sequence::from_window(&ids[w * seq_len..(w + 1) * seq_len + 1]))
}

/// Packing parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackConfig {
    /// Context length `L`.
    pub seq_len: usize,
    /// Shuffle seed; `None` keeps document order.
    pub seed: Option<u64>,
    /// Documents per shuffle-and-tokenize buffer.
    pub buffer_docs: usize,
    /// End-of-text id; `None` asks the tokenizer for [`ENDOFTEXT`].
    pub eot_id: Option<u32>,
}

impl PackConfig {
    /// Context length `seq_len`, shuffled with `seed`, buffers of 10 000 documents.
    pub fn new(seq_len: usize, seed: u64) -> Self {
        Self { seq_len, seed: Some(seed), buffer_docs: 10_000, eot_id: None }
    }

    /// The end-of-text id this configuration uses with `tok`.
    pub fn resolve_eot(&self, tok: &dyn Tokenize) -> Result<u32> {
        self.eot_id
            .or_else(|| tok.special_id(ENDOFTEXT))
            .ok_or_else(|| DataError::Config(format!("tokenizer has no {ENDOFTEXT} and no eot_id is configured")))
    }
}

/// What packing did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackStats {
    pub documents: usize,
    /// Tokens produced, end-of-text ids included.
    pub tokens: u64,
    pub sequences: usize,
    /// Tokens after the last full window, in no sequence.
    pub tail_dropped: u64,
}

/// Tokenized documents (each followed by end-of-text), shuffled within buffers; an iterator of
/// `Result<Vec<u32>>`, one item per document.
pub struct TokenStream<'t, I> {
    tok: &'t dyn Tokenize,
    docs: I,
    eot: u32,
    buffer_docs: usize,
    rng: Option<SplitMix64>,
    ready: std::vec::IntoIter<Result<Vec<u32>>>,
    exhausted: bool,
}

impl<'t, I: Iterator<Item = Result<Document>>> TokenStream<'t, I> {
    /// Tokenizes `docs` with `tok` as `config` says.
    pub fn new(tok: &'t dyn Tokenize, docs: I, config: &PackConfig) -> Result<Self> {
        if config.buffer_docs == 0 {
            return Err(DataError::Config("buffer_docs must be positive".into()));
        }
        Ok(Self {
            tok,
            docs,
            eot: config.resolve_eot(tok)?,
            buffer_docs: config.buffer_docs,
            rng: config.seed.map(SplitMix64::new),
            ready: Vec::new().into_iter(),
            exhausted: false,
        })
    }

    fn refill(&mut self) {
        let mut buf: Vec<Result<Document>> = Vec::with_capacity(self.buffer_docs.min(1 << 16));
        for d in self.docs.by_ref() {
            let is_err = d.is_err();
            buf.push(d);
            if is_err || buf.len() >= self.buffer_docs {
                break;
            }
        }
        if buf.is_empty() {
            self.exhausted = true;
            return;
        }
        if let Some(rng) = self.rng.as_mut() {
            rng.shuffle(&mut buf);
        }
        let (tok, eot) = (self.tok, self.eot);
        let out: Vec<Result<Vec<u32>>> = buf
            .into_par_iter()
            .map(|d| {
                let mut ids = tok.encode(&d?.text, &AllowedSpecial::None)?;
                ids.push(eot);
                Ok(ids)
            })
            .collect();
        self.ready = out.into_iter();
    }
}

impl<I: Iterator<Item = Result<Document>>> Iterator for TokenStream<'_, I> {
    type Item = Result<Vec<u32>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(x) = self.ready.next() {
                return Some(x);
            }
            if self.exhausted {
                return None;
            }
            self.refill();
        }
    }
}

/// Cuts a token stream into overlapping `L + 1`-token windows.
#[derive(Debug, Clone)]
pub struct SequencePacker {
    seq_len: usize,
    buf: Vec<u32>,
    pos: usize,
    emitted: usize,
}

impl SequencePacker {
    pub fn new(seq_len: usize) -> Self {
        assert!(seq_len > 0, "seq_len must be positive");
        Self { seq_len, buf: Vec::new(), pos: 0, emitted: 0 }
    }

    /// Appends tokens to the stream.
    pub fn push(&mut self, tokens: &[u32]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(tokens);
    }

    /// The next full window, if the stream holds one.
    pub fn pop(&mut self) -> Option<Sequence> {
        let l = self.seq_len;
        if self.buf.len() - self.pos < l + 1 {
            return None;
        }
        let seq = Sequence::from_window(&self.buf[self.pos..self.pos + l + 1]);
        self.pos += l;
        self.emitted += 1;
        Some(seq)
    }

    /// Tokens not (yet) in any window.
    pub fn pending(&self) -> usize {
        let left = self.buf.len() - self.pos;
        if self.emitted > 0 {
            left.saturating_sub(1)
        } else {
            left
        }
    }
}

/// Packs documents into sequences in memory (for small corpora and tests; large ones go through
/// [`pack_to_shard`]).
pub fn pack_documents<I>(tok: &dyn Tokenize, docs: I, config: &PackConfig) -> Result<(Vec<Sequence>, PackStats)>
where
    I: IntoIterator<Item = Result<Document>>,
{
    if config.seq_len == 0 {
        return Err(DataError::Config("seq_len must be positive".into()));
    }
    let mut packer = SequencePacker::new(config.seq_len);
    let mut stats = PackStats::default();
    let mut out = Vec::new();
    for ids in TokenStream::new(tok, docs.into_iter(), config)? {
        let ids = ids?;
        stats.documents += 1;
        stats.tokens += ids.len() as u64;
        packer.push(&ids);
        while let Some(s) = packer.pop() {
            out.push(s);
        }
    }
    stats.sequences = out.len();
    stats.tail_dropped = packer.pending() as u64;
    Ok((out, stats))
}

/// Tokenizes documents (shuffled, end-of-text after each) straight into a shard; the windows are
/// cut later by [`ShardLoader`](crate::ShardLoader) with the same rule as [`SequencePacker`].
/// `stats.sequences` and `stats.tail_dropped` are those of a single pass with `config.seq_len`.
pub fn pack_to_shard<I>(tok: &dyn Tokenize, docs: I, config: &PackConfig, writer: &mut ShardWriter) -> Result<PackStats>
where
    I: IntoIterator<Item = Result<Document>>,
{
    let mut stats = PackStats::default();
    for ids in TokenStream::new(tok, docs.into_iter(), config)? {
        let ids = ids?;
        stats.documents += 1;
        stats.tokens += ids.len() as u64;
        writer.write(&ids)?;
    }
    let l = config.seq_len.max(1) as u64;
    let windows = stats.tokens.saturating_sub(1) / l;
    stats.sequences = windows as usize;
    stats.tail_dropped = if windows == 0 { stats.tokens } else { stats.tokens - 1 - windows * l };
    Ok(stats)
}

/// Shuffles documents in place with a seed (the same shuffle [`TokenStream`] does to one buffer).
pub fn shuffle_documents(docs: &mut [Document], seed: u64) {
    SplitMix64::new(seed).shuffle(docs);
}
