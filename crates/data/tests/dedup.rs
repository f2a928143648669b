mod common;

use common::words;
use qwen_data::dedup::{self, estimated_jaccard, jaccard, normalize, shingle_hashes};
use qwen_data::{Dedup, DedupConfig, Document, MinHasher, NearDedup};

#[test]
fn normalization() {
    assert_eq!(normalize("  Hello\t\tWORLD \n again  "), "hello world again");
}

#[test]
fn exact_duplicates_differing_in_case_and_whitespace_are_removed() {
    let mut d = Dedup::new(&DedupConfig { near: false, ..Default::default() });
    let base = words(50, 7).join(" ");
    let variant = format!("  {}\n", base.to_uppercase().replace(' ', " \n\t "));
    assert!(d.keep(&base));
    assert!(!d.keep(&variant));
    assert!(d.keep(&words(50, 8).join(" ")));
    let s = d.stats();
    assert_eq!((s.seen, s.kept, s.exact_removed, s.near_removed), (3, 2, 1, 0));
}

#[test]
fn minhash_estimates_jaccard() {
    let a = words(200, 1).join(" ");
    let mut w = words(200, 1);
    w[100] = "changed".into();
    let b = w.join(" ");
    let exact = jaccard(&shingle_hashes(&a, 5), &shingle_hashes(&b, 5));
    assert!(exact > 0.9 && exact < 1.0, "{exact}");
    let h = MinHasher::new(5, 256, 42);
    let est = estimated_jaccard(&h.signature(&a), &h.signature(&b));
    assert!((est - exact).abs() < 0.08, "estimate {est} vs exact {exact}");
    let c = words(200, 2).join(" ");
    assert!(estimated_jaccard(&h.signature(&a), &h.signature(&c)) < 0.05);
    // Deterministic for a seed.
    assert_eq!(h.signature(&a), MinHasher::new(5, 256, 42).signature(&a));
}

#[test]
fn near_duplicates_removed_distinct_kept() {
    let mut docs = Vec::new();
    for seed in 0..30u64 {
        docs.push(Document::new("web", words(200, 1000 + seed).join(" ")));
    }
    // Near duplicates of documents 0, 5 and 9: one word changed in 200; and one with a word
    // dropped and the case changed.
    for (i, seed) in [(0usize, 1000u64), (5, 1005), (9, 1009)] {
        let mut w = words(200, seed);
        w[50 + i] = "zzzzzz".into();
        docs.push(Document::new("web", w.join(" ")));
    }
    let mut w = words(200, 1012);
    w.remove(120);
    docs.push(Document::new("web", w.join(" ").to_uppercase()));
    // An exact duplicate in different whitespace.
    docs.push(Document::new("web", words(200, 1020).join("\n\n")));

    let mut d = Dedup::new(&DedupConfig::default());
    let kept: Vec<Document> = d.filter(docs.clone().into_iter().map(Ok)).map(Result::unwrap).collect();
    assert_eq!(kept, docs[..30].to_vec());
    let s = d.stats();
    assert_eq!((s.seen, s.kept, s.exact_removed, s.near_removed), (35, 30, 1, 4));
}

#[test]
fn near_dedup_is_deterministic_and_respects_threshold() {
    // Two documents sharing half their words: a candidate perhaps, but below 0.8.
    let a = words(200, 3);
    let mut b = a.clone();
    for (i, x) in words(100, 4).into_iter().enumerate() {
        b[2 * i] = x;
    }
    let mut n = NearDedup::new(5, 16, 8, 0.8, 1);
    assert!(n.is_new(&a.join(" ")));
    assert!(n.is_new(&b.join(" ")));
    assert!(!n.is_new(&a.join(" ")));
    assert_eq!(n.removed(), 1);
    let _ = dedup::exact_key("x");
}
