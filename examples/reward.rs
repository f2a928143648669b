//! A reward model from an HF Qwen checkpoint, in the report's two stages: preference-model
//! pretraining (PMP) on a broad comparison set, then fine-tuning on your comparisons.
//!
//! ```sh
//! cargo run --release --example reward -- --model DIR --data prefs.jsonl --out runs/reward \
//!     [--pmp-data broad.jsonl] [--eval-data held.jsonl] [--lr 3e-6] [--epochs 1] [--pmp-epochs 1]
//! ```
//!
//! Both data files are JSON Lines in TRL's layout, `{"prompt": ..., "chosen": ..., "rejected": ...}`
//! (the prompt a string or messages). The reward model is the checkpoint's trunk with a fresh
//! bias-free `score` head (`qwen_align::ScoreModel::from_lm`), reading the reward at each
//! response's closing `<|im_end|>`, trained with the pairwise loss `−log σ(r_chosen − r_rejected)`
//! on one optimizer through both stages at the report's constant learning rate (3e-6). The held-out
//! comparisons' loss and accuracy are measured before, after PMP and after fine-tuning, printed
//! and kept in `eval.json`.
//!
//! `--out` gets `metrics.jsonl` (steps tagged `pmp` or `rm`), `reward.png`, `run_config.json`,
//! `reward_args.json`, `eval.json`, `checkpoint/` (atomic; `--resume` continues exactly after a
//! kill) and at the end the reward model in HF `Qwen2ForSequenceClassification` layout
//! (`score.weight`, `num_labels: 1`) with the source folder's tokenizer files: the `--reward` of PPO.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use qwen::backend::{device, optimizer_update, TrainBackend};
use qwen_align::{constant, EpochSampler, Pair, PairBatch, PairStats, RewardConfig, Run, ScoreModel};
use qwen_model::SaveDtype;
use qwen_train::OptimConfig;
use serde::{Deserialize, Serialize};

#[path = "shared/finetune.rs"]
mod finetune;

/// A reward model (PMP, then fine-tuning; pairwise loss) on an HF Qwen checkpoint's trunk.
#[derive(Parser, Debug, Serialize)]
#[command(
    name = "reward",
    after_help = "--data / --pmp-data / --eval-data: one comparison per line, {\"prompt\": ..., \"chosen\": ..., \
                  \"rejected\": ...}; the prompt a string or a list of {\"role\", \"content\"} messages."
)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    run: finetune::Common,
    /// HF checkpoint folder whose trunk the reward model starts from (the report: the pretrained LM).
    #[arg(long)]
    model: PathBuf,
    /// Comparisons for preference-model pretraining, before --data (none: fine-tuning only).
    #[arg(long)]
    pmp_data: Option<PathBuf>,
    /// Passes over --pmp-data.
    #[arg(long, default_value_t = 1.0)]
    pmp_epochs: f64,
    /// The constant learning rate after the warm-up (the report's).
    #[arg(long, default_value_t = 3e-6)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Comparisons per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Longest prompt + response.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
}

/// Held-out loss and accuracy at each point of the run (`eval.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Evals {
    before: Option<PairStats>,
    pmp: Option<PairStats>,
    finetune: Option<PairStats>,
}

