//! Byte-level BPE tokenization for Qwen, with no dependency on any ML framework.
//!
//! - [`Tokenizer`] loads Qwen-1's `qwen.tiktoken` ([`Tokenizer::qwen_from_file`]) or an HF
//!   `tokenizer.json` ([`Tokenizer::from_tokenizer_json_file`]) or a GGUF file's metadata
//!   ([`Tokenizer::from_gguf_vocab`]) into one core: NFC normalization
//!   as an explicit option, special tokens that stay plain text unless allowed, a fast
//!   pre-tokenizer for Qwen's split pattern, and a byte-pair encoder ([`bpe`]).
//! - [`StreamDecoder`] decodes generated ids without ever splitting a character.
//! - [`chat`] renders ChatML exactly as Qwen-1's `make_context`, tagging each token's role.
//! - [`template`] renders a model folder's HF Jinja chat template as transformers does (Qwen2.5,
//!   Qwen3's `enable_thinking`, tools) and tokenizes it with message text kept plain.
//! - [`train`] learns new merges on a corpus, from bytes or on top of an existing vocabulary,
//!   and writes `.tiktoken` and `tokenizer.json` files.
//!
//! ```no_run
//! use qwen_tokenizer::{AllowedSpecial, Normalization, Tokenizer};
//! // Qwen-1's tokenizer: tiktoken ranks + 208 specials, NFC as in its `tokenize()`.
//! let tok = Tokenizer::qwen_from_file("vocab/qwen.tiktoken")?.with_normalization(Normalization::Nfc);
//! let ids = tok.encode("<|im_end|> stays text", &AllowedSpecial::None)?;
//! assert!(!ids.contains(&tok.special_id("<|im_end|>")?));
//! # Ok::<(), qwen_tokenizer::TokenizerError>(())
//! ```

pub mod bpe;
pub mod chat;
mod error;
mod gguf;
mod hf;
pub mod pretokenize;
pub mod special;
mod stream;
pub mod template;
pub mod tiktoken;
mod tokenizer;
pub mod train;

pub use chat::{ChatMl, ChatTokens, Message, Part, Role, Tag, DEFAULT_MAX_WINDOW, DEFAULT_SYSTEM};
pub use error::{Result, TokenizerError};
pub use gguf::GgufVocab;
pub use pretokenize::{Pretokenizer, QWEN_PATTERN};
pub use special::{AllowedSpecial, SpecialTokens};
pub use stream::StreamDecoder;
pub use template::{ChatTemplate, Prompt, RenderOptions};
pub use tokenizer::{Normalization, Tokenizer};

/// What the rest of the stack needs from a tokenizer: data pipelines, alignment and examples take
/// `&dyn Tokenize` (or a generic), so a test can plug in a toy byte-level tokenizer.
pub trait Tokenize: Send + Sync {
    /// Encodes text; special-token strings are plain text unless `allowed`.
    fn encode(&self, text: &str, allowed: &AllowedSpecial) -> Result<Vec<u32>>;
    /// The bytes the ids stand for.
    fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>>;
    /// The id of a special token, if the vocabulary has it.
    fn special_id(&self, name: &str) -> Option<u32>;
    /// One past the largest id.
    fn vocab_size(&self) -> usize;
}

impl Tokenize for Tokenizer {
    fn encode(&self, text: &str, allowed: &AllowedSpecial) -> Result<Vec<u32>> {
        Tokenizer::encode(self, text, allowed)
    }
    fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        Tokenizer::decode_bytes(self, ids)
    }
    fn special_id(&self, name: &str) -> Option<u32> {
        self.specials().id(name)
    }
    fn vocab_size(&self) -> usize {
        Tokenizer::vocab_size(self)
    }
}
