//! An OpenAI-compatible HTTP server for `qwen-model` with continuous batching.
//!
//! - [`engine`]: the batching loop on its own thread (bounded queue, per-request sampling and
//!   stop conditions, rows that join and leave the running batch at any step).
//! - [`api`]: the OpenAI JSON shapes.
//! - [`prompt`]: chat messages → prompt ids (the chat format seam).
//! - [`server`]: the axum routes on tokio, errors in OpenAI's shape, graceful shutdown.
//!
//! `examples/serve.rs` in the root package is the binary; `docs/serving.md` describes it.

pub mod api;
pub mod engine;
mod error;
pub mod prompt;
pub mod server;

pub use engine::{Engine, EngineConfig, Event, GenRequest};
pub use error::{Result, ServeError};
pub use prompt::ChatFormat;
pub use server::{router, serve, ServerConfig};
