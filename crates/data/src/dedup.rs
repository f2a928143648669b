//! Deduplication: exact (hash of normalized text) and fuzzy (MinHash + LSH), as in the report.
//!
//! - [`normalize`] lowercases and collapses whitespace; [`ExactDedup`] keeps the first document
//!   for each 128-bit hash of the normalized text.
//! - [`MinHasher`] computes a signature of `num_perm` minimum hashes over the word `k`-shingles
//!   of the normalized text (each "permutation" is the shingle hash re-mixed with its own seed).
//! - [`NearDedup`] splits signatures into `bands × rows` for locality-sensitive hashing; a
//!   document that shares a band with a kept one is a candidate, and it is removed only if the
//!   Jaccard similarity estimated from the two signatures is at least the threshold. Only kept
//!   signatures are stored (`num_perm` × 8 bytes per kept document), never the texts.
//!
//! Everything is seeded and order-dependent only in the obvious way: the first of a group of
//! duplicates is the one kept.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::rng::{hash_bytes, mix64};
use crate::source::Document;

/// Lowercases, collapses every run of whitespace to one space and trims.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// The 128-bit hash of the normalized text used by [`ExactDedup`].
pub fn exact_key(text: &str) -> u128 {
    let n = normalize(text);
    ((hash_bytes(n.as_bytes(), 1) as u128) << 64) | hash_bytes(n.as_bytes(), 2) as u128
}

/// Keeps the first document of each exact (normalized) duplicate group.
#[derive(Debug, Default, Clone)]
pub struct ExactDedup {
    seen: HashSet<u128>,
    removed: usize,
}

impl ExactDedup {
    pub fn new() -> Self {
        Self::default()
    }
    /// True if `text` was not seen before (and records it).
    pub fn is_new(&mut self, text: &str) -> bool {
        let fresh = self.seen.insert(exact_key(text));
        if !fresh {
            self.removed += 1;
        }
        fresh
    }
    /// Duplicates rejected so far.
    pub fn removed(&self) -> usize {
        self.removed
    }
}

/// The hashes of the word `k`-shingles of the normalized text (one shingle of all words when the
/// text has fewer than `k`; none for an empty text).
pub fn shingle_hashes(text: &str, k: usize) -> HashSet<u64> {
    let norm = normalize(text);
    let words: Vec<&str> = norm.split(' ').filter(|w| !w.is_empty()).collect();
    let k = k.max(1);
    let mut out = HashSet::new();
    if words.is_empty() {
        return out;
    }
    if words.len() < k {
        out.insert(hash_bytes(words.join(" ").as_bytes(), 0));
        return out;
    }
    for w in words.windows(k) {
        out.insert(hash_bytes(w.join(" ").as_bytes(), 0));
    }
    out
}

/// Exact Jaccard similarity of two sets (1 for two empty sets).
pub fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.intersection(b).count();
    inter as f64 / (a.len() + b.len() - inter) as f64
}

/// Jaccard similarity estimated from two MinHash signatures: the fraction of equal slots.
pub fn estimated_jaccard(a: &[u64], b: &[u64]) -> f64 {
    assert_eq!(a.len(), b.len(), "signatures of different lengths");
    if a.is_empty() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// MinHash signatures over word shingles.
#[derive(Debug, Clone)]
pub struct MinHasher {
    shingle: usize,
    seeds: Vec<u64>,
}

impl MinHasher {
    /// `num_perm` hash functions derived from `seed`, over word `shingle`-grams.
    pub fn new(shingle: usize, num_perm: usize, seed: u64) -> Self {
        let seeds = (0..num_perm as u64).map(|i| mix64(seed ^ mix64(i + 1))).collect();
        Self { shingle, seeds }
    }

    /// The number of hash functions.
    pub fn num_perm(&self) -> usize {
        self.seeds.len()
    }

    /// The signature of `text` (all `u64::MAX` for a text without words).
    pub fn signature(&self, text: &str) -> Vec<u64> {
        let shingles = shingle_hashes(text, self.shingle);
        self.seeds.iter().map(|&s| shingles.iter().map(|&h| mix64(h ^ s)).min().unwrap_or(u64::MAX)).collect()
    }
}

/// Parameters of the dedup stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DedupConfig {
    /// Run exact dedup.
    pub exact: bool,
    /// Run MinHash near-dup removal.
    pub near: bool,
    /// Words per shingle.
    pub shingle: usize,
    /// LSH bands; `bands * rows` hash functions in all.
    pub bands: usize,
    /// Rows per band.
    pub rows: usize,
    /// Estimated Jaccard similarity at or above which a candidate is a duplicate.
    pub threshold: f64,
    pub seed: u64,
}

