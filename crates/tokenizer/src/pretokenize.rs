//! Pre-tokenization: cutting text into the pieces that BPE then encodes one by one.
//!
//! Qwen uses cl100k's split pattern with `\p{N}{1,3}` replaced by `\p{N}` (every digit is its own
//! piece), [`QWEN_PATTERN`]. The pattern has a look-ahead (`\s+(?!\S)`), so the `regex` crate cannot
//! run it and tiktoken falls back to fancy-regex's backtracking VM, which dominates its encode time.
//! [`Pretokenizer::Qwen`] is a hand-written scanner for exactly that pattern: one forward pass, no
//! backtracking, an ASCII fast path. Its character classes (`\p{L}`, `\p{N}`, `\s`, and the
//! case-insensitive letters of the contractions) are taken from `regex-syntax` — the very tables
//! fancy-regex uses — so the two cannot drift apart; a property test proves the scanner equal to
//! [`Pretokenizer::Regex`] compiled from the same pattern.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

use crate::error::{Result, TokenizerError};

/// Qwen's split pattern (tokenization_qwen.py `PAT_STR`), byte for byte.
pub const QWEN_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's split pattern, used by HF `ByteLevel` pre-tokenizers with `use_regex: true`.
pub const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// How text is cut into pieces before BPE.
#[derive(Debug, Clone)]
pub enum Pretokenizer {
    /// The fast scanner for [`QWEN_PATTERN`].
    Qwen,
    /// Any pattern, run by fancy-regex (leftmost-first, like tiktoken and HF `Split`).
    Regex(Box<fancy_regex::Regex>),
}

impl Pretokenizer {
    /// The pre-tokenizer for `pattern`: the fast scanner when it is Qwen's, fancy-regex otherwise.
    pub fn from_pattern(pattern: &str) -> Result<Self> {
        if pattern == QWEN_PATTERN {
            Ok(Self::Qwen)
        } else {
            Self::regex(pattern)
        }
    }

    /// The fancy-regex pre-tokenizer for `pattern`, even when a faster one exists.
    pub fn regex(pattern: &str) -> Result<Self> {
        fancy_regex::Regex::new(pattern)
            .map(|re| Self::Regex(Box::new(re)))
            .map_err(|e| TokenizerError::InvalidPattern { pattern: pattern.to_string(), reason: e.to_string() })
    }

    /// The pattern this pre-tokenizer implements.
    pub fn pattern(&self) -> &str {
        match self {
            Self::Qwen => QWEN_PATTERN,
            Self::Regex(re) => re.as_str(),
        }
    }

    /// Calls `f` with every piece of `text`, in order. The pieces cover `text` exactly.
    #[inline]
    pub fn for_each_piece(&self, text: &str, mut f: impl FnMut(&str)) -> Result<()> {
        match self {
            Self::Qwen => {
                let mut start = 0;
                while start < text.len() {
                    let end = qwen_piece_end(text.as_bytes(), start);
                    f(&text[start..end]);
                    start = end;
                }
                Ok(())
            }
            Self::Regex(re) => {
                for m in re.find_iter(text) {
                    let m = m.map_err(|e| TokenizerError::InvalidPattern {
                        pattern: re.as_str().to_string(),
                        reason: e.to_string(),
                    })?;
                    f(m.as_str());
                }
                Ok(())
            }
        }
    }

    /// All pieces of `text` (convenience for tests and tools; the encoder uses `for_each_piece`).
    pub fn pieces<'a>(&self, text: &'a str) -> Result<Vec<&'a str>> {
        let mut out = Vec::new();
        let base = text.as_ptr() as usize;
        self.for_each_piece(text, |p| {
            let s = p.as_ptr() as usize - base;
            out.push(&text[s..s + p.len()]);
        })?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Character classes

/// Class of a character as the Qwen pattern sees it. Every character has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Cc {
    /// Not a letter, number or whitespace: `[^\s\p{L}\p{N}]`.
    Other = 0,
    /// `\p{L}`
    Letter = 1,
    /// `\p{N}`
    Number = 2,
    /// `\s` other than `\r` and `\n`.
    Space = 3,
    /// `\r` or `\n`.
    Newline = 4,
}

/// The low three bits of a character's flags hold its [`Cc`].
const CLASS_MASK: u16 = 0b111;
/// Flag bits for the letters of the contractions, `(?i)`-folded as the regex crate folds them
/// (so `'ſ` is a contraction, as in tiktoken).
const F_S: u16 = 1 << 3;
const F_T: u16 = 1 << 4;
const F_R: u16 = 1 << 5;
const F_V: u16 = 1 << 6;
const F_M: u16 = 1 << 7;
const F_E: u16 = 1 << 8;
const F_L: u16 = 1 << 9;
const F_D: u16 = 1 << 10;

