//! A whole pretraining run as a library call: what the `pretrain` example does, for any program.
//!
//! - [`pretrain`]: [`qwen_data::corpus::prepare`] (documents → vocabulary → shards), then
//!   [`train`]. With `resume`, the corpus already in the folder is reused.
//! - [`train`]: a [`RunConfig`] → a model (a [`ModelPreset`] or an HF `config.json` object) →
//!   the step loop over the training shard (gradient accumulation, data-parallel [`Replicas`]
//!   over several devices with feature `collective`, and over several machines with
//!   `pretrain_on_node`), held-out evaluation every `eval_every`
//!   steps and at the end, atomic checkpoints every `save_every` steps and at the end, one JSON
//!   Lines record per step and per evaluation ([`StepRecord`], [`EvalRecord`]), the loss curves as
//!   a PNG (feature `plot`) and the [`RunSummary`] (which holds the [`RunConfig`]).
//! - Resume: with `resume`, the trainer, its optimizer state and the data loader continue from
//!   the checkpoint exactly (the schedule, hence the step count, is the checkpoint's; batch,
//!   accumulation, devices and cadences are the config's; only a checkpoint whose checksums verify
//!   is loaded), the metrics logged after that checkpoint are dropped and the rest appended to, and
//!   "before" is the step-0 evaluation read back from `metrics.jsonl`. A run killed at any moment
//!   and resumed ends with the files of an uninterrupted one (`tests/crash_safety.rs`). Resuming a
//!   finished run trains nothing.
//! - Progress goes to a [`RunObserver`]; `()` ignores it, [`crate::progress::Progress`] (feature
//!   `progress`) draws a bar on a terminal and prints plain lines otherwise.
//!
//! Files, under the output folder ([`RunFiles`], and [`CorpusFiles`] for the corpus):
//! `run.json` (the summary), `metrics.jsonl`, `loss.png`, `checkpoint/`, plus the corpus's `data/`
//! and `tokenizer.{json,tiktoken}`. [`PretrainConfig::load`] reads back the configs a folder was
//! made with, so a run can be repeated from it.
//!
//! ```no_run
//! use burn::backend::{Autodiff, Flex};
//! use qwen_data::corpus::{CorpusConfig, SourceSpec};
//! use qwen_train::run::{pretrain, ModelPreset, PretrainConfig, RunConfig};
//!
//! let config = PretrainConfig {
//!     corpus: CorpusConfig::new(vec![SourceSpec::new("corpus/docutils")]),
//!     run: RunConfig { steps: 100, ..RunConfig::new(ModelPreset::Tiny) },
//! };
//! let done = pretrain::<Autodiff<Flex>>(&config, "runs/demo".as_ref(), false, &[Default::default()], &mut ())?;
//! println!("perplexity {:.1} -> {:.1}", done.run.summary.ppl_before, done.run.summary.ppl_after);
//! # Ok::<(), qwen_train::TrainError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use qwen_data::corpus::{self, CorpusConfig, CorpusFiles, CorpusReport};
use qwen_data::{Batcher, LoaderState, ShardLoader, ShardReader, TokenBatch, TokenBatcher};
use qwen_model::{Mode, Precision, QwenConfig, QwenConfigBuilder, QwenModel};
use qwen_tokenizer::Tokenizer;

use crate::error::{io, Result, TrainError};
use crate::eval::{evaluate, EvalStats};
use crate::metrics::{read_metrics, MetricsLog};
use crate::optim::{OptimConfig, Update};
use crate::schedule::Schedule;
use crate::trainer::{StepStats, TrainConfig, Trainer};

/// The model sizes the `pretrain` example offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelPreset {
    /// hidden 256, 4 layers, 4 heads, intermediate 688 (~2.3M parameters past the embeddings):
    /// the CPU default.
    Tiny,
    /// hidden 512, 8 layers, 8 heads (4 KV heads), intermediate 1376 (~21M past the embeddings):
    /// for a GPU backend.
    Small,
}

