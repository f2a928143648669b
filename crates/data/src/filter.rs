//! Heuristic quality filters, in the spirit of the report's "heuristic filtering" of web text.
//!
//! Each measure is a pure function ([`char_len`], [`symbol_word_ratio`],
//! [`duplicate_line_fraction`], [`non_alnum_ratio`]); [`QualityFilter`] applies the ones a
//! [`FilterConfig`] turns on, in a fixed order, plus per-source rules, and records in
//! [`FilterStats`] which filter removed each document (the first that rejects it).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::source::Document;

/// Filter names, as they appear in [`FilterStats::removed`].
pub mod names {
    pub const MIN_CHARS: &str = "min_chars";
    pub const MAX_CHARS: &str = "max_chars";
    pub const SYMBOL_WORD_RATIO: &str = "symbol_word_ratio";
    pub const DUPLICATE_LINES: &str = "duplicate_lines";
    pub const NON_ALNUM_RATIO: &str = "non_alnum_ratio";
    pub const SOURCE: &str = "source";
}

/// Length in Unicode scalar values.
pub fn char_len(text: &str) -> usize {
    text.chars().count()
}

/// Number of whitespace-separated words.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Symbols per word: occurrences of `#`, `...` and `…` divided by the number of words
/// (Gopher's rule against lists of hashtags and truncated snippets). An empty text scores 0.
pub fn symbol_word_ratio(text: &str) -> f64 {
    let words = word_count(text);
    if words == 0 {
        return 0.0;
    }
    let symbols = text.matches('#').count() + text.matches("...").count() + text.matches('…').count();
    symbols as f64 / words as f64
}

/// Fraction of non-empty lines (trimmed) that repeat an earlier line of the same text.
pub fn duplicate_line_fraction(text: &str) -> f64 {
    let mut seen = HashSet::new();
    let (mut total, mut dup) = (0usize, 0usize);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        total += 1;
        if !seen.insert(line) {
            dup += 1;
        }
    }
    if total == 0 {
        0.0
    } else {
        dup as f64 / total as f64
    }
}

/// Fraction of non-whitespace characters that are neither alphanumeric (any script) nor common
/// sentence punctuation (`.,;:!?'"()-`): high for markup, tables of symbols, binary junk.
pub fn non_alnum_ratio(text: &str) -> f64 {
    let (mut total, mut bad) = (0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        total += 1;
        if !(c.is_alphanumeric() || ".,;:!?'\"()-".contains(c)) {
            bad += 1;
        }
    }
    if total == 0 {
        0.0
    } else {
        bad as f64 / total as f64
    }
}

/// Which filters are on and their thresholds; `None` turns a filter off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterConfig {
    /// Remove documents shorter than this many characters.
    pub min_chars: Option<usize>,
    /// Remove documents longer than this many characters.
    pub max_chars: Option<usize>,
    /// Remove documents whose [`symbol_word_ratio`] is above this.
    pub max_symbol_word_ratio: Option<f64>,
    /// Remove documents whose [`duplicate_line_fraction`] is above this.
    pub max_duplicate_line_fraction: Option<f64>,
    /// Remove documents whose [`non_alnum_ratio`] is above this.
    pub max_non_alnum_ratio: Option<f64>,
    /// Remove every document of these sources.
    pub drop_sources: Vec<String>,
    /// If non-empty, keep only documents of these sources.
    pub only_sources: Vec<String>,
}

impl FilterConfig {
    /// Thresholds in the usual range for web text: 200 to 100 000 characters, at most 0.1
    /// symbols per word, 30 % repeated lines, 25 % non-text characters.
    pub fn web_defaults() -> Self {
        Self {
            min_chars: Some(200),
            max_chars: Some(100_000),
            max_symbol_word_ratio: Some(0.1),
            max_duplicate_line_fraction: Some(0.3),
            max_non_alnum_ratio: Some(0.25),
            ..Self::default()
        }
    }

    /// Thresholds for documentation rather than web text (the `pretrain` example's corpus): long
    /// files, code samples and reST markup pass, near-empty files (under 200 characters), symbol
    /// soup (over 0.5 symbols per word, over 60 % non-text characters) and files with more than
    /// half their lines repeated do not.
    pub fn documentation() -> Self {
        Self {
            min_chars: Some(200),
            max_symbol_word_ratio: Some(0.5),
            max_duplicate_line_fraction: Some(0.5),
            max_non_alnum_ratio: Some(0.6),
            ..Self::default()
        }
    }
}

