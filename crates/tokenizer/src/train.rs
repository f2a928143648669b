//! BPE training: learn a byte-level BPE vocabulary from a corpus, either from the 256 single bytes
//! ([`BpeTrainer::train`]) or on top of an existing vocabulary ([`BpeTrainer::extend`]; the Qwen
//! report extends cl100k with tokens for Chinese and other languages). The result is a
//! [`Tokenizer`] that [`Tokenizer::save_tiktoken`] and [`Tokenizer::save_tokenizer_json`] write out.
//!
//! # Algorithm
//!
//! The corpus is cut into pieces with the split pattern and counted ([`BpeTrainer::feed`],
//! [`BpeTrainer::feed_batch`]); training then works on the distinct pieces ("words") and their
//! counts, as HF `tokenizers`' `BpeTrainer` does:
//! - every adjacent token pair has a count (summed over the words, weighted by word count) and an
//!   index of the words that contain it;
//! - a max-heap with lazy deletion yields the most frequent pair; **ties go to the lowest
//!   `(left id, right id)`**, so the result never depends on hash-map order;
//! - the pair's concatenation becomes the next id (id = rank), only the words that contain it are
//!   rewritten, and only the pair counts of those words are updated — no recount per merge.
//!
//! Training stops at [`TrainerConfig::vocab_size`] ordinary ids, or earlier when the most frequent
//! pair occurs fewer than [`TrainerConfig::min_frequency`] times (or no pair is left).
//!
//! # tiktoken consistency
//!
//! The tokenizer produced encodes with tiktoken's rule: any adjacent pair whose concatenation is a
//! token may merge, lowest rank first, leftmost on ties. The trainer applies each new token by that
//! very rule, so that after every merge each word is segmented exactly as the tokenizer would
//! segment it: a new token also absorbs any *other* adjacent split of its bytes (not only the pair
//! that won), and a merge that makes a pair of an older, lower-ranked token adjacent is followed
//! by that merge, as tiktoken would. Neither can happen when training from bytes (the result is
//! then exactly textbook greedy BPE); with a base vocabulary it can, if the base has tokens that no
//! merge reaches. Because of this, the segmentation of a word after all earlier merges never
//! contains a pair whose concatenation is already a token, so a winning pair always yields new
//! bytes. Training ends by checking that the tokenizer encodes every training piece exactly as the
//! trainer segmented it, and fails with [`TokenizerError::Training`] if not.
//!
//! ```
//! use qwen_tokenizer::train::{BpeTrainer, TrainerConfig};
//! use qwen_tokenizer::AllowedSpecial;
//! let mut trainer = BpeTrainer::new(TrainerConfig {
//!     vocab_size: 256 + 20,
//!     specials: vec!["<|endoftext|>".into()],
//!     ..TrainerConfig::default()
//! })?;
//! trainer.feed("the cat sat on the mat with the other cat")?;
//! let tok = trainer.train()?;
//! assert_eq!(tok.special_id("<|endoftext|>")?, tok.bpe().len() as u32);
//! let ids = tok.encode("the cat", &AllowedSpecial::None)?;
//! assert!(ids.len() < "the cat".len());
//! assert_eq!(tok.decode(&ids)?, "the cat");
//! # Ok::<(), qwen_tokenizer::TokenizerError>(())
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::bpe::{BytePairEncoder, MergeRule};
use crate::error::{Result, TokenizerError};
use crate::pretokenize::{Pretokenizer, QWEN_PATTERN};
use crate::special::SpecialTokens;
use crate::tokenizer::{Normalization, Tokenizer};

/// What to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainerConfig {
    /// Target number of ordinary ids, counting the 256 byte tokens ([`BpeTrainer::train`]) or the
    /// base vocabulary's ids ([`BpeTrainer::extend`]); special tokens come on top. Training may
    /// stop short of it (see [`TrainerConfig::min_frequency`]). Default 32,000.
    pub vocab_size: usize,
    /// A pair must occur at least this often (counting repeated pieces) to be merged. Default 2.
    pub min_frequency: u64,
    /// The split pattern that cuts text into pieces, also the produced tokenizer's. Default
    /// [`QWEN_PATTERN`].
    pub pattern: String,
    /// Special tokens, numbered in this order right after the ordinary ids. Default none.
    pub specials: Vec<String>,
    /// Print a few progress lines (about every 10% of the merges) to stderr. Default off.
    pub show_progress: bool,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32_000,
            min_frequency: 2,
            pattern: QWEN_PATTERN.to_string(),
            specials: Vec::new(),
            show_progress: false,
        }
    }
}

