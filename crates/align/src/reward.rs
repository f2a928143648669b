//! Reward models (and PPO's value model): the Qwen trunk with a scalar head instead of the LM head.
//!
//! The report trains its reward model in two stages on the same objective: preference-model
//! pretraining (PMP) on large comparison data, then fine-tuning on human comparisons, with a
//! constant learning rate of 3e-6, batch 64, one epoch; the reward is read at a specific end token.
//! Here both stages are a [`RewardTrainer`] fed different [`PairBatch`]es (the example runs PMP,
//! then fine-tuning), and the loss is the pairwise one of InstructGPT and TRL:
//! `-log σ(r(chosen) − r(rejected))`.
//!
//! A [`ScoreModel`] reads scores at every position ([`ScoreModel::scores`], what a value model
//! needs) or at each row's end token ([`ScoreModel::rewards`]), and saves and loads in the layout
//! of HF `Qwen2ForSequenceClassification` (what TRL's reward trainer produces).

use std::path::Path;

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use qwen_model::{Extra, Mode, QwenConfig, QwenModel, SaveDtype};
use qwen_train::persist::write_dir_atomically;
use qwen_train::{OptimConfig, Schedule, Stepper};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_score_model, save_score_model};
use crate::error::{AlignError, Result};
use crate::logprob::host;
use crate::pairs::PairBatch;

/// A reward or value model: the Qwen trunk and a `[hidden, 1]` score head on its final hidden
/// states (HF `Qwen2ForSequenceClassification`). One burn module, trained and checkpointed whole.
///
/// The trunk keeps its LM head (never used here, so it gets no gradient and no update): the trunk
/// stays a plain [`QwenModel`] that loads from and saves to HF checkpoints.
#[derive(Module, Debug)]
pub struct ScoreModel<B: Backend> {
    pub trunk: QwenModel<B>,
    pub score: Linear<B>,
}

impl<B: Backend> ScoreModel<B> {
    /// A score model on `lm`'s trunk with a fresh head: `score`, `[hidden, 1]` without a bias as in
    /// HF `Qwen2ForSequenceClassification`, weights normal with std `1/sqrt(hidden+1)` (TRL's value
    /// head). The report initialises its reward model from the pretrained language model.
    pub fn from_lm(lm: QwenModel<B>) -> Self {
        let h = lm.config.hidden_size;
        let device = lm.device();
        let std = 1.0 / ((h + 1) as f64).sqrt();
        let score = Linear {
            weight: Param::from_tensor(Tensor::random([h, 1], Distribution::Normal(0.0, std), &device)),
            bias: None,
        };
        Self { trunk: lm, score }
    }

    /// The trunk's config.
    pub fn config(&self) -> &QwenConfig {
        &self.trunk.config
    }

    /// Writes the model as HF `Qwen2ForSequenceClassification` does: `config.json` (with
    /// `architectures` and `num_labels: 1`; Qwen-1 configs keep their `architectures`) and
    /// `model.safetensors` holding the trunk without `lm_head` and `score.weight` `[1, hidden]`.
    /// transformers also needs `pad_token_id` in the config to score padded batches.
    pub fn save(&self, dir: impl AsRef<Path>, dtype: SaveDtype) -> Result<()> {
        let mut config = serde_json::Map::new();
        let family = self.trunk.config.family;
        if family.hf_layout() {
            // Qwen2ForSequenceClassification, Qwen3ForSequenceClassification, ...
            let arch = family.architecture().replace("ForCausalLM", "ForSequenceClassification");
            config.insert("architectures".into(), serde_json::json!([arch]));
        }
        config.insert("num_labels".into(), serde_json::json!(1));
        let tensors = vec![("score.weight".to_string(), self.score.weight.val().transpose())];
        Ok(self.trunk.save_with(dir, dtype, Extra { lm_head: false, tensors, config })?)
    }

    /// Loads what [`ScoreModel::save`] writes (or a transformers sequence-classification
    /// checkpoint with one label); an untied `lm_head`, absent there, is zeros.
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let h = QwenConfig::from_file(dir.join("config.json"))?.hidden_size;
        let (lm, w) = qwen_model::load_with::<B, _>(dir, device, false, |ckpt| ckpt.take("score.weight", &[1, h]))?;
        // `[1, h]` row-major is the same sequence of values as the `[h, 1]` layout burn uses.
        let score =
            Linear { weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [h, 1]), device)), bias: None };
        Ok(Self { trunk: lm, score })
    }

    /// The score at every position, `[batch, seq]` (training-mode RoPE: no long-context scaling).
    pub fn scores(&self, ids: &[Vec<u32>]) -> Result<Tensor<B, 2>> {
        let hidden = self.trunk.hidden_mode(ids, Mode::Training)?;
        let [b, s, _] = hidden.dims();
        Ok(self.score.forward(hidden).reshape([b, s]))
    }

    /// The score at each row's end token, `[batch]`.
    pub fn rewards(&self, ids: &[Vec<u32>], ends: &[usize]) -> Result<Tensor<B, 1>> {
        let scores = self.scores(ids)?;
        let [b, s] = scores.dims();
        if ends.len() != b || ends.iter().any(|&e| e >= s) {
            return Err(AlignError::Batch(format!("{} end positions for {b} rows of {s}", ends.len())));
        }
        let index: Vec<i64> = ends.iter().map(|&e| e as i64).collect();
        let index = Tensor::<B, 2, Int>::from_data(TensorData::new(index, [b, 1]), &scores.device());
        Ok(scores.gather(1, index).reshape([b]))
    }
}

