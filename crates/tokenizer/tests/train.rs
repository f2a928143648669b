//! BPE training: vocabulary shape, round trips, tiktoken consistency against a naive reference
//! trainer, extending a base vocabulary, saving and reloading, errors.

use std::collections::HashMap;
use std::path::PathBuf;

use proptest::prelude::*;
use qwen_tokenizer::pretokenize::GPT2_PATTERN;
use qwen_tokenizer::tiktoken::write_ranks;
use qwen_tokenizer::train::{BpeTrainer, TrainerConfig};
use qwen_tokenizer::{AllowedSpecial, Pretokenizer, Tokenizer, TokenizerError, QWEN_PATTERN};

/// Training text: this crate's own sources (read at compile time).
const CORPUS: &[&str] = &[
    include_str!("../src/bpe.rs"),
    include_str!("../src/pretokenize.rs"),
    include_str!("../src/tokenizer.rs"),
    include_str!("../src/special.rs"),
];
/// Text never trained on.
const HELD_OUT: &str = include_str!("../src/hf.rs");
/// Extra text for extending a vocabulary.
const MORE: &[&str] =
    &[include_str!("../src/tiktoken.rs"), include_str!("../src/lib.rs"), include_str!("../src/train.rs")];

fn config(vocab_size: usize) -> TrainerConfig {
    TrainerConfig { vocab_size, ..TrainerConfig::default() }
}

fn train(texts: &[&str], cfg: TrainerConfig) -> Tokenizer {
    let mut t = BpeTrainer::new(cfg).unwrap();
    for text in texts {
        t.feed(text).unwrap();
    }
    t.train().unwrap()
}

fn ranks_bytes(tok: &Tokenizer) -> Vec<u8> {
    let mut buf = Vec::new();
    write_ranks(&mut buf, tok.bpe().iter()).unwrap();
    buf
}

fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, &AllowedSpecial::None).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-tokenizer-train-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn trains_a_vocabulary_from_bytes() {
    let tok = train(CORPUS, config(256 + 300));
    let bpe = tok.bpe();
    assert_eq!(bpe.len(), 556);
    assert_eq!(bpe.iter().count(), 556);
    assert_eq!(tok.vocab_size(), 556);
    for b in 0..=255u8 {
        assert_eq!(bpe.token_bytes(b as u32), Some(&[b][..]), "byte {b} must be id {b}");
    }
    // Every learned token is new and is the concatenation of two earlier tokens.
    for id in 256..556u32 {
        let bytes = bpe.token_bytes(id).unwrap();
        assert!(bytes.len() >= 2);
        assert!((1..bytes.len()).any(|cut| {
            matches!((bpe.token_id(&bytes[..cut]), bpe.token_id(&bytes[cut..])), (Some(a), Some(b)) if a < id && b < id)
        }));
    }
    let ids = encode(&tok, HELD_OUT);
    assert_eq!(tok.decode(&ids).unwrap(), HELD_OUT);
    assert!(ids.len() * 2 < HELD_OUT.len(), "{} tokens for {} bytes", ids.len(), HELD_OUT.len());
    // Non-ASCII text the corpus barely has still round-trips byte by byte.
    let s = "Grüße, 世界! 🦀 \u{0}\r\n\t";
    assert_eq!(tok.decode(&encode(&tok, s)).unwrap(), s);
}

#[test]
fn training_is_deterministic_and_batch_feeding_counts_the_same() {
    let a = train(CORPUS, config(256 + 300));
    let b = train(CORPUS, config(256 + 300));
    assert_eq!(ranks_bytes(&a), ranks_bytes(&b));
    // The same files fed as one parallel batch count the same pieces.
    let mut t = BpeTrainer::new(config(256 + 300)).unwrap();
    t.feed_batch(CORPUS).unwrap();
    let c = t.train().unwrap();
    assert_eq!(ranks_bytes(&a), ranks_bytes(&c));
}

// ---------------------------------------------------------------------------------------------
// Reference: textbook BPE training (full recount per merge, merges applied left to right).

