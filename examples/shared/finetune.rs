//! What the fine-tuning commands (`sft`, `reward`, `dpo`) share: the checkpoint folder's tokenizer, refusing
//! to overwrite a run, the progress bar, the fine-tuned model written as an HF folder with the
//! source's tokenizer and generation files, and a metric's curve as a PNG.
//!
//! Included by path (`#[path = "shared/finetune.rs"] mod finetune;`): a file under a folder of
//! `examples/` without `main.rs` is not an example of its own. Each command uses a part of it.
#![allow(dead_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qwen::chat::find_tokenizer;
use qwen_align::{Pair, PairBatch};
use qwen_data::PreferenceJsonl;
use qwen_model::{QwenModel, SaveDtype};
use qwen_tokenizer::{Normalization, Tokenizer};
use qwen_train::plot::{save_png, Chart, Series};
use serde::Serialize;

/// The options every fine-tuning command takes.
#[derive(clap::Args, Debug, Serialize)]
pub struct Common {
    /// `tokenizer.json` or `.tiktoken` file (default: the one in the checkpoint folder).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Training data, JSON Lines.
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out data (JSON Lines, as --data): measured before and after.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over --data.
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
}

/// Steps of `epochs` passes over `items` taken `per_step` at a time (at least one).
pub fn epoch_steps(epochs: f64, items: usize, per_step: usize) -> Result<u64> {
    ensure!(per_step > 0, "the batch must be > 0");
    ensure!(epochs > 0.0 && epochs.is_finite(), "epochs must be > 0 (got {epochs})");
    Ok(((epochs * items as f64) / per_step as f64).ceil().max(1.0) as u64)
}

/// Files of the source folder that travel with the fine-tuned weights.
const COMPANIONS: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja", "qwen.tiktoken"];

/// The tokenizer named by `given`, else the one in the checkpoint folder `model` (NFC, as Qwen's).
pub fn tokenizer(model: &Path, given: Option<&Path>) -> Result<(PathBuf, Tokenizer)> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => find_tokenizer(model)?,
    };
    let tok = Tokenizer::from_file(&path)
        .with_context(|| format!("loading {}", path.display()))?
        .with_normalization(Normalization::Nfc);
    Ok((path, tok))
}

/// Fails when `out` already holds a run's checkpoint and the user did not ask to resume it.
pub fn refuse_to_overwrite(out: &Path, resume: bool) -> Result<()> {
    if qwen_train::persist::has_checkpoint(out.join(qwen_align::run::CHECKPOINT_DIR)) && !resume {
        bail!("{} holds a run; pass --resume to continue it, or give another --out", out.display());
    }
    Ok(())
}

/// A bar of `steps` at `done`, drawn only on a terminal.
pub fn progress(label: &str, steps: u64, done: u64) -> Result<ProgressBar> {
    let pb = ProgressBar::new(steps);
    pb.set_style(ProgressStyle::with_template(&format!(
        "{label} {{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed}}<{{eta}}]"
    ))?);
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_position(done);
    Ok(pb)
}

/// `model` as an HF checkpoint in `out` (`config.json`, `model.safetensors`), with the source
/// folder's tokenizer and generation files and the tokenizer file that was used copied beside it:
/// `generate`, `chat` and `serve` open `out` as it is.
pub fn write_model<B: Backend>(model: &QwenModel<B>, source: &Path, tokenizer: &Path, out: &Path) -> Result<()> {
    model.save(out, SaveDtype::F32)?;
    copy_companions(source, tokenizer, out)
}

