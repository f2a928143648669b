//! Encode arbitrary text with the real Qwen vocabulary: the fast pre-tokenizer must equal
//! fancy-regex, encode must round-trip, every allowed-special mode must round-trip, and the
//! stream decoder must reproduce the text. Needs `vocab/qwen.tiktoken` (`bash tools/setup.sh`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qwen_tokenizer::{AllowedSpecial, Pretokenizer, StreamDecoder, Tokenizer, QWEN_PATTERN};

fn tokenizer() -> &'static (Tokenizer, Pretokenizer) {
    static T: OnceLock<(Tokenizer, Pretokenizer)> = OnceLock::new();
    T.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vocab/qwen.tiktoken");
        let tok = Tokenizer::qwen_from_file(path).expect("run `bash tools/setup.sh` first");
        (tok, Pretokenizer::regex(QWEN_PATTERN).unwrap())
    })
}

fuzz_target!(init: { tokenizer(); }, |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (tok, regex) = tokenizer();
    assert_eq!(Pretokenizer::Qwen.pieces(text).unwrap(), regex.pieces(text).unwrap());
    for allowed in [AllowedSpecial::None, AllowedSpecial::All] {
        let ids = tok.encode(text, &allowed).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let mut stream = StreamDecoder::new(tok);
        let streamed: String = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert_eq!(streamed, text);
    }
});
