//! Next-token cross-entropy over logits `[batch, seq, vocab]` and targets `[batch, seq]`.
//!
//! Targets equal to [`IGNORE_INDEX`] (`u32::MAX`, PyTorch's `-100` in spirit) contribute nothing;
//! the mean is over the other tokens. The log-probabilities come from burn's `log_softmax`
//! (max-subtracted), so large logits do not overflow.
//!
//! Training uses [`head_cross_entropy_fused`]: the LM head and the loss in one step outside the
//! autodiff graph, a chunk of rows at a time, with the gradient in closed form. [`cross_entropy_fused`]
//! is the same closed-form gradient for callers that already hold logits in the graph.

use std::ops::Range;

use burn::module::ParamId;
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};
use qwen_model::Precision;

use crate::error::{Result, TrainError};

/// A target that is not learned from (padding, or a masked prompt).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// `log p(target)` at every position, `[batch, seq]`, 0 where the target is [`IGNORE_INDEX`]; in
/// the graph, so its gradient reaches the model (alignment's sequence log-probs are row sums of it).
///
/// # Errors
/// [`TrainError::Batch`] if there is not one target per position or a target is outside the vocabulary.
pub fn token_logprobs<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Result<Tensor<B, 2>> {
    let [b, s, v] = logits.dims();
    let (index, mask, _) = target_index(targets, b * s, v)?;
    let device = logits.device();
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(index, [b * s, 1]), &device);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, s]), &device);
    let logp = log_softmax(logits.reshape([b * s, v]), 1);
    Ok(logp.gather(1, index).reshape([b, s]).mul(mask))
}

/// Summed negative log-likelihood over the non-ignored targets, and their number.
///
/// The sum is a `[1]` tensor; dividing it by a token count of several micro-batches gives the
/// token-weighted mean that gradient accumulation needs.
pub fn cross_entropy_sum<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Result<(Tensor<B, 1>, usize)> {
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    Ok((token_logprobs(logits, targets)?.sum().neg(), count))
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
    let targets = Targets::new(targets, n, v, scale, &logits.device())?;
    let logits = logits.reshape([n, v]);
    let (picked, grad) = targets.softmax_gradient(logits.clone().inner(), 0..n);
    let nll_sum = targets.nll_sum(picked);
    let surrogate = logits.mul(Tensor::from_inner(grad)).sum();
    Ok(FusedLoss { nll_sum, count: targets.count, surrogate })
}

