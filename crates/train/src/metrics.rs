//! The run's metrics as JSON Lines: one object per record, flushed as it is written, so a
//! crashed run keeps everything up to its last step and a person (or `jq`) can follow it live.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{io, Result, TrainError};

/// An append-only JSONL file.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).map_err(io(&path))?;
        Ok(Self { out: BufWriter::new(file), path })
    }

    /// Opens `path` for appending (a resumed run), creating it if missing.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        Ok(Self { out: BufWriter::new(file), path })
    }

    /// Opens `path` for appending after keeping only the records `keep` accepts, in order and as
    /// they were written (the file is rewritten atomically first). A run resumed from a checkpoint
    /// drops what it logged after that checkpoint, so that the log reads as one uninterrupted run.
    pub fn resume(path: impl AsRef<Path>, mut keep: impl FnMut(&serde_json::Value) -> bool) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            let mut kept = String::with_capacity(text.len());
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                // A line cut short by a kill is not a record: dropped.
                if serde_json::from_str(line).is_ok_and(|v| keep(&v)) {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            crate::persist::write_file_atomically(path, kept.as_bytes())?;
        }
        Self::append(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record as a line and flushes it.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        serde_json::to_writer(&mut self.out, record)
            .map_err(|source| TrainError::State { path: self.path.clone(), source })?;
        self.out.write_all(b"\n").map_err(io(&self.path))?;
        self.out.flush().map_err(io(&self.path))
    }
}

/// Every record of a JSONL file (blank lines skipped).
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<serde_json::Value>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|source| TrainError::State { path: path.into(), source })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_append() {
        let dir = std::env::temp_dir().join(format!("qwen-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.jsonl");
        let mut log = MetricsLog::create(&path).unwrap();
        log.write(&serde_json::json!({"step": 1, "loss": 2.5})).unwrap();
        drop(log);
        let mut log = MetricsLog::append(&path).unwrap();
        log.write(&serde_json::json!({"step": 2, "loss": 2.0})).unwrap();
        let recs = read_metrics(&path).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1]["loss"], 2.0);
        std::fs::write(&path, "{\"step\": 1}\nnot json\n").unwrap();
        assert!(matches!(read_metrics(&path), Err(TrainError::State { .. })));
        // Resuming keeps the accepted records (a torn last line is dropped) and appends after them.
        std::fs::write(&path, "{\"step\": 1}\n{\"step\": 2}\n{\"step\": 3}\n{\"st").unwrap();
        let mut log = MetricsLog::resume(&path, |r| r["step"].as_u64().is_some_and(|s| s <= 2)).unwrap();
        log.write(&serde_json::json!({"step": 3, "loss": 1.0})).unwrap();
        let steps: Vec<_> = read_metrics(&path).unwrap().iter().map(|r| r["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2, 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
