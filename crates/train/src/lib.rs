//! Pretraining for the Qwen model on burn 0.21.
//!
//! - [`loss`]: next-token cross-entropy with an ignore index, via log-softmax.
//! - [`schedule`]: linear warm-up then cosine decay to a fraction of the peak.
//! - [`optim`]: AdamW (β 0.9/0.95, ε 1e-8, decay 0.1 on matrices only) and global-norm clipping.
//! - [`trainer`]: [`Trainer::train_step`] with gradient accumulation and NaN/Inf guards.
//! - [`checkpoint`]: atomic checkpoints (HF weights + optimizer record + `trainer_state.json`)
//!   and exact resume.
//!
//! There is no mixed precision: burn 0.21 has no autocast, so training runs in the backend's
//! float type.

pub mod checkpoint;
mod error;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use checkpoint::TrainerState;
pub use error::{Result, TrainError};
pub use loss::{cross_entropy, cross_entropy_sum, IGNORE_INDEX};
pub use optim::{apply_weight_decay, clip_global_norm, global_norm, OptimConfig, QwenOptimizer};
pub use schedule::Schedule;
pub use trainer::{StepStats, TrainConfig, Trainer};
