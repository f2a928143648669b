//! Crash safety of training, measured on the `pretrain`, `sft` (full and LoRA), `reward`, `dpo`, `ppo` and `grpo` binaries: a run killed with
//! SIGKILL at seeded random moments and at every step of a checkpoint write (the binaries pause
//! there when `QWEN_FAULT_PAUSE_MS` is set), resumed after each kill, ends with the same bytes as an
//! uninterrupted run: checkpoint (weights, optimizer state, trainer state, checksums), the metrics
//! log's loss sequence and what the run writes at its end. A run whose checkpoint write hits a
//! file-size limit (`RLIMIT_FSIZE`, as a full disk) exits with a typed error, not a panic, leaves the
//! previous checkpoint intact, and resumes to the same result. `docs/reliability.md` has the numbers.
//!
//! Needs the `pretrain`, `sft`, `reward`, `dpo`, `ppo` and `grpo` examples built (`cargo test` builds them; with `--test
//! crash_safety` alone, `cargo build --examples` first) and the corpus from
//! `tools/setup.sh`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use qwen::data::rng::SplitMix64;
use qwen::train::persist::{has_checkpoint, intact_checkpoint, verify_checksums, FAULT_PAUSE_ENV};

mod common;

/// A training binary under test: how to launch it, how long it runs, and what its end state is.
struct Job {
    tag: &'static str,
    /// Steps of the run, and a checkpoint every `save_every` of them.
    steps: u64,
    save_every: u64,
    /// The launch writing into `out` (continuing its checkpoint when `resume`).
    command: fn(&Path, bool) -> Command,
    /// Files the run writes at its end besides the checkpoint and the metrics, which must equal the
    /// uninterrupted run's byte for byte.
    outputs: &'static [&'static str],
    /// Keys of the run's `run.json` summary that must equal the uninterrupted run's (none: no summary).
    summary: &'static [&'static str],
    /// The files of its checkpoint folder (relative paths, sorted).
    checkpoint: &'static [&'static str],
    /// A key every metrics record of a training step has.
    step_key: &'static str,
    /// The uninterrupted run, once.
    reference: &'static OnceLock<(PathBuf, Duration)>,
}

static PRETRAIN_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();
static SFT_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();
static DPO_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();
static REWARD_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();
static PPO_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();
static GRPO_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();

/// The checkpoint of a run that trains one model.
const ONE_MODEL: &[&str] =
    &["checksums.json", "config.json", "model.safetensors", "optimizer.bin", "trainer_state.json"];

const PRETRAIN: Job = Job {
    tag: "pretrain",
    steps: 20,
    save_every: 2,
    command: pretrain_command,
    outputs: &["tokenizer.json", "data/train.qwtk", "data/heldout.qwtk"],
    summary: &["ppl_before", "ppl_after", "loss_before", "loss_after", "steps", "params"],
    checkpoint: ONE_MODEL,
    step_key: "loss",
    reference: &PRETRAIN_REFERENCE,
};

const SFT: Job = Job {
    tag: "sft",
    steps: 20,
    save_every: 2,
    command: sft_command,
    outputs: &["config.json", "model.safetensors", "tokenizer.json", "run_config.json", "loss.png"],
    summary: &[],
    checkpoint: ONE_MODEL,
    step_key: "loss",
    reference: &SFT_REFERENCE,
};

static SFT_LORA_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();
static SFT_PACK_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();

/// SFT with `--pack`: two conversations a row of 128, packed once at the start, so a resumed run
/// must pack and shuffle the rows exactly as the uninterrupted one did.
const SFT_PACK: Job = Job {
    tag: "sft-pack",
    steps: 20,
    save_every: 2,
    command: sft_pack_command,
    outputs: &["config.json", "model.safetensors", "tokenizer.json", "run_config.json", "loss.png"],
    summary: &[],
    checkpoint: ONE_MODEL,
    step_key: "loss",
    reference: &SFT_PACK_REFERENCE,
};

