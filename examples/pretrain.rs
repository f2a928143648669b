//! Pretraining end to end: raw documents → quality filter → dedup → held-out split → a BPE
//! vocabulary trained on the corpus → packed token shards → a small Qwen trained with AdamW,
//! warm-up + cosine, clipping → held-out perplexity before and after, checked.
//!
//! ```sh
//! bash tools/setup.sh                                   # fetches the default corpus into corpus/
//! cargo run --release --example pretrain                # ~10 minutes on 2 CPU cores
//! cargo run --release --example pretrain -- --config small --data my_docs/ --steps 5000 --out runs/small
//! cargo run --release --no-default-features --features cuda --example pretrain -- --config small
//! ```
//!
//! The default corpus is the documentation shipped in the docutils (public domain) and Sphinx
//! (BSD 2-clause) source archives — real prose no one here wrote, ~2 MB. `--data` takes folders
//! (every file, JSON Lines read as `{"text": ...}`), text files and `.jsonl` files instead.
//!
//! Writes into `--out`: `data/{train,heldout}.jsonl` (the cleaned documents), `data/*.qwtk`
//! (token shards), `tokenizer.json` + `tokenizer.tiktoken`, `checkpoint/` (HF config.json +
//! safetensors + optimizer and loader state: `--resume` continues it exactly), `metrics.jsonl`,
//! `loss.png`, `run.json` (the summary the `long_context` example reads). Then try
//! `cargo run --release --example generate -- --model OUT/checkpoint --tokenizer OUT/tokenizer.json --prompt "The"`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qwen::backend::{device, optimizer_update, TrainBackend};
use qwen_data::rng::hash_bytes;
use qwen_data::{
    Batcher, Dedup, DedupConfig, DocStream, FilterConfig, FolderSource, JsonlSource, MixSource, Mixer, PackConfig,
    QualityFilter, ShardLoader, ShardReader, ShardWriter, TextFileSource, TextMode, TokenBatch, TokenBatcher,
};
use qwen_model::{GenerateConfig, Mode, Precision, QwenConfig, QwenModel, SamplingConfig};
use qwen_tokenizer::train::{BpeTrainer, TrainerConfig};
use qwen_tokenizer::Tokenizer;
use qwen_train::plot::{save_png, Chart, Series, TextRendering};
use qwen_train::{evaluate, MetricsLog, OptimConfig, Schedule, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Size {
    /// hidden 256, 4 layers, 4 heads, intermediate 688 (~2.3M parameters past the embeddings):
    /// the CPU default.
    Tiny,
    /// hidden 512, 8 layers, 8 heads (4 KV heads), intermediate 1376 (~21M past the embeddings):
    /// for a GPU backend.
    Small,
}

/// Trains a BPE vocabulary and a small Qwen on a text corpus and reports held-out perplexity.
#[derive(Parser, Debug)]
#[command(name = "pretrain")]
struct Args {
    /// Model size.
    #[arg(long, value_enum, default_value = "tiny")]
    config: Size,
    /// Corpus folders or files (repeatable). Default: corpus/docutils and corpus/sphinx, fetched by
    /// tools/setup.sh.
    #[arg(long = "data")]
    data: Vec<PathBuf>,
    /// Optimizer steps (default: 600 for tiny, 2000 for small).
    #[arg(long)]
    steps: Option<u64>,
    /// Output folder.
    #[arg(long, default_value = "runs/pretrain")]
    out: PathBuf,
    /// Training context length S.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Peak learning rate (default: 2e-3 tiny, 1e-3 small).
    #[arg(long)]
    lr: Option<f64>,
    /// Ordinary ids of the trained BPE vocabulary (256 bytes + merges); 3 special tokens come on top.
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Fraction of documents held out for evaluation (chosen by a hash of their text).
    #[arg(long, default_value_t = 0.08)]
    heldout: f64,
    /// Evaluate on the held-out set every N steps.
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Save the checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 200)]
    save_every: u64,
    /// Continue the run in --out from its checkpoint (same data, same loader position).
    #[arg(long)]
    resume: bool,
    /// Fail unless held-out perplexity falls at least this many times.
    #[arg(long, default_value_t = 10.0)]
    min_ppl_drop: f64,
    /// Data-parallel replicas, one per device, gradients all-reduced by burn-collective (build with
    /// `--features collective`, and `cuda` or `wgpu`). Each step then covers `devices` times the
    /// batch. On the CPU backend the replicas share the one device: that only exercises the path.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Mixed precision: bf16 matmuls with f32 master weights (for GPU backends; on the CPU the
    /// casts cost more than bf16 saves).
    #[arg(long)]
    bf16: bool,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Held-out windows evaluated (at most), of S tokens each.
