//! One optimizer update for any module: the checks, clipping and AdamW step that the pretraining
//! [`Trainer`](crate::Trainer) and every alignment trainer (policy, reward and value models) share.
//!
//! [`Stepper::apply`]: a NaN/Inf loss is refused before anything else; the gradients are clipped
//! to the global norm ([`OptimConfig::clip_norm`]) and a NaN/Inf norm is refused; the rate comes from
//! the schedule at the number of updates taken so far; then [`QwenAdamW`] updates the module and the
//! counter advances. A refused update leaves the module, the optimizer state and the counter as they
//! were ([`TrainError::NonFinite`]).
//!
//! [`Stepper::save`] / [`Stepper::load`] persist the optimizer state in the module's visiting
//! order, not keyed by burn's parameter ids (random per process, and burn's record is a hash map,
//! whose order differs per process too): the file is a function of the training state alone, the
//! same bytes whether the run was resumed or not, and it loads onto any copy of the module.

use std::path::Path;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{clip_global_norm, global_norm, OptimConfig, QwenAdamW};
use crate::schedule::Schedule;

/// burn's optimizer record: per-parameter state keyed by id.
type KeyedRecord<B, M> = <OptimizerAdaptor<QwenAdamW, M, B> as Optimizer<M, B>>::Record;
/// What [`Stepper::save`] writes: the state of each parameter in visiting order (`None` for one
/// that has had no update yet).
type OrderedRecord<B> = Vec<Option<AdaptorRecord<QwenAdamW, B>>>;

/// Version of the saved optimizer record's layout ([`StepperState::format`]).
const RECORD_FORMAT: u32 = 2;

struct Ids(Vec<ParamId>);

impl<B: Backend> ModuleVisitor<B> for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.id);
    }
}

fn ids_of<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> Vec<ParamId> {
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Updates taken so far, this one included.
    pub step: u64,
    /// The learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// Where a saved [`Stepper`] stood: what [`Stepper::save`] returns, to be kept in the caller's
/// state file and given back to [`Stepper::load`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepperState {
    /// Updates taken.
    pub step: u64,
    /// Parameters (tensors) of the module, the length of the optimizer record.
    pub params: usize,
    /// Layout of the optimizer record (2: in visiting order; 1, keyed by parameter id, is refused).
    #[serde(default)]
    pub format: u32,
}

/// AdamW ([`QwenAdamW`], the report's settings unless changed) with a schedule, global-norm
/// clipping, NaN/Inf refusal and an update counter, for any module `M`.
pub struct Stepper<B: AutodiffBackend, M: AutodiffModule<B>> {
    optim: OptimizerAdaptor<QwenAdamW, M, B>,
    config: OptimConfig,
    schedule: Schedule,
    step: u64,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Stepper<B, M> {
    /// A stepper at update 0 with fresh optimizer state; fails on out-of-range settings.
    pub fn new(config: OptimConfig, schedule: Schedule) -> Result<Self> {
        config.validate()?;
        schedule.validate()?;
        Ok(Self { optim: OptimizerAdaptor::from(QwenAdamW { config }), config, schedule, step: 0 })
    }

    /// Updates taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The rate the next update will use.
    pub fn next_lr(&self) -> f64 {
        self.schedule.lr(self.step)
    }

    pub fn config(&self) -> &OptimConfig {
        &self.config
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Checks that `loss` and the gradient norm are finite, clips, and updates `module`.
    ///
    /// # Errors
    /// [`TrainError::NonFinite`] (with the number of updates taken so far): then neither `module`,
    /// the optimizer state nor the counter changes.
    pub fn apply(&mut self, module: &mut M, loss: f32, mut grads: GradientsParams) -> Result<Applied> {
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step: self.step, what: "loss" });
        }
        let norm = match self.config.clip_norm {
            Some(max) => clip_global_norm::<B, M>(module, &mut grads, max as f64),
            None => global_norm::<B, M>(module, &grads),
        };
        if !norm.is_finite() {
            return Err(TrainError::NonFinite { step: self.step, what: "gradient norm" });
        }
        let lr = self.schedule.lr(self.step);
        *module = self.optim.step(lr, module.clone(), grads);
        self.step += 1;
        Ok(Applied { step: self.step, lr, grad_norm: norm as f32 })
    }

    /// Writes the optimizer state to `path` (the recorder adds `.bin`), each parameter's in
    /// `module`'s visiting order, and returns the counter and the parameter count, which
    /// [`Stepper::load`] needs.
    pub fn save(&self, module: &M, path: impl AsRef<Path>) -> Result<StepperState> {
        let path = path.as_ref().to_path_buf();
        let mut keyed = self.optim.to_record();
        let ids = ids_of::<B, M>(module);
        let ordered: OrderedRecord<B> = ids.iter().map(|id| keyed.remove(id)).collect();
        if !keyed.is_empty() {
            return Err(TrainError::Mismatch(format!(
                "the optimizer holds state for {} parameters the module does not have",
                keyed.len()
            )));
        }
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(ordered, path.clone())
            .map_err(|e| TrainError::Record { path, reason: e.to_string() })?;
        Ok(StepperState { step: self.step, params: ids.len(), format: RECORD_FORMAT })
    }

    /// The stepper [`Stepper::save`] wrote to `path`, at the saved update count, for `module` (any
    /// copy of the saved module, whatever its parameter ids: the state is matched to them by
    /// visiting order). `config` and `schedule` are the run's (they are not in the record).
    ///
    /// # Errors
    /// [`TrainError::Mismatch`] for another record layout or parameter count,
    /// [`TrainError::Record`] when the file cannot be read.
    pub fn load(
        config: OptimConfig,
        schedule: Schedule,
        state: &StepperState,
        path: impl AsRef<Path>,
        module: &M,
        device: &B::Device,
    ) -> Result<Self> {
        if state.format != RECORD_FORMAT {
            return Err(TrainError::Mismatch(format!(
                "optimizer record format {} (this build reads {RECORD_FORMAT})",
                state.format
            )));
        }
        let ids = ids_of::<B, M>(module);
        if ids.len() != state.params {
            return Err(TrainError::Mismatch(format!(
                "the model has {} parameters, the optimizer record {}",
                ids.len(),
                state.params
            )));
        }
        let mut stepper = Self::new(config, schedule)?;
        let path = path.as_ref().to_path_buf();
        let ordered: OrderedRecord<B> = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(path.clone(), device)
            .map_err(|e| TrainError::Record { path: path.clone(), reason: e.to_string() })?;
        if ordered.len() != ids.len() {
            return Err(TrainError::Record {
                path,
                reason: format!("{} parameters' state, {} expected", ordered.len(), ids.len()),
            });
        }
        let mut keyed = KeyedRecord::<B, M>::default();
        for (id, record) in ids.into_iter().zip(ordered) {
            if let Some(record) = record {
                keyed.insert(id, record);
            }
        }
        stepper.optim = stepper.optim.load_record(keyed);
        stepper.step = state.step;
        Ok(stepper)
    }
}

/// A constant rate after `warmup` steps of linear warm-up (the report's reward model: a constant
/// 3e-6; its PPO: 1e-6 for the policy, 5e-6 for the value model).
pub fn constant(lr: f64, warmup: u64) -> Schedule {
    Schedule::new(lr, warmup, warmup).with_min_lr_ratio(1.0)
}