/// SFT with LoRA (rank 8 on every projection, dropout on) and `--merge`: the adapters, the
/// optimizer state of the adapters alone, and the adapter and merged model written at the end.
const SFT_LORA: Job = Job {
    tag: "sft-lora",
    steps: 20,
    save_every: 2,
    command: sft_lora_command,
    outputs: &[
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "merged/model.safetensors",
        "run_config.json",
        "loss.png",
    ],
    summary: &[],
    checkpoint: &[
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checksums.json",
        "config.json",
        "model.safetensors",
        "optimizer.bin",
        "trainer_state.json",
    ],
    step_key: "loss",
    reference: &SFT_LORA_REFERENCE,
};

const DPO: Job = Job {
    tag: "dpo",
    steps: 20,
    save_every: 2,
    command: dpo_command,
    outputs: &["config.json", "model.safetensors", "tokenizer.json", "run_config.json", "dpo.png"],
    summary: &[],
    checkpoint: ONE_MODEL,
    step_key: "loss",
    reference: &DPO_REFERENCE,
};

const REWARD: Job = Job {
    tag: "reward",
    steps: 20,
    save_every: 2,
    command: reward_command,
    outputs: &["config.json", "model.safetensors", "tokenizer.json", "run_config.json", "eval.json", "reward.png"],
    summary: &[],
    checkpoint: ONE_MODEL,
    step_key: "loss",
    reference: &REWARD_REFERENCE,
};

const PPO: Job = Job {
    tag: "ppo",
    steps: 20,
    save_every: 2,
    command: ppo_command,
    outputs: &[
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "run_config.json",
        "reward.png",
        "kl.png",
        "value/model.safetensors",
    ],
    summary: &[],
    checkpoint: &[
        "checksums.json",
        "policy/config.json",
        "policy/model.safetensors",
        "policy/optimizer.bin",
        "policy/trainer_state.json",
        "ppo_state.json",
        "value/config.json",
        "value/model.safetensors",
        "value/optimizer.bin",
        "value/trainer_state.json",
    ],
    step_key: "objective/scores",
    reference: &PPO_REFERENCE,
};

const GRPO: Job = Job {
    tag: "grpo",
    steps: 20,
    save_every: 2,
    command: grpo_command,
    outputs: &["config.json", "model.safetensors", "tokenizer.json", "run_config.json", "reward.png", "kl.png"],
    summary: &[],
    checkpoint: &[
        "checksums.json",
        "config.json",
        "grpo_state.json",
        "model.safetensors",
        "optimizer.bin",
        "trainer_state.json",
    ],
    step_key: "reward",
    reference: &GRPO_REFERENCE,
};

static PPO_LORA_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();
static GRPO_LORA_REFERENCE: OnceLock<(PathBuf, Duration)> = OnceLock::new();

/// PPO with LoRA on the policy (rank 8, dropout on) and `--merge`: the policy's adapters and their
/// optimizer state in the checkpoint, the adapter and merged policy at the end.
const PPO_LORA: Job = Job {
    tag: "ppo-lora",
    steps: 20,
    save_every: 2,
    command: ppo_lora_command,
    outputs: &[
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "merged/model.safetensors",
        "run_config.json",
        "reward.png",
        "kl.png",
        "value/model.safetensors",
    ],
    summary: &[],
    checkpoint: &[
        "checksums.json",
        "policy/adapter/adapter_config.json",
        "policy/adapter/adapter_model.safetensors",
        "policy/config.json",
        "policy/model.safetensors",
        "policy/optimizer.bin",
        "policy/trainer_state.json",
        "ppo_state.json",
        "value/config.json",
        "value/model.safetensors",
        "value/optimizer.bin",
        "value/trainer_state.json",
    ],
    step_key: "objective/scores",
    reference: &PPO_LORA_REFERENCE,
};

