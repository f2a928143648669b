//! Document sources, streamed: a corpus is never held in memory, only the document being read.
//!
//! - [`TextFileSource`]: one plain-text file, either one document per file or one document per
//!   blank-line-separated paragraph block ([`TextMode`]).
//! - [`JsonlSource`]: JSON Lines, one object per line with a string `text` field.
//! - [`FolderSource`]: a folder walked recursively in sorted path order; `.jsonl` files are read
//!   as JSON Lines, every other file as text.
//!
//! Each is an `Iterator<Item = Result<Document>>`. A malformed JSONL record yields an error and
//! the iterator moves on to the next line (the caller decides whether to stop), as does a line past
//! [`MAX_LINE_BYTES`](crate::MAX_LINE_BYTES) ([`DataError::LineTooLong`]); an I/O error ends
//! the stream after it is yielded. Every document carries the name of its source (by default the
//! path given to the constructor, or the name given with `named`) for per-source filters and
//! mixture statistics.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{DataError, Result};

/// One document of a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The name of the source it came from (shared by all documents of that source).
    pub source: Arc<str>,
    /// Its text.
    pub text: String,
}

impl Document {
    /// A document from a source name and text.
    pub fn new(source: impl Into<Arc<str>>, text: impl Into<String>) -> Self {
        Self { source: source.into(), text: text.into() }
    }
}

/// A boxed stream of documents, as the pipeline stages pass them around.
pub type DocStream = Box<dyn Iterator<Item = Result<Document>> + Send>;

/// How a plain-text file is cut into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextMode {
    /// The whole file is one document.
    #[default]
    WholeFile,
    /// Documents are separated by one or more blank (whitespace-only) lines.
    BlankLines,
}

fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path).map(BufReader::new).map_err(|e| DataError::io(path, e))
}

/// Documents from one plain-text file.
pub struct TextFileSource {
    path: PathBuf,
    name: Arc<str>,
    mode: TextMode,
    reader: Option<BufReader<File>>,
    done: bool,
    line: String,
}

impl TextFileSource {
    /// Opens `path`; documents are named after the path.
    pub fn open(path: impl AsRef<Path>, mode: TextMode) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let reader = open(&path)?;
        let name: Arc<str> = path.to_string_lossy().into();
        Ok(Self { path, name, mode, reader: Some(reader), done: false, line: String::new() })
    }

    /// Names the documents' source `name` instead of the path.
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    fn next_block(&mut self) -> Option<Result<String>> {
        let reader = self.reader.as_mut()?;
        let mut doc = String::new();
        loop {
            self.line.clear();
            match reader.read_line(&mut self.line) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(DataError::io(&self.path, e)));
                }
                Ok(0) => {
                    self.done = true;
                    return if doc.is_empty() { None } else { Some(Ok(doc)) };
                }
                Ok(_) => {
                    if self.line.trim().is_empty() {
                        if !doc.is_empty() {
                            return Some(Ok(doc));
                        }
                    } else {
                        doc.push_str(&self.line);
                    }
                }
            }
        }
    }
}

impl Iterator for TextFileSource {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let text = match self.mode {
            TextMode::WholeFile => {
                self.done = true;
                let mut text = String::new();
                match self.reader.take()?.read_to_string(&mut text) {
                    Ok(_) => Ok(text),
                    Err(e) => Err(DataError::io(&self.path, e)),
                }
            }
            TextMode::BlankLines => match self.next_block()? {
                Ok(mut t) => {
                    let trimmed = t.trim_end().len();
                    t.truncate(trimmed);
                    Ok(t)
                }
                Err(e) => Err(e),
            },
        };
        if self.done {
            self.reader = None;
        }
        Some(text.map(|text| Document { source: self.name.clone(), text }))
    }
}

