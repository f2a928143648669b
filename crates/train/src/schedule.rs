//! Learning-rate schedule: linear warm-up from 0 to the peak over `warmup_steps`, then cosine
//! decay to `min_lr_ratio * peak` at `total_steps`, flat after that (burn 0.21 has no
//! warm-up + cosine scheduler, see docs/burn.md).
//!
//! `step` is the number of optimizer steps already taken, so the first update uses `lr(0)`.
//! During warm-up the rate is `peak * (step + 1) / warmup_steps`, so no step runs at 0.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Warm-up + cosine schedule, a pure function of the step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// Final rate as a fraction of the peak (0.1 in the Qwen report).
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// A schedule decaying to 10% of `peak_lr`.
    pub fn new(peak_lr: f64, warmup_steps: u64, total_steps: u64) -> Self {
        Self { peak_lr, warmup_steps, total_steps, min_lr_ratio: 0.1 }
    }

    pub fn with_min_lr_ratio(mut self, ratio: f64) -> Self {
        self.min_lr_ratio = ratio;
        self
    }

    /// Checks the ranges: finite positive peak, ratio in `[0, 1]`, warm-up not after the end.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak_lr.is_finite() && self.peak_lr > 0.0) {
            return Err(TrainError::Config(format!("peak_lr {} must be finite and > 0", self.peak_lr)));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(TrainError::Config(format!("min_lr_ratio {} must be in [0, 1]", self.min_lr_ratio)));
        }
        if self.warmup_steps > self.total_steps {
            return Err(TrainError::Config(format!(
                "warmup_steps {} exceeds total_steps {}",
                self.warmup_steps, self.total_steps
            )));
        }
        Ok(())
    }

    /// The rate for the update that follows `step` completed updates.
    pub fn lr(&self, step: u64) -> f64 {
        let min = self.peak_lr * self.min_lr_ratio;
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return min;
        }
        let span = (self.total_steps - self.warmup_steps) as f64;
        let progress = (step - self.warmup_steps) as f64 / span;
        min + (self.peak_lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn boundaries() {
        let s = Schedule::new(1e-3, 10, 110);
        s.validate().unwrap();
        assert!(close(s.lr(0), 1e-4));
        assert!(close(s.lr(4), 5e-4));
        assert!(close(s.lr(9), 1e-3));
        assert!(close(s.lr(10), 1e-3), "peak right after warm-up");
        assert!(close(s.lr(60), 0.55e-3), "half-way: midpoint of peak and min");
        assert!(close(s.lr(110), 1e-4), "10% at total_steps");
        assert!(close(s.lr(10_000), 1e-4), "flat after");
        for t in 10..110 {
            assert!(s.lr(t + 1) <= s.lr(t), "monotone decay at {t}");
        }
    }

    #[test]
    fn no_warmup_and_custom_ratio() {
        let s = Schedule::new(2.0, 0, 4).with_min_lr_ratio(0.0);
        assert!(close(s.lr(0), 2.0));
        assert!(close(s.lr(2), 1.0));
        assert!(close(s.lr(4), 0.0));
        assert!(Schedule::new(1.0, 5, 4).validate().is_err());
        assert!(Schedule::new(1.0, 0, 4).with_min_lr_ratio(1.5).validate().is_err());
        assert!(Schedule::new(f64::NAN, 0, 4).validate().is_err());
    }
}
