//! One optimizer update for any module: the checks, clipping and AdamW step that the pretraining
//! [`Trainer`](crate::Trainer) and every alignment trainer (policy, reward and value models) share.
//!
//! [`Stepper::apply`]: a NaN/Inf loss is refused before anything else; the gradients are clipped
//! to the global norm ([`OptimConfig::clip_norm`]) and a NaN/Inf norm is refused; the rate comes from
//! the schedule at the number of updates taken so far; then [`QwenAdamW`] updates the module and the
//! counter advances. A refused update leaves the module, the optimizer state and the counter as they
//! were ([`TrainError::NonFinite`]).
//!
//! [`Stepper::save`] / [`Stepper::load`] persist the optimizer state together with the module's
//! parameter ids it is keyed by (see [`crate::persist`]).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{clip_global_norm, global_norm, OptimConfig, QwenAdamW};
use crate::persist::param_ids;
use crate::schedule::Schedule;

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
    /// The module's parameter ids in visiting order (the keys of the optimizer record).
    pub param_ids: Vec<u64>,
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

    /// Writes the optimizer record to `path` (the recorder adds `.bin`) and returns the counter and
    /// `module`'s parameter ids, which [`Stepper::load`] needs.
    pub fn save(&self, module: &M, path: impl AsRef<Path>) -> Result<StepperState> {
        let path = path.as_ref().to_path_buf();
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(self.optim.to_record(), path.clone())
            .map_err(|e| TrainError::Record { path, reason: e.to_string() })?;
        Ok(StepperState { step: self.step, param_ids: param_ids::<B, M>(module) })
    }

    /// The stepper [`Stepper::save`] wrote to `path`, at the saved update count. `config` and
    /// `schedule` are the run's (they are not in the record). The module it steps must have the
    /// saved parameter ids back ([`crate::persist::with_param_ids`], [`crate::persist::load_trainable`]): a module
    /// loaded from weights gets fresh ones, and the record is keyed by id.
    pub fn load(
        config: OptimConfig,
        schedule: Schedule,
        state: &StepperState,
        path: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self> {
        let mut stepper = Self::new(config, schedule)?;
        let path = path.as_ref().to_path_buf();
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(path.clone(), device)
            .map_err(|e| TrainError::Record { path, reason: e.to_string() })?;
        stepper.optim = stepper.optim.load_record(record);
        stepper.step = state.step;
        Ok(stepper)
    }
}

/// A constant rate after `warmup` steps of linear warm-up (the report's reward model: a constant
/// 3e-6; its PPO: 1e-6 for the policy, 5e-6 for the value model).
pub fn constant(lr: f64, warmup: u64) -> Schedule {
    Schedule::new(lr, warmup, warmup).with_min_lr_ratio(1.0)
}
