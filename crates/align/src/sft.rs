//! Supervised fine-tuning data: a ChatML conversation becomes one training sequence whose targets
//! are exactly the tokens Qwen's `finetune.py` (`preprocess`) learns from.
//!
//! `finetune.py` labels every token of the rendered conversation: `<|im_start|>`, `<|im_end|>` and
//! the `\n` after each `<|im_end|>` are targets; system and user content, and every role header
//! (`system\n`, `user\n`, `assistant\n`), are masked with `-100`; assistant content is a target.
//! It pads the ids with the pad id (`<|endoftext|>`) and the labels with `-100` to the maximum
//! length, and the model shifts labels by one. [`sft_sequence`] does the same with the shift done
//! here: `target[i]` is the label of token `i + 1`, [`IGNORE_INDEX`] where it is masked or padding.
//!
//! Training then is the pretraining [`Trainer`](qwen_train::Trainer) on these batches: its loss
//! averages over non-ignored targets, as `finetune.py`'s cross-entropy does.
//!
//! Packing ([`pack_rows`], [`PackedSftBatcher`]): several conversations share one row of `seq_len`
//! instead of one padded row each. Every conversation keeps its own shifted labels (its last token
//! has no target, so nothing is learned across a boundary) and is one segment of the row
//! ([`TokenBatch::segments`]): the model attends only within a segment and restarts positions at
//! its first token, so a packed conversation computes exactly what it computes alone.

use std::collections::BTreeSet;

use qwen_data::{Batcher, DataError, Sequence, TokenBatch};
use qwen_tokenizer::{ChatMl, ChatTokens, Message, DEFAULT_SYSTEM};
use qwen_train::IGNORE_INDEX;

use crate::error::{AlignError, Result};

/// What to do with a conversation longer than the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Fail with [`AlignError::TooLong`].
    #[default]
    Error,
    /// Keep the first `seq_len` tokens, as `finetune.py` does (`input_id[:max_len]`).
    Truncate,
}

/// The label of every token: its id where SFT learns it, [`IGNORE_INDEX`] where masked.
pub fn sft_labels(chat: &ChatTokens) -> Vec<u32> {
    chat.ids.iter().zip(&chat.tags).map(|(&id, tag)| if tag.is_sft_target() { id } else { IGNORE_INDEX }).collect()
}

/// One SFT sequence of `seq_len` positions: the conversation's ids padded with `pad_id`, and the
/// shifted labels padded with [`IGNORE_INDEX`].
pub fn sft_sequence(chat: &ChatTokens, seq_len: usize, pad_id: u32, overflow: Overflow) -> Result<Sequence> {
    if seq_len == 0 {
        return Err(AlignError::Config("seq_len must be > 0".into()));
    }
    if chat.ids.len() != chat.tags.len() {
        return Err(AlignError::Batch(format!("{} ids but {} tags", chat.ids.len(), chat.tags.len())));
    }
    let n = chat.ids.len();
    if n > seq_len && overflow == Overflow::Error {
        return Err(AlignError::TooLong { len: n, limit: seq_len });
    }
    let labels = sft_labels(chat);
    let keep = n.min(seq_len);
    let mut input = chat.ids[..keep].to_vec();
    input.resize(seq_len, pad_id);
    let mut target: Vec<u32> = labels.get(1..keep).unwrap_or_default().to_vec();
    target.resize(seq_len, IGNORE_INDEX);
    Ok(Sequence { input, target })
}

/// Renders `messages` for training (`system`, or Qwen's default system prompt when `None`).
pub fn render(chat: &ChatMl<'_>, system: Option<&str>, messages: &[Message]) -> Result<ChatTokens> {
    Ok(chat.render(system.unwrap_or(DEFAULT_SYSTEM), messages)?)
}

/// Rendered conversations → [`TokenBatch`] of SFT sequences, all `seq_len` long.
#[derive(Debug, Clone, Copy)]
pub struct SftBatcher {
    pub seq_len: usize,
    pub pad_id: u32,
    pub overflow: Overflow,
}

