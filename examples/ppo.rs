//! PPO of an HF Qwen checkpoint on your own prompts against a reward model, as the Qwen report
//! runs it.
//!
//! ```sh
//! cargo run --release --example ppo -- --policy DIR --reward DIR --prompts prompts.jsonl --out runs/ppo \
//!     [--ptx-data pretrain.jsonl] [--kl-coef 0.04] [--policy-lr 1e-6] [--value-lr 5e-6] [--batch 4]
//! ```
//!
//! Four models: the policy (from `--policy`, trained), a frozen copy of it as the reference, the
//! reward model (`--reward`: an HF sequence-classification checkpoint such as `reward` writes,
//! frozen) and the value model (initialised from the reward model, trained). The defaults are the
//! report's: KL coefficient 0.04, value clip 0.15, 50 value-only warm-up steps, top-p 0.9, 2
//! responses per query, policy lr 1e-6 and value lr 5e-6 (constant), running-mean reward
//! normalisation (`--baseline leave-one-out`: RLOO's per-prompt baseline instead); TRL's where
//! the report is silent (policy clip 0.2, γ 1, λ 0.95, 4 PPO epochs).
//! `--ptx-data` (JSON Lines `{"text": ...}`) mixes the LM loss on pretraining text into the policy's
//! loss (`--ptx-coef`), as the report does to limit the alignment tax. `--prompts` is JSON Lines,
//! `{"prompt": ...}` (a string or messages); a malformed line stops the run naming its line.
//!
//! `--out` gets `metrics.jsonl` (TRL's names: `objective/scores`, `objective/kl`, `loss/policy_avg`,
//! ...), `reward.png`, `kl.png`, `run_config.json`, `ppo_args.json`, `checkpoint/` (policy and value
//! model with their optimizer states, atomic; `--resume` continues exactly after a kill) and at the
//! end the policy as an HF checkpoint with the source folder's tokenizer files, and the value model
//! in `OUT/value/`.
//!
//! LoRA: `--lora-rank R [--lora-alpha A] [--lora-dropout P] [--lora-targets q_proj,...] [--merge]`, as
//! `sft`: the policy's adapters are trained with its base frozen, the reference is the policy with
//! fresh adapters (the starting policy), the value model stays whole (as TRL's `PPOTrainer` with a
//! `peft_config`); the end is `--out/adapter/` (PEFT's layout) and, with `--merge`, `--out/merged/`.
//! The learning rates stay `--policy-lr` / `--value-lr` (a LoRA run usually wants a larger policy one).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use qwen::backend::{device, optimizer_update, TrainBackend};
use qwen_align::{
    constant, EpochSampler, KlEstimator, PpoBatch, PpoConfig, PpoOptim, PpoRunConfig, RewardNorm, Run, ScoreModel,
    ScorePlacement,
};
use qwen_data::{JsonlSource, TokenBatch};
use qwen_model::SaveDtype;
use qwen_tokenizer::{AllowedSpecial, ChatMl, Tokenizer};
use qwen_train::OptimConfig;
use serde::Serialize;

#[path = "shared/finetune.rs"]
mod finetune;
#[path = "shared/rl.rs"]
mod rl;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize)]
enum KlArg {
    K1,
    K3,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize)]
enum PlacementArg {
    /// On the response's last token.
    LastToken,
    /// One slot after it (TRL's PPOTrainer).
    AfterResponse,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize)]
enum BaselineArg {
    /// Minus the running mean of every score so far (the report).
    RunningMean,
    /// Minus the mean of the other responses to the same prompt (RLOO; `--responses-per-query` ≥ 2).
    LeaveOneOut,
}

