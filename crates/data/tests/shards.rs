mod common;

use common::TempDir;
use qwen_data::shard::write_shard;
use qwen_data::{Batcher, DataError, LoaderState, Sequence, ShardLoader, ShardReader, ShardWriter, TokenBatcher};

fn ids(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed) % 1000).collect()
}

#[test]
fn round_trip() {
    let dir = TempDir::new("shard-rt");
    let data = ids(12345, 1);
    let mut w = ShardWriter::create(dir.join("a.bin"), 1000).unwrap();
    w.write(&data[..100]).unwrap();
    w.write(&data[100..]).unwrap();
    assert!(!dir.join("a.bin").exists(), "nothing at the final path before finish");
    assert_eq!(w.finish().unwrap(), 12345);
    assert!(!dir.join("a.bin.tmp").exists());
    let bytes = std::fs::read(dir.join("a.bin")).unwrap();
    assert_eq!(&bytes[..4], b"QWTK");
    assert_eq!(bytes.len(), 20 + 4 * 12345);
    let r = ShardReader::open(dir.join("a.bin"), 1000, true).unwrap();
    assert_eq!(r.len(), 12345);
    assert_eq!(r.to_vec(), data);
    assert_eq!(r.get(77), data[77]);
    // Empty shard.
    write_shard(dir.join("e.bin"), 5, &[]).unwrap();
    assert!(ShardReader::open(dir.join("e.bin"), 5, true).unwrap().is_empty());
}

#[test]
fn writer_rejects_out_of_range_ids_and_leaves_nothing() {
    let dir = TempDir::new("shard-oor");
    let mut w = ShardWriter::create(dir.join("a.bin"), 10).unwrap();
    let e = w.write(&[1, 2, 10]).unwrap_err();
    assert!(matches!(e, DataError::TokenOutOfRange { index: 2, id: 10, vocab_size: 10, .. }), "{e:?}");
    drop(w);
    assert!(!dir.join("a.bin").exists() && !dir.join("a.bin.tmp").exists());
}

#[test]
fn corrupt_shards_give_typed_errors() {
    let dir = TempDir::new("shard-bad");
    let p = dir.join("a.bin");
    write_shard(&p, 1000, &ids(100, 2)).unwrap();
    let good = std::fs::read(&p).unwrap();
    let with = |name: &str, bytes: &[u8]| {
        let q = dir.join(name);
        std::fs::write(&q, bytes).unwrap();
        q
    };

    let q = with("trunc.bin", &good[..good.len() - 3]);
    let e = ShardReader::open(&q, 1000, false).unwrap_err();
    assert!(matches!(e, DataError::Truncated { expected: 420, actual: 417, .. }), "{e:?}");
    let q = with("trunc_header.bin", &good[..10]);
    assert!(matches!(ShardReader::open(&q, 1000, false), Err(DataError::Truncated { .. })));

    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGUF");
    let q = with("magic.bin", &bad);
    let e = ShardReader::open(&q, 1000, false).unwrap_err();
    assert!(matches!(e, DataError::BadMagic { found, .. } if &found == b"GGUF"), "{e:?}");

    let mut bad = good.clone();
    bad[4..8].copy_from_slice(&2u32.to_le_bytes());
    let q = with("version.bin", &bad);
    assert!(matches!(ShardReader::open(&q, 1000, false), Err(DataError::UnsupportedVersion { version: 2, .. })));

    let e = ShardReader::open(&p, 151_851, false).unwrap_err();
    assert!(matches!(e, DataError::VocabMismatch { expected: 151_851, found: 1000, .. }), "{e:?}");
    assert!(e.to_string().contains("a.bin"));

    let mut bad = good.clone();
    bad[20 + 4 * 42..20 + 4 * 43].copy_from_slice(&5000u32.to_le_bytes());
    let q = with("ids.bin", &bad);
    assert!(ShardReader::open(&q, 1000, false).is_ok(), "ids are only checked on request");
    let e = ShardReader::open(&q, 1000, true).unwrap_err();
    assert!(matches!(e, DataError::TokenOutOfRange { index: 42, id: 5000, .. }), "{e:?}");

    assert!(matches!(ShardReader::open(dir.join("none.bin"), 1000, false), Err(DataError::Io { .. })));
}

fn shards(dir: &TempDir) -> Vec<ShardReader> {
    let specs = [(1000usize, 1u32), (37, 2), (5, 3), (513, 4)];
    specs
        .iter()
        .enumerate()
        .map(|(i, &(n, s))| {
            let p = dir.join(&format!("s{i}.bin"));
            write_shard(&p, 1000, &ids(n, s)).unwrap();
            ShardReader::open(&p, 1000, true).unwrap()
        })
        .collect()
}

