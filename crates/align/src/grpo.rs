//! Group relative policy optimization (GRPO; Shao et al. 2024, DeepSeekMath), beyond the report:
//! the RL most Qwen fine-tunes use now. No value model: each prompt gets a group of `group_size`
//! sampled responses, and a response's advantage is its reward against its group's,
//! `(r − mean_group) / (std_group + 1e-4)` (TRL's `scale_rewards="group"`, unbiased std), the same
//! for every token of the response.
//!
//! One [`GrpoTrainer::step`]:
//! 1. rollout: `group_size` responses per prompt, sampled from the policy;
//! 2. rewards from a reward model ([`GrpoReward::Model`], read at each response's end token) or a
//!    program that checks the response ([`GrpoReward::Verifier`]: a [`Verifier`] such as
//!    [`ExactMatch`] against the prompt record's reference answer);
//! 3. group-normalised advantages ([`group_advantages`]);
//! 4. `iterations` updates (TRL's `num_iterations`, μ) on the per-token loss
//!    `−min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A) + β k3`, where `ρ = π / π_old` and
//!    `k3 = e^(log π_ref − log π) − (log π_ref − log π) − 1` the KL to the frozen reference, aggregated
//!    over tokens as TRL's `loss_type` says ([`GrpoLoss`], [`grpo_token_weights`]).
//!
//! The formulas are TRL 1.16's `GRPOTrainer` (`_generate_and_score_completions`, `_compute_loss`),
//! checked on fixed tensors against TRL's own code (`tests/fixtures/align/trl_losses.json`).
//! [`GrpoStats`] carry TRL's metric names (`reward`, `reward_std`, `frac_reward_zero_std`, `kl`,
//! `clip_ratio/region_mean`, `completions/mean_length`, ...).

use std::path::Path;

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use qwen_model::{CausalLm, Mode, Qwen, QwenModel, SamplingConfig};
use qwen_train::persist::{read_json, write_dir_atomically, write_json};
use qwen_train::{OptimConfig, Schedule, Stepper};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_policy, save_policy};
use crate::error::{AlignError, Result};
use crate::logprob::{host, tempered, token_logprobs, vector};
use crate::pairs::ResponseBatch;
use crate::ppo::{index_tensor, mean_entropy, response_logprobs, sample, Sampled, SamplingDef};
use crate::reward::ScoreModel;

/// How the per-token losses of a batch are averaged (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLoss {
    /// Mean over each response's tokens, then over responses (the GRPO paper; long responses'
    /// tokens weigh less).
    Grpo,
    /// Mean over every response token of the batch.
    Bnpo,
    /// Sum over the batch's tokens / (responses × `max_new_tokens`) (Dr. GRPO: no length bias).
    DrGrpo,
    /// Sum over the batch's tokens / the generation batch's token count (DAPO; TRL 1.16's default).
    /// One update sees the whole generation batch here, so this equals [`GrpoLoss::Bnpo`].
    #[default]
    Dapo,
}

/// GRPO settings; [`Default`] is TRL 1.16's `GRPOConfig` except `beta` (TRL 0.0: no reference
/// model; here 0.04, the DeepSeekMath value and TRL's earlier default, so the KL term is on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoConfig {
    /// Responses sampled per prompt, G (TRL `num_generations` 8).
    pub group_size: usize,
    /// Weight of the k3 KL to the reference in the loss (0 = off).
    pub beta: f64,
    /// Lower ratio clip ε_low (TRL `epsilon` 0.2).
    pub epsilon_low: f64,
    /// Upper ratio clip ε_high (TRL: `epsilon_high` = `epsilon` unless set).
    pub epsilon_high: f64,
    pub loss: GrpoLoss,
    /// Divide advantages by the group's standard deviation (TRL `scale_rewards="group"`), or only
    /// subtract the group mean (`"none"`).
    pub scale_rewards: bool,
    /// Updates on each generation batch (TRL `num_iterations` μ, 1).
    pub iterations: usize,
    /// TRL `max_completion_length` (512).
    pub max_new_tokens: usize,
    /// Rollout sampling (TRL: temperature 1, top-p 1). The log-probs are the policy's and the
    /// reference's at this temperature (TRL's `logits / temperature`).
    #[serde(with = "SamplingDef")]
    pub sampling: SamplingConfig,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            group_size: 8,
            beta: 0.04,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            loss: GrpoLoss::Dapo,
            scale_rewards: true,
            iterations: 1,
            max_new_tokens: 512,
            sampling: SamplingConfig { temperature: 1.0, top_p: 1.0, top_k: 0, ..SamplingConfig::default() },
        }
    }
}

