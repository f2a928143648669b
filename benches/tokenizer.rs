//! Encode throughput on the real Qwen vocabulary, against peers measured in the same run:
//! tiktoken-rs (same ranks, same pattern, same specials) and the HF `tokenizers` crate (same
//! `tokenizer.json`). Corpus: every text of `tests/fixtures/tokenizer/corpus.jsonl` (prose,
//! CJK, code, man pages, Unicode data, digits, emoji, CRLF; ~1.5 MB), taken twice (~3 MB).
//!
//! `cargo bench --bench tokenizer` runs criterion (MB/s per contender, single thread and all
//! threads) and then prints a ratio table from a best-of-N timing of each contender, after
//! checking that all three produce identical ids.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use qwen_tokenizer::{pretokenize::QWEN_PATTERN, Normalization, Tokenizer};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use tiktoken_rs::CoreBPE;

struct Contenders {
    docs: Vec<String>,
    bytes: u64,
    ours: Tokenizer,
    tiktoken: CoreBPE,
    hf: tokenizers::Tokenizer,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load() -> Contenders {
    let vocab = root().join("vocab");
    assert!(vocab.join("qwen.tiktoken").is_file(), "run `bash tools/setup.sh` first");
    let corpus = std::fs::read_to_string(root().join("tests/fixtures/tokenizer/corpus.jsonl")).unwrap();
    let mut docs: Vec<String> = corpus
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        // The HF normalizer is NFC: give every contender NFC text so all three do the same work
        // and produce the same ids.
        .map(|t| Normalization::Nfc.apply(&t).into_owned())
        .collect();
    docs.extend(docs.clone());
    let bytes = docs.iter().map(|d| d.len() as u64).sum();

    let data = std::fs::read(vocab.join("qwen.tiktoken")).unwrap();
    let ours = Tokenizer::qwen_from_tiktoken(&data).unwrap();
    let ranks: FxHashMap<Vec<u8>, u32> = qwen_tokenizer::tiktoken::parse_ranks(&data).unwrap().into_iter().collect();
    let specials: FxHashMap<String, u32> = ours.specials().iter().map(|(s, id)| (s.to_string(), id)).collect();
    let tiktoken = CoreBPE::new(ranks, specials, QWEN_PATTERN).unwrap();
    let hf = tokenizers::Tokenizer::from_file(vocab.join("tokenizer.json")).unwrap();
    Contenders { docs, bytes, ours, tiktoken, hf }
}

impl Contenders {
    fn ours_seq(&self) -> usize {
        self.docs.iter().map(|d| self.ours.encode_ordinary(d).unwrap().len()).sum()
    }
    fn ours_par(&self) -> usize {
        self.ours.encode_ordinary_batch(&self.docs).unwrap().iter().map(Vec::len).sum()
    }
    fn tiktoken_seq(&self) -> usize {
        self.docs.iter().map(|d| self.tiktoken.encode_ordinary(d).len()).sum()
    }
    fn tiktoken_par(&self) -> usize {
        self.docs.par_iter().map(|d| self.tiktoken.encode_ordinary(d).len()).sum()
    }
    fn hf_seq(&self) -> usize {
        self.docs.iter().map(|d| self.hf.encode_fast(d.as_str(), false).unwrap().len()).sum()
    }
    fn hf_par(&self) -> usize {
        let docs: Vec<&str> = self.docs.iter().map(String::as_str).collect();
        self.hf.encode_batch_fast(docs, false).unwrap().iter().map(|e| e.len()).sum()
    }

    /// All three must agree before their speeds mean anything.
    fn check_identical(&self) {
        for d in &self.docs[..self.docs.len() / 2] {
            let a = self.ours.encode_ordinary(d).unwrap();
            assert_eq!(a, self.tiktoken.encode_ordinary(d), "tiktoken-rs differs on {:?}", &d[..d.len().min(80)]);
            assert_eq!(a, self.hf.encode_fast(d.as_str(), false).unwrap().get_ids(), "HF differs");
        }
    }
}

fn bench(c: &mut Criterion) {
    let k = load();
    k.check_identical();
    for (group, threads) in [("encode/1-thread", false), ("encode/all-threads", true)] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Bytes(k.bytes)).sample_size(10).measurement_time(Duration::from_secs(8));
        if threads {
            g.bench_function("qwen-tokenizer", |b| b.iter(|| black_box(k.ours_par())));
            g.bench_function("tiktoken-rs", |b| b.iter(|| black_box(k.tiktoken_par())));
            g.bench_function("hf-tokenizers", |b| b.iter(|| black_box(k.hf_par())));
        } else {
            g.bench_function("qwen-tokenizer", |b| b.iter(|| black_box(k.ours_seq())));
            g.bench_function("tiktoken-rs", |b| b.iter(|| black_box(k.tiktoken_seq())));
            g.bench_function("hf-tokenizers", |b| b.iter(|| black_box(k.hf_seq())));
        }
        g.finish();
    }
}

/// Best-of-`n` seconds of `f`.
fn best(n: usize, f: impl Fn() -> usize) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn ratios() {
    let k = load();
    let mb = k.bytes as f64 / 1e6;
    println!("\nratio summary ({mb:.2} MB, best of 5, {} threads):", rayon::current_num_threads());
    println!("{:<22} {:>10} {:>12} {:>12}", "", "MB/s", "vs tiktoken", "vs HF");
    for (label, ours, tk, hf) in [
        ("1 thread", best(5, || k.ours_seq()), best(5, || k.tiktoken_seq()), best(5, || k.hf_seq())),
        ("all threads", best(5, || k.ours_par()), best(5, || k.tiktoken_par()), best(5, || k.hf_par())),
    ] {
        println!(
            "{:<22} {:>10.1} {:>11.2}x {:>11.2}x",
            format!("qwen-tokenizer {label}"),
            mb / ours,
            tk / ours,
            hf / ours
        );
        println!("{:<22} {:>10.1}", format!("tiktoken-rs {label}"), mb / tk);
        println!("{:<22} {:>10.1}", format!("hf-tokenizers {label}"), mb / hf);
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}
