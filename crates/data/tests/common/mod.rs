//! Shared test helpers: a temporary folder and a toy byte-level tokenizer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use qwen_data::rng::SplitMix64;
use qwen_tokenizer::{AllowedSpecial, Tokenize};

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "qwen-data-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ids are bytes; `<|endoftext|>` is 256; vocabulary 257.
pub struct ByteTok;

pub const EOT: u32 = 256;

impl Tokenize for ByteTok {
    fn encode(&self, text: &str, _allowed: &AllowedSpecial) -> qwen_tokenizer::Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode_bytes(&self, ids: &[u32]) -> qwen_tokenizer::Result<Vec<u8>> {
        Ok(ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect())
    }
    fn special_id(&self, name: &str) -> Option<u32> {
        (name == "<|endoftext|>").then_some(EOT)
    }
    fn vocab_size(&self) -> usize {
        257
    }
}

/// `n` pseudo-random lowercase words from a seed (distinct seeds give unrelated texts).
pub fn words(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let len = 3 + rng.below(6) as usize;
            (0..len).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
        })
        .collect()
}
