//! Chat templates on hostile input. First byte: which template (Qwen2.5, Qwen3 or QwQ as
//! published, or — for 3 — the bytes after the first NUL as the template source); then a JSON
//! array of messages. Rendering gives a typed error or text; encoding with the Qwen vocabulary
//! gives ids that decode back to exactly the rendered text. A fuzzed template never hangs: the
//! renderer runs on bounded fuel.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qwen_tokenizer::template::{ChatTemplate, RenderOptions};
use qwen_tokenizer::Tokenizer;

fn fixtures() -> &'static (Tokenizer, Vec<ChatTemplate>) {
    static F: OnceLock<(Tokenizer, Vec<ChatTemplate>)> = OnceLock::new();
    F.get_or_init(|| {
        let tok =
            Tokenizer::qwen_from_file(common::repo("vocab/qwen.tiktoken")).expect("run `bash tools/setup.sh` first");
        let templates = ["qwen2.5", "qwen3", "qwq"]
            .iter()
            .map(|n| {
                let path = common::repo(&format!("tests/fixtures/chat_template/templates/{n}.jinja"));
                ChatTemplate::new(std::fs::read_to_string(path).unwrap()).unwrap()
            })
            .collect();
        (tok, templates)
    })
}

fuzz_target!(init: { fixtures(); }, |data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let (messages, source) = common::split(rest, 0);
    let Ok(serde_json::Value::Array(messages)) = serde_json::from_slice(messages) else { return };
    let (tok, templates) = fixtures();
    let fuzzed;
    let template = match which % 4 {
        3 => {
            let Ok(source) = std::str::from_utf8(source) else { return };
            let Ok(t) = ChatTemplate::new(source) else { return };
            // Less fuel and output than a served template gets: a runaway loop ends in
            // milliseconds, and no render hands the tokenizer more than 64 KiB (long texts are
            // the `encode` target's; here each execution stays fast).
            fuzzed = t.with_fuel(200_000).with_max_output(64 << 10);
            &fuzzed
        }
        i => &templates[i as usize],
    };
    for options in [RenderOptions::generation(), RenderOptions::generation().with_thinking(false)] {
        let Ok(text) = template.render(&messages, &options) else { continue };
        if let Ok(prompt) = template.encode(tok, &messages, &options) {
            // Two renders agree unless the template reads the clock (`strftime_now`).
            if which % 4 != 3 {
                assert_eq!(prompt.text, text);
            }
            assert_eq!(tok.decode(&prompt.ids).unwrap(), prompt.text);
        }
    }
});
