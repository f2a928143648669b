//! One optimizer step over several micro-batches: forward in training mode, token-weighted
//! cross-entropy, backward per micro-batch with gradients accumulated, global-norm clipping,
//! the AdamW update with decoupled weight decay on matrices ([`crate::optim::QwenAdamW`]).
//!
//! Mixed precision: with [`TrainConfig::precision`] = [`Precision::Bf16`] the model's matmuls
//! run in bf16 while the parameters, and so the optimizer's updates, stay f32 master weights
//! (burn 0.21 has no autocast; `qwen_model::Precision` casts around each matmul).
//!
//! Loss scaling for accumulation: each micro-batch's summed loss is divided by the number of
//! non-ignored targets over *all* the micro-batches, so the accumulated gradient equals the
//! gradient of one big batch (micro-batches with more real tokens weigh more).

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use qwen_data::TokenBatch;
use qwen_model::{Batch, CausalLm, Mode, Precision, Qwen, QwenModel};

use crate::error::{Result, TrainError};
use crate::loss::{head_cross_entropy_fused, IGNORE_INDEX};
use crate::optim::OptimConfig;
use crate::schedule::Schedule;
use crate::step::Stepper;

/// Everything that defines a run besides the model and the data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub schedule: Schedule,
    pub optim: OptimConfig,
    /// The run's seed (saved with checkpoints; the data loader keeps its own).
    pub seed: u64,
    /// Matmuls in bf16 with f32 master weights ([`Precision::Bf16`]), or all f32.
    #[serde(default)]
    pub precision: Precision,
}

impl TrainConfig {
    /// `schedule` with the report's AdamW settings, full precision.
    pub fn new(schedule: Schedule, seed: u64) -> Self {
        Self { schedule, optim: OptimConfig::default(), seed, precision: Precision::Full }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        self.optim.validate()
    }
}

/// What one [`Trainer::train_step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The step just taken, counting from 1.
    pub step: u64,
    /// Token-weighted mean loss over the micro-batches, before the update.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// The learning rate used.
    pub lr: f64,
    /// Targets that counted (not [`IGNORE_INDEX`]).
    pub tokens: usize,
}

/// The model, its optimizer, the schedule and the step counter (the last three: a [`Stepper`]).
pub struct Trainer<B: AutodiffBackend> {
    pub(crate) model: QwenModel<B>,
    pub(crate) stepper: Stepper<B, Qwen<B>>,
    pub(crate) config: TrainConfig,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer at step 0 with a fresh optimizer.
    pub fn new(mut model: QwenModel<B>, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        model.precision = config.precision;
        Ok(Self { model, stepper: Stepper::new(config.optim, config.schedule)?, config })
    }

    pub fn model(&self) -> &QwenModel<B> {
        &self.model
    }

    /// Direct access, e.g. to change a weight in a test. Keep parameter ids unchanged
    /// (`Param::map`), or the optimizer state no longer matches.
    pub fn model_mut(&mut self) -> &mut QwenModel<B> {
        &mut self.model
    }

