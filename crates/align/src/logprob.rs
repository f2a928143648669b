//! Log-probabilities of chosen tokens under a model: what DPO compares between policy and
//! reference, and what PPO's ratios and KL penalty are made of.
//!
//! Both functions take logits `[batch, seq, vocab]` and flat `[batch * seq]` targets where
//! [`IGNORE_INDEX`] marks positions that do not count (prompt, padding). They stay in the graph,
//! so on an autodiff backend their gradients flow back into the model.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use qwen_train::IGNORE_INDEX;

use crate::error::{AlignError, Result};

/// `log p(target)` at every position, `[batch, seq]`, 0 where the target is ignored.
pub fn token_logprobs<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Result<Tensor<B, 2>> {
    let [b, s, v] = logits.dims();
    if targets.len() != b * s {
        return Err(AlignError::Batch(format!("{} targets for {b}x{s} logits", targets.len())));
    }
    if let Some(&t) = targets.iter().find(|&&t| t != IGNORE_INDEX && t as usize >= v) {
        return Err(AlignError::Batch(format!("target {t} outside the vocabulary of {v}")));
    }
    let index: Vec<i64> = targets.iter().map(|&t| if t == IGNORE_INDEX { 0 } else { t as i64 }).collect();
    let mask: Vec<f32> = targets.iter().map(|&t| (t != IGNORE_INDEX) as u8 as f32).collect();
    let device = logits.device();
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(index, [b * s, 1]), &device);
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, s]), &device);
    let logp = log_softmax(logits.reshape([b * s, v]), 1).gather(1, index).reshape([b, s]);
    Ok(logp.mul(mask))
}

/// The sum of [`token_logprobs`] over each row: `log p(response | prompt)`, `[batch]`.
pub fn sequence_logprobs<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Result<Tensor<B, 1>> {
    let b = logits.dims()[0];
    Ok(token_logprobs(logits, targets)?.sum_dim(1).reshape([b]))
}

/// A small host vector as a `[n]` tensor.
pub(crate) fn vector<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// A tensor's values on the host.
pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    // `into_vec` fails only on a dtype mismatch, which `convert` rules out.
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 tensor data")
}
