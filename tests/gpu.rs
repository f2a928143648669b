//! burn's GPU code path on every CI run, without a GPU: the model, its KV cache, training and the
//! alignment losses on `burn::backend::Wgpu`, which CI runs on Mesa's lavapipe (Vulkan on the CPU,
//! installed by `tools/setup.sh`). `tools/test.sh` builds and runs this target with
//! `--features wgpu`; `tools/gpu-check.sh cuda` runs the same tests on `burn::backend::Cuda`
//! (`--features cuda`) on a machine with an NVIDIA GPU. Without either feature it is empty.
//!
//! - logits of the Qwen2 and Qwen-1 fixtures within [`LOGIT_TOLERANCE`] of transformers' and
//!   Qwen-1's own code (GPU kernels sum in another order than the CPU, hence 1e-3, not the CPU
//!   tests' 1e-4);
//! - KV-cached decode step by step against the reference's cached logits and against a full
//!   recompute on the same backend, and the greedy tokens;
//! - training steps (loss, every parameter's gradient, gradient norm) against the CPU backend
//!   (Flex) from the same weights;
//! - DPO, reward-model and PPO losses against the CPU backend on the same inputs and weights.
//!
//! Lavapipe is slow (seconds per shader compile): the fixtures are the tiny two-layer ones and
//! training runs three steps. `docs/gpu.md` says what this covers and what it does not.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use std::collections::HashMap;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use qwen_align::{
    clipped_policy_loss, clipped_value_loss, constant, dpo_loss, pairwise_loss, sequence_logprobs, DpoConfig,
    DpoTrainer, Pair, PairBatch, RewardTrainer, ScoreModel,
};
use qwen_data::TokenBatch;
use qwen_model::{GenerateConfig, KvCache, Mode, QwenModel, SamplingConfig, SaveDtype};
use qwen_train::{OptimConfig, Schedule, TrainConfig, Trainer, IGNORE_INDEX};

mod common;

use common::{max_diff, model_case, model_meta, Reference};

/// The backend under test: CUDA when built with `cuda`, else wgpu (Vulkan, Metal, ...).
#[cfg(feature = "cuda")]
type G = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
type G = burn::backend::Wgpu;
/// The CPU backend it is compared with.
type C = Flex;

/// Max |logit error| against the references (the CPU tests allow 1e-4).
const LOGIT_TOLERANCE: f32 = 1e-3;
/// Max relative difference of a loss, reward or gradient norm between the GPU backend and the CPU
/// backend from the same weights (relative to max(|CPU value|, 0.01)).
const LOSS_TOLERANCE: f32 = 1e-4;
/// The same after optimizer updates: Adam's first update moves every weight by about ±lr whatever
/// the size of its gradient, so a gradient that is rounding noise (its sign differs between the
/// backends) moves a weight by lr the other way.
const STEP_TOLERANCE: f32 = 1e-3;
/// Max |gradient difference| between the GPU backend and the CPU backend, relative to the largest |gradient|
/// of the same parameter (see [`assert_grads_match`]).
const GRAD_TOLERANCE: f32 = 1e-3;

/// One Qwen2 (GQA, head_dim ≠ hidden/heads, biases) and one Qwen-1 (fused c_attn, no bias) case.
const CASES: [&str; 2] = ["qwen2_gqa", "qwen1_plain"];

fn gpu() -> burn::tensor::Device<G> {
    Default::default()
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 tensor data")
}

/// |a − b| relative to max(|b|, 0.01).
fn rel(a: f32, b: f32) -> f32 {
    (a - b).abs() / b.abs().max(1e-2)
}

