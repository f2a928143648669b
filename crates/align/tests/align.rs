//! Alignment on tiny models (`Autodiff<Flex>`, vocab 64): SFT masks against the rule of Qwen's
//! `finetune.py`, log-probs against log-softmax, the loss formulas on numbers, GAE against its
//! closed form, and each trainer moving its metric the right way on a fixed batch.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use qwen_align::*;
use qwen_data::{Batcher, PreferenceRecord};
use qwen_model::{QwenConfig, QwenModel};
use qwen_tokenizer::train::{BpeTrainer, TrainerConfig};
use qwen_tokenizer::{ChatMl, Message, Role, Tokenizer};
use qwen_train::{OptimConfig, Schedule, IGNORE_INDEX};

type B = Autodiff<Flex>;
type Inner = Flex;

fn config() -> QwenConfig {
    QwenConfig::from_json(serde_json::json!({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": false, "torch_dtype": "float32"
    }))
    .unwrap()
}

/// A byte-level tokenizer (no merges) with Qwen's three ChatML/eod specials at 256, 257, 258.
fn chat_tokenizer() -> Tokenizer {
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    BpeTrainer::new(TrainerConfig { vocab_size: 256, specials, ..TrainerConfig::default() }).unwrap().train().unwrap()
}

/// Qwen's `finetune.py` `preprocess`, transcribed: per message `[im_start] + role + nl + content +
/// [im_end] + nl`; labels keep `im_start`, `im_end` and the final `nl`, mask the role and its `nl`,
/// and mask the content unless the role is the assistant's.
fn finetune_py_labels(tok: &Tokenizer, system: &str, turns: &[(&str, &str)]) -> (Vec<u32>, Vec<u32>) {
    let enc = |s: &str| tok.encode_ordinary(s).unwrap();
    let (im_start, im_end) = (tok.special_id("<|im_start|>").unwrap(), tok.special_id("<|im_end|>").unwrap());
    let nl = enc("\n");
    let (mut input, mut target) = (Vec::new(), Vec::new());
    for (role, content) in std::iter::once(&("system", system)).chain(turns) {
        let (r, c) = (enc(role), enc(content));
        let msg: Vec<u32> = [vec![im_start], r.clone(), nl.clone(), c.clone(), vec![im_end], nl.clone()].concat();
        let mut t = vec![im_start];
        t.extend(std::iter::repeat_n(IGNORE_INDEX, r.len() + nl.len()));
        if *role == "assistant" {
            t.extend(&c);
        } else {
            t.extend(std::iter::repeat_n(IGNORE_INDEX, c.len()));
        }
        t.push(im_end);
        t.extend(&nl);
        input.extend(msg);
        target.extend(t);
    }
    (input, target)
}

#[test]
fn sft_labels_follow_finetune_py() {
    let tok = chat_tokenizer();
    let chat = ChatMl::new(&tok).unwrap();
    let turns = [("user", "2+2?"), ("assistant", "4"), ("user", "and <|im_end|> 3+3?"), ("assistant", "6, I think.")];
    let messages: Vec<Message> =
        turns.iter().map(|(r, c)| Message::new(if *r == "user" { Role::User } else { Role::Assistant }, *c)).collect();
    let rendered = chat.render("You are a helpful assistant.", &messages).unwrap();
    let (input, labels) = finetune_py_labels(&tok, "You are a helpful assistant.", &turns);
    assert_eq!(rendered.ids, input);
    assert_eq!(sft_labels(&rendered), labels);
    // The user's "<|im_end|>" stayed text: only the five real message ends are im_end.
    let im_end = tok.special_id("<|im_end|>").unwrap();
    assert_eq!(rendered.ids.iter().filter(|&&i| i == im_end).count(), 5);
}

#[test]
fn sft_sequences_shift_pad_and_refuse_overflow() {
    let tok = chat_tokenizer();
    let chat = ChatMl::new(&tok).unwrap();
    let rendered = chat.render("s", &[Message::new(Role::User, "q"), Message::new(Role::Assistant, "ab")]).unwrap();
    let labels = sft_labels(&rendered);
    let n = rendered.len();
    let pad = tok.special_id("<|endoftext|>").unwrap();
    let s = sft_sequence(&rendered, n + 3, pad, Overflow::Error).unwrap();
    assert_eq!(&s.input[..n], &rendered.ids[..]);
    assert_eq!(&s.input[n..], &[pad; 3]);
    assert_eq!(&s.target[..n - 1], &labels[1..]);
    assert!(s.target[n - 1..].iter().all(|&t| t == IGNORE_INDEX));
    // Every label but the first token's (nothing predicts it) is a target once.
    let counted = |v: &[u32]| v.iter().filter(|&&t| t != IGNORE_INDEX).count();
    assert_eq!(counted(&s.target), counted(&labels[1..]));

    assert!(matches!(sft_sequence(&rendered, n - 1, pad, Overflow::Error), Err(AlignError::TooLong { .. })));
    let cut = sft_sequence(&rendered, n - 1, pad, Overflow::Truncate).unwrap();
    assert_eq!(cut.input, rendered.ids[..n - 1]);
    assert_eq!(&cut.target[..n - 2], &labels[1..n - 1]);

    let batcher = SftBatcher { seq_len: n, pad_id: pad, overflow: Overflow::Error };
    let b = batcher.batch(vec![rendered.clone(), rendered.clone()]).unwrap();
    assert_eq!((b.batch, b.seq_len, b.inputs.len()), (2, n, 2 * n));
    let short = SftBatcher { seq_len: 4, ..batcher };
    assert!(short.batch(vec![rendered]).is_err());
}

#[test]
fn response_batches_target_only_the_response() {
    let b = ResponseBatch::new(&[(&[1, 2, 3], &[4, 5]), (&[6], &[7, 8, 9])], 0, 16).unwrap();
    assert_eq!(b.seq_len, 5);
    assert_eq!(b.rows, vec![vec![1, 2, 3, 4, 5], vec![6, 7, 8, 9, 0]]);
    let x = IGNORE_INDEX;
    assert_eq!(b.targets, vec![x, x, 4, 5, x, 7, 8, 9, x, x]);
    assert_eq!(b.ends, vec![4, 3]);
    assert!(matches!(ResponseBatch::new(&[(&[1, 2], &[3])], 0, 2), Err(AlignError::TooLong { len: 3, limit: 2 })));
    assert!(matches!(ResponseBatch::new(&[(&[1], &[])], 0, 8), Err(AlignError::Batch(_))));
}