impl GrpoConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = self.group_size >= 2
            && self.beta >= 0.0
            && self.beta.is_finite()
            && self.epsilon_low > 0.0
            && self.epsilon_low < 1.0
            && self.epsilon_high > 0.0
            && self.iterations > 0
            && self.max_new_tokens > 0
            && self.sampling.temperature.is_finite()
            && self.sampling.temperature > 0.0;
        if !ok {
            return Err(AlignError::Config(format!(
                "GRPO settings out of range (a group needs at least 2 responses): {self:?}"
            )));
        }
        qwen_model::Sampler::new(self.sampling.clone())?;
        Ok(())
    }
}

/// Group-normalised advantages of `rewards` (consecutive groups of `group`):
/// `(r − mean_group) / (std_group + 1e-4)` with the unbiased std when `scale`, else `r − mean_group`;
/// and whether each response's group has zero spread (all rewards equal: advantage 0, no signal).
pub fn group_advantages(rewards: &[f32], group: usize, scale: bool) -> (Vec<f32>, Vec<bool>) {
    let mut adv = Vec::with_capacity(rewards.len());
    let mut zero = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group.max(1)) {
        let n = g.len() as f32;
        let mean = g.iter().sum::<f32>() / n;
        let std =
            if g.len() > 1 { (g.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / (n - 1.0)).sqrt() } else { 0.0 };
        for &r in g {
            adv.push(if scale { (r - mean) / (std + 1e-4) } else { r - mean });
            zero.push(std.abs() <= 1e-8);
        }
    }
    (adv, zero)
}

/// The weight of each token (responses of `lengths` tokens, in order) in the batch loss
/// `Σ weight · per_token_loss` for `loss` (`max_len`: the longest a response may be).
pub fn grpo_token_weights(lengths: &[usize], loss: GrpoLoss, max_len: usize) -> Vec<f32> {
    let rows = lengths.len().max(1) as f32;
    let total = lengths.iter().sum::<usize>().max(1) as f32;
    lengths
        .iter()
        .flat_map(|&n| {
            let w = match loss {
                GrpoLoss::Grpo => 1.0 / (n.max(1) as f32 * rows),
                GrpoLoss::Bnpo | GrpoLoss::Dapo => 1.0 / total,
                GrpoLoss::DrGrpo => 1.0 / (rows * max_len.max(1) as f32),
            };
            std::iter::repeat_n(w, n)
        })
        .collect()
}

/// The GRPO loss, `[1]`: `Σ_t w_t · (−min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t) + β k3_t)`
/// over response tokens, `ρ = exp(logp − old_logp)`, `k3 = e^(ref − logp) − (ref − logp) − 1`.
#[allow(clippy::too_many_arguments)]
pub fn grpo_loss<B: Backend>(
    logp: Tensor<B, 1>,
    old_logp: Tensor<B, 1>,
    ref_logp: Tensor<B, 1>,
    advantages: Tensor<B, 1>,
    weights: Tensor<B, 1>,
    beta: f64,
    epsilon_low: f64,
    epsilon_high: f64,
) -> Tensor<B, 1> {
    let ratio = (logp.clone() - old_logp).exp();
    let unclipped = ratio.clone() * advantages.clone();
    let clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) * advantages;
    let mut per_token = unclipped.min_pair(clipped).neg();
    if beta != 0.0 {
        let d = ref_logp - logp;
        let k3 = (d.clone().exp() - d).sub_scalar(1.0);
        per_token = per_token + k3.mul_scalar(beta);
    }
    (per_token * weights).sum()
}

