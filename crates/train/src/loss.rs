//! Next-token cross-entropy over logits `[batch, seq, vocab]` and targets `[batch, seq]`.
//!
//! Targets equal to [`IGNORE_INDEX`] (`u32::MAX`, PyTorch's `-100` in spirit) contribute nothing;
//! the mean is over the other tokens. The log-probabilities come from burn's `log_softmax`
//! (max-subtracted), so large logits do not overflow.
//!
//! Training uses [`cross_entropy_fused`]: the same loss and gradient with fewer passes over the
//! `[tokens, vocab]` logits (see its docs).

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::{Result, TrainError};

/// A target that is not learned from (padding, or a masked prompt).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Summed negative log-likelihood over the non-ignored targets, and their number.
///
/// The sum is a `[1]` tensor; dividing it by a token count of several micro-batches gives the
/// token-weighted mean that gradient accumulation needs.
pub fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Result<(Tensor<B, 1>, usize)> {
    let [b, s, v] = logits.dims();
    let (index, mask, count) = target_index(targets, b * s, v)?;
    let device = logits.device();
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(index, [b * s, 1]), &device);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [b * s]), &device);
    let logp = log_softmax(logits.reshape([b * s, v]), 1);
    let picked = logp.gather(1, index).reshape([b * s]);
    Ok((picked.mul(mask).sum().neg(), count))
}

/// Gather indices (ignored targets point at 0), a 0/1 mask and the number of counted targets.
fn target_index(targets: &[u32], n: usize, vocab: usize) -> Result<(Vec<i64>, Vec<f32>, usize)> {
    if targets.len() != n {
        return Err(TrainError::Batch(format!("{} targets for {n} logit rows", targets.len())));
    }
    let mut index = Vec::with_capacity(n);
    let mut mask = Vec::with_capacity(n);
    let mut count = 0usize;
    for &t in targets {
        if t == IGNORE_INDEX {
            index.push(0i64);
            mask.push(0f32);
        } else {
            if t as usize >= vocab {
                return Err(TrainError::Batch(format!("target {t} outside the vocabulary of {vocab}")));
            }
            index.push(t as i64);
            mask.push(1f32);
            count += 1;
        }
    }
    Ok((index, mask, count))
}

/// What [`cross_entropy_fused`] returns.
pub struct FusedLoss<B: AutodiffBackend> {
    /// Summed negative log-likelihood of the counted targets (f64, before `scale`).
    pub nll_sum: f64,
    /// Targets counted.
    pub count: usize,
    /// A scalar whose gradient with respect to the logits is that of `scale * nll_sum`; call
    /// `.backward()` on it. Its value is not the loss.
    pub surrogate: Tensor<B, 1>,
}

/// Cross-entropy for training, with the gradient computed in closed form.
///
/// Through autodiff, `log_softmax` is recorded as five element-wise operations over the
/// `[tokens, vocab]` logits (max-shift, exp, sum, log, subtract), each allocating and traversing a
/// tensor as large as the logits forward and again backward — on CPU at a 32k vocabulary that is
/// hundreds of MB per micro-batch. Here the backend's fused softmax runs once outside the graph,
/// the gradient `scale * mask * (softmax - onehot(target))` is formed in place, and the graph only
/// sees `sum(logits * gradient)`, whose derivative with respect to the logits is exactly that
/// gradient. The loss value is `-ln p[target]` from the same softmax (a target whose probability
/// underflows f32 counts 87.3 nats; its gradient is still exact). NaN or infinite logits give a
/// NaN `nll_sum`, which the trainer reports as [`TrainError::NonFinite`].
pub fn cross_entropy_fused<B: AutodiffBackend>(
    logits: Tensor<B, 3>,
    targets: &[u32],
    scale: f64,
) -> Result<FusedLoss<B>> {
    let [b, s, v] = logits.dims();
    let n = b * s;
    let (index, mask, count) = target_index(targets, n, v)?;
    let device = logits.device();
    let logits = logits.reshape([n, v]);
    let index = Tensor::<B::InnerBackend, 2, Int>::from_data(TensorData::new(index, [n, 1]), &device);
    let weight: Vec<f32> = mask.iter().map(|&m| m * scale as f32).collect();
    let weight = Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(weight, [n, 1]), &device);

    let probs = softmax(logits.clone().inner(), 1);
    let picked = probs.clone().gather(1, index.clone()).reshape([n]);
    let mask_t = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(mask, [n]), &device);
    // A NaN/Inf logit makes its row's softmax NaN: keep that visible (clamping would hide it).
    let poisoned = picked.clone().is_nan().any().into_scalar().elem::<bool>();
    let nll = picked.clamp_min(f32::MIN_POSITIVE).log().neg().mul(mask_t).sum();
    let nll_sum = if poisoned { f64::NAN } else { nll.into_scalar().elem::<f64>() };

    let minus_one = Tensor::<B::InnerBackend, 2>::full([n, 1], -1.0, &device);
    let grad = probs.scatter(1, index, minus_one, IndexingUpdateOp::Add).mul(weight);
    let surrogate = logits.mul(Tensor::from_inner(grad)).sum();
    Ok(FusedLoss { nll_sum, count, surrogate })
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
