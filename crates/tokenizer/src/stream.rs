//! Streaming decode: turn ids into text as they are generated, never splitting a character.

use crate::error::Result;
use crate::Tokenize;

/// Decodes ids one at a time for streaming output.
///
/// A multi-byte UTF-8 character can be spread over several tokens; bytes that may still become a
/// character are held back until it is complete. Bytes that can never be valid UTF-8 come out as
/// U+FFFD, as in [`crate::Tokenizer::decode_lossy`].
///
/// ```no_run
/// # use qwen_tokenizer::{Tokenizer, StreamDecoder};
/// # let tok = Tokenizer::qwen_from_file("vocab/qwen.tiktoken")?;
/// let mut stream = StreamDecoder::new(&tok);
/// for id in tok.encode_ordinary("héllo 👋")? {
///     print!("{}", stream.push(id)?);
/// }
/// print!("{}", stream.finish());
/// # Ok::<(), qwen_tokenizer::TokenizerError>(())
/// ```
pub struct StreamDecoder<'a> {
    tokenizer: &'a dyn Tokenize,
    pending: Vec<u8>,
}

impl std::fmt::Debug for StreamDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder").field("pending", &self.pending).finish_non_exhaustive()
    }
}

impl<'a> StreamDecoder<'a> {
    /// A decoder with nothing pending.
    pub fn new(tokenizer: &'a dyn Tokenize) -> Self {
        Self { tokenizer, pending: Vec::new() }
    }

    /// Adds one id; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.pending.extend(self.tokenizer.decode_bytes(&[id])?);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("checked"));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        Ok(out)
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: any incomplete character left comes out as U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
