//! Alignment end to end, on a task whose answers can be checked: writing a word in capitals.
//!
//! ```sh
//! cargo run --release --example align                  # ~5 minutes on 2 CPU cores
//! cargo run --release --example align -- --sft-steps 800 --ppo-steps 100 --out runs/align
//! ```
//!
//! 1. **SFT**: a small Qwen learns ChatML conversations (`upper: abcd` → `ABCD`) with
//!    `finetune.py`'s loss mask; held-out loss on assistant tokens and exact-match accuracy of
//!    greedy and sampled answers to held-out words, before and after.
//! 2. **Reward model** on the SFT trunk: preference-model pretraining on coarse comparisons (the
//!    right answer against another word), then fine-tuning on near misses (two letters swapped, one
//!    letter changed, one left in lower case, the word unchanged) and on the SFT policy's own
//!    sampled mistakes; held-out accuracy on each kind after each stage.
//! 3. **PPO** from the SFT policy with the reward model (value model initialised from it, frozen
//!    reference, KL penalty, value warm-up); mean reward and exact-match accuracy before and after.
//! 4. **DPO** from the same SFT policy on the fine-tuning comparisons; held-out preference accuracy
//!    and exact-match accuracy before and after.
//!
//! The words are random lowercase strings (train and held-out sets disjoint), so nothing here was
//! written by hand; the tokenizer is byte-level (one token per letter) with Qwen's ChatML tokens.
//! Every stage's result is checked: the run fails if a metric does not move the right way.
//! `--ppo-steps 0` / `--dpo-steps 0` skip a stage. Writes to `--out`: `metrics.jsonl` (one record
//! per logged step, tagged by stage), `align.png`, `tokenizer.json`, the policies `sft/`, `ppo/`,
//! `dpo/` (HF Qwen2 checkpoints: try `cargo run --release --example generate -- --model OUT/ppo
//! --tokenizer OUT/tokenizer.json --chat --system "Write words in capitals." --prompt "upper: hello"`)
//! and the reward model `reward/`
//! (HF `Qwen2ForSequenceClassification` layout).
//!
//! Each stage is a `qwen_align::run` run with its own folder under `OUT/stages/` (its config
//! `run_config.json`, its `metrics.jsonl`, its latest checkpoint, written every `--checkpoint-every`
//! steps); `--resume` continues the stages there after a kill, exactly (without it they start over).
//! `align.png` has a panel per stage, each line smoothed over its faint raw values; `--replot` only
//! redraws it from `OUT/metrics.jsonl`.
//! The batches are functions of the step (seeded per stage and step), so a resumed run sees the
//! data an uninterrupted one would.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qwen::backend::{device, optimizer_update, Backend, TrainBackend};
use qwen_align::{
    constant, DpoConfig, DpoRunConfig, Overflow, Pair, PairBatch, PpoBatch, PpoConfig, PpoOptim, PpoRunConfig,
    RewardConfig, Run, ScoreModel, SftBatcher, SftConfig,
};
use qwen_data::rng::SplitMix64;
use qwen_data::{Batcher, TokenBatch};
use qwen_model::{GenerateConfig, Mode, QwenConfigBuilder, QwenModel, SamplingConfig, SaveDtype};
use qwen_tokenizer::train::{BpeTrainer, TrainerConfig};
use qwen_tokenizer::{AllowedSpecial, ChatMl, ChatTokens, Message, Role, Tokenizer};
use qwen_train::plot::{save_panels_png, Chart, Series};
use qwen_train::{evaluate, OptimConfig, Schedule, TrainConfig};

