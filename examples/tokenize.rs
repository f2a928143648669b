//! Encode JSON Lines with a Qwen vocabulary.
//!
//! ```text
//! echo '{"text": "Hello, 世界"}' | cargo run --release --example tokenize -- --vocab vocab/qwen.tiktoken
//! {"ids":[9707,11,220,99489]}
//! ```
//! Ordinary encoding: special-token strings inside the text stay text.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use qwen_tokenizer::{Normalization, Tokenizer};

/// Reads JSON Lines from stdin, each `{"text": "..."}`, and writes one line per input, in order,
/// `{"ids": [...]}` (ordinary encoding: special-token strings are encoded as plain text).
#[derive(Parser)]
#[command(name = "tokenize")]
struct Args {
    /// A `.tiktoken` file (Qwen-1's `qwen.tiktoken`: Qwen pattern and 208 special tokens added)
    /// or an HF `tokenizer.json` (its own normalizer, pattern and added tokens).
    #[arg(long)]
    vocab: PathBuf,
    /// NFC-normalize text before encoding, as Qwen-1's `tokenize()` does (a `tokenizer.json`
    /// with an NFC normalizer does it anyway).
    #[arg(long)]
    nfc: bool,
    /// Lines encoded per parallel batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
}

#[derive(serde::Deserialize)]
struct Input {
    text: String,
}

#[derive(serde::Serialize)]
struct Output<'a> {
    ids: &'a [u32],
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut tok = Tokenizer::from_file(&args.vocab).with_context(|| format!("loading {}", args.vocab.display()))?;
    if args.nfc {
        tok = tok.with_normalization(Normalization::Nfc);
    }
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut lines = stdin.lines().enumerate();
    let mut batch: Vec<String> = Vec::with_capacity(args.batch);
    loop {
        batch.clear();
        for (n, line) in lines.by_ref() {
            let line = line.context("reading stdin")?;
            if line.trim().is_empty() {
                bail!("line {}: empty line (expected {{\"text\": ...}})", n + 1);
            }
            let input: Input =
                serde_json::from_str(&line).with_context(|| format!("line {}: expected {{\"text\": ...}}", n + 1))?;
            batch.push(input.text);
            if batch.len() == args.batch.max(1) {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        for ids in tok.encode_ordinary_batch(&batch)? {
            serde_json::to_writer(&mut out, &Output { ids: &ids })?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
