//! What the training tests share: the tiny Qwen2 config (hidden 32, 2 layers, 4 heads, 2 KV heads,
//! vocab 64), and the data-parallel tests' micro-batches and parameter sample.

use burn::tensor::backend::AutodiffBackend;
use qwen_data::TokenBatch;
use qwen_model::QwenConfig;
use qwen_train::{Trainer, IGNORE_INDEX};

/// Micro-batch `i` of step `step` (2 x 12 tokens of the 64-token vocabulary); the second one has
/// ignored targets, so replicas count different numbers of tokens and the weighting matters.
#[allow(dead_code)]
pub fn micro(step: u32, i: u32) -> TokenBatch {
    let (batch, seq) = (2, 12);
    let mut out = TokenBatch { batch, seq_len: seq, ..Default::default() };
    for r in 0..batch as u32 {
        let row: Vec<u32> = (0..=seq as u32).map(|t| (t * 5 + r * 11 + i * 17 + step * 3 + t * t % 7) % 64).collect();
        out.inputs.extend(&row[..seq]);
        out.targets.extend(&row[1..]);
    }
    if i == 1 {
        for t in out.targets.iter_mut().take(9) {
            *t = IGNORE_INDEX;
        }
    }
    out
}

/// A sample of `t`'s parameters: the LM head, layer 0's query projection and the final norm.
#[allow(dead_code)]
pub fn params<B: AutodiffBackend>(t: &Trainer<B>) -> Vec<f32> {
    let m = t.valid_model().model;
    let mut v = m.lm_head.weight.val().into_data().to_vec::<f32>().unwrap();
    v.extend(m.layers[0].self_attn.q_proj.weight.val().into_data().to_vec::<f32>().unwrap());
    v.extend(m.norm.gamma.val().into_data().to_vec::<f32>().unwrap());
    v
}

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
