//! The byte-pair encoder: one core behind both file formats.
//!
//! A piece of text (one pre-token) is encoded by starting from its bytes, each mapped to its
//! single-byte token, and repeatedly merging the adjacent pair with the lowest priority (the
//! leftmost one on ties) until no adjacent pair can merge. That is tiktoken's `_byte_pair_merge`
//! and HF's `Word::merge_all`; the two differ only in what a pair's priority is:
//! - tiktoken: the rank of the concatenated bytes, for any pair whose concatenation is a token;
//! - HF merges: the index of the pair in the `merges` list.
//!
//! Both become one table, `(left id, right id) -> (priority, merged id)`, so the merge loop looks up
//! a `u64` key instead of hashing byte strings (tiktoken hashes a fresh slice per candidate pair).
//!
//! Hot path (see [`BytePairEncoder::encode_piece`]): most pieces of real text are whole tokens, so a
//! piece is first looked up as a whole (tiktoken does the same). Only pieces that are not tokens
//! are merged: short ones with a flat quadratic scan over a stack buffer (fastest for the usual
//! 2–20 bytes), long ones with a binary heap and a linked list, so a megabyte of one repeated
//! character costs O(n log n) instead of tiktoken's O(n²).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::error::{Result, TokenizerError};

/// Below this many bytes a piece is merged by the quadratic scan; above it by the heap.
const HEAP_THRESHOLD: usize = 32;

/// Byte strings that are one token, to their id.
type WholeMap = FxHashMap<Box<[u8]>, u32>;

/// How pairs are prioritised; decides which pieces may be looked up whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeRule {
    /// tiktoken: any adjacent pair whose bytes concatenate to a token merges, lowest rank first.
    Ranks,
    /// HF `tokenizers`: only listed merges apply, in list order.
    Merges,
}

/// Ordinary (non-special) vocabulary plus merge table.
#[derive(Debug, Clone)]
pub struct BytePairEncoder {
    /// id -> bytes; an empty entry is an id the vocabulary does not use.
    tokens: Vec<Box<[u8]>>,
    /// Byte strings that encode to exactly one token, for the whole-piece shortcut.
    whole: FxHashMap<Box<[u8]>, u32>,
    /// byte -> its single-byte token.
    byte_ids: [u32; 256],
    /// (left << 32 | right) -> (priority, merged id).
    pairs: FxHashMap<u64, (u32, u32)>,
    rule: MergeRule,
}

#[inline(always)]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

impl BytePairEncoder {
    /// Builds a tiktoken-style encoder from `(token bytes, rank)` pairs; the rank is the id.
    pub fn from_ranks(ranks: impl IntoIterator<Item = (Vec<u8>, u32)>) -> Result<Self> {
        let (tokens, whole) = Self::index(ranks)?;
        let byte_ids = Self::byte_ids(&whole)?;
        // Every way to cut a token in two where both halves are tokens is a pair that merges
        // into it, with the token's rank as its priority.
        // The lookups (a few per token) run on all cores; the inserts, one per pair, on one.
        let found: Vec<(u64, u32)> = tokens
            .par_iter()
            .enumerate()
            .flat_map_iter(|(id, bytes)| {
                let whole = &whole;
                (1..bytes.len()).filter_map(move |cut| match (whole.get(&bytes[..cut]), whole.get(&bytes[cut..])) {
                    (Some(&a), Some(&b)) => Some((key(a, b), id as u32)),
                    _ => None,
                })
            })
            .collect();
        let mut pairs = FxHashMap::default();
        pairs.reserve(found.len());
        for (k, id) in found {
            pairs.insert(k, (id, id));
        }
        Ok(Self { tokens, whole, byte_ids, pairs, rule: MergeRule::Ranks })
    }

