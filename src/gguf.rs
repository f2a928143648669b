//! A GGUF file as one whole: the model ([`qwen_model::load_gguf`]), the tokenizer in its
//! `tokenizer.ggml.*` metadata ([`tokenizer`]) and its chat template ([`chat_template`]), for
//! `generate --model FILE.gguf [--chat]` with no other file.

use qwen_model::gguf::{GgufFile, Value};
use qwen_model::ModelError;
use qwen_tokenizer::template::ChatTemplate;
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

/// The Jinja chat template in `tokenizer.chat_template`, if any, with the texts of the
/// `tokenizer.ggml.bos_token_id`/`eos_token_id` tokens as its `bos_token`/`eos_token`.
pub fn chat_template(file: &GgufFile) -> Result<Option<ChatTemplate>, GgufTokenizerError> {
    let Some(source) = file.get("tokenizer.chat_template") else { return Ok(None) };
    let source = source.as_str().ok_or_else(|| file.error("tokenizer.chat_template is not a string"))?;
    let tokens = file.opt_strings("tokenizer.ggml.tokens")?.unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>, ModelError> {
        Ok(file.opt_u64(key)?.and_then(|id| tokens.get(usize::try_from(id).ok()?)).map(|t| t.to_string()))
    };
    let (bos, eos) = (text("tokenizer.ggml.bos_token_id")?, text("tokenizer.ggml.eos_token_id")?);
    Ok(Some(ChatTemplate::new(source)?.with_special_tokens(bos, eos)))
}