struct Reference {
    tokens: Vec<Vec<u8>>,
    /// piece -> segmentation after all merges
    words: Vec<(String, Vec<u32>)>,
}

fn reference_train(texts: &[&str], vocab_size: usize, min_frequency: u64) -> Reference {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for text in texts {
        for p in Pretokenizer::Qwen.pieces(text).unwrap() {
            *counts.entry(p.to_string()).or_default() += 1;
        }
    }
    let mut words: Vec<(String, Vec<u32>, u64)> = counts
        .into_iter()
        .map(|(p, c)| {
            let ids = p.bytes().map(u32::from).collect();
            (p, ids, c)
        })
        .collect();
    words.sort();
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    while tokens.len() < vocab_size {
        let mut pairs: HashMap<(u32, u32), u64> = HashMap::new();
        for (_, ids, c) in &words {
            for w in ids.windows(2) {
                *pairs.entry((w[0], w[1])).or_default() += c;
            }
        }
        // Most frequent; ties to the lowest (left, right).
        let Some((&(a, b), &n)) = pairs.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0))) else { break };
        if n < min_frequency {
            break;
        }
        let bytes = [tokens[a as usize].clone(), tokens[b as usize].clone()].concat();
        assert!(!tokens.contains(&bytes), "reference met a duplicate token");
        let t = tokens.len() as u32;
        tokens.push(bytes);
        for (_, ids, _) in &mut words {
            let mut out = Vec::with_capacity(ids.len());
            let mut i = 0;
            while i < ids.len() {
                if i + 1 < ids.len() && ids[i] == a && ids[i + 1] == b {
                    out.push(t);
                    i += 2;
                } else {
                    out.push(ids[i]);
                    i += 1;
                }
            }
            *ids = out;
        }
    }
    Reference { tokens, words: words.into_iter().map(|(p, ids, _)| (p, ids)).collect() }
}