/// GRPO with LoRA (rank 8, dropout on) and `--merge`.
const GRPO_LORA: Job = Job {
    tag: "grpo-lora",
    steps: 20,
    save_every: 2,
    command: grpo_lora_command,
    outputs: &[
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "merged/model.safetensors",
        "run_config.json",
        "reward.png",
        "kl.png",
    ],
    summary: &[],
    checkpoint: &[
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checksums.json",
        "config.json",
        "grpo_state.json",
        "model.safetensors",
        "optimizer.bin",
        "trainer_state.json",
    ],
    step_key: "reward",
    reference: &GRPO_LORA_REFERENCE,
};

/// The LoRA flags of the crash runs: rank 8 on every projection, dropout 0.1, merged at the end.
const LORA_ARGS: [&str; 7] = ["--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0.1", "--merge"];

/// The tiny model on S = 16 (20 steps, a checkpoint every 2), on three folders of the docutils
/// documentation (~200 kB).
const ARGS: [&str; 14] = [
    "--seq-len",
    "16",
    "--batch",
    "4",
    "--vocab-size",
    "300",
    "--eval-every",
    "4",
    "--min-ppl-drop",
    "0",
    "--heldout",
    "0.2",
    "--seed",
    "7",
];
/// Milliseconds the binary pauses at each fault point of a checkpoint write in the crash runs.
const PAUSE_MS: u64 = 150;

/// The tests share the two cores: one at a time (and the reference run once).
static SERIAL: Mutex<()> = Mutex::new(());

fn tmp(tag: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("qwen-crash-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    out
}

/// `example` writing into `out` (continuing its checkpoint when `resume`), without the fault pauses
/// unless a test sets them.
fn launch(example: &str, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(common::example(example));
    c.arg("--out").arg(out).env("RUST_BACKTRACE", "0").env_remove(FAULT_PAUSE_ENV);
    if resume {
        c.arg("--resume");
    }
    c
}

fn pretrain_command(out: &Path, resume: bool) -> Command {
    let mut c = launch("pretrain", out, resume);
    for d in ["howto", "api", "peps"] {
        let p = common::root().join("corpus/docutils").join(d);
        assert!(p.is_dir(), "{} is missing: run `bash tools/setup.sh` first", p.display());
        c.arg("--data").arg(p);
    }
    c.args(ARGS).args(["--steps", &PRETRAIN.steps.to_string(), "--save-every", &PRETRAIN.save_every.to_string()]);
    c
}

/// The input of the SFT, reward and DPO runs (made once): a tiny random Qwen2 checkpoint folder with a
/// byte-level tokenizer that has the ChatML tokens, 40 training conversations and 8 held-out ones,
/// and as many comparisons (the word in capitals preferred to it unchanged).
fn sft_inputs() -> &'static PathBuf {
    static INPUTS: OnceLock<PathBuf> = OnceLock::new();
    INPUTS.get_or_init(|| {
        use qwen::tokenizer::train::{BpeTrainer, TrainerConfig};
        let dir = tmp("sft-inputs");
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
        let tok = BpeTrainer::new(TrainerConfig { vocab_size: 256, specials, ..TrainerConfig::default() })
            .unwrap()
            .train()
            .unwrap();
        let config = qwen::model::QwenConfigBuilder::new(tok.vocab_size(), 128, 344, 2, 4)
            .kv_heads(2)
            .max_positions(128)
            .build()
            .unwrap();
        let model =
            qwen::model::QwenModel::<qwen::backend::Backend>::random(config.clone(), 0.02, &qwen::backend::device());
        model.save(&dir, qwen::model::SaveDtype::F32).unwrap();
        tok.save_tokenizer_json(dir.join("tokenizer.json")).unwrap();
        let mut rng = SplitMix64::new(11);
        let mut words = |n: usize| -> Vec<String> {
            (0..n).map(|_| (0..3 + rng.below(5)).map(|_| (b'a' + rng.below(26) as u8) as char).collect()).collect()
        };
        let (train, held) = (words(40), words(8));
        let chats = |ws: &[String]| -> String {
            ws.iter()
                .map(|w| {
                    let messages = serde_json::json!([
                        {"role": "user", "content": format!("upper: {w}")},
                        {"role": "assistant", "content": w.to_uppercase()},
                    ]);
                    format!("{}\n", serde_json::json!({ "messages": messages }))
                })
                .collect()
        };
        let prefs = |ws: &[String]| -> String {
            ws.iter()
                .map(|w| {
                    let pair =
                        serde_json::json!({"prompt": format!("upper: {w}"), "chosen": w.to_uppercase(), "rejected": w});
                    format!("{pair}\n")
                })
                .collect()
        };
        std::fs::write(dir.join("chat.jsonl"), chats(&train)).unwrap();
        std::fs::write(dir.join("held.jsonl"), chats(&held)).unwrap();
        std::fs::write(dir.join("prefs.jsonl"), prefs(&train)).unwrap();
        std::fs::write(dir.join("held_prefs.jsonl"), prefs(&held)).unwrap();
        // RL: the prompts with their answers, and a random reward model on another random trunk.
        let prompts: String = train
            .iter()
            .map(|w| format!("{}\n", serde_json::json!({"prompt": format!("upper: {w}"), "answer": w.to_uppercase()})))
            .collect();
        std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
        <qwen::backend::Backend as burn::tensor::backend::Backend>::seed(&qwen::backend::device(), 5);
        let trunk = qwen::model::QwenModel::<qwen::backend::Backend>::random(config, 0.02, &qwen::backend::device());
        qwen::align::ScoreModel::from_lm(trunk).save(dir.join("rm"), qwen::model::SaveDtype::F32).unwrap();
        dir
    })
}

