//! Pretraining for the Qwen model on burn 0.21.
//!
//! - [`loss`]: next-token cross-entropy with an ignore index, via log-softmax.
//! - [`schedule`]: linear warm-up then cosine decay to a fraction of the peak.
//! - [`optim`]: AdamW (β 0.9/0.95, ε 1e-8, decay 0.1 on matrices only) and global-norm clipping.
//! - [`step`]: [`Stepper`], the one checked, clipped AdamW update every trainer here and in
//!   alignment uses (NaN/Inf refused with the model untouched).
//! - [`trainer`]: [`Trainer::train_step`] with gradient accumulation and NaN/Inf guards.
//! - [`checkpoint`]: atomic checkpoints (HF weights + optimizer record + `trainer_state.json`)
//!   and exact resume; [`persist`]: the atomic writes, state files and parameter ids they are
//!   made of, for any run.
//! - [`eval`]: held-out loss and perplexity.
//! - `parallel` (feature `collective`): data parallelism over devices with burn's all-reduce;
//!   `multinode`: over processes and machines (burn-collective's global orchestrator).
//! - [`metrics`]: the JSON Lines metrics log; [`plot`] (feature `plot`, on by default): PNG charts.
//! - [`run`]: a whole pretraining run as one call ([`run::pretrain`], [`run::train`]): corpus,
//!   step loop, evaluation cadence, metrics, curves, checkpoints, exact resume, replicas;
//!   [`progress`] (feature `progress`, on by default): its progress on stderr.
//!
//! Mixed precision ([`TrainConfig::precision`]): bf16 matmuls with f32 master weights, written out
//! in the model because burn 0.21 has no autocast.
//!
//! ```
//! use qwen_train::Schedule;
//! // The report's schedule: linear warm-up, then cosine decay to 10% of the peak.
//! let s = Schedule::new(3e-4, 100, 1000).with_min_lr_ratio(0.1);
//! assert!(s.lr(0) < s.lr(99) && (s.lr(100) - 3e-4).abs() < 1e-9);
//! assert!((s.lr(1000) - 3e-5).abs() < 1e-9);
//! ```

pub mod checkpoint;
mod error;
pub mod eval;
pub mod loss;
pub mod metrics;
#[cfg(feature = "collective")]
pub mod multinode;
pub mod optim;
#[cfg(feature = "collective")]
pub mod parallel;
pub mod persist;
#[cfg(feature = "plot")]
pub mod plot;
#[cfg(feature = "progress")]
pub mod progress;
pub mod run;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use checkpoint::TrainerState;
pub use error::{Result, TrainError};
pub use eval::{evaluate, EvalStats};
pub use loss::{
    cross_entropy, cross_entropy_fused, cross_entropy_sum, head_cross_entropy_fused,
    head_cross_entropy_fused_in_chunks, token_logprobs, FusedLoss, HeadLoss, IGNORE_INDEX,
};
pub use metrics::{read_metrics, MetricsLog};
pub use optim::{clip_global_norm, global_norm, OptimConfig, QwenAdamW, QwenOptimizer, Update};
pub use schedule::Schedule;
pub use step::{constant, Applied, Stepper, StepperState};
pub use trainer::{lm_nll_and_grads, lora_seed, StepStats, TrainConfig, Trainer};
