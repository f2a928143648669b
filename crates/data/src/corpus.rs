//! Corpus preparation in one call: the stages of this crate wired together the way a pretraining
//! run uses them, from raw files to token shards and a vocabulary trained on the same documents.
//!
//! [`prepare`] streams every [`SourceSpec`] (a folder, a text file or a `.jsonl` file, see
//! [`open_source`]) through a seeded weighted [`Mixer`] → [`QualityFilter`] → [`Dedup`] (exact,
//! then MinHash) → a held-out split by a seeded hash of each document's text (so the split does
//! not depend on order or on the other documents) → a BPE vocabulary trained on the training
//! documents only ([`BpeTrainer`]) → packed `QWTK` shards (training documents shuffled with the
//! seed, held-out ones in order). Everything it writes goes under one output folder, named by
//! [`CorpusFiles`]:
//!
//! ```text
//! OUT/data/train.jsonl  OUT/data/heldout.jsonl     the cleaned documents ({"source", "text"})
//! OUT/data/train.qwtk   OUT/data/heldout.qwtk      token shards
//! OUT/data/corpus.json                             the CorpusConfig and the CorpusReport
//! OUT/tokenizer.json    OUT/tokenizer.tiktoken     the trained vocabulary, in both formats
//! ```
//!
//! The [`CorpusReport`] it returns counts what each stage read, kept and removed. The library
//! prints nothing; a caller reports from the [`CorpusReport`].
//!
//! ```no_run
//! use qwen_data::corpus::{prepare, CorpusConfig, SourceSpec};
//!
//! let config = CorpusConfig { vocab_size: 1024, ..CorpusConfig::new(vec![SourceSpec::new("corpus/docutils")]) };
//! let prepared = prepare(&config, "runs/demo".as_ref())?;
//! println!("{} training tokens", prepared.report.train_tokens);
//! # Ok::<(), qwen_data::DataError>(())
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use qwen_tokenizer::train::{BpeTrainer, TrainerConfig};
use qwen_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::dedup::{Dedup, DedupConfig, DedupStats};
use crate::error::{DataError, Result};
use crate::filter::{FilterConfig, FilterStats, QualityFilter};
use crate::mix::{MixSource, MixStats, Mixer};
use crate::pack::{pack_to_shard, PackConfig, ENDOFTEXT};
use crate::rng::hash_bytes;
use crate::shard::ShardWriter;
use crate::source::{DocStream, FolderSource, JsonlSource, TextFileSource, TextMode};

/// The special tokens of a trained vocabulary unless configured otherwise (ChatML's, as Qwen's).
pub const DEFAULT_SPECIALS: [&str; 3] = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"];

/// One input of the mixture: a folder (every file; `.jsonl` read as `{"text": ...}`), a text
/// file (one document) or a `.jsonl` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub path: PathBuf,
    /// Mixture weight (finite, > 0): shapes the interleave order.
    #[serde(default = "one")]
    pub weight: f64,
    /// Passes over the source (upsampling); at least 1.
    #[serde(default = "one_pass")]
    pub repeat: usize,
}

fn one() -> f64 {
    1.0
}

fn one_pass() -> usize {
    1
}

impl SourceSpec {
    /// `path`, weight 1, read once.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), weight: 1.0, repeat: 1 }
    }
}

/// Everything that decides what [`prepare`] writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusConfig {
    pub sources: Vec<SourceSpec>,
    pub filter: FilterConfig,
    pub dedup: DedupConfig,
    /// Fraction of documents held out (chosen by a hash of their text with `seed`), in (0, 1).
    pub heldout_fraction: f64,
    /// Ordinary ids of the trained BPE vocabulary (256 bytes + merges); specials come on top.
    pub vocab_size: usize,
    /// Special tokens, numbered after the ordinary ids; must include `<|endoftext|>`.
    pub specials: Vec<String>,
    /// Seeds the mixture, the held-out split and the training shard's shuffle.
    pub seed: u64,
}