    pub fn into_model(self) -> QwenModel<B> {
        self.model
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps taken.
    pub fn step(&self) -> u64 {
        self.stepper.step()
    }

    /// The rate the next step will use.
    pub fn next_lr(&self) -> f64 {
        self.stepper.next_lr()
    }

    /// Loss and gradients of the micro-batches (accumulated, token-weighted), without updating.
    /// Returns `(loss, grads, tokens)`.
    pub fn loss_and_grads(&self, batches: &[TokenBatch]) -> Result<(f32, GradientsParams, usize)> {
        let tokens = count_targets(batches)?;
        if tokens == 0 {
            return Err(TrainError::Batch("every target is ignored".into()));
        }
        let (nll, grads) = self.nll_and_grads(batches, tokens)?;
        Ok(((nll / tokens as f64) as f32, grads, tokens))
    }

    /// Summed NLL of `batches` and the gradients of `sum NLL / normalizer`, accumulated.
    pub(crate) fn nll_and_grads(&self, batches: &[TokenBatch], normalizer: usize) -> Result<(f64, GradientsParams)> {
        if !self.model.has_lora() {
            return lm_nll_and_grads(&self.model, batches, normalizer);
        }
        // LoRA dropout: each micro-batch's masks from a seed of (run seed, step, micro-batch), so
        // a resumed run draws the masks an uninterrupted one drew.
        let mut acc = GradientsAccumulator::<Qwen<B>>::new();
        let mut nll = 0f64;
        for (i, b) in batches.iter().enumerate() {
            let seed = lora_seed(self.config.seed, self.stepper.step(), i as u64);
            let model = self.model.clone().reseed_lora(seed);
            let (n, grads) = lm_nll_and_grads(&model, std::slice::from_ref(b), normalizer)?;
            nll += n;
            acc.accumulate(&self.model.model, grads);
        }
        Ok((nll, acc.grads()))
    }

    /// One optimizer step over `batches` (gradient accumulation over all of them).
    ///
    /// # Errors
    /// [`TrainError::NonFinite`] if the loss or the gradient norm is NaN/Inf: then neither the
    /// model, the optimizer state nor the step counter changes. [`TrainError::Batch`] and
    /// [`TrainError::Model`] for malformed input.
    pub fn train_step(&mut self, batches: &[TokenBatch]) -> Result<StepStats> {
        let (loss, grads, tokens) = self.loss_and_grads(batches)?;
        self.apply(loss, grads, tokens)
    }

    /// Checks, clips and applies gradients whose loss was `loss` over `tokens` targets
    /// ([`Stepper::apply`]).
    pub(crate) fn apply(&mut self, loss: f32, grads: GradientsParams, tokens: usize) -> Result<StepStats> {
        let applied = self.stepper.apply(&mut self.model.model, loss, grads)?;
        Ok(StepStats { step: applied.step, loss, grad_norm: applied.grad_norm, lr: applied.lr, tokens })
    }

    /// The model on the inner (non-autodiff) backend, e.g. for evaluation or saving.
    pub fn valid_model(&self) -> QwenModel<B::InnerBackend> {
        self.model.valid()
    }
}

/// The LoRA dropout seed of micro-batch `micro` of update `step` of a run seeded `seed`.
pub fn lora_seed(seed: u64, step: u64, micro: u64) -> u64 {
    let mut z = seed ^ 0x4c6f_5261_4472_6f70;
    for v in [step, micro] {
        z = z.wrapping_add(v.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
    }
    z
}

/// Counted (non-ignored) targets of well-formed micro-batches.
pub(crate) fn count_targets(batches: &[TokenBatch]) -> Result<usize> {
    if batches.is_empty() {
        return Err(TrainError::Batch("no micro-batches".into()));
    }
    let mut tokens = 0usize;
    for b in batches {
        let n = b.batch * b.seq_len;
        if n == 0 || b.inputs.len() != n || b.targets.len() != n {
            return Err(TrainError::Batch(format!(
                "batch {}x{} with {} inputs and {} targets",
                b.batch,
                b.seq_len,
                b.inputs.len(),
                b.targets.len()
            )));
        }
        tokens += b.targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    }
    Ok(tokens)
}

/// `b`'s inputs as a batch for `model`: left-padded rows, or packed ones with their segments.
pub fn model_batch<B: Backend, M: CausalLm<B>>(model: &M, b: &TokenBatch) -> Result<Batch<B>> {
    let rows: Vec<Vec<u32>> = (0..b.batch).map(|i| b.input_row(i).to_vec()).collect();
    let batch = model.batch(&rows)?;
    Ok(match b.packed_segments() {
        Some(seg) => batch.with_segments(seg.to_vec())?,
        None => batch,
    })
}

/// The next-token loss of any [`CausalLm`] on `batches`: the summed NLL and the gradients of
/// `sum NLL / normalizer`, accumulated over the micro-batches. The head is fused with the loss
/// ([`head_cross_entropy_fused`]): its gradient is computed in closed form outside the graph and
/// added to the trunk's.
pub fn lm_nll_and_grads<B: AutodiffBackend, M: CausalLm<B> + AutodiffModule<B>>(
    model: &M,
    batches: &[TokenBatch],
    normalizer: usize,
) -> Result<(f64, GradientsParams)> {
    let mut acc = GradientsAccumulator::<M>::new();
    let mut nll = 0f64;
    let scale = 1.0 / normalizer as f64;
    for b in batches {
        let (hidden, aux) = model.hidden_and_aux(&model_batch(model, b)?, Mode::Training)?;
        let fused = head_cross_entropy_fused(hidden, model.lm_head(), &b.targets, scale, model.precision())?;
        nll += fused.nll_sum;
        // An MoE model's load-balancing term, weighted by this micro-batch's share of the tokens
        // (one batch: the mean NLL plus the term, as transformers' loss is).
        let mut surrogate = fused.surrogate.clone();
        if let Some(aux) = aux {
            surrogate = surrogate + aux * (fused.count as f64 * scale) as f32;
        }
        let mut grads = GradientsParams::from_grads(surrogate.backward(), model);
        fused.add_to(model.lm_head(), &mut grads);
        acc.accumulate(model, grads);
    }
    Ok((nll, acc.grads()))
}
