//! What the RL commands (`ppo`, `grpo`) share: their common options, the prompts file
//! (`{"prompt": string or messages, "answer"?: string}` lines) rendered as Qwen chat prompts, and the
//! rollout sampling settings.
//!
//! Included by path (`#[path = "shared/rl.rs"] mod rl;`), next to `shared/finetune.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use qwen_data::PromptJsonl;
use qwen_model::SamplingConfig;
use qwen_tokenizer::Tokenizer;
use serde::Serialize;

/// The options both RL commands take.
#[derive(clap::Args, Debug, Serialize)]
pub struct RlCommon {
    /// HF checkpoint folder of the starting policy (usually an SFT model); also the frozen reference.
    #[arg(long)]
    pub policy: PathBuf,
    /// `tokenizer.json` or `.tiktoken` file (default: the one in the policy folder).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Prompts, JSON Lines: {"prompt": string or messages, "answer": string (for verifiers)}.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over --prompts.
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Prompts per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Longest response sampled, in tokens.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Longest prompt, in tokens (a longer one is an error naming its line).
    #[arg(long, default_value_t = 1024)]
    pub max_prompt_len: usize,
    /// System prompt of prompts that have none (default: Qwen's "You are a helpful assistant.").
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature of the rollouts.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 20)]
    pub checkpoint_every: u64,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
}

impl RlCommon {
    /// The rollouts' sampling (top-p given by the command).
    pub fn sampling(&self, top_p: f32) -> SamplingConfig {
        SamplingConfig { temperature: self.temperature, top_p, top_k: 0, seed: self.seed, ..SamplingConfig::default() }
    }
}

/// One prompt: its ids (rendered through `make_context`, an assistant turn open) and its answer.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub answer: Option<String>,
}

/// The prompts of `path`, each checked against `max_len`; a malformed line, or a prompt too long,
/// is an error naming its line.
pub fn prompts(path: &Path, tok: &Tokenizer, system: Option<&str>, max_len: usize) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    for (i, record) in PromptJsonl::open(path)?.enumerate() {
        let record = record?;
        let ids = qwen_align::prompt_ids(tok, record.system.as_deref().or(system), &record.prompt)
            .with_context(|| format!("{}: prompt {}", path.display(), i + 1))?;
        ensure!(
            ids.len() <= max_len,
            "{}: prompt {} is {} tokens, longer than --max-prompt-len {max_len}",
            path.display(),
            i + 1,
            ids.len()
        );
        out.push(Prompt { ids, answer: record.answer });
    }
    ensure!(!out.is_empty(), "{} holds no prompt", path.display());
    Ok(out)
}

/// The mean of the first and of the last quarter of `points` (`(step, value)`), and the quarter's
/// length: how a noisy per-step curve moved over a run.
pub fn first_and_last_quarter(points: &[(f64, f64)]) -> (usize, f64, f64) {
    let k = (points.len() / 4).max(1).min(points.len().max(1));
    let mean = |p: &[(f64, f64)]| p.iter().map(|x| x.1).sum::<f64>() / p.len().max(1) as f64;
    (k, mean(&points[..k.min(points.len())]), mean(&points[points.len().saturating_sub(k)..]))
}