/// SFT, reward modelling (PMP then fine-tuning), PPO and DPO on a capitalisation task, measured.
#[derive(Parser, Debug)]
#[command(name = "align")]
struct Args {
    /// SFT steps. The default stops while the policy is right about half the time (800 steps
    /// reach 100%), so that PPO and DPO have something to improve.
    #[arg(long, default_value_t = 550)]
    sft_steps: u64,
    /// Reward-model preference-model pretraining steps (coarse comparisons).
    #[arg(long, default_value_t = 100)]
    pmp_steps: u64,
    /// Reward-model fine-tuning steps (near misses and the SFT policy's mistakes).
    #[arg(long, default_value_t = 150)]
    rm_steps: u64,
    /// PPO steps (0 skips PPO).
    #[arg(long, default_value_t = 60)]
    ppo_steps: u64,
    /// PPO steps that update only the value model (the report: 50 of its run).
    #[arg(long, default_value_t = 10)]
    value_warmup: u64,
    /// DPO steps (0 skips DPO).
    #[arg(long, default_value_t = 80)]
    dpo_steps: u64,
    /// Reward-model learning rate (constant after 10 warm-up steps).
    #[arg(long, default_value_t = 3e-4)]
    rm_lr: f64,
    /// PPO policy learning rate (constant; the value model's is 10x).
    #[arg(long, default_value_t = 1e-5)]
    ppo_lr: f64,
    /// PPO KL penalty coefficient (the report: 0.04).
    #[arg(long, default_value_t = 0.04)]
    kl_coef: f64,
    /// DPO learning rate (constant after 5 warm-up steps).
    #[arg(long, default_value_t = 1e-5)]
    dpo_lr: f64,
    /// DPO β. TRL's default 0.1 lowers exact match here (the near-miss pairs differ by a letter, and
    /// DPO pushes the chosen answers' likelihood down with the rejected ones); 0.5 keeps it.
    #[arg(long, default_value_t = 0.5)]
    dpo_beta: f64,
    /// Conversations (or comparisons, or PPO prompts) per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "runs/align")]
    out: PathBuf,
    /// Steps between the stages' checkpoints (each stage also checkpoints its last step).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// Continue the stages in `OUT/stages/` from their checkpoints (same flags as the run that
    /// wrote them) instead of starting over.
    #[arg(long)]
    resume: bool,
    /// Only redraw `OUT/align.png` from `OUT/metrics.jsonl` (a finished run's), without training.
    #[arg(long)]
    replot: bool,
}

const SYSTEM: &str = "Write words in capitals.";
const HELD_OUT: usize = 128;

/// A random lowercase word of 3 to 6 letters.
fn word(rng: &mut SplitMix64) -> String {
    let n = 3 + rng.below(4) as usize;
    (0..n).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
}

/// The right answer.
fn answer(w: &str) -> String {
    w.to_ascii_uppercase()
}

fn prompt(w: &str) -> String {
    format!("upper: {w}")
}

/// Words, distinct, split into training and held-out sets.
fn words(rng: &mut SplitMix64, train: usize) -> (Vec<String>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    while all.len() < train + HELD_OUT {
        let w = word(rng);
        if seen.insert(w.clone()) {
            all.push(w);
        }
    }
    let held = all.split_off(train);
    (all, held)
}

/// A wrong answer close to the right one: two adjacent letters swapped, one letter changed, one
/// letter left in lower case, or the word unchanged (never equal to the right answer).
fn near_miss(w: &str, rng: &mut SplitMix64) -> String {
    let right: Vec<char> = answer(w).chars().collect();
    loop {
        let mut c = right.clone();
        let n = c.len();
        let i = rng.below(n as u64) as usize;
        match rng.below(4) {
            0 => c.swap(i.min(n - 2), i.min(n - 2) + 1),
            1 => c[i] = (b'A' + rng.below(26) as u8) as char,
            2 => c[i] = c[i].to_ascii_lowercase(),
            _ => c = w.chars().collect(),
        }
        if c != right {
            return c.into_iter().collect();
        }
    }
}

/// The generator of one stage's batch at one step: the data is a function of the step, so that a
/// resumed stage sees what an uninterrupted one would.
fn step_rng(seed: u64, stage: u64, step: u64) -> SplitMix64 {
    SplitMix64::derived(seed, (stage << 40) | step)
}

struct Task {
    tok: Tokenizer,
    pad: u32,
    stop: Vec<u32>,
}

impl Task {
    fn conversation(&self, w: &str) -> qwen_align::Result<ChatTokens> {
        let chat = ChatMl::new(&self.tok)?;
        let messages = [Message::new(Role::User, prompt(w)), Message::new(Role::Assistant, answer(w))];
        Ok(chat.render(SYSTEM, &messages)?)
    }

    /// The ChatML prompt that asks for `w` in capitals (an open assistant turn).
    fn prompt_ids(&self, w: &str) -> qwen_align::Result<Vec<u32>> {
        let chat = ChatMl::new(&self.tok)?;
        Ok(chat.make_context(SYSTEM, &[] as &[(&str, &str)], &prompt(w), usize::MAX)?.ids)
    }