#[test]
fn logits_match_the_references_on_the_gpu_backend() {
    for name in CASES {
        let dir = model_case(name);
        let model = qwen_model::load::<G>(&dir, &gpu()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = Reference::open(&dir);
        let n = model_meta(&dir)["inputs"].as_u64().unwrap() as usize;
        assert!(n > 0);
        let mut worst = 0f32;
        for i in 0..n {
            let ids = r.ids(&format!("input_ids.{i}")).unwrap();
            let want = r.floats(&format!("logits.{i}")).unwrap();
            let got = host(model.forward(std::slice::from_ref(&ids)).unwrap());
            let d = max_diff(&got, &want);
            assert!(d <= LOGIT_TOLERANCE, "{name} input {i} (length {}): max |logit error| {d:e}", ids.len());
            worst = worst.max(d);
        }
        println!("{name}: {n} inputs on the GPU backend, max |logit error| {worst:.2e}");
    }
}

/// Decoding one token at a time through the KV cache gives the reference's cached logits and
/// the same logits as running the whole sequence without a cache; greedy generation gives the
/// reference's tokens.
#[test]
fn cached_decode_matches_uncached_on_the_gpu_backend() {
    for name in CASES {
        let dir = model_case(name);
        let model: QwenModel<G> = qwen_model::load(&dir, &gpu()).unwrap();
        let r = Reference::open(&dir);
        let prompt = r.ids("greedy.prompt").unwrap();
        let tokens = r.ids("greedy.tokens").unwrap();
        let cached_ref = r.floats("greedy.cached_logits").unwrap();
        let v = model.config.vocab_size;

        let mut cache = KvCache::new(&model.config, 1, prompt.len() + tokens.len(), &gpu());
        let mut cached = host(model.forward_cached_last(&[prompt.clone()], &mut cache).unwrap());
        for &t in &tokens[..tokens.len() - 1] {
            cached.extend(host(model.forward_cached_last(&[vec![t]], &mut cache).unwrap()));
        }
        let vs_reference = max_diff(&cached, &cached_ref);
        assert!(vs_reference <= LOGIT_TOLERANCE, "{name}: cached logits vs the reference's: {vs_reference:e}");

        let mut seq = prompt.clone();
        seq.extend(&tokens[..tokens.len() - 1]);
        let full = host(model.forward(&[seq]).unwrap());
        let uncached = &full[(prompt.len() - 1) * v..];
        let vs_full = max_diff(&cached, uncached);
        assert!(vs_full <= LOGIT_TOLERANCE, "{name}: cached vs uncached logits on the GPU backend: {vs_full:e}");

        let config =
            GenerateConfig { max_new_tokens: tokens.len(), stop_ids: vec![], sampling: SamplingConfig::default() };
        assert_eq!(
            model.generate(&prompt, &config, |_| true).unwrap(),
            tokens,
            "{name}: greedy tokens on the GPU backend"
        );
        println!("{name}: {} cached steps, vs reference {vs_reference:.2e}, vs uncached {vs_full:.2e}", tokens.len());
    }
}

/// Every float parameter's gradient in `grads`, by module path.
struct GradsByPath<'a, B: Backend> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    out: HashMap<String, Vec<f32>>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for GradsByPath<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B, D>(param.id) {
            self.out.insert(self.path.join("."), host(g));
        }
    }
}

fn grads_by_path<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> HashMap<String, Vec<f32>> {
    let mut v =
        GradsByPath::<B::InnerBackend> { grads, path: vec![], out: HashMap::new(), _backend: std::marker::PhantomData };
    module.valid().visit(&mut v);
    v.out
}

/// Compares two gradient sets parameter by parameter; returns the worst relative difference.
/// Each parameter's difference is taken relative to its own largest |gradient|, floored at 1e-3
/// of the largest |gradient| of the model: some gradients are zero in exact arithmetic and only
/// rounding noise in practice (the key bias: softmax ignores a shift shared by every key).
fn assert_grads_match(what: &str, gpu: &HashMap<String, Vec<f32>>, cpu: &HashMap<String, Vec<f32>>) -> f32 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: parameters with a gradient");
    let abs_max = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let global = cpu.values().map(|g| abs_max(g)).fold(0f32, f32::max);
    assert!(global > 0.0, "{what}: no gradients");
    let mut worst = 0f32;
    for (path, want) in cpu {
        let got = gpu.get(path).unwrap_or_else(|| panic!("{what}: no GPU-backend gradient for {path}"));
        let scale = abs_max(want).max(1e-3 * global);
        let d = max_diff(got, want) / scale;
        assert!(d <= GRAD_TOLERANCE, "{what}: {path} gradient differs by {d:e} of its scale {scale:e}");
        worst = worst.max(d);
    }
    worst
}

