//! Batched generation against one prompt at a time, as one JSON line: greedy decoding of prompts
//! of mixed lengths (default 8 prompts, 8–120 tokens) on a random-weight Qwen2.5-0.5B-shaped
//! model, once as one left-padded batch (`generate_batch`) and once prompt by prompt
//! (`generate`), with the aggregate tokens/s of each and their ratio. Both runs must produce the
//! same tokens (checked). Decode is memory-bound, so a batch of 8 should cost little more per
//! step than one row.

use std::time::Instant;

use clap::Parser;
use qwen::backend::{device, Backend};
use qwen_model::{GenerateConfig, QwenConfigBuilder, QwenModel, SamplingConfig};

/// Measures batched vs one-at-a-time greedy generation.
#[derive(Parser)]
#[command(name = "batch_speed")]
struct Args {
    #[arg(long, default_value_t = 24)]
    layers: usize,
    /// Number of prompts; their lengths are spread evenly over 8..=120.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = QwenConfigBuilder::qwen2_5_0_5b().layers(args.layers).build()?;
    let model = QwenModel::<Backend>::random(config, 0.02, &device());
    let n = args.prompts.max(1);
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|i| {
            let len = 8 + (112 * i) / (n - 1).max(1);
            (0..len as u32).map(|j| (j * 7919 + i as u32 * 104_729 + 13) % 151_000).collect()
        })
        .collect();
    let gen = GenerateConfig { max_new_tokens: args.new_tokens, stop_ids: vec![], sampling: SamplingConfig::default() };
    // Warm-up (allocator, kernels).
    model.generate(&prompts[0][..8], &GenerateConfig { max_new_tokens: 2, ..gen.clone() }, |_| true)?;

    // Prefill time: until the first token of the batch (or of each prompt) comes out.
    let t = Instant::now();
    let mut first = None;
    let batched = model.generate_batch(&prompts, &gen, |_, _| {
        first.get_or_insert_with(|| t.elapsed().as_secs_f64());
        true
    })?;
    let batched_s = t.elapsed().as_secs_f64();
    let batched_prefill = first.unwrap_or(batched_s);
    let mut alone = Vec::with_capacity(n);
    let (mut alone_s, mut alone_prefill) = (0.0, 0.0);
    for p in &prompts {
        let t = Instant::now();
        let mut first = None;
        alone.push(model.generate(p, &gen, |_| {
            first.get_or_insert_with(|| t.elapsed().as_secs_f64());
            true
        })?);
        alone_s += t.elapsed().as_secs_f64();
        alone_prefill += first.unwrap_or(0.0);
    }
    anyhow::ensure!(batched == alone, "batched tokens differ from one-at-a-time tokens");

    let tokens = (n * args.new_tokens) as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": format!("qwen-rs/{}", qwen::backend::name()),
            "layers": args.layers,
            "prompt_lengths": prompts.iter().map(Vec::len).collect::<Vec<_>>(),
            "new_tokens_per_prompt": args.new_tokens,
            "batched_tokens_per_s": tokens / batched_s,
            "one_at_a_time_tokens_per_s": tokens / alone_s,
            "ratio": alone_s / batched_s,
            "batched_prefill_s": batched_prefill,
            "batched_decode_s": batched_s - batched_prefill,
            "one_at_a_time_prefill_s": alone_prefill,
            "one_at_a_time_decode_s": alone_s - alone_prefill,
            "same_tokens": true,
        })
    );
    Ok(())
}
