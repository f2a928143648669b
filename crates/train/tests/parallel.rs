//! Data parallelism through burn-collective (feature `collective`), on the CPU: two replicas on two
//! threads, each with half of the micro-batches, end up with exactly what one trainer computes
//! with all of them (gradient accumulation), step after step.
#![cfg(feature = "collective")]

use burn::backend::{Autodiff, Flex};
use burn::collective::PeerId;
use qwen_data::TokenBatch;
use qwen_model::QwenModel;
use qwen_train::{Schedule, TrainConfig, Trainer, IGNORE_INDEX};

mod common;
use common::config;

type B = Autodiff<Flex>;


/// Micro-batch `i` of step `step`; the second one has ignored targets, so the replicas count
/// different numbers of tokens and the weighting matters.
fn micro(step: u32, i: u32) -> TokenBatch {
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

fn params(t: &Trainer<B>) -> Vec<f32> {
    let m = t.valid_model().model;
    let mut v = m.lm_head.weight.val().into_data().to_vec::<f32>().unwrap();
    v.extend(m.layers[0].self_attn.q_proj.weight.val().into_data().to_vec::<f32>().unwrap());
    v.extend(m.norm.gamma.val().into_data().to_vec::<f32>().unwrap());
    v
}

#[test]
fn two_replicas_equal_one_trainer_with_all_micro_batches() {
    let model = QwenModel::<B>::random(config(), 0.05, &Default::default());
    let cfg = TrainConfig::new(Schedule::new(5e-3, 1, 4), 3);

    let mut single = Trainer::new(model.clone(), cfg).unwrap();
    let single_losses: Vec<f32> =
        (0..3).map(|s| single.train_step(&[micro(s, 0), micro(s, 1)]).unwrap().loss).collect();

    let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u32)
            .map(|peer| {
                let model = model.clone();
                scope.spawn(move || {
                    let mut t = Trainer::new(model, cfg).unwrap();
                    let id = PeerId::from(peer);
                    t.join_collective(id, 2).unwrap();
                    let losses = (0..3).map(|s| t.train_step_collective(&[micro(s, peer)], id).unwrap().loss).collect();
                    t.leave_collective(id).unwrap();
                    (losses, params(&t))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let expected = params(&single);
    for (peer, (losses, p)) in results.iter().enumerate() {
        for (a, b) in losses.iter().zip(&single_losses) {
            assert!((a - b).abs() < 1e-5, "peer {peer}: losses {losses:?} vs {single_losses:?}");
        }
        let d = p.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-5, "peer {peer}: parameters differ from the single trainer by {d}");
    }
    assert_eq!(results[0].1, results[1].1, "replicas must stay identical");
}
