//! Group relative policy optimisation (GRPO) of an HF Qwen checkpoint on your own prompts, with
//! rewards from a reward model or from a program that checks the answers.
//!
//! ```sh
//! cargo run --release --example grpo -- --policy DIR (--reward DIR | --verifier exact_match) \
//!     --prompts prompts.jsonl --out runs/grpo [--group-size 8] [--beta 0.04] [--lr 1e-6] [--batch 4]
//! ```
//!
//! `--prompts` is JSON Lines, `{"prompt": ..., "answer": ...}`: the prompt a string (one user
//! message) or a message list ending with the user's (a leading system message is its system
//! prompt), rendered through Qwen's `make_context`; `answer` is what a verifier checks against
//! (`exact_match`: the reply, without `<|im_end|>`, equals it after trimming whitespace). Each step
//! samples `--group-size` replies per prompt from the policy (stopping at `<|im_end|>`), scores them
//! (`--reward`: an HF sequence-classification checkpoint such as `reward` writes, read at the reply's
//! end token), and updates the policy on TRL's GRPO loss (group-normalised advantages, clipped
//! ratio, `--beta` × the k3 KL to a frozen copy of the starting policy; `qwen_align::GrpoTrainer`).
//! A malformed line stops the run naming its line.
//!
//! `--out` gets `metrics.jsonl` (TRL's names: `reward`, `reward_std`, `kl`, `clip_ratio/*`, ...),
//! `reward.png`, `kl.png`, `run_config.json`, `grpo_args.json`, `checkpoint/` (atomic, every
//! `--checkpoint-every` steps; `--resume` continues exactly after a kill) and at the end the policy
//! as an HF checkpoint with the source folder's tokenizer and generation files.
//!
//! LoRA: `--lora-rank R [--lora-alpha A] [--lora-dropout P] [--lora-targets q_proj,...] [--merge]`, as
//! `sft`: adapters trained with the base frozen, the reference the policy with fresh adapters (the
//! starting policy); the end is `--out/adapter/` (PEFT's layout) and, with `--merge`, `--out/merged/`.
//! The learning rate stays `--lr` (a LoRA run usually wants a larger one than the full default).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use qwen::backend::{device, optimizer_update, TrainBackend};
use qwen_align::{constant, EpochSampler, GrpoBatch, GrpoConfig, GrpoLoss, GrpoReward, GrpoRunConfig, Run, ScoreModel};
use qwen_tokenizer::ChatMl;
use qwen_train::OptimConfig;
use serde::Serialize;

#[path = "shared/finetune.rs"]
mod finetune;
#[path = "shared/rl.rs"]
mod rl;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize)]
enum LossArg {
    Grpo,
    Bnpo,
    DrGrpo,
    Dapo,
}

