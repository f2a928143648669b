//! The report's Table 3 in shape, on a model trained here: held-out perplexity at S/2, S, 2S, 4S
//! and 8S (S = the training context length) for plain RoPE, then cumulatively + dynamic NTK,
//! + LogN, + layer-wise window attention — training-free, the same weights throughout.
//!
//! ```sh
//! cargo run --release --example pretrain          # trains at S = 128 into runs/pretrain
//! cargo run --release --example long_context      # reads runs/pretrain, prints the table
//! ```
//!
//! Reads `RUN/run.json` (S), `RUN/checkpoint/` (the model) and `RUN/data/heldout.qwtk` (held-out
//! tokens, never trained on); writes `RUN/long_context.json` and `RUN/long_context.png`. Each
//! perplexity is over every position of non-overlapping held-out windows of the given length,
//! without a cache, as the reference models compute it at inference.
//!
//! The checks at the end: without extensions perplexity must grow past S, with all three it must
//! stay near its value at S and below the baseline at every length past S.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use qwen::backend::{device, Backend};
use qwen_context::{LayerWindows, LogN, Rope, RopeScaling};
use qwen_data::{Batcher, Sequence, ShardReader, TokenBatch, TokenBatcher};
use qwen_model::{Mode, QwenConfig, QwenModel};
use qwen_train::evaluate;
use qwen_train::plot::{save_png, Chart, Series};

/// Perplexity against context length with and without the training-free extensions.
#[derive(Parser, Debug)]
#[command(name = "long_context")]
struct Args {
    /// A folder written by the `pretrain` example.
    #[arg(long, default_value = "runs/pretrain")]
    run: PathBuf,
    /// Evaluation lengths (default: S/2, S, 2S, 4S, 8S).
    #[arg(long, value_delimiter = ',')]
    lengths: Vec<usize>,
    /// Held-out tokens evaluated per length (at most; at least one window).
    #[arg(long, default_value_t = 16_384)]
    tokens: usize,
    /// Window of the lowest layer (default S/2).
    #[arg(long)]
    window_low: Option<usize>,
    /// Window of the highest layer (default S).
    #[arg(long)]
    window_high: Option<usize>,
    /// Without extensions, perplexity at the longest length must exceed this many times its value at S.
    #[arg(long, default_value_t = 1.2)]
    min_blowup: f64,
    /// With all extensions, perplexity at the longest length must stay within this factor of its value at S.
    #[arg(long, default_value_t = 1.2)]
    max_drift: f64,
}

#[derive(serde::Deserialize)]
struct RunSummary {
    seq_len: usize,
}

/// The table's rows, cumulative as in the report: name, dynamic NTK, LogN, layer-wise windows.
const VARIANTS: [(&str, bool, bool, bool); 4] = [
    ("none", false, false, false),
    ("+ dynamic NTK", true, false, false),
    ("+ LogN", true, true, false),
    ("+ window", true, true, true),
];