    /// Builds an HF-style encoder from a vocabulary and an ordered merge list of `(left, right)`
    /// byte strings; the merged token must be in the vocabulary.
    pub fn from_merges(vocab: impl IntoIterator<Item = (Vec<u8>, u32)>, merges: &[(Vec<u8>, Vec<u8>)]) -> Result<Self> {
        let (tokens, mut whole) = Self::index(vocab)?;
        let byte_ids = Self::byte_ids(&whole)?;
        let mut pairs = FxHashMap::default();
        pairs.reserve(merges.len());
        for (priority, (a, b)) in merges.iter().enumerate() {
            let find = |t: &[u8]| {
                whole.get(t).copied().ok_or_else(|| {
                    TokenizerError::InvalidVocab(format!(
                        "merge {priority} ({:?} + {:?}) uses a token not in the vocabulary: {:?}",
                        String::from_utf8_lossy(a),
                        String::from_utf8_lossy(b),
                        String::from_utf8_lossy(t)
                    ))
                })
            };
            let (ia, ib) = (find(a)?, find(b)?);
            let merged = find(&[a.as_slice(), b.as_slice()].concat())?;
            // The first occurrence of a pair wins, as in HF.
            pairs.entry(key(ia, ib)).or_insert((priority as u32, merged));
        }
        let mut enc = Self { tokens, whole: FxHashMap::default(), byte_ids, pairs, rule: MergeRule::Merges };
        // HF runs the merges on every word; a token may be looked up whole only if the merges
        // really turn its bytes into it (true for every token of a well-formed vocabulary).
        whole.retain(|bytes, id| {
            let mut out = Vec::new();
            enc.merge(bytes, &mut out);
            out.len() == 1 && out[0] == *id
        });
        enc.whole = whole;
        Ok(enc)
    }

    fn index(entries: impl IntoIterator<Item = (Vec<u8>, u32)>) -> Result<(Vec<Box<[u8]>>, WholeMap)> {
        let entries: Vec<(Vec<u8>, u32)> = entries.into_iter().collect();
        // Ids index a table; a malformed file must not make it huge. Real vocabularies are dense.
        let max_id = entries.iter().map(|&(_, id)| id as usize).max().unwrap_or(0);
        if max_id >= 2 * entries.len() + 1024 {
            return Err(TokenizerError::InvalidVocab(format!(
                "ids are too sparse: {} tokens but id {max_id}",
                entries.len()
            )));
        }
        let mut whole: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        whole.reserve(entries.len());
        let mut tokens: Vec<Box<[u8]>> = Vec::with_capacity(max_id + 1);
        for (bytes, id) in entries {
            if bytes.is_empty() {
                return Err(TokenizerError::InvalidVocab(format!("token {id} has no bytes")));
            }
            let bytes: Box<[u8]> = bytes.into_boxed_slice();
            if let Some(prev) = whole.insert(bytes.clone(), id) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "token {:?} appears twice (ids {prev} and {id})",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            let i = id as usize;
            if i >= tokens.len() {
                tokens.resize(i + 1, Box::default());
            }
            if !tokens[i].is_empty() {
                return Err(TokenizerError::InvalidVocab(format!("id {id} is used twice")));
            }
            tokens[i] = bytes;
        }
        if tokens.is_empty() {
            return Err(TokenizerError::InvalidVocab("the vocabulary is empty".into()));
        }
        Ok((tokens, whole))
    }

    fn byte_ids(whole: &FxHashMap<Box<[u8]>, u32>) -> Result<[u32; 256]> {
        let mut ids = [0u32; 256];
        for (b, slot) in ids.iter_mut().enumerate() {
            *slot = *whole.get(&[b as u8][..]).ok_or_else(|| {
                TokenizerError::InvalidVocab(format!("byte 0x{b:02x} has no token (byte-level BPE needs all 256)"))
            })?;
        }
        Ok(ids)
    }

    /// One past the largest ordinary id.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty (never true for a constructed encoder).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How pairs are prioritised.
    pub fn rule(&self) -> MergeRule {
        self.rule
    }