/// `rows` sequences of `len + 1` tokens below `vocab` from a fixed formula; inputs and shifted
/// targets, the last row's first two targets ignored.
fn lm_batch(rows: usize, len: usize, vocab: u32) -> TokenBatch {
    let mut b = TokenBatch { batch: rows, seq_len: len, ..Default::default() };
    for r in 0..rows as u32 {
        let row: Vec<u32> = (0..=len as u32).map(|i| (i * 31 + r * 17 + (i * i) % 7 + 3) % vocab).collect();
        b.inputs.extend(&row[..len]);
        b.targets.extend(&row[1..]);
    }
    b.targets[(rows - 1) * len..][..2].fill(IGNORE_INDEX);
    b
}

fn trainer<B: AutodiffBackend>(name: &str, device: &B::Device) -> Trainer<B> {
    let model = qwen_model::load::<B>(model_case(name), device).unwrap();
    Trainer::new(model, TrainConfig::new(Schedule::new(1e-3, 1, 3), 7)).unwrap()
}

/// Three AdamW steps (two micro-batches each) from the fixture's weights on the GPU backend and on the CPU:
/// the same loss, gradients and gradient norm at the first step, the same losses after.
#[test]
fn training_steps_match_the_cpu_backend() {
    for name in CASES {
        let mut g = trainer::<Autodiff<G>>(name, &gpu());
        let mut c = trainer::<Autodiff<C>>(name, &Default::default());
        let vocab = c.model().config.vocab_size as u32;
        let micro = [lm_batch(2, 12, vocab), lm_batch(1, 9, vocab)];

        let (gl, gg, gt) = g.loss_and_grads(&micro).unwrap();
        let (cl, cg, ct) = c.loss_and_grads(&micro).unwrap();
        assert_eq!(gt, ct);
        assert!(rel(gl, cl) <= LOSS_TOLERANCE, "{name}: first loss {gl} on the GPU backend vs {cl} on the CPU");
        let worst =
            assert_grads_match(name, &grads_by_path(&g.model().model, &gg), &grads_by_path(&c.model().model, &cg));

        let mut losses = vec![];
        for step in 0..3 {
            let a = g.train_step(&micro).unwrap();
            let b = c.train_step(&micro).unwrap();
            let tolerance = if step == 0 { LOSS_TOLERANCE } else { STEP_TOLERANCE };
            assert!(rel(a.loss, b.loss) <= tolerance, "{name} step {step}: loss {} vs {}", a.loss, b.loss);
            assert!(
                rel(a.grad_norm, b.grad_norm) <= tolerance,
                "{name} step {step}: grad norm {} vs {}",
                a.grad_norm,
                b.grad_norm
            );
            losses.push((a.loss, b.loss));
        }
        assert!(losses[2].1 < losses[0].1, "{name}: training did not lower the loss: {losses:?}");
        println!("{name}: first-step gradients within {worst:.2e} (relative); losses gpu/cpu {losses:?}");
    }
}

fn tensor1<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f32 {
    host(t)[0]
}

