//! What the training tests share: the tiny Qwen2 config (hidden 32, 2 layers, 4 heads, 2 KV heads,
//! vocab 64).

use qwen_model::QwenConfig;

#[allow(dead_code)]
pub fn config() -> QwenConfig {
    QwenConfig::from_json(config_json()).unwrap()
}

/// [`config`] as `config.json`.
#[allow(dead_code)]
pub fn config_json() -> serde_json::Value {
    serde_json::json!({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": false, "torch_dtype": "float32"
    })
}
