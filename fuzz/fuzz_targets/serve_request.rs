//! Arbitrary bytes as the body of `POST /v1/chat/completions` (first byte even) or
//! `POST /v1/completions` (odd): parsing gives a 400-type error or a request; a chat request's
//! messages become prompt ids through ChatML (Qwen-1) and through Qwen2.5's Jinja template, or a
//! typed error: every id is below the vocabulary size and the prompt ends with an open assistant
//! turn.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use qwen_serve::api::{ChatCompletionRequest, CompletionRequest};
use qwen_serve::ChatFormat;
use qwen_tokenizer::template::ChatTemplate;
use qwen_tokenizer::Tokenizer;

fn fixtures() -> &'static (Tokenizer, [ChatFormat; 2]) {
    static F: OnceLock<(Tokenizer, [ChatFormat; 2])> = OnceLock::new();
    F.get_or_init(|| {
        let tok =
            Tokenizer::qwen_from_file(common::repo("vocab/qwen.tiktoken")).expect("run `bash tools/setup.sh` first");
        let source =
            std::fs::read_to_string(common::repo("tests/fixtures/chat_template/templates/qwen2.5.jinja")).unwrap();
        let template = ChatFormat::Template(Arc::new(ChatTemplate::new(source).unwrap()));
        (tok, [ChatFormat::ChatMl, template])
    })
}

fuzz_target!(init: { fixtures(); }, |data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    if which % 2 == 1 {
        let _ = serde_json::from_slice::<CompletionRequest>(body);
        return;
    }
    let Ok(request) = serde_json::from_slice::<ChatCompletionRequest>(body) else { return };
    let (tok, formats) = fixtures();
    let kwargs = request.chat_template_kwargs.clone().unwrap_or_default();
    let end = tok.encode("<|im_start|>assistant\n", &qwen_tokenizer::AllowedSpecial::All).unwrap();
    for format in formats {
        if let Ok(ids) = format.prompt(tok, &request.messages, &kwargs) {
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            if matches!(format, ChatFormat::ChatMl) || kwargs.is_empty() {
                assert!(ids.ends_with(&end), "the prompt does not end with an open assistant turn");
            }
        }
    }
});
