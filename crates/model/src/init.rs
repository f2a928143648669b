//! The layer layout, written once: [`build`] asks a [`Weights`] source for every tensor by its HF
//! Qwen2 name and shape. Random initialisation ([`RandomWeights`]) and checkpoint loading
//! (`load.rs`, which maps Qwen-1's names and splits its fused `c_attn`) are the two sources.
//! [`build_as`] keeps the dense projections and the head packed ([`crate::packed`]) for CPU
//! inference; each source packs one matrix at a time, so no f32 copy of the model is ever whole.

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::config::QwenConfig;
use crate::error::Result;
use crate::moe::SparseMoe;
use crate::packed::{Packed, PackedMatrix, WeightDtype};
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

    /// A linear layer with its weight packed as `dtype` (not F32): the `Linear` keeps the bias
    /// and a `[1, 1]` placeholder weight. By default the f32 layer is loaded and packed, so one
    /// matrix exists in f32 for a moment; sources that can do better (a GGUF file's own bytes)
    /// override it.
    fn packed_linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        dtype: WeightDtype,
    ) -> Result<(Linear<B>, PackedMatrix)> {
        let l = self.linear(name, d_in, d_out, bias)?;
        let device = l.weight.device();
        let packed = pack_weight(l.weight.into_value(), dtype)?;
        Ok((placeholder(l.bias.map(|b| b.val()), &device), packed))
    }

    /// [`Weights::embedding_and_head`] with the head packed as `dtype` (the tied embedding
    /// then reads its rows from the packed head; an untied embedding stays f32).
    fn packed_embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
        dtype: WeightDtype,
    ) -> Result<(Option<Embedding<B>>, Linear<B>, PackedMatrix)> {
        let (embed, head) = self.embedding_and_head(vocab, hidden, tied)?;
        let device = head.weight.device();
        let packed = pack_weight(head.weight.into_value(), dtype)?;
        Ok((embed, placeholder(None, &device), packed))
    }
}

/// A `Linear` whose weight lives in a [`PackedMatrix`]: a `[1, 1]` zero weight, the bias kept.
pub fn placeholder<B: Backend>(bias: Option<Tensor<B, 1>>, device: &B::Device) -> Linear<B> {
    let device = bias.as_ref().map_or_else(|| device.clone(), |b| b.device());
    Linear { weight: Param::from_tensor(Tensor::zeros([1, 1], &device)), bias: bias.map(Param::from_tensor) }
}

/// A burn `[d_in, d_out]` weight packed as `[d_out, d_in]` rows of `dtype`.
pub fn pack_weight<B: Backend>(w: Tensor<B, 2>, dtype: WeightDtype) -> Result<PackedMatrix> {
    let [d_in, d_out] = w.dims();
    let values = w
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| crate::error::ModelError::Unsupported(format!("reading a weight to pack it: {e:?}")))?;
    PackedMatrix::from_f32_transposed(&values, d_in, d_out, dtype)
}

/// The transformer of `config` with tensors from `weights`: layers in order (input norm, q/k/v/o
/// and Qwen3's q/k norms, post-attention norm, then gate/up/down or the sparse block's router,
/// experts and shared expert), then the final norm, the embedding and the head.
pub fn build<B: Backend>(c: &QwenConfig, weights: &mut impl Weights<B>) -> Result<Qwen<B>> {
    build_as(c, weights, WeightDtype::F32)
}