impl CorpusConfig {
    /// `sources` with the defaults of the `pretrain` example: [`FilterConfig::documentation`],
    /// default dedup, 8% held out, 4,096 ordinary ids plus [`DEFAULT_SPECIALS`], seed 1234.
    pub fn new(sources: Vec<SourceSpec>) -> Self {
        Self {
            sources,
            filter: FilterConfig::documentation(),
            dedup: DedupConfig::default(),
            heldout_fraction: 0.08,
            vocab_size: 4096,
            specials: DEFAULT_SPECIALS.iter().map(|s| s.to_string()).collect(),
            seed: 1234,
        }
    }

    /// Checks what can be checked without reading the sources.
    ///
    /// # Errors
    /// [`DataError::Config`] for no sources, a weight that is not finite and positive, a repeat of
    /// 0, a held-out fraction outside (0, 1), a vocabulary smaller than 256 ids, or specials without
    /// `<|endoftext|>` (packing puts it after every document).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(DataError::Config(msg));
        if self.sources.is_empty() {
            return bad("the corpus has no sources".into());
        }
        for s in &self.sources {
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return bad(format!("source {} has weight {}, must be finite and > 0", s.path.display(), s.weight));
            }
            if s.repeat == 0 {
                return bad(format!("source {} has repeat 0", s.path.display()));
            }
        }
        if !(self.heldout_fraction > 0.0 && self.heldout_fraction < 1.0) {
            return bad(format!("heldout_fraction {} must be in (0, 1)", self.heldout_fraction));
        }
        if self.vocab_size < 256 {
            return bad(format!("vocab_size {} is below the 256 byte tokens", self.vocab_size));
        }
        if !self.specials.iter().any(|s| s == ENDOFTEXT) {
            return bad(format!("specials {:?} lack {ENDOFTEXT}", self.specials));
        }
        Ok(())
    }

    /// Whether a document with `text` goes to the held-out set.
    pub fn is_heldout(&self, text: &str) -> bool {
        let threshold = (self.heldout_fraction.clamp(0.0, 1.0) * 1e6) as u64;
        hash_bytes(text.as_bytes(), self.seed) % 1_000_000 < threshold
    }
}

/// Where [`prepare`] puts its files under an output folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusFiles {
    pub train_jsonl: PathBuf,
    pub heldout_jsonl: PathBuf,
    pub train_shard: PathBuf,
    pub heldout_shard: PathBuf,
    /// The [`CorpusConfig`] and [`CorpusReport`] as JSON.
    pub corpus_json: PathBuf,
    pub tokenizer_json: PathBuf,
    pub tokenizer_tiktoken: PathBuf,
}

impl CorpusFiles {
    /// The layout under `out` (see the module docs).
    pub fn in_dir(out: &Path) -> Self {
        let data = out.join("data");
        Self {
            train_jsonl: data.join("train.jsonl"),
            heldout_jsonl: data.join("heldout.jsonl"),
            train_shard: data.join("train.qwtk"),
            heldout_shard: data.join("heldout.qwtk"),
            corpus_json: data.join("corpus.json"),
            tokenizer_json: out.join("tokenizer.json"),
            tokenizer_tiktoken: out.join("tokenizer.tiktoken"),
        }
    }

    /// The trained vocabulary of a prepared corpus.
    pub fn load_tokenizer(&self) -> Result<Tokenizer> {
        Ok(Tokenizer::from_file(&self.tokenizer_json)?)
    }
}

/// What [`prepare`] read, kept and wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusReport {
    /// Documents read from the sources (with repeats), in all and per source.
    pub mixture: MixStats,
    /// Documents the quality filter saw and kept, and how many each filter removed.
    pub filter: FilterStats,
    /// Documents dedup saw and kept, exact and near duplicates removed.
    pub dedup: DedupStats,
    pub train_documents: usize,
    pub heldout_documents: usize,
    /// UTF-8 bytes of the training and held-out documents.
    pub train_bytes: usize,
    pub heldout_bytes: usize,
    /// Ids of the trained vocabulary, specials included.
    pub vocab_size: usize,
    pub specials: usize,
    pub bpe_seconds: f64,
    /// Tokens in each shard, end-of-text ids included.
    pub train_tokens: u64,
    pub heldout_tokens: u64,
    pub pack_seconds: f64,
    pub files: CorpusFiles,
}

/// A prepared corpus: the trained vocabulary and the report.
#[derive(Debug, Clone)]
pub struct PreparedCorpus {
    pub tokenizer: Tokenizer,
    pub report: CorpusReport,
}