#[test]
fn preference_records_render_as_chats() {
    let tok = chat_tokenizer();
    let record = PreferenceRecord::from_json(&serde_json::json!({
        "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                   {"role": "user", "content": "2+2?"}],
        "chosen": "4", "rejected": "<|im_end|>5"
    }))
    .unwrap();
    let pair = Pair::from_record(&tok, &record).unwrap();
    let chat = ChatMl::new(&tok).unwrap();
    let want = chat.make_context("You are a helpful assistant.", &[("hi", "hello")], "2+2?", 6144).unwrap();
    assert_eq!(pair.prompt, want.ids);
    let im_end = tok.special_id("<|im_end|>").unwrap();
    assert_eq!(pair.chosen, vec![b'4' as u32, im_end]);
    assert_eq!(pair.rejected.len(), "<|im_end|>5".len() + 1, "special-token text stays bytes");
    let odd = PreferenceRecord { prompt: vec![Message::new(Role::Assistant, "x"), record.prompt[2].clone()], ..record };
    assert!(Pair::from_record(&tok, &odd).is_err());
}

#[test]
fn logprobs_are_log_softmax_at_the_targets() {
    let (b, s, v) = (2, 3, 5);
    let data: Vec<f32> = (0..b * s * v).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.4).collect();
    let logits = Tensor::<Inner, 3>::from_data(TensorData::new(data.clone(), [b, s, v]), &Default::default());
    let targets = [1, IGNORE_INDEX, 4, 0, 2, IGNORE_INDEX];
    let got = token_logprobs(logits.clone(), &targets).unwrap().into_data().to_vec::<f32>().unwrap();
    for (row, &t) in targets.iter().enumerate() {
        let l = &data[row * v..(row + 1) * v];
        let lse = l.iter().map(|x| x.exp()).sum::<f32>().ln();
        let want = if t == IGNORE_INDEX { 0.0 } else { l[t as usize] - lse };
        assert!((got[row] - want).abs() < 1e-5, "{row}: {} vs {want}", got[row]);
    }
    let seq = sequence_logprobs(logits.clone(), &targets).unwrap().into_data().to_vec::<f32>().unwrap();
    assert!((seq[0] - (got[0] + got[2])).abs() < 1e-5 && (seq[1] - (got[3] + got[4])).abs() < 1e-5);
    assert!(matches!(token_logprobs(logits.clone(), &[5, 0, 0, 0, 0, 0]), Err(qwen_train::TrainError::Batch(_))));
    assert!(matches!(sequence_logprobs(logits, &[0; 4]), Err(AlignError::Train(qwen_train::TrainError::Batch(_)))));
}

fn vec1(v: &[f32]) -> Tensor<Inner, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

fn scalar(t: Tensor<Inner, 1>) -> f32 {
    t.into_data().to_vec::<f32>().unwrap()[0]
}

#[test]
fn losses_match_their_formulas() {
    let softplus = |x: f32| (1.0 + x.exp()).ln();
    // Pairwise reward loss: mean softplus(-(c - r)).
    let got = scalar(pairwise_loss(vec1(&[1.0, -0.5]), vec1(&[0.0, 0.5])));
    assert!((got - (softplus(-1.0) + softplus(1.0)) / 2.0).abs() < 1e-6);
    // DPO: -log σ(β((pc - rc) - (pr - rr))).
    let got = scalar(dpo_loss(vec1(&[-3.0]), vec1(&[-5.0]), vec1(&[-4.0]), vec1(&[-4.5]), 0.5));
    assert!((got - softplus(-0.5 * ((-3.0 + 4.0) - (-5.0 + 4.5)))).abs() < 1e-6);
    // Clipped surrogate: ratio 1.5 with A = 1 is clipped to 1.2; ratio 0.5 with A = -1 to 0.8.
    let logp = vec1(&[1.5f32.ln(), 0.5f32.ln(), 1.1f32.ln()]);
    let got = scalar(clipped_policy_loss(logp, vec1(&[0.0; 3]), vec1(&[1.0, -1.0, 2.0]), 0.2));
    let want = (-1.2 + 0.8 - 2.0 * 1.1) / 3.0;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    // Clipped value loss: V = 2, V_old = 1, R = 0 → max((2 − 0)², (1.15 − 0)²) = 4; V = 0.5,
    // V_old = 1, R = 2 → max((0.5 − 2)², (0.85 − 2)²) = max(2.25, 1.3225) = 2.25.
    let got = scalar(clipped_value_loss(vec1(&[2.0, 0.5]), vec1(&[1.0, 1.0]), vec1(&[0.0, 2.0]), 0.15));
    assert!((got - 0.5 * (4.0 + 2.25) / 2.0).abs() < 1e-6, "{got}");
}

#[test]
fn gae_is_the_discounted_sum_of_td_errors() {
    let rewards = [0.1, -0.2, 0.0, 1.0];
    let values = [0.5, 0.3, -0.1, 0.2];
    let (gamma, lambda) = (0.9, 0.95);
    let (adv, ret) = gae(&rewards, &values, gamma, lambda);
    let next = |t: usize| if t + 1 < 4 { values[t + 1] } else { 0.0 };
    for t in 0..4 {
        let want: f32 =
            (t..4).map(|l| (gamma * lambda).powi((l - t) as i32) * (rewards[l] + gamma * next(l) - values[l])).sum();
        assert!((adv[t] - want).abs() < 1e-6, "{t}: {} vs {want}", adv[t]);
        assert!((ret[t] - (want + values[t])).abs() < 1e-6);
    }
    let r = kl_penalized_rewards(2.0, &[-1.0, -2.0], &[-1.5, -1.0], 0.1, KlEstimator::K1, ScorePlacement::LastToken);
    assert!((r[0] + 0.05).abs() < 1e-6 && (r[1] - (0.1 + 2.0)).abs() < 1e-6, "{r:?}");
    let mut x = [1.0, 2.0, 3.0, 6.0];
    whiten(&mut x);
    let mean = x.iter().sum::<f32>() / 4.0;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 3.0;
    assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
}

