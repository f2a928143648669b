//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading, encoding, decoding or training.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A vocabulary or tokenizer file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `.tiktoken` file has a line that is not `base64(token) rank`.
    #[error("malformed tiktoken file at line {line}: {reason}")]
    MalformedTiktoken { line: usize, reason: String },
    /// A `tokenizer.json` file is not valid JSON or lacks a required field.
    #[error("malformed tokenizer.json: {0}")]
    MalformedTokenizerJson(String),
    /// A `tokenizer.json` uses a model, normalizer or pre-tokenizer this crate does not implement.
    #[error("unsupported tokenizer.json feature: {0}")]
    Unsupported(String),
    /// The vocabulary is inconsistent (duplicate ranks or tokens, gaps, missing single bytes, ...).
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    /// A split pattern did not compile.
    #[error("invalid split pattern {pattern:?}: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    /// An id that is neither an ordinary token nor a special token.
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },
    /// A special-token name that this vocabulary does not have.
    #[error("unknown special token {0:?}")]
    UnknownSpecial(String),
    /// Strict UTF-8 decoding was asked for and the ids decode to invalid UTF-8.
    #[error("decoded bytes are not valid UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    /// BPE training was asked for something it cannot do.
    #[error("BPE training: {0}")]
    Training(String),
    /// A chat template does not compile or render, or a `tokenizer_config.json` holds a
    /// malformed one.
    #[error("chat template: {0}")]
    Template(String),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's error.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
