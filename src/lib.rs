//! Re-exports of the stack's crates.
pub use qwen_tokenizer as tokenizer;
