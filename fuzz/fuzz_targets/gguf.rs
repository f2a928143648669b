//! Arbitrary bytes as a llama.cpp GGUF file (header, metadata, tensor infos, data): parsing gives
//! a typed error or a file whose every tensor lies inside it and dequantizes to exactly
//! `product(dims)` values (or is a typed unsupported-type error); the config and the tokenizer
//! built from its metadata are typed errors or usable, never a panic or an allocation sized by a
//! count the file claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_model::gguf::GgufFile;
use qwen_model::{gguf_config, ModelError};
use qwen_tokenizer::{AllowedSpecial, GgufVocab, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    for (name, info) in &file.tensors {
        let (_, bytes) = file.tensor_bytes(name).expect("a listed tensor is inside the file");
        assert_eq!(bytes.len(), info.size, "{name}");
        match file.tensor_f32(name) {
            Ok((shape, values)) => {
                assert_eq!(values.len(), info.len(), "{name}");
                assert_eq!(shape.iter().product::<usize>(), info.len(), "{name}");
            }
            Err(ModelError::GgufType { .. }) => assert!(!info.ggml_type.dequantizable(), "{name}"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
    if let Ok(config) = gguf_config(&file) {
        assert!(config.hidden_size > 0 && config.vocab_size > 0 && config.num_hidden_layers > 0);
    }
    // The tokenizer in `tokenizer.ggml.*` (what `qwen::gguf::tokenizer` reads, without token types).
    let (Ok(model), Ok(Some(tokens))) = (file.string("tokenizer.ggml.model"), file.opt_strings("tokenizer.ggml.tokens"))
    else {
        return;
    };
    let merges = file.opt_strings("tokenizer.ggml.merges").ok().flatten().unwrap_or_default();
    let pre = file.get("tokenizer.ggml.pre").and_then(|v| v.as_str());
    let vocab = GgufVocab { model, pre, tokens, token_types: None, merges };
    if let Ok(tok) = Tokenizer::from_gguf_vocab(&vocab) {
        if let Ok(ids) = tok.encode("Hello, world 123 <|im_end|>", &AllowedSpecial::All) {
            let _ = tok.decode(&ids);
        }
    }
});
