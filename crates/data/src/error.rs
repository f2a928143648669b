//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading, tokenizing, packing or loading data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON Lines line is not valid JSON (or not a JSON object).
    #[error("malformed JSON at {path}:{line}: {reason}")]
    MalformedJsonl { path: PathBuf, line: usize, reason: String },
    /// A line longer than [`crate::line::MAX_LINE_BYTES`] (refused before it is read whole).
    #[error("{path}:{line}: line longer than {limit} bytes")]
    LineTooLong { path: PathBuf, line: usize, limit: usize },
    /// A JSON Lines record has no string `text` field.
    #[error("record at {path}:{line} has no string \"text\" field")]
    MissingText { path: PathBuf, line: usize },
    /// A shard does not start with `QWTK`.
    #[error("{path} is not a token shard (magic {found:?})")]
    BadMagic { path: PathBuf, found: [u8; 4] },
    /// A shard has a format version this crate cannot read.
    #[error("{path}: unsupported shard version {version}")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    /// A shard was written for another vocabulary.
    #[error("{path}: shard vocabulary size {found} differs from the expected {expected}")]
    VocabMismatch { path: PathBuf, expected: usize, found: usize },
    /// A shard is shorter (or longer) than its header says.
    #[error("{path}: shard holds {actual} bytes, its header implies {expected}")]
    Truncated { path: PathBuf, expected: u64, actual: u64 },
    /// A token id is not below the vocabulary size.
    #[error("{path}: token {index} has id {id}, not below vocabulary size {vocab_size}")]
    TokenOutOfRange { path: PathBuf, index: u64, id: u32, vocab_size: usize },
    /// A corpus source (folder or file) does not exist.
    #[error("{path} does not exist")]
    SourceMissing { path: PathBuf },
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] qwen_tokenizer::TokenizerError),
    /// A configuration that cannot work (zero lengths, no end-of-text id, empty loader, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
}

/// `Result` with this crate's error.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