impl Default for DedupConfig {
    /// 5-word shingles, 16 bands × 8 rows (128 hashes), threshold 0.8.
    fn default() -> Self {
        Self { exact: true, near: true, shingle: 5, bands: 16, rows: 8, threshold: 0.8, seed: 0x5eed }
    }
}

/// MinHash + LSH near-duplicate detector.
#[derive(Debug, Clone)]
pub struct NearDedup {
    hasher: MinHasher,
    bands: usize,
    rows: usize,
    threshold: f64,
    buckets: Vec<HashMap<u64, Vec<u32>>>,
    kept: Vec<Vec<u64>>,
    removed: usize,
}

impl NearDedup {
    pub fn new(shingle: usize, bands: usize, rows: usize, threshold: f64, seed: u64) -> Self {
        assert!(bands > 0 && rows > 0, "bands and rows must be positive");
        Self {
            hasher: MinHasher::new(shingle, bands * rows, seed),
            bands,
            rows,
            threshold,
            buckets: vec![HashMap::new(); bands],
            kept: Vec::new(),
            removed: 0,
        }
    }

    fn band_key(&self, sig: &[u64], band: usize) -> u64 {
        let mut h = band as u64;
        for &v in &sig[band * self.rows..(band + 1) * self.rows] {
            h = mix64(h ^ v);
        }
        h
    }

    /// True if `text` is not a near duplicate of a kept text (and then keeps it).
    pub fn is_new(&mut self, text: &str) -> bool {
        let sig = self.hasher.signature(text);
        let keys: Vec<u64> = (0..self.bands).map(|b| self.band_key(&sig, b)).collect();
        let mut checked = HashSet::new();
        for (b, key) in keys.iter().enumerate() {
            if let Some(cands) = self.buckets[b].get(key) {
                for &c in cands {
                    if checked.insert(c) && estimated_jaccard(&sig, &self.kept[c as usize]) >= self.threshold {
                        self.removed += 1;
                        return false;
                    }
                }
            }
        }
        let id = self.kept.len() as u32;
        for (b, key) in keys.into_iter().enumerate() {
            self.buckets[b].entry(key).or_default().push(id);
        }
        self.kept.push(sig);
        true
    }

    /// Near duplicates rejected so far.
    pub fn removed(&self) -> usize {
        self.removed
    }
}

/// What dedup did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupStats {
    pub seen: usize,
    pub kept: usize,
    pub exact_removed: usize,
    pub near_removed: usize,
}

/// Exact then near dedup, with statistics.
#[derive(Debug, Clone)]
pub struct Dedup {
    exact: Option<ExactDedup>,
    near: Option<NearDedup>,
    stats: DedupStats,
}

impl Dedup {
    pub fn new(config: &DedupConfig) -> Self {
        Self {
            exact: config.exact.then(ExactDedup::new),
            near: config
                .near
                .then(|| NearDedup::new(config.shingle, config.bands, config.rows, config.threshold, config.seed)),
            stats: DedupStats::default(),
        }
    }

    /// True if `text` is kept (neither an exact nor a near duplicate of an earlier kept text).
    pub fn keep(&mut self, text: &str) -> bool {
        self.stats.seen += 1;
        if let Some(e) = self.exact.as_mut() {
            if !e.is_new(text) {
                self.stats.exact_removed += 1;
                return false;
            }
        }
        if let Some(n) = self.near.as_mut() {
            if !n.is_new(text) {
                self.stats.near_removed += 1;
                return false;
            }
        }
        self.stats.kept += 1;
        true
    }

    pub fn stats(&self) -> &DedupStats {
        &self.stats
    }

    /// Deduplicates a document stream lazily; errors pass through untouched.
    pub fn filter<'a, I>(&'a mut self, docs: I) -> impl Iterator<Item = Result<Document>> + 'a
    where
        I: IntoIterator<Item = Result<Document>>,
        I::IntoIter: 'a,
    {
        docs.into_iter().filter(move |d| match d {
            Ok(doc) => self.keep(&doc.text),
            Err(_) => true,
        })
    }
}
