//! Token shards on disk and a resumable loader over them.
//!
//! Format (version 1, all little-endian): `b"QWTK"`, `u32` version, `u32` vocabulary size,
//! `u64` token count, then `count` × `u32` token ids — a 20-byte header and nothing after the ids.
//!
//! - [`ShardWriter`] streams ids into `<path>.tmp`, fills in the count, syncs and renames onto
//!   `path`, so a reader never sees a half-written shard.
//! - [`ShardReader`] memory-maps a shard and validates magic, version, vocabulary size (equal to
//!   the expected one) and length, and optionally that every id is below the vocabulary size.
//! - [`ShardLoader`] serves fixed-length `(input, target)` windows ([`Sequence`]) from several
//!   shards. Windows are cut per shard exactly as [`SequencePacker`](crate::SequencePacker) cuts
//!   a stream (`L + 1` tokens, overlapping by one, tail dropped) and never cross shards. Each
//!   epoch visits every window once, in an order shuffled by `(seed, epoch)`. Its
//!   [`LoaderState`] (epoch, position, seed) is all it takes to resume: a loader rebuilt from the
//!   saved state over the same shards yields exactly what the original would have yielded next.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::pack::Sequence;
use crate::rng::SplitMix64;

/// The first four bytes of every shard.
pub const SHARD_MAGIC: [u8; 4] = *b"QWTK";
/// The format version this crate writes and reads.
pub const SHARD_VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 20;

fn header(vocab_size: u32, count: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&SHARD_MAGIC);
    h[4..8].copy_from_slice(&SHARD_VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&vocab_size.to_le_bytes());
    h[12..20].copy_from_slice(&count.to_le_bytes());
    h
}

/// Writes one shard atomically (temporary file, then rename).
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    vocab_size: u32,
    count: u64,
}

impl ShardWriter {
    /// Starts a shard at `path` for a vocabulary of `vocab_size` ids.
    pub fn create(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let vocab_size = u32::try_from(vocab_size)
            .map_err(|_| DataError::Config(format!("vocabulary size {vocab_size} does not fit u32")))?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header(vocab_size, 0)).map_err(|e| DataError::io(&tmp, e))?;
        Ok(Self { path, tmp, out: Some(out), vocab_size, count: 0 })
    }

    /// Appends ids; each must be below the vocabulary size.
    pub fn write(&mut self, ids: &[u32]) -> Result<()> {
        let out = self.out.as_mut().expect("shard writer already finished");
        for (i, &id) in ids.iter().enumerate() {
            if id >= self.vocab_size {
                return Err(DataError::TokenOutOfRange {
                    path: self.path.clone(),
                    index: self.count + i as u64,
                    id,
                    vocab_size: self.vocab_size as usize,
                });
            }
            out.write_all(&id.to_le_bytes()).map_err(|e| DataError::io(&self.tmp, e))?;
        }
        self.count += ids.len() as u64;
        Ok(())
    }

    /// Tokens written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the final header, syncs and renames the shard into place; returns the token count.
    pub fn finish(mut self) -> Result<u64> {
        let out = self.out.take().expect("shard writer already finished");
        let tmp = self.tmp.clone();
        let io = |e| DataError::io(&tmp, e);
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header(self.vocab_size, self.count)).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| DataError::io(&self.path, e))?;
        Ok(self.count)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `ids` as one shard.
pub fn write_shard(path: impl AsRef<Path>, vocab_size: usize, ids: &[u32]) -> Result<u64> {
    let mut w = ShardWriter::create(path, vocab_size)?;
    w.write(ids)?;
    w.finish()
}

/// A validated, memory-mapped shard.
#[derive(Debug)]
pub struct ShardReader {
    path: PathBuf,
    map: Mmap,
    vocab_size: usize,
    len: usize,
}