impl ModelPreset {
    /// Steps the example trains by default: 600 tiny, 2000 small.
    pub fn default_steps(self) -> u64 {
        match self {
            Self::Tiny => 600,
            Self::Small => 2000,
        }
    }

    /// Peak learning rate by default: 2e-3 tiny, 1e-3 small.
    pub fn default_lr(self) -> f64 {
        match self {
            Self::Tiny => 2e-3,
            Self::Small => 1e-3,
        }
    }

    /// The HF `config.json` of this size for a vocabulary of `vocab_size` ids (untied, f32): the
    /// model crate's [`QwenConfigBuilder`] presets.
    pub fn config_json(self, vocab_size: usize) -> serde_json::Value {
        match self {
            Self::Tiny => QwenConfigBuilder::tiny(vocab_size),
            Self::Small => QwenConfigBuilder::small(vocab_size),
        }
        .to_json()
    }
}

/// Which model to train: a preset name (`"tiny"`, `"small"`) or an HF `config.json` object, whose
/// `vocab_size` may be left out (it is the trained tokenizer's) but must match if given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelSpec {
    Preset(ModelPreset),
    Config(serde_json::Map<String, serde_json::Value>),
}

impl ModelSpec {
    /// The validated model configuration for a vocabulary of `vocab_size` ids.
    pub fn config(&self, vocab_size: usize) -> Result<QwenConfig> {
        let json = match self {
            Self::Preset(p) => p.config_json(vocab_size),
            Self::Config(map) => {
                let mut map = map.clone();
                match map.get("vocab_size").map(serde_json::Value::as_u64) {
                    None => {
                        map.insert("vocab_size".into(), vocab_size.into());
                    }
                    Some(Some(v)) if v == vocab_size as u64 => {}
                    Some(v) => {
                        return Err(TrainError::Config(format!(
                            "model vocab_size {v:?} differs from the tokenizer's {vocab_size}"
                        )))
                    }
                }
                serde_json::Value::Object(map)
            }
        };
        Ok(QwenConfig::from_json(json)?)
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Preset(p) => write!(f, "{p:?}"),
            Self::Config(_) => f.write_str("custom"),
        }
    }
}

/// Everything that defines a training run besides the corpus. [`RunConfig::new`] gives the
/// `pretrain` example's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: ModelSpec,
    /// Standard deviation of the random initialisation.
    pub init_std: f64,
    /// Optimizer steps.
    pub steps: u64,
    /// Training context length S.
    pub seq_len: usize,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step and replica (gradient accumulation).
    pub accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps; `None`: 5% of `steps` (at least 1).
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Final learning rate as a fraction of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// Evaluate on the held-out set every N steps (and at the end).
    pub eval_every: u64,
    /// Held-out windows of S tokens evaluated (at most).
    pub eval_windows: usize,
    /// Save the checkpoint every N steps (and at the end).
    pub save_every: u64,
    /// Seeds the initialisation, the trainer and the data loader.
    pub seed: u64,
    /// bf16 matmuls with f32 master weights, or all f32.
    pub precision: Precision,
    /// Where the AdamW update runs (host memory on CPU backends, tensor ops on GPUs).
    pub update: Update,
    /// Data-parallel replicas, one per device ([`train`] checks it against the devices given).
    pub devices: usize,
}

impl RunConfig {
    /// `model`'s default steps and peak rate, S = 128, 16 sequences x 1 micro-batch, warm-up 5%,
    /// decay to 10%, evaluation every 100 steps on 96 windows, a checkpoint every 200, seed 1234,
    /// f32, tensor-op updates, one device.
    pub fn new(model: ModelPreset) -> Self {
        Self {
            model: ModelSpec::Preset(model),
            init_std: 0.02,
            steps: model.default_steps(),
            seq_len: 128,
            batch: 16,
            accum: 1,
            lr: model.default_lr(),
            warmup_steps: None,
            min_lr_ratio: 0.1,
            eval_every: 100,
            eval_windows: 96,
            save_every: 200,
            seed: 1234,
            precision: Precision::Full,
            update: Update::Tensor,
            devices: 1,
        }
    }

