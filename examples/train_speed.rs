//! Training throughput (tokens/s of full optimizer steps) of a small Qwen, as one JSON line, for
//! `tools/reference/bench_vs_torch.sh train` (PyTorch runs the same step in the same run).
//! Default: the tiny config of the pretraining issue — hidden 256, 4 layers, 4 heads,
//! intermediate 688, vocab 32000, seq 256, batch 4 — f32, AdamW, clipping at 1.0.

use std::time::Instant;

use burn::module::Module;
use clap::Parser;
use qwen::backend::{device, optimizer_update, TrainBackend};
use qwen_data::batch::TokenBatch;
use qwen_model::{Mode, Precision, QwenConfigBuilder, QwenModel};
use qwen_train::{head_cross_entropy_fused, OptimConfig, Schedule, TrainConfig, Trainer};

/// Measures training tokens/s (forward, loss, backward, clip, AdamW step).
#[derive(Parser)]
#[command(name = "train_speed")]
struct Args {
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads (GQA); default: as many as query heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Tie the LM head to the embedding (as Qwen2.5-0.5B does).
    #[arg(long)]
    tied: bool,
    /// The device's peak dense TFLOP/s at the training precision: then the JSON also has `mfu`.
    #[arg(long)]
    peak_tflops: Option<f64>,
    #[arg(long, default_value_t = 688)]
    intermediate: usize,
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Mixed precision: bf16 matmuls, f32 master weights.
    #[arg(long)]
    bf16: bool,
    /// Measured steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    qwen::keep_freed_memory();
    let config = QwenConfigBuilder::new(a.vocab, a.hidden, a.intermediate, a.layers, a.heads)
        .kv_heads(a.kv_heads.unwrap_or(a.heads))
        .max_positions(4096)
        .tied(a.tied)
        .build()?;
    let model = QwenModel::<TrainBackend>::random(config, 0.02, &device());
    // Model FLOPs per trained token, PaLM's accounting (appendix B): 6 N for the matmul weights (all
    // parameters but an untied embedding table, which is a lookup) + 12 L d S for attention scores.
    let lookup = if a.tied { 0 } else { a.vocab * a.hidden };
    let flops_per_token =
        6.0 * (model.model.num_params() - lookup) as f64 + 12.0 * (a.layers * a.hidden * a.seq) as f64;
    let precision = if a.bf16 { Precision::Bf16 } else { Precision::Full };
    let train = TrainConfig { precision, ..TrainConfig::new(Schedule::new(3e-4, 2, 1000), 0) };
    let train = TrainConfig { optim: OptimConfig { update: optimizer_update(), ..train.optim }, ..train };
    let mut trainer = Trainer::new(model, train)?;
    let n = a.batch * a.seq;
    let batch = |step: usize| {
        let ids: Vec<u32> = (0..n + 1).map(|i| ((i * 7919 + step * 104_729) % a.vocab) as u32).collect();
        TokenBatch {
            inputs: ids[..n].to_vec(),
            targets: ids[1..].to_vec(),
            batch: a.batch,
            seq_len: a.seq,
            segments: Vec::new(),
        }
    };
    for s in 0..2 {
        trainer.train_step(&[batch(s)])?;
    }
    let start = Instant::now();
    let mut loss = 0.0;
    for s in 0..a.steps {
        loss = trainer.train_step(&[batch(s + 2)])?.loss;
    }
    let secs = start.elapsed().as_secs_f64();

    // Where a step goes, best of 3: forward (to the final hidden states), LM head + loss (its
    // forward and backward matmuls, outside the graph), backward through the layers, and the rest
    // (clip + AdamW).
    let (mut fwd, mut loss_t, mut bwd) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for s in 0..3 {
        let b = batch(100 + s);
        let rows: Vec<Vec<u32>> = (0..b.batch).map(|i| b.input_row(i).to_vec()).collect();
        let t = Instant::now();
        let hidden = trainer.model().hidden_mode(&rows, Mode::Training)?;
        let _ = hidden.clone().inner().narrow(2, 0, 1).into_data();
        fwd = fwd.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let model = trainer.model();
        let fused =
            head_cross_entropy_fused(hidden, &model.model.lm_head, &b.targets, 1.0 / n as f64, model.precision)?;
        let _ = fused.weight_grad.clone().narrow(0, 0, 1).into_data();
        loss_t = loss_t.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let grads = fused.surrogate.backward();
        drop(grads);
        bwd = bwd.min(t.elapsed().as_secs_f64());
    }
    let tokens_per_s = (n * a.steps) as f64 / secs;
    let tflops = flops_per_token * tokens_per_s / 1e12;
    println!(
        "{}",
        serde_json::json!({
            "impl": format!("qwen-rs/{}{}", qwen::backend::name(), if a.bf16 { "/bf16" } else { "" }),
            "train_tokens_per_s": tokens_per_s,
            "parameters": trainer.model().model.num_params(),
            "model_tflops_per_s": tflops,
            "mfu": a.peak_tflops.map(|peak| tflops / peak),
            "step_ms": 1e3 * secs / a.steps as f64,
            "last_loss": loss,
            "phases_ms": {"forward": fwd * 1e3, "head_and_loss": loss_t * 1e3, "backward": bwd * 1e3,
                          "clip_and_adamw": 1e3 * (secs / a.steps as f64 - fwd - loss_t - bwd)},
        })
    );
    Ok(())
}