#[test]
fn loader_covers_every_window_once_per_epoch() {
    let dir = TempDir::new("loader-cover");
    let l = 16;
    let data: Vec<Vec<u32>> = shards(&dir).iter().map(ShardReader::to_vec).collect();
    let mut expected: Vec<Sequence> = Vec::new();
    for d in &data {
        for w in 0..(d.len() - 1) / l {
            let s = &d[w * l..w * l + l + 1];
            expected.push(Sequence { input: s[..l].to_vec(), target: s[1..].to_vec() });
        }
    }
    let mut loader = ShardLoader::new(shards(&dir), l, 9).unwrap();
    assert_eq!(loader.windows_per_epoch() as usize, expected.len());
    let n = expected.len();
    let epoch0 = loader.next_batch(n);
    let epoch1 = loader.next_batch(n);
    assert_eq!(loader.state(), LoaderState { epoch: 1, position: n as u64, seed: 9 });
    let key = |v: &[Sequence]| {
        let mut k: Vec<Vec<u32>> = v.iter().map(|s| s.input.iter().chain(&s.target).copied().collect()).collect();
        k.sort();
        k
    };
    assert_eq!(key(&epoch0), key(&expected));
    assert_eq!(key(&epoch1), key(&expected));
    assert_ne!(epoch0, epoch1, "each epoch is reshuffled");
    assert_ne!(epoch0, expected, "the order is shuffled");
}

#[test]
fn loader_resume_is_exact() {
    let dir = TempDir::new("loader-resume");
    let l = 8;
    let mut a = ShardLoader::new(shards(&dir), l, 1234).unwrap();
    let per_epoch = a.windows_per_epoch() as usize;
    // Consume past an epoch boundary, then save.
    let consumed = per_epoch + 17;
    let _ = a.next_batch(consumed);
    let state = a.state();
    let json = serde_json::to_string(&state).unwrap();
    let restored: LoaderState = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, LoaderState { epoch: 1, position: 17, seed: 1234 });
    let mut b = ShardLoader::from_state(shards(&dir), l, restored).unwrap();
    let next_a = a.next_batch(per_epoch + 50);
    let next_b = b.next_batch(per_epoch + 50);
    assert_eq!(next_a, next_b);
    assert_eq!(a.state(), b.state());
    // And the same as a loader that never stopped.
    let mut c = ShardLoader::new(shards(&dir), l, 1234).unwrap();
    let all = c.next_batch(consumed + per_epoch + 50);
    assert_eq!(all[consumed..], next_a[..]);
    // State saved exactly at an epoch end resumes into the next epoch.
    let mut d = ShardLoader::new(shards(&dir), l, 1234).unwrap();
    let _ = d.next_batch(per_epoch);
    let mut e = ShardLoader::from_state(shards(&dir), l, d.state()).unwrap();
    assert_eq!(e.next_batch(5), all[per_epoch..per_epoch + 5]);
}

#[test]
fn loader_rejects_unusable_input() {
    let dir = TempDir::new("loader-bad");
    write_shard(dir.join("tiny.bin"), 10, &[1, 2, 3]).unwrap();
    let tiny = || vec![ShardReader::open(dir.join("tiny.bin"), 10, true).unwrap()];
    assert!(matches!(ShardLoader::new(tiny(), 8, 0), Err(DataError::Config(_))));
    assert!(matches!(ShardLoader::new(tiny(), 0, 0), Err(DataError::Config(_))));
    let bad = LoaderState { epoch: 0, position: 99, seed: 0 };
    assert!(ShardLoader::from_state(tiny(), 1, bad).is_err());
}

/// Found by the `qwtk_shard` fuzz target: a saved state at the last epoch, at the end of it, made
/// the next window overflow the epoch counter (a panic in debug builds). The stream now ends.
#[test]
fn loader_resumed_at_the_last_epoch_ends_instead_of_overflowing() {
    let dir = TempDir::new("loader-last-epoch");
    write_shard(dir.join("s.bin"), 10, &[1, 2, 3, 4, 5]).unwrap();
    let open = || vec![ShardReader::open(dir.join("s.bin"), 10, true).unwrap()];
    let last = LoaderState { epoch: u64::MAX, position: 0, seed: 7 };
    let mut loader = ShardLoader::from_state(open(), 2, last).unwrap();
    assert_eq!(loader.by_ref().count(), 2, "the two windows of the last epoch, then the end");
    assert_eq!(loader.state(), LoaderState { epoch: u64::MAX, position: 2, seed: 7 });
    let end = LoaderState { epoch: u64::MAX, position: 2, seed: 7 };
    assert!(ShardLoader::from_state(open(), 2, end).unwrap().next().is_none());
}

#[test]
fn token_batcher() {
    let dir = TempDir::new("batcher");
    let mut loader = ShardLoader::new(shards(&dir), 4, 0).unwrap();
    let items = loader.next_batch(3);
    let b = TokenBatcher.batch(items.clone()).unwrap();
    assert_eq!((b.batch, b.seq_len, b.inputs.len(), b.targets.len()), (3, 4, 12, 12));
    for (i, s) in items.iter().enumerate() {
        assert_eq!(b.input_row(i), &s.input[..]);
        assert_eq!(b.target_row(i), &s.target[..]);
    }
    // Ragged sequences are a typed error, not a panic.
    let mut ragged = items;
    ragged[1].input.pop();
    assert!(matches!(TokenBatcher.batch(ragged), Err(DataError::Config(_))));
}
