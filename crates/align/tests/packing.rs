//! SFT packing on a tiny random model (`Autodiff<Flex>`): conversations packed into one row compute
//! exactly what they compute one per unpadded row (every per-token loss, and the gradient of the
//! summed loss for every parameter), and no packed conversation sees another. And activation
//! checkpointing (`sft --checkpointing`, `Autodiff<Flex, BalancedCheckpointing>`) computes the
//! loss and gradients plain autodiff computes.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use qwen_align::{pack_rows, Overflow, PackedSftBatcher, SftBatcher};
use qwen_data::{Batcher, TokenBatch};
use qwen_model::{Mode, Qwen, QwenConfig, QwenModel};
use qwen_tokenizer::train::{BpeTrainer, TrainerConfig};
use qwen_tokenizer::{ChatMl, ChatTokens, Message, Role};
use qwen_train::{lm_nll_and_grads, model_batch, IGNORE_INDEX};

type AD = Autodiff<Flex>;

/// Relative tolerance of the comparisons (f32 sums in a different order).
const TOLERANCE: f64 = 1e-5;

/// A random Qwen2 (biases on q/k/v, GQA) over the byte tokenizer's 259 ids.
fn model() -> QwenModel<AD> {
    let config = QwenConfig::from_json(serde_json::json!({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 260, "hidden_size": 32,
        "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": false, "torch_dtype": "float32"
    }))
    .unwrap();
    QwenModel::random(config, 0.2, &Default::default())
}

/// Conversations rendered with a byte-level tokenizer (ChatML specials at 256..=258), of
/// different lengths; `reply` varies the first one's assistant text.
fn conversations(first_reply: &str) -> (Vec<ChatTokens>, u32) {
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    let tok = BpeTrainer::new(TrainerConfig { vocab_size: 256, specials, ..TrainerConfig::default() })
        .unwrap()
        .train()
        .unwrap();
    let chat = ChatMl::new(&tok).unwrap();
    let turns: [&[(Role, &str)]; 3] = [
        &[(Role::User, "2+2?"), (Role::Assistant, first_reply)],
        &[(Role::User, "name a colour"), (Role::Assistant, "blue"), (Role::User, "another"), (Role::Assistant, "red")],
        &[(Role::User, "hi"), (Role::Assistant, "hello there, friend")],
    ];
    let convs = turns
        .iter()
        .map(|t| {
            let messages: Vec<Message> = t.iter().map(|(r, c)| Message::new(*r, *c)).collect();
            chat.render("sys", &messages).unwrap()
        })
        .collect();
    (convs, tok.special_id("<|endoftext|>").unwrap())
}

/// One packed row of `convs` with `pad` positions of padding after them.
fn packed(convs: &[ChatTokens], pad_id: u32, pad: usize) -> TokenBatch {
    let seq_len = convs.iter().map(|c| c.ids.len()).sum::<usize>() + pad;
    PackedSftBatcher { seq_len, pad_id, overflow: Overflow::Error }.batch(vec![convs.to_vec()]).unwrap()
}

/// Each conversation alone, one unpadded row of its own length.
fn separate(convs: &[ChatTokens], pad_id: u32) -> Vec<TokenBatch> {
    convs
        .iter()
        .map(|c| SftBatcher { seq_len: c.ids.len(), pad_id, overflow: Overflow::Error }.batch(vec![c.clone()]).unwrap())
        .collect()
}

/// Logits `[seq * vocab]` of a one-row batch (packed or not), training forward.
fn logits(model: &QwenModel<AD>, b: &TokenBatch) -> Vec<f32> {
    let m = model.valid();
    m.logits(&model_batch(&m, b).unwrap(), Mode::Training).unwrap().into_data().to_vec().unwrap()
}

/// The NLL of every counted target of a one-row batch, in order.
fn token_losses(model: &QwenModel<AD>, b: &TokenBatch) -> Vec<f64> {
    let vocab = model.config.vocab_size;
    let logits = logits(model, b);
    b.targets
        .iter()
        .enumerate()
        .filter(|(_, &t)| t != IGNORE_INDEX)
        .map(|(i, &t)| {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x)) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            lse - row[t as usize] as f64
        })
        .collect()
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= TOLERANCE * scale.max(1e-6)
}

/// Compares two gradients parameter by parameter (each within TOLERANCE of the larger tensor's
/// largest magnitude), counting the parameters compared.
struct SameGrads<'a> {
    a: &'a GradientsParams,
    b: &'a GradientsParams,
    compared: usize,
    params: usize,
}

impl ModuleVisitor<AD> for SameGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        self.params += 1;
        let get = |g: &GradientsParams| -> Vec<f32> {
            g.get::<Flex, D>(param.id).expect("every parameter has a gradient").into_data().to_vec().unwrap()
        };
        let (a, b) = (get(self.a), get(self.b));
        let scale = a.iter().chain(&b).fold(0f32, |m, x| m.max(x.abs())) as f64;
        let worst = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0f64, f64::max);
        assert!(close(worst, 0.0, scale), "parameter {:?}: gradients differ by {worst} (scale {scale})", param.id);
        assert!(scale > 0.0, "parameter {:?} has a zero gradient: nothing compared", param.id);
        self.compared += 1;
    }
}

