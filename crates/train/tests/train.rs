//! End-to-end checks of the training loop on `Autodiff<Flex>` with a tiny Qwen2 config
//! (hidden 32, 2 layers, vocab 64): overfitting, autodiff vs finite differences, clipping,
//! bit-exact resume, and the NaN guard.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use qwen_data::{LoaderState, TokenBatch};
use qwen_model::{Mode, Precision, QwenModel};
use qwen_train::{
    clip_global_norm, cross_entropy, cross_entropy_sum, global_norm, head_cross_entropy_fused_in_chunks, OptimConfig,
    Schedule, TrainConfig, TrainError, Trainer, IGNORE_INDEX,
};

mod common;
use common::config;

type B = Autodiff<Flex>;
type Inner = Flex;

/// `batch` rows of `seq` tokens, targets shifted by one; `seed` varies the content.
fn batch(batch: usize, seq: usize, seed: u32) -> TokenBatch {
    let mut out = TokenBatch { batch, seq_len: seq, ..Default::default() };
    for r in 0..batch as u32 {
        let row: Vec<u32> = (0..=seq as u32).map(|i| (i * 7 + r * 13 + seed * 29 + (i * i) % 5) % 64).collect();
        out.inputs.extend(&row[..seq]);
        out.targets.extend(&row[1..]);
    }
    out
}

