//! The one error type of the alignment crate.

use thiserror::Error;

/// Everything alignment can fail with.
#[derive(Debug, Error)]
pub enum AlignError {
    #[error(transparent)]
    Model(#[from] qwen_model::ModelError),
    /// Training-crate errors other than a non-finite update (that one is [`AlignError::NonFinite`]).
    #[error(transparent)]
    Train(qwen_train::TrainError),
    #[error(transparent)]
    Tokenizer(#[from] qwen_tokenizer::TokenizerError),
    #[error(transparent)]
    Data(#[from] qwen_data::DataError),
    /// A sequence does not fit the length it must be packed into.
    #[error("sequence of {len} tokens exceeds the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error("invalid config: {0}")]
    Config(String),
    /// A loss or gradient norm was NaN or infinite; nothing was updated.
    #[error("non-finite {what} at step {step}")]
    NonFinite { step: u64, what: &'static str },
}

impl From<qwen_train::TrainError> for AlignError {
    /// The shared [`Stepper`](qwen_train::Stepper) refuses NaN/Inf updates with the training
    /// crate's error; alignment reports them as its own [`AlignError::NonFinite`].
    fn from(e: qwen_train::TrainError) -> Self {
        match e {
            qwen_train::TrainError::NonFinite { step, what } => Self::NonFinite { step, what },
            e => Self::Train(e),
        }
    }
}

/// `Result` with [`AlignError`].
pub type Result<T, E = AlignError> = std::result::Result<T, E>;
