//! The layer layout, written once: [`build`] asks a [`Weights`] source for every tensor by its HF
//! Qwen2 name and shape. Random initialisation ([`RandomWeights`]) and checkpoint loading
//! (`load.rs`, which maps Qwen-1's names and splits its fused `c_attn`) are the two sources.

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::config::QwenConfig;
use crate::error::Result;
use crate::moe::SparseMoe;
use crate::qwen::{Attention, DecoderLayer, FeedForward, Mlp, Qwen};

/// Where a model's tensors come from. Names are HF Qwen2's (`model.layers.3.self_attn.q_proj`).
pub trait Weights<B: Backend> {
    /// A linear layer `d_in → d_out` named like HF's `[d_out, d_in]` `{name}.weight` (and
    /// `{name}.bias`), stored `[d_in, d_out]` as burn does.
    fn linear(&mut self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>>;
    /// A `[d]` vector (a norm's weight).
    fn vector(&mut self, name: &str, d: usize) -> Result<Tensor<B, 1>>;
    /// The token embedding `[vocab, hidden]` (`None` when tied to the head) and the LM head.
    fn embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
    ) -> Result<(Option<Embedding<B>>, Linear<B>)>;
}

/// The transformer of `config` with tensors from `weights`: layers in order (input norm, q/k/v/o
/// and Qwen3's q/k norms, post-attention norm, then gate/up/down or the sparse block's router,
/// experts and shared expert), then the final norm, the embedding and the head.
pub fn build<B: Backend>(c: &QwenConfig, weights: &mut impl Weights<B>) -> Result<Qwen<B>> {
    let (h, eps) = (c.hidden_size, c.rms_norm_eps);
    let (nh, nkv, hd, ff) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
    let norm = |gamma: Tensor<B, 1>| RmsNorm { gamma: Param::from_tensor(gamma), epsilon: eps };
    let mlp =
        |weights: &mut dyn FnMut(&str, usize, usize) -> Result<Linear<B>>, p: &str, width: usize| -> Result<Mlp<B>> {
            Ok(Mlp {
                gate_proj: weights(&format!("{p}.gate_proj"), h, width)?,
                up_proj: weights(&format!("{p}.up_proj"), h, width)?,
                down_proj: weights(&format!("{p}.down_proj"), width, h)?,
                gate_lora: None,
                up_lora: None,
                down_lora: None,
            })
        };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let input_layernorm = norm(weights.vector(&format!("{p}.input_layernorm.weight"), h)?);
        let (q_norm, k_norm) = if c.qk_norm {
            let q = norm(weights.vector(&format!("{p}.self_attn.q_norm.weight"), hd)?);
            (Some(q), Some(norm(weights.vector(&format!("{p}.self_attn.k_norm.weight"), hd)?)))
        } else {
            (None, None)
        };
        let self_attn = Attention {
            q_proj: weights.linear(&format!("{p}.self_attn.q_proj"), h, nh * hd, c.qkv_bias)?,
            k_proj: weights.linear(&format!("{p}.self_attn.k_proj"), h, nkv * hd, c.qkv_bias)?,
            v_proj: weights.linear(&format!("{p}.self_attn.v_proj"), h, nkv * hd, c.qkv_bias)?,
            o_proj: weights.linear(&format!("{p}.self_attn.o_proj"), nh * hd, h, c.o_proj_bias)?,
            q_norm,
            k_norm,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            q_lora: None,
            k_lora: None,
            v_lora: None,
            o_lora: None,
            qkv_lora: None,
        };
        let post_attention_layernorm = norm(weights.vector(&format!("{p}.post_attention_layernorm.weight"), h)?);
        let mut plain = |name: &str, d_in: usize, d_out: usize| weights.linear(name, d_in, d_out, false);
        let feed_forward = match c.moe.as_ref().filter(|_| c.is_sparse(i)) {
            None => FeedForward::Dense(mlp(&mut plain, &format!("{p}.mlp"), ff)?),
            Some(moe) => {
                let gate = plain(&format!("{p}.mlp.gate"), h, moe.num_experts)?;
                let experts = (0..moe.num_experts)
                    .map(|e| mlp(&mut plain, &format!("{p}.mlp.experts.{e}"), moe.moe_intermediate_size))
                    .collect::<Result<Vec<_>>>()?;
                let (shared_expert, shared_expert_gate) = match moe.shared_expert_intermediate_size {
                    Some(width) => (
                        Some(mlp(&mut plain, &format!("{p}.mlp.shared_expert"), width)?),
                        Some(plain(&format!("{p}.mlp.shared_expert_gate"), h, 1)?),
                    ),
                    None => (None, None),
                };
                FeedForward::Sparse(SparseMoe {
                    gate,
                    experts,
                    shared_expert,
                    shared_expert_gate,
                    top_k: moe.num_experts_per_tok,
                    norm_topk_prob: moe.norm_topk_prob,
                })
            }
        };
        layers.push(DecoderLayer { input_layernorm, self_attn, post_attention_layernorm, mlp: feed_forward });
    }
    let final_norm = norm(weights.vector("model.norm.weight", h)?);
    let (embed_tokens, lm_head) = weights.embedding_and_head(c.vocab_size, h, c.tie_word_embeddings)?;
    Ok(Qwen { embed_tokens, layers, norm: final_norm, lm_head })
}

/// Normal weights with a standard deviation, norms at 1, drawn eagerly (burn's initializers are
/// lazy, and a lazily initialised module that is cloned would draw different weights per copy).
pub struct RandomWeights<'a, B: Backend> {
    std: f64,
    device: &'a B::Device,
}

impl<'a, B: Backend> RandomWeights<'a, B> {
    pub fn new(std: f64, device: &'a B::Device) -> Self {
        Self { std, device }
    }

    fn normal<const D: usize>(&self, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::<B, 1>::random([shape.iter().product::<usize>()], Distribution::Normal(0.0, self.std), self.device)
            .reshape(shape)
    }
}

impl<B: Backend> Weights<B> for RandomWeights<'_, B> {
    fn linear(&mut self, _name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        Ok(Linear {
            weight: Param::from_tensor(self.normal([d_in, d_out])),
            bias: bias.then(|| Param::from_tensor(self.normal([d_out]))),
        })
    }

    fn vector(&mut self, _name: &str, d: usize) -> Result<Tensor<B, 1>> {
        Ok(Tensor::ones([d], self.device))
    }

    fn embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
    ) -> Result<(Option<Embedding<B>>, Linear<B>)> {
        let embed = (!tied).then(|| Embedding { weight: Param::from_tensor(self.normal([vocab, hidden])) });
        Ok((embed, self.linear("lm_head", hidden, vocab, false)?))
    }
}