/// DPO of the tiny model: 20 steps of 8 comparisons (4 epochs of 40), a checkpoint every 2.
fn dpo_command(out: &Path, resume: bool) -> Command {
    let inputs = sft_inputs();
    let mut c = launch("dpo", out, resume);
    c.arg("--policy").arg(inputs).arg("--data").arg(inputs.join("prefs.jsonl"));
    c.arg("--eval-data").arg(inputs.join("held_prefs.jsonl"));
    c.args(["--batch", "8", "--epochs", "4", "--lr", "1e-3", "--max-len", "96", "--seed", "7"]);
    c.args(["--checkpoint-every", &DPO.save_every.to_string()]);
    c
}

/// A reward model on the tiny model's trunk: 10 PMP steps then 10 fine-tuning steps of 8
/// comparisons (2 epochs of 40 each), a checkpoint every 2.
fn reward_command(out: &Path, resume: bool) -> Command {
    let inputs = sft_inputs();
    let mut c = launch("reward", out, resume);
    c.arg("--model").arg(inputs).arg("--data").arg(inputs.join("prefs.jsonl"));
    c.arg("--pmp-data").arg(inputs.join("prefs.jsonl")).arg("--eval-data").arg(inputs.join("held_prefs.jsonl"));
    c.args(["--batch", "8", "--epochs", "2", "--pmp-epochs", "2", "--lr", "1e-3", "--max-len", "96", "--seed", "7"]);
    c.args(["--checkpoint-every", &REWARD.save_every.to_string()]);
    c
}

/// SFT of the tiny model: 20 steps of 2 x 8 conversations (8 epochs of 40), a checkpoint every 2.
fn sft_command(out: &Path, resume: bool) -> Command {
    let inputs = sft_inputs();
    let mut c = launch("sft", out, resume);
    c.arg("--model").arg(inputs).arg("--data").arg(inputs.join("chat.jsonl"));
    c.arg("--eval-data").arg(inputs.join("held.jsonl"));
    c.args(["--system", "Capitals.", "--seq-len", "72", "--batch", "8", "--accum", "2", "--epochs", "8"]);
    c.args(["--lr", "1e-3", "--seed", "7", "--checkpoint-every", &SFT.save_every.to_string()]);
    c
}