fn train_config(peak: f64, warmup: u64, total: u64) -> TrainConfig {
    TrainConfig::new(Schedule::new(peak, warmup, total), 7)
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qwen-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn loss_falls_when_overfitting_one_batch() {
    let model = QwenModel::<B>::random(config(), 0.02, &Default::default());
    let mut t = Trainer::new(model, train_config(1e-2, 3, 30)).unwrap();
    let b = batch(2, 16, 0);
    let first = t.train_step(std::slice::from_ref(&b)).unwrap();
    assert_eq!(first.tokens, 32);
    assert!((first.loss - (64f32).ln()).abs() < 0.1, "initial loss {} ~ ln 64", first.loss);
    let mut last = first;
    for _ in 1..30 {
        last = t.train_step(std::slice::from_ref(&b)).unwrap();
    }
    assert_eq!(last.step, 30);
    eprintln!("overfit: loss {} -> {} (grad norm {} -> {})", first.loss, last.loss, first.grad_norm, last.grad_norm);
    assert!(last.loss < 0.5 * first.loss, "loss {} -> {}", first.loss, last.loss);
}

#[test]
fn ignored_targets_do_not_count() {
    let device = Default::default();
    let model = QwenModel::<Inner>::random(config(), 0.1, &device);
    let b = batch(1, 8, 3);
    let logits = model.forward_mode(std::slice::from_ref(&b.inputs), Mode::Training).unwrap();
    let full = cross_entropy(logits.clone(), &b.targets).unwrap().into_scalar().elem::<f32>();
    let mut masked = b.targets.clone();
    masked[4..].fill(IGNORE_INDEX);
    let part = cross_entropy(logits.clone().narrow(1, 0, 4), &b.targets[..4]).unwrap().into_scalar().elem::<f32>();
    let with_mask = cross_entropy(logits.clone(), &masked).unwrap().into_scalar().elem::<f32>();
    assert!((part - with_mask).abs() < 1e-6, "{part} vs {with_mask}");
    assert!(full.is_finite());
    assert!(matches!(cross_entropy(logits, &[IGNORE_INDEX; 8]), Err(TrainError::Batch(_))));
}

/// Picks one rank-1 parameter of a model.
type PickParam = fn(&mut QwenModel<Inner>) -> &mut Param<Tensor<Inner, 1>>;

/// Loss of the inner model as a function of one rank-1 parameter.
fn loss_with<F: Fn(&mut QwenModel<Inner>) -> &mut Param<Tensor<Inner, 1>>>(
    model: &QwenModel<Inner>,
    which: &F,
    value: Tensor<Inner, 1>,
    b: &TokenBatch,
) -> f64 {
    let mut m = model.clone();
    let p = which(&mut m);
    *p = Param::initialized(p.id, value);
    let rows: Vec<Vec<u32>> = (0..b.batch).map(|i| b.input_row(i).to_vec()).collect();
    let logits = m.forward_mode(&rows, Mode::Training).unwrap();
    cross_entropy(logits, &b.targets).unwrap().into_scalar().elem::<f64>()
}

#[test]
fn autodiff_gradient_matches_finite_differences() {
    let model = QwenModel::<B>::random(config(), 0.1, &Default::default());
    let t = Trainer::new(model, train_config(1e-3, 0, 10)).unwrap();
    let b = batch(2, 8, 1);
    let (_, grads, _) = t.loss_and_grads(std::slice::from_ref(&b)).unwrap();
    let inner = t.valid_model();
    let checks: [(&str, PickParam); 2] = [
        ("final norm gamma", |m| &mut m.model.norm.gamma),
        ("layer 0 q_proj bias", |m| m.model.layers[0].self_attn.q_proj.bias.as_mut().unwrap()),
    ];
    for (name, which) in checks {
        let mut m = inner.clone();
        let p = which(&mut m).clone();
        let g: Tensor<Inner, 1> = grads.get(p.id).expect("gradient present");
        let gnorm = g.clone().square().sum().into_scalar().elem::<f64>().sqrt();
        assert!(gnorm > 1e-4, "{name}: gradient too small to check ({gnorm})");
        // Directional derivative along g/|g| must equal |g|.
        let d = g.div_scalar(gnorm);
        let h = 1e-2;
        let plus = loss_with(&inner, &which, p.val() + d.clone().mul_scalar(h), &b);
        let minus = loss_with(&inner, &which, p.val() - d.mul_scalar(h), &b);
        let fd = (plus - minus) / (2.0 * h);
        let rel = (fd - gnorm).abs() / gnorm;
        assert!(rel < 1e-2, "{name}: finite difference {fd} vs autodiff {gnorm} (rel {rel})");
    }
}

#[test]
fn clipping_scales_to_the_global_norm_and_leaves_small_grads() {
    let model = QwenModel::<B>::random(config(), 0.1, &Default::default());
    let t = Trainer::new(model, train_config(1e-3, 0, 10)).unwrap();
    let module = &t.model().model;
    let (_, mut grads, _) = t.loss_and_grads(&[batch(2, 8, 2)]).unwrap();
    let n = global_norm::<B, _>(module, &grads);
    assert!(n > 0.0 && n.is_finite());

    // Below the threshold: nothing changes.
    let pre = clip_global_norm::<B, _>(module, &mut grads, 2.0 * n);
    assert_eq!(pre, n);
    assert_eq!(global_norm::<B, _>(module, &grads), n);

    // Above: scaled to the threshold.
    let max = n / 4.0;
    let pre = clip_global_norm::<B, _>(module, &mut grads, max);
    assert_eq!(pre, n);
    let after = global_norm::<B, _>(module, &grads);
    assert!(after <= max * (1.0 + 1e-5), "{after} > {max}");
    assert!(after >= max * (1.0 - 1e-5), "{after} << {max}");

    // The report's threshold, 1.0, on a model whose gradient norm is well above it.
    let big = QwenModel::<B>::random(config(), 1.0, &Default::default());
    let t = Trainer::new(big, train_config(1e-3, 0, 10)).unwrap();
    let module = &t.model().model;
    let (_, mut grads, _) = t.loss_and_grads(&[batch(2, 8, 2)]).unwrap();
    let n = global_norm::<B, _>(module, &grads);
    assert!(n > 1.0, "norm {n}");
    assert_eq!(clip_global_norm::<B, _>(module, &mut grads, 1.0), n);
    assert!(global_norm::<B, _>(module, &grads) <= 1.0 + 1e-5);
}

fn micro_batches(step: u32) -> Vec<TokenBatch> {
    vec![batch(2, 8, 2 * step), batch(1, 8, 2 * step + 1)]
}

#[test]
fn resume_is_bit_exact() {
    let device = Default::default();
    let model = QwenModel::<B>::random(config(), 0.05, &device);
    let cfg = train_config(5e-3, 2, 6);

    let mut straight = Trainer::new(model.clone(), cfg).unwrap();
    let a: Vec<f32> = (0..6).map(|s| straight.train_step(&micro_batches(s)).unwrap().loss).collect();

    let dir = tmp("resume");
    let mut first = Trainer::new(model, cfg).unwrap();
    let mut b: Vec<f32> = (0..3).map(|s| first.train_step(&micro_batches(s)).unwrap().loss).collect();
    let loader = LoaderState { epoch: 1, position: 42, seed: 9 };
    first.save_checkpoint(&dir, None).unwrap();
    first.save_checkpoint(&dir, Some(loader)).unwrap(); // over an existing checkpoint
    drop(first);
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(dir.file_name().unwrap().to_str().unwrap()) && n.len() > dir.file_name().unwrap().len()
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let (mut resumed, got_loader) = Trainer::<B>::resume(&dir, &device).unwrap();
    assert_eq!(got_loader, Some(loader));
    assert_eq!(resumed.step(), 3);
    assert_eq!(resumed.config(), &cfg);
    b.extend((3..6).map(|s| resumed.train_step(&micro_batches(s)).unwrap().loss));
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every file of a checkpoint folder by relative name.
fn files_of(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// A checkpoint resumed and saved again is the same bytes (nothing depends on burn's per-process
/// parameter ids or hash-map order); a damaged one (a flipped byte, a truncated or a missing file)
/// is refused with [`TrainError::Corrupt`] naming the file, and the intact previous checkpoint a
/// crash left beside it is loaded instead.
#[test]
fn checkpoints_are_checksummed_and_resaved_identically() {
    let device = Default::default();
    let cfg = train_config(5e-3, 2, 6);
    let mut trainer = Trainer::new(QwenModel::<B>::random(config(), 0.05, &device), cfg).unwrap();
    for s in 0..2 {
        trainer.train_step(&micro_batches(s)).unwrap();
    }
    let (dir, again) = (tmp("checksummed"), tmp("checksummed-again"));
    let loader = LoaderState { epoch: 0, position: 6, seed: 9 };
    trainer.save_checkpoint(&dir, Some(loader)).unwrap();
    let (resumed, _) = Trainer::<B>::resume(&dir, &device).unwrap();
    resumed.save_checkpoint(&again, Some(loader)).unwrap();
    let saved = files_of(&dir);
    let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["checksums.json", "config.json", "model.safetensors", "optimizer.bin", "trainer_state.json"]);
    assert!(saved == files_of(&again), "a resumed trainer saves other bytes");

    let damage: [(&str, &dyn Fn(&mut Vec<u8>)); 3] = [
        ("model.safetensors", &|b| *b.last_mut().unwrap() ^= 1),
        ("optimizer.bin", &|b| b.truncate(b.len() / 2)),
        ("trainer_state.json", &|b| b.clear()),
    ];
    for (file, hurt) in damage {
        let path = dir.join(file);
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        hurt(&mut bad);
        if bad.is_empty() {
            std::fs::remove_file(&path).unwrap();
        } else {
            std::fs::write(&path, &bad).unwrap();
        }
        match Trainer::<B>::resume(&dir, &device) {
            Err(TrainError::Corrupt { file: f, .. }) => assert_eq!(f, file),
            Err(e) => panic!("{file}: {e}"),
            Ok(_) => panic!("{file}: a damaged checkpoint was loaded"),
        }
        std::fs::write(&path, &good).unwrap();
    }
    Trainer::<B>::resume(&dir, &device).unwrap();

    // Damaged, with the previous checkpoint left beside it by a crash: that one is loaded.
    let previous = dir.with_file_name(format!("{}.old-1", dir.file_name().unwrap().to_string_lossy()));
    std::fs::rename(&again, &previous).unwrap();
    let mut older = Trainer::new(QwenModel::<B>::random(config(), 0.05, &device), cfg).unwrap();
    older.train_step(&micro_batches(0)).unwrap();
    let _ = std::fs::remove_dir_all(&previous);
    older.save_checkpoint(&previous, None).unwrap();
    std::fs::write(dir.join("optimizer.bin"), b"garbage").unwrap();
    let (fallback, state) = Trainer::<B>::resume(&dir, &device).unwrap();
    assert_eq!((fallback.step(), state), (1, None));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&previous).unwrap();
}

#[test]
fn non_finite_loss_is_reported_and_nothing_changes() {
    let model = QwenModel::<B>::random(config(), 0.1, &Default::default());
    let mut t = Trainer::new(model, train_config(1e-3, 0, 10)).unwrap();
    t.train_step(&[batch(1, 8, 0)]).unwrap();
    let w = &mut t.model_mut().model.lm_head.weight;
    *w = w.clone().map(|x| Tensor::from_inner(x.inner().mul_scalar(f32::NAN)).require_grad());
    let gamma = |t: &Trainer<B>| t.valid_model().model.norm.gamma.val().into_data().to_vec::<f32>().unwrap();
    let before = gamma(&t);
    let err = t.train_step(&[batch(1, 8, 1)]).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { step: 1, what: "loss" }), "{err}");
    assert_eq!(t.step(), 1);
    assert_eq!(gamma(&t), before);
    let _ = t.model().model.valid();
}

