//! Logits of a checkpoint for token ids, one JSON line per input.
//!
//! ```text
//! echo '{"ids": [1, 2, 3]}' | cargo run --release --example logits -- --model DIR
//! {"logits":[[...],[...],[...]]}
//! ```

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qwen::backend::{device, Backend};

/// Reads JSON Lines from stdin, each `{"ids": [..]}`, and writes one line per input, in order,
/// `{"logits": [[..], ..]}`: f32 logits for every position, computed as the reference computes
/// them at inference without a cache (config flags such as Qwen-1 dynamic NTK/LogN apply).
#[derive(Parser)]
#[command(name = "logits")]
struct Args {
    /// Folder with config.json and model.safetensors (or shards + model.safetensors.index.json),
    /// or a llama.cpp GGUF file (Qwen2/Qwen3; dequantized to f32 at load).
    #[arg(long)]
    model: PathBuf,
}

#[derive(serde::Deserialize)]
struct Input {
    ids: Vec<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let model = qwen_model::load::<Backend>(&args.model, &device())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        let input: Input =
            serde_json::from_str(&line).with_context(|| format!("line {}: expected {{\"ids\": [...]}}", n + 1))?;
        let logits = model.forward(&[input.ids]).with_context(|| format!("line {}", n + 1))?;
        let [_, s, v] = logits.dims();
        let flat: Vec<f32> = logits.into_data().to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let rows: Vec<&[f32]> = flat.chunks(v).take(s).collect();
        serde_json::to_writer(&mut out, &serde_json::json!({ "logits": rows }))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