/// What [`head_cross_entropy_fused`] returns.
pub struct HeadLoss<B: AutodiffBackend> {
    /// Summed negative log-likelihood of the counted targets (f64, before `scale`).
    pub nll_sum: f64,
    /// Targets counted.
    pub count: usize,
    /// A scalar whose gradient with respect to the hidden states is that of `scale * nll_sum`;
    /// call `.backward()` on it. Its value is not the loss.
    pub surrogate: Tensor<B, 1>,
    /// The gradient of `scale * nll_sum` with respect to the head's weight `[hidden, vocab]`
    /// (burn's `Linear` layout), computed outside the graph: add it to the gradients of
    /// `head.weight` (see [`HeadLoss::add_to`]).
    pub weight_grad: Tensor<B::InnerBackend, 2>,
    /// The same for the head's bias, when it has one (Qwen's does not).
    pub bias_grad: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> HeadLoss<B> {
    /// Adds the head's gradients to `grads` (summing with what the graph gave the same
    /// parameters, e.g. a tied embedding).
    pub fn add_to(self, head: &Linear<B>, grads: &mut GradientsParams) {
        fn add<B: Backend, const D: usize>(grads: &mut GradientsParams, id: ParamId, g: Tensor<B, D>) {
            let sum = plus(grads.remove::<B, D>(id), g);
            grads.register(id, sum);
        }
        if !head.weight.is_require_grad() {
            // A frozen head: no gradient for it (and a tied embedding is frozen with it).
            return;
        }
        add(grads, head.weight.id, self.weight_grad);
        if let (Some(bias), Some(g)) = (&head.bias, self.bias_grad) {
            add(grads, bias.id, g);
        }
    }
}

/// Logits per chunk of [`head_cross_entropy_fused`]: at most this many live at once
/// (256 MiB in f32), whatever the batch and vocabulary. Smaller chunks cost more than they save
/// on CPU (128-row chunks: head + loss 190 -> 290 ms at the tiny config), so this only splits
/// batches whose logits would be large.
const HEAD_CHUNK_LOGITS: usize = 64 << 20;

/// The LM head and cross-entropy fused: logits are formed, used and dropped a chunk of rows at a
/// time, outside the autodiff graph.
///
/// `hidden` is `[batch, seq, hidden]` (the final-norm states, [`qwen_model::QwenModel::hidden_mode`]),
/// `head` the LM head. Per chunk of rows: `logits = h W` (+ bias), the closed-form gradient
/// `G = scale * mask * (softmax - onehot)` as in [`cross_entropy_fused`], then `dh = G Wᵀ` and
/// `dW += hᵀ G`. The graph only sees `sum(hidden * dh)`. Against running the head inside the graph
/// this does the same three matmuls but never records, keeps or traverses a `[tokens, vocab]`
/// tensor for autodiff (at Qwen's 151,936-wide vocabulary and 4,096 tokens that tensor alone is
/// 2.5 GB in f32; here at most [`HEAD_CHUNK_LOGITS`] logits exist at once). With
/// [`Precision::Bf16`] the three matmuls run in bf16 with f32 results, like the model's.
///
/// # Errors
/// [`TrainError::Batch`] if there are no rows, the shapes disagree or a target is out of the vocabulary.
pub fn head_cross_entropy_fused<B: AutodiffBackend>(
    hidden: Tensor<B, 3>,
    head: &Linear<B>,
    targets: &[u32],
    scale: f64,
    precision: Precision,
) -> Result<HeadLoss<B>> {
    let [b, s, _] = hidden.dims();
    let v = head.weight.dims()[1];
    let n = b * s;
    let rows = n.div_ceil(n.saturating_mul(v).div_ceil(HEAD_CHUNK_LOGITS).max(1));
    head_cross_entropy_fused_in_chunks(hidden, head, targets, scale, precision, rows)
}

/// [`head_cross_entropy_fused`] with at most `rows_per_chunk` rows of logits at a time (at least
/// one): for a large vocabulary on a device with little memory, `rows_per_chunk * vocab` floats
/// is what the head needs beyond the model. Same result up to summation order.
///
/// # Errors
/// As [`head_cross_entropy_fused`].
pub fn head_cross_entropy_fused_in_chunks<B: AutodiffBackend>(
    hidden: Tensor<B, 3>,
    head: &Linear<B>,
    targets: &[u32],
    scale: f64,
    precision: Precision,
    rows_per_chunk: usize,
) -> Result<HeadLoss<B>> {
    let [b, s, d] = hidden.dims();
    let n = b * s;
    let w = head.weight.val().inner();
    let [wd, v] = w.dims();
    if wd != d {
        return Err(TrainError::Batch(format!("hidden size {d} but the head reads {wd}")));
    }
    let device = hidden.device();
    if n == 0 {
        return Err(TrainError::Batch("no hidden states".into()));
    }
    let targets = Targets::new(targets, n, v, scale, &device)?;
    let bias = head.bias.as_ref().map(|b| b.val().inner().unsqueeze::<2>());
    let hidden = hidden.reshape([n, d]);
    let h = hidden.clone().inner();

    let rows = rows_per_chunk.max(1);
    let train_head = head.weight.is_require_grad();
    let mut picked = Vec::new();
    let mut dh = Vec::new();
    let mut weight_grad = None;
    let mut bias_grad = None;
    for start in (0..n).step_by(rows) {
        let end = (start + rows).min(n);
        let h_c = h.clone().narrow(0, start, end - start);
        let logits = matmul(h_c.clone(), w.clone(), precision);
        let logits = match &bias {
            Some(bias) => logits + bias.clone(),
            None => logits,
        };
        let (p, g) = targets.softmax_gradient(logits, start..end);
        picked.push(p);
        dh.push(matmul(g.clone(), w.clone().transpose(), precision));
        if bias.is_some() {
            bias_grad = Some(plus(bias_grad, g.clone().sum_dim(0)));
        }
        // A frozen head (LoRA trains adapters only) needs no weight gradient.
        if train_head {
            weight_grad = Some(plus(weight_grad, matmul(h_c.transpose(), g, precision)));
        }
    }
    let nll_sum = targets.nll_sum(Tensor::cat(picked, 0));
    let dh = Tensor::<B, 2>::from_inner(Tensor::cat(dh, 0));
    Ok(HeadLoss {
        nll_sum,
        count: targets.count,
        surrogate: hidden.mul(dh).sum(),
        // Zeros when the head is frozen (then `add_to` ignores it); otherwise `n > 0` (checked
        // above), so there was at least one chunk.
        weight_grad: weight_grad.unwrap_or_else(|| Tensor::zeros([d, v], &device)),
        bias_grad: bias_grad.map(|g: Tensor<B::InnerBackend, 2>| g.reshape([v])),
    })
}

/// `acc + x`, or `x` when there is nothing yet.
fn plus<B: Backend, const D: usize>(acc: Option<Tensor<B, D>>, x: Tensor<B, D>) -> Tensor<B, D> {
    match acc {
        Some(acc) => acc + x,
        None => x,
    }
}

/// `a b` with the multiply in `precision` and the result in `a`'s float type.
fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>, precision: Precision) -> Tensor<B, 2> {
    match precision {
        Precision::Full => a.matmul(b),
        Precision::Bf16 => {
            let dtype = a.dtype();
            a.cast(FloatDType::BF16).matmul(b.cast(FloatDType::BF16)).cast(dtype)
        }
    }
}