#[test]
fn accumulation_equals_one_big_batch() {
    let model = QwenModel::<B>::random(config(), 0.1, &Default::default());
    let t = Trainer::new(model, train_config(1e-3, 0, 10)).unwrap();
    let (a, b) = (batch(2, 8, 4), batch(1, 8, 5));
    let mut whole = a.clone();
    whole.batch += b.batch;
    whole.inputs.extend(&b.inputs);
    whole.targets.extend(&b.targets);
    // Ignored targets change the weights of the micro-batches: the mean stays per token.
    let (mut a2, mut whole2) = (a.clone(), whole.clone());
    a2.targets[..5].fill(IGNORE_INDEX);
    whole2.targets[..5].fill(IGNORE_INDEX);
    for (parts, one) in [(vec![a.clone(), b.clone()], whole), (vec![a2, b], whole2)] {
        let module = &t.model().model;
        let (l1, g1, n1) = t.loss_and_grads(&parts).unwrap();
        let (l2, g2, n2) = t.loss_and_grads(&[one]).unwrap();
        assert_eq!(n1, n2);
        assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
        let (x, y) = (global_norm::<B, _>(module, &g1), global_norm::<B, _>(module, &g2));
        assert!((x - y).abs() < 1e-5 * y, "{x} vs {y}");
    }
}

