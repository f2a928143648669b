//! Arbitrary bytes as an HF `config.json` (Qwen-1 `qwen` and the HF-layout families: Qwen2,
//! Qwen3, Qwen2-MoE, Qwen3-MoE): a typed error or a validated config, never a panic or an
//! allocation sized by an unchecked number. An accepted config re-reads from the JSON it keeps
//! (what `save` writes back) to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_model::config::MAX_TENSOR_ELEMENTS;
use qwen_model::QwenConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = QwenConfig::from_json_str(text) else { return };
    assert!(config.hidden_size > 0 && config.vocab_size > 0 && config.num_hidden_layers > 0);
    assert!(config.num_attention_heads % config.num_key_value_heads == 0);
    assert!(config.vocab_size.checked_mul(config.hidden_size).is_some_and(|n| n <= MAX_TENSOR_ELEMENTS));
    let again = QwenConfig::from_json(config.source.clone()).expect("an accepted config re-reads");
    assert_eq!(format!("{again:?}"), format!("{config:?}"));
});
