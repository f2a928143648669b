//! Encode JSON Lines with a Qwen vocabulary.
//!
//! ```text
//! echo '{"text": "Hello, 世界"}' | cargo run --release --example tokenize -- --vocab vocab/qwen.tiktoken
//! {"ids":[9707,11,220,99489]}
//! ```
//! Ordinary encoding: special-token strings inside the text stay text.
//!
//! With `--chat`, each line is a conversation (`{"messages": [{"role", "content"}, ...]}` or Qwen's
//! `{"conversations": [{"from", "value"}, ...]}`) and each output line is what SFT trains on:
//! `{"ids": [...], "labels": [...]}`, the ChatML rendering and its labels aligned with the ids (the
//! model shifts them), `-100` where masked, exactly as Qwen-1's `finetune.py` `preprocess` returns
//! them without its padding (`tests/sft_tokenize.rs` checks fixtures made by running it). Text is
//! NFC-normalized first, as Qwen-1's tokenizer does.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use qwen_data::ChatRecord;
use qwen_tokenizer::{ChatMl, Normalization, Tokenizer, DEFAULT_SYSTEM};
use qwen_train::IGNORE_INDEX;

/// Reads JSON Lines from stdin, each `{"text": "..."}`, and writes one line per input, in order,
/// `{"ids": [...]}` (ordinary encoding: special-token strings are encoded as plain text). With
/// `--chat`: conversations in, `{"ids": [...], "labels": [...]}` out, as SFT trains on them.
#[derive(Parser)]
#[command(name = "tokenize")]
struct Args {
    /// A `.tiktoken` file (Qwen-1's `qwen.tiktoken`: Qwen pattern and 208 special tokens added)
    /// or an HF `tokenizer.json` (its own normalizer, pattern and added tokens).
    #[arg(long)]
    vocab: PathBuf,
    /// NFC-normalize text before encoding, as Qwen-1's `tokenize()` does (a `tokenizer.json`
    /// with an NFC normalizer does it anyway; `--chat` always does).
    #[arg(long)]
    nfc: bool,
    /// Lines encoded per parallel batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Conversations in, SFT ids and labels out (ChatML, `finetune.py`'s loss mask).
    #[arg(long)]
    chat: bool,
    /// `--chat`: the system prompt of conversations without one (finetune.py's is Qwen's default).
    #[arg(long, default_value = DEFAULT_SYSTEM)]
    system: String,
}

#[derive(serde::Serialize)]
struct Labelled<'a> {
    ids: &'a [u32],
    labels: Vec<i64>,
}

/// `--chat`: one conversation a line → `{"ids", "labels"}`.
fn chat(tok: &Tokenizer, system: &str) -> anyhow::Result<()> {
    let chat = ChatMl::new(tok)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        let at = || format!("line {}", n + 1);
        let value: serde_json::Value = serde_json::from_str(&line).with_context(at)?;
        let record = ChatRecord::from_json(&value).map_err(anyhow::Error::msg).with_context(at)?;
        let rendered =
            qwen_align::sft::render(&chat, Some(record.system.as_deref().unwrap_or(system)), &record.messages)
                .with_context(at)?;
        let labels = qwen_align::sft_labels(&rendered)
            .into_iter()
            .map(|l| if l == IGNORE_INDEX { -100 } else { i64::from(l) })
            .collect();
        serde_json::to_writer(&mut out, &Labelled { ids: &rendered.ids, labels })?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
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
    if args.nfc || args.chat {
        tok = tok.with_normalization(Normalization::Nfc);
    }
    if args.chat {
        return chat(&tok, &args.system);
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