const EVAL_WINDOWS: usize = 96;

/// `run.json`: what the run was and what it measured.
#[derive(Debug, Serialize, Deserialize)]
struct RunSummary {
    size: Size,
    seq_len: usize,
    vocab_size: usize,
    steps: u64,
    train_tokens: u64,
    heldout_tokens: u64,
    params: usize,
    ppl_before: f64,
    ppl_after: f64,
    loss_before: f64,
    loss_after: f64,
    train_seconds: f64,
}

fn model_config(size: Size, vocab: usize) -> Result<QwenConfig> {
    let (hidden, layers, heads, kv, inter) = match size {
        Size::Tiny => (256, 4, 4, 4, 688),
        Size::Small => (512, 8, 8, 4, 1376),
    };
    Ok(QwenConfig::from_json(serde_json::json!({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "float32"
    }))?)
}

fn open_source(path: &Path) -> qwen_data::Result<DocStream> {
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(if path.is_dir() {
        Box::new(FolderSource::open(path, TextMode::WholeFile)?.named(name))
    } else if path.extension().is_some_and(|e| e == "jsonl") {
        Box::new(JsonlSource::open(path)?.named(name))
    } else {
        Box::new(TextFileSource::open(path, TextMode::WholeFile)?.named(name))
    })
}

/// Streams every source through the filters and dedup, writes train/held-out JSONL and feeds the
/// BPE trainer with the training documents; returns the trained tokenizer.
fn prepare_documents(args: &Args, data: &[PathBuf], dir: &Path) -> Result<Tokenizer> {
    let sources = data
        .iter()
        .map(|p| {
            let path = p.clone();
            ensure!(path.exists(), "{} does not exist (run `bash tools/setup.sh` for the default corpus)", p.display());
            Ok(MixSource::new(p.display().to_string(), 1.0, move || open_source(&path)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut mixer = Mixer::new(sources, args.seed)?;
    // Documentation, not web text: long files, code samples and reST markup are fine, but
    // near-empty files, symbol soup and copies are not.
    let mut quality = QualityFilter::new(FilterConfig {
        min_chars: Some(200),
        max_symbol_word_ratio: Some(0.5),
        max_duplicate_line_fraction: Some(0.5),
        max_non_alnum_ratio: Some(0.6),
        ..FilterConfig::default()
    });
    let mut dedup = Dedup::new(&DedupConfig::default());
    let mut bpe = BpeTrainer::new(TrainerConfig {
        vocab_size: args.vocab_size,
        specials: SPECIALS.iter().map(|s| s.to_string()).collect(),
        ..TrainerConfig::default()
    })?;
    let mut train = MetricsLog::create(dir.join("train.jsonl"))?;
    let mut heldout = MetricsLog::create(dir.join("heldout.jsonl"))?;
    let (mut n_train, mut n_heldout, mut bytes_train, mut bytes_heldout) = (0usize, 0usize, 0usize, 0usize);
    let threshold = (args.heldout.clamp(0.0, 1.0) * 1e6) as u64;
    for doc in dedup.filter(quality.filter(mixer.by_ref())) {
        let doc = doc?;
        let record = serde_json::json!({"text": doc.text, "source": &*doc.source});
        if hash_bytes(doc.text.as_bytes(), args.seed) % 1_000_000 < threshold {
            heldout.write(&record)?;
            n_heldout += 1;
            bytes_heldout += doc.text.len();
        } else {
            bpe.feed(&doc.text)?;
            train.write(&record)?;
            n_train += 1;
            bytes_train += doc.text.len();
        }
    }
    let fs = quality.stats();
    eprintln!(
        "documents: {} read ({:?}); quality filter kept {} (removed {:?}); dedup removed {:?}",
        mixer.stats().total,
        mixer.stats().per_source,
        fs.kept,
        fs.removed,
        dedup.stats()
    );
    eprintln!(
        "split: {n_train} training documents ({:.2} MB), {n_heldout} held out ({:.2} MB)",
        bytes_train as f64 / 1e6,
        bytes_heldout as f64 / 1e6
    );
    ensure!(n_train > 0 && n_heldout > 0, "need both training and held-out documents (got {n_train} / {n_heldout})");
    let t = Instant::now();
    let tok = bpe.train()?;
    eprintln!("BPE: {} ids ({} specials) trained in {:.1}s", tok.vocab_size(), SPECIALS.len(), t.elapsed().as_secs_f64());
    Ok(tok)
}

/// Packs a JSONL file of documents into a shard; returns the token count.
fn pack(tok: &Tokenizer, jsonl: &Path, shard: &Path, seq_len: usize, seed: Option<u64>) -> Result<u64> {
    let mut writer = ShardWriter::create(shard, tok.vocab_size())?;
    let config = PackConfig { seed, ..PackConfig::new(seq_len, 0) };
    let stats = qwen_data::pack::pack_to_shard(tok, JsonlSource::open(jsonl)?, &config, &mut writer)?;
    writer.finish()?;
    Ok(stats.tokens)
}

/// Held-out windows of `seq_len` tokens (at most `max`), as batches of `batch`.
fn heldout_batches(shard: &ShardReader, seq_len: usize, batch: usize, max: usize) -> Result<Vec<TokenBatch>> {
    let ids = shard.to_vec();
    let windows: Vec<qwen_data::Sequence> = qwen_data::pack::windows(&ids, seq_len).take(max).collect();
    ensure!(!windows.is_empty(), "the held-out set is shorter than one window of {seq_len} tokens");
    Ok(windows.chunks(batch).map(|c| TokenBatcher.batch(c.to_vec())).collect::<qwen_data::Result<_>>()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    qwen::keep_freed_memory();
    let size = args.config;
    let steps = args.steps.unwrap_or(match size {
        Size::Tiny => 600,
        Size::Small => 2000,
    });
    let lr = args.lr.unwrap_or(match size {
        Size::Tiny => 2e-3,
        Size::Small => 1e-3,
    });
    let data = if args.data.is_empty() {
        vec![PathBuf::from("corpus/docutils"), PathBuf::from("corpus/sphinx")]
    } else {
        args.data.clone()
    };
    let out = &args.out;
    let data_dir = out.join("data");
    let ckpt = out.join("checkpoint");
    let (train_shard, heldout_shard) = (data_dir.join("train.qwtk"), data_dir.join("heldout.qwtk"));
    let tok_path = out.join("tokenizer.json");
    eprintln!("backend: {}; output: {}", qwen::backend::name(), out.display());

    // 1. Data: documents → tokenizer → shards (skipped when resuming: the run's own files are reused).
    let tok = if args.resume {
        ensure!(ckpt.exists(), "--resume: no checkpoint in {}", ckpt.display());
        Tokenizer::from_file(&tok_path).with_context(|| format!("loading {}", tok_path.display()))?
    } else {
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let tok = prepare_documents(&args, &data, &data_dir)?;
        tok.save_tokenizer_json(&tok_path)?;
        tok.save_tiktoken(out.join("tokenizer.tiktoken"))?;
        let t = Instant::now();
        let n_train = pack(&tok, &data_dir.join("train.jsonl"), &train_shard, args.seq_len, Some(args.seed))?;
        let n_held = pack(&tok, &data_dir.join("heldout.jsonl"), &heldout_shard, args.seq_len, None)?;
        eprintln!(
            "packed: {n_train} training tokens, {n_held} held-out tokens ({:.1}s, {} windows of {}+1)",
            t.elapsed().as_secs_f64(),
            (n_train - 1) / args.seq_len as u64,
            args.seq_len
        );
        tok
    };
    let vocab = tok.vocab_size();
    let train_reader = ShardReader::open(&train_shard, vocab, true)?;
    let heldout_reader = ShardReader::open(&heldout_shard, vocab, true)?;
    let train_tokens = train_reader.len() as u64;
    let heldout = heldout_batches(&heldout_reader, args.seq_len, args.batch, EVAL_WINDOWS)?;
    let heldout_tokens: usize = heldout.iter().map(|b| b.targets.len()).sum();

    // 2. Model and trainer (fresh, or resumed with the loader where it stood).
    let dev = device();
    let (mut trainer, mut loader, mut metrics) = if args.resume {
        let (trainer, state) = Trainer::<TrainBackend>::resume(&ckpt, &dev)?;
        let state = state.context("the checkpoint has no data-loader state")?;
        let loader = ShardLoader::from_state(vec![train_reader], args.seq_len, state)?;
        eprintln!("resumed at step {} (epoch {}, window {})", trainer.step(), state.epoch, state.position);
        (trainer, loader, MetricsLog::append(out.join("metrics.jsonl"))?)
    } else {
        let config = model_config(size, vocab)?;
        <TrainBackend as burn::tensor::backend::Backend>::seed(&dev, args.seed);
        let model = QwenModel::<TrainBackend>::random(config, 0.02, &dev);
        let warmup = (steps / 20).max(1);
        let precision = if args.bf16 { Precision::Bf16 } else { Precision::Full };
        let train = TrainConfig { precision, ..TrainConfig::new(Schedule::new(lr, warmup, steps), args.seed) };
        let train = TrainConfig { optim: OptimConfig { update: optimizer_update(), ..train.optim }, ..train };
        let loader = ShardLoader::new(vec![train_reader], args.seq_len, args.seed)?;
        (Trainer::new(model, train)?, loader, MetricsLog::create(out.join("metrics.jsonl"))?)
    };
    let replicas = Replicas::start(&trainer, args.devices, args.resume.then_some(ckpt.as_path()))?;
    let steps = trainer.config().schedule.total_steps;
    let params = burn::module::Module::num_params(&trainer.model().model);
    eprintln!(
        "model: {:?}, {} parameters ({} in embeddings and head); S = {}, {} sequences x {} micro-batches x {} \
         replicas per step, {steps} steps, peak lr {:.1e}",
        size,
        params,
        2 * vocab * trainer.model().config.hidden_size,
        args.seq_len,
        args.batch,
        args.accum,
        args.devices,
        trainer.config().schedule.peak_lr
    );

    let now = evaluate(&trainer.valid_model(), &heldout, Mode::Training)?;
    eprintln!(
        "held-out at step {}: loss {:.4}, perplexity {:.2} ({} tokens)",
        trainer.step(),
        now.loss,
        now.perplexity,
        heldout_tokens
    );
    // "Before" is the untrained model's: measured now on a fresh run, read back from the step-0
    // record of the metrics log when resuming.
    let step0 = if args.resume {
        qwen_train::read_metrics(out.join("metrics.jsonl"))?.into_iter().find(|r| r["step"] == 0)
    } else {
        None
    };
    let before = match step0.and_then(|r| Some((r.get("heldout_loss")?.as_f64()?, r.get("heldout_ppl")?.as_f64()?))) {
        Some((loss, perplexity)) => qwen_train::EvalStats { loss, perplexity, tokens: heldout_tokens },
        None => now,
    };
    if trainer.step() == 0 {
        metrics.write(&serde_json::json!({"step": 0, "heldout_loss": now.loss, "heldout_ppl": now.perplexity}))?;
    }

    // 3. Train.
    let pb = ProgressBar::new(steps).with_position(trainer.step());
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")?);
    pb.enable_steady_tick(Duration::from_millis(500));
    let start = Instant::now();
    let mut last_log = Instant::now();
    let mut seen = 0usize;
    while trainer.step() < steps {
        let t = Instant::now();
        let mut batches = Vec::new();
        for _ in 0..args.devices {
            batches.push(
                (0..args.accum)
                    .map(|_| TokenBatcher.batch(loader.next_batch(args.batch)))
                    .collect::<qwen_data::Result<Vec<_>>>()?,
            );
        }
        let stats = replicas.step(&mut trainer, batches).with_context(|| format!("step {}", trainer.step() + 1))?;
        seen += stats.tokens;
        let tps = stats.tokens as f64 / t.elapsed().as_secs_f64();
        metrics.write(&serde_json::json!({
            "step": stats.step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
            "tokens": stats.tokens, "tokens_per_s": tps, "elapsed_s": start.elapsed().as_secs_f64(),
            "epoch": loader.state().epoch,
        }))?;
        let msg = format!("loss {:.3} lr {:.2e} gnorm {:.2} {:.0} tok/s", stats.loss, stats.lr, stats.grad_norm, tps);
        pb.set_position(stats.step);
        pb.set_message(msg.clone());
        let last = stats.step == steps;
        if stats.step % args.eval_every == 0 || last {
            let e = evaluate(&trainer.valid_model(), &heldout, Mode::Training)?;
            metrics.write(&serde_json::json!({"step": stats.step, "heldout_loss": e.loss, "heldout_ppl": e.perplexity}))?;
            pb.suspend(|| eprintln!("step {:>5}: {msg}; held-out loss {:.4} ppl {:.2}", stats.step, e.loss, e.perplexity));
            last_log = Instant::now();
        } else if pb.is_hidden() && last_log.elapsed() > Duration::from_secs(30) {
            eprintln!("step {:>5}: {msg}", stats.step);
            last_log = Instant::now();
        }
        if stats.step % args.save_every == 0 || last {
            trainer.save_checkpoint(&ckpt, Some(loader.state()))?;
        }
    }
    pb.finish_and_clear();
    replicas.finish(&trainer)?;
    let train_seconds = start.elapsed().as_secs_f64();

    // 4. Measure, plot, check.
    let model = trainer.valid_model();
    let after = evaluate(&model, &heldout, Mode::Training)?;
    let records = qwen_train::read_metrics(out.join("metrics.jsonl"))?;
    let series = |key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r.get(key)?.as_f64()?)))
            .collect()
    };
    let chart = Chart {
        title: format!("pretraining {size:?} (S = {}, vocab {vocab})", args.seq_len),
        x_label: "step".into(),
        y_label: "loss (nats/token)".into(),
        log_x: false,
        log_y: false,
        series: vec![
            Series { name: "train".into(), points: series("loss") },
            Series { name: "held-out".into(), points: series("heldout_loss") },
        ],
    };
    if save_png(&chart, out.join("loss.png"), 900, 540)? == TextRendering::NoFont {
        eprintln!("note: no TrueType font found, loss.png has no text (set QWEN_PLOT_FONT=/path/to/font.ttf)");
    }
    let summary = RunSummary {
        size,
        seq_len: args.seq_len,
        vocab_size: vocab,
        steps,
        train_tokens,
        heldout_tokens: heldout_tokens as u64,
        params,
        ppl_before: before.perplexity,
        ppl_after: after.perplexity,
        loss_before: before.loss,
        loss_after: after.loss,
        train_seconds,
    };
    std::fs::write(out.join("run.json"), serde_json::to_vec_pretty(&summary)?)?;

    // A sample from the trained model: the start of a held-out window, continued greedily.
    let prompt: Vec<u32> = heldout[0].input_row(0)[..24].to_vec();
    let gen = GenerateConfig {
        max_new_tokens: 48,
        stop_ids: vec![tok.special_id("<|endoftext|>")?],
        sampling: SamplingConfig { temperature: 0.0, ..SamplingConfig::default() },
    };
    let sample = model.generate(&prompt, &gen, |_| true)?;
    println!("\nprompt (held-out): {:?}", tok.decode_lossy(&prompt)?);
    println!("greedy continuation: {:?}", tok.decode_lossy(&sample)?);
    println!(
        "\n{seen} tokens trained this session in {train_seconds:.0}s ({:.0} tokens/s), {:.2} epochs of {train_tokens} tokens",
        seen as f64 / train_seconds,
        (steps * (args.devices * args.batch * args.accum * args.seq_len) as u64) as f64 / train_tokens as f64
    );
    println!("held-out perplexity: {:.2} before, {:.2} after ({:.1}x lower)", before.perplexity, after.perplexity, before.perplexity / after.perplexity);
    println!("written: {}/{{checkpoint,tokenizer.json,metrics.jsonl,loss.png,run.json}}", out.display());
    println!(
        "try: cargo run --release --example generate -- --model {} --tokenizer {} --prompt \"The\"",
        ckpt.display(),
        tok_path.display()
    );
    if before.perplexity < args.min_ppl_drop * after.perplexity {
        bail!("held-out perplexity fell only {:.2}x (required: {}x)", before.perplexity / after.perplexity, args.min_ppl_drop);
    }
    Ok(())
}

/// The other data-parallel replicas (devices 1..N), each a trainer on its own thread fed its
/// micro-batches through a channel; this thread's trainer is replica 0. With one device, a plain
/// `train_step`.
struct Replicas {
    #[cfg(feature = "collective")]
    workers: Vec<Worker>,
}

/// A replica's input channel and thread.
#[cfg(feature = "collective")]
type Worker = (std::sync::mpsc::Sender<Vec<TokenBatch>>, std::thread::JoinHandle<Result<()>>);

impl Replicas {
    #[cfg(not(feature = "collective"))]
    fn start(_: &Trainer<TrainBackend>, devices: usize, _: Option<&Path>) -> Result<Self> {
        ensure!(devices == 1, "--devices {devices} needs a build with --features collective");
        Ok(Self {})
    }

    #[cfg(not(feature = "collective"))]
    fn step(&self, trainer: &mut Trainer<TrainBackend>, mut batches: Vec<Vec<TokenBatch>>) -> Result<qwen_train::StepStats> {
        Ok(trainer.train_step(&batches.remove(0))?)
    }

    #[cfg(not(feature = "collective"))]
    fn finish(self, _: &Trainer<TrainBackend>) -> Result<()> {
        Ok(())
    }

    #[cfg(feature = "collective")]
    fn start(trainer: &Trainer<TrainBackend>, devices: usize, resume: Option<&Path>) -> Result<Self> {
        use burn::collective::PeerId;
        use burn::module::Module;
        ensure!(devices >= 1, "--devices must be at least 1");
        let mut workers = Vec::new();
        for i in 1..devices {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<TokenBatch>>();
            let device = qwen::backend::device_at(i);
            // Same weights and parameter ids on every device: a fresh clone, or the checkpoint.
            let model = trainer.model().clone();
            let config = *trainer.config();
            let resume = resume.map(Path::to_path_buf);
            let handle = std::thread::spawn(move || -> Result<()> {
                let mut t = match resume {
                    Some(dir) => Trainer::<TrainBackend>::resume(&dir, &device)?.0,
                    None => {
                        let model = QwenModel { model: model.model.fork(&device), ..model };
                        Trainer::new(model, config)?
                    }
                };
                let id = PeerId::from(i as u32);
                t.join_collective(id, devices)?;
                while let Ok(batches) = rx.recv() {
                    t.train_step_collective(&batches, id)?;
                }
                t.leave_collective(id)?;
                Ok(())
            });
            workers.push((tx, handle));
        }
        if devices > 1 {
            trainer.join_collective(PeerId::from(0), devices)?;
        }
        Ok(Self { workers })
    }

    #[cfg(feature = "collective")]
    fn step(&self, trainer: &mut Trainer<TrainBackend>, mut batches: Vec<Vec<TokenBatch>>) -> Result<qwen_train::StepStats> {
        if self.workers.is_empty() {
            return Ok(trainer.train_step(&batches.remove(0))?);
        }
        let mine = batches.remove(0);
        for ((tx, _), b) in self.workers.iter().zip(batches) {
            tx.send(b).map_err(|_| anyhow::anyhow!("a replica stopped"))?;
        }
        Ok(trainer.train_step_collective(&mine, burn::collective::PeerId::from(0))?)
    }

    #[cfg(feature = "collective")]
    fn finish(self, trainer: &Trainer<TrainBackend>) -> Result<()> {
        if self.workers.is_empty() {
            return Ok(());
        }
        // Close every channel first: the replicas then leave the collective with this one.
        let (senders, handles): (Vec<_>, Vec<_>) = self.workers.into_iter().unzip();
        drop(senders);
        let mut result = trainer.leave_collective(burn::collective::PeerId::from(0)).map_err(anyhow::Error::from);
        for handle in handles {
            let r = handle.join().map_err(|_| anyhow::anyhow!("a replica panicked")).and_then(|r| r);
            result = result.and(r);
        }
        result
    }
}
