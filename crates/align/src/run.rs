//! The alignment stages as config-driven, resumable runs: SFT ([`SftConfig`]), the reward model
//! (preference-model pretraining, then fine-tuning: [`RewardConfig`]), PPO ([`PpoRunConfig`]),
//! DPO ([`DpoRunConfig`]) and GRPO ([`GrpoRunConfig`]).
//!
//! A run is a [`Run`] over one [`Stage`] (a trainer) and an output folder:
//!
//! - `run_config.json` ([`CONFIG_FILE`]): the stage's config, written when the run starts, so the run
//!   can be repeated from it ([`load_config`]); a folder holding a checkpoint of a run with another
//!   config is refused ([`AlignError::Config`]);
//! - `metrics.jsonl` ([`METRICS_FILE`]): one record per step, `{"stage": ..., "step": ..., ...}`
//!   (the stage's stats, which all derive `Serialize`);
//! - `checkpoint/` ([`CHECKPOINT_DIR`]): the trained model(s), optimizer state(s) and state files,
//!   written atomically every `checkpoint_every` steps and at the last step.
//!
//! [`Run::open`]-style constructors ([`Run::sft`], [`Run::reward`], [`Run::ppo`], [`Run::dpo`]) start
//! a fresh run, or resume the one in the folder from its checkpoint: the metrics logged after that
//! checkpoint are dropped and those steps run again, so a run killed at any point and resumed ends
//! with the weights and the metrics of an uninterrupted one. For that the data must be a function of
//! the step ([`StepData`]; [`EpochSampler`] shuffles a dataset that way), and the frozen inputs (the
//! reference policy of PPO and DPO — the policy the run started from — and PPO's reward model) must
//! be passed again: they are inputs, like the data, and are not copied into the folder. Stopping
//! early ([`Run::train_until`]) and dropping the run is the same as a kill.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use qwen_data::rng::SplitMix64;
use qwen_data::TokenBatch;
use qwen_model::QwenModel;
use qwen_train::persist::{read_json, write_json};
use qwen_train::{MetricsLog, OptimConfig, Schedule, StepStats, TrainConfig, Trainer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dpo::{DpoConfig, DpoStep, DpoTrainer};
use crate::error::{AlignError, Result};
use crate::grpo::{GrpoBatch, GrpoConfig, GrpoReward, GrpoStats, GrpoTrainer};
use crate::pairs::PairBatch;
use crate::ppo::{PpoConfig, PpoOptim, PpoStats, PpoTrainer};
use crate::reward::{RewardStep, RewardTrainer, ScoreModel};

/// The run's config inside its output folder.
pub const CONFIG_FILE: &str = "run_config.json";
/// The run's metrics inside its output folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's latest checkpoint inside its output folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// What a stage trains on: the batch of each step (counting from 0). It must depend only on the
/// step, so that a resumed run sees the batches an uninterrupted one would. Closures
/// `FnMut(u64) -> Result<T>` are `StepData`.
pub trait StepData<T> {
    fn batch(&mut self, step: u64) -> Result<T>;
}

impl<T, F: FnMut(u64) -> Result<T>> StepData<T> for F {
    fn batch(&mut self, step: u64) -> Result<T> {
        self(step)
    }
}

/// Which items of a dataset of `len` items each step's batch of `batch` takes: epoch after epoch,
/// each a seeded shuffle of the whole dataset, a pure function of the step (items of a batch may
/// straddle two epochs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSampler {
    pub len: usize,
    pub batch: usize,
    pub seed: u64,
}

impl EpochSampler {
    /// The order of epoch `epoch` (Fisher–Yates with a generator derived from the seed and epoch).
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        let mut rng = SplitMix64::derived(self.seed, epoch);
        for i in (1..self.len).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        order
    }

    /// The dataset indices of step `step`'s batch.
    pub fn indices(&self, step: u64) -> Vec<usize> {
        if self.len == 0 {
            return Vec::new();
        }
        let (len, first) = (self.len as u64, step * self.batch as u64);
        let mut out = Vec::with_capacity(self.batch);
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for p in first..first + self.batch as u64 {
            let epoch = p / len;
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                cached = Some((epoch, self.permutation(epoch)));
            }
            out.push(cached.as_ref().map_or(0, |(_, order)| order[(p % len) as usize]));
        }
        out
    }
}

