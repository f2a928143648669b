//! PPO as the report runs it: four models — the policy and a value model (trained), a reference
//! policy and a reward model (frozen).
//!
//! One [`PpoTrainer::step`]:
//! 1. rollout: the policy samples `responses_per_query` responses per prompt (report: 2, top-p 0.9);
//! 2. scoring: the reward model's score at each response's end token, normalized by a running
//!    mean (report) or by the mean of the same prompt's other responses ([`RewardNorm`]), the
//!    per-token log-probs of the policy and of the reference, and the value model's values;
//! 3. rewards per token `−kl_coef · kl_t` (report: 0.04; `kl_t` by [`KlEstimator`], k1 =
//!    `log π − log π_ref` by default), plus the score on the last token (or one slot after it, as
//!    TRL: [`ScorePlacement`]); advantages by GAE (γ, λ), returns = advantages + values,
//!    advantages whitened as TRL's `masked_whiten` does;
//! 4. updates, `epochs` passes over the rollout in minibatches of `minibatch_rows` responses: the
//!    value model on the clipped value loss (report: clip 0.15) every step; the policy
//!    on the clipped surrogate (clip 0.2) only after `value_warmup_steps` (report: 50 value-only
//!    steps), optionally plus `ptx_coef ×` the LM loss on a pretraining batch (the report mixes
//!    pretraining gradients in to limit the alignment tax).
//!
//! The formulas follow TRL's `PPOTrainer` (`qwen-reference.md`): `pg = mean(max(−A·ρ, −A·clip(ρ,
//! 1 ± ε)))`, `vf = ½ mean(max((V − R)², (clip(V, V_old ± ε_v) − R)²))`.
//!
//! [`PpoStats`] are TRL's metrics under TRL's names (`objective/kl`, `policy/approxkl_avg`, ...):
//! the per-update ones ([`UpdateStats`]) are computed on every minibatch and averaged over all
//! epochs × minibatches, as TRL does.

use std::path::Path;

use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use qwen_data::TokenBatch;
use qwen_model::{CausalLm, GenerateConfig, Mode, Qwen, QwenModel, Sampler, SamplingConfig};
use qwen_train::persist::{read_json, write_dir_atomically, write_json};
use qwen_train::{cross_entropy, OptimConfig, Schedule, Stepper};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_policy, load_score_model, save_policy, save_score_model};
use crate::error::{AlignError, Result};
use crate::logprob::{host, tempered, token_logprobs, vector};
use crate::pairs::ResponseBatch;
use crate::reward::ScoreModel;

/// serde for [`SamplingConfig`] (the model crate does not derive it).
#[derive(Serialize, Deserialize)]
#[serde(remote = "SamplingConfig")]
pub(crate) struct SamplingDef {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    seed: u64,
}

/// How raw reward-model scores are normalized before they enter the rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardNorm {
    /// Scores as they are.
    None,
    /// Minus the running mean of every score seen so far (the report).
    #[default]
    RunningMean,
    /// Minus the running mean, divided by the running standard deviation.
    RunningMeanStd,
    /// Minus the mean score of the other responses to the same prompt (RLOO's leave-one-out
    /// baseline, Ahmadian et al. 2024; needs `responses_per_query` ≥ 2). A reward model trained on
    /// pairs fixes no level per prompt: its scores of one prompt's replies sit at an offset of
    /// their own, which a running mean leaves in the rewards and which the value model has to
    /// learn away. Here a prompt whose responses all score alike gives them no reward, and one
    /// whose responses differ pushes them apart by the reward model's preference.
    LeaveOneOut,
}

/// How the per-token KL penalty estimates `KL(π ‖ π_ref)` from the sampled token's log-probs
/// (Schulman, "Approximating KL divergence"; TRL's `kl_estimator`). With `r = log π_ref − log π`:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `k1 = −r = log π − log π_ref` (unbiased, can be negative; TRL PPO's default).
    #[default]
    K1,
    /// `k3 = (e^r − 1) − r` (unbiased, never negative, lower variance; TRL GRPO's).
    K3,
}

impl KlEstimator {
    /// The estimate at one sampled token.
    pub fn per_token(self, logp: f32, ref_logp: f32) -> f32 {
        let r = ref_logp - logp;
        match self {
            KlEstimator::K1 => -r,
            KlEstimator::K3 => r.exp_m1() - r,
        }
    }
}

