//! Prompt + response sequences, batched: the input of reward models, DPO and PPO.
//!
//! A row is the prompt's ids followed by the response's, right-padded. Its targets are the next
//! token on response positions only (the prompt is never learned from, nor scored), and its
//! `end` is the index of its last real token, where a reward or value head reads its score (the
//! report's reward model "reads the reward at a specific end token": the response ends with
//! `<|im_end|>`).

use qwen_data::PreferenceRecord;
use qwen_tokenizer::{AllowedSpecial, ChatMl, Message, Role, Tokenize, DEFAULT_SYSTEM};
use qwen_train::IGNORE_INDEX;

use crate::error::{AlignError, Result};

/// Rows of prompt + response, with response-only targets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseBatch {
    /// `rows.len()` sequences of `seq_len` ids.
    pub rows: Vec<Vec<u32>>,
    /// Flat `[rows, seq_len]`: the next id where it belongs to the response, else [`IGNORE_INDEX`].
    pub targets: Vec<u32>,
    /// Index of each row's last real token.
    pub ends: Vec<usize>,
    pub seq_len: usize,
}

impl ResponseBatch {
    /// Builds rows from `(prompt, response)` pairs, padded with `pad_id` to the longest; fails
    /// with [`AlignError::TooLong`] past `max_len` and [`AlignError::Batch`] on an empty prompt
    /// or response.
    pub fn new(items: &[(&[u32], &[u32])], pad_id: u32, max_len: usize) -> Result<Self> {
        if items.is_empty() {
            return Err(AlignError::Batch("no sequences".into()));
        }
        let seq_len = items.iter().map(|(p, r)| p.len() + r.len()).max().unwrap_or(0);
        if seq_len > max_len {
            return Err(AlignError::TooLong { len: seq_len, limit: max_len });
        }
        let mut out = Self { seq_len, ..Default::default() };
        for (i, (prompt, response)) in items.iter().enumerate() {
            if prompt.is_empty() || response.is_empty() {
                return Err(AlignError::Batch(format!("sequence {i} has an empty prompt or response")));
            }
            let n = prompt.len() + response.len();
            let mut row = Vec::with_capacity(seq_len);
            row.extend_from_slice(prompt);
            row.extend_from_slice(response);
            // Position t predicts row[t + 1]: the response's tokens are predicted from
            // positions prompt.len() - 1 ..= n - 2.
            let mut targets = vec![IGNORE_INDEX; seq_len];
            targets[prompt.len() - 1..n - 1].copy_from_slice(response);
            row.resize(seq_len, pad_id);
            out.rows.push(row);
            out.targets.extend(targets);
            out.ends.push(n - 1);
        }
        Ok(out)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A tokenized comparison: a prompt and two responses, the preferred one first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl Pair {
    /// Renders a preference record as Qwen chats: the prompt through `make_context` (system,
    /// earlier turns, the user message, an open assistant turn), each response as plain text
    /// (special-token strings stay text) closed by `<|im_end|>`. Earlier turns must alternate
    /// user/assistant.
    pub fn from_record(tokenizer: &dyn Tokenize, record: &PreferenceRecord) -> Result<Self> {
        let chat = ChatMl::new(tokenizer)?;
        let prompt = prompt_ids(tokenizer, record.system.as_deref(), &record.prompt)?;
        let im_end = chat.im_end();
        let response = |text: &str| -> Result<Vec<u32>> {
            let mut ids = tokenizer.encode(text, &AllowedSpecial::None)?;
            ids.push(im_end);
            Ok(ids)
        };
        Ok(Self { prompt, chosen: response(&record.chosen)?, rejected: response(&record.rejected)? })
    }
}

/// A prompt (earlier user/assistant turns, then the user's message) rendered as Qwen's
/// `make_context` does: `system` (else Qwen's default), the turns, an open assistant turn. What
/// preference pairs and RL prompts (PPO, GRPO) start from.
pub fn prompt_ids(tokenizer: &dyn Tokenize, system: Option<&str>, prompt: &[Message]) -> Result<Vec<u32>> {
    let chat = ChatMl::new(tokenizer)?;
    let (query, earlier) = prompt.split_last().ok_or(AlignError::Batch("empty prompt".into()))?;
    if earlier.len() % 2 != 0 {
        return Err(AlignError::Batch("earlier turns must be user/assistant pairs".into()));
    }
    let mut history = Vec::with_capacity(earlier.len() / 2);
    for turn in earlier.chunks(2) {
        if turn[0].role != Role::User || turn[1].role != Role::Assistant {
            return Err(AlignError::Batch("earlier turns must alternate user, assistant".into()));
        }
        history.push((turn[0].content.as_str(), turn[1].content.as_str()));
    }
    let system = system.unwrap_or(DEFAULT_SYSTEM);
    Ok(chat.make_context(system, &history, &query.content, usize::MAX)?.ids)
}

/// `pairs` comparisons as one [`ResponseBatch`]: rows `0..pairs` are the chosen sequences, rows
/// `pairs..2 * pairs` the rejected ones in the same order (one forward pass scores both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairBatch {
    pub rows: ResponseBatch,
    pub pairs: usize,
}

impl PairBatch {
    pub fn new(pairs: &[Pair], pad_id: u32, max_len: usize) -> Result<Self> {
        let items: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(pairs.iter().map(|p| (p.prompt.as_slice(), p.rejected.as_slice())))
            .collect();
        Ok(Self { rows: ResponseBatch::new(&items, pad_id, max_len)?, pairs: pairs.len() })
    }
}
