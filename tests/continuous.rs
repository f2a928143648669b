//! Continuous batching on the KV cache: rows prefilled on their own join a running batch
//! ([`KvCache::join`]), leave it ([`KvCache::retain`] + [`KvCache::compact`]) and the cache grows
//! as it decodes ([`KvCache::reserve`]); every row gets, step by step, the logits it gets decoded
//! alone (≤ 1e-4) and the same greedy tokens. Run on the committed reference checkpoints: Qwen2
//! MHA, GQA, a sliding window shorter than the sequences (window layers), and Qwen-1 dynamic NTK
//! with and without LogN (per-row frequencies and query scales).

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use qwen_model::{Batch, KvCache, Logits, QwenModel};

type B = Flex;

const TOLERANCE: f32 = 1e-4;
const CASES: [&str; 5] = ["qwen2_mha", "qwen2_gqa", "qwen2_sliding", "qwen1_ntk_logn", "qwen1_dynamic_ntk"];
/// Tokens each row generates.
const STEPS: usize = 8;

fn load(case: &str) -> QwenModel<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model").join(case);
    qwen_model::load(&dir, &Default::default()).unwrap_or_else(|e| panic!("{case}: {e}"))
}

fn rows(t: Tensor<B, 3>) -> Vec<Vec<f32>> {
    let v = t.dims()[2];
    let flat: Vec<f32> = t.into_data().to_vec().unwrap();
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(l: &[f32]) -> u32 {
    qwen_model::generate::argmax(l)
}

/// The logits behind each of a prompt's `STEPS` greedy tokens, decoded alone, and the tokens.
fn alone(model: &QwenModel<B>, prompt: &[u32]) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut cache = KvCache::new(&model.config, 1, prompt.len() + STEPS, &model.device());
    let mut input = model.batch(&[prompt.to_vec()]).unwrap();
    let (mut logits, mut tokens) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let l = rows(model.decode(&input, &mut cache, Logits::Last).unwrap()).remove(0);
        let t = argmax(&l);
        logits.push(l);
        tokens.push(t);
        input = model.batch(&[vec![t]]).unwrap();
    }
    (logits, tokens)
}

/// One running row: which prompt, how many tokens it has produced.
struct Row {
    prompt: usize,
    step: usize,
}

#[test]
fn rows_joining_and_leaving_a_running_batch_decode_as_they_do_alone() {
    for case in CASES {
        let model = load(case);
        let vocab = model.config.vocab_size as u32;
        // A long prompt first, then shorter and longer ones join while it decodes.
        let prompts: Vec<Vec<u32>> = [9usize, 3, 20, 5]
            .iter()
            .enumerate()
            .map(|(p, &n)| (0..n as u32).map(|i| (i * 37 + p as u32 * 11 + 5) % vocab).collect())
            .collect();
        let reference: Vec<_> = prompts.iter().map(|p| alone(&model, p)).collect();
        // Step at which each prompt joins; prompt 0 leaves after 5 tokens (before it is done).
        let joins = [0usize, 2, 3, 5];
        let mut running: Vec<Row> = Vec::new();
        let mut cache: Option<KvCache<B>> = None;
        let mut worst = 0f32;
        let mut check = |prompt: usize, step: usize, logits: &[f32]| {
            let (want, tokens) = &reference[prompt];
            let d = max_diff(logits, &want[step]);
            assert!(d <= TOLERANCE, "{case}: prompt {prompt}, token {step}: max |logit difference| {d:e}");
            assert_eq!(argmax(logits), tokens[step], "{case}: prompt {prompt}, token {step}");
            worst = worst.max(d);
        };
        for t in 0..STEPS + 6 {
            // Rows that are done, and prompt 0 at its fifth token (a client that went away), leave.
            let keep: Vec<usize> = (0..running.len())
                .filter(|&j| running[j].step < STEPS && !(running[j].prompt == 0 && running[j].step == 5))
                .collect();
            if keep.len() < running.len() {
                running = keep.iter().map(|&j| Row { prompt: running[j].prompt, step: running[j].step }).collect();
                if keep.is_empty() {
                    cache = None;
                } else if let Some(c) = cache.as_mut() {
                    c.retain(&keep).unwrap();
                    c.compact();
                    assert_eq!(c.left_pad().iter().min(), Some(&0), "{case}: compacted");
                }
            }
            // A decode step for every running row (teacher-forced with the reference tokens).
            if let Some(c) = cache.as_mut() {
                c.reserve(c.len() + 1);
                let last: Vec<i64> = running.iter().map(|r| reference[r.prompt].1[r.step - 1] as i64).collect();
                let ids = Tensor::from_data(TensorData::new(last, [running.len(), 1]), &model.device());
                let logits = rows(model.decode(&Batch::unpadded(ids), c, Logits::Last).unwrap());
                for (r, l) in running.iter_mut().zip(&logits) {
                    check(r.prompt, r.step, l);
                    r.step += 1;
                }
            }
            // Prompts due now are prefilled on their own (room for their prompt only) and join.
            for (p, _) in joins.iter().enumerate().filter(|&(_, &j)| j == t) {
                let mut own = KvCache::new(&model.config, 1, prompts[p].len(), &model.device());
                let l =
                    rows(model.decode(&model.batch(&[prompts[p].clone()]).unwrap(), &mut own, Logits::Last).unwrap());
                check(p, 0, &l[0]);
                running.push(Row { prompt: p, step: 1 });
                match cache.as_mut() {
                    Some(c) => c.join(own).unwrap(),
                    None => cache = Some(own),
                }
                let c = cache.as_ref().unwrap();
                assert_eq!(c.batch(), running.len());
                assert_eq!(c.row_len(running.len() - 1), prompts[p].len());
            }
        }
        assert!(running.is_empty(), "{case}: every row finished");
        println!("{case}: max |difference| {worst:.1e}");
    }
}