    /// The bytes of ordinary token `id`, if it exists.
    #[inline]
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(|b| &b[..]).filter(|b| !b.is_empty())
    }

    /// The id of a byte string that is a single token.
    pub fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        self.whole.get(bytes).copied().or_else(|| {
            // Tokens that the merges never build are not in `whole` but still exist.
            self.tokens.iter().position(|t| &t[..] == bytes).map(|i| i as u32)
        })
    }

    /// Ordinary tokens as `(bytes, id)`, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u32)> + '_ {
        self.tokens.iter().enumerate().filter(|(_, b)| !b.is_empty()).map(|(i, b)| (&b[..], i as u32))
    }

    /// The merges that build the vocabulary, in priority order: `(left, right, merged)`.
    ///
    /// For a merge list that is the list itself. For tiktoken ranks it is, for each token, the
    /// last merge the encoder performs on the token's own bytes (the pair it is built from);
    /// tokens the merge loop cannot reach are left out. This is what `tokenizer.json` needs.
    pub fn merge_list(&self) -> Vec<(u32, u32, u32)> {
        let mut v: Vec<(u32, u32, u32, u32)> = match self.rule {
            MergeRule::Merges => {
                self.pairs.iter().map(|(&k, &(prio, merged))| (prio, (k >> 32) as u32, k as u32, merged)).collect()
            }
            MergeRule::Ranks => {
                let mut v = Vec::new();
                let mut parts = Vec::new();
                for (id, bytes) in self.tokens.iter().enumerate() {
                    if bytes.len() < 2 {
                        continue;
                    }
                    parts.clear();
                    self.merge_limited(bytes, &mut parts, id as u32);
                    if let [a, b] = parts[..] {
                        if self.pair(a, b) == Some((id as u32, id as u32)) {
                            v.push((id as u32, a, b, id as u32));
                        }
                    }
                }
                v
            }
        };
        v.sort_unstable();
        v.into_iter().map(|(_, a, b, m)| (a, b, m)).collect()
    }

    /// Priority and result of merging `a` then `b`, if they merge.
    #[inline(always)]
    pub fn pair(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.pairs.get(&key(a, b)).copied()
    }

    /// Appends the tokens of one piece to `out`.
    #[inline]
    pub fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() == 1 {
            out.push(self.byte_ids[piece[0] as usize]);
        } else if let Some(&id) = self.whole.get(piece) {
            out.push(id);
        } else {
            self.merge(piece, out);
        }
    }

    /// Runs the merge loop on `piece`, appending the result to `out`.
    pub fn merge(&self, piece: &[u8], out: &mut Vec<u32>) {
        self.merge_limited(piece, out, u32::MAX)
    }

    /// The merge loop using only pairs of priority below `limit`.
    fn merge_limited(&self, piece: &[u8], out: &mut Vec<u32>, limit: u32) {
        if piece.len() < 2 {
            out.extend(piece.iter().map(|&b| self.byte_ids[b as usize]))
        } else if piece.len() <= HEAP_THRESHOLD {
            self.merge_small(piece, out, limit)
        } else {
            self.merge_heap(piece, out, limit)
        }
    }

    #[inline(always)]
    fn pair_below(&self, a: u32, b: u32, limit: u32) -> Option<(u32, u32)> {
        self.pair(a, b).filter(|&(p, _)| p < limit)
    }

    /// Quadratic merge over stack buffers: for short pieces a linear scan for the minimum beats
    /// any heap. Parts form a linked list (`next`) so a merge unlinks one entry instead of
    /// shifting the arrays; `prio[i]`/`merged[i]` describe merging part `i` with its successor.
    fn merge_small(&self, piece: &[u8], out: &mut Vec<u32>, limit: u32) {
        const END: u8 = u8::MAX;
        let n = piece.len();
        debug_assert!((2..=HEAP_THRESHOLD).contains(&n) && HEAP_THRESHOLD < END as usize);
        let mut parts = [0u32; HEAP_THRESHOLD];
        let mut prio = [u32::MAX; HEAP_THRESHOLD];
        let mut merged = [0u32; HEAP_THRESHOLD];
        let mut next = [END; HEAP_THRESHOLD];
        for (i, &b) in piece.iter().enumerate() {
            parts[i] = self.byte_ids[b as usize];
            next[i] = (i + 1) as u8;
        }
        next[n - 1] = END;
        let lookup = |a: u32, b: u32| self.pair_below(a, b, limit).unwrap_or((u32::MAX, 0));
        for i in 0..n - 1 {
            (prio[i], merged[i]) = lookup(parts[i], parts[i + 1]);
        }
        loop {
            // Leftmost minimum, as tiktoken (strict `<`), remembering the part before it.
            let (mut best, mut at, mut before) = (u32::MAX, 0usize, END);
            let (mut i, mut prev) = (0usize, END);
            while next[i] != END {
                if prio[i] < best {
                    (best, at, before) = (prio[i], i, prev);
                }
                prev = i as u8;
                i = next[i] as usize;
            }
            if best == u32::MAX {
                break;
            }
            parts[at] = merged[at];
            let gone = next[at] as usize;
            next[at] = next[gone];
            (prio[at], merged[at]) = match next[at] {
                END => (u32::MAX, 0),
                j => lookup(parts[at], parts[j as usize]),
            };
            if before != END {
                let p = before as usize;
                (prio[p], merged[p]) = lookup(parts[p], parts[at]);
            }
        }
        let mut i = 0usize;
        loop {
            out.push(parts[i]);
            match next[i] {
                END => break,
                j => i = j as usize,
            }
        }
    }

    /// O(n log n) merge: a min-heap of candidate merges keyed by (priority, position) and a
    /// doubly linked list of parts. A candidate is checked against the list when popped, so stale
    /// entries (a neighbour already merged) are skipped instead of removed.
    fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>, limit: u32) {
        let n = piece.len();
        const NONE: u32 = u32::MAX;
        let mut ids: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut next: Vec<u32> = (1..=n as u32).collect();
        next[n - 1] = NONE;
        let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some((p, _)) = self.pair_below(ids[i], ids[i + 1], limit) {
                heap.push(Reverse((p, i as u32)));
            }
        }
        while let Some(Reverse((p, i))) = heap.pop() {
            let i = i as usize;
            let j = next[i];
            if ids[i] == NONE || j == NONE {
                continue;
            }
            let j = j as usize;
            let Some((q, m)) = self.pair_below(ids[i], ids[j], limit) else { continue };
            if q != p {
                continue;
            }
            ids[i] = m;
            ids[j] = NONE;
            let k = next[j];
            next[i] = k;
            if k != NONE {
                prev[k as usize] = i as u32;
                if let Some((p2, _)) = self.pair_below(m, ids[k as usize], limit) {
                    heap.push(Reverse((p2, i as u32)));
                }
            }
            let h = prev[i];
            if h != NONE {
                if let Some((p0, _)) = self.pair_below(ids[h as usize], m, limit) {
                    heap.push(Reverse((p0, h)));
                }
            }
        }
        out.extend(ids.into_iter().filter(|&id| id != NONE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small vocabulary over {a, b, c} with overlapping tokens, so merge order matters.
    fn toy() -> BytePairEncoder {
        let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
        for t in ["ab", "bc", "aa", "abc", "aab", "bb", "cab", "aaaa", "bcab", "ca"] {
            let id = ranks.len() as u32;
            ranks.push((t.as_bytes().to_vec(), id));
        }
        BytePairEncoder::from_ranks(ranks).unwrap()
    }

    /// tiktoken's `_byte_pair_merge`, transcribed literally: ranks of byte strings, a vector of
    /// part boundaries, leftmost minimum rank merged first.
    fn tiktoken_reference(ranks: &FxHashMap<Vec<u8>, u32>, piece: &[u8]) -> Vec<u32> {
        let rank = |parts: &[usize], i: usize| {
            if i + 3 <= parts.len() {
                ranks.get(&piece[parts[i]..parts[i + 2]]).copied().unwrap_or(u32::MAX)
            } else {
                u32::MAX
            }
        };
        let mut parts: Vec<usize> = (0..=piece.len()).collect();
        loop {
            let (mut best, mut at) = (u32::MAX, 0);
            for i in 0..parts.len() - 1 {
                let r = rank(&parts, i);
                if r < best {
                    (best, at) = (r, i);
                }
            }
            if best == u32::MAX {
                break;
            }
            parts.remove(at + 1);
        }
        parts.windows(2).map(|w| ranks[&piece[w[0]..w[1]]]).collect()
    }

    /// Both merge paths equal tiktoken's algorithm on random strings of every length.
    #[test]
    fn merges_equal_tiktoken_reference() {
        let bpe = toy();
        let ranks: FxHashMap<Vec<u8>, u32> = bpe.iter().map(|(b, id)| (b.to_vec(), id)).collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 2..200 {
            for _ in 0..20 {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        b"abc"[(seed % 3) as usize]
                    })
                    .collect();
                let want = tiktoken_reference(&ranks, &piece);
                let mut heap = Vec::new();
                bpe.merge_heap(&piece, &mut heap, u32::MAX);
                assert_eq!(heap, want, "heap: {:?}", String::from_utf8_lossy(&piece));
                if len <= HEAP_THRESHOLD {
                    let mut small = Vec::new();
                    bpe.merge_small(&piece, &mut small, u32::MAX);
                    assert_eq!(small, want, "scan: {:?}", String::from_utf8_lossy(&piece));
                }
            }
        }
    }

    #[test]
    fn leftmost_pair_wins_ties() {
        let bpe = toy();
        let mut out = Vec::new();
        bpe.merge(b"aaa", &mut out);
        let aa = bpe.token_id(b"aa").unwrap();
        assert_eq!(out, vec![aa, b'a' as u32]);
    }
}
