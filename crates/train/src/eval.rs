//! Held-out evaluation: mean next-token loss and perplexity, no gradients.
//!
//! Sums are kept in f64 over batches and divided once by the number of counted targets, so the
//! result does not depend on how the data was cut into batches.

use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;
use serde::{Deserialize, Serialize};

use qwen_data::TokenBatch;
use qwen_model::{CausalLm, Mode};

use crate::error::{Result, TrainError};
use crate::loss::cross_entropy_sum;

/// What [`evaluate`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    /// Mean negative log-likelihood per target, in nats.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Targets counted.
    pub tokens: usize,
}

/// Loss and perplexity of `model` on `batches` in `mode` ([`Mode::Training`] for the plain model,
/// [`Mode::Inference`] to let the configured long-context extensions apply).
///
/// # Errors
/// [`TrainError::Batch`] if there is nothing to count or a batch is malformed;
/// [`TrainError::NonFinite`] (step 0) if the loss is NaN/Inf; model errors as they come.
pub fn evaluate<B: Backend, M: CausalLm<B>>(model: &M, batches: &[TokenBatch], mode: Mode) -> Result<EvalStats> {
    let mut sum = 0f64;
    let mut tokens = 0usize;
    for b in batches {
        if b.batch * b.seq_len == 0 || b.inputs.len() != b.batch * b.seq_len {
            return Err(TrainError::Batch(format!("batch {}x{} with {} inputs", b.batch, b.seq_len, b.inputs.len())));
        }
        let logits = model.logits(model.hidden(&crate::trainer::model_batch(model, b)?, mode)?);
        let (s, n) = cross_entropy_sum(logits, &b.targets)?;
        sum += s.into_scalar().elem::<f64>();
        tokens += n;
    }
    if tokens == 0 {
        return Err(TrainError::Batch("nothing to evaluate".into()));
    }
    let loss = sum / tokens as f64;
    if !loss.is_finite() {
        return Err(TrainError::NonFinite { step: 0, what: "evaluation loss" });
    }
    Ok(EvalStats { loss, perplexity: loss.exp(), tokens })
}
