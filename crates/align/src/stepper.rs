//! One optimizer update for any module: the pretraining trainer's checks, clipping and AdamW,
//! for the models alignment trains (a policy, a reward or value model).

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use qwen_train::{clip_global_norm, global_norm, OptimConfig, QwenAdamW, Schedule};

use crate::error::{AlignError, Result};

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied {
    /// Updates taken so far, this one included.
    pub step: u64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// AdamW (the report's settings unless changed) with a schedule and global-norm clipping.
pub struct Stepper<B: AutodiffBackend, M: AutodiffModule<B>> {
    optim: OptimizerAdaptor<QwenAdamW, M, B>,
    config: OptimConfig,
    schedule: Schedule,
    step: u64,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Stepper<B, M> {
    pub fn new(config: OptimConfig, schedule: Schedule) -> Result<Self> {
        config.validate()?;
        schedule.validate()?;
        Ok(Self { optim: OptimizerAdaptor::from(QwenAdamW { config }), config, schedule, step: 0 })
    }

    /// Updates taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Checks that `loss` and the gradient norm are finite, clips, and updates `module`.
    ///
    /// # Errors
    /// [`AlignError::NonFinite`]: then neither `module`, the optimizer state nor the step count
    /// changes.
    pub fn apply(&mut self, module: &mut M, loss: f32, mut grads: GradientsParams) -> Result<Applied> {
        if !loss.is_finite() {
            return Err(AlignError::NonFinite { step: self.step, what: "loss" });
        }
        let norm = match self.config.clip_norm {
            Some(max) => clip_global_norm::<B, M>(module, &mut grads, max as f64),
            None => global_norm::<B, M>(module, &grads),
        };
        if !norm.is_finite() {
            return Err(AlignError::NonFinite { step: self.step, what: "gradient norm" });
        }
        let lr = self.schedule.lr(self.step);
        *module = self.optim.step(lr, module.clone(), grads);
        self.step += 1;
        Ok(Applied { step: self.step, lr, grad_norm: norm as f32 })
    }
}

/// A constant rate after `warmup` steps (the report's reward model: a constant 3e-6).
pub fn constant(lr: f64, warmup: u64) -> Schedule {
    Schedule::new(lr, warmup, warmup).with_min_lr_ratio(1.0)
}
