//! Alignment for the Qwen model on burn 0.21: what the Qwen report does after pretraining, and DPO.
//!
//! - [`sft`]: ChatML conversations → sequences with Qwen's `finetune.py` loss mask; training is the
//!   pretraining [`Trainer`](qwen_train::Trainer) on them.
//! - [`pairs`]: prompt + response rows with response-only targets and end positions; comparisons
//!   ([`Pair`], [`PairBatch`]) rendered from preference records.
//! - [`logprob`]: per-token and per-sequence log-probabilities of chosen tokens, in the graph.
//! - [`reward`]: [`ScoreModel`] (trunk + scalar head), the pairwise loss, [`RewardTrainer`] for
//!   preference-model pretraining and then fine-tuning on comparisons.
//! - [`ppo`]: [`PpoTrainer`] with policy, value, reference and reward models, KL-penalized rewards,
//!   GAE, clipped policy and value losses, value warm-up and an optional pretraining loss.
//! - [`dpo`]: [`DpoTrainer`], the policy against a frozen reference on comparisons.
//! - [`grpo`]: [`GrpoTrainer`], group-relative RL (groups of sampled responses, group-normalised
//!   advantages, no value model, k3 KL to the reference) with rewards from a reward model or a
//!   [`Verifier`].
//! - [`compare`]: two policies on the same checked prompts ([`Flips`]: the prompts a stage turned
//!   right and wrong, and McNemar's exact test of the split).
//! - [`run`]: each stage as a config-driven run ([`SftConfig`], [`RewardConfig`], [`PpoRunConfig`],
//!   [`DpoRunConfig`], [`GrpoRunConfig`] → [`Run`]) with a metrics JSONL, atomic checkpoints, its config saved in its
//!   output folder, and exact resume after a kill.
//!
//! Every trainer updates through the training crate's one [`Stepper`] (the pretraining
//! trainer's checks, clipping and AdamW), refuses a NaN/Inf loss or gradient norm with
//! [`AlignError::NonFinite`] and leaves the model untouched.
//!
//! The losses are plain functions of tensors, usable on their own:
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//!
//! let device = Default::default();
//! let t = |v: f32| Tensor::<Flex, 1>::from_floats([v], &device);
//! // A policy equal to its reference: every implicit reward is 0 and the DPO loss is ln 2.
//! let loss = qwen_align::dpo_loss(t(-3.0), t(-5.0), t(-3.0), t(-5.0), 0.1);
//! assert!((loss.into_scalar() - std::f32::consts::LN_2).abs() < 1e-6);
//! // GAE with γ = λ = 1 over a two-token response rewarded 1 at the end, values 0: advantages 1, 1.
//! let (advantages, returns) = qwen_align::gae(&[0.0, 1.0], &[0.0, 0.0], 1.0, 1.0);
//! assert_eq!((advantages, returns), (vec![1.0, 1.0], vec![1.0, 1.0]));
//! ```

mod checkpoint;
pub mod compare;
pub mod dpo;
mod error;
pub mod grpo;
pub mod logprob;
pub mod pairs;
pub mod ppo;
pub mod reward;
pub mod run;
pub mod sft;

pub use compare::{sign_test, Flips};
pub use dpo::{dpo_loss, DpoConfig, DpoStats, DpoStep, DpoTrainer};
pub use error::{AlignError, Result};
pub use grpo::{
    group_advantages, grpo_clip_fractions, grpo_loss, grpo_token_weights, verifier, Decode, ExactMatch, GrpoBatch,
    GrpoConfig, GrpoLoss, GrpoReward, GrpoStats, GrpoTrainer, Verifier, VERIFIERS,
};
pub use logprob::{sequence_logprobs, tempered, token_logprobs};
pub use pairs::{prompt_ids, Pair, PairBatch, ResponseBatch};
pub use ppo::{
    clipped_policy_loss, clipped_value_loss, gae, kl_penalized_rewards, ratio_stats, value_clip_fraction, whiten,
    KlEstimator, PpoConfig, PpoOptim, PpoStats, PpoTrainer, RewardNorm, Rollout, RunningMoments, ScorePlacement,
    UpdateStats,
};
/// The one update step, shared with pretraining (re-exported from `qwen-train`).
pub use qwen_train::{constant, Applied, Stepper};
pub use reward::{evaluate_pairs, pairwise_loss, PairStats, RewardStep, RewardTrainer, ScoreModel};
pub use run::{
    load_config, DpoRun, DpoRunConfig, EpochSampler, GrpoRun, GrpoRunConfig, PpoBatch, PpoRun, PpoRunConfig,
    RewardConfig, RewardRun, RewardStage, Run, RunConfig, SftBatch, SftConfig, SftRun, Stage, StepData,
};
/// `policy` for one training forward: with LoRA, a copy whose adapters' dropout masks are seeded by
/// (`step`, `micro`), so a resumed run draws the masks an uninterrupted one drew (the trainers'
/// checkpoints do not keep the seeds); without LoRA, the policy itself. The copy shares the
/// parameters, so its gradients are the policy's.
pub(crate) fn dropout_seeded<B: burn::tensor::backend::Backend>(
    policy: &qwen_model::QwenModel<B>,
    step: u64,
    micro: u64,
) -> std::borrow::Cow<'_, qwen_model::QwenModel<B>> {
    if policy.has_lora() {
        std::borrow::Cow::Owned(policy.clone().reseed_lora(qwen_train::lora_seed(0, step, micro)))
    } else {
        std::borrow::Cow::Borrowed(policy)
    }
}

pub use sft::{pack_rows, sft_labels, sft_sequence, Overflow, PackedSftBatcher, SftBatcher};