#[test]
fn weight_decay_skips_rank_one_parameters_in_both_update_paths() {
    use burn::optim::SimpleOptimizer;
    use qwen_train::optim::{QwenAdamW, Update};
    let device = Default::default();
    for update in [Update::Tensor, Update::Host] {
        let opt = QwenAdamW { config: OptimConfig { weight_decay: 0.5, update, ..OptimConfig::default() } };
        // Zero gradients: the Adam part of the update is 0, only the decay remains.
        let w = Tensor::<Inner, 2>::from_data([[1.0f32, -2.0], [3.0, 4.0]], &device);
        let (w2, state) = opt.step(1.0, w.clone(), w.zeros_like(), None);
        assert_eq!(w2.into_data().to_vec::<f32>().unwrap(), [0.5, -1.0, 1.5, 2.0], "{update:?}");
        assert_eq!(state.unwrap().time, 1);
        let g = Tensor::<Inner, 1>::from_data([1.0f32, 2.0], &device);
        let (g2, _) = opt.step(1.0, g.clone(), g.zeros_like(), None);
        assert_eq!(g2.into_data().to_vec::<f32>().unwrap(), [1.0, 2.0], "{update:?}");
    }
}

/// The host update (one fused pass) and the tensor update give the same parameters and moments
/// over several steps, up to float rounding order.
#[test]
fn host_and_tensor_updates_agree() {
    use burn::optim::SimpleOptimizer;
    use qwen_train::optim::{QwenAdamW, Update};
    let device = Default::default();
    let p0 = Tensor::<Inner, 2>::random([37, 29], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let run = |update| {
        let opt = QwenAdamW { config: OptimConfig { update, ..OptimConfig::default() } };
        let (mut p, mut state) = (p0.clone(), None);
        for step in 0..5 {
            let g = p.clone().mul_scalar(0.3).add_scalar(step as f32 * 0.01);
            (p, state) = opt.step(1e-2, p, g, state);
        }
        (p.into_data().to_vec::<f32>().unwrap(), state.unwrap().moment_2.into_data().to_vec::<f32>().unwrap())
    };
    let ((a, va), (b, vb)) = (run(Update::Tensor), run(Update::Host));
    let diff = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(u, v)| (u - v).abs()).fold(0f32, f32::max);
    assert!(diff(&a, &b) < 1e-6 && diff(&va, &vb) < 1e-6, "{} {}", diff(&a, &b), diff(&va, &vb));
    assert!(diff(&a, &p0.into_data().to_vec::<f32>().unwrap()) > 1e-3, "the parameters moved");
}