fn main() -> Result<()> {
    let args = Args::parse();
    let summary: RunSummary = serde_json::from_slice(
        &std::fs::read(args.run.join("run.json"))
            .with_context(|| format!("reading {}/run.json (run the pretrain example first)", args.run.display()))?,
    )?;
    let s = summary.seq_len;
    let dev = device();
    let base = qwen_model::load::<Backend>(args.run.join("checkpoint"), &dev)?;
    let layers = base.config.num_hidden_layers;
    let heldout = ShardReader::open(args.run.join("data/heldout.qwtk"), base.config.vocab_size, true)?.to_vec();
    let lengths = if args.lengths.is_empty() { vec![s / 2, s, 2 * s, 4 * s, 8 * s] } else { args.lengths.clone() };
    ensure!(lengths.iter().all(|&l| l > 0 && l < heldout.len()), "lengths must be in 1..{}", heldout.len());
    let (lo, hi) = (args.window_low.unwrap_or(s / 2), args.window_high.unwrap_or(s));
    let layer_windows = LayerWindows::layer_wise(layers, lo, hi)?;

    let configure = |c: &mut QwenConfig, ntk: bool, logn: bool, window: bool| {
        let scaling = if ntk { RopeScaling::QwenDynamicNtk { seq_length: s } } else { RopeScaling::None };
        c.rope = Rope { scaling, ..base.config.rope.clone() };
        c.logn = logn.then_some(LogN { seq_length: s });
        c.windows = if window { layer_windows.clone() } else { LayerWindows::full(layers) };
    };

    eprintln!(
        "model trained at S = {s}; {} held-out tokens; layer-wise windows {:?}",
        heldout.len(),
        layer_windows.windows.iter().map(|w| w.unwrap_or(0)).collect::<Vec<_>>()
    );
    let t = Instant::now();
    let mut table: Vec<(String, Vec<f64>)> = Vec::new();
    for (name, ntk, logn, window) in VARIANTS {
        let mut model: QwenModel<Backend> = base.clone();
        configure(&mut model.config, ntk, logn, window);
        let mut row = Vec::new();
        for &len in &lengths {
            let seqs: Vec<Sequence> =
                qwen_data::pack::windows(&heldout, len).take((args.tokens / len).max(1)).collect();
            let per_batch = (4096 / len).max(1);
            let batches: Vec<TokenBatch> =
                seqs.chunks(per_batch).map(|c| TokenBatcher.batch(c.to_vec())).collect::<qwen_data::Result<_>>()?;
            row.push(evaluate(&model, &batches, Mode::Inference)?.perplexity);
        }
        eprintln!("{name:<14} done ({:.0}s)", t.elapsed().as_secs_f64());
        table.push((name.to_string(), row));
    }

    // The table, as the report prints it.
    println!("\nheld-out perplexity of a model trained at S = {s} (lower is better)\n");
    print!("| {:<14} |", "");
    for l in &lengths {
        print!(" {l:>8} |");
    }
    println!();
    print!("|{:-<16}|", "");
    for _ in &lengths {
        print!("{:-<10}|", "");
    }
    println!();
    for (name, row) in &table {
        print!("| {name:<14} |");
        for p in row {
            print!(" {p:>8.2} |");
        }
        println!();
    }

    let results = serde_json::json!({
        "seq_len": s, "lengths": lengths, "windows": layer_windows.windows,
        "perplexity": table.iter().map(|(n, r)| (n.clone(), r.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    std::fs::write(args.run.join("long_context.json"), serde_json::to_vec_pretty(&results)?)?;
    let chart = Chart {
        title: format!("held-out perplexity vs length (trained at S = {s})"),
        x_label: "evaluation length (tokens)".into(),
        y_label: "perplexity".into(),
        log_x: true,
        log_y: false,
        series: table
            .iter()
            .map(|(n, r)| Series {
                name: n.clone(),
                points: lengths.iter().map(|&l| l as f64).zip(r.clone()).collect(),
            })
            .collect(),
    };
    save_png(&chart, args.run.join("long_context.png"), 900, 560)?;
    println!("\nwritten: {0}/long_context.json, {0}/long_context.png", args.run.display());

    // Checks: the baseline degrades past S, all three together stay near flat and beat the
    // baseline at every length past S.
    let at = |row: &[f64], len: usize| lengths.iter().position(|&l| l == len).map(|i| row[i]);
    let longest = *lengths.iter().max().unwrap_or(&s);
    let (none, all) = (&table[0].1, &table[table.len() - 1].1);
    if let (Some(none_s), Some(all_s)) = (at(none, s), at(all, s)) {
        let (none_long, all_long) = (at(none, longest).unwrap_or(f64::NAN), at(all, longest).unwrap_or(f64::NAN));
        println!(
            "at {longest} vs {s}: none {:.2}x, all three {:.2}x (required: none > {}x, all three < {}x)",
            none_long / none_s,
            all_long / all_s,
            args.min_blowup,
            args.max_drift
        );
        ensure!(none_long > args.min_blowup * none_s, "the baseline did not degrade past S");
        ensure!(all_long < args.max_drift * all_s, "with all extensions perplexity still grew past S");
        for (i, &len) in lengths.iter().enumerate().filter(|(_, &l)| l > s) {
            ensure!(all[i] < none[i], "at {len} the extensions did not beat the baseline");
        }
    }
    Ok(())
}