#[test]
fn matches_textbook_bpe_and_is_tiktoken_consistent() {
    let texts = &CORPUS[2..];
    let reference = reference_train(texts, 256 + 200, 2);
    let tok = train(texts, config(256 + 200));
    let bpe = tok.bpe();
    // Same merges, in the same order.
    let learned: Vec<&[u8]> = bpe.iter().map(|(b, _)| b).collect();
    let expected: Vec<&[u8]> = reference.tokens.iter().map(Vec::as_slice).collect();
    assert_eq!(learned, expected);
    // The tokenizer (tiktoken's rule: any pair that concatenates to a token merges, lowest rank
    // first) segments every training piece exactly as the trainer's merges did — both with the
    // whole-token shortcut and with the merge loop alone.
    for (piece, ids) in &reference.words {
        let mut out = Vec::new();
        bpe.encode_piece(piece.as_bytes(), &mut out);
        assert_eq!(&out, ids, "piece {piece:?}");
        out.clear();
        bpe.merge(piece.as_bytes(), &mut out);
        assert_eq!(&out, ids, "piece {piece:?} (merge loop)");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Tiny alphabets make many overlapping candidate merges; training must stay
    /// tiktoken-consistent (it checks itself and fails otherwise) and round-trip.
    #[test]
    fn random_corpora_train_consistently(text in "[abc ]{0,300}", extra in "[ab\\n.]{0,80}", n in 0usize..60) {
        let corpus = format!("{text}{extra}");
        let cfg = TrainerConfig { vocab_size: 256 + n, min_frequency: 1, ..TrainerConfig::default() };
        let mut t = BpeTrainer::new(cfg).unwrap();
        t.feed(&corpus).unwrap();
        let tok = t.train().unwrap();
        prop_assert!(tok.bpe().len() <= 256 + n);
        let ids = encode(&tok, &corpus);
        prop_assert_eq!(tok.decode(&ids).unwrap(), corpus.clone());
        // Extending the trained vocabulary with more merges stays consistent too.
        let cfg = TrainerConfig { vocab_size: 256 + 2 * n, min_frequency: 1, ..TrainerConfig::default() };
        let mut t = BpeTrainer::new(cfg).unwrap();
        t.feed(&corpus).unwrap();
        t.feed(&extra.repeat(3)).unwrap();
        let ext = t.extend(&tok).unwrap();
        prop_assert_eq!(ext.decode(&encode(&ext, &corpus)).unwrap(), corpus);
    }
}

// ---------------------------------------------------------------------------------------------
// Extending a vocabulary

#[test]
fn extend_keeps_the_base_and_adds_tokens_after_it() {
    let base = train(&CORPUS[..2], config(256 + 150));
    let mut t = BpeTrainer::new(config(256 + 150 + 200)).unwrap();
    for text in CORPUS.iter().chain(MORE) {
        t.feed(text).unwrap();
    }
    let ext = t.extend(&base).unwrap();
    assert_eq!(ext.bpe().len(), 256 + 350);
    for (bytes, id) in base.bpe().iter() {
        assert_eq!(ext.bpe().token_bytes(id), Some(bytes), "base id {id} changed");
    }
    for id in 406..606u32 {
        let bytes = ext.bpe().token_bytes(id).unwrap();
        assert_eq!(base.bpe().token_id(bytes), None, "new id {id} repeats a base token");
    }
    for text in CORPUS.iter().chain(MORE) {
        let (b, e) = (encode(&base, text), encode(&ext, text));
        assert!(e.len() <= b.len());
        assert_eq!(ext.decode(&e).unwrap(), *text);
    }
    let all: String = CORPUS.iter().chain(MORE).copied().collect();
    assert!(encode(&ext, &all).len() < encode(&base, &all).len());
}

#[test]
fn extending_on_the_same_corpus_continues_training() {
    // Greedy BPE is a sequence: the first 150 merges and then 150 more on the same counts are
    // the 300 merges of one run.
    let base = train(CORPUS, config(256 + 150));
    let mut t = BpeTrainer::new(config(256 + 300)).unwrap();
    t.feed_batch(CORPUS).unwrap();
    let ext = t.extend(&base).unwrap();
    let direct = train(CORPUS, config(256 + 300));
    assert_eq!(ranks_bytes(&ext), ranks_bytes(&direct));
}

#[test]
fn extend_keeps_a_base_with_other_byte_ids_and_gaps() {
    // A tiktoken vocabulary whose single bytes are not ids 0..=255 (as cl100k) with an unused id.
    let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], 255 - b as u32)).collect();
    ranks.push((b"th".to_vec(), 256));
    ranks.push((b"the".to_vec(), 258)); // id 257 unused
    let data = {
        let mut buf = Vec::new();
        write_ranks(&mut buf, ranks.iter().map(|(b, r)| (b.as_slice(), *r))).unwrap();
        buf
    };
    let base = Tokenizer::from_tiktoken(&data, vec![("<|endoftext|>".into(), 259)], QWEN_PATTERN).unwrap();
    let cfg = TrainerConfig { vocab_size: 259 + 50, specials: vec!["<|eot|>".into()], ..TrainerConfig::default() };
    let mut t = BpeTrainer::new(cfg).unwrap();
    t.feed_batch(CORPUS).unwrap();
    let ext = t.extend(&base).unwrap();
    assert_eq!(ext.bpe().len(), 309);
    assert_eq!(ext.bpe().token_bytes(257), None);
    for (bytes, id) in base.bpe().iter() {
        assert_eq!(ext.bpe().token_bytes(id), Some(bytes));
    }
    assert_eq!(ext.special_id("<|eot|>").unwrap(), 309);
    assert!(ext.special_id("<|endoftext|>").is_err(), "base specials are not kept");
    assert_eq!(ext.decode(&encode(&ext, HELD_OUT)).unwrap(), HELD_OUT);
}

// ---------------------------------------------------------------------------------------------
// Specials, saving, options, errors