/// The scores as they enter the rewards (`norm`); `moments` already holds them. Rows are
/// prompt-major, `k` responses per prompt (as [`PpoTrainer::rollout`] samples them).
fn normalize_scores(scores: &[f32], norm: RewardNorm, moments: &RunningMoments, k: usize) -> Vec<f32> {
    let mean = moments.mean;
    scores
        .iter()
        .enumerate()
        .map(|(i, &s)| match norm {
            RewardNorm::None => s,
            RewardNorm::RunningMean => (s as f64 - mean) as f32,
            RewardNorm::RunningMeanStd => ((s as f64 - mean) / (moments.std() + 1e-8)) as f32,
            RewardNorm::LeaveOneOut => {
                let group = &scores[i / k * k..((i / k + 1) * k).min(scores.len())];
                let others = group.iter().map(|&x| x as f64).sum::<f64>() - s as f64;
                (s as f64 - others / (group.len().max(2) - 1) as f64) as f32
            }
        })
        .collect()
}

/// Where a response's reward-model score enters its per-token rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorePlacement {
    /// On the response's last token (InstructGPT, OpenRLHF; the report reads the reward at the end
    /// token): GAE bootstraps 0 after it.
    #[default]
    LastToken,
    /// On one more slot after the response, whose value is the value model read at the last token
    /// (TRL's `PPOTrainer`: `rewards[sequence_lengths + 1] += scores`, values masked only after
    /// that slot; the value model is trained on that slot too). TRL falls back to the last token
    /// for a response that fills its padded width (it has no slot there); here the slot always
    /// exists.
    AfterResponse,
}

/// PPO settings; [`Default`] is the report's where it gives a value, TRL's otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoConfig {
    /// KL penalty coefficient (report 0.04).
    pub kl_coef: f64,
    /// Policy ratio clip ε (TRL 0.2; the report does not say).
    pub clip: f64,
    /// Value clip around the rollout's values (report 0.15).
    pub value_clip: f64,
    pub gamma: f32,
    pub lambda: f32,
    /// Passes over each rollout (TRL 4; the report does not say).
    pub epochs: usize,
    /// Rows (responses) per update within a pass; 0 = the whole rollout in one update. Each
    /// minibatch is one value and one policy update, so memory follows the minibatch.
    pub minibatch_rows: usize,
    /// Steps that update only the value model (report 50).
    pub value_warmup_steps: u64,
    /// Responses sampled per prompt (report 2).
    pub responses_per_query: usize,
    pub max_new_tokens: usize,
    /// Rollout sampling (report: top-p 0.9). The log-probs of the ratios, the KL and the entropy
    /// are the policy's and the reference's at this temperature (TRL's `logits / temperature`).
    #[serde(with = "SamplingDef")]
    pub sampling: SamplingConfig,
    pub reward_norm: RewardNorm,
    pub whiten_advantages: bool,
    /// Weight of the LM loss on a pretraining batch added to the policy loss (0 = off).
    pub ptx_coef: f64,
    /// The per-token KL estimate in the penalty and in `objective/kl` (TRL's default k1).
    #[serde(default)]
    pub kl_estimator: KlEstimator,
    /// Where the score enters the rewards (ours: the last token; TRL: one slot after).
    #[serde(default)]
    pub score_placement: ScorePlacement,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            kl_coef: 0.04,
            clip: 0.2,
            value_clip: 0.15,
            gamma: 1.0,
            lambda: 0.95,
            epochs: 4,
            minibatch_rows: 0,
            value_warmup_steps: 50,
            responses_per_query: 2,
            max_new_tokens: 64,
            sampling: SamplingConfig { temperature: 1.0, top_p: 0.9, ..SamplingConfig::default() },
            reward_norm: RewardNorm::RunningMean,
            whiten_advantages: true,
            ptx_coef: 0.0,
            kl_estimator: KlEstimator::K1,
            score_placement: ScorePlacement::LastToken,
        }
    }
}

impl PpoConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = self.kl_coef >= 0.0
            && self.clip > 0.0
            && self.value_clip > 0.0
            && (0.0..=1.0).contains(&self.gamma)
            && (0.0..=1.0).contains(&self.lambda)
            && self.epochs > 0
            && self.responses_per_query > 0
            && self.max_new_tokens > 0
            && self.ptx_coef >= 0.0
            && self.sampling.temperature.is_finite()
            && self.sampling.temperature > 0.0
            && (self.reward_norm != RewardNorm::LeaveOneOut || self.responses_per_query >= 2);
        if !ok {
            return Err(AlignError::Config(format!("PPO settings out of range: {self:?}")));
        }
        Sampler::new(self.sampling.clone())?;
        Ok(())
    }
}

/// Running mean and variance of a stream (Chan et al.'s parallel update).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RunningMoments {
    pub count: f64,
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl RunningMoments {
    pub fn update(&mut self, xs: &[f32]) {
        if xs.is_empty() {
            return;
        }
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        let m2 = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>();
        let total = self.count + n;
        let delta = mean - self.mean;
        self.m2 += m2 + delta * delta * self.count * n / total;
        self.mean += delta * n / total;
        self.count = total;
    }

    /// Population standard deviation so far.
    pub fn std(&self) -> f64 {
        if self.count > 0.0 {
            (self.m2 / self.count).sqrt()
        } else {
            0.0
        }
    }
}