/// SFT of the tiny model with `--pack` (rows of 128: 20 rows of two conversations): 20 steps of
/// 2 x 8 rows (16 epochs), a checkpoint every 2.
fn sft_pack_command(out: &Path, resume: bool) -> Command {
    let inputs = sft_inputs();
    let mut c = launch("sft", out, resume);
    c.arg("--model").arg(inputs).arg("--data").arg(inputs.join("chat.jsonl"));
    c.args(["--system", "Capitals.", "--pack", "--seq-len", "128", "--batch", "8", "--accum", "2", "--epochs", "16"]);
    c.args(["--lr", "1e-3", "--seed", "7", "--checkpoint-every", &SFT_PACK.save_every.to_string()]);
    c
}

/// [`sft_command`] with LoRA adapters of rank 8 (dropout 0.1) and `--merge`.
fn sft_lora_command(out: &Path, resume: bool) -> Command {
    let mut c = sft_command(out, resume);
    c.args(LORA_ARGS);
    c
}

/// [`ppo_command`] with LoRA on the policy ([`LORA_ARGS`]).
fn ppo_lora_command(out: &Path, resume: bool) -> Command {
    let mut c = ppo_command(out, resume);
    c.args(LORA_ARGS);
    c
}

/// [`grpo_command`] with LoRA ([`LORA_ARGS`]).
fn grpo_lora_command(out: &Path, resume: bool) -> Command {
    let mut c = grpo_command(out, resume);
    c.args(LORA_ARGS);
    c
}

/// PPO of the tiny model against the random reward model: 20 steps of 4 prompts x 2 responses (the
/// first 4 value-only), responses up to 6 tokens, a checkpoint every 2.
fn ppo_command(out: &Path, resume: bool) -> Command {
    let inputs = sft_inputs();
    let mut c = launch("ppo", out, resume);
    c.arg("--policy").arg(inputs).arg("--reward").arg(inputs.join("rm"));
    c.arg("--prompts").arg(inputs.join("prompts.jsonl"));
    c.args([
        "--batch",
        "4",
        "--epochs",
        "2",
        "--max-new-tokens",
        "6",
        "--value-warmup-steps",
        "4",
        "--ppo-epochs",
        "2",
    ]);
    c.args(["--minibatch-rows", "3", "--policy-lr", "1e-3", "--value-lr", "1e-3", "--seed", "7"]);
    c.args(["--checkpoint-every", &PPO.save_every.to_string()]);
    c
}

/// GRPO of the tiny model with the exact-match verifier: 20 steps of 2 prompts x 4 replies, replies up
/// to 6 tokens, a checkpoint every 2.
fn grpo_command(out: &Path, resume: bool) -> Command {
    let inputs = sft_inputs();
    let mut c = launch("grpo", out, resume);
    c.arg("--policy").arg(inputs).arg("--verifier").arg("exact_match");
    c.arg("--prompts").arg(inputs.join("prompts.jsonl"));
    c.args(["--batch", "2", "--epochs", "1", "--group-size", "4", "--max-new-tokens", "6", "--lr", "1e-3"]);
    c.args(["--seed", "7", "--checkpoint-every", &GRPO.save_every.to_string()]);
    c
}