#[test]
fn running_moments_equal_the_moments_of_everything_seen() {
    let all = [0.5f32, 2.0, -1.0, 3.5, 0.0, 7.0, 1.25];
    let mut m = RunningMoments::default();
    m.update(&all[..3]);
    m.update(&all[3..]);
    let mean = all.iter().map(|&x| x as f64).sum::<f64>() / 7.0;
    let var = all.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / 7.0;
    assert!((m.mean - mean).abs() < 1e-12 && (m.std() - var.sqrt()).abs() < 1e-12);
}

/// Pairs over the tiny vocabulary: the chosen response ends in token 10, the rejected in 20.
fn pairs(n: usize, offset: u32) -> Vec<Pair> {
    (0..n as u32)
        .map(|i| {
            let prompt = vec![1 + (i + offset) % 7, 30 + (i * 3 + offset) % 11, 2];
            let body = 40 + (i + offset) % 13;
            Pair { prompt, chosen: vec![body, 10], rejected: vec![body, 20] }
        })
        .collect()
}

fn constant_optim(lr: f64) -> (OptimConfig, Schedule) {
    (OptimConfig::default(), constant(lr, 0))
}

#[test]
fn reward_model_learns_a_preference_and_generalizes() {
    let lm = QwenModel::<B>::random(config(), 0.1, &Default::default());
    let (optim, schedule) = constant_optim(3e-3);
    let mut rm = RewardTrainer::new(ScoreModel::from_lm(lm), optim, schedule).unwrap();
    let train = PairBatch::new(&pairs(8, 0), 0, 16).unwrap();
    let held_out = [PairBatch::new(&pairs(8, 100), 0, 16).unwrap()];
    let before = rm.evaluate(&held_out).unwrap();
    let first = rm.train_step(&train).unwrap();
    for _ in 0..30 {
        rm.train_step(&train).unwrap();
    }
    let after = rm.evaluate(&held_out).unwrap();
    assert!(first.pairs.loss.is_finite() && first.step == 1);
    assert!(after.loss < 0.5 * before.loss && after.accuracy == 1.0, "{before:?} -> {after:?}");
    assert!(after.margin > before.margin + 1.0, "{before:?} -> {after:?}");
}

#[test]
fn dpo_starts_at_ln2_and_raises_the_chosen_margin() {
    let lm = QwenModel::<B>::random(config(), 0.1, &Default::default());
    let (optim, schedule) = constant_optim(3e-3);
    let mut dpo = DpoTrainer::new(lm, DpoConfig { beta: 0.1 }, optim, schedule).unwrap();
    let train = PairBatch::new(&pairs(8, 0), 0, 16).unwrap();
    let first = dpo.train_step(&train).unwrap();
    // The policy is the reference at step 0: every implicit reward is 0 (up to the rounding of
    // burn's autodiff attention path against the inner backend's), the loss ln 2.
    assert!((first.stats.loss - std::f32::consts::LN_2).abs() < 1e-5, "{:?}", first.stats);
    assert!(first.stats.chosen_reward.abs() < 1e-5 && first.stats.rejected_reward.abs() < 1e-5, "{:?}", first.stats);
    for _ in 0..20 {
        dpo.train_step(&train).unwrap();
    }
    let held_out = dpo.evaluate(&[PairBatch::new(&pairs(8, 100), 0, 16).unwrap()]).unwrap();
    assert!(held_out.accuracy == 1.0 && held_out.loss < 0.5, "{held_out:?}");
    assert!(held_out.chosen_reward > held_out.rejected_reward + 0.5, "{held_out:?}");
    assert!(DpoTrainer::new(dpo.policy.clone(), DpoConfig { beta: 0.0 }, optim, schedule).is_err());
}

#[test]
fn trainers_refuse_non_finite_losses_and_keep_the_model() {
    let lm = QwenModel::<B>::random(config(), 0.1, &Default::default());
    let (optim, schedule) = constant_optim(1e-3);
    let mut rm = RewardTrainer::new(ScoreModel::from_lm(lm), optim, schedule).unwrap();
    let nan = rm.model.score.weight.val().mul_scalar(f32::NAN);
    rm.model.score.weight = rm.model.score.weight.clone().map(|_| nan);
    let gamma_before = rm.model.trunk.model.norm.gamma.val().into_data();
    let err = rm.train_step(&PairBatch::new(&pairs(2, 0), 0, 16).unwrap()).unwrap_err();
    assert!(matches!(err, AlignError::NonFinite { step: 0, what: "loss" }), "{err}");
    assert_eq!(rm.model.trunk.model.norm.gamma.val().into_data(), gamma_before);
}

/// PPO on a learned reward: a reward model trained to prefer one-token responses 10 over 20
/// (which scores every other token somehow too); the policy answers with one token. The policy
/// stays put during the value warm-up, then PPO moves its expected score toward the best any token
/// gets.
#[test]
fn ppo_warms_up_the_value_model_then_raises_the_reward() {
    ppo_run(0);
}

/// The same with minibatches of 3 responses (16 per rollout: the last minibatch is ragged), so
/// each pass makes 6 value and 6 policy updates from the right slices of the rollout.
#[test]
fn ppo_in_minibatches_raises_the_reward_too() {
    ppo_run(3);
}

