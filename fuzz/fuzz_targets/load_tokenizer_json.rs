//! Arbitrary bytes as a `tokenizer.json`: a typed error or a working tokenizer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_tokenizer::{AllowedSpecial, Tokenizer};

fuzz_target!(|data: &[u8]| {
    if let Ok(tok) = Tokenizer::from_tokenizer_json(data) {
        if let Ok(ids) = tok.encode("hello <|endoftext|> wörld 123", &AllowedSpecial::All) {
            let _ = tok.decode_lossy(&ids).unwrap();
        }
    }
});
