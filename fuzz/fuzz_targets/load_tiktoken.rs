//! Arbitrary bytes as a `.tiktoken` file: a typed error or a working tokenizer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_tokenizer::{AllowedSpecial, Tokenizer, QWEN_PATTERN};

fuzz_target!(|data: &[u8]| {
    if let Ok(tok) = Tokenizer::from_tiktoken(data, vec![("<|endoftext|>".into(), 1_000_000)], QWEN_PATTERN) {
        let ids = tok.encode("hello <|endoftext|> wörld 123", &AllowedSpecial::All).unwrap();
        let _ = tok.decode_lossy(&ids).unwrap();
        let _ = tok.to_tokenizer_json();
    }
});
