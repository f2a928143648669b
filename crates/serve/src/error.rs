//! The one error type of the server, and how each kind answers over HTTP (OpenAI's error shape).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qwen_model::ModelError;
use qwen_tokenizer::TokenizerError;

use crate::api::ErrorBody;

/// What can go wrong serving a request (or starting the server).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Malformed JSON, a field of the wrong type, a value out of range.
    #[error("{message}")]
    BadRequest { message: String, param: Option<String> },
    /// The prompt and the tokens asked for do not fit in the model's context.
    #[error(
        "This model's maximum context length is {context} tokens. However, you requested {} tokens \
         ({prompt} in the prompt, {completion} for the completion). Please reduce the length of the prompt or the completion.",
        prompt + completion
    )]
    TooLong { prompt: usize, completion: usize, context: usize },
    #[error("Incorrect or missing API key: pass it as `Authorization: Bearer KEY`")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The wait queue is full.
    #[error("the server is busy: {waiting} requests are already waiting; retry later")]
    QueueFull { waiting: usize },
    /// The engine has stopped (shutting down, or it failed).
    #[error("the engine is not running: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with [`ServeError`].
pub type Result<T, E = ServeError> = std::result::Result<T, E>;

impl ServeError {
    /// A 400 about one request field.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        Self::BadRequest { message: message.into(), param: Some(param.to_string()) }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } | Self::TooLong { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Model(_) | Self::Tokenizer(_) | Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type` and `error.code`.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::BadRequest { .. } => ("invalid_request_error", None),
            Self::TooLong { .. } => ("invalid_request_error", Some("context_length_exceeded")),
            Self::Unauthorized => ("authentication_error", Some("invalid_api_key")),
            Self::NotFound(_) => ("invalid_request_error", Some("not_found")),
            Self::MethodNotAllowed => ("invalid_request_error", Some("method_not_allowed")),
            Self::PayloadTooLarge(_) => ("invalid_request_error", Some("payload_too_large")),
            Self::QueueFull { .. } => ("rate_limit_error", Some("queue_full")),
            Self::Unavailable(_) => ("server_error", Some("unavailable")),
            Self::Model(_) | Self::Tokenizer(_) | Self::Io(_) => ("server_error", None),
        }
    }

    /// The body OpenAI's API answers an error with.
    pub fn body(&self) -> ErrorBody {
        let (kind, code) = self.kind();
        let param = match self {
            Self::BadRequest { param, .. } => param.clone(),
            Self::TooLong { .. } => Some("messages".into()),
            _ => None,
        };
        ErrorBody::new(self.to_string(), kind, param, code)
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}