/// [`build`] with the dense projections (q/k/v/o, gate/up/down) and the LM head kept as `dtype`
/// ([`crate::packed`]): an inference-only model. F32 is [`build`]. The MoE families' experts and
/// routers, norms, biases and an untied embedding stay f32.
pub fn build_as<B: Backend>(c: &QwenConfig, weights: &mut impl Weights<B>, dtype: WeightDtype) -> Result<Qwen<B>> {
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
                packed: Packed::default(),
            })
        };
    let packing = dtype != WeightDtype::F32;
    // `(name, d_in, d_out, bias)` of a group of projections, loaded as they are or packed.
    // Packed, each bias moves into its matrix (added by the kernel) and the leading `fuse`
    // matrices become one (q | k | v, gate | up): one pass over the activations for all of them.
    let group = |weights: &mut dyn Weights<B>,
                 specs: &[(String, usize, usize, bool)],
                 fuse: usize|
     -> Result<(Vec<Linear<B>>, Packed)> {
        let (mut linears, mut packed) = (Vec::new(), Vec::new());
        for (name, d_in, d_out, bias) in specs {
            if packing {
                let (l, mut p) = weights.packed_linear(name, *d_in, *d_out, *bias, dtype)?;
                if let Some(b) = l.bias {
                    p.bias = Some(b.val().into_data().convert::<f32>().into_vec::<f32>().map_err(|e| {
                        crate::error::ModelError::Unsupported(format!("reading the bias of {name}: {e:?}"))
                    })?);
                }
                linears.push(Linear { weight: l.weight, bias: None });
                packed.push(p);
            } else {
                linears.push(weights.linear(name, *d_in, *d_out, *bias)?);
            }
        }
        if !packing {
            return Ok((linears, Packed::default()));
        }
        let rest = packed.split_off(fuse);
        let mut all = vec![PackedMatrix::concat_rows(packed)?];
        all.extend(rest);
        Ok((linears, Packed::new(all)))
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
        let specs = [
            (format!("{p}.self_attn.q_proj"), h, nh * hd, c.qkv_bias),
            (format!("{p}.self_attn.k_proj"), h, nkv * hd, c.qkv_bias),
            (format!("{p}.self_attn.v_proj"), h, nkv * hd, c.qkv_bias),
            (format!("{p}.self_attn.o_proj"), nh * hd, h, c.o_proj_bias),
        ];
        let (attn, attn_packed) = group(weights, &specs, 3)?;
        let [q_proj, k_proj, v_proj, o_proj]: [Linear<B>; 4] =
            attn.try_into().unwrap_or_else(|_| unreachable!("four projections were asked for"));
        let self_attn = Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
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
            packed: attn_packed,
        };
        let post_attention_layernorm = norm(weights.vector(&format!("{p}.post_attention_layernorm.weight"), h)?);
        let dense = c.moe.as_ref().filter(|_| c.is_sparse(i)).is_none();
        let feed_forward = if dense && packing {
            let m = format!("{p}.mlp");
            let specs = [
                (format!("{m}.gate_proj"), h, ff, false),
                (format!("{m}.up_proj"), h, ff, false),
                (format!("{m}.down_proj"), ff, h, false),
            ];
            let (linears, packed) = group(weights, &specs, 2)?;
            let [gate_proj, up_proj, down_proj]: [Linear<B>; 3] =
                linears.try_into().unwrap_or_else(|_| unreachable!("three projections were asked for"));
            let (gate_lora, up_lora, down_lora) = (None, None, None);
            FeedForward::Dense(Mlp { gate_proj, up_proj, down_proj, gate_lora, up_lora, down_lora, packed })
        } else {
            let mut plain = |name: &str, d_in: usize, d_out: usize| weights.linear(name, d_in, d_out, false);
            match c.moe.as_ref().filter(|_| c.is_sparse(i)) {
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
            }
        };
        layers.push(DecoderLayer { input_layernorm, self_attn, post_attention_layernorm, mlp: feed_forward });
    }
    let final_norm = norm(weights.vector("model.norm.weight", h)?);
    let (embed_tokens, lm_head, packed_head) = if packing {
        let (e, l, p) = weights.packed_embedding_and_head(c.vocab_size, h, c.tie_word_embeddings, dtype)?;
        (e, l, Packed::new(vec![p]))
    } else {
        let (e, l) = weights.embedding_and_head(c.vocab_size, h, c.tie_word_embeddings)?;
        (e, l, Packed::default())
    };
    Ok(Qwen { embed_tokens, layers, norm: final_norm, lm_head, packed_head })
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