/// The source folder's tokenizer and generation files, and the tokenizer file that was used, into
/// `out` (next to weights written there).
pub fn copy_companions(source: &Path, tokenizer: &Path, out: &Path) -> Result<()> {
    for name in COMPANIONS {
        let from = source.join(name);
        if from.is_file() {
            std::fs::copy(&from, out.join(name)).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    let name = tokenizer.file_name().context("the tokenizer path has no file name")?;
    if !out.join(name).is_file() {
        std::fs::copy(tokenizer, out.join(name)).with_context(|| format!("copying {}", tokenizer.display()))?;
    }
    Ok(())
}

/// The comparisons of `path` (`{"prompt", "chosen", "rejected"}` lines), tokenized as Qwen chats,
/// each checked against `max_len` (prompt and its longer response).
pub fn comparisons(path: &Path, tok: &Tokenizer, max_len: usize) -> Result<Vec<Pair>> {
    let mut out = Vec::new();
    for (i, record) in PreferenceJsonl::open(path)?.enumerate() {
        let record = record?;
        let pair =
            Pair::from_record(tok, &record).with_context(|| format!("{}: comparison {}", path.display(), i + 1))?;
        let len = pair.prompt.len() + pair.chosen.len().max(pair.rejected.len());
        ensure!(
            len <= max_len,
            "{}: comparison {} is {len} tokens (prompt and its longer response), longer than --max-len {max_len}",
            path.display(),
            i + 1
        );
        out.push(pair);
    }
    ensure!(!out.is_empty(), "{} holds no comparison", path.display());
    Ok(out)
}

/// `pairs` in batches of `batch` (the last one shorter).
pub fn pair_batches(pairs: &[Pair], batch: usize, pad_id: u32, max_len: usize) -> Result<Vec<PairBatch>> {
    Ok(pairs.chunks(batch).map(|c| PairBatch::new(c, pad_id, max_len)).collect::<qwen_align::Result<_>>()?)
}

/// `(step, value)` of each metrics record that has `key`.
pub fn series(metrics: &Path, key: &str) -> Result<Vec<(f64, f64)>> {
    Ok(std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
        .collect())
}

/// One line chart of `points` over steps, saved as `png`.
pub fn plot(title: &str, y_label: &str, series: Vec<(&str, Vec<(f64, f64)>)>, png: &Path) -> Result<()> {
    let chart = Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: y_label.into(),
        log_x: false,
        log_y: false,
        series: series.into_iter().map(|(name, points)| Series { name: name.into(), points }).collect(),
    };
    save_png(&chart, png, 900, 500)?;
    Ok(())
}

/// LoRA options (`sft`, `dpo`): with `--lora-rank`, adapters on the chosen projections are trained
/// and the base stays frozen.
#[derive(clap::Args, Debug, Serialize)]
pub struct LoraArgs {
    /// Train LoRA adapters of this rank instead of every weight (the base stays frozen).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha: the adapters' output is scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Dropout on the adapters' input while training.
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// Projections that get adapters (PEFT's target_modules; Qwen-1 checkpoints also take
    /// c_attn, c_proj, w1, w2, and the Qwen2 names map onto those).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    pub lora_targets: Vec<String>,
    /// With --lora-rank: also write the merged model (base + adapters) into OUT/merged/.
    #[arg(long)]
    pub merge: bool,
}

impl LoraArgs {
    /// The adapters' config, `None` without `--lora-rank`.
    pub fn config(&self) -> Result<Option<qwen_model::LoraConfig>> {
        let Some(r) = self.lora_rank else {
            ensure!(!self.merge, "--merge needs --lora-rank");
            return Ok(None);
        };
        let config = qwen_model::LoraConfig {
            r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.lora_targets.clone(),
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// `model` with fresh adapters (seeded by `seed`) and its base frozen, when LoRA is asked for.
    pub fn apply<B: burn::tensor::backend::AutodiffBackend>(
        &self,
        model: QwenModel<B>,
        seed: u64,
    ) -> Result<QwenModel<B>> {
        let Some(config) = self.config()? else { return Ok(model) };
        let model = model.with_lora(&config, seed)?.freeze_base();
        let (lora, total) = (model.lora_param_count(), burn::module::Module::num_params(&model));
        eprintln!(
            "lora: rank {}, alpha {}, dropout {}, on {}: {lora} trainable parameters of {total} ({:.3}%)",
            config.r,
            config.alpha,
            config.dropout,
            config.target_modules.join(","),
            100.0 * lora as f64 / total as f64
        );
        Ok(model)
    }

    /// The outputs of a LoRA run: the adapters in `out/adapter/` (PEFT's layout, naming `source`
    /// as the base) and, with `--merge`, the merged model in `out/merged/` as [`write_model`] writes
    /// it.
    pub fn write_outputs<B: Backend>(
        &self,
        tuned: &QwenModel<B>,
        source: &Path,
        tokenizer: &Path,
        out: &Path,
    ) -> Result<()> {
        let adapter = out.join("adapter");
        tuned.save_adapter(&adapter, &source.to_string_lossy())?;
        copy_companions(source, tokenizer, &adapter)?;
        if self.merge {
            write_model(&tuned.clone().merged(), source, tokenizer, &out.join("merged"))?;
        }
        Ok(())
    }
}
