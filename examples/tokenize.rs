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
// Through the `qwen` package, so its global allocator (mimalloc) is linked in.
use qwen::data::ChatRecord;
use qwen::tokenizer::{ChatMl, Normalization, Tokenizer, DEFAULT_SYSTEM};
use qwen::train::IGNORE_INDEX;
use rayon::prelude::*;

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
            qwen::align::sft::render(&chat, Some(record.system.as_deref().unwrap_or(system)), &record.messages)
                .with_context(at)?;
        let labels = qwen::align::sft_labels(&rendered)
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
struct Input<'a> {
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

/// Lines read from stdin, as one buffer and where each line ends (after its `\n`).
struct Lines {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Lines {
    /// Reads up to `max` more lines (fewer only at the end of the input).
    fn read(input: &mut impl BufRead, max: usize) -> std::io::Result<Self> {
        let mut lines = Lines { buf: Vec::with_capacity(max * 256), ends: Vec::with_capacity(max) };
        while lines.ends.len() < max && input.read_until(b'\n', &mut lines.buf)? > 0 {
            lines.ends.push(lines.buf.len());
        }
        Ok(lines)
    }

    fn line(&self, i: usize) -> &[u8] {
        let line = &self.buf[if i == 0 { 0 } else { self.ends[i - 1] }..self.ends[i]];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        line.strip_suffix(b"\r").unwrap_or(line)
    }
}

/// One input line → its output line appended to `out`. `n` is the line's number, for errors.
fn encode_line(tok: &Tokenizer, line: &[u8], n: usize, out: &mut Vec<u8>) -> anyhow::Result<()> {
    if line.trim_ascii().is_empty() {
        bail!("line {n}: empty line (expected {{\"text\": ...}})");
    }
    let input: Input = serde_json::from_slice(line).with_context(|| format!("line {n}: expected {{\"text\": ...}}"))?;
    let ids = tok.encode_ordinary(&input.text).with_context(|| format!("line {n}"))?;
    out.extend_from_slice(b"{\"ids\":[");
    let mut digits = itoa::Buffer::new();
    for (k, id) in ids.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(digits.format(*id).as_bytes());
    }
    out.extend_from_slice(b"]}\n");
    Ok(())
}

/// Plain encoding, as a pipeline: while the cores parse, encode and format one batch of lines
/// (each line wholly on one core: JSON in, ids, JSON out), this thread writes the previous
/// batch's output and reads the next batch; the vocabulary loads while the first batch is read.
fn encode_stdin(load: impl FnOnce() -> anyhow::Result<Tokenizer> + Send, batch: usize) -> anyhow::Result<()> {
    let batch = batch.max(1);
    // Unlocked handles: the reads and writes run on a rayon thread (a lock guard is not `Send`).
    let mut input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin());
    let mut out = std::io::stdout();
    let (tok, lines) = rayon::join(load, || Lines::read(&mut input, batch));
    let (tok, mut lines) = (tok?, lines.context("reading stdin")?);
    let mut first_line = 1;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    while !lines.ends.is_empty() {
        let (encoded, (written, next)) = rayon::join(
            || -> anyhow::Result<Vec<Vec<u8>>> {
                // Chunks of lines, not single lines: fewer buffers to write, still balanced.
                (0..lines.ends.len())
                    .into_par_iter()
                    .chunks(64)
                    .map(|idx| {
                        let mut buf = Vec::new();
                        for i in idx {
                            encode_line(&tok, lines.line(i), first_line + i, &mut buf)?;
                        }
                        Ok(buf)
                    })
                    .collect()
            },
            || (pending.iter().try_for_each(|chunk| out.write_all(chunk)), Lines::read(&mut input, batch)),
        );
        written.context("writing stdout")?;
        first_line += lines.ends.len();
        pending = encoded?;
        lines = next.context("reading stdin")?;
    }
    pending.iter().try_for_each(|chunk| out.write_all(chunk)).context("writing stdout")?;
    out.flush().context("writing stdout")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load = || -> anyhow::Result<Tokenizer> {
        let mut tok = Tokenizer::from_file(&args.vocab).with_context(|| format!("loading {}", args.vocab.display()))?;
        if args.nfc || args.chat {
            tok = tok.with_normalization(Normalization::Nfc);
        }
        Ok(tok)
    };
    if args.chat {
        return chat(&load()?, &args.system);
    }
    encode_stdin(load, args.batch)
}
