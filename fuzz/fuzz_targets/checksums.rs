//! Arbitrary bytes as a checkpoint's `checksums.json`, verified against a folder holding two
//! real files (one in a subfolder): a typed `Corrupt` error or success, never a panic, never a
//! path outside the folder read.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qwen_train::persist::{verify_checksums, Checksums, CHECKSUMS_FILE};
use qwen_train::TrainError;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch("checksums").join("ckpt");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("weights.bin"), b"abc").unwrap();
        std::fs::write(dir.join("sub/state.json"), b"{}").unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    std::fs::write(dir.join(CHECKSUMS_FILE), data).unwrap();
    match verify_checksums(dir) {
        Ok(()) => {
            let sums: Checksums = serde_json::from_slice(data).expect("verified checksums parse");
            for rel in sums.files.keys() {
                assert!(rel.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{rel:?}");
            }
        }
        Err(TrainError::Corrupt { .. }) => {}
        Err(e) => panic!("not a Corrupt error: {e}"),
    }
});