/// PPO (the report's settings: policy, value, reference and reward models) of an HF Qwen checkpoint.
#[derive(Parser, Debug, Serialize)]
#[command(
    name = "ppo",
    after_help = "--prompts: one prompt per line, {\"prompt\": ...}, a string or a list of {\"role\", \"content\"} \
                  messages ending with the user's. --ptx-data: one document per line, {\"text\": ...}."
)]
struct Args {
    #[command(flatten)]
    #[serde(flatten)]
    run: rl::RlCommon,
    /// Reward model: HF sequence-classification checkpoint folder (`reward`'s output); also the
    /// value model's start.
    #[arg(long)]
    reward: PathBuf,
    /// Pretraining text mixed into the policy loss (JSON Lines, {"text": ...}).
    #[arg(long)]
    ptx_data: Option<PathBuf>,
    /// Weight of the pretraining LM loss (with --ptx-data).
    #[arg(long, default_value_t = 0.05)]
    ptx_coef: f64,
    /// Tokens per pretraining row.
    #[arg(long, default_value_t = 512)]
    ptx_seq_len: usize,
    /// Pretraining rows per step.
    #[arg(long, default_value_t = 4)]
    ptx_batch: usize,
    /// KL penalty coefficient (report).
    #[arg(long, default_value_t = 0.04)]
    kl_coef: f64,
    /// What the reward-model scores are taken relative to before they enter the rewards.
    #[arg(long, value_enum, default_value_t = BaselineArg::RunningMean)]
    baseline: BaselineArg,
    /// Per-token KL estimate in the penalty.
    #[arg(long, value_enum, default_value_t = KlArg::K1)]
    kl_estimator: KlArg,
    /// Where the reward-model score enters the per-token rewards.
    #[arg(long, value_enum, default_value_t = PlacementArg::LastToken)]
    score_placement: PlacementArg,
    /// Policy ratio clip (TRL).
    #[arg(long, default_value_t = 0.2)]
    clip: f64,
    /// Value clip (report).
    #[arg(long, default_value_t = 0.15)]
    value_clip: f64,
    /// Steps that train only the value model (report).
    #[arg(long, default_value_t = 50)]
    value_warmup_steps: u64,
    /// Responses sampled per prompt (report).
    #[arg(long, default_value_t = 2)]
    responses_per_query: usize,
    /// Nucleus sampling of the rollouts (report).
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Policy learning rate, constant (report).
    #[arg(long, default_value_t = 1e-6)]
    policy_lr: f64,
    /// Value-model learning rate, constant (report).
    #[arg(long, default_value_t = 5e-6)]
    value_lr: f64,
    /// Passes over each rollout (TRL).
    #[arg(long, default_value_t = 4)]
    ppo_epochs: usize,
    /// Responses per update within a pass (0: the whole rollout).
    #[arg(long, default_value_t = 0)]
    minibatch_rows: usize,
    #[command(flatten)]
    #[serde(flatten)]
    lora: finetune::LoraArgs,
}

/// The documents of `path` tokenized (each closed by `<|endoftext|>`), concatenated and cut into
/// rows of `seq_len + 1` tokens.
fn ptx_rows(path: &std::path::Path, tok: &Tokenizer, seq_len: usize) -> Result<Vec<Vec<u32>>> {
    let eot = tok.special_id("<|endoftext|>")?;
    let mut stream = Vec::new();
    for doc in JsonlSource::open(path)? {
        stream.extend(tok.encode(&doc?.text, &AllowedSpecial::None)?);
        stream.push(eot);
    }
    let rows: Vec<Vec<u32>> = stream.chunks_exact(seq_len + 1).map(<[u32]>::to_vec).collect();
    ensure!(!rows.is_empty(), "{} holds fewer than --ptx-seq-len + 1 = {} tokens", path.display(), seq_len + 1);
    Ok(rows)
}