/// A running `pretrain` with its stderr lines arriving on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    stderr: Vec<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("pretrain starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, stderr: Vec::new() }
    }

    /// Waits until `until` says stop (given each stderr line) or `deadline` passes, then kills
    /// with SIGKILL. Returns `None` when it was killed, else how it exited by itself first.
    fn kill_when(&mut self, deadline: Option<Instant>, mut until: impl FnMut(&str) -> bool) -> Option<ExitStatus> {
        loop {
            let wait = deadline.map_or(Duration::from_millis(50), |d| {
                d.saturating_duration_since(Instant::now()).min(Duration::from_millis(50))
            });
            match self.lines.recv_timeout(wait) {
                Ok(line) => {
                    let stop = until(&line);
                    self.stderr.push(line);
                    if stop {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Some(self.child.wait().unwrap()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.stderr.extend(self.lines.try_iter());
                return Some(status);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        self.child.kill().unwrap(); // SIGKILL
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed by SIGKILL");
        None
    }

    fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        self.stderr.extend(self.lines.iter());
        (status, self.stderr.join("\n"))
    }
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// `metrics.jsonl` without the timings: the loss sequence (and lr, grad norm, tokens, epochs,
/// held-out evaluations) of the run.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let mut recs = qwen::train::read_metrics(out.join("metrics.jsonl")).unwrap();
    for r in &mut recs {
        let map = r.as_object_mut().unwrap();
        map.remove("elapsed_s");
        map.remove("tokens_per_s");
    }
    recs
}

/// Names in `out` of folders that interrupted checkpoint writes left (`checkpoint.tmp-*`, `.old-*`).
fn leftovers(out: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(out) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint."))
        .collect();
    names.sort();
    names
}

fn checkpoint_step(dir: &Path) -> u64 {
    // PPO and GRPO count their steps in a state file of their own.
    for own in ["ppo_state.json", "grpo_state.json"] {
        if let Ok(bytes) = std::fs::read(dir.join(own)) {
            let state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            return state["step"].as_u64().unwrap();
        }
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("trainer_state.json")).unwrap()).unwrap();
    // The pretraining trainer's state, or an alignment stage's (its stepper's).
    state["step"].as_u64().or(state["stepper"]["step"].as_u64()).unwrap()
}

impl Job {
    /// The uninterrupted run (once) and its wall time.
    fn reference(&self) -> &'static (PathBuf, Duration) {
        self.reference.get_or_init(|| {
            let out = tmp(&format!("{}-reference", self.tag));
            let t = Instant::now();
            let (status, stderr) = Running::spawn((self.command)(&out, false)).finish();
            assert!(status.success(), "{} reference run failed:\n{stderr}", self.tag);
            (out, t.elapsed())
        })
    }

    /// The final state of `out` is the reference's, byte for byte, and nothing partial is left.
    fn assert_same_as_reference(&self, out: &Path) {
        let (reference, _) = self.reference();
        let (a, b) = (files(&reference.join("checkpoint")), files(&out.join("checkpoint")));
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, self.checkpoint);
        for ((name, x), (other, y)) in a.iter().zip(&b) {
            assert_eq!(name, other);
            assert!(x == y, "checkpoint/{name} differs from the uninterrupted run's");
        }
        assert_eq!(a.len(), b.len());
        let (m, n) = (metrics(reference), metrics(out));
        assert_eq!(m.iter().filter(|r| r.get(self.step_key).is_some()).count() as u64, self.steps);
        assert_eq!(m, n, "metrics.jsonl (without timings) differs from the uninterrupted run's");
        for f in self.outputs {
            assert!(std::fs::read(reference.join(f)).unwrap() == std::fs::read(out.join(f)).unwrap(), "{f} differs");
        }
        if !self.summary.is_empty() {
            let summary = |dir: &Path| -> serde_json::Value {
                serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap()
            };
            let (s, t) = (summary(reference), summary(out));
            for key in self.summary {
                assert_eq!(s[key], t[key], "run.json {key}");
            }
        }
        assert_eq!(leftovers(out), Vec::<String>::new(), "partial checkpoints left behind");
    }
}

/// Where a planned kill falls.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// This many milliseconds after the start.
    After(u64),
    /// At the `n`-th (from 1) pause at this fault point of a checkpoint write in this process.
    At(&'static str, usize),
}

impl Kill {
    /// This planned kill fitted to a launch that resumes at step `done`, so that it lands before
    /// the run ends (a kill that lets the run finish would leave the rest of the plan nothing to
    /// do): a time is a fraction (per mille) of half of what an uninterrupted run takes for the
    /// remaining steps, which a resumed launch (start-up included) always needs more than; a
    /// fault point is at most the second-to-last checkpoint write left (a kill just after the
    /// final checkpoint is in place would finish the run), or else a time.
    fn fit(job: &Job, planned: Planned, done: u64, reference: Duration) -> Self {
        let left = job.steps - done;
        let after =
            |per_mille: u64| Kill::After(reference.as_millis() as u64 * left * per_mille / (job.steps * 2 * 1000));
        match planned {
            Planned::Time(per_mille) => after(per_mille),
            Planned::Point(point, n) => {
                let writes_left = (left / job.save_every) as usize;
                if writes_left >= 2 {
                    Kill::At(point, n.min(writes_left - 1))
                } else {
                    after(500)
                }
            }
        }
    }
}