impl Batcher<ChatTokens, TokenBatch> for SftBatcher {
    /// Fails with [`DataError::Config`] (naming the conversation and its length) when one is
    /// longer than `seq_len` under [`Overflow::Error`].
    fn batch(&self, items: Vec<ChatTokens>) -> qwen_data::Result<TokenBatch> {
        let mut out = TokenBatch { batch: items.len(), seq_len: self.seq_len, ..Default::default() };
        for (i, chat) in items.iter().enumerate() {
            let s = sft_sequence(chat, self.seq_len, self.pad_id, self.overflow)
                .map_err(|e| DataError::Config(format!("conversation {i}: {e}")))?;
            out.inputs.extend(s.input);
            out.targets.extend(s.target);
        }
        Ok(out)
    }
}

/// Groups conversations of `lengths` tokens (each counted as at most `seq_len`) into rows of
/// `seq_len` tokens: best-fit decreasing, longest first, each into the fullest row it still fits
/// (ties: the earlier row), else a new row. Returns each row's conversation indices in the order
/// they were placed. Deterministic: the same lengths always give the same rows.
pub fn pack_rows(lengths: &[usize], seq_len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i].min(seq_len)));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // (free tokens, row): the fullest row that still fits is the first with enough room.
    let mut free: BTreeSet<(usize, usize)> = BTreeSet::new();
    for i in order {
        let len = lengths[i].min(seq_len);
        match free.range((len, 0)..).next().copied() {
            Some((room, row)) => {
                free.remove(&(room, row));
                free.insert((room - len, row));
                rows[row].push(i);
            }
            None => {
                free.insert((seq_len - len, rows.len()));
                rows.push(vec![i]);
            }
        }
    }
    rows
}

/// Rows of packed conversations ([`pack_rows`]) → a [`TokenBatch`] with segments: in each row the
/// conversations one after the other, each with the ids and shifted labels [`sft_sequence`] gives
/// it alone, then padding (`pad_id`, ignored targets) as one more segment.
#[derive(Debug, Clone, Copy)]
pub struct PackedSftBatcher {
    pub seq_len: usize,
    pub pad_id: u32,
    pub overflow: Overflow,
}

impl Batcher<Vec<ChatTokens>, TokenBatch> for PackedSftBatcher {
    /// Fails with [`DataError::Config`] when a row's conversations do not fit `seq_len` together,
    /// or one is longer than `seq_len` under [`Overflow::Error`].
    fn batch(&self, rows: Vec<Vec<ChatTokens>>) -> qwen_data::Result<TokenBatch> {
        let mut out = TokenBatch { batch: rows.len(), seq_len: self.seq_len, ..Default::default() };
        for (r, row) in rows.iter().enumerate() {
            let mut used = 0;
            for (k, chat) in row.iter().enumerate() {
                let n = chat.ids.len();
                if n > self.seq_len && self.overflow == Overflow::Error {
                    return Err(DataError::Config(format!(
                        "row {r}, conversation {k}: {}",
                        AlignError::TooLong { len: n, limit: self.seq_len }
                    )));
                }
                let keep = n.min(self.seq_len);
                if used + keep > self.seq_len {
                    return Err(DataError::Config(format!(
                        "row {r}: its conversations need more than {} tokens",
                        self.seq_len
                    )));
                }
                let s = sft_sequence(chat, keep, self.pad_id, Overflow::Truncate)
                    .map_err(|e| DataError::Config(format!("row {r}, conversation {k}: {e}")))?;
                out.inputs.extend(s.input);
                out.targets.extend(s.target);
                out.segments.extend(std::iter::repeat_n(k as u32, keep));
                used += keep;
            }
            let pad = self.seq_len - used;
            out.inputs.extend(std::iter::repeat_n(self.pad_id, pad));
            out.targets.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
            out.segments.extend(std::iter::repeat_n(row.len() as u32, pad));
        }
        Ok(out)
    }
}
