//! Batched = unbatched: prompts of lengths 1..=40 in one left-padded batch give, row by row, the
//! logits and greedy tokens each prompt gives alone, on the committed reference checkpoints
//! (Qwen2 MHA, GQA, sliding window; Qwen-1 dynamic NTK with and without LogN, whose `seq_length`
//! of 16 puts rows on both sides of it, so each row gets its own NTK alpha and LogN factors).

use std::path::PathBuf;

use burn::backend::Flex;
use qwen_model::{GenerateConfig, KvCache, Logits, QwenModel, SamplingConfig};

type B = Flex;

/// Max |logit difference| between a row in a padded batch and the same prompt alone.
const TOLERANCE: f32 = 1e-5;

const CASES: [&str; 5] = ["qwen2_mha", "qwen2_gqa", "qwen2_sliding", "qwen1_ntk_logn", "qwen1_dynamic_ntk"];

fn load(case: &str) -> QwenModel<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model").join(case);
    qwen_model::load(&dir, &Default::default()).unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// Prompt `n`: `n` ids, different per prompt.
fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    (1..=40u32).map(|n| (0..n).map(|i| (i * 31 + n * 17 + 3) % vocab as u32).collect()).collect()
}

fn values(t: burn::tensor::Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn padded_batch_logits_equal_each_prompt_alone() {
    for case in CASES {
        let model = load(case);
        let v = model.config.vocab_size;
        let prompts = prompts(v);
        let batched = values(model.forward(&prompts).unwrap());
        let seq = 40;
        let mut worst = 0f32;
        for (r, p) in prompts.iter().enumerate() {
            let alone = values(model.forward(std::slice::from_ref(p)).unwrap());
            let pad = seq - p.len();
            let row = &batched[(r * seq + pad) * v..(r + 1) * seq * v];
            let d = max_diff(row, &alone);
            assert!(d <= TOLERANCE, "{case}: prompt of {} tokens: max |logit difference| {d:e}", p.len());
            worst = worst.max(d);
        }
        println!("{case}: 40 rows, max |difference| {worst:.1e}");
    }
}

#[test]
fn padded_batch_greedy_tokens_equal_each_prompt_alone() {
    for case in CASES {
        let model = load(case);
        let prompts = prompts(model.config.vocab_size);
        let config = GenerateConfig { max_new_tokens: 6, stop_ids: vec![], sampling: SamplingConfig::default() };
        // Rows leave the batch at different steps: prompt i stops after `1 + i % 6` tokens.
        let limit = |i: usize| 1 + i % 6;
        let mut count = vec![0; prompts.len()];
        let batched = model
            .generate_batch(&prompts, &config, |i, _| {
                count[i] += 1;
                count[i] < limit(i)
            })
            .unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = model.generate(p, &config, |_| true).unwrap();
            assert_eq!(batched[i], alone[..limit(i)], "{case}: prompt of {} tokens", p.len());
        }
    }
}

/// The cache path on its own: a padded prefill, then decode steps, then rows leaving
/// ([`KvCache::retain`]); each remaining row's last logits equal its prompt's alone.
#[test]
fn cached_padded_decode_with_rows_leaving_equals_alone() {
    let model = load("qwen1_ntk_logn");
    let v = model.config.vocab_size;
    let rows: Vec<Vec<u32>> =
        [3usize, 15, 16, 17, 30].iter().map(|&n| (0..n as u32).map(|i| (i * 7 + n as u32) % 256).collect()).collect();
    let mut cache = KvCache::new(&model.config, rows.len(), 40, &model.device());
    model.decode(&model.batch(&rows).unwrap(), &mut cache, Logits::Last).unwrap();
    let mut seqs = rows.clone();
    let mut active: Vec<usize> = (0..rows.len()).collect();
    for step in 0..4u32 {
        let next: Vec<Vec<u32>> = active.iter().map(|&i| vec![(step * 13 + i as u32 * 5) % 256]).collect();
        for (j, &i) in active.iter().enumerate() {
            seqs[i].push(next[j][0]);
        }
        let got = values(model.decode(&model.batch(&next).unwrap(), &mut cache, Logits::Last).unwrap());
        for (j, &i) in active.iter().enumerate() {
            let mut alone = KvCache::new(&model.config, 1, 40, &model.device());
            let want = values(
                model.decode(&model.batch(&[&seqs[i][..rows[i].len()]]).unwrap(), &mut alone, Logits::Last).unwrap(),
            );
            let want = if seqs[i].len() > rows[i].len() {
                let mut last = want;
                for &t in &seqs[i][rows[i].len()..] {
                    last = values(model.decode(&model.batch(&[[t]]).unwrap(), &mut alone, Logits::Last).unwrap());
                }
                last
            } else {
                want
            };
            let d = max_diff(&got[j * v..(j + 1) * v], &want);
            assert!(d <= TOLERANCE, "step {step}, row {i}: {d:e}");
        }
        // Drop the first active row after each step.
        let keep: Vec<usize> = (1..active.len()).collect();
        cache.retain(&keep).unwrap();
        active.remove(0);
        assert_eq!(cache.batch(), active.len());
    }
    assert!(cache.retain(&[5]).is_err(), "a row past the batch is a typed error");
}