/// Counts the pieces of a corpus, then learns merges on them.
///
/// Feed text in as many calls as convenient (a streaming corpus); only the distinct pieces and
/// their counts are kept. The produced tokenizer has no normalization: normalize text (e.g. NFC)
/// before feeding it if the tokenizer will be used with normalization.
#[derive(Debug, Clone)]
pub struct BpeTrainer {
    config: TrainerConfig,
    pretokenizer: Pretokenizer,
    counts: FxHashMap<String, u64>,
}

fn training_error(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Training(msg.into())
}

fn count_pieces(pre: &Pretokenizer, text: &str, counts: &mut FxHashMap<String, u64>) -> Result<()> {
    pre.for_each_piece(text, |piece| {
        if let Some(c) = counts.get_mut(piece) {
            *c += 1;
        } else {
            counts.insert(piece.to_owned(), 1);
        }
    })
}

fn merge_counts(mut a: FxHashMap<String, u64>, mut b: FxHashMap<String, u64>) -> FxHashMap<String, u64> {
    if a.len() < b.len() {
        std::mem::swap(&mut a, &mut b);
    }
    for (piece, c) in b {
        *a.entry(piece).or_insert(0) += c;
    }
    a
}

impl BpeTrainer {
    /// A trainer with nothing counted yet. Fails with [`TokenizerError::Training`] if
    /// `vocab_size < 256` or a special token is empty or repeated, and with
    /// [`TokenizerError::InvalidPattern`] if the pattern does not compile.
    pub fn new(config: TrainerConfig) -> Result<Self> {
        if config.vocab_size < 256 {
            return Err(training_error(format!(
                "vocab_size {} is below 256 (the single-byte tokens)",
                config.vocab_size
            )));
        }
        let mut seen = FxHashSet::default();
        for s in &config.specials {
            if s.is_empty() {
                return Err(training_error("a special token is empty"));
            }
            if !seen.insert(s.as_str()) {
                return Err(training_error(format!("special token {s:?} is repeated")));
            }
        }
        let pretokenizer = Pretokenizer::from_pattern(&config.pattern)?;
        Ok(Self { config, pretokenizer, counts: FxHashMap::default() })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Number of distinct pieces counted so far.
    pub fn unique_pieces(&self) -> usize {
        self.counts.len()
    }

    /// Cuts `text` into pieces with the pattern and counts them.
    pub fn feed(&mut self, text: &str) -> Result<()> {
        count_pieces(&self.pretokenizer, text, &mut self.counts)
    }

    /// [`BpeTrainer::feed`] on many texts, counted on all cores (rayon) and then merged; the
    /// counts are the same as feeding the texts one by one.
    pub fn feed_batch<S: AsRef<str> + Sync>(&mut self, texts: &[S]) -> Result<()> {
        let pre = &self.pretokenizer;
        let counted = texts
            .par_iter()
            .try_fold(FxHashMap::default, |mut m, t| count_pieces(pre, t.as_ref(), &mut m).map(|()| m))
            .try_reduce(FxHashMap::default, |a, b| Ok(merge_counts(a, b)))?;
        let counts = std::mem::take(&mut self.counts);
        self.counts = merge_counts(counts, counted);
        Ok(())
    }

    /// Learns merges from the 256 single bytes (id = byte value, as in `qwen.tiktoken`) up to
    /// `vocab_size` ordinary ids; specials follow.
    pub fn train(self) -> Result<Tokenizer> {
        let tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let pieces = self.sorted_pieces();
        let words = pieces.iter().map(|(p, _)| p.bytes().map(u32::from).collect()).collect();
        self.learn(tokens, pieces, words, "train")
    }

    /// Keeps every ordinary token of `base` with its id and learns new merges on top, up to
    /// `vocab_size` ordinary ids; new tokens are numbered from `base.bpe().len()` upward, specials
    /// (from the config; `base`'s own specials are not kept) after them.
    ///
    /// Each piece is first segmented as `base` encodes it, then merging continues from there, so
    /// the base tokens keep their priority over every new one. The result always encodes with
    /// tiktoken's rank rule (rank = id): a `base` loaded from a `tokenizer.json` is segmented by
    /// that rule too, which is the same as its merge list whenever its merges are in id order.
    /// Fails with [`TokenizerError::Training`] if `vocab_size < base.bpe().len()`.
    pub fn extend(self, base: &Tokenizer) -> Result<Tokenizer> {
        let base_bpe = base.bpe();
        if self.config.vocab_size < base_bpe.len() {
            return Err(training_error(format!(
                "vocab_size {} is below the base vocabulary's {} ids",
                self.config.vocab_size,
                base_bpe.len()
            )));
        }
        let ranked;
        let seg = if base_bpe.rule() == MergeRule::Ranks {
            base_bpe
        } else {
            ranked = BytePairEncoder::from_ranks(base_bpe.iter().map(|(b, id)| (b.to_vec(), id)))?;
            &ranked
        };
        let mut tokens = vec![Vec::new(); base_bpe.len()];
        for (bytes, id) in base_bpe.iter() {
            tokens[id as usize] = bytes.to_vec();
        }
        let pieces = self.sorted_pieces();
        let words = pieces
            .par_iter()
            .map(|(p, _)| {
                let mut ids = Vec::new();
                seg.encode_piece(p.as_bytes(), &mut ids);
                ids
            })
            .collect();
        self.learn(tokens, pieces, words, "extend")
    }

    /// The counted pieces in byte order, so that the result does not depend on hash-map order.
    fn sorted_pieces(&self) -> Vec<(String, u64)> {
        let mut pieces: Vec<(String, u64)> = self.counts.iter().map(|(p, &c)| (p.clone(), c)).collect();
        pieces.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        pieces
    }

    fn learn(
        self,
        tokens: Vec<Vec<u8>>,
        pieces: Vec<(String, u64)>,
        words: Vec<Vec<u32>>,
        what: &str,
    ) -> Result<Tokenizer> {
        let config = self.config;
        let start = Instant::now();
        let counts: Vec<u64> = pieces.iter().map(|(_, c)| *c).collect();
        let mut learner = Learner::new(tokens, words, counts);
        let base_len = learner.tokens.len();
        let target = config.vocab_size.max(base_len);
        if config.show_progress {
            eprintln!(
                "bpe {what}: {} distinct pieces ({} in all), {} ids, learning up to {} merges",
                pieces.len(),
                learner.counts.iter().sum::<u64>(),
                base_len,
                target - base_len
            );
        }
        let progress = config.show_progress.then_some(start);
        learner.run(target, config.min_frequency.max(1), progress);
        let learned = learner.tokens.len() - base_len;
        if config.show_progress {
            eprintln!(
                "bpe {what}: {learned} merges in {:.2}s ({} ordinary ids)",
                start.elapsed().as_secs_f64(),
                learner.tokens.len()
            );
        }

        let n = learner.tokens.len();
        let bpe = BytePairEncoder::from_ranks(
            learner.tokens.into_iter().enumerate().filter(|(_, b)| !b.is_empty()).map(|(id, b)| (b, id as u32)),
        )?;
        // The produced tokenizer must segment every training piece as the trainer did.
        pieces.par_iter().zip(learner.words.par_iter()).try_for_each(|((piece, _), ids)| {
            let mut out = Vec::with_capacity(ids.len());
            bpe.encode_piece(piece.as_bytes(), &mut out);
            if &out == ids {
                Ok(())
            } else {
                Err(training_error(format!(
                    "the trained vocabulary encodes the piece {piece:?} as {out:?}, training segmented it as \
                     {ids:?} (is the base vocabulary consistent with tiktoken's rank rule?)"
                )))
            }
        })?;
        let specials = config.specials.into_iter().zip(n as u32..).collect();
        Tokenizer::new(
            bpe,
            SpecialTokens::new(specials)?,
            Pretokenizer::from_pattern(&config.pattern)?,
            Normalization::None,
        )
    }
}

#[inline(always)]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline(always)]
fn unkey(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

const NONE: u32 = u32::MAX;

/// Reusable buffers for re-segmenting one word.
#[derive(Default)]
struct Scratch {
    ids: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Min-heap of candidate merges: (rank, position of the left part, left id, right id).
    heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>>,
    concat: Vec<u8>,
    pairs: Vec<(u64, i32)>,
}

/// The training state: vocabulary, words and pair statistics.
struct Learner {
    /// id -> bytes; empty for an id the (base) vocabulary does not use.
    tokens: Vec<Vec<u8>>,
    by_bytes: FxHashMap<Vec<u8>, u32>,
    /// Each distinct piece as its current tokens, and how often it occurs.
    words: Vec<Vec<u32>>,
    counts: Vec<u64>,
    /// pair -> occurrences in the corpus (only pairs that occur).
    pair_counts: FxHashMap<u64, u64>,
    /// pair -> words that contain it (a superset: may hold stale and repeated entries).
    pair_words: FxHashMap<u64, Vec<u32>>,
    /// (count, pair) of every pair count set so far; an entry is live when it matches `pair_counts`.
    heap: BinaryHeap<(u64, Reverse<u64>)>,
}

impl Learner {
    fn new(tokens: Vec<Vec<u8>>, words: Vec<Vec<u32>>, counts: Vec<u64>) -> Self {
        let by_bytes =
            tokens.iter().enumerate().filter(|(_, b)| !b.is_empty()).map(|(id, b)| (b.clone(), id as u32)).collect();
        let mut pair_counts: FxHashMap<u64, u64> = FxHashMap::default();
        let mut pair_words: FxHashMap<u64, Vec<u32>> = FxHashMap::default();
        for (w, (ids, &c)) in words.iter().zip(&counts).enumerate() {
            for p in ids.windows(2) {
                let k = key(p[0], p[1]);
                *pair_counts.entry(k).or_insert(0) += c;
                let list = pair_words.entry(k).or_default();
                if list.last() != Some(&(w as u32)) {
                    list.push(w as u32);
                }
            }
        }
        let heap = pair_counts.iter().map(|(&k, &c)| (c, Reverse(k))).collect();
        Self { tokens, by_bytes, words, counts, pair_counts, pair_words, heap }
    }

    /// Learns merges until `target` ids, or until the best pair occurs fewer than `min_frequency`
    /// times. `progress`: print about every 10% of the merges, timing from that instant.
    fn run(&mut self, target: usize, min_frequency: u64, progress: Option<Instant>) {
        let total = target - self.tokens.len();
        let step = (total / 10).max(1);
        let mut done = 0usize;
        let mut scratch = Scratch::default();
        let mut delta: FxHashMap<u64, i64> = FxHashMap::default();
        let mut banned: FxHashSet<u64> = FxHashSet::default();
        while self.tokens.len() < target {
            let Some((count, Reverse(k))) = self.heap.pop() else { break };
            if self.pair_counts.get(&k) != Some(&count) {
                continue; // stale entry
            }
            if count < min_frequency {
                if let Some(t0) = progress {
                    eprintln!(
                        "bpe: stopping after {done} merges: the best pair occurs {count} < {min_frequency} times ({:.2}s)",
                        t0.elapsed().as_secs_f64()
                    );
                }
                break;
            }
            if banned.contains(&k) {
                continue;
            }
            let (a, b) = unkey(k);
            let bytes = [self.tokens[a as usize].as_slice(), self.tokens[b as usize].as_slice()].concat();
            // A pair whose bytes are already a token would have merged into it under the rank
            // rule, so it cannot be adjacent in a segmentation (see the module docs).
            debug_assert!(!self.by_bytes.contains_key(&bytes), "pair {a} {b} concatenates to an existing token");
            if self.by_bytes.contains_key(&bytes) {
                // Should it happen anyway, it adds nothing new: never pick it; the final check
                // reports the mismatch.
                banned.insert(k);
                continue;
            }
            self.add_token(bytes, &mut scratch, &mut delta);
            done += 1;
            if let Some(t0) = progress {
                if done.is_multiple_of(step) || done == total {
                    let last = self.tokens.last().expect("just added");
                    eprintln!(
                        "bpe: {done}/{total} merges ({}%), last {:?} x{count}, {:.2}s",
                        done * 100 / total.max(1),
                        String::from_utf8_lossy(last),
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    /// Adds the token `bytes` with the next id and re-segments every word that can use it.
    fn add_token(&mut self, bytes: Vec<u8>, scratch: &mut Scratch, delta: &mut FxHashMap<u64, i64>) {
        let t = self.tokens.len() as u32;
        // Every cut of the new token into two existing tokens is a pair that now merges into it.
        let mut splits = Vec::new();
        for cut in 1..bytes.len() {
            if let (Some(&x), Some(&y)) = (self.by_bytes.get(&bytes[..cut]), self.by_bytes.get(&bytes[cut..])) {
                splits.push(key(x, y));
            }
        }
        self.by_bytes.insert(bytes.clone(), t);
        self.tokens.push(bytes);

        // After this merge no word holds any of these pairs, so their word lists go.
        let mut affected: Vec<u32> = splits.iter().filter_map(|s| self.pair_words.remove(s)).flatten().collect();
        affected.sort_unstable();
        affected.dedup();

        delta.clear();
        for w in affected {
            let wi = w as usize;
            let Some(new) = resegment(&self.tokens, &self.by_bytes, &self.words[wi], &splits, t, scratch) else {
                continue; // stale index entry: the word no longer holds the pair
            };
            // Pair multiset difference between old and new segmentation.
            let pairs = &mut scratch.pairs;
            pairs.clear();
            pairs.extend(self.words[wi].windows(2).map(|p| (key(p[0], p[1]), -1)));
            pairs.extend(new.windows(2).map(|p| (key(p[0], p[1]), 1)));
            pairs.sort_unstable();
            let c = self.counts[wi] as i64;
            let mut i = 0;
            while i < pairs.len() {
                let k = pairs[i].0;
                let mut d = 0;
                while i < pairs.len() && pairs[i].0 == k {
                    d += pairs[i].1;
                    i += 1;
                }
                if d != 0 {
                    *delta.entry(k).or_insert(0) += d as i64 * c;
                }
                if d > 0 {
                    let list = self.pair_words.entry(k).or_default();
                    if list.last() != Some(&w) {
                        list.push(w);
                    }
                }
            }
            self.words[wi] = new;
        }
        for (&k, &d) in delta.iter() {
            if d == 0 {
                continue;
            }
            let entry = self.pair_counts.entry(k).or_insert(0);
            let c = *entry as i64 + d;
            debug_assert!(c >= 0, "pair count below zero");
            if c <= 0 {
                self.pair_counts.remove(&k);
            } else {
                *entry = c as u64;
                self.heap.push((c as u64, Reverse(k)));
            }
        }
    }
}

/// The id of the token `x` + `y`, if there is one (its rank: ids are ranks).
#[inline]
fn concat_id(tokens: &[Vec<u8>], by_bytes: &FxHashMap<Vec<u8>, u32>, buf: &mut Vec<u8>, x: u32, y: u32) -> Option<u32> {
    buf.clear();
    buf.extend_from_slice(&tokens[x as usize]);
    buf.extend_from_slice(&tokens[y as usize]);
    by_bytes.get(buf.as_slice()).copied()
}

/// Continues tiktoken's merge loop on `old` — the segmentation of a word under every token
/// before `t`, where no adjacent pair merges — now that token `t` exists: merges the adjacent
/// pairs in `splits` (those that make `t`), lowest rank first, leftmost on ties, together with
/// any merge that a new neighbourhood makes possible. `None` if nothing merges.
fn resegment(
    tokens: &[Vec<u8>],
    by_bytes: &FxHashMap<Vec<u8>, u32>,
    old: &[u32],
    splits: &[u64],
    t: u32,
    s: &mut Scratch,
) -> Option<Vec<u32>> {
    let n = old.len();
    s.heap.clear();
    for (i, p) in old.windows(2).enumerate() {
        if splits.contains(&key(p[0], p[1])) {
            s.heap.push(Reverse((t, i as u32, p[0], p[1])));
        }
    }
    if s.heap.is_empty() {
        return None;
    }
    s.ids.clear();
    s.ids.extend_from_slice(old);
    s.next.clear();
    s.next.extend(1..=n as u32);
    s.next[n - 1] = NONE;
    s.prev.clear();
    s.prev.extend((0..n as u32).map(|i| i.wrapping_sub(1)));
    while let Some(Reverse((rank, i, x, y))) = s.heap.pop() {
        let iu = i as usize;
        let j = s.next[iu];
        // Live only if both parts are still the ones it was pushed for (ids only ever grow).
        if s.ids[iu] != x || j == NONE || s.ids[j as usize] != y {
            continue;
        }
        s.ids[iu] = rank;
        s.ids[j as usize] = NONE;
        let k = s.next[j as usize];
        s.next[iu] = k;
        if k != NONE {
            s.prev[k as usize] = i;
            let z = s.ids[k as usize];
            if let Some(r) = concat_id(tokens, by_bytes, &mut s.concat, rank, z) {
                s.heap.push(Reverse((r, i, rank, z)));
            }
        }
        let h = s.prev[iu];
        if h != NONE {
            let w = s.ids[h as usize];
            if let Some(r) = concat_id(tokens, by_bytes, &mut s.concat, w, rank) {
                s.heap.push(Reverse((r, h, w, rank)));
            }
        }
    }
    Some(s.ids.iter().copied().filter(|&id| id != NONE).collect())
}
