mod common;

use std::sync::Arc;

use qwen_data::{DocStream, Document, MixSource, Mixer, TextFileSource, TextMode};

fn docs(name: &str, n: usize) -> Vec<Document> {
    (0..n).map(|i| Document::new(name, format!("{name}-{i}"))).collect()
}

fn run(seed: u64, k: usize) -> (Vec<String>, qwen_data::MixStats) {
    let sources = vec![
        MixSource::from_docs("web", 3.0, docs("web", 40)),
        MixSource::from_docs("wiki", 1.0, docs("wiki", 10)).repeat(k),
        MixSource::from_docs("code", 1.0, docs("code", 15)),
    ];
    let mut m = Mixer::new(sources, seed).unwrap();
    let out: Vec<String> = m.by_ref().map(|d| d.unwrap().text).collect();
    (out, m.stats().clone())
}

#[test]
fn upsampled_source_appears_k_times() {
    let (out, stats) = run(7, 3);
    assert_eq!(out.len(), 40 + 30 + 15);
    for i in 0..10 {
        assert_eq!(out.iter().filter(|t| **t == format!("wiki-{i}")).count(), 3);
    }
    for i in 0..40 {
        assert_eq!(out.iter().filter(|t| **t == format!("web-{i}")).count(), 1);
    }
    assert_eq!(stats.per_source["web"], 40);
    assert_eq!(stats.per_source["wiki"], 30);
    assert_eq!(stats.per_source["code"], 15);
    assert_eq!(stats.total, 85);
    // Each source keeps its own order.
    let web: Vec<&String> = out.iter().filter(|t| t.starts_with("web")).collect();
    assert!(web.windows(2).all(|w| w[0][4..].parse::<u32>().unwrap() < w[1][4..].parse::<u32>().unwrap()));
}

#[test]
fn same_seed_same_order_different_seed_different() {
    assert_eq!(run(1, 2).0, run(1, 2).0);
    assert_ne!(run(1, 2).0, run(2, 2).0);
}

#[test]
fn max_docs_follows_weights() {
    let sources =
        vec![MixSource::from_docs("a", 3.0, docs("a", 10_000)), MixSource::from_docs("b", 1.0, docs("b", 10_000))];
    let mut m = Mixer::new(sources, 3).unwrap().with_max_docs(4000);
    assert_eq!(m.by_ref().count(), 4000);
    let a = m.stats().per_source["a"] as f64;
    assert!((a / 4000.0 - 0.75).abs() < 0.03, "{a}");
}

#[test]
fn streamed_sources_are_reopened_per_pass() {
    let dir = common::TempDir::new("mix");
    let p = Arc::new(dir.write("hq.txt", "one\n\ntwo\n"));
    let hq =
        MixSource::new("hq", 1.0, move || Ok(Box::new(TextFileSource::open(&*p, TextMode::BlankLines)?) as DocStream))
            .repeat(4);
    let mut m = Mixer::new(vec![hq], 0).unwrap();
    let out: Vec<String> = m.by_ref().map(|d| d.unwrap().text).collect();
    assert_eq!(out, ["one", "two"].repeat(4));
    assert!(Mixer::new(vec![MixSource::from_docs("x", 0.0, vec![])], 0).is_err());
}
