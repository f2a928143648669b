//! Data mixture: several sources interleaved by weight, with upsampling by repetition.
//!
//! A [`MixSource`] is a name, a weight, a repeat count `k` and a way to (re)open its document
//! stream, so a source upsampled `k` times is streamed `k` times rather than held in memory.
//! [`Mixer`] is a seeded weighted interleave: at each step it picks one of the sources that still
//! has documents, with probability proportional to its weight, and emits that source's next
//! document. Without a cap every document of every source appears exactly `repeat` times and the
//! weights shape only the order (how evenly each source is spread through the output); with
//! [`Mixer::with_max_docs`] the output stops early and the weights set the proportions.
//! Emitted documents are counted per source in [`MixStats`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng::SplitMix64;
use crate::source::{DocStream, Document};

type Opener = Box<dyn FnMut() -> Result<DocStream> + Send>;

/// One source of a mixture.
pub struct MixSource {
    name: Arc<str>,
    weight: f64,
    repeat: usize,
    open: Opener,
}

impl MixSource {
    /// A source called `name`, weight `weight`, read once; `open` is called once per pass.
    pub fn new(
        name: impl Into<Arc<str>>,
        weight: f64,
        open: impl FnMut() -> Result<DocStream> + Send + 'static,
    ) -> Self {
        Self { name: name.into(), weight, repeat: 1, open: Box::new(open) }
    }

    /// A source over documents already in memory (cloned on each pass).
    pub fn from_docs(name: impl Into<Arc<str>>, weight: f64, docs: Vec<Document>) -> Self {
        let docs = Arc::new(docs);
        Self::new(name, weight, move || {
            let docs = docs.clone();
            Ok(Box::new((0..docs.len()).map(move |i| Ok(docs[i].clone()))) as DocStream)
        })
    }

    /// Upsamples the source: its documents are streamed `k` times in all.
    pub fn repeat(mut self, k: usize) -> Self {
        self.repeat = k;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How many documents each source contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixStats {
    /// Source name → documents emitted.
    pub per_source: BTreeMap<String, usize>,
    /// Documents emitted in all.
    pub total: usize,
}

struct Active {
    src: MixSource,
    passes: usize,
    current: Option<DocStream>,
    done: bool,
}

/// A seeded weighted interleave of several sources; an `Iterator<Item = Result<Document>>`.
pub struct Mixer {
    sources: Vec<Active>,
    rng: SplitMix64,
    stats: MixStats,
    max_docs: Option<usize>,
}

impl Mixer {
    /// Mixes `sources` with `seed`. Weights must be finite and positive.
    pub fn new(sources: Vec<MixSource>, seed: u64) -> Result<Self> {
        let mut stats = MixStats::default();
        for s in &sources {
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return Err(DataError::Config(format!(
                    "mixture source {:?} has weight {}, must be finite and > 0",
                    s.name, s.weight
                )));
            }
            stats.per_source.insert(s.name.to_string(), 0);
        }
        let sources =
            sources.into_iter().map(|src| Active { done: src.repeat == 0, src, passes: 0, current: None }).collect();
        Ok(Self { sources, rng: SplitMix64::new(seed), stats, max_docs: None })
    }

    /// Stops after `n` documents.
    pub fn with_max_docs(mut self, n: usize) -> Self {
        self.max_docs = Some(n);
        self
    }

    pub fn stats(&self) -> &MixStats {
        &self.stats
    }

    fn pick(&mut self) -> Option<usize> {
        let total: f64 = self.sources.iter().filter(|s| !s.done).map(|s| s.src.weight).sum();
        if total <= 0.0 {
            return None;
        }
        let mut x = self.rng.next_f64() * total;
        let mut last = None;
        for (i, s) in self.sources.iter().enumerate().filter(|(_, s)| !s.done) {
            last = Some(i);
            if x < s.src.weight {
                return Some(i);
            }
            x -= s.src.weight;
        }
        last
    }
}

impl Iterator for Mixer {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.max_docs.is_some_and(|m| self.stats.total >= m) {
            return None;
        }
        loop {
            let i = self.pick()?;
            let s = &mut self.sources[i];
            if s.current.is_none() {
                if s.passes >= s.src.repeat {
                    s.done = true;
                    continue;
                }
                s.passes += 1;
                match (s.src.open)() {
                    Ok(stream) => s.current = Some(stream),
                    Err(e) => {
                        s.done = true;
                        return Some(Err(e));
                    }
                }
            }
            match s.current.as_mut().and_then(Iterator::next) {
                None => s.current = None,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(doc)) => {
                    *self.stats.per_source.entry(s.src.name.to_string()).or_default() += 1;
                    self.stats.total += 1;
                    return Some(Ok(doc));
                }
            }
        }
    }
}
