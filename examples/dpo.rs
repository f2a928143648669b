//! Direct preference optimisation of an HF Qwen checkpoint on your own comparisons.
//!
//! ```sh
//! cargo run --release --example dpo -- --policy DIR --data prefs.jsonl --out runs/dpo \
//!     [--eval-data held.jsonl] [--beta 0.1] [--lr 1e-6] [--epochs 1] [--batch 4] [--max-len 1024]
//! ```
//!
//! `--data` is JSON Lines in TRL's layout, `{"prompt": ..., "chosen": ..., "rejected": ...}`, the
//! prompt a string (one user message) or a message list ending with the user's (a leading system
//! message is its system prompt, else Qwen's default). Each comparison is rendered as Qwen chats
//! (the prompt through `make_context`, each response closed by `<|im_end|>`; special-token strings
//! in the text stay text) and trained with TRL's sigmoid DPO loss against a frozen copy of the
//! starting policy (`qwen_align::DpoTrainer`). A malformed line, or a comparison longer than
//! `--max-len`, stops the run naming its line.
//!
//! `--out` gets `metrics.jsonl` (loss, implicit rewards, preference accuracy per step),
//! `dpo.png`, `run_config.json`, `dpo_args.json`, `checkpoint/` (atomic, every `--checkpoint-every`
//! steps; `--resume` continues exactly after a kill) and at the end the policy as an HF checkpoint
//! with the source folder's tokenizer and generation files, which `generate`, `chat` and `serve` open.
//! With `--lora-rank R` (and `--lora-alpha`, `--lora-dropout`, `--lora-targets`, `--merge`, as `sft`)
//! only adapters are trained, the reference being the starting policy; the end is then
//! `--out/adapter/` (PEFT's layout) and, with `--merge`, `--out/merged/`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use qwen::backend::{device, optimizer_update, TrainBackend};
use qwen_align::{constant, DpoConfig, DpoRunConfig, DpoTrainer, EpochSampler, Pair, PairBatch, Run};
use qwen_train::{OptimConfig, Schedule};
use serde::Serialize;

#[path = "shared/finetune.rs"]
mod finetune;

/// DPO (TRL's sigmoid loss, a frozen reference) of an HF Qwen checkpoint on preference pairs.
#[derive(Parser, Debug, Serialize)]
#[command(
    name = "dpo",
    after_help = "--data / --eval-data: one comparison per line, {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}; \
                  the prompt a string or a list of {\"role\", \"content\"} messages ending with the user's."
)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    run: finetune::Common,
    /// HF checkpoint folder of the starting policy (usually an SFT model); also the reference.
    #[arg(long)]
    policy: PathBuf,
    /// How far the policy may move from the reference (TRL's default).
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Peak learning rate (TRL's DPOConfig default).
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    /// Warm-up steps, then constant (0: constant from the start).
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Decay to 10% by the end with a cosine after the warm-up, instead of staying constant.
    #[arg(long)]
    cosine: bool,
    /// Comparisons per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Longest prompt + response (TRL's default max_length).
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    #[command(flatten)]
    #[serde(flatten)]
    lora: finetune::LoraArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    qwen::keep_freed_memory();
    ensure!(args.batch > 0, "--batch must be > 0");
    finetune::refuse_to_overwrite(&args.run.out, args.run.resume)?;
    let (tok_path, tok) = finetune::tokenizer(&args.policy, args.run.tokenizer.as_deref())?;
    let pad_id = tok.special_id("<|endoftext|>")?;
    let train = finetune::comparisons(&args.run.data, &tok, args.max_len)?;
    let held = match &args.run.eval_data {
        Some(p) => {
            finetune::pair_batches(&finetune::comparisons(p, &tok, args.max_len)?, args.batch, pad_id, args.max_len)?
        }
        None => Vec::new(),
    };

    let dev = device();
    let policy = qwen_model::load::<TrainBackend>(&args.policy, &dev)
        .with_context(|| format!("loading {}", args.policy.display()))?;
    // With LoRA the reference is the policy with fresh adapters (B = 0): the starting policy.
    let policy = args.lora.apply(policy, args.run.seed)?;
    let steps = finetune::epoch_steps(args.run.epochs, train.len(), args.batch)?;
    let warmup = args.warmup_steps.min(steps);
    let schedule = if args.cosine { Schedule::new(args.lr, warmup.max(1), steps) } else { constant(args.lr, warmup) };
    let optim = OptimConfig { update: optimizer_update(), ..OptimConfig::default() };
    let config = DpoRunConfig {
        dpo: DpoConfig { beta: args.beta },
        optim,
        schedule,
        steps,
        checkpoint_every: args.run.checkpoint_every,
    };
    let before = if held.is_empty() {
        None
    } else {
        Some(DpoTrainer::new(policy.clone(), config.dpo, optim, schedule)?.evaluate(&held)?)
    };

    let mut run = Run::dpo(&config, policy, &args.run.out, &dev)?;
    qwen_train::persist::write_json(args.run.out.join("dpo_args.json"), &args)?;
    eprintln!(
        "dpo: {} comparisons, {steps} steps of {}, beta {}, lr {}, backend {}{}",
        train.len(),
        args.batch,
        args.beta,
        args.lr,
        qwen::backend::name(),
        run.resumed_from().map(|s| format!("; resumed at step {s}")).unwrap_or_default()
    );
    let sampler = EpochSampler { len: train.len(), batch: args.batch, seed: args.run.seed };
    let mut data = |step: u64| -> qwen_align::Result<PairBatch> {
        let pairs: Vec<Pair> = sampler.indices(step).into_iter().map(|i| train[i].clone()).collect();
        PairBatch::new(&pairs, pad_id, args.max_len)
    };
    let pb = finetune::progress("dpo", steps, run.step())?;
    let started = Instant::now();
    run.train(&mut data, |s| {
        pb.set_message(format!("loss {:.3} acc {:.2}", s.stats.loss, s.stats.accuracy));
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let after = (!held.is_empty()).then(|| run.stage.evaluate(&held)).transpose()?;
    let tuned = run.stage.policy.valid();
    let metrics = run.metrics_path().to_path_buf();
    drop(run);
    args.lora.write_end(&tuned, &args.policy, &tok_path, &args.run.out)?;

    let (loss, accuracy) = (finetune::series(&metrics, "loss")?, finetune::series(&metrics, "accuracy")?);
    finetune::plot(
        "DPO",
        "loss (nats) / preference accuracy",
        vec![("loss", loss.clone()), ("accuracy", accuracy)],
        &args.run.out.join("dpo.png"),
    )?;
    let (first, last) = (loss.first().map_or(f64::NAN, |p| p.1), loss.last().map_or(f64::NAN, |p| p.1));
    println!("dpo: train loss {first:.4} -> {last:.4} over {steps} steps ({:.0} s)", started.elapsed().as_secs_f64());
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "dpo: held-out loss {:.4} -> {:.4}, preference accuracy {:.1}% -> {:.1}%, implicit rewards chosen {:+.4} rejected {:+.4} ({} pairs)",
            b.loss,
            a.loss,
            100.0 * b.accuracy,
            100.0 * a.accuracy,
            a.chosen_reward,
            a.rejected_reward,
            a.pairs
        );
    }
    println!("dpo: wrote {}", args.run.out.display());
    Ok(())
}