/// A micro-batch's targets on the device, for the closed-form gradient.
struct Targets<B: Backend> {
    /// `[n, 1]` gather/scatter indices (ignored targets point at 0).
    index: Tensor<B, 2, Int>,
    /// `[n, 1]`: `scale` for counted targets, 0 for ignored ones.
    weight: Tensor<B, 2>,
    /// `[n]`: 1 for counted targets, 0 for ignored ones.
    mask: Tensor<B, 1>,
    count: usize,
}

impl<B: Backend> Targets<B> {
    fn new(targets: &[u32], n: usize, vocab: usize, scale: f64, device: &B::Device) -> Result<Self> {
        let (index, mask, count) = target_index(targets, n, vocab)?;
        let weight: Vec<f32> = mask.iter().map(|&m| m * scale as f32).collect();
        Ok(Self {
            index: Tensor::from_data(TensorData::new(index, [n, 1]), device),
            weight: Tensor::from_data(TensorData::new(weight, [n, 1]), device),
            mask: Tensor::from_data(TensorData::new(mask, [n]), device),
            count,
        })
    }

    /// For the logits of rows `rows`: the target probabilities `[rows]` and the gradient
    /// `scale * mask * (softmax - onehot(target))`, formed in place from one softmax.
    fn softmax_gradient(&self, logits: Tensor<B, 2>, rows: Range<usize>) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let len = rows.len();
        let index = self.index.clone().narrow(0, rows.start, len);
        let probs = softmax(logits, 1);
        let picked = probs.clone().gather(1, index.clone()).reshape([len]);
        let minus_one = Tensor::<B, 2>::full([len, 1], -1.0, &probs.device());
        let weight = self.weight.clone().narrow(0, rows.start, len);
        let grad = probs.scatter(1, index, minus_one, IndexingUpdateOp::Add).mul(weight);
        (picked, grad)
    }

    /// `-sum mask * ln p` over all rows, in f64; NaN when any probability is NaN (a NaN/Inf logit
    /// poisons its row's softmax: keep that visible, clamping would hide it).
    fn nll_sum(&self, picked: Tensor<B, 1>) -> f64 {
        let poisoned = picked.clone().is_nan().any().into_scalar().elem::<bool>();
        let nll = picked.clamp_min(f32::MIN_POSITIVE).log().neg().mul(self.mask.clone()).sum();
        if poisoned {
            f64::NAN
        } else {
            nll.into_scalar().elem::<f64>()
        }
    }
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