    /// The warm-up actually used.
    pub fn warmup(&self) -> u64 {
        self.warmup_steps.unwrap_or((self.steps / 20).max(1))
    }

    /// The trainer's configuration for a fresh run.
    pub fn train_config(&self) -> TrainConfig {
        let schedule = Schedule::new(self.lr, self.warmup(), self.steps).with_min_lr_ratio(self.min_lr_ratio);
        let train = TrainConfig { precision: self.precision, ..TrainConfig::new(schedule, self.seed) };
        TrainConfig { optim: OptimConfig { update: self.update, ..train.optim }, ..train }
    }

    /// Checks the ranges (and the schedule and optimizer settings through [`TrainConfig::validate`]).
    ///
    /// # Errors
    /// [`TrainError::Config`] for zero steps, lengths, batch, accumulation, cadences, evaluation
    /// windows or devices, a non-finite or non-positive `init_std`, or a bad schedule.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("steps", self.steps),
            ("seq_len", self.seq_len as u64),
            ("batch", self.batch as u64),
            ("accum", self.accum as u64),
            ("eval_every", self.eval_every),
            ("eval_windows", self.eval_windows as u64),
            ("save_every", self.save_every),
            ("devices", self.devices as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(TrainError::Config(format!("{name} must be at least 1")));
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return Err(TrainError::Config(format!("init_std {} must be finite and > 0", self.init_std)));
        }
        self.train_config().validate()
    }
}

/// A corpus and a run: what [`pretrain`] needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub corpus: CorpusConfig,
    pub run: RunConfig,
}

impl PretrainConfig {
    /// The configs a folder written by [`pretrain`] was made with (`data/corpus.json` and
    /// `run.json`).
    pub fn load(out: &Path) -> Result<Self> {
        let corpus = corpus::saved_config(out)?;
        let path = RunFiles::in_dir(out).run_json;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let summary: RunSummary =
            serde_json::from_slice(&bytes).map_err(|source| TrainError::State { path: path.clone(), source })?;
        Ok(Self { corpus, run: summary.config })
    }
}

/// Where [`train`] writes under its output folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFiles {
    pub run_json: PathBuf,
    pub metrics: PathBuf,
    pub loss_png: PathBuf,
    pub checkpoint: PathBuf,
}

impl RunFiles {
    pub fn in_dir(out: &Path) -> Self {
        Self {
            run_json: out.join("run.json"),
            metrics: out.join("metrics.jsonl"),
            loss_png: out.join("loss.png"),
            checkpoint: out.join("checkpoint"),
        }
    }
}

/// One optimizer step in `metrics.jsonl` (fields in sorted order, as the file has always had them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Seconds since training started in this session.
    pub elapsed_s: f64,
    /// The data loader's epoch after the step.
    pub epoch: u64,
    pub grad_norm: f32,
    pub loss: f32,
    pub lr: f64,
    pub step: u64,
    pub tokens: usize,
    pub tokens_per_s: f64,
}

impl StepRecord {
    fn new(s: &StepStats, seconds: f64, elapsed_s: f64, epoch: u64) -> Self {
        Self {
            elapsed_s,
            epoch,
            grad_norm: s.grad_norm,
            loss: s.loss,
            lr: s.lr,
            step: s.step,
            tokens: s.tokens,
            tokens_per_s: s.tokens as f64 / seconds,
        }
    }
}

/// One held-out evaluation in `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub heldout_loss: f64,
    pub heldout_ppl: f64,
    pub step: u64,
}

impl EvalRecord {
    fn new(step: u64, e: &EvalStats) -> Self {
        Self { heldout_loss: e.loss, heldout_ppl: e.perplexity, step }
    }
}