/// bf16 matmuls with f32 master weights: the logits differ from the f32 ones (the casts happen)
/// by no more than bf16 rounding, so does the loss, the parameters stay f32 through the updates,
/// and the model still overfits a batch.
///
/// The "casts happen" check is on the logits, not the mean loss: with a 0.02 init the two losses
/// differ by ~1e-5, and about one random model in 150 rounds them to the same f32.
#[test]
fn mixed_precision_keeps_f32_master_weights_and_trains() {
    let model = QwenModel::<B>::random(config(), 0.02, &Default::default());
    let b = batch(2, 16, 0);
    let full = Trainer::new(model.clone(), train_config(1e-2, 3, 30)).unwrap();
    let (loss_f32, _, _) = full.loss_and_grads(std::slice::from_ref(&b)).unwrap();
    let mixed_config = TrainConfig { precision: Precision::Bf16, ..train_config(1e-2, 3, 30) };
    let mut t = Trainer::new(model, mixed_config).unwrap();
    let (loss_bf16, _, _) = t.loss_and_grads(std::slice::from_ref(&b)).unwrap();
    assert!((loss_bf16 - loss_f32).abs() < 0.01 * loss_f32, "{loss_bf16} vs {loss_f32}");
    let rows: Vec<Vec<u32>> = b.inputs.chunks(b.seq_len).map(<[u32]>::to_vec).collect();
    let logits = |t: &Trainer<B>| t.valid_model().forward(&rows).unwrap();
    let gap: f32 = (logits(&full) - logits(&t)).abs().max().into_scalar();
    assert!(gap > 0.0 && gap < 0.05, "bf16 vs f32 logits differ by {gap}");
    let first = t.train_step(std::slice::from_ref(&b)).unwrap();
    let mut last = first;
    for _ in 1..30 {
        last = t.train_step(std::slice::from_ref(&b)).unwrap();
    }
    assert!(last.loss < 0.5 * first.loss, "{} -> {}", first.loss, last.loss);
    let dtype = t.model().model.layers[0].mlp.dense().unwrap().up_proj.weight.val().dtype();
    assert_eq!(dtype, burn::tensor::DType::F32);
    assert_eq!(t.valid_model().precision, Precision::Bf16);
}

/// The closed-form loss gives the log-softmax loss and, through autodiff, the same gradient with
/// respect to the logits, ignored targets included; a NaN logit makes the loss NaN.
#[test]
fn fused_cross_entropy_equals_log_softmax_autodiff() {
    let device = Default::default();
    let (b, s, v) = (2, 5, 11);
    let data: Vec<f32> = (0..b * s * v).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
    let logits = || Tensor::<B, 3>::from_data(TensorData::new(data.clone(), [b, s, v]), &device).require_grad();
    let targets: Vec<u32> = vec![1, 3, IGNORE_INDEX, 10, 0, 7, 7, IGNORE_INDEX, 2, 5];
    let scale = 1.0 / 8.0;

    let x = logits();
    let (sum, count) = qwen_train::cross_entropy_sum(x.clone(), &targets).unwrap();
    let reference = sum.clone().into_scalar().elem::<f64>();
    let g_ref = x.grad(&sum.mul_scalar(scale).backward()).unwrap().into_data().to_vec::<f32>().unwrap();

    let y = logits();
    let fused = qwen_train::cross_entropy_fused(y.clone(), &targets, scale).unwrap();
    assert_eq!(fused.count, count);
    assert!((fused.nll_sum - reference).abs() < 1e-4 * reference.abs(), "{} vs {reference}", fused.nll_sum);
    let g = y.grad(&fused.surrogate.backward()).unwrap().into_data().to_vec::<f32>().unwrap();
    let max = g.iter().zip(&g_ref).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max < 1e-6, "max gradient difference {max}");

    let mut bad = data.clone();
    bad[3] = f32::NAN;
    let z = Tensor::<B, 3>::from_data(TensorData::new(bad, [b, s, v]), &device).require_grad();
    assert!(qwen_train::cross_entropy_fused(z, &targets, scale).unwrap().nll_sum.is_nan());
}