fn ppo_run(minibatch_rows: usize) {
    let device = Default::default();
    let (optim, schedule) = constant_optim(3e-3);
    let mut rm =
        RewardTrainer::new(ScoreModel::from_lm(QwenModel::<B>::random(config(), 0.1, &device)), optim, schedule)
            .unwrap();
    let one_token = |n: usize, offset: u32| -> Vec<Pair> {
        pairs(n, offset).into_iter().map(|p| Pair { chosen: vec![10], rejected: vec![20], ..p }).collect()
    };
    let train = PairBatch::new(&one_token(8, 0), 0, 16).unwrap();
    for _ in 0..30 {
        rm.train_step(&train).unwrap();
    }
    let policy = QwenModel::<B>::random(config(), 0.1, &device);
    let value = ScoreModel::from_lm(QwenModel::<B>::random(config(), 0.1, &device));
    let ppo_config = PpoConfig {
        max_new_tokens: 1,
        value_warmup_steps: 2,
        responses_per_query: 4,
        epochs: 2,
        minibatch_rows,
        ..PpoConfig::default()
    };
    let ppo_optim = PpoOptim { optim: OptimConfig::default(), policy: constant(1e-2, 0), value: constant(1e-2, 0) };
    let config = ppo_config.clone();
    let mut ppo = PpoTrainer::new(policy, value, rm.model.valid(), ppo_config, ppo_optim, vec![], 0).unwrap();
    let prompts: Vec<Vec<u32>> = pairs(4, 0).into_iter().map(|p| p.prompt).collect();
    let head_before = ppo.policy.model.lm_head.weight.val().into_data();
    let warm = ppo.step(&prompts, None).unwrap();
    assert!(!warm.policy_updated && warm.response_len == 1.0 && warm.kl.abs() < 1e-5, "{warm:?}");
    assert_eq!(ppo.policy.model.lm_head.weight.val().into_data(), head_before, "policy frozen during warm-up");
    ppo.step(&prompts, None).unwrap();
    // The policy's expected score, exactly: Σ_token π(token | prompt) · reward(prompt + token),
    // averaged over the prompts; and the best score any token gets.
    let reward = rm.model.valid();
    let expected = |policy: &QwenModel<Inner>| -> (f32, f32) {
        let last = policy.forward(&prompts).unwrap().narrow(1, prompts[0].len() - 1, 1);
        let probs = burn::tensor::activation::softmax(last, 2).into_data().to_vec::<f32>().unwrap();
        let (mut mean, mut best) = (0.0, 0.0);
        for (i, p) in prompts.iter().enumerate() {
            let rows: Vec<Vec<u32>> = (0..64).map(|t| [p.clone(), vec![t]].concat()).collect();
            let r = reward.rewards(&rows, &vec![p.len(); 64]).unwrap().into_data().to_vec::<f32>().unwrap();
            mean += (0..64).map(|t| probs[i * 64 + t] * r[t]).sum::<f32>() / prompts.len() as f32;
            best += r.iter().cloned().fold(f32::MIN, f32::max) / prompts.len() as f32;
        }
        (mean, best)
    };
    let (before, best) = expected(&ppo.valid_policy());
    let updates_per_step = config.epochs * if minibatch_rows == 0 { 1 } else { 16usize.div_ceil(minibatch_rows) };
    for i in 0..12 {
        let s = ppo.step(&prompts, None).unwrap();
        let u = &s.updates;
        assert!(s.policy_updated && u.value_loss.is_finite() && u.policy_loss.is_finite(), "{s:?}");
        // The reported statistics are the mean over every epoch x minibatch update.
        assert_eq!(s.minibatches.len(), updates_per_step);
        assert_eq!(*u, UpdateStats::mean(&s.minibatches));
        assert!(u.approx_kl >= 0.0 && (0.0..=1.0).contains(&u.clip_fraction), "{s:?}");
        assert!((0.0..=1.0).contains(&u.value_clip_fraction) && u.ratio > 0.0 && u.entropy > 0.0, "{s:?}");
        // The first update of a step runs on the rollout's own policy: ratio 1, no KL.
        let first = &s.minibatches[0];
        assert!((first.ratio - 1.0).abs() < 1e-4 && first.approx_kl < 1e-6, "{i}: {first:?}");
    }
    let (after, _) = expected(&ppo.valid_policy());
    // Over 300 random runs the smallest gain was 11% of the way (the median ~60%).
    assert!(after - before > 0.05 * (best - before), "expected score {before} -> {after}, best {best}");
}