/// What a run is about to do, for a [`RunObserver`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunStart {
    /// Steps already taken (0 unless resumed) and in all.
    pub step: u64,
    pub total_steps: u64,
    /// The loader's position when resumed.
    pub resumed: Option<LoaderState>,
    pub model: String,
    pub params: usize,
    /// Parameters in the embedding and the LM head.
    pub embedding_params: usize,
    pub seq_len: usize,
    pub batch: usize,
    pub accum: usize,
    pub devices: usize,
    pub peak_lr: f64,
    /// Training windows per epoch.
    pub windows_per_epoch: u64,
    /// The held-out evaluation at `step`.
    pub heldout: EvalStats,
}

/// Hooks a run calls as it goes; every method does nothing by default. `()` is the silent one.
pub trait RunObserver {
    /// The corpus was prepared ([`pretrain`] only, not on resume).
    fn corpus(&mut self, _report: &CorpusReport) {}
    /// The model and data are ready and the held-out set was evaluated.
    fn started(&mut self, _start: &RunStart) {}
    /// A step was taken (and, on evaluation steps, the held-out set evaluated after it).
    fn step(&mut self, _step: &StepRecord, _eval: Option<&EvalRecord>) {}
    /// A checkpoint was written at `step` into `dir`.
    fn checkpointed(&mut self, _step: u64, _dir: &Path) {}
    /// The last step is done (before the final evaluation and the plot).
    fn finished(&mut self) {}
}

impl RunObserver for () {}

/// `run.json`: what the run was and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The model (`"tiny"`, `"small"` or a config object).
    pub size: ModelSpec,
    pub seq_len: usize,
    pub vocab_size: usize,
    /// Total steps of the schedule.
    pub steps: u64,
    pub train_tokens: u64,
    pub heldout_tokens: u64,
    pub params: usize,
    /// Held-out perplexity and loss of the untrained model and after the last step.
    pub ppl_before: f64,
    pub ppl_after: f64,
    pub loss_before: f64,
    pub loss_after: f64,
    /// Training time and tokens of this session (0 tokens when a finished run is resumed).
    pub train_seconds: f64,
    #[serde(default)]
    pub tokens_this_session: u64,
    /// Epochs over the training shard that the whole schedule covers.
    #[serde(default)]
    pub epochs: f64,
    /// The configuration the run was started (or last resumed) with.
    pub config: RunConfig,
}

impl RunSummary {
    /// How many times lower held-out perplexity is after than before.
    pub fn ppl_drop(&self) -> f64 {
        self.ppl_before / self.ppl_after
    }
}

/// What [`train`] returns: the summary (also in `run.json`) and the trained model.
pub struct RunOutcome<B: AutodiffBackend> {
    pub summary: RunSummary,
    pub model: QwenModel<B::InnerBackend>,
    /// Whether `loss.png` got its text (`Some(false)`: no TrueType font was found; `None`: built
    /// without the `plot` feature, no PNG).
    pub plot_has_text: Option<bool>,
}

/// What [`pretrain`] returns.
pub struct Pretrained<B: AutodiffBackend> {
    pub tokenizer: Tokenizer,
    /// The corpus report, when the corpus was prepared (not on resume).
    pub corpus: Option<CorpusReport>,
    pub run: RunOutcome<B>,
}

/// Prepares the corpus into `out` (unless `resume`: then the corpus already there is used) and
/// trains on it (see the module docs). `devices` are the replicas' devices, `config.run.devices` of
/// them.
pub fn pretrain<B: AutodiffBackend>(
    config: &PretrainConfig,
    out: &Path,
    resume: bool,
    devices: &[B::Device],
    observer: &mut dyn RunObserver,
) -> Result<Pretrained<B>> {
    config.corpus.validate()?;
    config.run.validate()?;
    let (tokenizer, report) = corpus_of(config, out, resume, observer)?;
    let run = train_on(&config.run, out, tokenizer.vocab_size(), resume, devices, None, observer)?;
    Ok(Pretrained { tokenizer, corpus: report, run })
}

