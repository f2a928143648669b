mod common;

use qwen_data::filter::{self, names};
use qwen_data::{Document, FilterConfig, QualityFilter};

fn doc(source: &str, text: &str) -> Document {
    Document::new(source, text)
}

fn good(n: usize, seed: u64) -> String {
    let mut s = common::words(n, seed).join(" ");
    s.push('.');
    s
}

#[test]
fn pure_measures() {
    assert_eq!(filter::char_len("héllo"), 5);
    assert_eq!(filter::symbol_word_ratio("#a #b c d"), 0.5);
    assert_eq!(filter::symbol_word_ratio("and then... more… x"), 0.5);
    assert_eq!(filter::symbol_word_ratio(""), 0.0);
    assert_eq!(filter::duplicate_line_fraction("a\nb\na\n\na\n"), 0.5);
    assert_eq!(filter::duplicate_line_fraction("a\nb"), 0.0);
    assert_eq!(filter::non_alnum_ratio("ab, cd."), 0.0);
    assert_eq!(filter::non_alnum_ratio("a{}|"), 0.75);
}

#[test]
fn each_filter_removes_its_documents_and_counts_them() {
    let config = FilterConfig {
        min_chars: Some(20),
        max_chars: Some(2000),
        max_symbol_word_ratio: Some(0.1),
        max_duplicate_line_fraction: Some(0.3),
        max_non_alnum_ratio: Some(0.2),
        drop_sources: vec!["spam".into()],
        only_sources: vec![],
    };
    let mut f = QualityFilter::new(config).with_rule("code_needs_fn", Some("code"), |d| d.text.contains("fn "));
    let dup_lines = (0..10).map(|i| if i % 2 == 0 { "same line here" } else { "other" }).collect::<Vec<_>>().join("\n");
    let docs = vec![
        doc("web", &good(40, 1)),                                              // kept
        doc("web", "too short"),                                               // min_chars
        doc("web", &good(800, 2)),                                             // max_chars
        doc("web", &format!("{} #tag #tag #tag #tag #tag #tag", good(20, 3))), // symbols
        doc("web", &dup_lines),                                                // duplicate lines
        doc("web", &format!("{} {}", good(10, 4), "{{}}<<>>||@@$$%%^^&&**~~{{}}<<>>||@@$$%%^^&&**~~")), // non-alnum
        doc("spam", &good(40, 5)),                                             // source
        doc("code", "no function here, just plenty of words."),                // custom rule
        doc("code", "fn main() and more words here."),                         // kept
        doc("web", &good(50, 6)),                                              // kept
    ];
    let kept: Vec<Document> = f.filter(docs.into_iter().map(Ok)).map(Result::unwrap).collect();
    assert_eq!(kept.len(), 3);
    let s = f.stats();
    assert_eq!((s.seen, s.kept, s.total_removed()), (10, 3, 7));
    for name in [
        names::MIN_CHARS,
        names::MAX_CHARS,
        names::SYMBOL_WORD_RATIO,
        names::DUPLICATE_LINES,
        names::NON_ALNUM_RATIO,
        names::SOURCE,
        "code_needs_fn",
    ] {
        assert_eq!(s.removed_by(name), 1, "{name}: {s:?}");
    }
    assert!(kept[1].text.starts_with("fn main"));
}

#[test]
fn only_sources_and_disabled_filters() {
    let mut f = QualityFilter::new(FilterConfig { only_sources: vec!["wiki".into()], ..Default::default() });
    assert!(f.keep(&doc("wiki", "x")));
    assert!(!f.keep(&doc("web", "x")));
    assert_eq!(f.stats().removed_by(names::SOURCE), 1);
    // With every threshold off, anything goes.
    let mut none = QualityFilter::new(FilterConfig::default());
    assert!(none.keep(&doc("any", "#### {{}} ...")));
    // check() is pure.
    assert_eq!(none.check(&doc("any", "")), None);
    assert_eq!(none.stats().seen, 1);
}

#[test]
fn errors_pass_through_the_filter() {
    let mut f = QualityFilter::new(FilterConfig { min_chars: Some(100), ..Default::default() });
    let items = vec![Ok(doc("a", "short")), Err(qwen_data::DataError::Config("boom".into()))];
    let out: Vec<_> = f.filter(items).collect();
    assert_eq!(out.len(), 1);
    assert!(out[0].is_err());
}
