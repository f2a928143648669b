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
//! ```
//! use qwen_context::{qwen_ntk_alpha, LayerWindows, LogN, Rope, RopeScaling};
//!
//! // Qwen-1 with `use_dynamic_ntk` trained at 2048: plain RoPE inside, NTK-scaled past it.
//! let rope = Rope::new(10000.0, 128, RopeScaling::QwenDynamicNtk { seq_length: 2048 })?;
//! assert_eq!(qwen_ntk_alpha(4096, 2048), 3.0);
//! assert!(rope.frequencies(4096).inv_freq[63] < rope.frequencies(2048).inv_freq[63]);
//! // LogN: queries past the training length are scaled by log_2048(p + 1).
//! assert_eq!(LogN { seq_length: 2048 }.scale(100, 4096), 1.0);
//! assert!(LogN { seq_length: 2048 }.scale(4000, 4096) > 1.0);
//! // The report's layer-wise windows: short at the bottom, long at the top.
//! let w = LayerWindows::layer_wise(4, 512, 2048)?;
//! assert_eq!((w.window(0), w.window(3)), (Some(512), Some(2048)));
//! # Ok::<(), qwen_context::ContextError>(())
//! ```
//!
//! Everything here is plain `f32`/`usize` math, tested against the formulas of
//! `qwen-reference.md`; the model crate turns the answers into tensors.

pub mod logn;
pub mod rope;
pub mod window;

pub use logn::LogN;
pub use rope::{qwen_ntk_alpha, Rope, RopeConvention, RopeFrequencies, RopeScaling};
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