/// Per-token rewards of one response: `−kl_coef · kl_t` (`kl_t` by `estimator`), plus `score` on
/// the last token, or, with [`ScorePlacement::AfterResponse`], on one more slot after it (then the
/// result has `logp.len() + 1` entries, and [`gae`] takes one more value: the value model's at the
/// last token).
pub fn kl_penalized_rewards(
    score: f32,
    logp: &[f32],
    ref_logp: &[f32],
    kl_coef: f32,
    estimator: KlEstimator,
    placement: ScorePlacement,
) -> Vec<f32> {
    let mut r: Vec<f32> = logp.iter().zip(ref_logp).map(|(&p, &q)| -kl_coef * estimator.per_token(p, q)).collect();
    match placement {
        ScorePlacement::LastToken => {
            if let Some(last) = r.last_mut() {
                *last += score;
            }
        }
        ScorePlacement::AfterResponse => r.push(score),
    }
    r
}

/// Generalized advantage estimation over one response (the value after its end is 0):
/// `δ_t = r_t + γ V_{t+1} − V_t`, `A_t = δ_t + γλ A_{t+1}`; returns `(advantages, A + V)`.
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lambda: f32) -> (Vec<f32>, Vec<f32>) {
    let n = rewards.len();
    let mut adv = vec![0f32; n];
    let mut next_adv = 0f32;
    for t in (0..n).rev() {
        let next_value = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_value - values[t];
        next_adv = delta + gamma * lambda * next_adv;
        adv[t] = next_adv;
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

/// Shifts and scales `x` to mean 0 and variance 1 as TRL's `masked_whiten` does: `(x − mean) /
/// sqrt(var + 1e-8)` with the unbiased variance (the epsilon inside the square root bounds the
/// scale at 1e4 for near-constant inputs; left alone below two values).
pub fn whiten(x: &mut [f32]) {
    let n = x.len() as f64;
    if n < 2.0 {
        return;
    }
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let scale = 1.0 / (var + 1e-8).sqrt();
    x.iter_mut().for_each(|v| *v = ((*v as f64 - mean) * scale) as f32);
}

/// The clipped surrogate loss over response tokens, `[1]`: `mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))`
/// with `ρ = exp(logp − old_logp)`.
pub fn clipped_policy_loss<B: Backend>(
    logp: Tensor<B, 1>,
    old_logp: Tensor<B, 1>,
    advantages: Tensor<B, 1>,
    clip: f64,
) -> Tensor<B, 1> {
    let ratio = (logp - old_logp).exp();
    let unclipped = advantages.clone().neg() * ratio.clone();
    let clipped = advantages.neg() * ratio.clamp(1.0 - clip, 1.0 + clip);
    unclipped.max_pair(clipped).mean()
}

/// The clipped value loss, `[1]`: `½ mean(max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²))`.
pub fn clipped_value_loss<B: Backend>(
    values: Tensor<B, 1>,
    old_values: Tensor<B, 1>,
    returns: Tensor<B, 1>,
    clip: f64,
) -> Tensor<B, 1> {
    let clipped = old_values.clone() + (values.clone() - old_values).clamp(-clip, clip);
    let a = (values - returns.clone()).powi_scalar(2);
    let b = (clipped - returns).powi_scalar(2);
    a.max_pair(b).mean().mul_scalar(0.5)
}

/// Mean ratio `exp(logp − old_logp)`, TRL's `approxkl` `½ mean((logp − old_logp)²)`, and the
/// fraction of tokens where the clipped surrogate term `−A·clip(ρ, 1 ± ε)` exceeds `−A·ρ` (TRL's
/// `pg_clipfrac`), over one minibatch's response tokens.
pub fn ratio_stats(logp: &[f32], old_logp: &[f32], advantages: &[f32], clip: f64) -> (f32, f32, f32) {
    let n = logp.len().max(1) as f32;
    let (mut ratio_sum, mut sq, mut clipped) = (0f32, 0f32, 0usize);
    for ((&p, &q), &a) in logp.iter().zip(old_logp).zip(advantages) {
        let d = p - q;
        let r = d.exp();
        ratio_sum += r;
        sq += d * d;
        let rc = r.clamp((1.0 - clip) as f32, (1.0 + clip) as f32);
        clipped += (-a * rc > -a * r) as usize;
    }
    (ratio_sum / n, 0.5 * sq / n, clipped as f32 / n)
}

/// Fraction of tokens where the clipped value term `(V_old + clip(V − V_old, ±ε) − R)²` exceeds
/// `(V − R)²` (TRL's `vf_clipfrac`).
pub fn value_clip_fraction(values: &[f32], old_values: &[f32], returns: &[f32], clip: f64) -> f32 {
    let clip = clip as f32;
    let clipped = values
        .iter()
        .zip(old_values)
        .zip(returns)
        .filter(|((&v, &o), &r)| (o + (v - o).clamp(-clip, clip) - r).powi(2) > (v - r).powi(2))
        .count();
    clipped as f32 / values.len().max(1) as f32
}

/// Mean entropy `−Σ p log p` of the next-token distributions at `positions` of the flat
/// `[batch · seq]` positions of `logits` `[batch, seq, vocab]`.
pub(crate) fn mean_entropy<B: Backend>(logits: Tensor<B, 3>, positions: &[i64]) -> f32 {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(positions.to_vec(), [positions.len()]), &device);
    let picked = logits.reshape([b * s, v]).select(0, index);
    let logp = log_softmax(picked, 1);
    let entropy = (logp.clone().exp() * logp).sum_dim(1).neg();
    host(entropy.mean())[0]
}

/// Responses sampled from a policy, batched behind their queries.
pub(crate) struct Sampled {
    /// The generated responses (stop token included when one was produced).
    pub responses: Vec<Vec<u32>>,
    pub batch: ResponseBatch,
    /// Flat `[rows · seq_len]` positions of the response tokens' predictions.
    pub positions: Vec<i64>,
}

/// Samples one response per query from `policy` (the seed derived from `sampling.seed` and `step`,
/// so a resumed run samples what an uninterrupted one did).
pub(crate) fn sample<B: Backend>(
    policy: &QwenModel<B>,
    queries: &[Vec<u32>],
    max_new_tokens: usize,
    stop_ids: &[u32],
    sampling: &SamplingConfig,
    step: u64,
    pad_id: u32,
) -> Result<Sampled> {
    let generate = GenerateConfig {
        max_new_tokens,
        stop_ids: stop_ids.to_vec(),
        sampling: SamplingConfig { seed: sampling.seed.wrapping_add(step.wrapping_mul(1_000_003)), ..sampling.clone() },
    };
    let responses = policy.generate_batch(queries, &generate, |_, _| true)?;
    let items: Vec<(&[u32], &[u32])> =
        queries.iter().zip(&responses).map(|(q, r)| (q.as_slice(), r.as_slice())).collect();
    let limit = queries.iter().map(Vec::len).max().unwrap_or(0) + max_new_tokens;
    let batch = ResponseBatch::new(&items, pad_id, limit)?;
    let positions: Vec<i64> = batch
        .targets
        .iter()
        .enumerate()
        .filter(|(_, &t)| t != qwen_train::IGNORE_INDEX)
        .map(|(i, _)| i as i64)
        .collect();
    Ok(Sampled { responses, batch, positions })
}

/// `model`'s log-probabilities of the response tokens at `positions` of `batch`, its logits divided
/// by the sampling `temperature`.
pub(crate) fn response_logprobs<B: Backend>(
    model: &QwenModel<B>,
    batch: &ResponseBatch,
    positions: &[i64],
    temperature: f32,
) -> Result<Vec<f32>> {
    let logits = tempered(model.logits_of(&batch.rows, Mode::Training)?, temperature);
    Ok(pick(&host(token_logprobs(logits, &batch.targets)?), positions))
}

/// One rollout, scored: everything the updates need, per response token in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub batch: ResponseBatch,
    /// The generated responses (stop token included when one was produced).
    pub responses: Vec<Vec<u32>>,
    /// Raw reward-model scores, one per response.
    pub scores: Vec<f32>,
    /// Flat `[rows · seq_len]` positions of the response tokens' predictions.
    pub positions: Vec<i64>,
    pub old_logprobs: Vec<f32>,
    pub ref_logprobs: Vec<f32>,
    pub advantages: Vec<f32>,
    /// Flat positions where the value model is read and trained: `positions`, and with
    /// [`ScorePlacement::AfterResponse`] each response's slot after it (its last token's position)
    /// after the response's own.
    pub value_positions: Vec<i64>,
    /// Values and returns at `value_positions`.
    pub old_values: Vec<f32>,
    pub returns: Vec<f32>,
}

