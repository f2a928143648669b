//! Arbitrary bytes as a QWTK token shard, then a data loader resumed over it from an arbitrary
//! saved state. Input: 8 bytes epoch, 8 position, 8 seed, 1 seq_len, 1 flags, then the shard.
//! Opening gives a typed error or a shard whose ids all read (and are below the vocabulary when
//! checked); the loader gives a typed error or windows of exactly `seq_len` inputs and targets.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use qwen_data::{LoaderState, ShardLoader, ShardReader};

fuzz_target!(|data: &[u8]| {
    if data.len() < 26 {
        return;
    }
    let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
    let state = LoaderState { epoch: u64_at(0), position: u64_at(8), seed: u64_at(16) };
    let (seq_len, flags, shard) = (data[24] as usize, data[25], &data[26..]);
    let path = common::scratch("qwtk_shard").join("shard.bin");
    std::fs::write(&path, shard).unwrap();
    // The expected vocabulary: the header's own (so the fuzzer gets past it) or a fixed one.
    let vocab = if flags & 1 == 1 && shard.len() >= 12 {
        u32::from_le_bytes(shard[8..12].try_into().unwrap()) as usize
    } else {
        151_851
    };
    let check = flags & 2 == 2;
    let Ok(reader) = ShardReader::open(&path, vocab, check) else { return };
    assert_eq!(reader.len() * 4 + 20, shard.len());
    let ids = reader.to_vec();
    assert_eq!(ids.len(), reader.len());
    if check {
        assert!(ids.iter().all(|&id| (id as usize) < vocab));
    }
    let Ok(mut loader) = ShardLoader::from_state(vec![reader], seq_len, state) else { return };
    for _ in 0..3 {
        let Some(seq) = loader.next() else { break };
        assert_eq!(seq.input.len(), seq_len);
        assert_eq!(seq.target.len(), seq_len);
    }
});
