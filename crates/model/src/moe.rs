//! The sparse MLP of the MoE families (Qwen2-MoE, Qwen3-MoE) and its load-balancing loss, as
//! transformers computes them.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::qwen::{project, Mlp, Precision};

/// The sparse MLP of Qwen2-MoE and Qwen3-MoE (transformers' `SparseMoeBlock`): the router `gate`
/// scores every expert, each token runs through its `top_k` best experts and gets their outputs
/// weighted by the router's softmax probabilities (renormalised over the chosen ones when
/// `norm_topk_prob`); Qwen2-MoE adds a shared expert gated by `sigmoid(shared_expert_gate(x))`.
///
/// Dispatch is grouped: the router's probabilities come to the host (`[tokens, experts]`, small),
/// the tokens of each expert are gathered into one matrix, the expert runs once on it, and its
/// weighted rows are added back in place. An expert no token chose costs nothing. Under autodiff
/// the gradient reaches the router through the gathered probabilities and every chosen expert
/// through its rows.
#[derive(Module, Debug)]
pub struct SparseMoe<B: Backend> {
    /// The router, `[hidden, experts]`.
    pub gate: Linear<B>,
    pub experts: Vec<Mlp<B>>,
    pub shared_expert: Option<Mlp<B>>,
    /// `[hidden, 1]`.
    pub shared_expert_gate: Option<Linear<B>>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
}

/// The experts each token goes to: its `k` most probable, most probable first, ties to the lower
/// expert index (a stable sort; `torch.topk` on CPU agrees on the fixtures).
pub fn route(probs: &[f32], experts: usize, k: usize) -> Vec<Vec<usize>> {
    probs
        .chunks_exact(experts)
        .map(|p| {
            let mut order: Vec<usize> = (0..experts).collect();
            // NaN compares as equal: it stays in place instead of panicking the sort.
            order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Equal));
            order.truncate(k);
            order
        })
        .collect()
}

impl<B: Backend> SparseMoe<B> {
    /// `x: [batch, seq, hidden]` → the block's output and the router logits `[tokens, experts]`.
    pub fn forward(&self, x: Tensor<B, 3>, precision: Precision) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let [b, s, h] = x.dims();
        let tokens = b * s;
        let x = x.reshape([tokens, h]);
        let device = x.device();
        let logits = project(&self.gate, x.clone(), precision);
        let experts = logits.dims()[1];
        let probs = softmax(logits.clone(), 1);
        let host: Vec<f32> = probs.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let k = self.top_k.min(experts);
        let chosen = route(&host, experts, k);
        // The chosen probabilities `[tokens, k]`, on the device (the router's gradient path).
        let flat: Vec<i64> = chosen.iter().flatten().map(|&e| e as i64).collect();
        let index = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [tokens, k]), &device);
        let mut weights = probs.gather(1, index);
        if self.norm_topk_prob {
            weights = weights.clone() / weights.sum_dim(1);
        }
        let weights = weights.reshape([tokens * k]);
        // Tokens per expert, in token order, with the slot (t * k + j) of their weight.
        let mut rows: Vec<(Vec<i64>, Vec<i64>)> = vec![(Vec::new(), Vec::new()); experts];
        for (t, es) in chosen.iter().enumerate() {
            for (j, &e) in es.iter().enumerate() {
                rows[e].0.push(t as i64);
                rows[e].1.push((t * k + j) as i64);
            }
        }
        let mut out = Tensor::<B, 2>::zeros([tokens, h], &device);
        for (e, (toks, slots)) in rows.into_iter().enumerate() {
            let n = toks.len();
            if n == 0 {
                continue;
            }
            let toks = Tensor::<B, 1, Int>::from_data(TensorData::new(toks, [n]), &device);
            let slots = Tensor::<B, 1, Int>::from_data(TensorData::new(slots, [n]), &device);
            let y = self.experts[e].forward(x.clone().select(0, toks.clone()), precision);
            let y = y * weights.clone().select(0, slots).unsqueeze_dim::<2>(1);
            out = out.select_assign(0, toks, y, IndexingUpdateOp::Add);
        }
        if let (Some(shared), Some(gate)) = (&self.shared_expert, &self.shared_expert_gate) {
            let g = sigmoid(project(gate, x.clone(), precision));
            out = out + shared.forward(x, precision) * g;
        }
        (out.reshape([b, s, h]), logits)
    }
}

/// transformers' `load_balancing_loss_func` (the Switch Transformer loss) over the router logits
/// `[tokens, experts]` of every sparse layer (the same tokens in each): `experts · Σ_e f_e · P_e`,
/// where `f_e` is the share of the tokens' top-k choices that went to expert `e` (so `Σ f = k`)
/// and `P_e` the mean router probability of `e`, both pooled over the layers. `valid[t]` false
/// leaves token `t` (padding) out, as transformers' attention mask does. `f` counts choices and
/// carries no gradient; `P` does. `None` without sparse layers.
pub fn load_balancing_loss<B: Backend>(
    router_logits: &[Tensor<B, 2>],
    top_k: usize,
    valid: Option<&[bool]>,
) -> Option<Tensor<B, 1>> {
    let [tokens, experts] = router_logits.first()?.dims();
    let device = router_logits[0].device();
    let mask: Vec<f32> = match valid {
        Some(v) => v.iter().map(|&ok| if ok { 1.0 } else { 0.0 }).collect(),
        None => vec![1.0; tokens],
    };
    let mask_t = Tensor::<B, 2>::from_data(TensorData::new(mask.clone(), [tokens, 1]), &device);
    let mut counts = vec![0f32; experts];
    let mut rows = 0f32;
    let mut prob_sum: Option<Tensor<B, 1>> = None;
    for logits in router_logits {
        let probs = softmax(logits.clone(), 1);
        let host: Vec<f32> = probs.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        for (t, chosen) in route(&host, experts, top_k).iter().enumerate() {
            for &e in chosen {
                counts[e] += mask[t];
            }
        }
        rows += mask.iter().sum::<f32>();
        let p = (probs * mask_t.clone()).sum_dim(0).reshape([experts]);
        prob_sum = Some(match prob_sum {
            Some(acc) => acc + p,
            None => p,
        });
    }
    let rows = rows.max(1.0);
    let share =
        Tensor::<B, 1>::from_data(TensorData::new(counts.iter().map(|c| c / rows).collect(), [experts]), &device);
    Some((share * prob_sum? / rows).sum() * experts as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_takes_the_most_probable_and_breaks_ties_to_the_lower_index() {
        let probs = [0.1, 0.4, 0.1, 0.4, /* token 2 */ 0.25, 0.25, 0.25, 0.25];
        assert_eq!(route(&probs, 4, 2), vec![vec![1, 3], vec![0, 1]]);
        assert_eq!(route(&probs, 4, 4)[0], vec![1, 3, 0, 2]);
        // NaN never panics the sort.
        assert_eq!(route(&[f32::NAN, 1.0], 2, 1).len(), 1);
    }
}
