//! The pretraining data pipeline the Qwen report describes, with no dependency on any ML framework.
//!
//! Documents flow through the stages in this order:
//!
//! 1. [`source`]: stream [`Document`]s from text files, folders and JSON Lines, never holding the
//!    whole corpus in memory.
//! 2. [`filter`]: heuristic quality filters ([`QualityFilter`]) that count what each one removed.
//! 3. [`dedup`]: exact dedup on normalized text, then MinHash + LSH near-dup removal ([`Dedup`]).
//! 4. [`mix`]: a seeded, weighted interleave of several sources, with upsampling by repetition
//!    ([`Mixer`]).
//! 5. [`pack`]: seeded shuffle, parallel tokenization, `<|endoftext|>` after every document and
//!    fixed-length windows ([`Sequence`]).
//! 6. [`shard`]: token shards on disk (`QWTK` header + little-endian `u32` ids), memory-mapped
//!    readers and a resumable, seeded [`ShardLoader`].
//! 7. [`batch`]: a framework-free [`Batcher`] trait and [`TokenBatch`]; the training crate maps
//!    those to tensors.
//!
//! [`corpus`] runs stages 1–6 in one call ([`corpus::prepare`]): sources → mixture → filter →
//! dedup → held-out split → a BPE vocabulary trained on the training documents → shards.
//!
//! For alignment, [`chat`] reads conversations and preference pairs from JSON Lines.
//!
//! ```
//! use qwen_data::{Dedup, DedupConfig};
//! // Exact dedup on normalized text, then MinHash + LSH near-duplicates.
//! let mut dedup = Dedup::new(&DedupConfig::default());
//! assert!(dedup.keep("The quick brown fox jumps over the lazy dog, again and again."));
//! assert!(!dedup.keep("the quick  brown fox jumps over the lazy dog, again and again."));
//! ```
//!
//! Every random choice goes through [`rng::SplitMix64`], seeded explicitly, so that a pipeline run
//! twice with the same seeds gives the same bytes (and a resumed loader the same windows) whatever
//! the version of `rand`.

pub mod batch;
pub mod chat;
pub mod corpus;
pub mod dedup;
mod error;
pub mod filter;
pub mod line;
pub mod mix;
pub mod pack;
pub mod rng;
pub mod shard;
pub mod source;

pub use batch::{Batcher, TokenBatch, TokenBatcher};
pub use chat::{ChatJsonl, ChatRecord, Jsonl, PreferenceJsonl, PreferenceRecord, PromptJsonl, PromptRecord};
pub use corpus::{CorpusConfig, CorpusFiles, CorpusReport, PreparedCorpus, SourceSpec};
pub use dedup::{Dedup, DedupConfig, DedupStats, ExactDedup, MinHasher, NearDedup};
pub use error::{DataError, Result};
pub use filter::{FilterConfig, FilterStats, QualityFilter};
pub use line::MAX_LINE_BYTES;
pub use mix::{MixSource, MixStats, Mixer};
pub use pack::{PackConfig, PackStats, Sequence, SequencePacker, ENDOFTEXT};
pub use shard::{LoaderState, ShardLoader, ShardReader, ShardWriter, SHARD_MAGIC, SHARD_VERSION};
pub use source::{DocStream, Document, FolderSource, JsonlSource, TextFileSource, TextMode};
