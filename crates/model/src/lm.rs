//! The causal-LM face that training, scoring and alignment are written against: a trunk that maps
//! a (padded) batch to final-norm hidden states, and a head that maps them to logits. Training
//! fuses the head with its loss (it needs the head's weight, not only its output); a reward or
//! value model puts its own head on the same hidden states.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::batch::Batch;
use crate::config::QwenConfig;
use crate::error::Result;
use crate::qwen::{project, Mode, Precision, QwenModel};

/// A causal language model on backend `B`.
pub trait CausalLm<B: Backend>: Module<B> {
    /// The architecture (vocabulary size, context, RoPE, ...).
    fn config(&self) -> &QwenConfig;
    /// Final-norm hidden states `[batch, seq, hidden]` of a batch, without a cache.
    fn hidden(&self, batch: &Batch<B>, mode: Mode) -> Result<Tensor<B, 3>>;
    /// [`CausalLm::hidden`] and the auxiliary loss the architecture adds to its training loss:
    /// for an MoE config with `output_router_logits`, `router_aux_loss_coef ×` the load-balancing
    /// loss, as transformers adds it; `None` otherwise.
    fn hidden_and_aux(&self, batch: &Batch<B>, mode: Mode) -> Result<(Tensor<B, 3>, Option<Tensor<B, 1>>)> {
        Ok((self.hidden(batch, mode)?, None))
    }
    /// The LM head, `[hidden, vocab]`.
    fn lm_head(&self) -> &Linear<B>;
    /// The float type of the matmuls.
    fn precision(&self) -> Precision;
    /// Host rows as a batch on the model's device: left-padded, ids checked against the vocabulary.
    fn batch(&self, rows: &[Vec<u32>]) -> Result<Batch<B>>;
    /// Logits `[batch, seq, vocab]` from hidden states.
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        project(self.lm_head(), hidden, self.precision())
    }
    /// Logits of host rows at every position, without a cache.
    fn logits_of(&self, rows: &[Vec<u32>], mode: Mode) -> Result<Tensor<B, 3>> {
        Ok(self.logits(self.hidden(&self.batch(rows)?, mode)?))
    }
}

impl<B: Backend> CausalLm<B> for QwenModel<B> {
    fn config(&self) -> &QwenConfig {
        &self.config
    }
    fn hidden(&self, batch: &Batch<B>, mode: Mode) -> Result<Tensor<B, 3>> {
        QwenModel::hidden(self, batch, mode)
    }
    fn hidden_and_aux(&self, batch: &Batch<B>, mode: Mode) -> Result<(Tensor<B, 3>, Option<Tensor<B, 1>>)> {
        if !self.config.moe.as_ref().is_some_and(|m| m.output_router_logits) {
            return Ok((QwenModel::hidden(self, batch, mode)?, None));
        }
        let (hidden, router) = self.hidden_and_router(batch, mode)?;
        let aux = self.router_aux_loss(batch, &router);
        Ok((hidden, aux))
    }
    fn lm_head(&self) -> &Linear<B> {
        &self.model.lm_head
    }
    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.head(hidden)
    }
    fn precision(&self) -> Precision {
        self.precision
    }
    fn batch(&self, rows: &[Vec<u32>]) -> Result<Batch<B>> {
        QwenModel::batch(self, rows)
    }
}