/// A kill of the plan before it is fitted to where the run stands.
#[derive(Debug, Clone, Copy)]
enum Planned {
    /// Per mille of the time left ([`Kill::fit`]).
    Time(u64),
    Point(&'static str, usize),
}

#[test]
fn sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&PRETRAIN);
}

#[test]
fn sft_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&SFT);
}

#[test]
fn sft_lora_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&SFT_LORA);
}

#[test]
fn sft_pack_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&SFT_PACK);
}

#[test]
fn dpo_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&DPO);
}

#[test]
fn reward_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&REWARD);
}

#[test]
fn ppo_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&PPO);
}

#[test]
fn grpo_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&GRPO);
}

#[test]
fn ppo_lora_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&PPO_LORA);
}

#[test]
fn grpo_lora_sigkill_anywhere_then_resume_is_bit_identical() {
    kill_and_resume(&GRPO_LORA);
}

/// Kills `job` 14 times (at each fault point of a checkpoint write, at seeded random moments, during
/// start-up, just after a checkpoint went into place), resuming after each kill, and checks that
/// the end state is the uninterrupted run's.
fn kill_and_resume(job: &Job) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_, reference_time) = job.reference();
    let t0 = Instant::now();
    let out = tmp(&format!("{}-killed", job.tag));
    // Every fault point of a checkpoint write (the first and a later checkpoint of a process),
    // interleaved with kills at seeded random times over about one uninterrupted run's length.
    let points =
        ["model-written", "optimizer-written", "files-written", "checksums-written", "old-moved-aside", "new-in-place"];
    let mut rng = SplitMix64::new(0x5eed_c0de);
    let mut plan = Vec::new();
    for (i, p) in points.iter().enumerate() {
        plan.push(Planned::Point(p, 1 + i % 2));
        plan.push(Planned::Time(rng.below(1000)));
    }
    plan.push(Planned::Time(1)); // during start-up
    plan.push(Planned::Point("new-in-place", 3));

    let mut log = Vec::new();
    let (mut kills, mut partial, mut launches) = (0, 0, 0);
    for planned in plan.iter().copied().map(Some).chain(std::iter::once(None)) {
        // Resume when there is a checkpoint (intact or previous), else start over.
        let resume = has_checkpoint(out.join("checkpoint"));
        let resumed_from = if resume {
            let dir = intact_checkpoint(out.join("checkpoint")).expect("a kill never leaves only damaged checkpoints");
            Some(checkpoint_step(&dir.unwrap()))
        } else {
            None
        };
        let kill = planned.map(|p| Kill::fit(job, p, resumed_from.unwrap_or(0), *reference_time));
        let mut cmd = (job.command)(&out, resume);
        cmd.env(FAULT_PAUSE_ENV, PAUSE_MS.to_string());
        let mut run = Running::spawn(cmd);
        launches += 1;
        let start = Instant::now();
        let exited = match kill {
            Some(Kill::After(ms)) => run.kill_when(Some(start + Duration::from_millis(ms)), |_| false),
            Some(Kill::At(point, n)) => {
                let mut seen = 0;
                let marker = format!("fault-point {point}");
                run.kill_when(None, |line| {
                    seen += (line == marker) as usize;
                    seen == n
                })
            }
            None => Some(run.child.wait().unwrap()),
        };
        match exited {
            None => {
                kills += 1;
                let left = leftovers(&out);
                partial += !left.is_empty() as usize;
                log.push(format!("kill {kill:?} (resumed from {resumed_from:?}): left {left:?}"));
            }
            Some(status) => {
                let (_, stderr) = run.finish();
                assert!(status.success(), "run ended by itself but failed ({status:?}):\n{stderr}");
                log.push(format!("{kill:?} (resumed from {resumed_from:?}): the run finished first"));
                if kill.is_some() {
                    // Finished before the planned kill: the rest of the plan has nothing to do.
                    break;
                }
            }
        }
    }
    let elapsed = t0.elapsed();
    job.assert_same_as_reference(&out);
    eprintln!(
        "crash safety of {}: {kills} SIGKILLs ({partial} left a partial checkpoint write behind), {launches} launches, \
         bit-identical; {:.1} s (uninterrupted run {:.1} s)\n{}",
        job.tag,
        elapsed.as_secs_f64(),
        reference_time.as_secs_f64(),
        log.join("\n")
    );
    assert_eq!(kills, plan.len(), "only {kills} of the {} planned kills landed", plan.len());
    assert!(partial >= 4, "only {partial} kills landed inside a checkpoint write");
    std::fs::remove_dir_all(&out).unwrap();
}