/// Fractions of tokens (TRL's `clip_ratio/low_mean`, `high_mean`, `region_mean`): the ratio below
/// `1 − ε_low` with a negative advantage, above `1 + ε_high` with a positive one, either.
pub fn grpo_clip_fractions(
    logp: &[f32],
    old_logp: &[f32],
    advantages: &[f32],
    epsilon_low: f64,
    epsilon_high: f64,
) -> (f32, f32, f32) {
    let n = logp.len().max(1) as f32;
    let (mut low, mut high) = (0usize, 0usize);
    for ((&p, &q), &a) in logp.iter().zip(old_logp).zip(advantages) {
        let r = (p - q).exp();
        low += (r < (1.0 - epsilon_low) as f32 && a < 0.0) as usize;
        high += (r > (1.0 + epsilon_high) as f32 && a > 0.0) as usize;
    }
    (low as f32 / n, high as f32 / n, (low + high) as f32 / n)
}

/// A program that scores a response (TRL's reward functions): the reward of the response's text
/// given the prompt record's reference answer.
pub trait Verifier: Send + Sync {
    /// The name a command selects it by (`--verifier NAME`).
    fn name(&self) -> &'static str;
    /// The reward of `response` (decoded, without its stop token).
    fn reward(&self, response: &str, answer: Option<&str>) -> Result<f32>;
}

/// 1 when the response equals the reference answer after trimming whitespace, else 0. A prompt
/// without an answer is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactMatch;

impl Verifier for ExactMatch {
    fn name(&self) -> &'static str {
        "exact_match"
    }
    fn reward(&self, response: &str, answer: Option<&str>) -> Result<f32> {
        let answer =
            answer.ok_or_else(|| AlignError::Batch("exact_match needs an \"answer\" in every prompt".into()))?;
        Ok((response.trim() == answer.trim()) as u8 as f32)
    }
}

/// The built-in verifiers' names.
pub const VERIFIERS: &[&str] = &["exact_match"];

/// The built-in verifier called `name`.
pub fn verifier(name: &str) -> Result<Box<dyn Verifier>> {
    match name {
        "exact_match" => Ok(Box::new(ExactMatch)),
        other => Err(AlignError::Config(format!("unknown verifier {other:?} (known: {})", VERIFIERS.join(", ")))),
    }
}

/// Turns a response's ids (stop token removed) into text for a verifier.
pub type Decode = Box<dyn Fn(&[u32]) -> Result<String> + Send + Sync>;

/// Where GRPO's rewards come from.
pub enum GrpoReward<B: Backend> {
    /// A reward model's score at each response's end token (frozen).
    Model(ScoreModel<B>),
    /// A program's check of the decoded response against the prompt's answer.
    Verifier { verifier: Box<dyn Verifier>, decode: Decode },
}

/// One GRPO step's input: prompts (token ids) and, for a verifier, their reference answers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpoBatch {
    pub prompts: Vec<Vec<u32>>,
    /// One per prompt (or empty when the reward is a model).
    pub answers: Vec<Option<String>>,
}

/// What one GRPO step did, under TRL's metric names.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GrpoStats {
    pub step: u64,
    /// Mean reward of the rollout.
    pub reward: f32,
    /// Standard deviation (unbiased) of the rollout's rewards.
    pub reward_std: f32,
    /// Fraction of responses whose group's rewards are all equal (no learning signal).
    pub frac_reward_zero_std: f32,
    /// Mean per-token k3 KL to the reference (first update of the step).
    pub kl: f32,
    /// Mean entropy of the policy's next-token distribution at response tokens (first update).
    pub entropy: f32,
    #[serde(rename = "clip_ratio/low_mean")]
    pub clip_low: f32,
    #[serde(rename = "clip_ratio/high_mean")]
    pub clip_high: f32,
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_region: f32,
    /// The loss of the first update.
    pub loss: f32,
    #[serde(rename = "completions/mean_length")]
    pub mean_length: f32,
    /// Fraction of responses cut at `max_new_tokens` without a stop token.
    #[serde(rename = "completions/clipped_ratio")]
    pub clipped_ratio: f32,
    pub lr: f64,
    pub grad_norm: f32,
}

