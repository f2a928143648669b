//! `run::pretrain` / `run::train` on a small synthetic corpus with the tests' tiny model: the run
//! writes what it says, an interrupted run resumed from its checkpoint continues exactly as the
//! uninterrupted one, and resuming a finished run trains nothing.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use qwen_data::corpus::{CorpusConfig, SourceSpec};
use qwen_data::rng::SplitMix64;
use qwen_train::run::{pretrain, train, ModelPreset, ModelSpec, PretrainConfig, RunConfig, RunFiles, RunObserver};
use qwen_train::{read_metrics, TrainError};

mod common;

type B = Autodiff<Flex>;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 80 documents of seeded pseudo-words over a small alphabet (so BPE finds merges), one file each.
fn write_corpus(dir: &Path) -> PathBuf {
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let mut rng = SplitMix64::new(9);
    for i in 0..80 {
        let text: Vec<String> = (0..70)
            .map(|_| (0..2 + rng.below(4)).map(|_| ['a', 'b', 'c', 'd', 'e'][rng.below(5) as usize]).collect())
            .collect();
        std::fs::write(docs.join(format!("{i:03}.txt")), text.join(" ")).unwrap();
    }
    docs
}

fn config(docs: PathBuf, steps: u64) -> PretrainConfig {
    let serde_json::Value::Object(mut model) = common::config_json() else { unreachable!() };
    model.remove("vocab_size");
    PretrainConfig {
        corpus: CorpusConfig {
            vocab_size: 320,
            heldout_fraction: 0.2,
            ..CorpusConfig::new(vec![SourceSpec::new(docs)])
        },
        run: RunConfig {
            model: ModelSpec::Config(model),
            steps,
            seq_len: 16,
            batch: 4,
            lr: 1e-2,
            eval_every: 3,
            eval_windows: 8,
            save_every: 3,
            ..RunConfig::new(ModelPreset::Tiny)
        },
    }
}

/// Copies the output folder when the checkpoint of step `at` is written: an interrupted run.
struct CopyAt {
    at: u64,
    from: PathBuf,
    to: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

impl RunObserver for CopyAt {
    fn checkpointed(&mut self, step: u64, _dir: &Path) {
        if step == self.at {
            copy_dir(&self.from, &self.to);
        }
    }
}

/// The records of `metrics.jsonl` past `step`, without the timings.
fn records_after(out: &Path, step: u64) -> Vec<serde_json::Value> {
    let mut recs = read_metrics(RunFiles::in_dir(out).metrics).unwrap();
    recs.retain(|r| r["step"].as_u64().unwrap() > step);
    for r in &mut recs {
        let map = r.as_object_mut().unwrap();
        map.remove("elapsed_s");
        map.remove("tokens_per_s");
    }
    recs
}

#[test]
fn interrupted_run_resumes_exactly_and_a_finished_one_trains_nothing() {
    let dir = tmp("resume");
    let docs = write_corpus(&dir);
    let config = config(docs, 6);
    let (full, cut) = (dir.join("full"), dir.join("cut"));
    let dev = [Default::default()];
    let mut observer = CopyAt { at: 3, from: full.clone(), to: cut.clone() };
    let done = pretrain::<B>(&config, &full, false, &dev, &mut observer).unwrap();
    let s = &done.run.summary;
    assert_eq!((s.steps, s.tokens_this_session, s.seq_len), (6, 6 * 4 * 16, 16));
    assert!(s.ppl_after < s.ppl_before, "{s:?}");
    assert_eq!(PretrainConfig::load(&full).unwrap(), config);
    let files = RunFiles::in_dir(&full);
    assert!(files.loss_png.is_file() && files.checkpoint.join("trainer_state.json").is_file());
    let recs = read_metrics(&files.metrics).unwrap();
    assert_eq!(recs.iter().filter(|r| r.get("loss").is_some()).count(), 6);
    assert_eq!(recs.iter().filter(|r| r.get("heldout_ppl").is_some()).count(), 3, "steps 0, 3, 6");

    // Resumed at step 3: the same steps 4..6, the same final model, "before" read back.
    let resumed = train::<B>(&config.run, &cut, true, &dev, &mut ()).unwrap();
    assert_eq!(resumed.summary.tokens_this_session, 3 * 4 * 16);
    assert_eq!(records_after(&cut, 3), records_after(&full, 3));
    assert_eq!((resumed.summary.ppl_before, resumed.summary.ppl_after), (s.ppl_before, s.ppl_after));

    // A finished run: nothing trained, nothing appended but the summary, the same perplexity.
    let again = pretrain::<B>(&config, &full, true, &dev, &mut ()).unwrap();
    assert_eq!(again.run.summary.tokens_this_session, 0);
    assert_eq!(again.run.summary.ppl_after, s.ppl_after);
    assert_eq!(read_metrics(&files.metrics).unwrap().len(), recs.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_errors_are_typed() {
    let dir = tmp("errors");
    let config = config(write_corpus(&dir), 2);
    let dev = [Default::default()];
    let bad = PretrainConfig { run: RunConfig { devices: 2, ..config.run.clone() }, ..config.clone() };
    // The config asks for two devices, one is given.
    assert!(matches!(pretrain::<B>(&bad, &dir.join("a"), false, &dev, &mut ()), Err(TrainError::Config(_))));
    assert!(matches!(train::<B>(&config.run, &dir.join("none"), false, &dev, &mut ()), Err(TrainError::Data(_))));
    let fresh = pretrain::<B>(&config, &dir.join("b"), false, &dev, &mut ()).unwrap();
    assert_eq!(fresh.run.summary.steps, 2);
    std::fs::remove_dir_all(dir.join("b").join("checkpoint")).unwrap();
    assert!(matches!(train::<B>(&config.run, &dir.join("b"), true, &dev, &mut ()), Err(TrainError::Config(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}
