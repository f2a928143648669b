//! Data parallelism through burn-collective (feature `collective`), on the CPU: two replicas on two
//! threads, each with half of the micro-batches, end up with exactly what one trainer computes
//! with all of them (gradient accumulation), step after step.
#![cfg(feature = "collective")]

use burn::backend::{Autodiff, Flex};
use burn::collective::PeerId;
use qwen_model::QwenModel;
use qwen_train::{Schedule, TrainConfig, Trainer};

mod common;
use common::{config, micro, params};

type B = Autodiff<Flex>;

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