impl<B: AutodiffBackend> ScoreModel<B> {
    /// The same model on the inner backend (no graph), e.g. frozen inside PPO.
    pub fn valid(&self) -> ScoreModel<B::InnerBackend> {
        AutodiffModule::valid(self)
    }
}

/// Mean `-log σ(chosen − rejected)` over the pairs.
pub fn pairwise_loss<B: Backend>(chosen: Tensor<B, 1>, rejected: Tensor<B, 1>) -> Tensor<B, 1> {
    log_sigmoid(chosen - rejected).mean().neg()
}

/// `−log σ(d)` on the host (= softplus(−d)), written to stay finite for large `|d|`: the per-pair
/// loss of the reward model and of DPO, for the stats they report.
pub(crate) fn neg_log_sigmoid(d: f32) -> f32 {
    (-d).max(0.0) + (-d.abs()).exp().ln_1p()
}

/// Loss, accuracy and margin of a set of comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PairStats {
    /// Mean pairwise loss.
    pub loss: f32,
    /// Fraction of pairs where the chosen response scores higher.
    pub accuracy: f32,
    /// Mean `r(chosen) − r(rejected)`.
    pub margin: f32,
    pub pairs: usize,
}

impl PairStats {
    /// From the two reward vectors on the host.
    pub fn from_rewards(chosen: &[f32], rejected: &[f32]) -> Self {
        let n = chosen.len().max(1) as f32;
        let mut s = Self { pairs: chosen.len(), ..Self::default() };
        for (&c, &r) in chosen.iter().zip(rejected) {
            let d = c - r;
            s.loss += neg_log_sigmoid(d);
            s.accuracy += (d > 0.0) as u8 as f32;
            s.margin += d;
        }
        s.loss /= n;
        s.accuracy /= n;
        s.margin /= n;
        s
    }

    /// Pair-weighted mean of several batches' stats.
    pub fn merge(parts: &[PairStats]) -> Self {
        let n: usize = parts.iter().map(|p| p.pairs).sum();
        let w = |f: fn(&PairStats) -> f32| parts.iter().map(|p| f(p) * p.pairs as f32).sum::<f32>() / n.max(1) as f32;
        Self { loss: w(|p| p.loss), accuracy: w(|p| p.accuracy), margin: w(|p| p.margin), pairs: n }
    }
}

/// What one reward-model update did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardStep {
    pub step: u64,
    pub lr: f64,
    pub grad_norm: f32,
    /// The batch's stats before the update.
    #[serde(flatten)]
    pub pairs: PairStats,
}

/// Chosen and rejected rewards of a batch, `([pairs], [pairs])`.
pub fn pair_rewards<B: Backend>(model: &ScoreModel<B>, batch: &PairBatch) -> Result<(Tensor<B, 1>, Tensor<B, 1>)> {
    let r = model.rewards(&batch.rows.rows, &batch.rows.ends)?;
    let n = batch.pairs;
    Ok((r.clone().narrow(0, 0, n), r.narrow(0, n, n)))
}

/// Trains a [`ScoreModel`] on comparisons (one stage: PMP or fine-tuning).
pub struct RewardTrainer<B: AutodiffBackend> {
    pub model: ScoreModel<B>,
    stepper: Stepper<B, ScoreModel<B>>,
}

impl<B: AutodiffBackend> RewardTrainer<B> {
    pub fn new(model: ScoreModel<B>, optim: OptimConfig, schedule: Schedule) -> Result<Self> {
        Ok(Self { model, stepper: Stepper::new(optim, schedule)? })
    }

    /// One update on `batch`.
    pub fn train_step(&mut self, batch: &PairBatch) -> Result<RewardStep> {
        let (chosen, rejected) = pair_rewards(&self.model, batch)?;
        let stats = PairStats::from_rewards(&host(chosen.clone()), &host(rejected.clone()));
        let loss = pairwise_loss(chosen, rejected);
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let applied = self.stepper.apply(&mut self.model, stats.loss, grads)?;
        Ok(RewardStep { step: applied.step, lr: applied.lr, grad_norm: applied.grad_norm, pairs: stats })
    }

    /// Loss, accuracy and margin on held-out batches, without gradients.
    pub fn evaluate(&self, batches: &[PairBatch]) -> Result<PairStats> {
        evaluate_pairs(&self.model.valid(), batches)
    }

    /// Updates taken.
    pub fn step(&self) -> u64 {
        self.stepper.step()
    }

    /// Writes the model (HF sequence-classification layout, f32), the optimizer state and
    /// a state file into `dir`, atomically; [`RewardTrainer::resume`] rebuilds the trainer exactly.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        write_dir_atomically(dir, |tmp| save_score_model(&self.model, &self.stepper, tmp, ""))
    }

    /// The trainer [`RewardTrainer::save_checkpoint`] wrote to `dir`, with the run's optimizer
    /// settings and schedule.
    pub fn resume(dir: impl AsRef<Path>, optim: OptimConfig, schedule: Schedule, device: &B::Device) -> Result<Self> {
        let dir = qwen_train::persist::resume_dir(dir)?;
        let (model, stepper) = load_score_model(&dir, "", optim, schedule, device)?;
        Ok(Self { model, stepper })
    }
}

/// Loss, accuracy and margin of `model` on `batches`.
pub fn evaluate_pairs<B: Backend>(model: &ScoreModel<B>, batches: &[PairBatch]) -> Result<PairStats> {
    let parts = batches
        .iter()
        .map(|b| {
            let (c, r) = pair_rewards(model, b)?;
            Ok(PairStats::from_rewards(&host(c), &host(r)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PairStats::merge(&parts))
}