/// Rows of a rollout that one update sees, with their tokens' slices of the rollout's arrays.
struct Minibatch<'a> {
    rows: &'a [Vec<u32>],
    targets: &'a [u32],
    /// Positions in the flat `[rows · seq_len]` of these rows.
    positions: Vec<i64>,
    old_logprobs: &'a [f32],
    advantages: &'a [f32],
    /// The value model's positions (in these rows), old values and returns.
    value_positions: Vec<i64>,
    old_values: &'a [f32],
    returns: &'a [f32],
}

/// A host index vector as an `Int` tensor.
pub(crate) fn index_tensor<B: Backend>(positions: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(positions.to_vec(), [positions.len()]), device)
}

/// What the updates on one minibatch measured (TRL's per-minibatch statistics). The policy's are
/// 0 when the policy was not updated (value warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct UpdateStats {
    /// Clipped surrogate loss.
    #[serde(rename = "loss/policy_avg")]
    pub policy_loss: f32,
    /// Clipped value loss.
    #[serde(rename = "loss/value_avg")]
    pub value_loss: f32,
    /// `½ mean((log π − log π_old)²)` over response tokens (TRL's `approxkl`).
    #[serde(rename = "policy/approxkl_avg")]
    pub approx_kl: f32,
    /// Fraction of response tokens where the clipped surrogate term is the larger (TRL's
    /// `pg_clipfrac`).
    #[serde(rename = "policy/clipfrac_avg")]
    pub clip_fraction: f32,
    /// Fraction of response tokens where the clipped value term is the larger (`vf_clipfrac`).
    #[serde(rename = "val/clipfrac_avg")]
    pub value_clip_fraction: f32,
    /// Mean entropy of the policy's next-token distribution at response positions, in nats.
    #[serde(rename = "policy/entropy_avg")]
    pub entropy: f32,
    /// Mean ratio `π / π_old` over response tokens.
    #[serde(rename = "val/ratio")]
    pub ratio: f32,
}

