//! The pretraining pipeline end to end on the real default corpus (`tools/setup.sh` fetches it),
//! scaled down to seconds: a short sequence length, small batches, 40 steps, through the library
//! (`qwen_train::run::pretrain`). Checks what a user relies on: held-out perplexity falls, every
//! artefact is written (checkpoint loadable by the model crate, trained tokenizer, metrics with one
//! record per step, a PNG, the configs to repeat the run), resuming a finished run trains nothing
//! and gives the same perplexity. Then one small smoke run of each example binary: `long_context`
//! on that run (the table has every row and length) and `pretrain` on part of the corpus.

use std::path::PathBuf;
use std::process::Command;

use qwen::backend::{device, optimizer_update, TrainBackend};
use qwen::data::corpus::{CorpusConfig, CorpusFiles, SourceSpec};
use qwen::train::run::{pretrain, ModelPreset, PretrainConfig, RunConfig, RunFiles};

mod common;

fn corpus() -> Vec<PathBuf> {
    let dirs = [common::root().join("corpus/docutils"), common::root().join("corpus/sphinx")];
    for d in &dirs {
        assert!(d.is_dir(), "{} is missing: run `bash tools/setup.sh` first (it fetches the corpus)", d.display());
    }
    dirs.to_vec()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.env("RUST_BACKTRACE", "0").output().expect("example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

fn tmp(tag: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("qwen-pretrain-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    out
}

/// What the `pretrain` example runs with `--steps 40 --seq-len 32 --batch 8 --vocab-size 1024
/// --eval-every 20 --save-every 20`.
fn small() -> PretrainConfig {
    PretrainConfig {
        corpus: CorpusConfig {
            vocab_size: 1024,
            ..CorpusConfig::new(corpus().into_iter().map(SourceSpec::new).collect())
        },
        run: RunConfig {
            steps: 40,
            seq_len: 32,
            batch: 8,
            eval_every: 20,
            save_every: 20,
            update: optimizer_update(),
            ..RunConfig::new(ModelPreset::Tiny)
        },
    }
}

#[test]
fn pretrain_then_long_context_on_the_default_corpus() {
    let out = tmp("lib");
    let config = small();
    let done = pretrain::<TrainBackend>(&config, &out, false, &[device()], &mut ()).unwrap();
    let summary = &done.run.summary;
    assert!(summary.ppl_before > 1.5 * summary.ppl_after, "perplexity {} -> {}", summary.ppl_before, summary.ppl_after);
    assert_eq!(summary.seq_len, 32);
    let report = done.corpus.as_ref().expect("a fresh run prepares the corpus");
    assert!(report.train_documents > 0 && report.heldout_documents > 0 && report.mixture.total >= report.filter.kept);

    let (files, data) = (RunFiles::in_dir(&out), CorpusFiles::in_dir(&out));
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&files.run_json).unwrap()).unwrap();
    assert_eq!(written["seq_len"], 32);
    assert_eq!(written["ppl_after"], summary.ppl_after);
    assert_eq!(PretrainConfig::load(&out).unwrap(), config, "the run can be repeated from its folder");
    let metrics = qwen::train::read_metrics(&files.metrics).unwrap();
    assert_eq!(metrics.iter().filter(|r| r.get("loss").is_some()).count(), 40);
    assert_eq!(metrics.iter().filter(|r| r.get("heldout_ppl").is_some()).count(), 3, "step 0, 20, 40");
    assert_eq!(&std::fs::read(&files.loss_png).unwrap()[..4], b"\x89PNG");
    let tok = qwen::tokenizer::Tokenizer::from_file(&data.tokenizer_json).unwrap();
    assert_eq!(tok.vocab_size(), 1024 + 3);
    assert!(data.tokenizer_tiktoken.is_file() && data.train_jsonl.is_file() && data.heldout_jsonl.is_file());
    let model = qwen::model::load::<burn::backend::Flex>(&files.checkpoint, &Default::default()).unwrap();
    assert_eq!(model.config.vocab_size, tok.vocab_size());

    // Resuming a finished run trains nothing more and reports the same held-out perplexity.
    let again = pretrain::<TrainBackend>(&config, &out, true, &[device()], &mut ()).unwrap();
    assert_eq!(again.run.summary.tokens_this_session, 0);
    assert_eq!(again.run.summary.ppl_after, summary.ppl_after);
    assert_eq!(again.run.summary.ppl_before, summary.ppl_before);

    // The long_context binary on this run (it reads run.json, the checkpoint and the held-out shard).
    let table = run(Command::new(common::example("long_context")).arg("--run").arg(&out).args([
        "--tokens",
        "2048",
        "--min-blowup",
        "0",
        "--max-drift",
        "1000",
    ]));
    for row in ["| none ", "| + dynamic NTK", "| + LogN", "| + window"] {
        let line = table.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row}:\n{table}"));
        assert_eq!(line.matches('|').count(), 7, "5 lengths: {line}");
    }
    let lc: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("long_context.json")).unwrap()).unwrap();
    assert_eq!(lc["lengths"], serde_json::json!([16, 32, 64, 128, 256]));
    std::fs::remove_dir_all(&out).unwrap();
}

/// The `pretrain` binary, briefly: flags parse, the run writes its files, the result is printed
/// and checked (a drop of at least 1x), and `--resume` of the finished run trains nothing.
#[test]
fn pretrain_example_smoke() {
    let out = tmp("bin");
    let data = common::root().join("corpus/docutils");
    assert!(data.is_dir(), "{} is missing: run `bash tools/setup.sh` first", data.display());
    let args = [
        "--steps",
        "4",
        "--seq-len",
        "16",
        "--batch",
        "4",
        "--vocab-size",
        "300",
        "--eval-every",
        "2",
        "--save-every",
        "2",
        "--min-ppl-drop",
        "1",
    ];
    let cmd = || {
        let mut c = Command::new(common::example("pretrain"));
        c.arg("--data").arg(&data).args(args).arg("--out").arg(&out);
        c
    };
    let stdout = run(&mut cmd());
    assert!(stdout.contains("held-out perplexity:"), "{stdout}");
    for f in ["run.json", "metrics.jsonl", "loss.png", "tokenizer.json", "tokenizer.tiktoken", "checkpoint", "data"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let again = run(cmd().arg("--resume"));
    assert!(again.contains("0 tokens trained this session"), "{again}");
    std::fs::remove_dir_all(&out).unwrap();
}