/// A trainer a [`Run`] drives: one update per batch, and a checkpoint of everything it needs to
/// continue exactly (written atomically into a folder).
pub trait Stage {
    type Batch;
    /// One record of the metrics (it must serialize a `step` field: the updates taken, this one
    /// included).
    type Stats: Serialize;
    /// Steps taken.
    fn steps_done(&self) -> u64;
    /// The `"stage"` tag of the metrics record of step `step` (counting from 0).
    fn tag(&self, step: u64) -> &'static str;
    fn train_batch(&mut self, batch: &Self::Batch) -> Result<Self::Stats>;
    fn save_checkpoint(&self, dir: &Path) -> Result<()>;
}

/// A config that a run saves into its folder.
pub trait RunConfig: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug {
    fn validate(&self) -> Result<()>;
    /// Total steps of the run.
    fn steps(&self) -> u64;
    /// Steps between checkpoints (> 0).
    fn checkpoint_every(&self) -> u64;
}

fn check_every(every: u64) -> Result<()> {
    if every == 0 {
        return Err(AlignError::Config("checkpoint_every must be > 0".into()));
    }
    Ok(())
}

/// The config saved in the output folder `out` (to repeat the run).
pub fn load_config<C: RunConfig>(out: impl AsRef<Path>) -> Result<C> {
    let config: C = read_json(out.as_ref().join(CONFIG_FILE))?;
    config.validate()?;
    Ok(config)
}

#[derive(Serialize)]
struct Record<'a, T> {
    stage: &'a str,
    #[serde(flatten)]
    stats: &'a T,
}

/// A stage, its output folder and its metrics log (see the module docs).
pub struct Run<S: Stage> {
    pub stage: S,
    out: PathBuf,
    log: MetricsLog,
    steps: u64,
    every: u64,
    resumed_from: Option<u64>,
}

/// Prepares `out` for a run of `config`: validates it, and returns the checkpoint folder when the
/// run resumes (a checkpoint exists), after checking that the saved config is the same.
fn prepare<C: RunConfig>(out: &Path, config: &C) -> Result<Option<PathBuf>> {
    config.validate()?;
    check_every(config.checkpoint_every())?;
    std::fs::create_dir_all(out).map_err(|source| qwen_train::TrainError::Io { path: out.into(), source })?;
    let checkpoint = out.join(CHECKPOINT_DIR);
    let config_path = out.join(CONFIG_FILE);
    if qwen_train::persist::has_checkpoint(&checkpoint) {
        let saved: C = read_json(&config_path)?;
        if saved != *config {
            return Err(AlignError::Config(format!(
                "{} holds a run with another config ({saved:?}); give another output folder or remove it",
                out.display()
            )));
        }
        return Ok(Some(checkpoint));
    }
    write_json(&config_path, config)?;
    Ok(None)
}

impl<S: Stage> Run<S> {
    /// Wraps `stage` (fresh, or rebuilt from the checkpoint when `resumed`) with its folder and log.
    fn new(stage: S, out: &Path, steps: u64, every: u64, resumed: bool) -> Result<Self> {
        let path = out.join(METRICS_FILE);
        let at = stage.steps_done();
        let log = if resumed {
            MetricsLog::resume(&path, |r| r["step"].as_u64().is_some_and(|s| s <= at))?
        } else {
            MetricsLog::create(&path)?
        };
        Ok(Self { stage, out: out.to_path_buf(), log, steps, every, resumed_from: resumed.then_some(at) })
    }

    /// Steps taken.
    pub fn step(&self) -> u64 {
        self.stage.steps_done()
    }

    /// The run's total steps.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The step the run resumed from, if it did.
    pub fn resumed_from(&self) -> Option<u64> {
        self.resumed_from
    }

    /// The output folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// The metrics file.
    pub fn metrics_path(&self) -> &Path {
        self.log.path()
    }

    /// Writes a checkpoint now (atomically).
    pub fn checkpoint(&self) -> Result<()> {
        self.stage.save_checkpoint(&self.out.join(CHECKPOINT_DIR))
    }

    /// Trains to the end of the run ([`Run::train_until`] its total steps).
    pub fn train(&mut self, data: &mut impl StepData<S::Batch>, on_step: impl FnMut(&S::Stats)) -> Result<()> {
        self.train_until(self.steps, data, on_step)
    }