/// `cmd` with its files limited to `bytes` (writes past it fail with EFBIG instead of raising
/// SIGXFSZ): a full disk, for the files that grow past it.
fn with_file_size_limit(mut cmd: Command, bytes: u64) -> Command {
    // SAFETY: the closure only calls async-signal-safe libc functions between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn disk_full_is_a_typed_error_and_the_run_resumes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (command, _) = (PRETRAIN.command, PRETRAIN.reference());
    let t0 = Instant::now();
    let out = tmp("full");
    // A first launch killed inside its second checkpoint write: the step-2 checkpoint is in place.
    let mut cmd = command(&out, false);
    cmd.env(FAULT_PAUSE_ENV, "50");
    let mut seen = 0;
    let first = Running::spawn(cmd).kill_when(None, |l| {
        seen += (l == "fault-point model-written") as usize;
        seen == 2
    });
    assert!(first.is_none(), "the first launch should have been killed");
    let ckpt = out.join("checkpoint");
    verify_checksums(&ckpt).unwrap();
    assert_eq!(checkpoint_step(&ckpt), 2);
    let before = files(&ckpt);
    // The killed write's temporary folder stays until the next launch resumes from the intact
    // checkpoint beside it (`persist::resume_dir` removes it).
    assert!(!leftovers(&out).is_empty(), "a kill inside a checkpoint write left nothing behind");

    // Files limited to 1 MiB (the tiny model's safetensors is ~13 MB): the next checkpoint cannot
    // be written.
    let (status, stderr) = Running::spawn(with_file_size_limit(command(&out, true), 1 << 20)).finish();
    assert_eq!(status.code(), Some(1), "a typed error exits with 1, not a signal or a panic:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("Error:") && stderr.contains("File too large"), "{stderr}");
    verify_checksums(&ckpt).unwrap();
    assert!(files(&ckpt) == before, "the previous checkpoint changed");
    assert_eq!(
        leftovers(&out),
        Vec::<String>::new(),
        "resume removes what the killed write left, and the failed write removes its own folder"
    );
    let full_err = stderr.lines().find(|l| l.starts_with("Error:")).unwrap_or_default().to_string();

    // A read-only output folder (only where permissions apply: not as root).
    let mut read_only = "skipped (running as root)".to_string();
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o555)).unwrap();
        let (status, stderr) = Running::spawn(command(&out, true)).finish();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked") && stderr.contains("Error:"), "{stderr}");
        assert!(files(&ckpt) == before, "the previous checkpoint changed");
        read_only = stderr.lines().find(|l| l.starts_with("Error:")).unwrap_or_default().to_string();
    }

    // With room again, the run resumes to the uninterrupted run's result.
    let (status, stderr) = Running::spawn(command(&out, true)).finish();
    assert!(status.success(), "{stderr}");
    PRETRAIN.assert_same_as_reference(&out);
    eprintln!(
        "disk full: {full_err}\nread-only: {read_only}\nresumed to the same bytes; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    std::fs::remove_dir_all(&out).unwrap();
}