/// The corpus in `out`: prepared from `config.corpus`, or (`resume`) the one already there.
fn corpus_of(
    config: &PretrainConfig,
    out: &Path,
    resume: bool,
    observer: &mut dyn RunObserver,
) -> Result<(Tokenizer, Option<CorpusReport>)> {
    if resume {
        return Ok((CorpusFiles::in_dir(out).load_tokenizer()?, None));
    }
    let prepared = corpus::prepare(&config.corpus, out)?;
    observer.corpus(&prepared.report);
    Ok((prepared.tokenizer, Some(prepared.report)))
}

/// [`pretrain`] as one node of a multi-node run (feature `collective`; see
/// [`crate::multinode`]): every node prepares the same corpus into its own `out` (the same config
/// gives the same files), starts from the same weights (seeded, with
/// [`crate::persist::with_stable_ids`]) and draws the same `nodes x devices` replica batches per
/// step from identical loaders, keeping its own `devices` of them; every node writes the same
/// checkpoints, metrics and summary. Rank 0 starts the orchestrator when `node.orchestrator`.
///
/// # Errors
/// As [`pretrain`], plus [`TrainError::NodeConfig`] when `node.devices` is not
/// `config.run.devices`, [`TrainError::Orchestrator`] and [`TrainError::CollectiveTimeout`].
#[cfg(feature = "collective")]
pub fn pretrain_on_node<B: AutodiffBackend>(
    config: &PretrainConfig,
    out: &Path,
    resume: bool,
    devices: &[B::Device],
    node: &crate::multinode::NodeConfig,
    observer: &mut dyn RunObserver,
) -> Result<Pretrained<B>> {
    config.corpus.validate()?;
    config.run.validate()?;
    node.validate()?;
    if node.devices != config.run.devices {
        return Err(TrainError::NodeConfig(format!(
            "a node of {} devices for devices = {}",
            node.devices, config.run.devices
        )));
    }
    if node.orchestrator {
        crate::multinode::start_orchestrator(node)?;
    }
    let (tokenizer, report) = corpus_of(config, out, resume, observer)?;
    let run = train_on(&config.run, out, tokenizer.vocab_size(), resume, devices, Some(node), observer)?;
    Ok(Pretrained { tokenizer, corpus: report, run })
}

/// Trains on the corpus prepared in `out` ([`qwen_data::corpus::prepare`]), or continues the run
/// there with `resume` (see the module docs).
///
/// # Errors
/// [`TrainError::Config`] for an invalid config, a device count that differs from
/// `config.devices`, or `resume` without a checkpoint; [`TrainError::Data`] for missing or
/// mismatched shards; training, checkpoint and plot errors as they come.
pub fn train<B: AutodiffBackend>(
    config: &RunConfig,
    out: &Path,
    resume: bool,
    devices: &[B::Device],
    observer: &mut dyn RunObserver,
) -> Result<RunOutcome<B>> {
    let vocab = CorpusFiles::in_dir(out).load_tokenizer()?.vocab_size();
    train_on(config, out, vocab, resume, devices, None, observer)
}

/// Held-out windows of `seq_len` tokens (at most `max`), as batches of `batch`.
fn heldout_batches(shard: &ShardReader, seq_len: usize, batch: usize, max: usize) -> Result<Vec<TokenBatch>> {
    let ids = shard.to_vec();
    let windows: Vec<qwen_data::Sequence> = qwen_data::pack::windows(&ids, seq_len).take(max).collect();
    if windows.is_empty() {
        return Err(TrainError::Config(format!("the held-out set is shorter than one window of {seq_len} tokens")));
    }
    Ok(windows.chunks(batch).map(|c| TokenBatcher.batch(c.to_vec())).collect::<qwen_data::Result<_>>()?)
}

