//! Loads a checkpoint and writes it back in HF layout (same family), optionally in another dtype.
//!
//! `cargo run --release --example convert -- --model DIR --out DIR [--dtype f32|bf16|f16]`

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
    model.save(&args.out, dtype).with_context(|| format!("saving {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