    /// Trains up to `until` steps taken (at most the run's total): each step takes its batch from
    /// `data`, writes its record to the metrics and calls `on_step`; a checkpoint follows every
    /// `checkpoint_every`-th step and the run's last. Nothing happens when `until` is already reached.
    pub fn train_until(
        &mut self,
        until: u64,
        data: &mut impl StepData<S::Batch>,
        mut on_step: impl FnMut(&S::Stats),
    ) -> Result<()> {
        let until = until.min(self.steps);
        while self.stage.steps_done() < until {
            let step = self.stage.steps_done();
            let batch = data.batch(step)?;
            let stats = self.stage.train_batch(&batch)?;
            self.log.write(&Record { stage: self.stage.tag(step), stats: &stats })?;
            on_step(&stats);
            let done = self.stage.steps_done();
            if done.is_multiple_of(self.every) || done == self.steps {
                self.checkpoint()?;
            }
        }
        Ok(())
    }

    pub fn into_stage(self) -> S {
        self.stage
    }
}

// ---------------------------------------------------------------------------------------------
// SFT

/// SFT: the pretraining [`Trainer`] (its loss averages over non-ignored targets, as Qwen's
/// `finetune.py` does) on [`SftBatcher`](crate::SftBatcher) batches; its checkpoints are the
/// trainer's own (`trainer_state.json`, resumed by [`Trainer::resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub train: TrainConfig,
    pub steps: u64,
    pub checkpoint_every: u64,
}

impl RunConfig for SftConfig {
    fn validate(&self) -> Result<()> {
        Ok(self.train.validate()?)
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn checkpoint_every(&self) -> u64 {
        self.checkpoint_every
    }
}

/// A step's batch for SFT: micro-batches whose gradients are accumulated into one update.
pub type SftBatch = Vec<TokenBatch>;

impl<B: AutodiffBackend> Stage for Trainer<B> {
    type Batch = SftBatch;
    type Stats = StepStats;
    fn steps_done(&self) -> u64 {
        self.step()
    }
    fn tag(&self, _: u64) -> &'static str {
        "sft"
    }
    fn train_batch(&mut self, batch: &SftBatch) -> Result<StepStats> {
        Ok(self.train_step(batch)?)
    }
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        Ok(Trainer::save_checkpoint(self, dir, None)?)
    }
}

/// An SFT run.
pub type SftRun<B> = Run<Trainer<B>>;

impl<B: AutodiffBackend> Run<Trainer<B>> {
    /// SFT of `model` into `out` (resumed from `out`'s checkpoint when it has one; `model` is then
    /// unused).
    pub fn sft(config: &SftConfig, model: QwenModel<B>, out: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let out = out.as_ref();
        let (trainer, resumed) = match prepare(out, config)? {
            Some(dir) => (Trainer::resume(dir, device)?.0, true),
            None => (Trainer::new(model, config.train)?, false),
        };
        Run::new(trainer, out, config.steps, config.checkpoint_every, resumed)
    }
}

// ---------------------------------------------------------------------------------------------
// Reward model

/// The reward model in the report's two phases on one optimizer: preference-model pretraining for
/// `pmp_steps` (metrics tagged `pmp`), then fine-tuning on comparisons for `finetune_steps`
/// (tagged `rm`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardConfig {
    pub optim: OptimConfig,
    /// Report: a constant 3e-6 ([`qwen_train::constant`]).
    pub schedule: Schedule,
    pub pmp_steps: u64,
    pub finetune_steps: u64,
    pub checkpoint_every: u64,
}

impl RunConfig for RewardConfig {
    fn validate(&self) -> Result<()> {
        self.optim.validate()?;
        Ok(self.schedule.validate()?)
    }
    fn steps(&self) -> u64 {
        self.pmp_steps + self.finetune_steps
    }
    fn checkpoint_every(&self) -> u64 {
        self.checkpoint_every
    }
}

/// A [`RewardTrainer`] that knows where preference-model pretraining ends.
pub struct RewardStage<B: AutodiffBackend> {
    pub trainer: RewardTrainer<B>,
    pub pmp_steps: u64,
}

impl<B: AutodiffBackend> Stage for RewardStage<B> {
    type Batch = PairBatch;
    type Stats = RewardStep;
    fn steps_done(&self) -> u64 {
        self.trainer.step()
    }
    fn tag(&self, step: u64) -> &'static str {
        if step < self.pmp_steps {
            "pmp"
        } else {
            "rm"
        }
    }
    fn train_batch(&mut self, batch: &PairBatch) -> Result<RewardStep> {
        self.trainer.train_step(batch)
    }
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        self.trainer.save_checkpoint(dir)
    }
}