/// The loss functions on fixed inputs, both backends: DPO, the reward model's pairwise loss,
/// PPO's clipped policy and value losses, and response log-probs of the fixture model's logits.
#[test]
fn alignment_losses_match_the_cpu_backend() {
    let (dg, dc) = (gpu(), Default::default());
    let pc = [-12.5f32, -30.25, -7.0, -18.0];
    let pr = [-14.0f32, -29.0, -9.5, -17.25];
    let rc = [-13.0f32, -30.0, -8.0, -18.5];
    let rr = [-13.5f32, -29.5, -9.0, -17.0];
    let logp = [-1.0f32, -2.5, -0.25, -3.0, -0.75];
    let old = [-1.2f32, -2.0, -0.5, -2.9, -0.7];
    let adv = [0.5f32, -1.0, 2.0, 0.1, -0.3];
    let values = [0.2f32, -0.5, 1.5, 0.0, 0.9];
    let old_values = [0.0f32, -0.1, 1.0, 0.4, 0.8];
    let returns = [0.5f32, -0.2, 0.7, 0.1, 1.3];
    let (cg, cc) = ([0.5f32, -1.0, 2.0], [0.25f32, 1.0, -3.0]);
    let mut cases: Vec<(&str, (f32, f32))> = vec![];
    cases.push((
        "dpo",
        (
            scalar(dpo_loss(tensor1::<G>(&pc, &dg), tensor1(&pr, &dg), tensor1(&rc, &dg), tensor1(&rr, &dg), 0.1)),
            scalar(dpo_loss(tensor1::<C>(&pc, &dc), tensor1(&pr, &dc), tensor1(&rc, &dc), tensor1(&rr, &dc), 0.1)),
        ),
    ));
    cases.push((
        "reward pairwise",
        (
            scalar(pairwise_loss(tensor1::<G>(&cg, &dg), tensor1(&cc, &dg))),
            scalar(pairwise_loss(tensor1::<C>(&cg, &dc), tensor1(&cc, &dc))),
        ),
    ));
    cases.push((
        "ppo policy",
        (
            scalar(clipped_policy_loss(tensor1::<G>(&logp, &dg), tensor1(&old, &dg), tensor1(&adv, &dg), 0.2)),
            scalar(clipped_policy_loss(tensor1::<C>(&logp, &dc), tensor1(&old, &dc), tensor1(&adv, &dc), 0.2)),
        ),
    ));
    cases.push((
        "ppo value",
        (
            scalar(clipped_value_loss(
                tensor1::<G>(&values, &dg),
                tensor1(&old_values, &dg),
                tensor1(&returns, &dg),
                0.2,
            )),
            scalar(clipped_value_loss(
                tensor1::<C>(&values, &dc),
                tensor1(&old_values, &dc),
                tensor1(&returns, &dc),
                0.2,
            )),
        ),
    ));

    // Response log-probs of real logits, prompt positions ignored.
    let dir = model_case("qwen2_gqa");
    let rows = vec![vec![5u32, 17, 99, 3, 42, 8], vec![7, 7, 130, 2, 250, 1]];
    let mut targets = vec![IGNORE_INDEX; 12];
    targets[2..6].copy_from_slice(&[99, 3, 42, 8]);
    targets[9..12].copy_from_slice(&[2, 250, 1]);
    let lg = qwen_model::load::<G>(&dir, &dg).unwrap().forward_mode(&rows, Mode::Training).unwrap();
    let lc = qwen_model::load::<C>(&dir, &dc).unwrap().forward_mode(&rows, Mode::Training).unwrap();
    let (sg, sc) = (host(sequence_logprobs(lg, &targets).unwrap()), host(sequence_logprobs(lc, &targets).unwrap()));
    for i in 0..2 {
        cases.push((["sequence logprob 0", "sequence logprob 1"][i], (sg[i], sc[i])));
    }

    for (what, (g, c)) in &cases {
        assert!(g.is_finite() && rel(*g, *c) <= LOSS_TOLERANCE, "{what}: {g} on the GPU backend vs {c} on the CPU");
    }
    println!("{cases:?}");
}

/// Comparisons over the fixture vocabulary: a shared prompt, two two-token responses.
fn pairs(n: u32) -> Vec<Pair> {
    (0..n)
        .map(|i| Pair { prompt: vec![11 + i, 60 + 3 * i, 2], chosen: vec![100 + i, 10], rejected: vec![100 + i, 20] })
        .collect()
}