    fn response(&self, text: &str) -> qwen_align::Result<Vec<u32>> {
        let mut ids = self.tok.encode(text, &AllowedSpecial::None)?;
        ids.push(self.stop[0]);
        Ok(ids)
    }

    fn pair(&self, w: &str, rejected: &str) -> qwen_align::Result<Pair> {
        Ok(Pair { prompt: self.prompt_ids(w)?, chosen: self.response(&answer(w))?, rejected: self.response(rejected)? })
    }

    fn sft_batch(&self, ws: &[String], seq_len: usize) -> qwen_align::Result<TokenBatch> {
        let chats = ws.iter().map(|w| self.conversation(w)).collect::<qwen_align::Result<Vec<_>>>()?;
        Ok(SftBatcher { seq_len, pad_id: self.pad, overflow: Overflow::Error }.batch(chats)?)
    }

    /// Answers to `ws` (greedy, or sampled with `sampling`): (fraction exactly right, the
    /// answers' token ids, the answers' text).
    fn exact_match(
        &self,
        model: &QwenModel<Backend>,
        ws: &[String],
        sampling: &SamplingConfig,
    ) -> Result<(f64, Vec<Vec<u32>>, Vec<String>)> {
        let prompts = ws.iter().map(|w| self.prompt_ids(w)).collect::<qwen_align::Result<Vec<_>>>()?;
        let config = GenerateConfig { max_new_tokens: 10, stop_ids: self.stop.clone(), sampling: sampling.clone() };
        let answers = model.generate_batch(&prompts, &config, |_, _| true)?;
        let texts = answers
            .iter()
            .map(|a| Ok(self.tok.decode_lossy(a.strip_suffix(&self.stop[..1]).unwrap_or(a))?))
            .collect::<Result<Vec<String>>>()?;
        let right = ws.iter().zip(&texts).filter(|(w, t)| answer(w) == **t).count();
        Ok((right as f64 / ws.len() as f64, answers, texts))
    }

    /// Greedy and sampled (PPO's rollout setting) exact-match accuracy, and the greedy answers.
    fn accuracy(&self, model: &QwenModel<Backend>, ws: &[String]) -> Result<(f64, f64, Vec<Vec<u32>>)> {
        let (greedy, answers, _) = self.exact_match(model, ws, &SamplingConfig::default())?;
        let (sampled, _, _) = self.exact_match(model, ws, &rollout_sampling(7))?;
        Ok((greedy, sampled, answers))
    }
}

/// How PPO samples (the report: top-p 0.9).
fn rollout_sampling(seed: u64) -> SamplingConfig {
    SamplingConfig { temperature: 1.0, top_p: 0.9, seed, ..SamplingConfig::default() }
}

fn progress(steps: u64, done: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(steps).with_message(what.to_string());
    pb.set_style(ProgressStyle::with_template("{msg:>5} {bar:30} {pos}/{len} {prefix}").expect("valid template"));
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_position(done);
    pb
}

/// Mean reward-model score of `answers` to `ws`.
fn mean_reward(task: &Task, reward: &ScoreModel<Backend>, ws: &[String], answers: &[Vec<u32>]) -> Result<f64> {
    let mut total = 0.0;
    for (w, a) in ws.iter().zip(answers) {
        let row = [task.prompt_ids(w)?, a.clone()].concat();
        let r = reward.rewards(std::slice::from_ref(&row), &[row.len() - 1])?;
        total += r.into_scalar() as f64;
    }
    Ok(total / ws.len() as f64)
}

/// A pair maker: the word to ask and a generator, to the comparison.
type MakePair<'a> = dyn Fn(&str, &mut SplitMix64) -> qwen_align::Result<Pair> + 'a;