/// "Before": the step-0 evaluation in the metrics log of a resumed run, else `now`.
fn evaluation_before(metrics: &Path, resume: bool, now: EvalStats) -> Result<EvalStats> {
    if !resume {
        return Ok(now);
    }
    let step0 = read_metrics(metrics)?.into_iter().find(|r| r["step"] == 0);
    Ok(match step0.and_then(|r| serde_json::from_value::<EvalRecord>(r).ok()) {
        Some(r) => EvalStats { loss: r.heldout_loss, perplexity: r.heldout_ppl, tokens: now.tokens },
        None => now,
    })
}

#[cfg(feature = "collective")]
type Group<B> = crate::parallel::Replicas<B>;
#[cfg(not(feature = "collective"))]
type Group<B> = Single<B>;

/// A node of a multi-node run (none can exist without feature `collective`).
#[cfg(feature = "collective")]
use crate::multinode::NodeConfig as Node;
#[cfg(not(feature = "collective"))]
enum Node {}

/// One replica: what [`crate::parallel::Replicas`] is without the `collective` feature.
#[cfg(not(feature = "collective"))]
struct Single<B>(std::marker::PhantomData<B>);

#[cfg(not(feature = "collective"))]
impl<B: AutodiffBackend> Single<B> {
    fn start_on_node(_: &Trainer<B>, devices: &[B::Device], _: Option<&Path>, _: Option<&Node>) -> Result<Self> {
        if devices.len() != 1 {
            return Err(TrainError::Config(format!("{} devices need the `collective` feature", devices.len())));
        }
        Ok(Self(std::marker::PhantomData))
    }

    fn step(&self, trainer: &mut Trainer<B>, mut batches: Vec<Vec<TokenBatch>>) -> Result<StepStats> {
        trainer.train_step(&batches.remove(0))
    }

    fn finish(self, _: &Trainer<B>) -> Result<()> {
        Ok(())
    }
}

