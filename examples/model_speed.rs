//! Prefill and decode speed and peak memory of a random-weight model of a given shape, as one
//! JSON line (used by `tools/reference/bench_vs_torch.sh model` to compare with PyTorch on the
//! same shape, threads and inputs). Default shape: Qwen2.5-0.5B (tied, f32; `--bf16`: bf16 matmuls;
//! `--dtype bf16|f16|q8_0`: weights kept packed, [`qwen_model::packed`]). `--model` measures a
//! checkpoint (a folder or a GGUF file) instead of random weights.

use std::time::Instant;

use clap::Parser;
use qwen::backend::{device, Backend};
use qwen_model::{KvCache, Precision, QwenConfigBuilder, QwenModel, WeightDtype};

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
    /// How the projection and head weights are kept: f32 (burn tensors, as training loads them),
    /// f32_packed (what `generate`, `chat` and `serve` run for f32 on the CPU), bf16, f16, q8_0.
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// A checkpoint (folder or GGUF file) instead of random weights of the 0.5B shape.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Logits of the last position only (as generation and llama.cpp compute them), not of all.
    #[arg(long)]
    last_only: bool,
}

/// `VmHWM` (peak) or `VmRSS` (now) of this process, in MB.
fn rss_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn last_value(t: burn::tensor::Tensor<Backend, 3>) -> f32 {
    let [_, s, v] = t.dims();
    t.narrow(1, s - 1, 1).into_data().convert::<f32>().to_vec::<f32>().unwrap()[v - 1]
}

fn main() {
    let args = Args::parse();
    let mut model = match &args.model {
        Some(path) => qwen_model::load_as::<Backend>(path, &device(), args.dtype).unwrap(),
        None => {
            let config = QwenConfigBuilder::qwen2_5_0_5b().layers(args.layers).build().unwrap();
            QwenModel::<Backend>::random_as(config, 0.02, args.dtype, &device()).unwrap()
        }
    };
    model.precision = if args.bf16 { Precision::Bf16 } else { Precision::Full };
    let (load_peak, load_rss) = (rss_mb("VmHWM:"), rss_mb("VmRSS:"));
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..args.prefill as u32).map(|i| (i * 7919 + 13) % vocab.min(151_000)).collect();
    let (mut prefill, mut decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..args.reps {
        let mut cache = KvCache::new(&model.config, 1, args.prefill + args.decode, &model.device());
        let t = Instant::now();
        let forward = |ids: &[Vec<u32>], cache: &mut KvCache<Backend>| match args.last_only {
            true => model.forward_cached_last(ids, cache).unwrap(),
            false => model.forward_cached(ids, cache).unwrap(),
        };
        last_value(forward(std::slice::from_ref(&prompt), &mut cache));
        prefill = prefill.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..args.decode {
            last_value(forward(&[vec![(i * 31) as u32 % vocab]], &mut cache));
        }
        decode = decode.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": format!("qwen-rs/{}{}", qwen::backend::name(), if args.bf16 { "/bf16" } else { "" }),
            "dtype": args.dtype.name(),
            "layers": model.config.num_hidden_layers,
            "weight_bytes": model.weight_bytes(),
            "decode_weight_gb_per_s": model.weight_bytes() as f64 * args.decode as f64 / decode / 1e9,
            "prefill_tokens_per_s": args.prefill as f64 / prefill,
            "decode_tokens_per_s": args.decode as f64 / decode,
            "peak_rss_mb": rss_mb("VmHWM:"),
            "load_peak_rss_mb": load_peak,
            "rss_after_load_mb": load_rss,
        })
    );
}