fn main() -> Result<()> {
    let args = Args::parse();
    qwen::keep_freed_memory();
    let r = &args.run;
    ensure!(r.batch > 0 && args.ptx_batch > 0, "--batch and --ptx-batch must be > 0");
    finetune::refuse_to_overwrite(&r.out, r.resume)?;
    let (tok_path, tok) = finetune::tokenizer(&r.policy, r.tokenizer.as_deref())?;
    let pad_id = tok.special_id("<|endoftext|>")?;
    let im_end = ChatMl::new(&tok)?.im_end();
    let prompts = rl::prompts(&r.prompts, &tok, r.system.as_deref(), r.max_prompt_len)?;
    let ptx = match &args.ptx_data {
        Some(p) => ptx_rows(p, &tok, args.ptx_seq_len)?,
        None => Vec::new(),
    };

    let dev = device();
    let policy =
        qwen_model::load::<TrainBackend>(&r.policy, &dev).with_context(|| format!("loading {}", r.policy.display()))?;
    // With LoRA the reference is the policy with fresh adapters (B = 0): the starting policy. The
    // value model stays a whole trained model (as TRL's PPOTrainer with a peft_config keeps it).
    let policy = args.lora.apply(policy, r.seed)?;
    let load_rm = || format!("loading the reward model {}", args.reward.display());
    let reward = ScoreModel::<qwen::backend::Backend>::load(&args.reward, &dev).with_context(load_rm)?;
    let value = ScoreModel::<TrainBackend>::load(&args.reward, &dev).with_context(load_rm)?;
    let steps = finetune::epoch_steps(r.epochs, prompts.len(), r.batch)?;
    let config = PpoRunConfig {
        ppo: PpoConfig {
            kl_coef: args.kl_coef,
            clip: args.clip,
            value_clip: args.value_clip,
            epochs: args.ppo_epochs,
            minibatch_rows: args.minibatch_rows,
            value_warmup_steps: args.value_warmup_steps,
            responses_per_query: args.responses_per_query,
            max_new_tokens: r.max_new_tokens,
            sampling: r.sampling(args.top_p),
            reward_norm: match args.baseline {
                BaselineArg::RunningMean => RewardNorm::RunningMean,
                BaselineArg::LeaveOneOut => RewardNorm::LeaveOneOut,
            },
            ptx_coef: if ptx.is_empty() { 0.0 } else { args.ptx_coef },
            kl_estimator: match args.kl_estimator {
                KlArg::K1 => KlEstimator::K1,
                KlArg::K3 => KlEstimator::K3,
            },
            score_placement: match args.score_placement {
                PlacementArg::LastToken => ScorePlacement::LastToken,
                PlacementArg::AfterResponse => ScorePlacement::AfterResponse,
            },
            ..PpoConfig::default()
        },
        optim: PpoOptim {
            optim: OptimConfig { update: optimizer_update(), ..OptimConfig::default() },
            policy: constant(args.policy_lr, 0),
            value: constant(args.value_lr, 0),
        },
        stop_ids: vec![im_end],
        pad_id,
        steps,
        checkpoint_every: r.checkpoint_every,
    };
    let mut run = Run::ppo(&config, policy, value, reward, &r.out, &dev)?;
    qwen_train::persist::write_json(r.out.join("ppo_args.json"), &args)?;
    eprintln!(
        "ppo: {} prompts, {steps} steps of {} x {} responses ({} value-only), kl {}, lr {} / {}{}, backend {}{}",
        prompts.len(),
        r.batch,
        args.responses_per_query,
        args.value_warmup_steps.min(steps),
        args.kl_coef,
        args.policy_lr,
        args.value_lr,
        if ptx.is_empty() { String::new() } else { format!(", ptx {} rows x {}", ptx.len(), args.ptx_coef) },
        qwen::backend::name(),
        run.resumed_from().map(|s| format!("; resumed at step {s}")).unwrap_or_default()
    );
    let sampler = EpochSampler { len: prompts.len(), batch: r.batch, seed: r.seed };
    let ptx_sampler = EpochSampler { len: ptx.len(), batch: args.ptx_batch, seed: r.seed ^ 0x9e37_79b9 };
    let mut data = |step: u64| -> qwen_align::Result<PpoBatch> {
        let prompts = sampler.indices(step).into_iter().map(|i| prompts[i].ids.clone()).collect();
        let ptx = (!ptx.is_empty()).then(|| {
            let mut b = TokenBatch { batch: args.ptx_batch, seq_len: args.ptx_seq_len, ..TokenBatch::default() };
            for i in ptx_sampler.indices(step) {
                b.inputs.extend_from_slice(&ptx[i][..args.ptx_seq_len]);
                b.targets.extend_from_slice(&ptx[i][1..]);
            }
            b
        });
        Ok(PpoBatch { prompts, ptx })
    };
    let pb = finetune::progress("ppo", steps, run.step())?;
    let started = Instant::now();
    run.train(&mut data, |s| {
        pb.set_message(format!(
            "score {:.3} kl {:.3}{}",
            s.score,
            s.kl,
            if s.policy_updated { "" } else { " (value only)" }
        ));
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let metrics = run.metrics_path().to_path_buf();
    let trainer = run.into_stage();
    let tuned = trainer.valid_policy();
    args.lora.write_end(&tuned, &r.policy, &tok_path, &r.out)?;
    trainer.value.valid().save(r.out.join("value"), SaveDtype::F32)?;

    let score = finetune::series(&metrics, "objective/scores")?;
    let rlhf = finetune::series(&metrics, "objective/rlhf_reward")?;
    finetune::plot(
        "PPO",
        "reward-model score / score - KL penalty",
        vec![("objective/scores", score.clone()), ("objective/rlhf_reward", rlhf)],
        &r.out.join("reward.png"),
    )?;
    let kl = finetune::series(&metrics, "objective/kl")?;
    finetune::plot("PPO", "KL to the reference (nats/response)", vec![("objective/kl", kl)], &r.out.join("kl.png"))?;
    let (k, first, last) = rl::first_and_last_quarter(&score);
    println!(
        "ppo: mean score over the first {k} steps {first:.4}, over the last {k} {last:.4} ({steps} steps, {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!("ppo: wrote {}", r.out.display());
    Ok(())
}
