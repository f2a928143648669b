//! Generation with a KV cache: greedy, temperature, top-k, top-p, repetition penalty, stop ids,
//! seeded sampling and a streaming callback.
//!
//! Logit processing follows HF `generate` order: repetition penalty → temperature → top-k →
//! top-p → sample (greedy when `temperature == 0`).

use burn::tensor::backend::Backend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use burn::tensor::{Tensor, TensorData};

use crate::batch::Batch;
use crate::error::{ModelError, Result};
use crate::qwen::{KvCache, Logits, QwenModel};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1 = off).
    pub top_p: f32,
    /// HF's penalty on tokens already in the sequence (1 = off).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingConfig {
    /// Greedy.
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Sampling(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!("repetition_penalty {} must be > 0", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Picks tokens from logits.
#[derive(Debug)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Result<Self> {
        config.validate()?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self { config, rng })
    }

    /// The next token given the last position's logits and the tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], previous: &[u32]) -> u32 {
        let c = &self.config;
        if c.repetition_penalty != 1.0 {
            let mut seen = previous.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l < 0.0 { *l * c.repetition_penalty } else { *l / c.repetition_penalty };
                }
            }
        }
        if c.temperature == 0.0 {
            return argmax(logits);
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if c.top_k > 0 {
            order.truncate(c.top_k);
        }
        let max = logits[order[0]];
        let mut probs: Vec<f32> = order.iter().map(|&i| ((logits[i] - max) / c.temperature).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if c.top_p < 1.0 {
            // Keep tokens until the cumulative probability reaches top_p (at least one).
            let mut cum = 0.0;
            let keep = probs.iter().position(|&p| {
                cum += p;
                cum >= c.top_p
            });
            let keep = keep.map_or(probs.len(), |k| k + 1);
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (p, &i) in probs.iter().zip(&order) {
            r -= p;
            if r <= 0.0 {
                return i as u32;
            }
        }
        order[order.len() - 1] as u32
    }
}

/// Index of the largest logit (the first on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    /// Generation ends after producing one of these (it is included in the output).
    pub stop_ids: Vec<u32>,
    pub sampling: SamplingConfig,
}

impl<B: Backend> QwenModel<B> {
    /// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each new token
    /// (return `false` to stop early). Returns the new tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &GenerateConfig,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut out = self.generate_batch(&[prompt.to_vec()], config, |_, t| on_token(t))?;
        Ok(out.remove(0))
    }

    /// Generates for several prompts at once: one left-padded batch, one cache, one prefill.
    /// Each row has its own positions, RoPE frequencies, sampler (seeded `seed + index`) and stop
    /// condition; a row that stops leaves the batch ([`KvCache::retain`]) and costs nothing more.
    /// `on_token(prompt index, token)` (return `false` to stop that prompt).
    ///
    /// # Errors
    /// [`ModelError::EmptyInput`] for no prompt or an empty one; [`ModelError::TokenOutOfRange`];
    /// [`ModelError::Sampling`] for bad settings.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerateConfig,
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        let mut results = vec![Vec::new(); prompts.len()];
        let batch = self.batch(prompts)?;
        if config.max_new_tokens == 0 {
            return Ok(results);
        }
        let longest = batch.dims()[1];
        let mut samplers: Vec<Sampler> = (0..prompts.len())
            .map(|i| {
                Sampler::new(SamplingConfig {
                    seed: config.sampling.seed.wrapping_add(i as u64),
                    ..config.sampling.clone()
                })
            })
            .collect::<Result<_>>()?;
        let mut cache = KvCache::new(&self.config, prompts.len(), longest + config.max_new_tokens, &self.device());
        let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
        // `active[j]`: the prompt in row j of the batch.
        let mut active: Vec<usize> = (0..prompts.len()).collect();
        let mut input = batch;
        for _ in 0..config.max_new_tokens {
            let logits = self.decode(&input, &mut cache, Logits::Last)?;
            let v = logits.dims()[2];
            let last: Vec<f32> = logits.into_data().to_vec().map_err(|e| ModelError::Config(format!("{e:?}")))?;
            let mut keep = Vec::with_capacity(active.len());
            let mut next = Vec::with_capacity(active.len());
            for (j, &i) in active.iter().enumerate() {
                let mut row = last[j * v..(j + 1) * v].to_vec();
                let t = samplers[i].sample(&mut row, &seqs[i]);
                seqs[i].push(t);
                results[i].push(t);
                if !config.stop_ids.contains(&t) && on_token(i, t) {
                    keep.push(j);
                    next.push(t);
                }
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                cache.retain(&keep)?;
                active = keep.iter().map(|&j| active[j]).collect();
            }
            let ids = Tensor::from_data(
                TensorData::new(next.iter().map(|&t| t as i64).collect(), [next.len(), 1]),
                &self.device(),
            );
            input = Batch::unpadded(ids);
        }
        Ok(results)
    }
}
