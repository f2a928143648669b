//! Direct preference optimization (Rafailov et al., 2023), beyond the report: the policy learns
//! from comparisons directly, against a frozen reference copy of itself, with no reward model.
//!
//! `loss = −log σ(β · ((log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))))`, with `log π(·)`
//! the summed log-probability of a response's tokens given its prompt (TRL's sigmoid loss).
//! The implicit rewards `β · (log π − log π_ref)` are reported, with the fraction of pairs where
//! the chosen one is higher.

use std::path::Path;

use burn::optim::GradientsParams;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use qwen_model::{CausalLm, Mode, Qwen, QwenModel};
use qwen_train::{OptimConfig, Schedule, Stepper};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_policy, save_policy};
use crate::error::{AlignError, Result};
use crate::logprob::{host, sequence_logprobs, vector};
use crate::pairs::PairBatch;
use crate::reward::neg_log_sigmoid;

/// DPO settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    /// How far the policy may move from the reference (TRL's default 0.1).
    pub beta: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

impl DpoConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(AlignError::Config(format!("beta {} must be finite and > 0", self.beta)));
        }
        Ok(())
    }
}

/// The DPO loss, `[1]`, from summed log-probs of the chosen and rejected responses under the
/// policy and the reference (each `[pairs]`).
pub fn dpo_loss<B: Backend>(
    policy_chosen: Tensor<B, 1>,
    policy_rejected: Tensor<B, 1>,
    reference_chosen: Tensor<B, 1>,
    reference_rejected: Tensor<B, 1>,
    beta: f64,
) -> Tensor<B, 1> {
    let logits = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected);
    log_sigmoid(logits.mul_scalar(beta)).mean().neg()
}

/// Loss and implicit rewards of a set of comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DpoStats {
    pub loss: f32,
    /// Mean `β (log π(c) − log π_ref(c))`.
    pub chosen_reward: f32,
    /// Mean `β (log π(r) − log π_ref(r))`.
    pub rejected_reward: f32,
    /// Fraction of pairs with a higher implicit reward for the chosen response.
    pub accuracy: f32,
    pub pairs: usize,
}

impl DpoStats {
    fn from_logprobs(policy: &[f32], reference: &[f32], pairs: usize, beta: f64) -> Self {
        let beta = beta as f32;
        let mut s = Self { pairs, ..Self::default() };
        for i in 0..pairs {
            let c = beta * (policy[i] - reference[i]);
            let r = beta * (policy[pairs + i] - reference[pairs + i]);
            let d = c - r;
            s.loss += neg_log_sigmoid(d);
            s.chosen_reward += c;
            s.rejected_reward += r;
            s.accuracy += (d > 0.0) as u8 as f32;
        }
        let n = pairs.max(1) as f32;
        s.loss /= n;
        s.chosen_reward /= n;
        s.rejected_reward /= n;
        s.accuracy /= n;
        s
    }

    /// Pair-weighted mean of several batches' stats.
    pub fn merge(parts: &[DpoStats]) -> Self {
        let n: usize = parts.iter().map(|p| p.pairs).sum();
        let w = |f: fn(&DpoStats) -> f32| parts.iter().map(|p| f(p) * p.pairs as f32).sum::<f32>() / n.max(1) as f32;
        Self {
            loss: w(|p| p.loss),
            chosen_reward: w(|p| p.chosen_reward),
            rejected_reward: w(|p| p.rejected_reward),
            accuracy: w(|p| p.accuracy),
            pairs: n,
        }
    }
}

/// What one DPO update did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoStep {
    pub step: u64,
    pub lr: f64,
    pub grad_norm: f32,
    /// The batch's stats before the update.
    #[serde(flatten)]
    pub stats: DpoStats,
}

/// Summed response log-probs of every row of `batch` (chosen rows, then rejected), `[2 · pairs]`.
fn pair_logprobs<B: Backend, M: CausalLm<B>>(model: &M, batch: &PairBatch) -> Result<Tensor<B, 1>> {
    let logits = model.logits_of(&batch.rows.rows, Mode::Training)?;
    sequence_logprobs(logits, &batch.rows.targets)
}

/// The policy, its frozen reference and the optimizer.
pub struct DpoTrainer<B: AutodiffBackend> {
    pub policy: QwenModel<B>,
    pub reference: QwenModel<B::InnerBackend>,
    pub config: DpoConfig,
    stepper: Stepper<B, Qwen<B>>,
}

impl<B: AutodiffBackend> DpoTrainer<B> {
    /// The reference is a frozen copy of `policy` as it is now (usually the SFT model).
    pub fn new(policy: QwenModel<B>, config: DpoConfig, optim: OptimConfig, schedule: Schedule) -> Result<Self> {
        config.validate()?;
        let reference = policy.valid();
        Ok(Self { policy, reference, config, stepper: Stepper::new(optim, schedule)? })
    }

    /// Updates taken.
    pub fn step(&self) -> u64 {
        self.stepper.step()
    }

    /// Writes the policy (HF layout, f32), the optimizer state and a state file into `dir`,
    /// atomically. The reference is not saved: it is the policy the run started from, which
    /// [`DpoTrainer::resume`] takes again.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        qwen_train::persist::write_dir_atomically(dir, |tmp| save_policy(&self.policy, &self.stepper, tmp, ""))
    }

    /// The trainer [`DpoTrainer::save_checkpoint`] wrote to `dir`; `reference` is the policy the
    /// run started from, `config`, `optim` and `schedule` the run's.
    pub fn resume(
        dir: impl AsRef<Path>,
        reference: QwenModel<B::InnerBackend>,
        config: DpoConfig,
        optim: OptimConfig,
        schedule: Schedule,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let dir = qwen_train::persist::resume_dir(dir)?;
        let (policy, stepper) = load_policy(&dir, "", optim, schedule, device)?;
        Ok(Self { policy, reference, config, stepper })
    }

    /// One update on `batch`.
    pub fn train_step(&mut self, batch: &PairBatch) -> Result<DpoStep> {
        let n = batch.pairs;
        let reference = host(pair_logprobs(&self.reference, batch)?);
        // LoRA dropout masks seeded by the step (a resumed run draws the same ones).
        let policy = pair_logprobs(&*crate::dropout_seeded(&self.policy, self.stepper.step(), 0), batch)?;
        let stats = DpoStats::from_logprobs(&host(policy.clone()), &reference, n, self.config.beta);
        let device = policy.device();
        let r = vector::<B>(reference, &device);
        let loss = dpo_loss(
            policy.clone().narrow(0, 0, n),
            policy.narrow(0, n, n),
            r.clone().narrow(0, 0, n),
            r.narrow(0, n, n),
            self.config.beta,
        );
        let grads = GradientsParams::from_grads(loss.backward(), &self.policy.model);
        let applied = self.stepper.apply(&mut self.policy.model, stats.loss, grads)?;
        Ok(DpoStep { step: applied.step, lr: applied.lr, grad_norm: applied.grad_norm, stats })
    }

    /// Loss and implicit rewards on held-out batches, without gradients.
    pub fn evaluate(&self, batches: &[PairBatch]) -> Result<DpoStats> {
        let policy = self.policy.valid();
        let parts = batches
            .iter()
            .map(|b| {
                let p = host(pair_logprobs(&policy, b)?);
                let r = host(pair_logprobs(&self.reference, b)?);
                Ok(DpoStats::from_logprobs(&p, &r, b.pairs, self.config.beta))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DpoStats::merge(&parts))
    }
}
