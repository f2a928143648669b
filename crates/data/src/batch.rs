//! Batching without a tensor library: the training crate maps [`TokenBatch`] to burn tensors.

use crate::error::{DataError, Result};
use crate::pack::Sequence;

/// Turns a list of items into one batch.
pub trait Batcher<I, O> {
    fn batch(&self, items: Vec<I>) -> Result<O>;
}

/// Token ids of a batch, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
    /// Packed rows: a segment id per input, row-major `[batch, seq_len]`. A run of equal ids in a
    /// row is one sequence: its tokens attend only to earlier tokens of the run and their positions
    /// restart at 0 where it starts. Empty when every row is one sequence.
    pub segments: Vec<u32>,
}

impl TokenBatch {
    /// Row `i` of the inputs.
    pub fn input_row(&self, i: usize) -> &[u32] {
        &self.inputs[i * self.seq_len..(i + 1) * self.seq_len]
    }
    /// Row `i` of the targets.
    pub fn target_row(&self, i: usize) -> &[u32] {
        &self.targets[i * self.seq_len..(i + 1) * self.seq_len]
    }
    /// The segment ids of every input when the rows are packed, `None` otherwise.
    pub fn packed_segments(&self) -> Option<&[u32]> {
        (!self.segments.is_empty()).then_some(self.segments.as_slice())
    }
}

/// Concatenates [`Sequence`]s of one length into a [`TokenBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenBatcher;

impl Batcher<Sequence, TokenBatch> for TokenBatcher {
    /// Fails with [`DataError::Config`] if the sequences do not all have the same length, or an
    /// input and its target differ in length.
    fn batch(&self, items: Vec<Sequence>) -> Result<TokenBatch> {
        let seq_len = items.first().map_or(0, |s| s.input.len());
        let mut out = TokenBatch {
            inputs: Vec::with_capacity(items.len() * seq_len),
            targets: Vec::with_capacity(items.len() * seq_len),
            batch: items.len(),
            seq_len,
            segments: Vec::new(),
        };
        for s in items {
            if s.input.len() != seq_len || s.target.len() != seq_len {
                return Err(DataError::Config(format!(
                    "sequence lengths {}/{} differ from the batch's {seq_len}",
                    s.input.len(),
                    s.target.len()
                )));
            }
            out.inputs.extend(s.input);
            out.targets.extend(s.target);
        }
        Ok(out)
    }
}
