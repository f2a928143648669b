//! `corpus::prepare` on a small synthetic corpus: every stage's counts add up, the files it names
//! exist and load, the split is the config's, and a run can be repeated from `corpus.json`.

use qwen_data::corpus::{prepare, saved_config, CorpusConfig, SourceSpec};
use qwen_data::{DataError, ShardReader};

mod common;
use common::{words, TempDir};

/// A folder of 40 unrelated documents (one exact copy and one too short among them) and a JSONL
/// file of 20 more.
fn corpus(dir: &TempDir) -> Vec<SourceSpec> {
    for i in 0..40u64 {
        dir.write(&format!("docs/{i:02}.txt"), &words(60, i).join(" "));
    }
    dir.write("docs/copy.txt", &words(60, 3).join(" "));
    dir.write("docs/short.txt", "too short");
    let lines: Vec<String> =
        (100..120u64).map(|i| serde_json::json!({ "text": words(60, i).join(" ") }).to_string()).collect();
    let jsonl = dir.write("more.jsonl", &lines.join("\n"));
    vec![SourceSpec::new(dir.join("docs")), SourceSpec { weight: 2.0, ..SourceSpec::new(jsonl) }]
}

#[test]
fn prepare_counts_every_stage_and_writes_loadable_files() {
    let dir = TempDir::new("corpus");
    let config = CorpusConfig { vocab_size: 300, heldout_fraction: 0.2, ..CorpusConfig::new(corpus(&dir)) };
    let out = dir.join("out");
    let prepared = prepare(&config, &out).unwrap();
    let r = &prepared.report;
    assert_eq!(r.mixture.total, 62);
    assert_eq!(r.filter.seen, 62);
    assert_eq!(r.filter.removed_by("min_chars"), 1);
    assert_eq!((r.dedup.seen, r.dedup.exact_removed), (61, 1));
    assert_eq!(r.train_documents + r.heldout_documents, r.dedup.kept);
    assert!(r.heldout_documents > 0 && r.train_documents > r.heldout_documents, "{r:?}");
    assert_eq!(r.vocab_size, 303);

    let tok = r.files.load_tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), 303);
    assert!(r.files.tokenizer_tiktoken.is_file());
    let train = ShardReader::open(&r.files.train_shard, 303, true).unwrap();
    let heldout = ShardReader::open(&r.files.heldout_shard, 303, true).unwrap();
    assert_eq!((train.len() as u64, heldout.len() as u64), (r.train_tokens, r.heldout_tokens));
    let held: Vec<String> = std::fs::read_to_string(&r.files.heldout_jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(held.len(), r.heldout_documents);
    assert!(held.iter().all(|t| config.is_heldout(t)));

    // The same config again gives the same bytes; it is saved beside the data.
    assert_eq!(saved_config(&out).unwrap(), config);
    let again = prepare(&config, &dir.join("again")).unwrap();
    assert_eq!(std::fs::read(&again.report.files.train_shard).unwrap(), std::fs::read(&r.files.train_shard).unwrap());
}

#[test]
fn missing_sources_and_bad_configs_are_typed_errors() {
    let dir = TempDir::new("corpus-errors");
    let config = CorpusConfig::new(vec![SourceSpec::new(dir.join("nowhere"))]);
    assert!(matches!(prepare(&config, &dir.join("out")), Err(DataError::SourceMissing { .. })));
    let config = CorpusConfig { heldout_fraction: 1.5, ..config };
    assert!(matches!(prepare(&config, &dir.join("out")), Err(DataError::Config(_))));
    // Everything held out: no training document.
    dir.write("one/a.txt", &words(60, 1).join(" "));
    let all =
        CorpusConfig { heldout_fraction: 0.999_999_9, ..CorpusConfig::new(vec![SourceSpec::new(dir.join("one"))]) };
    assert!(matches!(prepare(&all, &dir.join("out")), Err(DataError::Config(_))));
}
