//! The project's main job on its embedded default. For now: the tokenizer, end to end, with
//! measured results that are checked (the exit status is non-zero if a check fails).
//!
//! 1. Loads Qwen-1's `qwen.tiktoken` and the Qwen2-family `tokenizer.json` (fetched by
//!    `tools/setup.sh`) and encodes the committed parity corpus with both: ids must agree.
//! 2. Encode throughput, one thread and all threads.
//! 3. ChatML as Qwen-1 renders it, with the tokens SFT trains on.
//! 4. Streaming decode of a reply that cuts characters across tokens.
//! 5. Trains a small BPE vocabulary on half of the corpus, writes it as `.tiktoken` and
//!    `tokenizer.json`, reloads both, and measures compression on the other half.
//!
//! `cargo run --release --example quickstart [-- --out DIR]`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Parser;
use qwen_tokenizer::train::{BpeTrainer, TrainerConfig};
use qwen_tokenizer::{AllowedSpecial, ChatMl, Normalization, StreamDecoder, Tokenizer, DEFAULT_SYSTEM};

#[derive(Parser)]
#[command(name = "quickstart")]
/// Tokenizer demo on the embedded default corpus, with checked, measured results.
struct Args {
    /// Where the trained vocabulary is written (default: a fresh folder under the system temp dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Target vocabulary size of the BPE trained in step 5 (256 bytes + merges).
    #[arg(long, default_value_t = 4096)]
    train_vocab: usize,
}

fn corpus(root: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let path = root.join("tests/fixtures/tokenizer/corpus.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| Ok(serde_json::from_str::<serde_json::Value>(l)?["text"].as_str().context("text")?.to_string()))
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let vocab = root.join("vocab");
    ensure!(vocab.join("qwen.tiktoken").is_file(), "vocab/ is missing: run `bash tools/setup.sh` first");

    // 1. Two loaders, one core.
    let t = Instant::now();
    let qwen1 = Tokenizer::qwen_from_file(vocab.join("qwen.tiktoken"))?.with_normalization(Normalization::Nfc);
    let qwen2 = Tokenizer::from_tokenizer_json_file(vocab.join("tokenizer.json"))?;
    println!(
        "loaded qwen.tiktoken ({} ranks, {} specials) and tokenizer.json ({} tokens, {} added) in {:.0} ms",
        qwen1.bpe().len(),
        qwen1.specials().len(),
        qwen2.bpe().len(),
        qwen2.specials().len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let docs = corpus(&root)?;
    let bytes: usize = docs.iter().map(String::len).sum();
    let a = qwen1.encode_ordinary_batch(&docs)?;
    let b = qwen2.encode_ordinary_batch(&docs)?;
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let tokens: usize = a.iter().map(Vec::len).sum();
    println!(
        "corpus: {} documents, {:.2} MB, {tokens} tokens ({:.2} bytes/token); the two vocabularies agree on {agree}/{}",
        docs.len(),
        bytes as f64 / 1e6,
        bytes as f64 / tokens as f64,
        docs.len()
    );
    ensure!(
        agree + 1 >= docs.len(),
        "tiktoken and tokenizer.json loaders disagree on {} documents",
        docs.len() - agree
    );

    // 2. Throughput.
    let t = Instant::now();
    for d in &docs {
        qwen1.encode_ordinary(d)?;
    }
    let one = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    qwen1.encode_ordinary_batch(&docs)?;
    let all = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    println!(
        "encode: {one:.1} MB/s on one thread, {all:.1} MB/s on {} threads (peers: cargo bench --bench tokenizer)",
        rayon_threads()
    );

    // 3. ChatML.
    let chat = ChatMl::new(&qwen1)?;
    let history = [("What is 2+2?", "4.")];
    let ctx = chat.make_context(DEFAULT_SYSTEM, &history, "And <|im_end|> times 3?", 6144)?;
    let targets = ctx.tags.iter().filter(|t| t.is_sft_target()).count();
    println!("\nChatML ({} tokens, {targets} would be SFT targets):\n{}", ctx.ids.len(), ctx.raw_text);
    ensure!(qwen1.decode(&ctx.ids)? == ctx.raw_text, "ChatML ids do not decode to its text");
    let im_end = qwen1.special_id("<|im_end|>")?;
    ensure!(ctx.ids.iter().filter(|&&i| i == im_end).count() == 4, "user text produced a control token");

    // 4. Streaming decode.
    let reply = qwen1.encode_ordinary("Ünïcödé streams whole: 你好，世界 👋🏽")?;
    let mut stream = StreamDecoder::new(&qwen1);
    let pieces: Vec<String> = reply.iter().map(|&id| stream.push(id)).collect::<Result<_, _>>()?;
    println!("streamed {} ids as {:?}", reply.len(), pieces);
    ensure!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "a character was split");

    // 5. Train, save, reload, measure.
    let train: Vec<&str> = docs.iter().step_by(2).map(String::as_str).collect();
    let held_out: Vec<&str> = docs.iter().skip(1).step_by(2).map(String::as_str).collect();
    let mut trainer = BpeTrainer::new(TrainerConfig {
        vocab_size: args.train_vocab,
        specials: vec!["<|endoftext|>".into()],
        ..TrainerConfig::default()
    })?;
    let t = Instant::now();
    trainer.feed_batch(&train)?;
    let trained = trainer.train()?;
    println!(
        "\ntrained {} merges on {:.2} MB in {:.2} s",
        trained.bpe().len() - 256,
        train.iter().map(|d| d.len()).sum::<usize>() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let out = args.out.unwrap_or_else(|| std::env::temp_dir().join(format!("qwen-quickstart-{}", std::process::id())));
    std::fs::create_dir_all(&out)?;
    trained.save_tiktoken(out.join("trained.tiktoken"))?;
    trained.save_tokenizer_json(out.join("tokenizer.json"))?;
    let from_tiktoken = Tokenizer::from_tiktoken(
        &std::fs::read(out.join("trained.tiktoken"))?,
        vec![("<|endoftext|>".into(), trained.bpe().len() as u32)],
        qwen_tokenizer::QWEN_PATTERN,
    )?;
    let from_json = Tokenizer::from_tokenizer_json_file(out.join("tokenizer.json"))?;
    let held_bytes: usize = held_out.iter().map(|d| d.len()).sum();
    let mut counts = [0usize; 3];
    for d in &held_out {
        let ids = trained.encode(d, &AllowedSpecial::None)?;
        ensure!(from_tiktoken.encode(d, &AllowedSpecial::None)? == ids, "reloaded .tiktoken encodes differently");
        ensure!(from_json.encode(d, &AllowedSpecial::None)? == ids, "reloaded tokenizer.json encodes differently");
        ensure!(trained.decode(&ids)? == *d, "trained vocabulary does not round-trip");
        counts[0] += ids.len();
        counts[1] += qwen1.encode_ordinary(d)?.len();
        counts[2] += d.len();
    }
    let bpt = |n: usize| held_bytes as f64 / n as f64;
    println!("held-out compression (bytes/token): bytes 1.00, trained {}-token vocab {:.2}, Qwen's 151,643-token vocab {:.2}",
        trained.bpe().len(), bpt(counts[0]), bpt(counts[1]));
    println!("wrote {}", out.display());
    ensure!(bpt(counts[0]) > 2.0, "the trained vocabulary barely compresses");
    ensure!(bpt(counts[1]) > bpt(counts[0]), "a 4k vocabulary should not beat Qwen's");
    println!("\nall checks passed");
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
