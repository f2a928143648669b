//! Long-context mechanics, framework-free: the model asks three small questions and this crate
//! answers them.
//!
//! - [`Rope`]: which RoPE inverse frequencies (and cos/sin scale) to use for a sequence of a
//!   given length, and whether they may change while decoding ([`rope`]; the variants are the
//!   [`RopeScaling`] enum: plain, NTK, Qwen-1 dynamic NTK, HF dynamic, YaRN).
//! - [`LogN`]: a per-position factor on the query (Qwen-1's LogN attention, [`logn`]).
//! - [`LayerWindows`]: how many keys each layer may see (Qwen2 sliding window, the report's
//!   layer-wise window, [`window`]).
//!
//! The variants are enums and data, not traits: every behaviour a config can ask for is one
//! value the model reads, so configs (de)serialize them and tests cover each.
//!
//! Everything here is plain `f32`/`usize` math, tested against the formulas of
//! `qwen-reference.md`; the model crate turns the answers into tensors.

pub mod logn;
pub mod rope;
pub mod window;

pub use logn::LogN;
pub use rope::{Rope, RopeConvention, RopeFrequencies, RopeScaling};
pub use window::LayerWindows;

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