fn train_on<B: AutodiffBackend>(
    config: &RunConfig,
    out: &Path,
    vocab: usize,
    resume: bool,
    devices: &[B::Device],
    node: Option<&Node>,
    observer: &mut dyn RunObserver,
) -> Result<RunOutcome<B>> {
    config.validate()?;
    // This node's replicas among all: (nodes, rank).
    #[cfg(feature = "collective")]
    let (nodes, rank) = node.map_or((1, 0), |n| (n.nodes, n.rank));
    #[cfg(not(feature = "collective"))]
    let (nodes, rank) = (1, 0);
    if devices.len() != config.devices {
        return Err(TrainError::Config(format!("{} devices given for devices = {}", devices.len(), config.devices)));
    }
    let files = RunFiles::in_dir(out);
    let data = CorpusFiles::in_dir(out);
    let train_reader = ShardReader::open(&data.train_shard, vocab, true)?;
    let heldout_reader = ShardReader::open(&data.heldout_shard, vocab, true)?;
    let train_tokens = train_reader.len() as u64;
    let heldout = heldout_batches(&heldout_reader, config.seq_len, config.batch, config.eval_windows)?;
    let heldout_tokens: usize = heldout.iter().map(|b| b.targets.len()).sum();

    // The model and trainer: fresh, or resumed with the loader where it stood.
    let dev = &devices[0];
    let (mut trainer, mut loader, mut metrics, resumed) = if resume {
        let (trainer, state) = Trainer::<B>::resume(&files.checkpoint, dev)?;
        let state = state.ok_or_else(|| TrainError::Mismatch("the checkpoint has no data-loader state".into()))?;
        let loader = ShardLoader::from_state(vec![train_reader], config.seq_len, state)?;
        // What was logged after the checkpoint (steps a kill interrupted) is dropped: those steps
        // run again, and the log reads as one uninterrupted run.
        let at = trainer.step();
        let metrics = MetricsLog::resume(&files.metrics, |r| r["step"].as_u64().is_some_and(|s| s <= at))?;
        (trainer, loader, metrics, Some(state))
    } else {
        let model_config = config.model.config(vocab)?;
        B::seed(dev, config.seed);
        let mut model = QwenModel::<B>::random(model_config, config.init_std, dev);
        if node.is_some() {
            // burn's all-reduce matches gradients by parameter id: the same ids in every process.
            model = QwenModel { model: crate::persist::with_stable_ids::<B, _>(model.model), ..model };
        }
        let loader = ShardLoader::new(vec![train_reader], config.seq_len, config.seed)?;
        (Trainer::new(model, config.train_config())?, loader, MetricsLog::create(&files.metrics)?, None)
    };
    let replicas = Group::<B>::start_on_node(&trainer, devices, resume.then_some(files.checkpoint.as_path()), node)?;
    let steps = trainer.config().schedule.total_steps;
    let params = trainer.model().model.num_params();

    let now = evaluate(&trainer.valid_model(), &heldout, Mode::Training)?;
    let before = evaluation_before(&files.metrics, resume, now)?;
    if trainer.step() == 0 {
        metrics.write(&EvalRecord::new(0, &now))?;
    }
    observer.started(&RunStart {
        step: trainer.step(),
        total_steps: steps,
        resumed,
        model: config.model.to_string(),
        params,
        embedding_params: 2 * vocab * trainer.model().config.hidden_size,
        seq_len: config.seq_len,
        batch: config.batch,
        accum: config.accum,
        devices: config.devices,
        peak_lr: trainer.config().schedule.peak_lr,
        windows_per_epoch: loader.windows_per_epoch(),
        heldout: now,
    });

    let start = Instant::now();
    let mut seen = 0u64;
    while trainer.step() < steps {
        let t = Instant::now();
        // Every node draws every replica's micro-batches (identical loaders) and keeps its own.
        let mut batches = Vec::with_capacity(config.devices);
        for r in 0..nodes * config.devices {
            let mine = (0..config.accum)
                .map(|_| TokenBatcher.batch(loader.next_batch(config.batch)))
                .collect::<qwen_data::Result<Vec<_>>>()?;
            if r / config.devices == rank {
                batches.push(mine);
            }
        }
        let stats = replicas.step(&mut trainer, batches)?;
        seen += stats.tokens as u64;
        let record =
            StepRecord::new(&stats, t.elapsed().as_secs_f64(), start.elapsed().as_secs_f64(), loader.state().epoch);
        metrics.write(&record)?;
        let last = stats.step == steps;
        let eval = if stats.step % config.eval_every == 0 || last {
            let e = EvalRecord::new(stats.step, &evaluate(&trainer.valid_model(), &heldout, Mode::Training)?);
            metrics.write(&e)?;
            Some(e)
        } else {
            None
        };
        observer.step(&record, eval.as_ref());
        if stats.step % config.save_every == 0 || last {
            trainer.save_checkpoint(&files.checkpoint, Some(loader.state()))?;
            observer.checkpointed(stats.step, &files.checkpoint);
        }
    }
    observer.finished();
    replicas.finish(&trainer)?;
    let train_seconds = start.elapsed().as_secs_f64();

    let model = trainer.valid_model();
    let after = evaluate(&model, &heldout, Mode::Training)?;
    let plot_has_text =
        plot_losses(&files, &format!("pretraining {} (S = {}, vocab {vocab})", config.model, config.seq_len))?;
    let per_step = (nodes * config.devices * config.batch * config.accum * config.seq_len) as u64;
    let summary = RunSummary {
        size: config.model.clone(),
        seq_len: config.seq_len,
        vocab_size: vocab,
        steps,
        train_tokens,
        heldout_tokens: heldout_tokens as u64,
        params,
        ppl_before: before.perplexity,
        ppl_after: after.perplexity,
        loss_before: before.loss,
        loss_after: after.loss,
        train_seconds,
        tokens_this_session: seen,
        epochs: (steps * per_step) as f64 / train_tokens as f64,
        config: config.clone(),
    };
    let json = serde_json::to_vec_pretty(&summary)
        .map_err(|source| TrainError::State { path: files.run_json.clone(), source })?;
    crate::persist::write_file_atomically(&files.run_json, &json)?;
    Ok(RunOutcome { summary, model, plot_has_text })
}