/// A reward-model run.
pub type RewardRun<B> = Run<RewardStage<B>>;

impl<B: AutodiffBackend> Run<RewardStage<B>> {
    /// Trains `model` (usually [`ScoreModel::from_lm`] on the SFT model) into `out` (resumed from
    /// `out`'s checkpoint when it has one; `model` is then unused).
    pub fn reward(
        config: &RewardConfig,
        model: ScoreModel<B>,
        out: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self> {
        let out = out.as_ref();
        let (trainer, resumed) = match prepare(out, config)? {
            Some(dir) => (RewardTrainer::resume(dir, config.optim, config.schedule, device)?, true),
            None => (RewardTrainer::new(model, config.optim, config.schedule)?, false),
        };
        let stage = RewardStage { trainer, pmp_steps: config.pmp_steps };
        Run::new(stage, out, config.steps(), config.checkpoint_every, resumed)
    }

    /// Trains up to `until` steps, the batches of steps before `pmp_steps` from `pmp` and the
    /// others from `finetune` (both indexed by the run's step).
    pub fn train_phases(
        &mut self,
        until: u64,
        pmp: &mut impl StepData<PairBatch>,
        finetune: &mut impl StepData<PairBatch>,
        on_step: impl FnMut(&RewardStep),
    ) -> Result<()> {
        let split = self.stage.pmp_steps;
        let mut data = |step: u64| if step < split { pmp.batch(step) } else { finetune.batch(step) };
        self.train_until(until, &mut data, on_step)
    }
}

// ---------------------------------------------------------------------------------------------
// PPO

/// PPO: the trainer's settings, its two optimizers, the generation's stop and pad ids, and the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoRunConfig {
    pub ppo: PpoConfig,
    pub optim: PpoOptim,
    /// Generation stops after one of these (e.g. `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    pub pad_id: u32,
    pub steps: u64,
    pub checkpoint_every: u64,
}

impl RunConfig for PpoRunConfig {
    fn validate(&self) -> Result<()> {
        self.ppo.validate()?;
        self.optim.optim.validate()?;
        self.optim.policy.validate()?;
        Ok(self.optim.value.validate()?)
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn checkpoint_every(&self) -> u64 {
        self.checkpoint_every
    }
}

/// One PPO step's input: the prompts to sample responses to, and the pretraining batch whose LM
/// loss is mixed in when `ptx_coef > 0`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PpoBatch {
    pub prompts: Vec<Vec<u32>>,
    pub ptx: Option<TokenBatch>,
}

impl<B: AutodiffBackend> Stage for PpoTrainer<B> {
    type Batch = PpoBatch;
    type Stats = PpoStats;
    fn steps_done(&self) -> u64 {
        self.step_count()
    }
    fn tag(&self, _: u64) -> &'static str {
        "ppo"
    }
    fn train_batch(&mut self, batch: &PpoBatch) -> Result<PpoStats> {
        self.step(&batch.prompts, batch.ptx.as_ref())
    }
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        PpoTrainer::save_checkpoint(self, dir)
    }
}

/// A PPO run.
pub type PpoRun<B> = Run<PpoTrainer<B>>;

impl<B: AutodiffBackend> Run<PpoTrainer<B>> {
    /// PPO from `policy` (also the frozen reference) with the value model `value` (usually the
    /// reward model) and the frozen `reward`, into `out`. Resumed from `out`'s checkpoint when it
    /// has one: then `policy` must again be the policy the run started from (it is the reference),
    /// and `value` is unused.
    pub fn ppo(
        config: &PpoRunConfig,
        policy: QwenModel<B>,
        value: ScoreModel<B>,
        reward: ScoreModel<B::InnerBackend>,
        out: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self> {
        let out = out.as_ref();
        let c = config.clone();
        let (trainer, resumed) = match prepare(out, config)? {
            Some(dir) => {
                let reference = policy.valid();
                (PpoTrainer::resume(dir, reference, reward, c.ppo, c.optim, c.stop_ids, c.pad_id, device)?, true)
            }
            None => (PpoTrainer::new(policy, value, reward, c.ppo, c.optim, c.stop_ids, c.pad_id)?, false),
        };
        Run::new(trainer, out, config.steps, config.checkpoint_every, resumed)
    }
}

// ---------------------------------------------------------------------------------------------
// DPO

/// DPO: β, the optimizer, its schedule and the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoRunConfig {
    pub dpo: DpoConfig,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    pub steps: u64,
    pub checkpoint_every: u64,
}

