//! Prefill and decode speed and peak memory of a random-weight model of a given shape, as one
//! JSON line (used by `tools/reference/bench_vs_torch.sh model` to compare with PyTorch on the
//! same shape, threads and inputs). Default shape: Qwen2.5-0.5B (tied, f32; `--bf16`: bf16 matmuls).

use std::time::Instant;

use clap::Parser;
use qwen::backend::{device, Backend};
use qwen_model::{KvCache, Precision, QwenConfigBuilder, QwenModel};

/// Measures prefill tokens/s, decode tokens/s and peak resident memory.
#[derive(Parser)]
#[command(name = "model_speed")]
struct Args {
    #[arg(long, default_value_t = 24)]
    layers: usize,
    #[arg(long, default_value_t = 128)]
    prefill: usize,
    #[arg(long, default_value_t = 32)]
    decode: usize,
    /// Repetitions; the best is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Matmuls in bf16 (f32 weights cast around each matmul, `qwen_model::Precision::Bf16`).
    #[arg(long)]
    bf16: bool,
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn last_value(t: burn::tensor::Tensor<Backend, 3>) -> f32 {
    let [_, s, v] = t.dims();
    t.narrow(1, s - 1, 1).into_data().convert::<f32>().to_vec::<f32>().unwrap()[v - 1]
}

fn main() {
    let args = Args::parse();
    let config = QwenConfigBuilder::qwen2_5_0_5b().layers(args.layers).build().unwrap();
    let mut model = QwenModel::<Backend>::random(config, 0.02, &device());
    model.precision = if args.bf16 { Precision::Bf16 } else { Precision::Full };
    let prompt: Vec<u32> = (0..args.prefill as u32).map(|i| (i * 7919 + 13) % 151_000).collect();
    let (mut prefill, mut decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..args.reps {
        let mut cache = KvCache::new(&model.config, 1, args.prefill + args.decode, &model.device());
        let t = Instant::now();
        last_value(model.forward_cached(std::slice::from_ref(&prompt), &mut cache).unwrap());
        prefill = prefill.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..args.decode {
            last_value(model.forward_cached(&[vec![(i * 31) as u32]], &mut cache).unwrap());
        }
        decode = decode.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": format!("qwen-rs/{}{}", qwen::backend::name(), if args.bf16 { "/bf16" } else { "" }),
            "layers": args.layers,
            "prefill_tokens_per_s": args.prefill as f64 / prefill,
            "decode_tokens_per_s": args.decode as f64 / decode,
            "peak_rss_mb": peak_rss_mb(),
        })
    );
}