fn show(what: &str, s: &PairStats) {
    println!(
        "reward: {what:<17} held-out loss {:.4}, accuracy {:.1}%, margin {:+.4} ({} pairs)",
        s.loss,
        100.0 * s.accuracy,
        s.margin,
        s.pairs
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    qwen::keep_freed_memory();
    let out = &args.run.out;
    finetune::refuse_to_overwrite(out, args.run.resume)?;
    let (tok_path, tok) = finetune::tokenizer(&args.model, args.run.tokenizer.as_deref())?;
    let pad_id = tok.special_id("<|endoftext|>")?;
    let finetune_pairs = finetune::comparisons(&args.run.data, &tok, args.max_len)?;
    let pmp_pairs = match &args.pmp_data {
        Some(p) => finetune::comparisons(p, &tok, args.max_len)?,
        None => Vec::new(),
    };
    let held = match &args.run.eval_data {
        Some(p) => {
            finetune::pair_batches(&finetune::comparisons(p, &tok, args.max_len)?, args.batch, pad_id, args.max_len)?
        }
        None => Vec::new(),
    };
    let pmp_steps =
        if pmp_pairs.is_empty() { 0 } else { finetune::epoch_steps(args.pmp_epochs, pmp_pairs.len(), args.batch)? };
    let finetune_steps = finetune::epoch_steps(args.run.epochs, finetune_pairs.len(), args.batch)?;

    let dev = device();
    // The fresh score head is random: seeded, so a run started again starts the same.
    <TrainBackend as burn::tensor::backend::Backend>::seed(&dev, args.run.seed);
    let lm = qwen_model::load::<TrainBackend>(&args.model, &dev)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let start = ScoreModel::from_lm(lm);
    let config = RewardConfig {
        optim: OptimConfig { update: optimizer_update(), ..OptimConfig::default() },
        schedule: constant(args.lr, args.warmup_steps),
        pmp_steps,
        finetune_steps,
        checkpoint_every: args.run.checkpoint_every,
    };
    let eval_path = out.join("eval.json");
    let mut evals: Evals = if args.run.resume && eval_path.is_file() {
        qwen_train::persist::read_json(&eval_path)?
    } else {
        Evals::default()
    };
    if !held.is_empty() && evals.before.is_none() {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        evals.before = Some(qwen_align::evaluate_pairs(&start.valid(), &held)?);
        qwen_train::persist::write_json(&eval_path, &evals)?;
    }

    let mut run = Run::reward(&config, start, out, &dev)?;
    qwen_train::persist::write_json(out.join("reward_args.json"), &args)?;
    eprintln!(
        "reward: {} PMP comparisons ({pmp_steps} steps), {} fine-tuning comparisons ({finetune_steps} steps), {} a step, lr {}, backend {}{}",
        pmp_pairs.len(),
        finetune_pairs.len(),
        args.batch,
        args.lr,
        qwen::backend::name(),
        run.resumed_from().map(|s| format!("; resumed at step {s}")).unwrap_or_default()
    );
    let sampler = |len: usize, phase: u64| EpochSampler { len, batch: args.batch, seed: args.run.seed ^ (phase << 32) };
    let (pmp_sampler, finetune_sampler) = (sampler(pmp_pairs.len().max(1), 1), sampler(finetune_pairs.len(), 2));
    let batch = |pairs: &[Pair], indices: Vec<usize>| -> qwen_align::Result<PairBatch> {
        let picked: Vec<Pair> = indices.into_iter().map(|i| pairs[i].clone()).collect();
        PairBatch::new(&picked, pad_id, args.max_len)
    };
    let mut pmp_data = |step: u64| batch(&pmp_pairs, pmp_sampler.indices(step));
    let mut finetune_data = |step: u64| batch(&finetune_pairs, finetune_sampler.indices(step - pmp_steps));
    let total = pmp_steps + finetune_steps;
    let pb = finetune::progress("reward", total, run.step())?;
    let started = Instant::now();
    let mut on_step = |s: &qwen_align::RewardStep| {
        pb.set_message(format!("loss {:.3} acc {:.2}", s.pairs.loss, s.pairs.accuracy));
        pb.inc(1);
    };
    if pmp_steps > 0 && run.step() <= pmp_steps {
        run.train_phases(pmp_steps, &mut pmp_data, &mut finetune_data, &mut on_step)?;
        if !held.is_empty() {
            evals.pmp = Some(run.stage.trainer.evaluate(&held)?);
            qwen_train::persist::write_json(&eval_path, &evals)?;
        }
    }
    run.train_phases(total, &mut pmp_data, &mut finetune_data, &mut on_step)?;
    pb.finish_and_clear();
    if !held.is_empty() {
        evals.finetune = Some(run.stage.trainer.evaluate(&held)?);
        qwen_train::persist::write_json(&eval_path, &evals)?;
    }
    let metrics = run.metrics_path().to_path_buf();
    let model = run.into_stage().trainer.model.valid();
    model.save(out, SaveDtype::F32)?;
    finetune::copy_companions(&args.model, &tok_path, out)?;

    let (loss, accuracy) = (finetune::series(&metrics, "loss")?, finetune::series(&metrics, "accuracy")?);
    let title = if pmp_steps > 0 {
        format!("reward model: PMP (steps 1-{pmp_steps}), then fine-tuning")
    } else {
        "reward model".to_string()
    };
    finetune::plot(
        &title,
        "pairwise loss (nats) / accuracy",
        vec![("loss", loss), ("accuracy", accuracy)],
        &out.join("reward.png"),
    )?;
    println!("reward: {total} steps ({:.0} s)", started.elapsed().as_secs_f64());
    for (what, s) in [("before", &evals.before), ("after PMP", &evals.pmp), ("after fine-tuning", &evals.finetune)] {
        if let Some(s) = s {
            show(what, s);
        }
    }
    println!("reward: wrote {}", out.display());
    Ok(())
}