impl ShardReader {
    /// Opens and validates `path` against the expected vocabulary size; with `check_ids` every
    /// id is also checked to be below it (one pass over the file).
    pub fn open(path: impl AsRef<Path>, expected_vocab: usize, check_ids: bool) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        // SAFETY: shards are written once (atomically) and not modified while read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
        let actual = map.len() as u64;
        if map.len() < HEADER_LEN {
            if map.len() >= 4 && map[..4] != SHARD_MAGIC {
                return Err(DataError::BadMagic { path, found: map[..4].try_into().unwrap() });
            }
            return Err(DataError::Truncated { path, expected: HEADER_LEN as u64, actual });
        }
        let magic: [u8; 4] = map[..4].try_into().unwrap();
        if magic != SHARD_MAGIC {
            return Err(DataError::BadMagic { path, found: magic });
        }
        let version = u32::from_le_bytes(map[4..8].try_into().unwrap());
        if version != SHARD_VERSION {
            return Err(DataError::UnsupportedVersion { path, version });
        }
        let vocab = u32::from_le_bytes(map[8..12].try_into().unwrap()) as usize;
        if vocab != expected_vocab {
            return Err(DataError::VocabMismatch { path, expected: expected_vocab, found: vocab });
        }
        let count = u64::from_le_bytes(map[12..20].try_into().unwrap());
        let expected = count.checked_mul(4).and_then(|b| b.checked_add(HEADER_LEN as u64));
        if expected != Some(actual) {
            return Err(DataError::Truncated { path, expected: expected.unwrap_or(u64::MAX), actual });
        }
        let reader = Self { path, map, vocab_size: vocab, len: count as usize };
        if check_ids {
            reader.check_ids()?;
        }
        Ok(reader)
    }

    fn check_ids(&self) -> Result<()> {
        let bad = self.bytes().chunks_exact(4).enumerate().find_map(|(i, c)| {
            let id = u32::from_le_bytes(c.try_into().unwrap());
            (id as usize >= self.vocab_size).then_some((i, id))
        });
        match bad {
            None => Ok(()),
            Some((index, id)) => Err(DataError::TokenOutOfRange {
                path: self.path.clone(),
                index: index as u64,
                id,
                vocab_size: self.vocab_size,
            }),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.map[HEADER_LEN..]
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.bytes()[4 * i..4 * i + 4].try_into().unwrap())
    }

    /// Appends tokens `start..end` to `out`.
    pub fn read_into(&self, start: usize, end: usize, out: &mut Vec<u32>) {
        assert!(start <= end && end <= self.len, "range {start}..{end} out of 0..{}", self.len);
        out.extend(self.bytes()[4 * start..4 * end].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())));
    }

    /// All tokens (a copy).
    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len);
        self.read_into(0, self.len, &mut v);
        v
    }

    /// Windows of `seq_len + 1` tokens overlapping by one that fit in this shard.
    pub fn windows(&self, seq_len: usize) -> usize {
        if self.len == 0 {
            0
        } else {
            (self.len - 1) / seq_len
        }
    }
}

/// Where a [`ShardLoader`] stands: enough to resume it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Epochs completed.
    pub epoch: u64,
    /// Windows already served in the current epoch.
    pub position: u64,
    /// The shuffle seed.
    pub seed: u64,
}

impl LoaderState {
    /// The start of training with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { epoch: 0, position: 0, seed }
    }
}

/// Serves shuffled fixed-length windows from several shards, epoch after epoch (an endless
/// iterator, unless there are no windows at all; it ends after epoch `u64::MAX`).
#[derive(Debug)]
pub struct ShardLoader {
    shards: Vec<ShardReader>,
    seq_len: usize,
    /// Cumulative window counts: shard `s` holds global windows `starts[s]..starts[s + 1]`.
    starts: Vec<u64>,
    state: LoaderState,
    order: Vec<u64>,
    order_epoch: Option<u64>,
}

impl ShardLoader {
    /// A loader at the start of training.
    pub fn new(shards: Vec<ShardReader>, seq_len: usize, seed: u64) -> Result<Self> {
        Self::from_state(shards, seq_len, LoaderState::new(seed))
    }

    /// A loader resumed from `state` (the shards and `seq_len` must be those of the saved run).
    pub fn from_state(shards: Vec<ShardReader>, seq_len: usize, state: LoaderState) -> Result<Self> {
        if seq_len == 0 {
            return Err(DataError::Config("seq_len must be positive".into()));
        }
        let mut starts = vec![0u64];
        for s in &shards {
            starts.push(starts.last().unwrap() + s.windows(seq_len) as u64);
        }
        let total = *starts.last().unwrap();
        if total == 0 {
            return Err(DataError::Config(format!("no window of {} tokens in the shards", seq_len + 1)));
        }
        if state.position > total {
            return Err(DataError::Config(format!(
                "loader state position {} is past the {total} windows of an epoch",
                state.position
            )));
        }
        Ok(Self { shards, seq_len, starts, state, order: Vec::new(), order_epoch: None })
    }

    /// Windows per epoch.
    pub fn windows_per_epoch(&self) -> u64 {
        *self.starts.last().unwrap()
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The state to save with a checkpoint.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    fn ensure_order(&mut self) {
        if self.order_epoch != Some(self.state.epoch) {
            self.order = (0..self.windows_per_epoch()).collect();
            SplitMix64::derived(self.state.seed, self.state.epoch).shuffle(&mut self.order);
            self.order_epoch = Some(self.state.epoch);
        }
    }

    /// Global window `g` (in unshuffled order).
    pub fn window(&self, g: u64) -> Sequence {
        let s = self.starts.partition_point(|&st| st <= g) - 1;
        let start = (g - self.starts[s]) as usize * self.seq_len;
        let mut w = Vec::with_capacity(self.seq_len + 1);
        self.shards[s].read_into(start, start + self.seq_len + 1, &mut w);
        Sequence::from_window(&w)
    }

    /// The next `n` windows.
    pub fn next_batch(&mut self, n: usize) -> Vec<Sequence> {
        self.by_ref().take(n).collect()
    }
}

impl Iterator for ShardLoader {
    type Item = Sequence;

    fn next(&mut self) -> Option<Sequence> {
        if self.state.position >= self.windows_per_epoch() {
            // A resumed state can say any epoch: after the last representable one the stream ends.
            self.state.epoch = self.state.epoch.checked_add(1)?;
            self.state.position = 0;
        }
        self.ensure_order();
        let g = self.order[self.state.position as usize];
        self.state.position += 1;
        Some(self.window(g))
    }
}
