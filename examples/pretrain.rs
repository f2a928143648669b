//! Pretraining end to end: raw documents → quality filter → dedup → held-out split → a BPE
//! vocabulary trained on the corpus → packed token shards → a small Qwen trained with AdamW,
//! warm-up + cosine, clipping → held-out perplexity before and after, checked.
//!
//! ```sh
//! bash tools/setup.sh                                   # fetches the default corpus into corpus/
//! cargo run --release --example pretrain                # ~10 minutes on 2 CPU cores
//! cargo run --release --example pretrain -- --config small --data my_docs/ --steps 5000 --out runs/small
//! cargo run --release --no-default-features --features cuda --example pretrain -- --config small
//! # two machines (build with --features collective), the orchestrator on the first:
//! cargo run --release --features collective --example pretrain -- --nodes 2 --node-rank 0 --coordinator 10.0.0.1:29500
//! cargo run --release --features collective --example pretrain -- --nodes 2 --node-rank 1 --coordinator 10.0.0.1:29500
//! ```
//!
//! The default corpus is the documentation shipped in the docutils (public domain) and Sphinx
//! (BSD 2-clause) source archives — real prose no one here wrote, ~2 MB. `--data` takes folders
//! (every file, JSON Lines read as `{"text": ...}`), text files and `.jsonl` files instead.
//!
//! Writes into `--out`: `data/{train,heldout}.jsonl` (the cleaned documents), `data/*.qwtk`
//! (token shards), `data/corpus.json` (the corpus config and report), `tokenizer.json` +
//! `tokenizer.tiktoken`, `checkpoint/` (HF config.json + safetensors + optimizer and loader state:
//! `--resume` continues it exactly), `metrics.jsonl`, `loss.png`, `run.json` (the summary, with the
//! run's config; the `long_context` example reads it). Then try
//! `cargo run --release --example generate -- --model OUT/checkpoint --tokenizer OUT/tokenizer.json --prompt "The"`.
//!
//! The pipeline itself is the library's: `qwen_data::corpus::prepare` and `qwen_train::run`; this
//! binary maps its flags onto their configs and checks the result.

use std::path::PathBuf;

use anyhow::{bail, ensure, Result};
use clap::Parser;
use qwen::backend::{device_at, optimizer_update, TrainBackend};
use qwen_data::corpus::{CorpusConfig, CorpusFiles, SourceSpec};
use qwen_data::ShardReader;
use qwen_model::{GenerateConfig, Precision, SamplingConfig};
use qwen_train::progress::Progress;
use qwen_train::run::{pretrain, ModelPreset, PretrainConfig, RunConfig, RunFiles};

/// `tiny` or `small`, as `qwen_train::run::ModelPreset` names them.
fn preset(name: &str) -> Result<ModelPreset, String> {
    serde_json::from_value(serde_json::Value::String(name.into())).map_err(|_| format!("{name:?} is not tiny or small"))
}

/// Trains a BPE vocabulary and a small Qwen on a text corpus and reports held-out perplexity.
#[derive(Parser, Debug)]
#[command(name = "pretrain")]
struct Args {
    /// Model size: tiny (hidden 256, 4 layers, 4 heads, intermediate 688; ~2.3M parameters past the
    /// embeddings: the CPU default) or small (hidden 512, 8 layers, 8 heads, 4 KV heads,
    /// intermediate 1376; ~21M past the embeddings: for a GPU backend).
    #[arg(long, default_value = "tiny", value_parser = preset)]
    config: ModelPreset,
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
    /// Nodes (processes, one per machine) of a multi-node run through burn-collective's global
    /// orchestrator (build with `--features collective`; see docs/training.md). Each step then
    /// covers `nodes` x `devices` times the batch.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// This node's rank, 0..nodes; rank 0 starts the global orchestrators.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// HOST:PORT of the global orchestrators (rank 0's machine), the same on every node; they use
    /// PORT, PORT + 1 and PORT + 2.
    #[arg(long)]
    coordinator: Option<String>,
    /// This node's address as the other nodes reach it (default: the one that routes to the
    /// coordinator).
    #[arg(long)]
    node_host: Option<String>,
    /// First of the two ports of this node's tensor data service, DATA_PORT and DATA_PORT + 1
    /// (default: the coordinator's port + 3 + 2 x rank).
    #[arg(long)]
    data_port: Option<u16>,
    /// Seconds any collective operation (joining included) may wait before the node stops with
    /// an error.
    #[arg(long, default_value_t = 300.0)]
    collective_timeout: f64,
}

fn config(args: &Args) -> PretrainConfig {
    let data = if args.data.is_empty() {
        vec![PathBuf::from("corpus/docutils"), PathBuf::from("corpus/sphinx")]
    } else {
        args.data.clone()
    };
    let corpus = CorpusConfig {
        heldout_fraction: args.heldout,
        vocab_size: args.vocab_size,
        seed: args.seed,
        ..CorpusConfig::new(data.into_iter().map(SourceSpec::new).collect())
    };
    let defaults = RunConfig::new(args.config);
    let run = RunConfig {
        steps: args.steps.unwrap_or(defaults.steps),
        lr: args.lr.unwrap_or(defaults.lr),
        seq_len: args.seq_len,
        batch: args.batch,
        accum: args.accum,
        eval_every: args.eval_every,
        save_every: args.save_every,
        seed: args.seed,
        precision: if args.bf16 { Precision::Bf16 } else { Precision::Full },
        update: optimizer_update(),
        devices: args.devices,
        ..defaults
    };
    PretrainConfig { corpus, run }
}

