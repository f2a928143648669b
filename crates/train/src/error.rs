//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong computing a loss, stepping, saving or resuming.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model rejected the input (empty or ragged batch, token out of range, ...).
    #[error(transparent)]
    Model(#[from] qwen_model::ModelError),
    /// The data pipeline failed (corpus preparation, shards, the loader).
    #[error(transparent)]
    Data(#[from] qwen_data::DataError),
    /// A batch is malformed: lengths disagree, or it has no token to learn from.
    #[error("invalid batch: {0}")]
    Batch(String),
    /// The loss or the gradient norm is NaN or infinite; the model was not updated.
    #[error("non-finite {what} at step {step}")]
    NonFinite { step: u64, what: &'static str },
    /// A configuration value is out of range.
    #[error("invalid config: {0}")]
    Config(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `trainer_state.json` is malformed.
    #[error("invalid trainer state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// burn's recorder failed to write or read the optimizer state.
    #[error("optimizer record {path}: {reason}")]
    Record { path: PathBuf, reason: String },
    /// burn-collective refused or failed an operation (registration, all-reduce).
    #[error("collective: {0}")]
    Collective(String),
    /// A multi-node setting is wrong (rank out of range, bad `HOST:PORT`, colliding ports, ...).
    #[error("invalid node config: {0}")]
    NodeConfig(String),
    /// A collective operation got no answer within the node's timeout: another node stopped, cannot
    /// be reached, or burn-collective is stuck (see `docs/training.md`). The process should exit:
    /// burn's waiting thread cannot be cancelled.
    #[error("collective {op} got no answer within {seconds} s: another node stopped, is unreachable, or burn-collective is stuck")]
    CollectiveTimeout { op: &'static str, seconds: f64 },
    /// burn-collective's global orchestrator could not be started on rank 0.
    #[error("global orchestrator on port {port}: {reason}")]
    Orchestrator { port: u16, reason: String },
    /// A chart could not be drawn or written.
    #[error("plot: {0}")]
    Plot(String),
    /// A checkpoint file is missing, truncated or changed since it was written (its sha256 or size
    /// differs from the folder's `checksums.json`), or the checksums file itself is missing or
    /// unreadable: the checkpoint was not loaded.
    #[error("damaged checkpoint {path}: {file}: {reason}")]
    Corrupt { path: PathBuf, file: String, reason: String },
    /// The checkpoint does not match the model it is loaded into.
    #[error("checkpoint mismatch: {0}")]
    Mismatch(String),
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