/// File name of the GRPO state (steps taken) in a checkpoint.
pub const GRPO_STATE_FILE: &str = "grpo_state.json";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct GrpoState {
    step: u64,
}

/// The policy, its frozen reference, the reward source and the optimizer.
pub struct GrpoTrainer<B: AutodiffBackend> {
    pub policy: QwenModel<B>,
    pub reference: QwenModel<B::InnerBackend>,
    pub reward: GrpoReward<B::InnerBackend>,
    pub config: GrpoConfig,
    /// Generation stops after one of these (e.g. `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    pub pad_id: u32,
    stepper: Stepper<B, Qwen<B>>,
    step: u64,
}

impl<B: AutodiffBackend> GrpoTrainer<B> {
    /// `policy` (usually the SFT model) is also frozen as the reference.
    pub fn new(
        policy: QwenModel<B>,
        reward: GrpoReward<B::InnerBackend>,
        config: GrpoConfig,
        optim: OptimConfig,
        schedule: Schedule,
        stop_ids: Vec<u32>,
        pad_id: u32,
    ) -> Result<Self> {
        config.validate()?;
        let reference = policy.valid();
        Ok(Self {
            policy,
            reference,
            reward,
            config,
            stop_ids,
            pad_id,
            stepper: Stepper::new(optim, schedule)?,
            step: 0,
        })
    }

