//! The `.tiktoken` format: one line per ordinary token, `base64(token bytes) rank`.
//!
//! The file holds no pattern and no special tokens; [`Tokenizer::qwen_from_file`] adds Qwen-1's.

use std::io::{Read, Write};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rayon::prelude::*;

use crate::bpe::BytePairEncoder;
use crate::error::{Result, TokenizerError};
use crate::pretokenize::Pretokenizer;
use crate::special::{qwen_specials, SpecialTokens};
use crate::tokenizer::{Normalization, Tokenizer};

/// Number of ranks in Qwen-1's `qwen.tiktoken`.
pub const QWEN_RANKS: usize = 151_643;

/// Parses the contents of a `.tiktoken` file into `(token bytes, rank)` pairs.
pub fn parse_ranks(data: &[u8]) -> Result<Vec<(Vec<u8>, u32)>> {
    let text = std::str::from_utf8(data).map_err(|e| TokenizerError::MalformedTiktoken {
        line: data[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1,
        reason: "not UTF-8".into(),
    })?;
    // Decoded on all cores: the lines are independent, and loading is most of a short job's time.
    let lines: Vec<&str> = text.lines().collect();
    let out: Vec<(Vec<u8>, u32)> = lines
        .par_iter()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| {
            let bad = |reason: String| TokenizerError::MalformedTiktoken { line: i + 1, reason };
            let (tok, rank) = line.split_once(' ').ok_or_else(|| bad("expected `base64 rank`".into()))?;
            let bytes = B64.decode(tok).map_err(|e| bad(format!("bad base64 {tok:?}: {e}")))?;
            let rank: u32 = rank.trim().parse().map_err(|_| bad(format!("bad rank {rank:?}")))?;
            Ok((bytes, rank))
        })
        .collect::<Result<_>>()?;
    if out.is_empty() {
        return Err(TokenizerError::MalformedTiktoken { line: 0, reason: "no ranks".into() });
    }
    Ok(out)
}

/// Writes `(token bytes, rank)` pairs in `.tiktoken` format.
pub fn write_ranks<'a>(mut w: impl Write, ranks: impl IntoIterator<Item = (&'a [u8], u32)>) -> std::io::Result<()> {
    for (bytes, rank) in ranks {
        writeln!(w, "{} {rank}", B64.encode(bytes))?;
    }
    Ok(())
}

/// The largest vocabulary, tokenizer or template file read: 256 MiB (Qwen's `qwen.tiktoken` is
/// 2.5 MB, the largest published `tokenizer.json` files a few tens of MB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// The whole file, refused with [`std::io::ErrorKind::FileTooLarge`] past [`MAX_FILE_BYTES`]
/// (before it is read: at most the limit is ever held in memory).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    let io = |source| TokenizerError::Io { path: path.to_path_buf(), source };
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len <= MAX_FILE_BYTES {
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    }
    if len.max(bytes.len() as u64) > MAX_FILE_BYTES {
        let reason = format!("longer than the limit of {MAX_FILE_BYTES} bytes");
        return Err(io(std::io::Error::new(std::io::ErrorKind::FileTooLarge, reason)));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| TokenizerError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl Tokenizer {
    /// A tiktoken tokenizer from `.tiktoken` contents, special tokens and split pattern.
    pub fn from_tiktoken(data: &[u8], specials: Vec<(String, u32)>, pattern: &str) -> Result<Self> {
        let bpe = BytePairEncoder::from_ranks(parse_ranks(data)?)?;
        Tokenizer::new(bpe, SpecialTokens::new(specials)?, Pretokenizer::from_pattern(pattern)?, Normalization::None)
    }

    /// Qwen-1's tokenizer from its `qwen.tiktoken`: the Qwen split pattern, the 208 special tokens
    /// numbered after the ranks (151,643 → `<|endoftext|>`), no normalization (call
    /// [`Tokenizer::with_normalization`] with NFC for Qwen-1's `tokenize()` behaviour).
    pub fn qwen_from_tiktoken(data: &[u8]) -> Result<Self> {
        let bpe = BytePairEncoder::from_ranks(parse_ranks(data)?)?;
        let first = bpe.len() as u32;
        Tokenizer::new(bpe, SpecialTokens::new(qwen_specials(first))?, Pretokenizer::Qwen, Normalization::None)
    }

    /// [`Tokenizer::qwen_from_tiktoken`] on a file.
    pub fn qwen_from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::qwen_from_tiktoken(&read(path.as_ref())?)
    }

    /// Loads a `.tiktoken` file (as Qwen-1's) or a `tokenizer.json`, by file name.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_tokenizer_json_file(path)
        } else {
            Self::qwen_from_file(path)
        }
    }

    /// Writes the ordinary vocabulary as a `.tiktoken` file (atomically).
    pub fn save_tiktoken(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut buf = Vec::new();
        write_ranks(&mut buf, self.bpe.iter()).expect("writing to a Vec cannot fail");
        write_atomic(path.as_ref(), &buf)
    }
}
