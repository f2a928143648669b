//! A GGUF file as one whole: the model ([`qwen_model::load_gguf`]) and the tokenizer in its
//! `tokenizer.ggml.*` metadata ([`tokenizer`]), for `generate --model FILE.gguf` with no separate
//! tokenizer file.

use qwen_model::gguf::{GgufFile, Value};
use qwen_model::ModelError;
use qwen_tokenizer::{GgufVocab, Tokenizer, TokenizerError};

/// Why a GGUF file's tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    /// The file or its metadata values are malformed.
    #[error(transparent)]
    File(#[from] ModelError),
    /// The values do not make a tokenizer this stack implements.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The tokenizer in a GGUF file's metadata ([`Tokenizer::from_gguf_vocab`]).
pub fn tokenizer(file: &GgufFile) -> Result<Tokenizer, GgufTokenizerError> {
    let strings = |key: &str| -> Result<Vec<&str>, ModelError> {
        file.opt_strings(key)?.ok_or_else(|| file.error(format!("{key} is missing")))
    };
    let token_types = match file.get("tokenizer.ggml.token_type") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|t| match *t {
                            Value::I32(x) => Some(i64::from(x)),
                            _ => t.as_u64().and_then(|x| i64::try_from(x).ok()),
                        })
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| file.error("tokenizer.ggml.token_type is not an array of integers"))?,
        ),
    };
    let vocab = GgufVocab {
        model: file.string("tokenizer.ggml.model")?,
        pre: file.get("tokenizer.ggml.pre").and_then(Value::as_str),
        tokens: strings("tokenizer.ggml.tokens")?,
        token_types,
        merges: file.opt_strings("tokenizer.ggml.merges")?.unwrap_or_default(),
    };
    Ok(Tokenizer::from_gguf_vocab(&vocab)?)
}