/// Two DPO updates and two reward-model updates from the same weights on the GPU backend and on the CPU give
/// the same losses, implicit rewards / margins and gradient norms.
#[test]
fn dpo_and_reward_steps_match_the_cpu_backend() {
    let dir = model_case("qwen2_gqa");
    let batch = PairBatch::new(&pairs(3), 0, 8).unwrap();
    let optim = OptimConfig::default();

    let mut dg = DpoTrainer::new(
        qwen_model::load::<Autodiff<G>>(&dir, &gpu()).unwrap(),
        DpoConfig::default(),
        optim,
        constant(1e-3, 0),
    )
    .unwrap();
    let mut dc = DpoTrainer::new(
        qwen_model::load::<Autodiff<C>>(&dir, &Default::default()).unwrap(),
        DpoConfig::default(),
        optim,
        constant(1e-3, 0),
    )
    .unwrap();
    for step in 0..2 {
        let (a, b) = (dg.train_step(&batch).unwrap(), dc.train_step(&batch).unwrap());
        for (what, x, y) in [
            ("loss", a.stats.loss, b.stats.loss),
            ("chosen reward", a.stats.chosen_reward, b.stats.chosen_reward),
            ("grad norm", a.grad_norm, b.grad_norm),
        ] {
            let tolerance = if step == 0 { LOSS_TOLERANCE } else { STEP_TOLERANCE };
            assert!(rel(x, y) <= tolerance, "dpo step {step} {what}: {x} on the GPU backend vs {y} on the CPU");
        }
        println!("dpo step {step}: gpu {a:?}\n             cpu  {b:?}");
    }

    // The score head is random: save it once from the CPU and load the same weights on both.
    let rm_dir = std::env::temp_dir().join(format!("qwen-gpu-test-{}-rm", std::process::id()));
    ScoreModel::from_lm(qwen_model::load::<C>(&dir, &Default::default()).unwrap())
        .save(&rm_dir, SaveDtype::F32)
        .unwrap();
    let mut rg =
        RewardTrainer::new(ScoreModel::<Autodiff<G>>::load(&rm_dir, &gpu()).unwrap(), optim, constant(1e-3, 0))
            .unwrap();
    let mut rc = RewardTrainer::new(
        ScoreModel::<Autodiff<C>>::load(&rm_dir, &Default::default()).unwrap(),
        optim,
        constant(1e-3, 0),
    )
    .unwrap();
    for step in 0..2 {
        let (a, b) = (rg.train_step(&batch).unwrap(), rc.train_step(&batch).unwrap());
        for (what, x, y) in [
            ("loss", a.pairs.loss, b.pairs.loss),
            ("margin", a.pairs.margin, b.pairs.margin),
            ("grad norm", a.grad_norm, b.grad_norm),
        ] {
            let tolerance = if step == 0 { LOSS_TOLERANCE } else { STEP_TOLERANCE };
            assert!(rel(x, y) <= tolerance, "reward step {step} {what}: {x} on the GPU backend vs {y} on the CPU");
        }
        println!("reward step {step}: gpu {a:?}\n                cpu  {b:?}");
    }
    std::fs::remove_dir_all(&rm_dir).unwrap();
}

/// The tiny random policy of the alignment crate's RL tests (vocabulary 64), made on the CPU from
/// a seed and loaded onto `device`, so every backend starts from the same weights.
fn tiny_policy<B: Backend>(device: &B::Device, seed: u64, tag: &str) -> QwenModel<B> {
    let config = qwen_model::QwenConfig::from_json(serde_json::json!({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": false, "torch_dtype": "float32"
    }))
    .unwrap();
    <C as Backend>::seed(&Default::default(), seed);
    let dir = std::env::temp_dir().join(format!("qwen-gpu-test-{}-{tag}", std::process::id()));
    QwenModel::<C>::random(config, 0.1, &Default::default()).save(&dir, SaveDtype::F32).unwrap();
    let model = qwen_model::load::<B>(&dir, device).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    model
}

/// Prompts of three tokens (the alignment crate's test prompts).
fn rl_prompts() -> Vec<Vec<u32>> {
    (0..4u32).map(|i| vec![1 + i % 7, 30 + (i * 3) % 11, 2]).collect()
}

/// `π(token | prompt)` for every prompt's last position, `[prompts * 64]`.
fn next_token_probs<B: Backend>(policy: &QwenModel<B>, prompts: &[Vec<u32>]) -> Vec<f32> {
    let last = policy.forward(prompts).unwrap().narrow(1, prompts[0].len() - 1, 1);
    host(burn::tensor::activation::softmax(last, 2))
}

