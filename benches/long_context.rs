//! What window attention costs as the context grows: a small Qwen (hidden 256, 4 layers, 4 heads,
//! vocab 4096, random weights, f32) reads L tokens through its KV cache in chunks of 128, with
//! full attention and with a 256-token window in every layer (the cache then drops what no layer
//! can see). Prints, per L, the time, the time per token and the KV-cache bytes held at the end,
//! and the growth from L/2 to L: full attention grows quadratically in time and linearly in
//! memory; the window grows linearly in time and not at all in memory. Criterion then times the
//! same runs. `QWEN_BENCH_MAX_LEN` caps L (default 4096).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use qwen::backend::{device, Backend};
use qwen_context::LayerWindows;
use qwen_model::{KvCache, QwenConfigBuilder, QwenModel};

const CHUNK: usize = 128;
const WINDOW: usize = 256;

fn model(window: Option<usize>) -> QwenModel<Backend> {
    let mut config = QwenConfigBuilder::tiny(4096).max_positions(65536).build().unwrap();
    if let Some(w) = window {
        config.windows = LayerWindows::uniform(config.num_hidden_layers, w).unwrap();
    }
    QwenModel::random(config, 0.02, &device())
}

fn lengths() -> Vec<usize> {
    let max: usize = std::env::var("QWEN_BENCH_MAX_LEN").ok().and_then(|v| v.parse().ok()).unwrap_or(4096);
    [512, 1024, 2048, 4096, 8192, 16384].into_iter().filter(|&l| l <= max).collect()
}

/// Reads `len` tokens in chunks; returns the KV bytes held at the end.
fn run(model: &QwenModel<Backend>, len: usize) -> usize {
    let mut cache = KvCache::new(&model.config, 1, len, &model.device());
    for start in (0..len).step_by(CHUNK) {
        let ids: Vec<u32> = (start..(start + CHUNK).min(len)).map(|i| (i * 7919 % 4096) as u32).collect();
        let logits = model.forward_cached_last(&[ids], &mut cache).unwrap();
        // Reading a value waits for the device.
        black_box(logits.narrow(2, 0, 1).into_data().to_vec::<f32>().unwrap()[0]);
    }
    cache.bytes()
}

fn table() {
    let (full, windowed) = (model(None), model(Some(WINDOW)));
    println!("\nlong context: L tokens read in chunks of {CHUNK} (best of 3), backend {}", qwen::backend::name());
    println!("| attention | L | time (ms) | µs/token | KV bytes | time vs L/2 | KV vs L/2 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, m) in [("full", &full), ("window 256", &windowed)] {
        let mut prev: Option<(f64, usize)> = None;
        for len in lengths() {
            let mut best = f64::INFINITY;
            let mut bytes = 0;
            for _ in 0..3 {
                let t = Instant::now();
                bytes = run(m, len);
                best = best.min(t.elapsed().as_secs_f64());
            }
            let growth =
                prev.map_or(" | ".into(), |(t, b)| format!("{:.2}x | {:.2}x", best / t, bytes as f64 / b as f64));
            println!("| {name} | {len} | {:.1} | {:.1} | {} | {growth} |", best * 1e3, best * 1e6 / len as f64, bytes);
            prev = Some((best, bytes));
        }
    }
    println!();
}

fn bench(c: &mut Criterion) {
    table();
    let (full, windowed) = (model(None), model(Some(WINDOW)));
    let mut g = c.benchmark_group("long_context");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    for len in lengths() {
        g.throughput(Throughput::Elements(len as u64));
        g.bench_with_input(BenchmarkId::new("full", len), &len, |b, &len| b.iter(|| run(&full, len)));
        g.bench_with_input(BenchmarkId::new("window256", len), &len, |b, &len| b.iter(|| run(&windowed, len)));
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