/// A two-level table from code point to (class | contraction flags, more flags): 256-entry blocks
/// deduplicated, so the whole of Unicode costs a few tens of KB and one extra load per lookup.
struct Table {
    ascii: [u16; 128],
    stage1: Vec<u16>,
    blocks: Vec<[u16; 256]>,
}

fn unicode_class(expr: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::Parser::new().parse(expr).expect("static class expression");
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => {
            cls.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect()
        }
        HirKind::Literal(lit) => {
            let c = std::str::from_utf8(&lit.0).expect("utf8").chars().next().expect("char") as u32;
            vec![(c, c)]
        }
        other => panic!("unexpected HIR for {expr}: {other:?}"),
    }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut flat = vec![0u16; 0x11_0000];
        let mut set = |expr: &str, value: u16, replace_class: bool| {
            for (lo, hi) in unicode_class(expr) {
                for cp in lo..=hi {
                    let v = &mut flat[cp as usize];
                    *v = if replace_class { (*v & !CLASS_MASK) | value } else { *v | value };
                }
            }
        };
        set(r"\p{L}", Cc::Letter as u16, true);
        set(r"\p{N}", Cc::Number as u16, true);
        set(r"\s", Cc::Space as u16, true);
        set(r"[\r\n]", Cc::Newline as u16, true);
        set("(?i)s", F_S, false);
        set("(?i)t", F_T, false);
        set("(?i)r", F_R, false);
        set("(?i)v", F_V, false);
        set("(?i)m", F_M, false);
        set("(?i)e", F_E, false);
        set("(?i)l", F_L, false);
        set("(?i)d", F_D, false);
        let mut ascii = [0u16; 128];
        ascii.copy_from_slice(&flat[..128]);
        let mut stage1 = Vec::with_capacity(flat.len() / 256);
        let mut blocks: Vec<[u16; 256]> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for chunk in flat.chunks_exact(256) {
            let block: [u16; 256] = chunk.try_into().expect("256");
            let idx = *seen.entry(block).or_insert_with(|| {
                blocks.push(block);
                blocks.len() - 1
            });
            stage1.push(idx as u16);
        }
        Table { ascii, stage1, blocks }
    })
}

impl Table {
    #[inline(always)]
    fn flags(&self, cp: u32) -> u16 {
        if cp < 128 {
            self.ascii[cp as usize]
        } else {
            self.blocks[self.stage1[(cp >> 8) as usize] as usize][(cp & 0xff) as usize]
        }
    }
}

#[inline(always)]
fn class_of(flags: u16) -> Cc {
    match flags & CLASS_MASK {
        0 => Cc::Other,
        1 => Cc::Letter,
        2 => Cc::Number,
        3 => Cc::Space,
        _ => Cc::Newline,
    }
}

/// Decodes the character at byte `i` of valid UTF-8: (code point, byte length).
#[inline(always)]
fn char_at(s: &[u8], i: usize) -> (u32, usize) {
    let b0 = s[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F), 3)
    } else {
        let cp = ((b0 & 0x07) << 18)
            | ((s[i + 1] as u32 & 0x3F) << 12)
            | ((s[i + 2] as u32 & 0x3F) << 6)
            | (s[i + 3] as u32 & 0x3F);
        (cp, 4)
    }
}

/// Flags of the character at `i`, or `None` at the end of the text.
#[inline(always)]
fn flags_at(t: &Table, s: &[u8], i: usize) -> Option<(u16, usize)> {
    if i >= s.len() {
        return None;
    }
    let b = s[i];
    if b < 0x80 {
        return Some((t.ascii[b as usize], 1));
    }
    let (cp, n) = char_at(s, i);
    Some((t.flags(cp), n))
}

/// End of the run of characters of class `cc` starting at `i`.
#[inline(always)]
fn run_end(t: &Table, s: &[u8], mut i: usize, cc: Cc) -> usize {
    // ASCII letters are most of most text: stay in a tight byte loop while we can.
    while i < s.len() {
        let b = s[i];
        if b < 0x80 {
            if class_of(t.ascii[b as usize]) != cc {
                return i;
            }
            i += 1;
        } else {
            let (cp, n) = char_at(s, i);
            if class_of(t.flags(cp)) != cc {
                return i;
            }
            i += n;
        }
    }
    i
}