/// `corpus.json`.
#[derive(Serialize)]
struct Record<'a> {
    config: &'a CorpusConfig,
    report: &'a CorpusReport,
}

/// One line of `train.jsonl` / `heldout.jsonl` (keys in sorted order, as before this module).
#[derive(Serialize)]
struct Line<'a> {
    source: &'a str,
    text: &'a str,
}

/// Opens a folder, a `.jsonl` file or a text file as a document stream named after its file name.
pub fn open_source(path: &Path) -> Result<DocStream> {
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(if path.is_dir() {
        Box::new(FolderSource::open(path, TextMode::WholeFile)?.named(name))
    } else if path.extension().is_some_and(|e| e == "jsonl") {
        Box::new(JsonlSource::open(path)?.named(name))
    } else {
        Box::new(TextFileSource::open(path, TextMode::WholeFile)?.named(name))
    })
}

/// A JSON Lines file being written.
struct JsonlWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlWriter {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|e| DataError::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), out: BufWriter::new(file) })
    }

    fn write(&mut self, line: &Line<'_>) -> Result<()> {
        let io = |e| DataError::io(&self.path, e);
        serde_json::to_writer(&mut self.out, line).map_err(|e| io(e.into()))?;
        self.out.write_all(b"\n").map_err(io)
    }

    fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|e| DataError::io(&self.path, e))
    }
}

/// Runs the whole preparation (see the module docs) into `out`, replacing what a previous run
/// wrote there.
///
/// # Errors
/// [`CorpusConfig::validate`]'s; [`DataError::SourceMissing`] for a source path that does not
/// exist; [`DataError::Config`] when the split leaves no training or no held-out document; I/O,
/// malformed JSONL and tokenizer errors as they come.
pub fn prepare(config: &CorpusConfig, out: &Path) -> Result<PreparedCorpus> {
    config.validate()?;
    let files = CorpusFiles::in_dir(out);
    let data_dir = files.train_jsonl.parent().unwrap_or(out);
    std::fs::create_dir_all(data_dir).map_err(|e| DataError::io(data_dir, e))?;
    let mut sources = Vec::with_capacity(config.sources.len());
    for spec in &config.sources {
        if !spec.path.exists() {
            return Err(DataError::SourceMissing { path: spec.path.clone() });
        }
        let path = spec.path.clone();
        let source = MixSource::new(spec.path.display().to_string(), spec.weight, move || open_source(&path));
        sources.push(source.repeat(spec.repeat));
    }
    let mut mixer = Mixer::new(sources, config.seed)?;
    let mut quality = QualityFilter::new(config.filter.clone());
    let mut dedup = Dedup::new(&config.dedup);
    let mut bpe = BpeTrainer::new(TrainerConfig {
        vocab_size: config.vocab_size,
        specials: config.specials.clone(),
        ..TrainerConfig::default()
    })?;
    let mut train = JsonlWriter::create(&files.train_jsonl)?;
    let mut heldout = JsonlWriter::create(&files.heldout_jsonl)?;
    let (mut n_train, mut n_heldout, mut bytes_train, mut bytes_heldout) = (0usize, 0usize, 0usize, 0usize);
    for doc in dedup.filter(quality.filter(mixer.by_ref())) {
        let doc = doc?;
        let line = Line { source: &doc.source, text: &doc.text };
        if config.is_heldout(&doc.text) {
            heldout.write(&line)?;
            n_heldout += 1;
            bytes_heldout += doc.text.len();
        } else {
            bpe.feed(&doc.text)?;
            train.write(&line)?;
            n_train += 1;
            bytes_train += doc.text.len();
        }
    }
    train.finish()?;
    heldout.finish()?;
    if n_train == 0 || n_heldout == 0 {
        return Err(DataError::Config(format!(
            "need both training and held-out documents (got {n_train} / {n_heldout})"
        )));
    }

    let t = Instant::now();
    let tokenizer = bpe.train()?;
    let bpe_seconds = t.elapsed().as_secs_f64();
    tokenizer.save_tokenizer_json(&files.tokenizer_json)?;
    tokenizer.save_tiktoken(&files.tokenizer_tiktoken)?;

    let t = Instant::now();
    let train_tokens = pack_jsonl(&tokenizer, &files.train_jsonl, &files.train_shard, Some(config.seed))?;
    let heldout_tokens = pack_jsonl(&tokenizer, &files.heldout_jsonl, &files.heldout_shard, None)?;
    let report = CorpusReport {
        mixture: mixer.stats().clone(),
        filter: quality.stats().clone(),
        dedup: dedup.stats().clone(),
        train_documents: n_train,
        heldout_documents: n_heldout,
        train_bytes: bytes_train,
        heldout_bytes: bytes_heldout,
        vocab_size: tokenizer.vocab_size(),
        specials: config.specials.len(),
        bpe_seconds,
        train_tokens,
        heldout_tokens,
        pack_seconds: t.elapsed().as_secs_f64(),
        files,
    };
    let json = serde_json::to_vec_pretty(&Record { config, report: &report })
        .map_err(|e| DataError::io(&report.files.corpus_json, e.into()))?;
    std::fs::write(&report.files.corpus_json, json).map_err(|e| DataError::io(&report.files.corpus_json, e))?;
    Ok(PreparedCorpus { tokenizer, report })
}

