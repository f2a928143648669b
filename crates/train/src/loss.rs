//! Next-token cross-entropy over logits `[batch, seq, vocab]` and targets `[batch, seq]`.
//!
//! Targets equal to [`IGNORE_INDEX`] (`u32::MAX`, PyTorch's `-100` in spirit) contribute nothing;
//! the mean is over the other tokens. The log-probabilities come from burn's `log_softmax`
//! (max-subtracted), so large logits do not overflow.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::{Result, TrainError};

/// A target that is not learned from (padding, or a masked prompt).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Summed negative log-likelihood over the non-ignored targets, and their number.
///
/// The sum is a `[1]` tensor; dividing it by a token count of several micro-batches gives the
/// token-weighted mean that gradient accumulation needs.
pub fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Result<(Tensor<B, 1>, usize)> {
    let [b, s, v] = logits.dims();
    if targets.len() != b * s {
        return Err(TrainError::Batch(format!("{} targets for logits of {b}x{s}", targets.len())));
    }
    let mut index = Vec::with_capacity(targets.len());
    let mut mask = Vec::with_capacity(targets.len());
    let mut count = 0usize;
    for &t in targets {
        if t == IGNORE_INDEX {
            index.push(0i64);
            mask.push(0f32);
        } else {
            if t as usize >= v {
                return Err(TrainError::Batch(format!("target {t} outside the vocabulary of {v}")));
            }
            index.push(t as i64);
            mask.push(1f32);
            count += 1;
        }
    }
    let device = logits.device();
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(index, [b * s, 1]), &device);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [b * s]), &device);
    let logp = log_softmax(logits.reshape([b * s, v]), 1);
    let picked = logp.gather(1, index).reshape([b * s]);
    Ok((picked.mul(mask).sum().neg(), count))
}

/// Mean negative log-likelihood over the non-ignored targets, a `[1]` tensor.
///
/// # Errors
/// [`TrainError::Batch`] if the shapes disagree, a target is out of the vocabulary, or every
/// target is ignored.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Result<Tensor<B, 1>> {
    let (sum, count) = cross_entropy_sum(logits, targets)?;
    if count == 0 {
        return Err(TrainError::Batch("every target is ignored".into()));
    }
    Ok(sum.div_scalar(count as f64))
}