#[test]
fn packed_rows_compute_what_separate_rows_compute() {
    let model = model();
    let (convs, pad_id) = conversations("4");
    let packed = packed(&convs, pad_id, 5);
    let separate = separate(&convs, pad_id);

    // Per-token losses: the packed row's counted targets are the separate rows', in order.
    let got = token_losses(&model, &packed);
    let want: Vec<f64> = separate.iter().flat_map(|b| token_losses(&model, b)).collect();
    assert_eq!(got.len(), want.len(), "the packed row counts the targets the separate rows count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(close(*g, *w, w.abs()), "target {i}: packed {g} vs separate {w}");
    }

    // Gradients of the summed token loss (normalizer 1), every parameter.
    let (nll_packed, grads_packed) = lm_nll_and_grads(&model, std::slice::from_ref(&packed), 1).unwrap();
    let (nll_separate, grads_separate) = lm_nll_and_grads(&model, &separate, 1).unwrap();
    assert!(close(nll_packed, nll_separate, nll_separate), "summed NLL {nll_packed} vs {nll_separate}");
    assert!(close(nll_separate, want.iter().sum(), nll_separate), "the summed NLL is the sum of the token losses");
    let mut same = SameGrads { a: &grads_packed, b: &grads_separate, compared: 0, params: 0 };
    model.visit(&mut same);
    assert!(
        same.compared > 0 && same.compared == same.params,
        "{} of {} parameters compared",
        same.compared,
        same.params
    );
}

#[test]
fn a_packed_conversation_does_not_see_the_others() {
    let model = model();
    let vocab = model.config.vocab_size;
    let (a, pad_id) = conversations("4");
    let (changed, _) = conversations("five");
    // Same length for A, different tokens: B and C sit at the same columns in both rows.
    let (a, changed): (Vec<ChatTokens>, Vec<ChatTokens>) = {
        let (mut a, mut c) = (a, changed);
        let len = a[0].ids.len().min(c[0].ids.len());
        for x in [&mut a[0], &mut c[0]] {
            x.ids.truncate(len);
            x.tags.truncate(len);
        }
        (a, c)
    };
    assert_ne!(a[0].ids, changed[0].ids);
    let first = a[0].ids.len();
    let rest = |l: Vec<f32>| l[first * vocab..].to_vec();

    let before = rest(logits(&model, &packed(&a, pad_id, 0)));
    let after = rest(logits(&model, &packed(&changed, pad_id, 0)));
    let scale = before.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let worst = before.iter().zip(&after).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0f64, f64::max);
    assert!(close(worst, 0.0, scale), "the other conversations' logits moved by {worst} when the first changed");

    // The control: the same rows without segments (plain causal attention) do see the change.
    let plain = |b: TokenBatch| TokenBatch { segments: Vec::new(), ..b };
    let before = rest(logits(&model, &plain(packed(&a, pad_id, 0))));
    let after = rest(logits(&model, &plain(packed(&changed, pad_id, 0))));
    let moved = before.iter().zip(&after).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "without segments the change is seen ({moved})");
}

#[test]
fn pack_rows_fills_rows_without_overflow_or_loss() {
    let lengths = [7, 3, 9, 2, 5, 5, 12, 1, 4, 8];
    let seq = 12;
    let rows = pack_rows(&lengths, seq);
    let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>(), "every conversation once");
    for row in &rows {
        assert!(row.iter().map(|&i| lengths[i]).sum::<usize>() <= seq, "row {row:?} overflows");
    }
    // 56 tokens in rows of 12: at least 5 rows; best-fit decreasing needs exactly 5 here.
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(pack_rows(&lengths, seq), rows, "deterministic");
}

/// Every parameter's gradient, in visiting order.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<Vec<f32>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let g = self.grads.get::<B::InnerBackend, D>(param.id).expect("every parameter has a gradient");
        self.out.push(g.into_data().to_vec().unwrap());
    }
}

/// The summed NLL of `batch` and every parameter's gradient, with `weights` on backend `B`.
fn loss_and_grads<B: AutodiffBackend<InnerBackend = Flex>>(
    weights: &QwenModel<Flex>,
    batch: &TokenBatch,
) -> (f64, Vec<Vec<f32>>) {
    // Trainable parameters (`from_inner` gives constants), with the same ids on either backend.
    let trunk = qwen_train::persist::with_stable_ids::<B, _>(Qwen::<B>::from_inner(weights.model.clone()));
    let model = QwenModel::new(weights.config.clone(), trunk);
    let (nll, grads) = lm_nll_and_grads(&model, std::slice::from_ref(batch), 1).unwrap();
    let mut collect = Collect { grads: &grads, out: Vec::new() };
    model.visit(&mut collect);
    (nll, collect.out)
}

#[test]
fn checkpointed_training_computes_the_same_loss_and_gradients() {
    let weights = model().valid();
    let (convs, pad_id) = conversations("4");
    for batch in [packed(&convs, pad_id, 5), separate(&convs, pad_id).swap_remove(1)] {
        let (nll_a, a) = loss_and_grads::<AD>(&weights, &batch);
        let (nll_b, b) = loss_and_grads::<Autodiff<Flex, BalancedCheckpointing>>(&weights, &batch);
        assert!(close(nll_a, nll_b, nll_a.abs()), "loss {nll_a} vs {nll_b}");
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) as f64;
            assert!(scale > 0.0 && close(worst, 0.0, scale), "parameter {i}: differs by {worst} (scale {scale})");
        }
    }
}