/// A verifier over the tiny vocabulary: the response's ids as text, checked against the answer.
fn id_verifier() -> GrpoReward<Inner> {
    let decode: Decode = Box::new(|ids: &[u32]| Ok(ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")));
    GrpoReward::Verifier { verifier: verifier("exact_match").unwrap(), decode }
}

/// GRPO with the exact-match verifier on one-token answers: each prompt's answer is token 10. The
/// policy's exact expected reward `π(10 | prompt)` (no sampling noise in the check) rises, the
/// KL to the reference grows from 0, and the statistics carry TRL's names.
#[test]
fn grpo_raises_the_verifier_reward() {
    let device = Default::default();
    let policy = QwenModel::<B>::random(config(), 0.1, &device);
    let grpo = GrpoConfig { group_size: 8, max_new_tokens: 1, ..GrpoConfig::default() };
    let mut trainer =
        GrpoTrainer::new(policy, id_verifier(), grpo, OptimConfig::default(), constant(1e-2, 0), vec![], 0).unwrap();
    let prompts: Vec<Vec<u32>> = pairs(4, 0).into_iter().map(|p| p.prompt).collect();
    let batch = GrpoBatch { prompts: prompts.clone(), answers: vec![Some("10".into()); 4] };
    let expected = |policy: &QwenModel<Inner>| -> f32 {
        let last = policy.forward(&prompts).unwrap().narrow(1, prompts[0].len() - 1, 1);
        let probs = burn::tensor::activation::softmax(last, 2).into_data().to_vec::<f32>().unwrap();
        (0..prompts.len()).map(|i| probs[i * 64 + 10]).sum::<f32>() / prompts.len() as f32
    };
    let before = expected(&trainer.valid_policy());
    let mut first = None;
    for _ in 0..20 {
        let s = trainer.step(&batch).unwrap();
        assert!(s.loss.is_finite() && s.mean_length == 1.0 && (0.0..=1.0).contains(&s.reward), "{s:?}");
        assert!((0.0..=1.0).contains(&s.frac_reward_zero_std) && s.clip_region == 0.0, "one update: ratio 1, {s:?}");
        first.get_or_insert(s);
    }
    let first = first.unwrap();
    assert!(first.kl.abs() < 1e-6, "the first step's policy is the reference: {first:?}");
    let after = expected(&trainer.valid_policy());
    eprintln!("grpo, exact match on token 10: expected verifier reward {before:.4} -> {after:.4} in 20 steps");
    assert!(after > before + 0.2, "expected verifier reward {before} -> {after}");
    let json = serde_json::to_value(&first).unwrap();
    for key in [
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "kl",
        "entropy",
        "clip_ratio/region_mean",
        "completions/mean_length",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    // A prompt without an answer is a typed error for exact_match; so is an unknown verifier.
    let no_answer = GrpoBatch { prompts: prompts.clone(), answers: vec![None; 4] };
    assert!(matches!(trainer.step(&no_answer), Err(AlignError::Batch(_))));
    assert!(matches!(verifier("nope"), Err(AlignError::Config(_))));
    assert!(GrpoConfig { group_size: 1, ..GrpoConfig::default() }.validate().is_err());
}

/// A reward model saved in HF `Qwen2ForSequenceClassification` layout loads back with the same
/// rewards; a plain LM checkpoint is refused with a typed error naming the missing head.
#[test]
fn reward_models_save_as_sequence_classification_and_load_back() {
    let device = Default::default();
    let rm = ScoreModel::from_lm(QwenModel::<Inner>::random(config(), 0.1, &device));
    let dir = std::env::temp_dir().join(format!("qwen-align-rm-{}", std::process::id()));
    rm.save(&dir, qwen_model::SaveDtype::F32).unwrap();
    let config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config_json["architectures"], serde_json::json!(["Qwen2ForSequenceClassification"]));
    assert_eq!(config_json["num_labels"], 1);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("score.weight").unwrap().shape(), &[1, 32]);
    assert!(st.tensor("lm_head.weight").is_err(), "no LM head in a sequence-classification checkpoint");

    let back = ScoreModel::<Inner>::load(&dir, &device).unwrap();
    let batch = PairBatch::new(&pairs(4, 0), 0, 16).unwrap();
    let r = |m: &ScoreModel<Inner>| m.rewards(&batch.rows.rows, &batch.rows.ends).unwrap().into_data();
    r(&rm).assert_approx_eq::<f32>(&r(&back), burn::tensor::Tolerance::absolute(1e-6));

    let lm_dir = dir.join("lm");
    QwenModel::<Inner>::random(config(), 0.1, &device).save(&lm_dir, qwen_model::SaveDtype::F32).unwrap();
    let err = ScoreModel::<Inner>::load(&lm_dir, &device).unwrap_err();
    assert!(err.to_string().contains("score.weight") || err.to_string().contains("lm_head"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ppo_statistics_average_over_minibatches_under_trl_names() {
    let a = UpdateStats {
        policy_loss: 1.0,
        value_loss: 2.0,
        approx_kl: 0.5,
        clip_fraction: 0.0,
        value_clip_fraction: 1.0,
        entropy: 3.0,
        ratio: 1.0,
    };
    let b = UpdateStats {
        policy_loss: -1.0,
        value_loss: 4.0,
        approx_kl: 1.5,
        clip_fraction: 0.5,
        value_clip_fraction: 0.0,
        entropy: 1.0,
        ratio: 1.5,
    };
    let m = UpdateStats::mean(&[a, b]);
    let want = UpdateStats {
        policy_loss: 0.0,
        value_loss: 3.0,
        approx_kl: 1.0,
        clip_fraction: 0.25,
        value_clip_fraction: 0.5,
        entropy: 2.0,
        ratio: 1.25,
    };
    assert_eq!(m, want);
    assert_eq!(UpdateStats::mean(&[a]), a);

    // Per-minibatch numbers: log-ratios ln 1.5 (A = 1: clipped), ln 0.5 (A = −1: clipped), ln 1.1
    // (inside the range), ln 0.5 with A = +1 (the unclipped term is the larger: not clipped).
    let logp = [1.5f32.ln(), 0.5f32.ln(), 1.1f32.ln(), 0.5f32.ln()];
    let (ratio, approx_kl, clipfrac) = ratio_stats(&logp, &[0.0; 4], &[1.0, -1.0, 2.0, 1.0], 0.2);
    assert!((ratio - (1.5 + 0.5 + 1.1 + 0.5) / 4.0).abs() < 1e-6);
    let want_kl = 0.5 * logp.iter().map(|d| d * d).sum::<f32>() / 4.0;
    assert!((approx_kl - want_kl).abs() < 1e-6 && (clipfrac - 0.5).abs() < 1e-6, "{approx_kl} {clipfrac}");
    // Value clip: V = 2, V_old = 1, R = 0 → the clipped term 1.15² is smaller: not counted; V = 0.5,
    // V_old = 1, R = 0 → clipped 0.85² > 0.25: counted.
    assert_eq!(value_clip_fraction(&[2.0, 0.5], &[1.0, 1.0], &[0.0, 0.0], 0.15), 0.5);

    let json = serde_json::to_value(PpoStats { updates: want, kl: 0.25, ..PpoStats::default() }).unwrap();
    for key in [
        "objective/kl",
        "objective/entropy",
        "objective/scores",
        "objective/non_score_reward",
        "objective/rlhf_reward",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "policy/entropy_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio",
        "val/ratio_var",
        "step",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["objective/kl"], 0.25);
    assert_eq!(json["val/ratio"], 1.25);
    assert!(json.get("minibatches").is_none());
}

/// Rollouts sampled at a temperature are scored at it: the policy's and the reference's log-probs
/// of each sampled token are `log_softmax(logits / T)` (TRL), the same as the sampler drew from;
/// a temperature of 0 (greedy: no distribution to take ratios of) is refused by PPO and GRPO.
#[test]
fn ppo_logprobs_are_the_sampling_temperatures() {
    let device = Default::default();
    let policy = QwenModel::<B>::random(config(), 0.5, &device);
    let value = ScoreModel::from_lm(QwenModel::<B>::random(config(), 0.1, &device));
    let reward = ScoreModel::from_lm(QwenModel::<Inner>::random(config(), 0.1, &device));
    let t = 0.5f32;
    let mut ppo_config = PpoConfig { max_new_tokens: 3, value_warmup_steps: 0, ..PpoConfig::default() };
    ppo_config.sampling.temperature = t;
    let optim = PpoOptim { optim: OptimConfig::default(), policy: constant(1e-2, 0), value: constant(1e-2, 0) };
    let mut ppo = PpoTrainer::new(policy, value, reward, ppo_config.clone(), optim, vec![], 0).unwrap();
    let prompts: Vec<Vec<u32>> = pairs(3, 0).into_iter().map(|p| p.prompt).collect();
    let rollout = ppo.rollout(&prompts).unwrap();
    let batch = &rollout.batch;
    let logits = qwen_model::CausalLm::logits_of(&ppo.valid_policy(), &batch.rows, qwen_model::Mode::Training).unwrap();
    let v = logits.dims()[2];
    let logits = logits.into_data().to_vec::<f32>().unwrap();
    assert_eq!(rollout.positions.len(), rollout.old_logprobs.len());
    for (k, &p) in rollout.positions.iter().enumerate() {
        let row: Vec<f64> = logits[p as usize * v..(p as usize + 1) * v].iter().map(|&x| x as f64 / t as f64).collect();
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        let want = (row[batch.targets[p as usize] as usize] - lse) as f32;
        assert!((rollout.old_logprobs[k] - want).abs() < 1e-4, "{k}: {} vs {want}", rollout.old_logprobs[k]);
        // The reference is the starting policy: the same numbers.
        assert!((rollout.ref_logprobs[k] - want).abs() < 1e-4, "{k}: {} vs {want}", rollout.ref_logprobs[k]);
    }
    // The updates take their log-probs at the same temperature: the first update of a step runs
    // on the rollout's own policy (ratio 1, no KL), and so does GRPO's single update (nothing clipped).
    let first = ppo.step(&prompts, None).unwrap().minibatches[0];
    assert!((first.ratio - 1.0).abs() < 1e-4 && first.approx_kl < 1e-6, "{first:?}");
    let mut grpo_config = GrpoConfig { group_size: 4, max_new_tokens: 3, ..GrpoConfig::default() };
    grpo_config.sampling.temperature = t;
    let policy = QwenModel::<B>::random(config(), 0.5, &device);
    let mut grpo = GrpoTrainer::new(
        policy,
        id_verifier(),
        grpo_config.clone(),
        OptimConfig::default(),
        constant(1e-2, 0),
        vec![],
        0,
    )
    .unwrap();
    let batch = GrpoBatch { prompts: prompts.clone(), answers: vec![Some("10".into()); 3] };
    let s = grpo.step(&batch).unwrap();
    assert!(s.clip_region == 0.0 && s.kl.abs() < 1e-6, "{s:?}");
    ppo_config.sampling.temperature = 0.0;
    assert!(matches!(ppo_config.validate(), Err(AlignError::Config(_))));
    grpo_config.sampling.temperature = 0.0;
    assert!(matches!(grpo_config.validate(), Err(AlignError::Config(_))));
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qwen-align-run-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every file under `dir` (optimizer records and checksums included: nothing in a checkpoint
/// depends on burn's per-process parameter ids or hash-map order), by relative path.
fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Runs a stage straight to its end in one folder; in another, stops it after `stop` steps (the last
/// checkpoint before that is at `every`'s multiple: a kill), reopens and finishes it. The two
/// folders must hold the same metrics, the same final weights and state files, and the config.
fn assert_resumes_exactly<S: Stage, C: RunConfig>(
    name: &str,
    config: &C,
    open: &dyn Fn(&std::path::Path) -> Run<S>,
    data: &dyn Fn(u64) -> S::Batch,
    stop: u64,
) {
    let (straight, resumed) = (tmp(&format!("{name}-straight")), tmp(&format!("{name}-resumed")));
    let mut data = |s: u64| -> qwen_align::Result<S::Batch> { Ok(data(s)) };
    let mut run = open(&straight);
    assert_eq!(run.resumed_from(), None);
    run.train(&mut data, |_| {}).unwrap();
    assert_eq!(run.step(), config.steps());
    drop(run);

    let mut run = open(&resumed);
    run.train_until(stop, &mut data, |_| {}).unwrap();
    drop(run); // killed: what it did after its last checkpoint is lost
    let mut run = open(&resumed);
    let at = stop - stop % config.checkpoint_every();
    assert_eq!(run.resumed_from(), Some(at));
    let mut seen = Vec::new();
    run.train(&mut data, |_| seen.push(())).unwrap();
    assert_eq!(seen.len() as u64, config.steps() - at);
    drop(run);

    let metrics = |d: &std::path::Path| std::fs::read_to_string(d.join(qwen_align::run::METRICS_FILE)).unwrap();
    let (a, b) = (metrics(&straight), metrics(&resumed));
    assert_eq!(a.lines().count() as u64, config.steps());
    assert_eq!(a, b, "{name}: the resumed run logged something else");
    let checkpoint = |d: &std::path::Path| files(&d.join(qwen_align::run::CHECKPOINT_DIR));
    let (a, b) = (checkpoint(&straight), checkpoint(&resumed));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "{name}: the resumed checkpoint holds other files");
    let differ: Vec<&str> = a.iter().zip(&b).filter(|(x, y)| x.1 != y.1).map(|(x, _)| x.0.as_str()).collect();
    assert!(differ.is_empty(), "{name}: the resumed run's checkpoint differs in {differ:?}");
    assert_eq!(&load_config::<C>(&resumed).unwrap(), config);

    // A finished run reopened trains nothing.
    let mut run = open(&resumed);
    run.train(&mut data, |_| panic!("a finished run trained")).unwrap();
    for d in [straight, resumed] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

fn token_batch(step: u64) -> qwen_data::TokenBatch {
    let (batch, seq) = (2, 8);
    let mut out = qwen_data::TokenBatch { batch, seq_len: seq, ..Default::default() };
    for r in 0..batch as u64 {
        let row: Vec<u32> =
            (0..=seq as u64).map(|i| ((i * 7 + r * 13 + step * 29 + (i * i) % 5) % 64) as u32).collect();
        out.inputs.extend(&row[..seq]);
        out.targets.extend(&row[1..]);
    }
    out
}

fn pair_batch(step: u64) -> PairBatch {
    PairBatch::new(&pairs(4, step as u32 * 4), 0, 16).unwrap()
}

#[test]
fn sft_and_reward_runs_resume_exactly() {
    let device = Default::default();
    let lm = QwenModel::<B>::random(config(), 0.1, &device);
    let sft =
        SftConfig { train: qwen_train::TrainConfig::new(Schedule::new(3e-3, 1, 5), 3), steps: 5, checkpoint_every: 2 };
    let open = |d: &std::path::Path| Run::sft(&sft, lm.clone(), d, &device).unwrap();
    assert_resumes_exactly("sft", &sft, &open, &|s| vec![token_batch(s)], 3);

    let rm = ScoreModel::from_lm(lm.clone());
    let reward = RewardConfig {
        optim: OptimConfig::default(),
        schedule: constant(3e-3, 1),
        pmp_steps: 2,
        finetune_steps: 3,
        checkpoint_every: 2,
    };
    let open = |d: &std::path::Path| Run::reward(&reward, rm.clone(), d, &device).unwrap();
    assert_resumes_exactly("reward", &reward, &open, &pair_batch, 3);
    // The phases are tagged; a folder holding another run's checkpoint is refused.
    let dir = tmp("reward-tags");
    let mut run = open(&dir);
    let (mut pmp, mut fine) = (|s| Ok(pair_batch(s)), |s| Ok(pair_batch(s + 100)));
    run.train_phases(3, &mut pmp, &mut fine, |_| {}).unwrap();
    let tags: Vec<String> = qwen_train::read_metrics(run.metrics_path())
        .unwrap()
        .iter()
        .map(|r| r["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tags, ["pmp", "pmp", "rm"]);
    let other = RewardConfig { pmp_steps: 1, ..reward };
    assert!(matches!(Run::reward(&other, rm.clone(), &dir, &device), Err(AlignError::Config(_))));
    assert!(Run::reward(&RewardConfig { checkpoint_every: 0, ..reward }, rm, tmp("bad"), &device).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// PPO on the tiny model: 5 steps of 2-token responses, 2 per prompt, 2 passes in minibatches of 3
/// rows, value-only for the first `value_warmup_steps`, a checkpoint every 2.
fn tiny_ppo(value_warmup_steps: u64) -> PpoRunConfig {
    PpoRunConfig {
        ppo: PpoConfig {
            max_new_tokens: 2,
            value_warmup_steps,
            responses_per_query: 2,
            epochs: 2,
            minibatch_rows: 3,
            ..PpoConfig::default()
        },
        optim: PpoOptim { optim: OptimConfig::default(), policy: constant(1e-2, 0), value: constant(1e-2, 0) },
        stop_ids: vec![10],
        pad_id: 0,
        steps: 5,
        checkpoint_every: 2,
    }
}

#[test]
fn dpo_and_ppo_runs_resume_exactly() {
    let device = Default::default();
    let policy = QwenModel::<B>::random(config(), 0.1, &device);
    let dpo = DpoRunConfig {
        dpo: DpoConfig { beta: 0.1 },
        optim: OptimConfig::default(),
        schedule: constant(3e-3, 0),
        steps: 5,
        checkpoint_every: 2,
    };
    let open = |d: &std::path::Path| Run::dpo(&dpo, policy.clone(), d, &device).unwrap();
    assert_resumes_exactly("dpo", &dpo, &open, &pair_batch, 3);

    let value = ScoreModel::from_lm(QwenModel::<B>::random(config(), 0.1, &device));
    let reward = ScoreModel::from_lm(QwenModel::<Inner>::random(config(), 0.1, &device));
    let ppo = tiny_ppo(1);
    let open = |d: &std::path::Path| Run::ppo(&ppo, policy.clone(), value.clone(), reward.clone(), d, &device).unwrap();
    let data = |s: u64| PpoBatch { prompts: pairs(2, s as u32).into_iter().map(|p| p.prompt).collect(), ptx: None };
    assert_resumes_exactly("ppo", &ppo, &open, &data, 3);

    // PPO with TRL's conventions (k3, the score one slot after the response) resumes exactly too.
    let trl_like = PpoRunConfig {
        ppo: PpoConfig {
            kl_estimator: KlEstimator::K3,
            score_placement: ScorePlacement::AfterResponse,
            ..ppo.ppo.clone()
        },
        ..ppo.clone()
    };
    let open =
        |d: &std::path::Path| Run::ppo(&trl_like, policy.clone(), value.clone(), reward.clone(), d, &device).unwrap();
    assert_resumes_exactly("ppo-trl", &trl_like, &open, &data, 3);
}

/// GRPO on the tiny model: 5 steps of groups of 3 two-token replies, 2 updates each, a checkpoint
/// every 2.
fn tiny_grpo() -> GrpoRunConfig {
    GrpoRunConfig {
        grpo: GrpoConfig { group_size: 3, max_new_tokens: 2, iterations: 2, ..GrpoConfig::default() },
        optim: OptimConfig::default(),
        schedule: constant(1e-2, 0),
        stop_ids: vec![10],
        pad_id: 0,
        steps: 5,
        checkpoint_every: 2,
    }
}

#[test]
fn grpo_runs_resume_exactly() {
    let device = Default::default();
    let policy = QwenModel::<B>::random(config(), 0.1, &device);
    let reward = ScoreModel::from_lm(QwenModel::<Inner>::random(config(), 0.1, &device));
    let grpo = tiny_grpo();
    let data =
        |s: u64| GrpoBatch { prompts: pairs(2, s as u32).into_iter().map(|p| p.prompt).collect(), answers: vec![] };
    let open =
        |d: &std::path::Path| Run::grpo(&grpo, policy.clone(), GrpoReward::Model(reward.clone()), d, &device).unwrap();
    assert_resumes_exactly("grpo-model", &grpo, &open, &data, 3);
    let data = |s: u64| GrpoBatch {
        prompts: pairs(2, s as u32).into_iter().map(|p| p.prompt).collect(),
        answers: vec![Some("10".into()); 2],
    };
    let open = |d: &std::path::Path| Run::grpo(&grpo, policy.clone(), id_verifier(), d, &device).unwrap();
    assert_resumes_exactly("grpo-verifier", &grpo, &open, &data, 3);
}

#[test]
fn epoch_sampler_visits_every_item_once_per_epoch_as_a_function_of_the_step() {
    let sampler = EpochSampler { len: 10, batch: 4, seed: 3 };
    // Steps 0..5 cover two epochs exactly (20 items); batch 2 straddles them.
    let all: Vec<usize> = (0..5).flat_map(|s| sampler.indices(s)).collect();
    for epoch in all.chunks(10) {
        let mut e = epoch.to_vec();
        e.sort();
        assert_eq!(e, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(all[..10], all[10..], "each epoch is shuffled anew");
    assert_eq!(sampler.indices(3), EpochSampler { len: 10, batch: 4, seed: 3 }.indices(3));
    assert_ne!(sampler.indices(0), EpochSampler { seed: 4, ..sampler }.indices(0));
    assert!(EpochSampler { len: 0, ..sampler }.indices(7).is_empty());
}

/// A random policy with rank-4 adapters (dropout 0.1) on every projection, its base frozen.
fn lora_policy(device: &burn::tensor::Device<Inner>) -> QwenModel<B> {
    let lora = qwen_model::LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: qwen_model::LoraConfig::ALL_PROJECTIONS.map(String::from).to_vec(),
    };
    QwenModel::<B>::random(config(), 0.1, device).with_lora(&lora, 9).unwrap().freeze_base()
}

/// `trained` came from `start` by LoRA training: its base weights are `start`'s to the byte, every
/// adapter's `B` left zero, and its adapter, saved in PEFT's layout, loads back onto the saved base
/// with `trained`'s logits.
fn assert_only_adapters_trained(name: &str, start: &QwenModel<Inner>, trained: &QwenModel<Inner>) {
    let dir = tmp(name);
    start.save(dir.join("start"), qwen_model::SaveDtype::F32).unwrap();
    trained.save(dir.join("trained"), qwen_model::SaveDtype::F32).unwrap();
    let bytes = |d: &str| std::fs::read(dir.join(d).join("model.safetensors")).unwrap();
    assert_eq!(bytes("start"), bytes("trained"), "{name}: a base weight changed");
    trained.save_adapter(dir.join("adapter"), "base").unwrap();
    let file = std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    let b_names: Vec<String> =
        tensors.names().into_iter().filter(|n| n.ends_with("lora_B.weight")).map(String::from).collect();
    // 2 layers x 7 projections, PEFT's names.
    assert_eq!(b_names.len(), 14, "{name}: {b_names:?}");
    for n in &b_names {
        assert!(n.starts_with("base_model.model.model.layers."), "{name}: {n} is not PEFT's name");
        let t = tensors.tensor(n).unwrap();
        let moved = t.data().chunks(4).any(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) != 0.0);
        assert!(moved, "{name}: adapter {n} did not train (B is still zero)");
    }
    let device = Default::default();
    let loaded =
        qwen_model::load::<Inner>(dir.join("trained"), &device).unwrap().load_adapter(dir.join("adapter")).unwrap();
    let rows: Vec<Vec<u32>> = pairs(2, 5).into_iter().map(|p| [p.prompt, p.chosen].concat()).collect();
    let (a, b) = (loaded.forward(&rows).unwrap(), trained.forward(&rows).unwrap());
    let diff = (a - b).abs().max().into_scalar();
    assert!(diff <= 1e-6, "{name}: the reloaded adapter's logits differ by {diff}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ppo_and_grpo_with_lora_train_only_the_adapters_and_resume_exactly() {
    let device = Default::default();
    let policy = lora_policy(&device);
    let start = policy.valid();
    let value = ScoreModel::from_lm(QwenModel::<B>::random(config(), 0.1, &device));
    let reward = ScoreModel::from_lm(QwenModel::<Inner>::random(config(), 0.1, &device));
    let ppo = tiny_ppo(0);
    let data = |s: u64| PpoBatch { prompts: pairs(2, s as u32).into_iter().map(|p| p.prompt).collect(), ptx: None };
    let open = |d: &std::path::Path| Run::ppo(&ppo, policy.clone(), value.clone(), reward.clone(), d, &device).unwrap();
    // Dropout on: a resumed run must draw the masks the uninterrupted one drew.
    assert_resumes_exactly("ppo-lora", &ppo, &open, &data, 3);
    let short = PpoRunConfig { steps: 2, ..ppo.clone() };
    let dir = tmp("ppo-lora-short");
    let mut run = Run::ppo(&short, policy.clone(), value.clone(), reward.clone(), &dir, &device).unwrap();
    run.train(&mut |s| Ok(data(s)), |_| {}).unwrap();
    assert_only_adapters_trained("ppo-lora", &start, &run.stage.valid_policy());
    drop(run);
    std::fs::remove_dir_all(dir).unwrap();

    let grpo = tiny_grpo();
    let data =
        |s: u64| GrpoBatch { prompts: pairs(2, s as u32).into_iter().map(|p| p.prompt).collect(), answers: vec![] };
    let open =
        |d: &std::path::Path| Run::grpo(&grpo, policy.clone(), GrpoReward::Model(reward.clone()), d, &device).unwrap();
    assert_resumes_exactly("grpo-lora", &grpo, &open, &data, 3);
    let short = GrpoRunConfig { steps: 2, ..grpo.clone() };
    let dir = tmp("grpo-lora-short");
    let mut run = Run::grpo(&short, policy.clone(), GrpoReward::Model(reward.clone()), &dir, &device).unwrap();
    run.train(&mut |s| Ok(data(s)), |_| {}).unwrap();
    assert_only_adapters_trained("grpo-lora", &start, &run.stage.valid_policy());
    drop(run);
    std::fs::remove_dir_all(dir).unwrap();
}