/// `loss.png` from `metrics.jsonl`: train and held-out loss against the step.
#[cfg(feature = "plot")]
fn plot_losses(files: &RunFiles, title: &str) -> Result<Option<bool>> {
    use crate::plot::{save_png, Chart, Series, TextRendering};
    let records = read_metrics(&files.metrics)?;
    let series = |key: &str| -> Vec<(f64, f64)> {
        records.iter().filter_map(|r| Some((r["step"].as_f64()?, r.get(key)?.as_f64()?))).collect()
    };
    let chart = Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: "loss (nats/token)".into(),
        log_x: false,
        log_y: false,
        series: vec![
            Series { name: "train".into(), points: series("loss") },
            Series { name: "held-out".into(), points: series("heldout_loss") },
        ],
    };
    Ok(Some(save_png(&chart, &files.loss_png, 900, 540)? == TextRendering::WithText))
}

#[cfg(not(feature = "plot"))]
fn plot_losses(_: &RunFiles, _: &str) -> Result<Option<bool>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_examples_and_validate() {
        let c = RunConfig::new(ModelPreset::Tiny);
        c.validate().unwrap();
        assert_eq!((c.steps, c.lr, c.warmup()), (600, 2e-3, 30));
        let t = c.train_config();
        assert_eq!(t.schedule, Schedule::new(2e-3, 30, 600));
        assert_eq!(t.optim.update, Update::Tensor);
        let s = RunConfig::new(ModelPreset::Small);
        assert_eq!((s.steps, s.lr, s.warmup()), (2000, 1e-3, 100));
        assert_eq!(RunConfig { steps: 10, ..c.clone() }.warmup(), 1);
        assert_eq!(RunConfig { warmup_steps: Some(7), ..c }.warmup(), 7);
    }

    #[test]
    fn validation_rejects_zeros_and_bad_rates() {
        let c = RunConfig::new(ModelPreset::Tiny);
        let cases = [
            RunConfig { steps: 0, ..c.clone() },
            RunConfig { seq_len: 0, ..c.clone() },
            RunConfig { batch: 0, ..c.clone() },
            RunConfig { accum: 0, ..c.clone() },
            RunConfig { eval_every: 0, ..c.clone() },
            RunConfig { eval_windows: 0, ..c.clone() },
            RunConfig { save_every: 0, ..c.clone() },
            RunConfig { devices: 0, ..c.clone() },
            RunConfig { lr: 0.0, ..c.clone() },
            RunConfig { lr: f64::NAN, ..c.clone() },
            RunConfig { init_std: 0.0, ..c.clone() },
            RunConfig { min_lr_ratio: 2.0, ..c.clone() },
            RunConfig { warmup_steps: Some(601), ..c.clone() },
        ];
        for bad in cases {
            assert!(matches!(bad.validate(), Err(TrainError::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn config_round_trips_and_model_specs_resolve() {
        let mut c = RunConfig::new(ModelPreset::Small);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["model"], "small");
        assert_eq!(serde_json::from_value::<RunConfig>(json).unwrap(), c);
        assert_eq!(c.model.config(1000).unwrap().hidden_size, 512);

        let serde_json::Value::Object(mut custom) = ModelPreset::Tiny.config_json(1000) else { unreachable!() };
        c.model = ModelSpec::Config(custom.clone());
        assert_eq!(serde_json::from_value::<RunConfig>(serde_json::to_value(&c).unwrap()).unwrap(), c);
        assert_eq!(c.model.config(1000).unwrap().vocab_size, 1000);
        assert!(matches!(c.model.config(999), Err(TrainError::Config(_))));
        custom.remove("vocab_size");
        assert_eq!(ModelSpec::Config(custom).config(999).unwrap().vocab_size, 999);
        assert!(serde_json::from_str::<ModelSpec>("\"huge\"").is_err());
    }
}
