//! Loads a checkpoint and writes it back in HF layout (same family), optionally in another dtype.
//!
//! `cargo run --release --example convert -- --model DIR --out DIR [--dtype f32|bf16|f16]
//! [--max-shard-size 2GB]`

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use qwen::backend::{device, Backend};
use qwen_model::SaveDtype;

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    Bf16,
    F16,
}

/// Re-saves a Qwen checkpoint (config.json + model.safetensors) through this crate's loader.
#[derive(Parser)]
#[command(name = "convert")]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Write the Hub's sharded layout with shards of at most this size (bytes, or with a KB/MB/GB
    /// suffix as transformers' `max_shard_size`: 1000-based).
    #[arg(long, value_parser = parse_size)]
    max_shard_size: Option<usize>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_uppercase();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size like 500MB"))?;
    let unit = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?} (B, KB, MB, GB)")),
    };
    n.checked_mul(unit).filter(|&n| n > 0).ok_or_else(|| format!("{s:?} is not a positive size"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let model = qwen_model::load::<Backend>(&args.model, &device())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let dtype = match args.dtype {
        Dtype::F32 => SaveDtype::F32,
        Dtype::Bf16 => SaveDtype::BF16,
        Dtype::F16 => SaveDtype::F16,
    };
    match args.max_shard_size {
        Some(max) => model.save_sharded(&args.out, dtype, max),
        None => model.save(&args.out, dtype),
    }
    .with_context(|| format!("saving {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