/// Documents from a JSON Lines file: one object per non-empty line, its `text` field a string.
pub struct JsonlSource {
    path: PathBuf,
    name: Arc<str>,
    reader: Option<BufReader<File>>,
    line_no: usize,
    line: String,
}

impl JsonlSource {
    /// Opens `path`; documents are named after the path.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let reader = open(&path)?;
        let name: Arc<str> = path.to_string_lossy().into();
        Ok(Self { path, name, reader: Some(reader), line_no: 0, line: String::new() })
    }

    /// Names the documents' source `name` instead of the path.
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    fn parse(&self) -> Result<String> {
        let value: serde_json::Value = serde_json::from_str(&self.line).map_err(|e| DataError::MalformedJsonl {
            path: self.path.clone(),
            line: self.line_no,
            reason: e.to_string(),
        })?;
        let serde_json::Value::Object(mut map) = value else {
            return Err(DataError::MalformedJsonl {
                path: self.path.clone(),
                line: self.line_no,
                reason: "not a JSON object".into(),
            });
        };
        match map.remove("text") {
            Some(serde_json::Value::String(s)) => Ok(s),
            _ => Err(DataError::MissingText { path: self.path.clone(), line: self.line_no }),
        }
    }
}

impl Iterator for JsonlSource {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let reader = self.reader.as_mut()?;
            match crate::line::read_line(reader, &mut self.line, &self.path, self.line_no + 1) {
                Err(e @ DataError::LineTooLong { .. }) => {
                    self.line_no += 1;
                    return Some(Err(e));
                }
                Err(e) => {
                    self.reader = None;
                    return Some(Err(e));
                }
                Ok(0) => {
                    self.reader = None;
                    return None;
                }
                Ok(_) => {
                    self.line_no += 1;
                    if self.line.trim().is_empty() {
                        continue;
                    }
                    return Some(self.parse().map(|text| Document { source: self.name.clone(), text }));
                }
            }
        }
    }
}

/// Lists the files under `dir`, recursively, in sorted path order.
pub fn walk_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        if meta.is_dir() {
            out.extend(walk_sorted(&path)?);
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(out)
}

/// Documents from every file under a folder, in sorted path order. Only the list of paths is
/// read up front; files are opened one at a time.
pub struct FolderSource {
    files: VecDeque<PathBuf>,
    name: Arc<str>,
    mode: TextMode,
    current: Option<DocStream>,
}

impl FolderSource {
    /// Walks `dir`; text files are cut with `mode`, `.jsonl` files are read as JSON Lines.
    /// Documents are named after `dir`.
    pub fn open(dir: impl AsRef<Path>, mode: TextMode) -> Result<Self> {
        let dir = dir.as_ref();
        let files = walk_sorted(dir)?.into();
        Ok(Self { files, name: dir.to_string_lossy().into(), mode, current: None })
    }

    /// Keeps only files whose extension is one of `exts` (without the dot, e.g. `["txt", "jsonl"]`).
    pub fn with_extensions<S: Into<String>>(mut self, exts: impl IntoIterator<Item = S>) -> Self {
        let exts: Vec<String> = exts.into_iter().map(Into::into).collect();
        self.files.retain(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| x == e)));
        self
    }

    /// Names the documents' source `name` instead of the folder path.
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The files still to be read, in order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(PathBuf::as_path)
    }
}

impl Iterator for FolderSource {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(cur) = self.current.as_mut() {
                if let Some(item) = cur.next() {
                    return Some(item);
                }
                self.current = None;
            }
            let path = self.files.pop_front()?;
            let is_jsonl = path.extension().is_some_and(|e| e == "jsonl");
            let opened: Result<DocStream> = if is_jsonl {
                JsonlSource::open(&path).map(|s| Box::new(s.named(self.name.clone())) as DocStream)
            } else {
                TextFileSource::open(&path, self.mode).map(|s| Box::new(s.named(self.name.clone())) as DocStream)
            };
            match opened {
                Ok(s) => self.current = Some(s),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
