//! Long-context mechanics, framework-free: the model asks three small questions and this crate
//! answers them.
//!
//! - [`RopeSchedule`]: which RoPE inverse frequencies (and cos/sin scale) to use for a sequence
//!   of a given length, and whether they may change while decoding ([`rope`]).
//! - [`QueryScale`]: a per-position factor on the query (Qwen-1's LogN attention, [`logn`]).
//! - [`AttentionWindow`]: how many keys each layer may see (Qwen2 sliding window, the report's
//!   layer-wise window, [`window`]).
//!
//! Everything here is plain `f32`/`usize` math, tested against the formulas of
//! `qwen-reference.md`; the model crate turns the answers into tensors.

pub mod logn;
pub mod rope;
pub mod window;

pub use logn::{LogN, QueryScale};
pub use rope::{Rope, RopeConvention, RopeFrequencies, RopeScaling, RopeSchedule};
pub use window::{AttentionWindow, LayerWindows};

/// Errors in long-context settings.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContextError {
    #[error("invalid RoPE setting: {0}")]
    InvalidRope(String),
    #[error("invalid window setting: {0}")]
    InvalidWindow(String),
}

/// `Result` with this crate's error.
pub type Result<T, E = ContextError> = std::result::Result<T, E>;