fn max_diff<const D: usize>(a: Tensor<Inner, D>, b: Tensor<Inner, D>) -> f32 {
    let (a, b) = (a.into_data().to_vec::<f32>().unwrap(), b.into_data().to_vec::<f32>().unwrap());
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// The LM head fused with the loss outside the graph, whole and in chunks of rows, with a bias and
/// ignored targets: the same loss and the same gradients (hidden states, weight, bias) as the head
/// run inside the graph followed by log-softmax cross-entropy through autodiff.
#[test]
fn fused_head_equals_the_head_in_the_graph() {
    let device = Default::default();
    let (b, s, d, v) = (2, 5, 6, 11);
    let data: Vec<f32> = (0..b * s * d).map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.2).collect();
    let hidden = || Tensor::<B, 3>::from_data(TensorData::new(data.clone(), [b, s, d]), &device).require_grad();
    let head: Linear<B> = LinearConfig::new(d, v).with_bias(true).init(&device);
    let targets: Vec<u32> = vec![1, 3, IGNORE_INDEX, 10, 0, 7, 7, IGNORE_INDEX, 2, 5];
    let scale = 1.0 / 8.0;

    let x = hidden();
    let (sum, count) = cross_entropy_sum(head.forward(x.clone()), &targets).unwrap();
    let reference = sum.clone().into_scalar().elem::<f64>();
    let grads = sum.mul_scalar(scale).backward();
    let gx = x.grad(&grads).unwrap();
    let gw = head.weight.val().grad(&grads).unwrap();
    let gb = head.bias.as_ref().unwrap().val().grad(&grads).unwrap();

    let empty = Tensor::<B, 3>::zeros([0, 5, d], &device);
    assert!(matches!(
        head_cross_entropy_fused_in_chunks(empty, &head, &[], scale, Precision::Full, 4),
        Err(TrainError::Batch(_))
    ));
    assert!(matches!(
        head_cross_entropy_fused_in_chunks(hidden(), &head, &targets[..9], scale, Precision::Full, 4),
        Err(TrainError::Batch(_))
    ));
    for rows in [3, 4, 10, 64] {
        let y = hidden();
        let fused =
            head_cross_entropy_fused_in_chunks(y.clone(), &head, &targets, scale, Precision::Full, rows).unwrap();
        assert_eq!(fused.count, count);
        assert!((fused.nll_sum - reference).abs() < 1e-5 * reference.abs(), "{} vs {reference}", fused.nll_sum);
        let g = fused.surrogate.backward();
        assert!(max_diff(y.grad(&g).unwrap(), gx.clone()) < 1e-6, "hidden gradient, {rows} rows");
        assert!(max_diff(fused.weight_grad, gw.clone()) < 1e-6, "weight gradient, {rows} rows");
        assert!(max_diff(fused.bias_grad.unwrap(), gb.clone()) < 1e-6, "bias gradient, {rows} rows");
    }
}

/// The trainer's gradients (head fused with the loss, its gradient added to what the graph gives)
/// equal plain autodiff through logits and `cross_entropy`, untied and tied: with tied embeddings
/// `lm_head.weight` gets both its head and its embedding contributions.
#[test]
fn trainer_gradients_equal_plain_autodiff_tied_and_untied() {
    let device = Default::default();
    for tied in [false, true] {
        let config = qwen_model::QwenConfig::from_json(serde_json::json!({
            "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
            "tie_word_embeddings": tied
        }))
        .unwrap();
        let model = QwenModel::<B>::random(config, 0.02, &device);
        let mut data = batch(2, 8, 3);
        data.targets[5] = IGNORE_INDEX;
        let trainer = Trainer::new(model.clone(), train_config(1e-3, 1, 10)).unwrap();
        let (loss, grads, tokens) = trainer.loss_and_grads(std::slice::from_ref(&data)).unwrap();

        let rows: Vec<Vec<u32>> = (0..data.batch).map(|i| data.input_row(i).to_vec()).collect();
        let logits = model.forward_mode(&rows, Mode::Training).unwrap();
        let (sum, count) = cross_entropy_sum(logits, &data.targets).unwrap();
        assert_eq!(tokens, count);
        let mean = sum.div_scalar(count as f64);
        let reference_loss = mean.clone().into_scalar().elem::<f32>();
        assert!((loss - reference_loss).abs() < 1e-5, "{loss} vs {reference_loss}");
        let reference = GradientsParams::from_grads(mean.backward(), &model.model);

        let m = &model.model;
        let mut matrices = vec![m.lm_head.weight.id, m.layers[0].self_attn.q_proj.weight.id];
        matrices.extend(m.embed_tokens.as_ref().map(|e| e.weight.id));
        for id in matrices {
            let (a, b) = (grads.get::<Inner, 2>(id).unwrap(), reference.get::<Inner, 2>(id).unwrap());
            assert!(max_diff(a, b) < 1e-6, "tied {tied}: parameter {id}");
        }
        let id = m.norm.gamma.id;
        let (a, b) = (grads.get::<Inner, 1>(id).unwrap(), reference.get::<Inner, 1>(id).unwrap());
        assert!(max_diff(a, b) < 1e-6, "tied {tied}: final norm");
        assert_eq!(grads.len(), reference.len());
    }
}
