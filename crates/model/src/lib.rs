//! The Qwen transformer (Qwen-1 and Qwen2/2.5) on any burn backend.
//!
//! - [`config`]: HF `config.json` of either family, validated, into one [`QwenConfig`].
//! - [`qwen`]: the model, top to bottom, with its KV cache.
//! - [`generate`]: KV-cache generation and sampling.
//! - [`mod@load`]: HF safetensors (single or sharded; f32/bf16/f16) in either naming scheme;
//!   [`save`] writes them back.
//!
//! Long-context behaviour that a checkpoint's config asks for (Qwen-1 dynamic NTK and LogN, HF
//! dynamic RoPE and YaRN, Qwen2 sliding windows) comes from the `qwen-context` crate's traits.

pub mod config;
mod error;
pub mod generate;
pub mod load;
pub mod qwen;
pub mod save;

pub use config::{Family, QwenConfig};
pub use error::{ModelError, Result};
pub use generate::{GenerateConfig, Sampler, SamplingConfig};
pub use load::{load, load_with, Checkpoint};
pub use qwen::{KvCache, LayerCache, Mode, Precision, Qwen, QwenModel};
pub use save::{Extra, SaveDtype};
