//! The one update step ([`Stepper`]) on its own and inside the pretraining [`Trainer`]: NaN/Inf
//! losses and gradient norms are refused with nothing changed, the trainer's update is exactly the
//! stepper's, and a stepper saved and loaded continues exactly.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use qwen_data::TokenBatch;
use qwen_model::QwenModel;
use qwen_train::persist::{param_ids, stable_ids, with_param_ids, with_stable_ids};
use qwen_train::{constant, OptimConfig, Schedule, Stepper, TrainConfig, TrainError, Trainer};

mod common;
use common::config;

type B = Autodiff<Flex>;

/// A `[4, 3]` linear layer with the given weights (and bias), new parameter ids.
fn linear_with(weight: Vec<f32>, bias: Vec<f32>) -> Linear<B> {
    let device = Default::default();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(weight, [4, 3]), &device)),
        bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(bias, [3]), &device))),
    }
}

fn linear() -> Linear<B> {
    linear_with((0..12).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.1).collect(), vec![0.1, -0.2, 0.05])
}

fn input() -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new((0..8).map(|i| i as f32 * 0.25 - 1.0).collect::<Vec<_>>(), [2, 4]),
        &Default::default(),
    )
}

/// Loss `mean(lin(x)²)` and its gradients.
fn loss_and_grads(lin: &Linear<B>) -> (f32, GradientsParams) {
    let loss = lin.forward(input()).powi_scalar(2).mean();
    let value = loss.clone().into_scalar();
    (value, GradientsParams::from_grads(loss.backward(), lin))
}

fn weights(lin: &Linear<B>) -> Vec<f32> {
    lin.valid().weight.val().into_data().to_vec::<f32>().unwrap()
}

#[test]
fn non_finite_losses_and_norms_are_refused_with_nothing_changed() {
    let start = linear();
    let (optim, schedule) = (OptimConfig::default(), constant(1e-2, 0));
    let mut lin = start.clone();
    let mut stepper = Stepper::<B, Linear<B>>::new(optim, schedule).unwrap();
    let (loss, grads) = loss_and_grads(&lin);
    let applied = stepper.apply(&mut lin, loss, grads).unwrap();
    assert_eq!((applied.step, stepper.step()), (1, 1));
    assert_eq!(applied.lr, 1e-2);

    let before = weights(&lin);
    let (_, grads) = loss_and_grads(&lin);
    let err = stepper.apply(&mut lin, f32::NAN, grads).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { step: 1, what: "loss" }), "{err}");
    // A NaN gradient with a finite loss: the norm is refused.
    let (loss, _) = loss_and_grads(&lin);
    let mut nan = GradientsParams::new();
    nan.register(lin.weight.id, Tensor::<Flex, 2>::full([4, 3], f32::NAN, &Default::default()));
    let err = stepper.apply(&mut lin, loss, nan).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { step: 1, what: "gradient norm" }), "{err}");
    assert_eq!(weights(&lin), before);
    assert_eq!(stepper.step(), 1);

    // Nor did the optimizer state move: the next update equals that of a stepper that never saw
    // the refused ones.
    let mut twin = start;
    let mut clean = Stepper::<B, Linear<B>>::new(optim, schedule).unwrap();
    for _ in 0..2 {
        let (loss, grads) = loss_and_grads(&twin);
        clean.apply(&mut twin, loss, grads).unwrap();
    }
    let (loss, grads) = loss_and_grads(&lin);
    stepper.apply(&mut lin, loss, grads).unwrap();
    assert_eq!(weights(&lin), weights(&twin));
    assert!(Stepper::<B, Linear<B>>::new(OptimConfig { beta_1: 1.5, ..optim }, schedule).is_err());
}

/// Two rows of 8 tokens cut from one stream (targets shifted by one).
fn batch(seed: u32) -> TokenBatch {
    let ids: Vec<u32> = (0..18).map(|i| (i * 11 + seed * 5 + i * i % 3) % 64).collect();
    let (inputs, targets) = ([&ids[0..8], &ids[9..17]].concat(), [&ids[1..9], &ids[10..18]].concat());
    TokenBatch { inputs, targets, batch: 2, seq_len: 8, segments: Vec::new() }
}