/// Packs a JSONL file of documents into a shard (shuffled with `seed`, or in order); returns the
/// token count.
fn pack_jsonl(tok: &Tokenizer, jsonl: &Path, shard: &Path, seed: Option<u64>) -> Result<u64> {
    let mut writer = ShardWriter::create(shard, tok.vocab_size())?;
    // The shard is a plain token stream: the window length only matters to the loader.
    let config = PackConfig { seed, ..PackConfig::new(1, 0) };
    let stats = pack_to_shard(tok, JsonlSource::open(jsonl)?, &config, &mut writer)?;
    writer.finish()?;
    Ok(stats.tokens)
}

/// Reads back the [`CorpusConfig`] saved in `OUT/data/corpus.json`.
pub fn saved_config(out: &Path) -> Result<CorpusConfig> {
    #[derive(Deserialize)]
    struct Saved {
        config: CorpusConfig,
    }
    let path = CorpusFiles::in_dir(out).corpus_json;
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| DataError::MalformedJsonl {
        path: path.clone(),
        line: 1,
        reason: e.to_string(),
    })?;
    Ok(saved.config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CorpusConfig {
        CorpusConfig::new(vec![SourceSpec::new("a")])
    }

    #[test]
    fn validation_rejects_what_cannot_work() {
        config().validate().unwrap();
        let cases = [
            CorpusConfig { sources: vec![], ..config() },
            CorpusConfig { sources: vec![SourceSpec { weight: 0.0, ..SourceSpec::new("a") }], ..config() },
            CorpusConfig { sources: vec![SourceSpec { weight: f64::NAN, ..SourceSpec::new("a") }], ..config() },
            CorpusConfig { sources: vec![SourceSpec { repeat: 0, ..SourceSpec::new("a") }], ..config() },
            CorpusConfig { heldout_fraction: 0.0, ..config() },
            CorpusConfig { heldout_fraction: 1.0, ..config() },
            CorpusConfig { vocab_size: 255, ..config() },
            CorpusConfig { specials: vec!["<|im_start|>".into()], ..config() },
        ];
        for c in cases {
            assert!(matches!(c.validate(), Err(DataError::Config(_))), "{c:?}");
        }
    }

    #[test]
    fn config_round_trips_through_json_with_defaults() {
        let c = config();
        let back: CorpusConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let spec: SourceSpec = serde_json::from_str(r#"{"path": "x"}"#).unwrap();
        assert_eq!(spec, SourceSpec::new("x"));
    }

    #[test]
    fn heldout_split_is_a_seeded_function_of_the_text() {
        let c = CorpusConfig { heldout_fraction: 0.5, ..config() };
        let texts: Vec<String> = (0..400).map(|i| format!("document {i}")).collect();
        let held = texts.iter().filter(|t| c.is_heldout(t)).count();
        assert!((150..250).contains(&held), "{held} of 400");
        let other = CorpusConfig { seed: 7, ..c.clone() };
        assert!(texts.iter().any(|t| c.is_heldout(t) != other.is_heldout(t)));
        assert!(texts.iter().all(|t| c.is_heldout(t) == c.clone().is_heldout(t)));
    }
}