impl RunConfig for DpoRunConfig {
    fn validate(&self) -> Result<()> {
        self.dpo.validate()?;
        self.optim.validate()?;
        Ok(self.schedule.validate()?)
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn checkpoint_every(&self) -> u64 {
        self.checkpoint_every
    }
}

impl<B: AutodiffBackend> Stage for DpoTrainer<B> {
    type Batch = PairBatch;
    type Stats = DpoStep;
    fn steps_done(&self) -> u64 {
        self.step()
    }
    fn tag(&self, _: u64) -> &'static str {
        "dpo"
    }
    fn train_batch(&mut self, batch: &PairBatch) -> Result<DpoStep> {
        self.train_step(batch)
    }
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        DpoTrainer::save_checkpoint(self, dir)
    }
}

/// A DPO run.
pub type DpoRun<B> = Run<DpoTrainer<B>>;

impl<B: AutodiffBackend> Run<DpoTrainer<B>> {
    /// DPO from `policy` (also the frozen reference) into `out`. Resumed from `out`'s checkpoint
    /// when it has one: then `policy` must again be the policy the run started from.
    pub fn dpo(config: &DpoRunConfig, policy: QwenModel<B>, out: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let out = out.as_ref();
        let (trainer, resumed) = match prepare(out, config)? {
            Some(dir) => {
                let reference = policy.valid();
                (DpoTrainer::resume(dir, reference, config.dpo, config.optim, config.schedule, device)?, true)
            }
            None => (DpoTrainer::new(policy, config.dpo, config.optim, config.schedule)?, false),
        };
        Run::new(trainer, out, config.steps, config.checkpoint_every, resumed)
    }
}

// ---------------------------------------------------------------------------------------------
// GRPO

/// GRPO: the trainer's settings, the optimizer, its schedule, the generation's stop and pad ids,
/// and the run. The reward source (a reward model or a verifier) is an input, like the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoRunConfig {
    pub grpo: GrpoConfig,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    /// Generation stops after one of these (e.g. `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    pub pad_id: u32,
    pub steps: u64,
    pub checkpoint_every: u64,
}

impl RunConfig for GrpoRunConfig {
    fn validate(&self) -> Result<()> {
        self.grpo.validate()?;
        self.optim.validate()?;
        Ok(self.schedule.validate()?)
    }
    fn steps(&self) -> u64 {
        self.steps
    }
    fn checkpoint_every(&self) -> u64 {
        self.checkpoint_every
    }
}

impl<B: AutodiffBackend> Stage for GrpoTrainer<B> {
    type Batch = GrpoBatch;
    type Stats = GrpoStats;
    fn steps_done(&self) -> u64 {
        self.step_count()
    }
    fn tag(&self, _: u64) -> &'static str {
        "grpo"
    }
    fn train_batch(&mut self, batch: &GrpoBatch) -> Result<GrpoStats> {
        self.step(batch)
    }
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        GrpoTrainer::save_checkpoint(self, dir)
    }
}

/// A GRPO run.
pub type GrpoRun<B> = Run<GrpoTrainer<B>>;

impl<B: AutodiffBackend> Run<GrpoTrainer<B>> {
    /// GRPO from `policy` (also the frozen reference) with rewards from `reward`, into `out`.
    /// Resumed from `out`'s checkpoint when it has one: then `policy` must again be the policy the
    /// run started from (it is the reference) and `reward` the same source.
    pub fn grpo(
        config: &GrpoRunConfig,
        policy: QwenModel<B>,
        reward: GrpoReward<B::InnerBackend>,
        out: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self> {
        let out = out.as_ref();
        let c = config.clone();
        let (trainer, resumed) = match prepare(out, config)? {
            Some(dir) => {
                let reference = policy.valid();
                let t = GrpoTrainer::resume(
                    dir, reference, reward, c.grpo, c.optim, c.schedule, c.stop_ids, c.pad_id, device,
                )?;
                (t, true)
            }
            None => (GrpoTrainer::new(policy, reward, c.grpo, c.optim, c.schedule, c.stop_ids, c.pad_id)?, false),
        };
        Run::new(trainer, out, config.steps, config.checkpoint_every, resumed)
    }
}
