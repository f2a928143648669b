//! Prefill and decode speed of a Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, 14 heads,
//! 2 KV heads, intermediate 4864, vocab 151936, tied) with random weights, on the selected burn
//! backend (`--features flex|ndarray|wgpu|cuda`; flex by default), f32.
//!
//! Besides criterion's timings it prints decode tokens/s against the memory-bandwidth bound: the
//! bytes of weights one decode step must read (every weight once; the tied embedding is read in
//! full as the LM head) divided by a memcpy bandwidth measured in the same run.
//! `QWEN_BENCH_LAYERS` overrides the layer count for a quicker look.
//! The PyTorch peer: `tools/reference/bench_torch.py` (same shapes, same thread count).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use qwen::backend::{device, Backend};
use qwen_model::{KvCache, QwenConfig, QwenConfigBuilder, QwenModel};

const PREFILL: usize = 128;
const DECODE: usize = 16;

fn config() -> QwenConfig {
    let layers: usize = std::env::var("QWEN_BENCH_LAYERS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    QwenConfigBuilder::qwen2_5_0_5b().layers(layers).build().unwrap()
}

fn params(c: &QwenConfig) -> usize {
    let (h, ff, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let layer = h * q + q + 2 * (h * kv + kv) + q * h + 3 * h * ff + 2 * h;
    v * h + c.num_hidden_layers * layer + h
}

fn prompt() -> Vec<u32> {
    (0..PREFILL as u32).map(|i| (i * 7919 + 13) % 151_000).collect()
}

fn sync(t: burn::tensor::Tensor<Backend, 3>) -> f32 {
    // Reading a value waits for the device.
    t.narrow(2, 0, 1).into_data().to_vec::<f32>().unwrap()[0]
}

/// Seconds for `DECODE` cached steps after a prefill.
fn decode_time(model: &QwenModel<Backend>) -> f64 {
    let mut cache = KvCache::new(&model.config, 1, PREFILL + DECODE, &model.device());
    sync(model.forward_cached(&[prompt()], &mut cache).unwrap());
    let start = Instant::now();
    for i in 0..DECODE {
        black_box(sync(model.forward_cached(&[vec![(i * 31) as u32]], &mut cache).unwrap()));
    }
    start.elapsed().as_secs_f64()
}

/// Best-of-5 seconds of `f`.
fn best_of(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// (bytes copied per second by memcpy, bytes read per second by a parallel sum) over 512 MiB.
fn bandwidths() -> (f64, f64) {
    use rayon::prelude::*;
    let n = 128 << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let bytes = (n * 4) as f64;
    let copy = best_of(|| {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    });
    let read = best_of(|| {
        black_box(src.par_chunks(1 << 16).map(|c| c.iter().sum::<f32>()).sum::<f32>());
    });
    (bytes / copy, bytes / read)
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let n_params = params(&cfg);
    eprintln!("building a {:.0}M-parameter model on {} ...", n_params as f64 / 1e6, qwen::backend::name());
    let model = QwenModel::<Backend>::random(cfg, 0.02, &device());
    let mut g = c.benchmark_group("qwen2.5-0.5b-shape");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(PREFILL as u64));
    g.bench_function(format!("prefill-{PREFILL}"), |b| b.iter(|| sync(model.forward(&[prompt()]).unwrap())));
    g.throughput(Throughput::Elements(DECODE as u64));
    g.bench_function(format!("decode-{DECODE}"), |b| {
        b.iter_custom(|iters| Duration::from_secs_f64((0..iters).map(|_| decode_time(&model)).sum()))
    });
    g.finish();

    let decode = (0..3).map(|_| decode_time(&model)).fold(f64::INFINITY, f64::min);
    let tps = DECODE as f64 / decode;
    let bytes_per_token = (n_params * 4) as f64;
    let (copy, read) = bandwidths();
    println!(
        "\ndecode: {tps:.2} tokens/s, reading {:.2} GB of weights per token = {:.1} GB/s",
        bytes_per_token / 1e9,
        tps * bytes_per_token / 1e9
    );
    for (what, bw) in [
        ("memcpy, bytes copied", copy),
        ("memcpy, read + write counted (STREAM)", 2.0 * copy),
        ("parallel read-only sum", read),
    ] {
        let bound = bw / bytes_per_token;
        println!(
            "  vs {what}: {:.1} GB/s -> bound {bound:.2} tokens/s, decode at {:.0}%",
            bw / 1e9,
            100.0 * tps / bound
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