impl UpdateStats {
    /// The unweighted mean of each field over `parts` (TRL averages its per-minibatch statistics
    /// over epochs × minibatches this way); all zeros when `parts` is empty.
    pub fn mean(parts: &[UpdateStats]) -> Self {
        let n = parts.len().max(1) as f32;
        let m = |f: fn(&UpdateStats) -> f32| parts.iter().map(f).sum::<f32>() / n;
        Self {
            policy_loss: m(|p| p.policy_loss),
            value_loss: m(|p| p.value_loss),
            approx_kl: m(|p| p.approx_kl),
            clip_fraction: m(|p| p.clip_fraction),
            value_clip_fraction: m(|p| p.value_clip_fraction),
            entropy: m(|p| p.entropy),
            ratio: m(|p| p.ratio),
        }
    }
}

/// What one PPO step did, under TRL's metric names.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PpoStats {
    pub step: u64,
    /// Mean raw reward-model score of the rollout.
    #[serde(rename = "objective/scores")]
    pub score: f32,
    /// Mean summed per-token KL estimate (k1: `log π − log π_ref`; k3) per response (at rollout).
    #[serde(rename = "objective/kl")]
    pub kl: f32,
    /// Mean summed `−log π` of the sampled tokens per response (at rollout).
    #[serde(rename = "objective/entropy")]
    pub entropy: f32,
    /// Mean summed KL penalty `−kl_coef · (log π − log π_ref)` per response.
    #[serde(rename = "objective/non_score_reward")]
    pub non_score_reward: f32,
    /// `non_score_reward + score`.
    #[serde(rename = "objective/rlhf_reward")]
    pub rlhf_reward: f32,
    /// The per-minibatch statistics averaged over every epoch and minibatch (the policy's over the
    /// minibatches that updated it).
    #[serde(flatten)]
    pub updates: UpdateStats,
    /// Variance of the per-minibatch mean ratios.
    #[serde(rename = "val/ratio_var")]
    pub ratio_var: f32,
    /// Responses that ended with a stop token.
    #[serde(rename = "val/num_eos_tokens")]
    pub eos_tokens: usize,
    /// The policy's learning rate (of its last update; 0 without one).
    pub lr: f64,
    /// Mean response length in tokens.
    pub response_len: f32,
    /// Whether the policy was updated (false during the value warm-up).
    pub policy_updated: bool,
    /// Each minibatch's statistics, in order (epoch-major); not in the metrics.
    #[serde(skip)]
    pub minibatches: Vec<UpdateStats>,
}

/// The four models, two optimizers and the running reward statistics.
pub struct PpoTrainer<B: AutodiffBackend> {
    pub policy: QwenModel<B>,
    pub value: ScoreModel<B>,
    pub reference: QwenModel<B::InnerBackend>,
    pub reward: ScoreModel<B::InnerBackend>,
    pub config: PpoConfig,
    /// Generation stops after one of these (e.g. `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    pub pad_id: u32,
    pub moments: RunningMoments,
    policy_step: Stepper<B, Qwen<B>>,
    value_step: Stepper<B, ScoreModel<B>>,
    step: u64,
}

/// File name of the PPO state (step, reward moments) in a checkpoint.
pub const PPO_STATE_FILE: &str = "ppo_state.json";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct PpoState {
    step: u64,
    /// The running reward moments' `count`, `mean` and `m2` as their f64 bit patterns: serde_json
    /// reads decimal floats back to within one ulp only (its `float_roundtrip` is off), and a
    /// resumed run must continue with exactly these numbers (the crash test caught `m2` one ulp off).
    moments_bits: [u64; 3],
}

impl PpoState {
    fn new(step: u64, m: RunningMoments) -> Self {
        Self { step, moments_bits: [m.count.to_bits(), m.mean.to_bits(), m.m2.to_bits()] }
    }

