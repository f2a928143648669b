//! The Qwen transformer (Qwen-1, Qwen2/2.5, Qwen3, Qwen2-MoE and Qwen3-MoE) on any burn backend.
//!
//! - [`config`]: HF `config.json` of either family, validated, into one [`QwenConfig`].
//! - [`batch`]: the input, token rows of any lengths left-padded into one `[batch, seq]` tensor.
//! - [`qwen`]: the model, top to bottom, with its KV cache (per-row padding, positions and RoPE
//!   frequencies; rows leave the batch when they finish).
//! - [`lm`]: [`CausalLm`], the face training, scoring and alignment are written against.
//! - [`init`]: the layer layout, written once, filled from random draws or a checkpoint.
//! - [`generate`]: KV-cache generation and sampling.
//! - [`packed`]: projection weights kept as bf16, f16 or Q8_0 for CPU inference
//!   ([`WeightDtype`], chosen at load) and the matmul kernel that reads them.
//! - [`lora`]: LoRA adapters on the projections, saved and loaded in PEFT's layout, merged.
//! - [`mod@load`]: HF safetensors (single or sharded; f32/bf16/f16) in either naming scheme;
//!   [`save`] writes them back.
//! - [`gguf`]: llama.cpp's GGUF files (reader and dequantization); [`mod@load_gguf`] builds a
//!   Qwen2/Qwen3 model from one ([`fn@load`] takes a `.gguf` file as well as a folder).
//!
//! Long-context behaviour that a checkpoint's config asks for (Qwen-1 dynamic NTK and LogN, HF
//! dynamic RoPE and YaRN, Qwen2 sliding windows) comes from the `qwen-context` crate.
//!
//! ```
//! use burn::backend::Flex;
//! use qwen_model::{GenerateConfig, QwenConfigBuilder, SamplingConfig};
//!
//! // A small random model (or `qwen_model::load::<Flex>("DIR", &device)` for a checkpoint).
//! let device = Default::default();
//! let model = QwenConfigBuilder::tiny(512).layers(1).build()?.init::<Flex>(&device);
//! // Prompts of different lengths share one left-padded batch and one KV cache.
//! let config = GenerateConfig { max_new_tokens: 4, stop_ids: vec![], sampling: SamplingConfig::default() };
//! let replies = model.generate_batch(&[vec![1, 2, 3, 4, 5], vec![7]], &config, |_row, _token| true)?;
//! assert!(replies.iter().all(|r| r.len() == 4));
//! # Ok::<(), qwen_model::ModelError>(())
//! ```

pub mod batch;
pub mod config;
mod error;
pub mod generate;
pub mod gguf;
mod host_attention;
pub mod init;
pub mod lm;
pub mod load;
pub mod load_gguf;
pub mod lora;
pub mod moe;
pub mod packed;
pub mod qwen;
pub mod save;

pub use batch::{Batch, PAD_ID};
pub use config::{Family, QwenConfig, QwenConfigBuilder};
pub use error::{ModelError, Result};
pub use generate::{GenerateConfig, Sampler, SamplingConfig};
pub use lm::CausalLm;
pub use load::{load, load_as, load_with, Checkpoint};
pub use load_gguf::{gguf_config, load_gguf, load_gguf_as};
pub use lora::{Lora, LoraConfig, LoraTarget};
pub use moe::SparseMoe;
pub use packed::{PackedMatrix, WeightDtype};
pub use qwen::{FeedForward, KvCache, LayerCache, Logits, Mode, Precision, Qwen, QwenModel};
pub use save::{Extra, SaveDtype};