/// What the `ppo` and `grpo` commands do, on the GPU backend: rollouts sampled there (KV-cached
/// generation), rewards, and updates. GRPO with the exact-match verifier raises the policy's exact
/// expected reward `π(10 | prompt)`; PPO with a reward model trained there raises the policy's
/// exact expected score (the CPU versions are in crates/align/tests/align.rs).
#[test]
fn grpo_and_ppo_raise_their_rewards_on_the_gpu_backend() {
    use qwen_align::{
        verifier, Decode, GrpoBatch, GrpoConfig, GrpoReward, GrpoTrainer, PpoConfig, PpoOptim, PpoTrainer,
    };
    let prompts = rl_prompts();
    let p10 = |policy: &QwenModel<G>| -> f32 {
        let probs = next_token_probs(policy, &prompts);
        (0..prompts.len()).map(|i| probs[i * 64 + 10]).sum::<f32>() / prompts.len() as f32
    };

    let decode: Decode = Box::new(|ids: &[u32]| Ok(ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")));
    let reward = GrpoReward::Verifier { verifier: verifier("exact_match").unwrap(), decode };
    let grpo = GrpoConfig { group_size: 8, max_new_tokens: 1, ..GrpoConfig::default() };
    let policy = tiny_policy::<Autodiff<G>>(&gpu(), 3, "grpo");
    let mut trainer =
        GrpoTrainer::new(policy, reward, grpo, OptimConfig::default(), constant(1e-2, 0), vec![], 0).unwrap();
    let batch = GrpoBatch { prompts: prompts.clone(), answers: vec![Some("10".into()); 4] };
    let before = p10(&trainer.valid_policy());
    for _ in 0..20 {
        let s = trainer.step(&batch).unwrap();
        assert!(s.loss.is_finite() && (0.0..=1.0).contains(&s.reward), "{s:?}");
    }
    let after = p10(&trainer.valid_policy());
    println!("grpo on the GPU backend: expected verifier reward {before:.4} -> {after:.4} in 20 steps");
    assert!(after > before + 0.2, "GRPO on the GPU backend: expected verifier reward {before} -> {after}");

    // A reward model that prefers token 10 over 20 after each prompt, trained on the GPU backend.
    let one_token: Vec<Pair> =
        prompts.iter().map(|p| Pair { prompt: p.clone(), chosen: vec![10], rejected: vec![20] }).collect();
    let pairs = PairBatch::new(&one_token, 0, 8).unwrap();
    let mut rm = RewardTrainer::new(
        ScoreModel::from_lm(tiny_policy::<Autodiff<G>>(&gpu(), 4, "rm")),
        OptimConfig::default(),
        constant(3e-3, 0),
    )
    .unwrap();
    for _ in 0..30 {
        rm.train_step(&pairs).unwrap();
    }
    let value = ScoreModel::from_lm(tiny_policy::<Autodiff<G>>(&gpu(), 5, "value"));
    let config = PpoConfig {
        max_new_tokens: 1,
        value_warmup_steps: 2,
        responses_per_query: 4,
        epochs: 2,
        ..PpoConfig::default()
    };
    let optim = PpoOptim { optim: OptimConfig::default(), policy: constant(1e-2, 0), value: constant(1e-2, 0) };
    let policy = tiny_policy::<Autodiff<G>>(&gpu(), 6, "ppo");
    let mut ppo = PpoTrainer::new(policy, value, rm.model.valid(), config, optim, vec![], 0).unwrap();
    // The policy's exact expected score Σ_t π(t | prompt) · r(prompt + t), and the best any token gets.
    let reward = rm.model.valid();
    let expected = |policy: &QwenModel<G>| -> (f32, f32) {
        let probs = next_token_probs(policy, &prompts);
        let (mut mean, mut best) = (0.0, 0.0);
        for (i, p) in prompts.iter().enumerate() {
            let rows: Vec<Vec<u32>> = (0..64).map(|t| [p.clone(), vec![t]].concat()).collect();
            let r = host(reward.rewards(&rows, &vec![p.len(); 64]).unwrap());
            mean += (0..64).map(|t| probs[i * 64 + t] * r[t]).sum::<f32>() / prompts.len() as f32;
            best += r.iter().cloned().fold(f32::MIN, f32::max) / prompts.len() as f32;
        }
        (mean, best)
    };
    for _ in 0..3 {
        ppo.step(&prompts, None).unwrap();
    }
    let (before, best) = expected(&ppo.valid_policy());
    for _ in 0..12 {
        let s = ppo.step(&prompts, None).unwrap();
        assert!(s.updates.value_loss.is_finite() && s.updates.policy_loss.is_finite(), "{s:?}");
    }
    let (after, _) = expected(&ppo.valid_policy());
    println!("ppo on the GPU backend: expected score {before:.4} -> {after:.4} in 12 steps (best {best:.4})");
    assert!(
        after - before > 0.05 * (best - before),
        "PPO on the GPU backend: expected score {before} -> {after}, best {best}"
    );
}