    fn moments(&self) -> RunningMoments {
        let [count, mean, m2] = self.moments_bits.map(f64::from_bits);
        RunningMoments { count, mean, m2 }
    }
}

/// The settings of the two optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PpoOptim {
    pub optim: OptimConfig,
    /// Report: constant 1e-6.
    pub policy: Schedule,
    /// Report: constant 5e-6.
    pub value: Schedule,
}

/// Picks `positions` out of a flat `[rows · seq_len]` host vector.
pub(crate) fn pick(flat: &[f32], positions: &[i64]) -> Vec<f32> {
    positions.iter().map(|&p| flat[p as usize]).collect()
}

impl<B: AutodiffBackend> PpoTrainer<B> {
    /// `policy` (usually the SFT model) is also frozen as the reference; `value` usually starts
    /// from the reward model; `reward` is frozen.
    pub fn new(
        policy: QwenModel<B>,
        value: ScoreModel<B>,
        reward: ScoreModel<B::InnerBackend>,
        config: PpoConfig,
        optim: PpoOptim,
        stop_ids: Vec<u32>,
        pad_id: u32,
    ) -> Result<Self> {
        config.validate()?;
        let reference = policy.valid();
        Ok(Self {
            policy,
            value,
            reference,
            reward,
            config,
            stop_ids,
            pad_id,
            moments: RunningMoments::default(),
            policy_step: Stepper::new(optim.optim, optim.policy)?,
            value_step: Stepper::new(optim.optim, optim.value)?,
            step: 0,
        })
    }

