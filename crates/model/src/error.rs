//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong loading, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// config.json is not valid JSON, lacks a field, or has a value out of range.
    #[error("invalid config: {0}")]
    Config(String),
    /// A config asks for something this crate does not implement.
    #[error("unsupported config: {0}")]
    Unsupported(String),
    /// A safetensors file is truncated or malformed.
    #[error("malformed safetensors file {path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    /// The index of a sharded checkpoint is malformed or names a missing file.
    #[error("invalid checkpoint index {path}: {reason}")]
    Index { path: PathBuf, reason: String },
    /// A GGUF file is truncated or malformed, or lacks a metadata key the model needs.
    #[error("malformed GGUF file {path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    /// A GGUF tensor of a GGML type this crate does not dequantize.
    #[error("tensor {name} has GGML type {ggml_type}; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and Q2_K to Q6_K are read")]
    GgufType { name: String, ggml_type: String },
    #[error("no weights found in {0} (expected model.safetensors or model.safetensors.index.json)")]
    NoWeights(PathBuf),
    #[error("tensor {0} is missing from the checkpoint")]
    MissingTensor(String),
    #[error("tensor {0} is in the checkpoint but not in the model")]
    UnexpectedTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor {name} has dtype {dtype}, expected F32, BF16 or F16")]
    Dtype { name: String, dtype: String },
    /// A token id at or past the vocabulary size.
    #[error("token id {id} is out of range (vocabulary {vocab_size})")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    /// A sequence longer than the KV cache or the model allows.
    #[error("sequence of {len} tokens exceeds the limit of {limit}")]
    SequenceTooLong { len: usize, limit: usize },
    #[error("empty input")]
    EmptyInput,
    #[error("invalid sampling setting: {0}")]
    Sampling(String),
    #[error(transparent)]
    Context(#[from] qwen_context::ContextError),
}

/// `Result` with this crate's error.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