/// What the filters did: documents seen and kept, and how many each filter removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    pub seen: usize,
    pub kept: usize,
    /// Filter name → documents it removed (each document is charged to the first filter that
    /// rejected it).
    pub removed: BTreeMap<String, usize>,
}

impl FilterStats {
    /// Documents removed by `filter` (0 if none).
    pub fn removed_by(&self, filter: &str) -> usize {
        self.removed.get(filter).copied().unwrap_or(0)
    }
    /// Documents removed by all filters together.
    pub fn total_removed(&self) -> usize {
        self.removed.values().sum()
    }
}

type KeepRule = Arc<dyn Fn(&Document) -> bool + Send + Sync>;

/// The configured filters plus custom per-source keep rules, and their statistics.
#[derive(Clone, Default)]
pub struct QualityFilter {
    config: FilterConfig,
    rules: Vec<(String, Option<Arc<str>>, KeepRule)>,
    stats: FilterStats,
}

impl std::fmt::Debug for QualityFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QualityFilter")
            .field("config", &self.config)
            .field("rules", &self.rules.iter().map(|r| &r.0).collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish()
    }
}

impl QualityFilter {
    /// A filter with `config` and no custom rules.
    pub fn new(config: FilterConfig) -> Self {
        Self { config, rules: Vec::new(), stats: FilterStats::default() }
    }

    /// Adds a custom rule named `name`: a document is kept only if `keep` returns true. With
    /// `source = Some(s)` the rule applies only to documents of source `s`.
    pub fn with_rule(
        mut self,
        name: impl Into<String>,
        source: Option<&str>,
        keep: impl Fn(&Document) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.rules.push((name.into(), source.map(Arc::from), Arc::new(keep)));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// The statistics so far.
    pub fn stats(&self) -> &FilterStats {
        &self.stats
    }

    /// The name of the first filter that rejects `doc`, or `None` if it passes. Pure: does not
    /// touch the statistics.
    pub fn check(&self, doc: &Document) -> Option<&str> {
        let c = &self.config;
        let src: &str = &doc.source;
        if c.drop_sources.iter().any(|s| s == src)
            || (!c.only_sources.is_empty() && !c.only_sources.iter().any(|s| s == src))
        {
            return Some(names::SOURCE);
        }
        if c.min_chars.is_some() || c.max_chars.is_some() {
            let n = char_len(&doc.text);
            if c.min_chars.is_some_and(|m| n < m) {
                return Some(names::MIN_CHARS);
            }
            if c.max_chars.is_some_and(|m| n > m) {
                return Some(names::MAX_CHARS);
            }
        }
        if c.max_symbol_word_ratio.is_some_and(|m| symbol_word_ratio(&doc.text) > m) {
            return Some(names::SYMBOL_WORD_RATIO);
        }
        if c.max_duplicate_line_fraction.is_some_and(|m| duplicate_line_fraction(&doc.text) > m) {
            return Some(names::DUPLICATE_LINES);
        }
        if c.max_non_alnum_ratio.is_some_and(|m| non_alnum_ratio(&doc.text) > m) {
            return Some(names::NON_ALNUM_RATIO);
        }
        for (name, source, keep) in &self.rules {
            if source.as_deref().is_none_or(|s| s == src) && !keep(doc) {
                return Some(name);
            }
        }
        None
    }

    /// Checks `doc` and records the outcome; true if it is kept.
    pub fn keep(&mut self, doc: &Document) -> bool {
        self.stats.seen += 1;
        match self.check(doc).map(str::to_owned) {
            None => {
                self.stats.kept += 1;
                true
            }
            Some(name) => {
                *self.stats.removed.entry(name).or_default() += 1;
                false
            }
        }
    }

    /// Filters a document stream lazily; errors pass through untouched.
    pub fn filter<'a, I>(&'a mut self, docs: I) -> impl Iterator<Item = Result<Document>> + 'a
    where
        I: IntoIterator<Item = Result<Document>>,
        I::IntoIter: 'a,
    {
        docs.into_iter().filter(move |d| match d {
            Ok(doc) => self.keep(doc),
            Err(_) => true,
        })
    }
}