/// The pretraining trainer's update is the stepper's: the same loss and gradients through a bare
/// [`Stepper`] give bit-identical weights, step after step.
#[test]
fn the_trainer_updates_through_the_stepper() {
    let model = QwenModel::<B>::random(config(), 0.05, &Default::default());
    let cfg = TrainConfig::new(Schedule::new(5e-3, 1, 4), 1);
    let mut trainer = Trainer::new(model.clone(), cfg).unwrap();
    let mut module = model.model.clone();
    let mut stepper = Stepper::new(cfg.optim, cfg.schedule).unwrap();
    for s in 0..3 {
        let batches = [batch(s)];
        let (loss, grads, _) = trainer.loss_and_grads(&batches).unwrap();
        let applied = stepper.apply(&mut module, loss, grads).unwrap();
        let stats = trainer.train_step(&batches).unwrap();
        assert_eq!(
            (stats.step, stats.lr, stats.grad_norm, stats.loss),
            (applied.step, applied.lr, applied.grad_norm, loss)
        );
        let a = trainer.model().model.valid().lm_head.weight.val().into_data();
        let b = module.valid().lm_head.weight.val().into_data();
        assert_eq!(a, b, "step {s}");
    }
}

/// A stepper saved and loaded onto a copy of the module with other parameter ids (as loading from
/// safetensors gives) continues exactly as the one that never stopped; the saved record does not
/// depend on the ids (the same bytes from either copy).
#[test]
fn a_saved_stepper_continues_exactly() {
    let dir = std::env::temp_dir().join(format!("qwen-train-stepper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (optim, schedule) = (OptimConfig::default(), Schedule::new(1e-2, 1, 6));
    let mut a = linear();
    let mut straight = Stepper::<B, Linear<B>>::new(optim, schedule).unwrap();
    for _ in 0..2 {
        let (loss, grads) = loss_and_grads(&a);
        straight.apply(&mut a, loss, grads).unwrap();
    }
    let state = straight.save(&a, dir.join("optimizer")).unwrap();
    assert_eq!((state.step, state.params), (2, 2));
    // A copy of the weights with the ids a loaded module gets (not the original's).
    let values = |t: Tensor<Flex, 2>| t.into_data().to_vec::<f32>().unwrap();
    let bias = a.valid().bias.unwrap().val().into_data().to_vec::<f32>().unwrap();
    let mut b = with_stable_ids::<B, _>(linear_with(values(a.valid().weight.val()), bias));
    assert_eq!(param_ids::<B, _>(&b), stable_ids(2));
    assert_ne!(param_ids::<B, _>(&b), param_ids::<B, _>(&a));
    let mut resumed =
        Stepper::<B, Linear<B>>::load(optim, schedule, &state, dir.join("optimizer"), &b, &Default::default()).unwrap();
    assert_eq!(resumed.step(), 2);
    // The record saved from the copy is byte for byte the original's.
    resumed.save(&b, dir.join("again")).unwrap();
    assert_eq!(std::fs::read(dir.join("optimizer.bin")).unwrap(), std::fs::read(dir.join("again.bin")).unwrap());
    for _ in 0..3 {
        let (loss, grads) = loss_and_grads(&a);
        straight.apply(&mut a, loss, grads).unwrap();
        let (loss, grads) = loss_and_grads(&b);
        resumed.apply(&mut b, loss, grads).unwrap();
        assert_eq!(weights(&a), weights(&b));
    }
    // Another parameter count or record layout is refused.
    let wrong = qwen_train::StepperState { params: 3, ..state.clone() };
    let load = |s: &qwen_train::StepperState| {
        Stepper::<B, Linear<B>>::load(optim, schedule, s, dir.join("optimizer"), &b, &Default::default())
    };
    assert!(matches!(load(&wrong), Err(TrainError::Mismatch(_))));
    assert!(matches!(load(&qwen_train::StepperState { format: 1, ..state }), Err(TrainError::Mismatch(_))));
    assert!(matches!(with_param_ids::<B, _>(linear(), &[1, 2, 3]), Err(TrainError::Mismatch(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}