    /// GRPO steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Writes the policy (with its optimizer state) and the step count into `dir`, atomically.
    /// The reference (the policy the run started from) and the reward source are inputs, given
    /// again to [`GrpoTrainer::resume`].
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        write_dir_atomically(dir, |tmp| {
            save_policy(&self.policy, &self.stepper, tmp, "")?;
            Ok(write_json(tmp.join(GRPO_STATE_FILE), &GrpoState { step: self.step })?)
        })
    }

    /// The trainer [`GrpoTrainer::save_checkpoint`] wrote to `dir`.
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        dir: impl AsRef<Path>,
        reference: QwenModel<B::InnerBackend>,
        reward: GrpoReward<B::InnerBackend>,
        config: GrpoConfig,
        optim: OptimConfig,
        schedule: Schedule,
        stop_ids: Vec<u32>,
        pad_id: u32,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let dir = &qwen_train::persist::resume_dir(dir)?;
        let state: GrpoState = read_json(dir.join(GRPO_STATE_FILE))?;
        let (policy, stepper) = load_policy(dir, "", optim, schedule, device)?;
        Ok(Self { policy, reference, reward, config, stop_ids, pad_id, stepper, step: state.step })
    }

    /// The rewards of `responses` to `queries` (`answers`: one per query, for a verifier).
    fn rewards(&self, batch: &ResponseBatch, responses: &[Vec<u32>], answers: &[Option<&str>]) -> Result<Vec<f32>> {
        match &self.reward {
            GrpoReward::Model(m) => Ok(host(m.rewards(&batch.rows, &batch.ends)?)),
            GrpoReward::Verifier { verifier, decode } => responses
                .iter()
                .zip(answers)
                .map(|(r, a)| {
                    let body = match r.last() {
                        Some(t) if self.stop_ids.contains(t) => &r[..r.len() - 1],
                        _ => &r[..],
                    };
                    verifier.reward(&decode(body)?, *a)
                })
                .collect(),
        }
    }

    /// One GRPO step on `batch`: sample, score, `iterations` updates.
    pub fn step(&mut self, batch: &GrpoBatch) -> Result<GrpoStats> {
        let c = self.config.clone();
        if !batch.answers.is_empty() && batch.answers.len() != batch.prompts.len() {
            return Err(AlignError::Batch(format!(
                "{} answers for {} prompts",
                batch.answers.len(),
                batch.prompts.len()
            )));
        }
        let g = c.group_size;
        let queries: Vec<Vec<u32>> = batch.prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), g)).collect();
        let answers: Vec<Option<&str>> =
            (0..queries.len()).map(|i| batch.answers.get(i / g).and_then(|a| a.as_deref())).collect();
        let policy = self.policy.valid();
        let Sampled { responses, batch: rows, positions } =
            sample(&policy, &queries, c.max_new_tokens, &self.stop_ids, &c.sampling, self.step, self.pad_id)?;
        let logp_of = |m: &QwenModel<B::InnerBackend>| response_logprobs(m, &rows, &positions, c.sampling.temperature);
        let old_logprobs = logp_of(&policy)?;
        let ref_logprobs = logp_of(&self.reference)?;
        drop(policy);

        let rewards = self.rewards(&rows, &responses, &answers)?;
        let (advantages, zero_std) = group_advantages(&rewards, g, c.scale_rewards);
        let lengths: Vec<usize> = responses.iter().map(Vec::len).collect();
        let token_adv: Vec<f32> =
            advantages.iter().zip(&lengths).flat_map(|(&a, &n)| std::iter::repeat_n(a, n)).collect();
        let weights = grpo_token_weights(&lengths, c.loss, c.max_new_tokens);

        let n = rewards.len() as f32;
        let mean = rewards.iter().sum::<f32>() / n;
        let mut stats = GrpoStats {
            reward: mean,
            reward_std: (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / (n - 1.0).max(1.0)).sqrt(),
            frac_reward_zero_std: zero_std.iter().filter(|&&z| z).count() as f32 / n,
            mean_length: lengths.iter().sum::<usize>() as f32 / n,
            clipped_ratio: responses.iter().filter(|r| !r.last().is_some_and(|t| self.stop_ids.contains(t))).count()
                as f32
                / n,
            ..GrpoStats::default()
        };
        let device = self.policy.device();
        let t = |v: &[f32]| vector::<B>(v.to_vec(), &device);
        for iteration in 0..c.iterations {
            // LoRA dropout masks seeded by (step, iteration): a resumed run draws the same ones.
            let policy = crate::dropout_seeded(&self.policy, self.step, iteration as u64);
            let logits = tempered(policy.logits_of(&rows.rows, Mode::Training)?, c.sampling.temperature);
            let logp = token_logprobs(logits.clone(), &rows.targets)?
                .reshape([-1])
                .select(0, index_tensor::<B>(&positions, &device));
            let loss = grpo_loss(
                logp.clone(),
                t(&old_logprobs),
                t(&ref_logprobs),
                t(&token_adv),
                t(&weights),
                c.beta,
                c.epsilon_low,
                c.epsilon_high,
            );
            let value = host(loss.clone())[0];
            if iteration == 0 {
                let new_logp = host(logp);
                stats.kl = new_logp
                    .iter()
                    .zip(&ref_logprobs)
                    .map(|(&p, &q)| crate::ppo::KlEstimator::K3.per_token(p, q))
                    .sum::<f32>()
                    / new_logp.len().max(1) as f32;
                (stats.clip_low, stats.clip_high, stats.clip_region) =
                    grpo_clip_fractions(&new_logp, &old_logprobs, &token_adv, c.epsilon_low, c.epsilon_high);
                stats.entropy = mean_entropy(logits.inner(), &positions);
                stats.loss = value;
            }
            drop(policy);
            let grads = GradientsParams::from_grads(loss.backward(), &self.policy.model);
            let applied = self.stepper.apply(&mut self.policy.model, value, grads)?;
            (stats.lr, stats.grad_norm) = (applied.lr, applied.grad_norm);
        }
        self.step += 1;
        stats.step = self.step;
        Ok(stats)
    }

    /// The policy on the inner backend, for evaluation or generation.
    pub fn valid_policy(&self) -> QwenModel<B::InnerBackend> {
        self.policy.valid()
    }
}
