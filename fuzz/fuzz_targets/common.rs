//! Shared by the targets that read files by path: a scratch folder per process (on tmpfs when
//! `/dev/shm` exists, so that each execution costs no disk I/O).

use std::path::PathBuf;
use std::sync::OnceLock;

/// This process's scratch folder, created once.
#[allow(dead_code)]
pub fn scratch(target: &str) -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("qwen-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// The repository root (for the committed fixtures).
#[allow(dead_code)]
pub fn repo(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(rel)
}

/// Splits the input at the first `sep` byte: (before, after). No separator: (all, empty).
#[allow(dead_code)]
pub fn split(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
