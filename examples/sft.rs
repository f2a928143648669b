//! Supervised fine-tuning of an HF Qwen checkpoint on your own conversations.
//!
//! ```sh
//! cargo run --release --example sft -- --model DIR --data chat.jsonl --out runs/sft \
//!     [--eval-data held.jsonl] [--epochs 1] [--lr 1e-5] [--seq-len 512] [--batch 4] [--accum 1]
//! ```
//!
//! `--data` is JSON Lines, one conversation a line: `{"messages": [{"role": ..., "content": ...}]}`
//! or Qwen's `{"conversations": [{"from": ..., "value": ...}]}` (a leading system message is the
//! conversation's system prompt; otherwise `--system`, or Qwen's default). Each is rendered as
//! ChatML and labelled exactly as Qwen-1's `finetune.py` does (only assistant replies, the ChatML
//! markers and the newline after each `<|im_end|>` are targets). A malformed line stops the run naming its
//! line; a conversation longer than `--seq-len` (unless `--truncate`), naming its number.
//!
//! `--out` gets `metrics.jsonl` (one record a step), `loss.png`, `run_config.json` (the training
//! config), `sft_args.json` (this command's arguments), `checkpoint/` (the latest resumable state,
//! written atomically every `--checkpoint-every` steps) and, at the end, the fine-tuned model as an
//! HF checkpoint (`config.json`, `model.safetensors`) with the source folder's tokenizer and
//! generation files beside it, so `generate`, `chat` and `serve` open `--out` as it is. A run killed
//! at any point continues with `--resume` and ends with the bytes an uninterrupted one writes.
//!
//! `--pack`: several conversations share each row of `--seq-len` (best-fit decreasing, once, before
//! training; `--batch` then counts rows). Each attends only to itself and its positions restart at
//! 0, so the loss and gradients are those of the conversations trained one per row, with less
//! padding. Held-out evaluation stays one conversation a row.
//!
//! `--checkpointing`: the same training on burn's `Autodiff<B, BalancedCheckpointing>`, which
//! recomputes memory-bound operations in the backward pass instead of keeping their outputs.
//!
//! LoRA: `--lora-rank R [--lora-alpha A] [--lora-dropout P] [--lora-targets q_proj,...] [--merge]`
//! trains adapters on the chosen projections with the base frozen (learning rate 3e-4 unless
//! `--lr`, as Qwen's `finetune.py` LoRA scripts). The end is then `--out/adapter/` in PEFT's layout
//! (`peft.PeftModel.from_pretrained(base, DIR)` loads it; `generate`/`chat --adapter DIR` too) and,
//! with `--merge`, the merged model as an HF checkpoint in `--out/merged/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Device;
use clap::Parser;
use qwen::backend::{device, optimizer_update, CheckpointedTrainBackend, TrainBackend};
use qwen_align::{pack_rows, EpochSampler, Overflow, PackedSftBatcher, Run, SftBatcher, SftConfig};
use qwen_data::{Batcher, ChatJsonl, TokenBatch};
use qwen_model::Mode;
use qwen_tokenizer::{ChatMl, ChatTokens};
use qwen_train::{evaluate, OptimConfig, Schedule, TrainConfig};
use serde::Serialize;

#[path = "shared/finetune.rs"]
mod finetune;

/// Supervised fine-tuning (ChatML, `finetune.py`'s loss mask) of an HF Qwen checkpoint.
#[derive(Parser, Debug, Serialize)]
#[command(
    name = "sft",
    after_help = "--data / --eval-data: one conversation per line, {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} \
                  or Qwen's {\"conversations\": [{\"from\": ..., \"value\": ...}, ...]}."
)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    run: finetune::Common,
    /// HF checkpoint folder (config.json, safetensors weights, usually the tokenizer).
    #[arg(long)]
    model: PathBuf,
    /// System prompt of conversations that have none (default: Qwen's "You are a helpful assistant.").
    #[arg(long)]
    system: Option<String>,
    /// Peak learning rate (default: finetune.py's, 1e-5 for full fine-tuning, 3e-4 with --lora-rank).
    #[arg(long)]
    lr: Option<f64>,
    /// Warm-up steps, then cosine decay to the end (default: 1% of the steps, at least 1).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Positions per sequence.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Conversations per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Micro-batches accumulated into each update.
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Keep the first --seq-len tokens of longer conversations (as finetune.py does) instead of failing.
    #[arg(long)]
    truncate: bool,
    /// Pack several conversations into each row (no attention between them; positions restart).
    #[arg(long)]
    pack: bool,
    /// Activation checkpointing: burn's balanced strategy recomputes memory-bound operations in the
    /// backward pass instead of keeping their outputs (less memory, more compute).
    #[arg(long)]
    checkpointing: bool,
    #[command(flatten)]
    #[serde(flatten)]
    lora: finetune::LoraArgs,
}