/// This process as node `--node-rank` of `--nodes`.
#[cfg(feature = "collective")]
fn on_node(
    args: &Args,
    config: &PretrainConfig,
    devices: &[burn::tensor::Device<qwen::backend::Backend>],
) -> Result<qwen_train::run::Pretrained<TrainBackend>> {
    use qwen_train::multinode::NodeConfig;
    let Some(coordinator) = &args.coordinator else { bail!("--nodes {} needs --coordinator HOST:PORT", args.nodes) };
    ensure!(
        args.collective_timeout.is_finite() && args.collective_timeout > 0.0,
        "--collective-timeout must be a positive number of seconds"
    );
    let mut node = NodeConfig::new(args.nodes, args.node_rank, coordinator, args.devices)?;
    node.host = args.node_host.clone().unwrap_or(node.host);
    node.data_port = args.data_port.unwrap_or(node.data_port);
    node.timeout = std::time::Duration::from_secs_f64(args.collective_timeout);
    node.validate()?;
    eprintln!(
        "node {} of {}: data service {}:{}-{}, orchestrators {}:{}-{}",
        node.rank,
        node.nodes,
        node.host,
        node.data_port,
        node.data_port_of(1),
        node.coordinator_host,
        node.coordinator_port,
        node.orchestrator_port(2)
    );
    Ok(qwen_train::run::pretrain_on_node::<TrainBackend>(
        config,
        &args.out,
        args.resume,
        devices,
        &node,
        &mut Progress::new(),
    )?)
}

#[cfg(not(feature = "collective"))]
fn on_node(
    args: &Args,
    _: &PretrainConfig,
    _: &[burn::tensor::Device<qwen::backend::Backend>],
) -> Result<qwen_train::run::Pretrained<TrainBackend>> {
    let _ = (args.node_rank, &args.node_host, args.data_port, args.collective_timeout);
    bail!("--nodes and --coordinator need a build with --features collective")
}

fn main() -> Result<()> {
    let args = Args::parse();
    qwen::keep_freed_memory();
    let config = config(&args);
    let out = &args.out;
    eprintln!("backend: {}; output: {}", qwen::backend::name(), out.display());
    if args.resume {
        let ckpt = RunFiles::in_dir(out).checkpoint;
        ensure!(qwen_train::persist::has_checkpoint(&ckpt), "--resume: no checkpoint in {}", ckpt.display());
    } else {
        for s in &config.corpus.sources {
            let p = &s.path;
            ensure!(p.exists(), "{} does not exist (run `bash tools/setup.sh` for the default corpus)", p.display());
        }
    }
    let devices: Vec<_> = (0..args.devices).map(device_at).collect();
    let done = if args.nodes > 1 || args.coordinator.is_some() {
        on_node(&args, &config, &devices)?
    } else {
        pretrain::<TrainBackend>(&config, out, args.resume, &devices, &mut Progress::new())?
    };
    let (tok, run) = (&done.tokenizer, &done.run);
    let s = &run.summary;
    if run.plot_has_text == Some(false) {
        eprintln!("note: no TrueType font found, loss.png has no text (set QWEN_PLOT_FONT=/path/to/font.ttf)");
    }

    // A sample from the trained model: the start of a held-out window, continued greedily.
    let heldout = ShardReader::open(CorpusFiles::in_dir(out).heldout_shard, tok.vocab_size(), false)?;
    let prompt: Vec<u32> = heldout.to_vec()[..24.min(s.seq_len)].to_vec();
    let gen = GenerateConfig {
        max_new_tokens: 48,
        stop_ids: vec![tok.special_id("<|endoftext|>")?],
        sampling: SamplingConfig { temperature: 0.0, ..SamplingConfig::default() },
    };
    let sample = run.model.generate(&prompt, &gen, |_| true)?;
    println!("\nprompt (held-out): {:?}", tok.decode_lossy(&prompt)?);
    println!("greedy continuation: {:?}", tok.decode_lossy(&sample)?);
    println!(
        "\n{} tokens trained this session in {:.0}s ({:.0} tokens/s), {:.2} epochs of {} tokens",
        s.tokens_this_session,
        s.train_seconds,
        s.tokens_this_session as f64 / s.train_seconds,
        s.epochs,
        s.train_tokens
    );
    println!("held-out perplexity: {:.2} before, {:.2} after ({:.1}x lower)", s.ppl_before, s.ppl_after, s.ppl_drop());
    println!("written: {}/{{checkpoint,tokenizer.json,metrics.jsonl,loss.png,run.json}}", out.display());
    println!(
        "try: cargo run --release --example generate -- --model {} --tokenizer {} --prompt \"The\"",
        RunFiles::in_dir(out).checkpoint.display(),
        CorpusFiles::in_dir(out).tokenizer_json.display()
    );
    if s.ppl_before < args.min_ppl_drop * s.ppl_after {
        bail!("held-out perplexity fell only {:.2}x (required: {}x)", s.ppl_drop(), args.min_ppl_drop);
    }
    Ok(())
}
