//! The `pretrain` and `long_context` examples end to end on the real default corpus
//! (`tools/setup.sh` fetches it), scaled down to seconds: a short sequence length, small batches,
//! 40 steps. Checks what a user relies on: the run succeeds and reports a falling held-out
//! perplexity, writes every artefact (checkpoint loadable by the model crate, trained tokenizer,
//! metrics with one record per step, a PNG), `--resume` of a finished run changes nothing, and the
//! long-context table comes out for every length and variant.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

/// `target/<profile>/examples/<name>`: cargo builds the examples before running integration tests.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(path.is_file(), "{} is missing: a plain `cargo test` builds the examples first (or `cargo build --examples`)", path.display());
    path
}

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

#[test]
fn pretrain_then_long_context_on_the_default_corpus() {
    let out = std::env::temp_dir().join(format!("qwen-pretrain-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut args: Vec<String> = Vec::new();
    for d in corpus() {
        args.extend(["--data".into(), d.display().to_string()]);
    }
    let small = [
        "--steps", "40", "--seq-len", "32", "--batch", "8", "--vocab-size", "1024", "--eval-every", "20",
        "--save-every", "20", "--min-ppl-drop", "1.5",
    ];
    let stdout = run(Command::new(example("pretrain")).args(&args).args(small).arg("--out").arg(&out));
    assert!(stdout.contains("held-out perplexity:"), "{stdout}");

    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    let (before, after) = (summary["ppl_before"].as_f64().unwrap(), summary["ppl_after"].as_f64().unwrap());
    assert!(before > 1.5 * after, "perplexity {before} -> {after}");
    assert_eq!(summary["seq_len"], 32);

    let metrics = qwen::train::read_metrics(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.iter().filter(|r| r.get("loss").is_some()).count(), 40);
    assert_eq!(metrics.iter().filter(|r| r.get("heldout_ppl").is_some()).count(), 3, "step 0, 20, 40");
    assert_eq!(&std::fs::read(out.join("loss.png")).unwrap()[..4], b"\x89PNG");
    let tok = qwen::tokenizer::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 1024 + 3);
    let model = qwen::model::load::<burn::backend::Flex>(out.join("checkpoint"), &Default::default()).unwrap();
    assert_eq!(model.config.vocab_size, tok.vocab_size());

    // Resuming a finished run trains nothing more and reports the same held-out perplexity.
    let again = run(Command::new(example("pretrain")).args(&args).args(small).arg("--out").arg(&out).arg("--resume"));
    assert!(again.contains("0 tokens trained this session"), "{again}");
    let resumed: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(resumed["ppl_after"], summary["ppl_after"]);

    let table = run(Command::new(example("long_context")).arg("--run").arg(&out).args([
        "--tokens", "2048", "--min-blowup", "0", "--max-drift", "1000",
    ]));
    for row in ["| none ", "| + dynamic NTK", "| + LogN", "| + window"] {
        let line = table.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row}:\n{table}"));
        assert_eq!(line.matches('|').count(), 7, "5 lengths: {line}");
    }
    let lc: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("long_context.json")).unwrap()).unwrap();
    assert_eq!(lc["lengths"], serde_json::json!([16, 32, 64, 128, 256]));
    std::fs::remove_dir_all(&out).unwrap();
}