/// The conversations of `path`, rendered, with their numbers.
fn conversations(path: &Path, chat: &ChatMl<'_>, system: Option<&str>) -> Result<Vec<(usize, ChatTokens)>> {
    let mut out = Vec::new();
    // Conversations are numbered from 1 (the reader skips blank lines; its errors name file lines).
    for (i, record) in ChatJsonl::open(path)?.enumerate() {
        let record = record?;
        let system = record.system.as_deref().or(system);
        let rendered = qwen_align::sft::render(chat, system, &record.messages)
            .with_context(|| format!("{}: conversation {}", path.display(), i + 1))?;
        out.push((i + 1, rendered));
    }
    ensure!(!out.is_empty(), "{} holds no conversation", path.display());
    Ok(out)
}

fn check_lengths(path: &Path, convs: &[(usize, ChatTokens)], seq_len: usize, truncate: bool) -> Result<()> {
    if truncate {
        return Ok(());
    }
    if let Some((n, c)) = convs.iter().find(|(_, c)| c.ids.len() > seq_len) {
        bail!(
            "{}: conversation {n} is {} tokens, longer than --seq-len {seq_len} (raise it, or pass --truncate)",
            path.display(),
            c.ids.len()
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    qwen::keep_freed_memory();
    ensure!(args.batch > 0 && args.accum > 0, "--batch and --accum must be > 0");
    finetune::refuse_to_overwrite(&args.run.out, args.run.resume)?;
    let (tok_path, tok) = finetune::tokenizer(&args.model, args.run.tokenizer.as_deref())?;
    let chat = ChatMl::new(&tok)?;
    let pad_id = tok.special_id("<|endoftext|>")?;
    let train = conversations(&args.run.data, &chat, args.system.as_deref())?;
    check_lengths(&args.run.data, &train, args.seq_len, args.truncate)?;
    let held = match &args.run.eval_data {
        Some(p) => {
            let held = conversations(p, &chat, args.system.as_deref())?;
            check_lengths(p, &held, args.seq_len, args.truncate)?;
            held
        }
        None => Vec::new(),
    };

    let dev = device();
    if args.checkpointing {
        fine_tune::<CheckpointedTrainBackend>(&args, &tok_path, pad_id, &train, &held, &dev)
    } else {
        fine_tune::<TrainBackend>(&args, &tok_path, pad_id, &train, &held, &dev)
    }
}

/// Loads `--model` on the autodiff backend `B` (with or without activation checkpointing), trains it
/// on `train`, measures `held` before and after, and writes the outputs.
fn fine_tune<B: AutodiffBackend<InnerBackend = qwen::backend::Backend>>(
    args: &Args,
    tok_path: &Path,
    pad_id: u32,
    train: &[(usize, ChatTokens)],
    held: &[(usize, ChatTokens)],
    dev: &Device<B>,
) -> Result<()> {
    let model = qwen_model::load::<B>(&args.model, dev).with_context(|| format!("loading {}", args.model.display()))?;
    let model = args.lora.apply(model, args.run.seed)?;
    let lr = args.lr.unwrap_or(if args.lora.lora_rank.is_some() { 3e-4 } else { 1e-5 });
    let per_step = args.batch * args.accum;
    // The training rows: one conversation each, or several packed.
    let rows: Vec<Vec<usize>> = if args.pack {
        let lengths: Vec<usize> = train.iter().map(|(_, c)| c.ids.len()).collect();
        pack_rows(&lengths, args.seq_len)
    } else {
        (0..train.len()).map(|i| vec![i]).collect()
    };
    if args.pack {
        let tokens: usize = train.iter().map(|(_, c)| c.ids.len().min(args.seq_len)).sum();
        eprintln!(
            "sft: packed {} conversations into {} rows of {} ({:.1}% tokens, the rest padding)",
            train.len(),
            rows.len(),
            args.seq_len,
            100.0 * tokens as f64 / (rows.len() * args.seq_len) as f64
        );
    }
    let steps = finetune::epoch_steps(args.run.epochs, rows.len(), per_step)?;
    let warmup = args.warmup_steps.unwrap_or((steps / 100).max(1)).min(steps);
    let config = SftConfig {
        train: TrainConfig {
            optim: OptimConfig { update: optimizer_update(), ..OptimConfig::default() },
            ..TrainConfig::new(Schedule::new(lr, warmup, steps), args.run.seed)
        },
        steps,
        checkpoint_every: args.run.checkpoint_every,
    };
    let overflow = if args.truncate { Overflow::Truncate } else { Overflow::Error };
    let batcher = SftBatcher { seq_len: args.seq_len, pad_id, overflow };
    let held_batches: Vec<TokenBatch> = held
        .chunks(args.batch)
        .map(|c| batcher.batch(c.iter().map(|(_, t)| t.clone()).collect()))
        .collect::<qwen_data::Result<_>>()?;
    let before =
        (!held_batches.is_empty()).then(|| evaluate(&model.valid(), &held_batches, Mode::Training)).transpose()?;

    let mut run = Run::sft(&config, model, &args.run.out, dev)?;
    qwen_train::persist::write_json(args.run.out.join("sft_args.json"), &args)?;
    eprintln!(
        "sft: {} conversations, {steps} steps of {per_step} {} ({} x {}), seq {}, lr {} (warm-up {warmup}), backend {}{}",
        train.len(),
        if args.pack { "packed rows" } else { "conversations" },
        args.batch,
        args.accum,
        args.seq_len,
        lr,
        qwen::backend::name(),
        run.resumed_from().map(|s| format!("; resumed at step {s}")).unwrap_or_default()
    );
    let sampler = EpochSampler { len: rows.len(), batch: per_step, seed: args.run.seed };
    let packer = PackedSftBatcher { seq_len: args.seq_len, pad_id, overflow };
    let mut data = |step: u64| -> qwen_align::Result<Vec<TokenBatch>> {
        let picked: Vec<Vec<ChatTokens>> =
            sampler.indices(step).into_iter().map(|r| rows[r].iter().map(|&i| train[i].1.clone()).collect()).collect();
        picked
            .chunks(args.batch)
            .map(|c| match args.pack {
                true => Ok(packer.batch(c.to_vec())?),
                false => Ok(batcher.batch(c.iter().flatten().cloned().collect())?),
            })
            .collect()
    };
    let pb = finetune::progress("sft", steps, run.step())?;
    let started = Instant::now();
    run.train(&mut data, |s| {
        pb.set_message(format!("loss {:.3}", s.loss));
        pb.inc(1);
    })?;
    pb.finish_and_clear();

    let tuned = run.stage.model().valid();
    let metrics = run.metrics_path().to_path_buf();
    drop(run);
    args.lora.write_end(&tuned, &args.model, tok_path, &args.run.out)?;
    let losses = finetune::series(&metrics, "loss")?;
    finetune::plot(
        "SFT",
        "loss on assistant tokens (nats)",
        vec![("train loss", losses.clone())],
        &args.run.out.join("loss.png"),
    )?;
    let first = losses.first().map_or(f64::NAN, |p| p.1);
    let last = losses.last().map_or(f64::NAN, |p| p.1);
    println!("sft: train loss {first:.4} -> {last:.4} over {steps} steps ({:.0} s)", started.elapsed().as_secs_f64());
    if let Some(before) = before {
        let after = evaluate(&tuned, &held_batches, Mode::Training)?;
        println!(
            "sft: held-out loss on assistant tokens {:.4} -> {:.4} ({} targets)",
            before.loss, after.loss, after.tokens
        );
    }
    println!("sft: wrote {}", args.run.out.display());
    Ok(())
}