/// GRPO (TRL's loss; a reward model or a verifier; a frozen reference) of an HF Qwen checkpoint.
#[derive(Parser, Debug, Serialize)]
#[command(
    name = "grpo",
    after_help = "--prompts: one prompt per line, {\"prompt\": ..., \"answer\": ...}; the prompt a string or a list of \
                  {\"role\", \"content\"} messages ending with the user's; answer: a string, for --verifier."
)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    run: rl::RlCommon,
    /// Reward model: HF sequence-classification checkpoint folder (`reward`'s output).
    #[arg(long, conflicts_with = "verifier", required_unless_present = "verifier")]
    reward: Option<PathBuf>,
    /// A built-in verifier instead of a reward model: exact_match.
    #[arg(long)]
    verifier: Option<String>,
    /// Replies sampled per prompt (TRL's num_generations).
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Weight of the k3 KL to the reference (0: no reference).
    #[arg(long, default_value_t = 0.04)]
    beta: f64,
    /// Ratio clip (TRL's epsilon).
    #[arg(long, default_value_t = 0.2)]
    epsilon: f64,
    /// Upper ratio clip (default: --epsilon).
    #[arg(long)]
    epsilon_high: Option<f64>,
    /// How token losses are averaged (TRL's loss_type).
    #[arg(long, value_enum, default_value_t = LossArg::Dapo)]
    loss: LossArg,
    /// Only subtract the group mean (TRL's scale_rewards="none").
    #[arg(long)]
    no_scale_rewards: bool,
    /// Updates per generation batch (TRL's num_iterations).
    #[arg(long, default_value_t = 1)]
    iterations: usize,
    /// Nucleus sampling of the rollouts (TRL's default 1.0: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Constant learning rate (TRL's default).
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    #[command(flatten)]
    #[serde(flatten)]
    lora: finetune::LoraArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    qwen::keep_freed_memory();
    let r = &args.run;
    ensure!(r.batch > 0, "--batch must be > 0");
    finetune::refuse_to_overwrite(&r.out, r.resume)?;
    let (tok_path, tok) = finetune::tokenizer(&r.policy, r.tokenizer.as_deref())?;
    let pad_id = tok.special_id("<|endoftext|>")?;
    let im_end = ChatMl::new(&tok)?.im_end();
    let prompts = rl::prompts(&r.prompts, &tok, r.system.as_deref(), r.max_prompt_len)?;

    let dev = device();
    let policy =
        qwen_model::load::<TrainBackend>(&r.policy, &dev).with_context(|| format!("loading {}", r.policy.display()))?;
    // With LoRA the reference is the policy with fresh adapters (B = 0): the starting policy.
    let policy = args.lora.apply(policy, r.seed)?;
    let make_reward = || -> Result<GrpoReward<qwen::backend::Backend>> {
        Ok(match (&args.reward, &args.verifier) {
            (Some(dir), _) => GrpoReward::Model(
                ScoreModel::load(dir, &dev).with_context(|| format!("loading the reward model {}", dir.display()))?,
            ),
            (None, Some(name)) => {
                let tok = tok.clone();
                let decode: qwen_align::Decode = Box::new(move |ids: &[u32]| Ok(tok.decode_lossy(ids)?));
                GrpoReward::Verifier { verifier: qwen_align::verifier(name)?, decode }
            }
            (None, None) => unreachable!("clap requires --reward or --verifier"),
        })
    };
    if args.verifier.is_some() {
        if let Some(n) = prompts.iter().position(|p| p.answer.is_none()) {
            anyhow::bail!("{}: prompt {} has no \"answer\" for the verifier", r.prompts.display(), n + 1);
        }
    }
    let steps = finetune::epoch_steps(r.epochs, prompts.len(), r.batch)?;
    let config = GrpoRunConfig {
        grpo: GrpoConfig {
            group_size: args.group_size,
            beta: args.beta,
            epsilon_low: args.epsilon,
            epsilon_high: args.epsilon_high.unwrap_or(args.epsilon),
            loss: match args.loss {
                LossArg::Grpo => GrpoLoss::Grpo,
                LossArg::Bnpo => GrpoLoss::Bnpo,
                LossArg::DrGrpo => GrpoLoss::DrGrpo,
                LossArg::Dapo => GrpoLoss::Dapo,
            },
            scale_rewards: !args.no_scale_rewards,
            iterations: args.iterations,
            max_new_tokens: r.max_new_tokens,
            sampling: r.sampling(args.top_p),
        },
        optim: OptimConfig { update: optimizer_update(), ..OptimConfig::default() },
        schedule: constant(args.lr, args.warmup_steps.min(steps)),
        stop_ids: vec![im_end],
        pad_id,
        steps,
        checkpoint_every: r.checkpoint_every,
    };
    let mut run = Run::grpo(&config, policy, make_reward()?, &r.out, &dev)?;
    qwen_train::persist::write_json(r.out.join("grpo_args.json"), &args)?;
    eprintln!(
        "grpo: {} prompts, {steps} steps of {} x {} replies, beta {}, lr {}, rewards from {}, backend {}{}",
        prompts.len(),
        r.batch,
        args.group_size,
        args.beta,
        args.lr,
        args.verifier.as_deref().map_or_else(|| "the reward model".to_string(), |v| format!("verifier {v}")),
        qwen::backend::name(),
        run.resumed_from().map(|s| format!("; resumed at step {s}")).unwrap_or_default()
    );
    let sampler = EpochSampler { len: prompts.len(), batch: r.batch, seed: r.seed };
    let mut data = |step: u64| -> qwen_align::Result<GrpoBatch> {
        let picked: Vec<&rl::Prompt> = sampler.indices(step).into_iter().map(|i| &prompts[i]).collect();
        Ok(GrpoBatch {
            prompts: picked.iter().map(|p| p.ids.clone()).collect(),
            answers: picked.iter().map(|p| p.answer.clone()).collect(),
        })
    };
    let pb = finetune::progress("grpo", steps, run.step())?;
    let started = Instant::now();
    run.train(&mut data, |s| {
        pb.set_message(format!("reward {:.3} kl {:.4}", s.reward, s.kl));
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let tuned = run.stage.valid_policy();
    let metrics = run.metrics_path().to_path_buf();
    drop(run);
    args.lora.write_end(&tuned, &r.policy, &tok_path, &r.out)?;

    let reward = finetune::series(&metrics, "reward")?;
    finetune::plot("GRPO", "mean reward of the rollout", vec![("reward", reward.clone())], &r.out.join("reward.png"))?;
    let kl = finetune::series(&metrics, "kl")?;
    finetune::plot("GRPO", "k3 KL to the reference (nats/token)", vec![("kl", kl)], &r.out.join("kl.png"))?;
    let (k, first, last) = rl::first_and_last_quarter(&reward);
    println!(
        "grpo: mean reward over the first {k} steps {first:.4}, over the last {k} {last:.4} ({steps} steps, {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!("grpo: wrote {}", r.out.display());
    Ok(())
}
