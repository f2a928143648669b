//! Log-probabilities of chosen tokens under a model: what DPO compares between policy and
//! reference, and what PPO's ratios and KL penalty are made of.
//!
//! Both functions take logits `[batch, seq, vocab]` and flat `[batch * seq]` targets where
//! [`qwen_train::IGNORE_INDEX`] marks positions that do not count (prompt, padding). They stay in
//! the graph, so on an autodiff backend their gradients flow back into the model. The per-token
//! one is the training crate's (its cross-entropy is built on it).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
pub use qwen_train::token_logprobs;

use crate::error::Result;

/// The sum of [`token_logprobs`] over each row: `log p(response | prompt)`, `[batch]`.
pub fn sequence_logprobs<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Result<Tensor<B, 1>> {
    let b = logits.dims()[0];
    Ok(token_logprobs(logits, targets)?.sum_dim(1).reshape([b]))
}

/// `logits / temperature`: the distribution a sampler at that temperature draws from. PPO and GRPO
/// take their log-probs (ratios, KL, entropy) from it, as TRL divides the policy's and the
/// reference's logits by the rollout temperature before the log-softmax; at 1 the logits as they are.
pub fn tempered<B: Backend, const D: usize>(logits: Tensor<B, D>, temperature: f32) -> Tensor<B, D> {
    if temperature == 1.0 {
        logits
    } else {
        logits.div_scalar(temperature)
    }
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