    /// PPO steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Writes the policy and the value model (each with its optimizer state: `policy/`, `value/`),
    /// the step count and the running reward moments into `dir`, atomically. The frozen models are
    /// not saved: the reference is the policy the run started from and the reward model is an
    /// input; [`PpoTrainer::resume`] takes both again.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        write_dir_atomically(dir, |tmp| {
            save_policy(&self.policy, &self.policy_step, tmp, "policy")?;
            save_score_model(&self.value, &self.value_step, tmp, "value")?;
            let state = PpoState::new(self.step, self.moments);
            Ok(write_json(tmp.join(PPO_STATE_FILE), &state)?)
        })
    }

    /// The trainer [`PpoTrainer::save_checkpoint`] wrote to `dir`. `reference` is the policy the
    /// run started from, `reward` its reward model; the settings are the run's.
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        dir: impl AsRef<Path>,
        reference: QwenModel<B::InnerBackend>,
        reward: ScoreModel<B::InnerBackend>,
        config: PpoConfig,
        optim: PpoOptim,
        stop_ids: Vec<u32>,
        pad_id: u32,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = &qwen_train::persist::resume_dir(dir)?;
        let state: PpoState = read_json(dir.join(PPO_STATE_FILE))?;
        let (policy, policy_step) = load_policy(dir, "policy", optim.optim, optim.policy, device)?;
        let (value, value_step) = load_score_model(dir, "value", optim.optim, optim.value, device)?;
        let mut trainer = Self::new(policy, value, reward, config, optim, stop_ids, pad_id)?;
        (trainer.reference, trainer.moments, trainer.step) = (reference, state.moments(), state.step);
        (trainer.policy_step, trainer.value_step) = (policy_step, value_step);
        Ok(trainer)
    }

    /// Samples responses to `prompts` with the current policy and scores them (no update).
    pub fn rollout(&mut self, prompts: &[Vec<u32>]) -> Result<Rollout> {
        let c = &self.config;
        let queries: Vec<Vec<u32>> =
            prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), c.responses_per_query)).collect();
        let policy = self.policy.valid();
        let Sampled { responses, batch, positions } =
            sample(&policy, &queries, c.max_new_tokens, &self.stop_ids, &c.sampling, self.step, self.pad_id)?;
        let logp = |m: &QwenModel<B::InnerBackend>| response_logprobs(m, &batch, &positions, c.sampling.temperature);
        let old_logprobs = logp(&policy)?;
        let ref_logprobs = logp(&self.reference)?;
        let after = c.score_placement == ScorePlacement::AfterResponse;
        let mut value_positions = Vec::with_capacity(positions.len() + if after { responses.len() } else { 0 });
        let mut at = 0;
        for (row, (r, &end)) in responses.iter().zip(&batch.ends).enumerate() {
            value_positions.extend_from_slice(&positions[at..at + r.len()]);
            if after {
                // The slot after the response: the value model read at its last token.
                value_positions.push((row * batch.seq_len + end) as i64);
            }
            at += r.len();
        }
        let old_values = pick(&host(self.value.valid().scores(&batch.rows)?), &value_positions);
        let scores = host(self.reward.rewards(&batch.rows, &batch.ends)?);

        self.moments.update(&scores);
        let normalized = normalize_scores(&scores, c.reward_norm, &self.moments, c.responses_per_query);
        let extra = after as usize;
        let (mut advantages, mut returns) = (Vec::with_capacity(positions.len()), Vec::with_capacity(old_values.len()));
        let (mut at, mut value_at) = (0, 0);
        for (i, r) in responses.iter().enumerate() {
            let span = at..at + r.len();
            let rewards = kl_penalized_rewards(
                normalized[i],
                &old_logprobs[span.clone()],
                &ref_logprobs[span],
                c.kl_coef as f32,
                c.kl_estimator,
                c.score_placement,
            );
            let (a, ret) = gae(&rewards, &old_values[value_at..value_at + r.len() + extra], c.gamma, c.lambda);
            advantages.extend_from_slice(&a[..r.len()]);
            returns.extend(ret);
            at += r.len();
            value_at += r.len() + extra;
        }
        if c.whiten_advantages {
            whiten(&mut advantages);
        }
        Ok(Rollout {
            batch,
            responses,
            scores,
            positions,
            old_logprobs,
            ref_logprobs,
            advantages,
            value_positions,
            old_values,
            returns,
        })
    }

    /// One PPO step on `prompts`: rollout, then `epochs` value (and, after the warm-up, policy)
    /// updates. `ptx` is the pretraining batch whose LM loss is mixed in when `ptx_coef > 0`.
    pub fn step(&mut self, prompts: &[Vec<u32>], ptx: Option<&TokenBatch>) -> Result<PpoStats> {
        let rollout = self.rollout(prompts)?;
        let update_policy = self.step >= self.config.value_warmup_steps;
        let mut stats = PpoStats { policy_updated: update_policy, ..PpoStats::default() };
        // Minibatches of whole rows; each row's tokens are contiguous in the rollout's arrays.
        let rows = rollout.batch.rows.len();
        let size = if self.config.minibatch_rows == 0 { rows } else { self.config.minibatch_rows };
        let seq_len = rollout.batch.seq_len as i64;
        let extra = (self.config.score_placement == ScorePlacement::AfterResponse) as usize;
        let (mut token_start, mut value_start) = (Vec::with_capacity(rows + 1), Vec::with_capacity(rows + 1));
        token_start.push(0);
        value_start.push(0);
        for r in &rollout.responses {
            token_start.push(token_start.last().copied().unwrap_or(0) + r.len());
            value_start.push(value_start.last().copied().unwrap_or(0) + r.len() + extra);
        }
        // Policy updates of this step, counted: each seeds its LoRA dropout masks.
        let mut micro = 0u64;
        for _ in 0..self.config.epochs {
            for first in (0..rows).step_by(size.max(1)) {
                let last = (first + size).min(rows);
                let (tokens, values) = (token_start[first]..token_start[last], value_start[first]..value_start[last]);
                let shift = |p: &[i64]| -> Vec<i64> { p.iter().map(|&p| p - first as i64 * seq_len).collect() };
                let part = Minibatch {
                    rows: &rollout.batch.rows[first..last],
                    targets: &rollout.batch.targets[first * rollout.batch.seq_len..last * rollout.batch.seq_len],
                    positions: shift(&rollout.positions[tokens.clone()]),
                    old_logprobs: &rollout.old_logprobs[tokens.clone()],
                    advantages: &rollout.advantages[tokens],
                    value_positions: shift(&rollout.value_positions[values.clone()]),
                    old_values: &rollout.old_values[values.clone()],
                    returns: &rollout.returns[values],
                };
                let mut update = self.update_value(&part)?;
                if update_policy {
                    stats.lr = self.update_policy(&part, ptx, micro, &mut update)?;
                    micro += 1;
                }
                stats.minibatches.push(update);
            }
        }
        self.step += 1;
        stats.step = self.step;
        stats.updates = UpdateStats::mean(&stats.minibatches);
        if update_policy {
            let ratios: Vec<f32> = stats.minibatches.iter().map(|u| u.ratio).collect();
            let mean = ratios.iter().sum::<f32>() / ratios.len().max(1) as f32;
            // torch's `var()`: the unbiased estimate.
            stats.ratio_var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / (ratios.len().max(2) - 1) as f32;
        }
        let rows_n = rollout.responses.len().max(1) as f32;
        stats.score = rollout.scores.iter().sum::<f32>() / rows_n;
        let estimator = self.config.kl_estimator;
        let kl: f32 =
            rollout.old_logprobs.iter().zip(&rollout.ref_logprobs).map(|(&p, &q)| estimator.per_token(p, q)).sum();
        stats.kl = kl / rows_n;
        stats.entropy = -rollout.old_logprobs.iter().sum::<f32>() / rows_n;
        stats.non_score_reward = -(self.config.kl_coef as f32) * stats.kl;
        stats.rlhf_reward = stats.non_score_reward + stats.score;
        stats.eos_tokens =
            rollout.responses.iter().filter(|r| r.last().is_some_and(|t| self.stop_ids.contains(t))).count();
        stats.response_len = rollout.responses.iter().map(Vec::len).sum::<usize>() as f32 / rows_n;
        Ok(stats)
    }

    /// One value-model update on a minibatch; returns its value loss and clip fraction.
    fn update_value(&mut self, part: &Minibatch<'_>) -> Result<UpdateStats> {
        let device = self.policy.device();
        let t = |v: &[f32]| vector::<B>(v.to_vec(), &device);
        let positions = index_tensor::<B>(&part.value_positions, &device);
        let values = self.value.scores(part.rows)?.reshape([-1]).select(0, positions);
        let clipped = value_clip_fraction(&host(values.clone()), part.old_values, part.returns, self.config.value_clip);
        let vf = clipped_value_loss(values, t(part.old_values), t(part.returns), self.config.value_clip);
        let loss = host(vf.clone())[0];
        let grads = GradientsParams::from_grads(vf.backward(), &self.value);
        self.value_step.apply(&mut self.value, loss, grads)?;
        Ok(UpdateStats { value_loss: loss, value_clip_fraction: clipped, ..UpdateStats::default() })
    }

    /// One policy update on a minibatch (plus the ptx loss when on), the step's `micro`-th; fills in
    /// the policy's statistics and returns the learning rate used.
    fn update_policy(
        &mut self,
        part: &Minibatch<'_>,
        ptx: Option<&TokenBatch>,
        micro: u64,
        stats: &mut UpdateStats,
    ) -> Result<f64> {
        let device = self.policy.device();
        let t = |v: &[f32]| vector::<B>(v.to_vec(), &device);
        let positions = index_tensor::<B>(&part.positions, &device);
        // LoRA dropout masks seeded by (step, update): a resumed run draws the same ones.
        let policy = crate::dropout_seeded(&self.policy, self.step, micro);
        let logits = tempered(policy.logits_of(part.rows, Mode::Training)?, self.config.sampling.temperature);
        stats.entropy = mean_entropy(logits.clone().inner(), &part.positions);
        let logp = token_logprobs(logits, part.targets)?.reshape([-1]).select(0, positions);
        let new_logp = host(logp.clone());
        let (ratio, approx_kl, clip_fraction) =
            ratio_stats(&new_logp, part.old_logprobs, part.advantages, self.config.clip);
        (stats.ratio, stats.approx_kl, stats.clip_fraction) = (ratio, approx_kl, clip_fraction);
        let mut loss = clipped_policy_loss(logp, t(part.old_logprobs), t(part.advantages), self.config.clip);
        stats.policy_loss = host(loss.clone())[0];
        if let (Some(b), true) = (ptx, self.config.ptx_coef > 0.0) {
            let ptx_rows: Vec<Vec<u32>> = (0..b.batch).map(|i| b.input_row(i).to_vec()).collect();
            let lm = cross_entropy(policy.logits_of(&ptx_rows, Mode::Training)?, &b.targets)?;
            loss = loss + lm.mul_scalar(self.config.ptx_coef);
        }
        let total = host(loss.clone())[0];
        drop(policy);
        let grads = GradientsParams::from_grads(loss.backward(), &self.policy.model);
        Ok(self.policy_step.apply(&mut self.policy.model, total, grads)?.lr)
    }

    /// The policy on the inner backend, for evaluation or generation.
    pub fn valid_policy(&self) -> QwenModel<B::InnerBackend> {
        self.policy.valid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_rewards_are_each_score_minus_its_prompts_other_scores() {
        // Two prompts, three responses each; the running moments are not used.
        let scores = [7.0f32, 7.0, 7.0, 1.0, 2.0, 6.0];
        let r = normalize_scores(&scores, RewardNorm::LeaveOneOut, &RunningMoments::default(), 3);
        // A prompt whose responses score alike gives them nothing, whatever its level.
        assert_eq!(&r[..3], &[0.0, 0.0, 0.0]);
        // 1 − (2 + 6)/2, 2 − (1 + 6)/2, 6 − (1 + 2)/2.
        assert_eq!(&r[3..], &[-3.0, -1.5, 4.5]);
        let mut m = RunningMoments::default();
        m.update(&scores);
        let r = normalize_scores(&scores, RewardNorm::RunningMean, &m, 3);
        assert!((r[0] - (7.0 - 30.0 / 6.0)).abs() < 1e-6);
        let one = PpoConfig { reward_norm: RewardNorm::LeaveOneOut, responses_per_query: 1, ..PpoConfig::default() };
        assert!(one.validate().is_err());
        PpoConfig { reward_norm: RewardNorm::LeaveOneOut, ..PpoConfig::default() }.validate().unwrap();
    }
}