/// `png`: one panel per stage of the stage-tagged `metrics` (SFT loss; reward-model loss and
/// accuracy; PPO score and KL; DPO loss and accuracy), each on its own axis, every line a moving
/// average over its faint raw values. A stage that did not run has no panel.
fn plot(metrics: &Path, png: &Path) -> Result<()> {
    let records = qwen_train::read_metrics(metrics)?;
    let series = |stage: &str, key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter(|r| r["stage"] == stage)
            .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
            .collect()
    };
    // One panel per stage, each on its own axis; every line smoothed over its faint raw values.
    let panel = |title: &str, y_label: &str, lines: Vec<(&str, &str, &str)>| Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: y_label.into(),
        log_x: false,
        log_y: false,
        series: lines
            .into_iter()
            .map(|(name, stage, key)| Series { name: name.into(), points: series(stage, key) })
            .collect(),
    };
    let panels = [
        panel("SFT", "loss on assistant tokens (nats)", vec![("loss", "sft", "loss")]),
        panel(
            "Reward model: PMP, then fine-tuning",
            "pairwise loss (nats) / accuracy",
            vec![
                ("PMP loss", "pmp", "loss"),
                ("fine-tune loss", "rm", "loss"),
                ("PMP accuracy", "pmp", "accuracy"),
                ("fine-tune accuracy", "rm", "accuracy"),
            ],
        ),
        panel(
            "PPO: reward",
            "reward-model score per response",
            vec![("score", "ppo", "objective/scores"), ("score - KL penalty", "ppo", "objective/rlhf_reward")],
        ),
        panel("PPO: KL to the reference", "nats per response", vec![("KL", "ppo", "objective/kl")]),
        panel(
            "DPO",
            "loss (nats) / preference accuracy",
            vec![("loss", "dpo", "loss"), ("accuracy", "dpo", "accuracy")],
        ),
    ];
    save_panels_png("alignment on capitalising words", &panels, 3, png, 600, 380)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    qwen::keep_freed_memory();
    if args.replot {
        plot(&args.out.join("metrics.jsonl"), &args.out.join("align.png"))?;
        println!("wrote {}", args.out.join("align.png").display());
        return Ok(());
    }
    let stages = args.out.join("stages");
    if !args.resume && stages.exists() {
        std::fs::remove_dir_all(&stages)?;
    }
    std::fs::create_dir_all(&stages)?;
    let started = Instant::now();
    let mut rng = SplitMix64::new(args.seed);
    let (train_words, held_words) = words(&mut rng, 4000);
    let pick = |rng: &mut SplitMix64| train_words[rng.below(train_words.len() as u64) as usize].clone();

    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    let tok = BpeTrainer::new(TrainerConfig { vocab_size: 256, specials, ..TrainerConfig::default() })?.train()?;
    let task =
        Task { pad: tok.special_id("<|endoftext|>")?, stop: vec![tok.special_id("<|im_end|>")?], tok: tok.clone() };
    let seq_len = task.conversation("abcdef")?.len();

    let dev = device();
    <TrainBackend as burn::tensor::backend::Backend>::seed(&dev, args.seed);
    let config = QwenConfigBuilder::new(tok.vocab_size(), 128, 344, 3, 4).kv_heads(2).max_positions(128).build()?;
    eprintln!(
        "backend {}; {} training words, {HELD_OUT} held out; sequences of {seq_len}",
        qwen::backend::name(),
        train_words.len()
    );
    let optim = OptimConfig { update: optimizer_update(), ..OptimConfig::default() };
    let every = args.checkpoint_every;

    // 1. SFT.
    let model = QwenModel::<TrainBackend>::random(config, 0.02, &dev);
    let schedule = Schedule::new(2e-3, args.sft_steps / 10 + 1, args.sft_steps);
    let sft_config = SftConfig {
        train: TrainConfig { optim, ..TrainConfig::new(schedule, args.seed) },
        steps: args.sft_steps,
        checkpoint_every: every,
    };
    let held_sft = [task.sft_batch(&held_words, seq_len)?];
    let sft_before = evaluate(&model.valid(), &held_sft, Mode::Training)?;
    let (em_init, _, _) = task.accuracy(&model.valid(), &held_words)?;
    let mut sft = Run::sft(&sft_config, model, stages.join("sft"), &dev)?;
    let pb = progress(args.sft_steps, sft.step(), "sft");
    // SFT batches in the order one sequential generator gives them (the order the defaults were
    // tuned on: when this task "clicks" depends on it); a resumed run replays the generator up to
    // its step, so it sees the batches an uninterrupted run would.
    let (mut sft_rng, mut next_step) = (rng.clone(), 0u64);
    let mut sft_data = |step: u64| -> qwen_align::Result<Vec<TokenBatch>> {
        if step < next_step {
            return Err(qwen_align::AlignError::Batch(format!("SFT batch {step} asked after {next_step}")));
        }
        for _ in next_step..step {
            (0..args.batch).for_each(|_| drop(pick(&mut sft_rng)));
        }
        next_step = step + 1;
        let ws: Vec<String> = (0..args.batch).map(|_| pick(&mut sft_rng)).collect();
        Ok(vec![task.sft_batch(&ws, seq_len)?])
    };
    sft.train(&mut sft_data, |s| {
        pb.set_prefix(format!("loss {:.3}", s.loss));
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let sft_policy = sft.stage.model().clone();
    let sft_metrics = sft.metrics_path().to_path_buf();
    drop(sft);
    let sft_model = sft_policy.valid();
    tok.save_tokenizer_json(args.out.join("tokenizer.json"))?;
    sft_model.save(args.out.join("sft"), SaveDtype::F32)?;
    // A folder `chat --model` opens as it is: weights, config and tokenizer.
    tok.save_tokenizer_json(args.out.join("sft").join("tokenizer.json"))?;
    let sft_after = evaluate(&sft_model, &held_sft, Mode::Training)?;
    let (em_sft, em_sft_sampled, sft_answers) = task.accuracy(&sft_model, &held_words)?;
    println!(
        "SFT   held-out loss on assistant tokens {:.3} -> {:.3}; exact match {:.1}% -> {:.1}% greedy, {:.1}% sampled ({} steps, {:.0}s)",
        sft_before.loss,
        sft_after.loss,
        100.0 * em_init,
        100.0 * em_sft,
        100.0 * em_sft_sampled,
        args.sft_steps,
        started.elapsed().as_secs_f64()
    );
    ensure!(sft_after.loss < 0.5 * sft_before.loss, "SFT did not halve the held-out loss");

    // 2. Reward model: PMP on coarse comparisons, then fine-tuning on near misses.
    let coarse = |w: &str, rng: &mut SplitMix64| -> qwen_align::Result<Pair> {
        let other = loop {
            let o = answer(&word(rng));
            if o != answer(w) {
                break o;
            }
        };
        task.pair(w, &other)
    };
    // The SFT policy's own mistakes (sampled as PPO will sample), the comparisons that matter most
    // to PPO: on training words to fine-tune the reward model on, on held-out words to measure it.
    let mistakes = |ws: &[String], seed: u64| -> Result<Vec<(String, String)>> {
        let (_, _, texts) = task.exact_match(&sft_model, ws, &rollout_sampling(seed))?;
        Ok(ws.iter().zip(texts).filter(|(w, t)| answer(w) != *t).map(|(w, t)| (w.clone(), t)).collect())
    };
    let train_mistakes = mistakes(&train_words[..1024], 11)?;
    let held_mistakes = mistakes(&held_words, 13)?;
    let fine = |w: &str, rng: &mut SplitMix64| -> qwen_align::Result<Pair> { task.pair(w, &near_miss(w, rng)) };
    // Fine-tuning pairs: half the policy's mistakes, half synthetic near misses.
    let fine_or_mistake = |w: &str, rng: &mut SplitMix64| -> qwen_align::Result<Pair> {
        if rng.below(2) == 0 && !train_mistakes.is_empty() {
            let (w, wrong) = &train_mistakes[rng.below(train_mistakes.len() as u64) as usize];
            task.pair(w, wrong)
        } else {
            fine(w, rng)
        }
    };
    let batches = |pairs: Vec<Pair>| -> Result<Vec<PairBatch>> {
        pairs.chunks(32).map(|c| Ok(PairBatch::new(c, task.pad, 128)?)).collect()
    };
    let held_pairs = |make: &MakePair, rng: &mut SplitMix64| -> Result<Vec<PairBatch>> {
        batches(held_words.iter().map(|w| make(w, rng)).collect::<qwen_align::Result<Vec<_>>>()?)
    };
    let held_fine = held_pairs(&fine, &mut rng)?;
    let held_policy =
        batches(held_mistakes.iter().map(|(w, t)| task.pair(w, t)).collect::<qwen_align::Result<Vec<_>>>()?)?;
    let held_coarse = held_pairs(&coarse, &mut rng)?;
    // Training comparisons of one step of one stage (1: PMP and fine-tuning, 2: DPO).
    let sample = |make: &MakePair, stage: u64, step: u64| -> qwen_align::Result<PairBatch> {
        let mut rng = step_rng(args.seed, stage, step);
        let pairs = (0..args.batch).map(|_| make(&pick(&mut rng), &mut rng)).collect::<qwen_align::Result<Vec<_>>>()?;
        PairBatch::new(&pairs, task.pad, 128)
    };
    let rm_config = RewardConfig {
        optim,
        schedule: constant(args.rm_lr, 10),
        pmp_steps: args.pmp_steps,
        finetune_steps: args.rm_steps,
        checkpoint_every: every,
    };
    let rm_start = ScoreModel::from_lm(sft_policy.clone());
    let rm_init = {
        let m = rm_start.valid();
        let eval = |b: &[PairBatch]| qwen_align::evaluate_pairs(&m, b);
        (eval(&held_coarse)?, eval(&held_fine)?, eval(&held_policy)?)
    };
    let mut rm = Run::reward(&rm_config, rm_start, stages.join("reward"), &dev)?;
    let (mut pmp_data, mut fine_data) = (|step| sample(&coarse, 3, step), |step| sample(&fine_or_mistake, 3, step));
    for (stage, until) in [("pmp", args.pmp_steps), ("rm", args.pmp_steps + args.rm_steps)] {
        let first = until - if stage == "pmp" { args.pmp_steps } else { args.rm_steps };
        let pb = progress(until - first, rm.step().clamp(first, until) - first, stage);
        rm.train_phases(until, &mut pmp_data, &mut fine_data, |s| {
            pb.set_prefix(format!("loss {:.3} acc {:.2}", s.pairs.loss, s.pairs.accuracy));
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        let t = &rm.stage.trainer;
        let (c, f, p) = (t.evaluate(&held_coarse)?, t.evaluate(&held_fine)?, t.evaluate(&held_policy)?);
        println!(
            "RM    after {stage:>3}: held-out accuracy: coarse {:.1}% (was {:.1}%), near misses {:.1}% (was {:.1}%), \
             the SFT policy's mistakes {:.1}% (was {:.1}%, {} pairs)",
            100.0 * c.accuracy,
            100.0 * rm_init.0.accuracy,
            100.0 * f.accuracy,
            100.0 * rm_init.1.accuracy,
            100.0 * p.accuracy,
            100.0 * rm_init.2.accuracy,
            p.pairs
        );
    }
    let rm_final = rm.stage.trainer.evaluate(&held_fine)?;
    ensure!(rm_final.accuracy > rm_init.1.accuracy + 0.2, "the reward model did not learn the near misses");
    let rm_metrics = rm.metrics_path().to_path_buf();
    let rm_model = rm.into_stage().trainer.model;
    let reward = rm_model.valid();
    reward.save(args.out.join("reward"), SaveDtype::F32)?;
    let mut metrics = vec![sft_metrics, rm_metrics];

    if args.ppo_steps > 0 {
        // 3. PPO from the SFT policy.
        let ppo_config = PpoRunConfig {
            ppo: PpoConfig {
                max_new_tokens: 10,
                value_warmup_steps: args.value_warmup,
                responses_per_query: 2,
                epochs: 2,
                kl_coef: args.kl_coef,
                ..PpoConfig::default()
            },
            optim: PpoOptim { optim, policy: constant(args.ppo_lr, 0), value: constant(10.0 * args.ppo_lr, 0) },
            stop_ids: task.stop.clone(),
            pad_id: task.pad,
            steps: args.ppo_steps,
            checkpoint_every: every,
        };
        let mut ppo =
            Run::ppo(&ppo_config, sft_policy.clone(), rm_model.clone(), reward.clone(), stages.join("ppo"), &dev)?;
        let reward_sft = mean_reward(&task, &reward, &held_words, &sft_answers)?;
        let pb = progress(args.ppo_steps, ppo.step(), "ppo");
        let mut ppo_data = |step: u64| -> qwen_align::Result<PpoBatch> {
            let mut rng = step_rng(args.seed, 4, step);
            let prompts =
                (0..args.batch / 2).map(|_| task.prompt_ids(&pick(&mut rng))).collect::<qwen_align::Result<_>>()?;
            Ok(PpoBatch { prompts, ptx: None })
        };
        ppo.train(&mut ppo_data, |s| {
            pb.set_prefix(format!("score {:.3} kl {:.3}", s.score, s.kl));
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        metrics.push(ppo.metrics_path().to_path_buf());
        let ppo_policy = ppo.stage.valid_policy();
        let (em_ppo, em_ppo_sampled, ppo_answers) = task.accuracy(&ppo_policy, &held_words)?;
        ppo_policy.save(args.out.join("ppo"), SaveDtype::F32)?;
        // A folder `chat --model` opens as it is: weights, config and tokenizer.
        tok.save_tokenizer_json(args.out.join("ppo").join("tokenizer.json"))?;
        let reward_ppo = mean_reward(&task, &reward, &held_words, &ppo_answers)?;
        println!(
            "PPO   held-out greedy answers: mean reward {reward_sft:.3} -> {reward_ppo:.3}; exact match {:.1}% -> {:.1}% greedy, \
             {:.1}% -> {:.1}% sampled ({} steps, {} value-only)",
            100.0 * em_sft,
            100.0 * em_ppo,
            100.0 * em_sft_sampled,
            100.0 * em_ppo_sampled,
            args.ppo_steps,
            args.value_warmup
        );
        ensure!(reward_ppo > reward_sft, "PPO did not raise the held-out reward");
    }

    if args.dpo_steps > 0 {
        // 4. DPO from the same SFT policy.
        let dpo_config = DpoRunConfig {
            dpo: DpoConfig { beta: args.dpo_beta },
            optim,
            schedule: constant(args.dpo_lr, 5),
            steps: args.dpo_steps,
            checkpoint_every: every,
        };
        let mut dpo = Run::dpo(&dpo_config, sft_policy.clone(), stages.join("dpo"), &dev)?;
        let dpo_before = qwen_align::DpoTrainer::new(sft_policy.clone(), dpo_config.dpo, optim, dpo_config.schedule)?
            .evaluate(&held_fine)?;
        let pb = progress(args.dpo_steps, dpo.step(), "dpo");
        let mut dpo_data = |step| sample(&fine_or_mistake, 5, step);
        dpo.train(&mut dpo_data, |s| {
            pb.set_prefix(format!("loss {:.3} acc {:.2}", s.stats.loss, s.stats.accuracy));
            pb.inc(1);
        })?;
        pb.finish_and_clear();
        metrics.push(dpo.metrics_path().to_path_buf());
        let dpo_after = dpo.stage.evaluate(&held_fine)?;
        let dpo_mistakes = dpo.stage.evaluate(&held_policy)?;
        let dpo_policy = dpo.stage.policy.valid();
        let (em_dpo, em_dpo_sampled, _) = task.accuracy(&dpo_policy, &held_words)?;
        dpo_policy.save(args.out.join("dpo"), SaveDtype::F32)?;
        // A folder `chat --model` opens as it is: weights, config and tokenizer.
        tok.save_tokenizer_json(args.out.join("dpo").join("tokenizer.json"))?;
        println!(
            "DPO   held-out near-miss pairs: loss {:.3} -> {:.3}, preference accuracy {:.1}% -> {:.1}% (the SFT policy's \
             mistakes: {:.1}%); exact match {:.1}% -> {:.1}% greedy, {:.1}% -> {:.1}% sampled ({} steps)",
            dpo_before.loss,
            dpo_after.loss,
            100.0 * dpo_before.accuracy,
            100.0 * dpo_after.accuracy,
            100.0 * dpo_mistakes.accuracy,
            100.0 * em_sft,
            100.0 * em_dpo,
            100.0 * em_sft_sampled,
            100.0 * em_dpo_sampled,
            args.dpo_steps
        );
        ensure!(dpo_after.loss < dpo_before.loss && dpo_after.accuracy > 0.5, "DPO did not learn the preferences");
    }

    // The stages' metrics, in order, as one file (each record tagged by its stage).
    let mut all = String::new();
    for m in &metrics {
        all.push_str(&std::fs::read_to_string(m)?);
    }
    let metrics_path = args.out.join("metrics.jsonl");
    std::fs::write(&metrics_path, all)?;
    plot(&metrics_path, &args.out.join("align.png"))?;
    println!("done in {:.0}s; metrics and align.png in {}", started.elapsed().as_secs_f64(), args.out.display());
    Ok(())
}