/// End (exclusive byte offset) of the piece of [`QWEN_PATTERN`] that starts at `i < s.len()`.
///
/// Follows the alternatives in order, as a leftmost-first backtracking engine would:
/// 1. `(?i:'s|'t|'re|'ve|'m|'ll|'d)`
/// 2. `[^\r\n\p{L}\p{N}]?\p{L}+`
/// 3. `\p{N}`
/// 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
/// 5. `\s*[\r\n]+`
/// 6. `\s+(?!\S)`
/// 7. `\s+`
fn qwen_piece_end(s: &[u8], i: usize) -> usize {
    let t = table();
    let (f0, n0) = flags_at(t, s, i).expect("i < len");
    let c0 = class_of(f0);
    let next = flags_at(t, s, i + n0);

    // 1. contractions
    if s[i] == b'\'' {
        if let Some((f1, n1)) = next {
            let j = i + n0 + n1;
            if f1 & (F_S | F_T | F_M | F_D) != 0 {
                return j;
            }
            if let Some((f2, n2)) = flags_at(t, s, j) {
                if (f1 & (F_R | F_V) != 0 && f2 & F_E != 0) || (f1 & F_L != 0 && f2 & F_L != 0) {
                    return j + n2;
                }
            }
        }
    }
    match c0 {
        // 2. a letter run
        Cc::Letter => run_end(t, s, i + n0, Cc::Letter),
        // 3. one digit
        Cc::Number => i + n0,
        // 2. one non-letter/number/newline character glued to a letter run; else 4. punctuation
        Cc::Other => match next {
            Some((f1, n1)) if class_of(f1) == Cc::Letter => run_end(t, s, i + n0 + n1, Cc::Letter),
            _ => {
                let j = run_end(t, s, i + n0, Cc::Other);
                run_end(t, s, j, Cc::Newline)
            }
        },
        Cc::Space | Cc::Newline => {
            if c0 == Cc::Space {
                if let Some((f1, n1)) = next {
                    match class_of(f1) {
                        // 2. e.g. " word", "\tword", NBSP + word
                        Cc::Letter => return run_end(t, s, i + n0 + n1, Cc::Letter),
                        // 4. " ?" punctuation: only a plain space may lead it
                        Cc::Other if s[i] == b' ' => {
                            let j = run_end(t, s, i + n0 + n1, Cc::Other);
                            return run_end(t, s, j, Cc::Newline);
                        }
                        _ => {}
                    }
                }
            }
            // The whitespace run [i, end), and where its last character and last newline start.
            let mut j = i;
            let mut last_start = i;
            let mut last_newline_end = None;
            while let Some((f, n)) = flags_at(t, s, j) {
                match class_of(f) {
                    Cc::Space => {}
                    Cc::Newline => last_newline_end = Some(j + n),
                    _ => break,
                }
                last_start = j;
                j += n;
            }
            if let Some(e) = last_newline_end {
                // 5. `\s*[\r\n]+`: backtracks to the last newline of the run
                e
            } else if j == s.len() || last_start == i {
                // 6. at the end of text `(?!\S)` holds; 7. a single space before a non-space
                j
            } else {
                // 6. `\s+(?!\S)`: leave the last space for the next piece (" word")
                last_start
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(text: &str) -> (Vec<String>, Vec<String>) {
        let fast = Pretokenizer::Qwen.pieces(text).unwrap().into_iter().map(String::from).collect();
        let slow =
            Pretokenizer::regex(QWEN_PATTERN).unwrap().pieces(text).unwrap().into_iter().map(String::from).collect();
        (fast, slow)
    }

    #[test]
    fn matches_regex_on_tricky_cases() {
        for text in [
            "Hello world",
            "I'm here, they'RE 'll 'LL 'ſ 'Ss",
            "  leading and trailing  ",
            "a\r\n\r\n  b\n \n",
            "12345 678.9",
            "x\u{a0}y\u{3000}z \u{2028}w",
            "!!!\n\n?? ...  --\r\r\n",
            "'hello' \"quoted\"",
            "\t\ttabs\t",
            "中文字符，标点。",
            "emoji 👍🏽 and 🇩🇪",
            " ",
            "\n",
            "'",
            "' s",
        ] {
            let (fast, slow) = both(text);
            assert_eq!(fast, slow, "text {text:?}");
        }
    }

    #[test]
    fn digits_are_split_one_by_one() {
        let pieces = Pretokenizer::Qwen.pieces("2023 年").unwrap();
        assert_eq!(pieces, ["2", "0", "2", "3", " 年"]);
    }
}