#[test]
fn specials_follow_the_ordinary_ids() {
    let cfg = TrainerConfig {
        vocab_size: 256 + 100,
        specials: vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()],
        ..TrainerConfig::default()
    };
    let tok = train(CORPUS, cfg);
    assert_eq!(tok.special_id("<|endoftext|>").unwrap(), 356);
    assert_eq!(tok.special_id("<|im_end|>").unwrap(), 358);
    assert_eq!(tok.vocab_size(), 359);
    let ids = tok.encode("a<|im_end|>", &AllowedSpecial::All).unwrap();
    assert_eq!(ids.last(), Some(&358));
    assert!(!encode(&tok, "a<|im_end|>").contains(&358));
}

#[test]
fn saved_files_reload_to_the_same_encoder() {
    let cfg = TrainerConfig {
        vocab_size: 256 + 300,
        specials: vec!["<|endoftext|>".into(), "<|im_end|>".into()],
        ..TrainerConfig::default()
    };
    let tok = train(CORPUS, cfg);
    let specials: Vec<(String, u32)> = tok.specials().iter().map(|(s, id)| (s.to_string(), id)).collect();
    let text = format!("{HELD_OUT}<|im_end|>");
    let expected = tok.encode(&text, &AllowedSpecial::All).unwrap();

    let dir = temp_dir("save");
    let path = dir.join("trained.tiktoken");
    tok.save_tiktoken(&path).unwrap();
    let data = std::fs::read(&path).unwrap();
    let tt = Tokenizer::from_tiktoken(&data, specials, QWEN_PATTERN).unwrap();
    assert_eq!(tt.encode(&text, &AllowedSpecial::All).unwrap(), expected);

    let path = dir.join("tokenizer.json");
    tok.save_tokenizer_json(&path).unwrap();
    let hf = Tokenizer::from_tokenizer_json_file(&path).unwrap();
    assert_eq!(hf.encode(&text, &AllowedSpecial::All).unwrap(), expected);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn min_frequency_and_pattern_are_honoured() {
    let cfg = TrainerConfig { vocab_size: 100_000, min_frequency: 50, ..TrainerConfig::default() };
    let tok = train(CORPUS, cfg);
    let n = tok.bpe().len();
    assert!(n > 256 && n < 2_000, "{n}");
    // Everything learned with min_frequency 50 is learned first with min_frequency 1.
    let all = train(CORPUS, TrainerConfig { vocab_size: n, min_frequency: 1, ..TrainerConfig::default() });
    assert_eq!(ranks_bytes(&tok), ranks_bytes(&all));

    let cfg = TrainerConfig {
        vocab_size: 256 + 50,
        pattern: GPT2_PATTERN.into(),
        show_progress: true,
        ..TrainerConfig::default()
    };
    let tok = train(CORPUS, cfg);
    assert_eq!(tok.pretokenizer().pattern(), GPT2_PATTERN);
    assert_eq!(tok.decode(&encode(&tok, HELD_OUT)).unwrap(), HELD_OUT);

    // Nothing fed: just the bytes.
    let tok = BpeTrainer::new(config(1000)).unwrap().train().unwrap();
    assert_eq!(tok.bpe().len(), 256);
}

#[test]
fn bad_requests_are_training_errors() {
    assert!(matches!(BpeTrainer::new(config(255)), Err(TokenizerError::Training(_))));
    let dup = TrainerConfig { specials: vec!["<|a|>".into(), "<|a|>".into()], ..config(300) };
    assert!(matches!(BpeTrainer::new(dup), Err(TokenizerError::Training(_))));
    let empty = TrainerConfig { specials: vec![String::new()], ..config(300) };
    assert!(matches!(BpeTrainer::new(empty), Err(TokenizerError::Training(_))));
    let bad = TrainerConfig { pattern: "(".into(), ..config(300) };
    assert!(matches!(BpeTrainer::new(bad), Err(TokenizerError::InvalidPattern { .. })));

    let base = train(&CORPUS[..1], config(256 + 40));
    let mut t = BpeTrainer::new(config(256 + 39)).unwrap();
    t.feed(CORPUS[1]).unwrap();
    assert!(matches!(t.extend(&base), Err(TokenizerError::Training(_))));
    // Exactly the base size is fine: nothing new.
    let mut t = BpeTrainer::new(config(256 + 40)).unwrap();
    t.feed(CORPUS[1]).unwrap();
    assert_eq!(ranks_bytes(&t.extend(&base).unwrap()), ranks_bytes(&base));
}

#[test]
fn extend_follows_the_rank_rule_when_a_new_token_completes_an_older_one() {
    // "abc" (256) is a base token that no merge can reach: neither "ab" nor "bc" is a token. Once
    // training adds "ab" (257), tiktoken's rule merges "ab" + "c" into the lower-ranked "abc" at
    // once; training must segment the same way (a textbook trainer would keep "ab" "c").
    let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
    ranks.push((b"abc".to_vec(), 256));
    let mut data = Vec::new();
    write_ranks(&mut data, ranks.iter().map(|(b, r)| (b.as_slice(), *r))).unwrap();
    let base = Tokenizer::from_tiktoken(&data, vec![], QWEN_PATTERN).unwrap();
    assert_eq!(encode(&base, "abcx"), b"abcx".map(u32::from));

    let mut t = BpeTrainer::new(config(260)).unwrap();
    t.feed("abcx abcx abcx").unwrap();
    let ext = t.extend(&base).unwrap();
    let tokens: Vec<&[u8]> = (257..260).map(|id| ext.bpe().token_bytes(id).unwrap()).collect();
    assert_eq!(tokens, [&b"ab"[..], b"abcx", b" abcx"]);
    assert_eq!(encode(&ext, "abcx abcx"), [258, 259]);
    let mut out = Vec::new();
    ext.bpe().merge(b"abcab", &mut out);
    assert_eq!(out, [256, 257]);
}

/// Training speed on a real corpus: `QWEN_TRAIN_CORPUS=file.txt cargo test --release -p
/// qwen-tokenizer --test train -- --ignored --nocapture speed`. `QWEN_TRAIN_MERGES` (default
/// 4000) merges are learned from bytes, or on top of `QWEN_TRAIN_BASE` (a `.tiktoken` file or a
/// `tokenizer.json`) when it is set.
#[test]
#[ignore = "needs QWEN_TRAIN_CORPUS"]
fn speed() {
    let path = std::env::var("QWEN_TRAIN_CORPUS").expect("QWEN_TRAIN_CORPUS=<text file>");
    let merges: usize = std::env::var("QWEN_TRAIN_MERGES").map_or(4000, |m| m.parse().unwrap());
    let base = std::env::var("QWEN_TRAIN_BASE").ok().map(|b| {
        if b.ends_with(".json") {
            Tokenizer::from_tokenizer_json_file(&b).unwrap()
        } else {
            Tokenizer::from_tiktoken(&std::fs::read(&b).unwrap(), vec![], QWEN_PATTERN).unwrap()
        }
    });
    let first = base.as_ref().map_or(256, |b| b.bpe().len());
    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let t0 = std::time::Instant::now();
    let cfg = TrainerConfig { vocab_size: first + merges, show_progress: true, ..TrainerConfig::default() };
    let mut t = BpeTrainer::new(cfg).unwrap();
    t.feed_batch(&lines).unwrap();
    let t1 = std::time::Instant::now();
    let pieces = t.unique_pieces();
    let tok = match &base {
        Some(b) => t.extend(b).unwrap(),
        None => t.train().unwrap(),
    };
    let t2 = std::time::Instant::now();
    let learned = tok.bpe().len() - first;
    let train_s = (t2 - t1).as_secs_f64();
    eprintln!(
        "{:.1} MB, {pieces} distinct pieces: counted in {:.2}s, {learned} merges in {train_s:.2}s ({:.0} merges/s)",
        text.len() as f64 / 1e6,
        (t1 - t0).as_secs_f64(),
        learned as f64 / train_s
    );
    let ids = tok.encode_ordinary(&text).unwrap();
    eprint!("{:.3} bytes per token on the training text", text.len() as f64 / ids.len() as f64);
    match &base {
        Some(b) => {
            eprintln!(" ({:.3} with the base)", text.len() as f64 / b.encode_ordinary(&text).unwrap().len() as f64)
        }
        None => eprintln!(),
    }
}
