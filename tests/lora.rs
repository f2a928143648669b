//! LoRA against PEFT itself: an adapter PEFT 0.21.2 wrote on the tiny Qwen2 fixture checkpoint
//! (`tools/reference/peft_fixtures.py`, `tests/fixtures/lora/`) loads here and gives PEFT's logits,
//! unmerged and merged (`merge_and_unload`), to 1e-5; an adapter saved here has exactly PEFT's tensor
//! names, shapes and config keys; LoRA SFT trains only the adapters, its loss falls, and a run stopped
//! and resumed ends with the bytes of an uninterrupted one (dropout on).

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use qwen_align::{Run, SftConfig};
use qwen_data::TokenBatch;
use qwen_model::{LoraConfig, QwenModel};
use qwen_train::{Schedule, TrainConfig};

mod common;

use common::{max_diff, root, Reference};

type B = Flex;
type AD = Autodiff<Flex>;

const TOLERANCE: f32 = 1e-5;

fn fixture() -> PathBuf {
    root().join("tests/fixtures/lora")
}

fn base_dir() -> PathBuf {
    root().join("tests/fixtures/model/qwen2_gqa")
}

fn logits(model: &QwenModel<B>, ids: &[u32]) -> Vec<f32> {
    model.forward(&[ids.to_vec()]).unwrap().into_data().to_vec().unwrap()
}

fn rows(r: &Reference) -> Vec<Vec<u32>> {
    (0..).map_while(|i| r.ids(&format!("input_ids.{i}"))).collect()
}

#[test]
fn a_peft_adapter_gives_peft_logits_unmerged_and_merged() {
    let device = Default::default();
    let base = qwen_model::load::<B>(base_dir(), &device).unwrap();
    let r = Reference::open(&fixture());
    let rows = rows(&r);
    assert_eq!(rows.len(), 3);
    let adapted = base.clone().load_adapter(fixture().join("adapter")).unwrap();
    assert_eq!(adapted.adapters().len(), 2 * 7, "two layers, seven projections");
    let merged = adapted.clone().merged();
    assert!(!merged.has_lora());
    let (mut worst, mut worst_merged, mut effect) = (0f32, 0f32, 0f32);
    for (i, ids) in rows.iter().enumerate() {
        let want = r.floats(&format!("peft_logits.{i}")).unwrap();
        let got = logits(&adapted, ids);
        worst = worst.max(max_diff(&got, &want));
        let want_merged = r.floats(&format!("merged_logits.{i}")).unwrap();
        worst_merged = worst_merged.max(max_diff(&logits(&merged, ids), &want_merged));
        effect = effect.max(max_diff(&logits(&base, ids), &want));
    }
    println!("PEFT adapter: max |logit error| {worst:.2e} unmerged, {worst_merged:.2e} merged (the adapter moves logits by up to {effect:.2})");
    assert!(worst <= TOLERANCE, "unmerged: {worst:e}");
    assert!(worst_merged <= TOLERANCE, "merged: {worst_merged:e}");
    // The comparison means something: the adapter changes the logits by far more than the tolerance.
    assert!(effect > 0.5, "the fixture adapter barely changes the model ({effect})");
}

/// `(name, shape)` of every tensor of a safetensors file, sorted.
fn names_and_shapes(path: &Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<usize>)> =
        st.tensors().into_iter().map(|(n, t)| (n.to_string(), t.shape().to_vec())).collect();
    v.sort();
    v
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn peft_config() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.05,
        target_modules: LoraConfig::ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect(),
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_saved_adapter_has_peft_names_shapes_and_config_keys_and_loads_back() {
    let device = Default::default();
    let base = qwen_model::load::<B>(base_dir(), &device).unwrap();
    let fresh = base.clone().with_lora(&peft_config(), 7).unwrap();
    // B starts at zero, as PEFT's: a fresh adapter changes nothing.
    let ids = [1u32, 2, 3, 4, 5, 6];
    assert_eq!(logits(&fresh, &ids), logits(&base, &ids));
    // Give B values so the round trip is tested on something visible.
    let mut model = fresh;
    for layer in model.model.layers.iter_mut() {
        if let Some(l) = layer.self_attn.q_lora.as_mut() {
            let b = l.lora_b.val();
            l.lora_b = Param::from_tensor(b.clone().random_like(burn::tensor::Distribution::Normal(0.0, 0.3)));
        }
    }
    let dir = tmp("saved");
    model.save_adapter(&dir, "tests/fixtures/model/qwen2_gqa").unwrap();
    let ours = names_and_shapes(&dir.join("adapter_model.safetensors"));
    let peft = names_and_shapes(&fixture().join("adapter/adapter_model.safetensors"));
    assert_eq!(ours, peft, "tensor names and shapes");
    assert!(ours
        .iter()
        .any(|(n, s)| n == "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" && s == &[4, 64]));
    let (c, p) = (json(&dir.join("adapter_config.json")), json(&fixture().join("adapter/adapter_config.json")));
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&c), keys(&p), "adapter_config.json keys");
    for k in
        ["peft_type", "r", "lora_alpha", "lora_dropout", "task_type", "bias", "base_model_name_or_path", "use_dora"]
    {
        assert_eq!(c[k], p[k], "{k}");
    }
    let sorted = |v: &serde_json::Value| {
        let mut t: Vec<String> = v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
        t.sort();
        t
    };
    assert_eq!(sorted(&c["target_modules"]), sorted(&p["target_modules"]));
    // And it loads back to the same function.
    let back = base.load_adapter(&dir).unwrap();
    assert_eq!(logits(&back, &ids), logits(&model, &ids));
}

#[test]
fn bad_adapters_are_typed_errors() {
    let device = Default::default();
    let base = qwen_model::load::<B>(base_dir(), &device).unwrap();
    let bad = LoraConfig { target_modules: vec!["c_attn".into()], ..peft_config() };
    assert!(matches!(base.clone().with_lora(&bad, 0), Err(qwen_model::ModelError::Config(_))));
    let zero = LoraConfig { r: 0, ..peft_config() };
    assert!(matches!(base.clone().with_lora(&zero, 0), Err(qwen_model::ModelError::Config(_))));
    // A DoRA adapter is refused, not run as plain LoRA.
    let dir = tmp("dora");
    std::fs::copy(fixture().join("adapter/adapter_model.safetensors"), dir.join("adapter_model.safetensors")).unwrap();
    let mut c = json(&fixture().join("adapter/adapter_config.json"));
    c["use_dora"] = true.into();
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
    assert!(matches!(base.clone().load_adapter(&dir), Err(qwen_model::ModelError::Unsupported(_))));
    // A rank that does not match the tensors.
    c["use_dora"] = false.into();
    c["r"] = 8.into();
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
    assert!(matches!(base.load_adapter(&dir), Err(qwen_model::ModelError::Shape { .. })));
}

/// Elements of the parameters that require a gradient.
struct Trainable(usize);

impl ModuleVisitor<AD> for Trainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        if param.is_require_grad() {
            self.0 += param.shape().num_elements();
        }
    }
}

/// Step `step`'s batch: two rows of a counting pattern over the fixture's 256-token vocabulary.
fn batch(step: u64) -> qwen_align::Result<Vec<TokenBatch>> {
    let (rows, len) = (2usize, 16usize);
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    for r in 0..rows {
        let start = (step as usize * 7 + r * 31) % 64;
        let seq: Vec<u32> = (0..=len).map(|j| ((start + 3 * j) % 64) as u32 + 10).collect();
        inputs.extend(&seq[..len]);
        targets.extend(&seq[1..]);
    }
    Ok(vec![TokenBatch { inputs, targets, batch: rows, seq_len: len }])
}

fn lora_model(device: &burn::tensor::ops::Device<AD>) -> QwenModel<AD> {
    let config = LoraConfig { dropout: 0.1, alpha: 16.0, ..peft_config() };
    qwen_model::load::<AD>(base_dir(), device).unwrap().with_lora(&config, 3).unwrap().freeze_base()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "optimizer.bin",
        "trainer_state.json",
        "model.safetensors",
    ] {
        out.push((name.to_string(), std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))));
    }
    out
}

#[test]
fn lora_sft_trains_only_adapters_lowers_the_loss_and_resumes_exactly() {
    let device = Default::default();
    let steps = 12;
    let config = SftConfig { train: TrainConfig::new(Schedule::new(3e-3, 2, steps), 11), steps, checkpoint_every: 4 };
    let model = lora_model(&device);
    let mut counter = Trainable(0);
    model.visit(&mut counter);
    let total = model.num_params();
    assert_eq!(counter.0, model.lora_param_count(), "only the adapters are trainable");
    println!("trainable {} of {} parameters ({:.2}%)", counter.0, total, 100.0 * counter.0 as f64 / total as f64);

    // Uninterrupted.
    let whole = tmp("whole");
    let mut losses = Vec::new();
    let mut run = Run::sft(&config, model, &whole, &device).unwrap();
    run.train(&mut { batch }, |s| losses.push(s.loss)).unwrap();
    let trained = run.stage.model().valid();
    drop(run);
    let first: f32 = losses[..3].iter().sum::<f32>() / 3.0;
    let last: f32 = losses[losses.len() - 3..].iter().sum::<f32>() / 3.0;
    println!("LoRA SFT loss {first:.4} -> {last:.4} over {steps} steps");
    assert!(last < first - 0.05, "the loss did not fall: {losses:?}");
    // The base did not move: the saved base weights are the fixture's.
    let base = qwen_model::load::<B>(base_dir(), &device).unwrap();
    let saved = qwen_model::load::<B>(whole.join("checkpoint"), &device).unwrap();
    let ids = [10u32, 13, 16, 19, 22];
    assert_eq!(logits(&saved, &ids), logits(&base, &ids));
    // Only the adapters have optimizer state: resuming from a checkpoint reproduces the run.

    // Stopped after 6 steps (between checkpoints: steps 5 and 6 are redone), then resumed.
    let parts = tmp("parts");
    let mut run = Run::sft(&config, lora_model(&device), &parts, &device).unwrap();
    run.train_until(6, &mut { batch }, |_| {}).unwrap();
    drop(run);
    let mut run = Run::sft(&config, lora_model(&device), &parts, &device).unwrap();
    assert_eq!(run.resumed_from(), Some(4));
    run.train(&mut { batch }, |_| {}).unwrap();
    drop(run);
    for ((name, a), (_, b)) in files(&whole.join("checkpoint")).iter().zip(files(&parts.join("checkpoint"))) {
        assert!(*a == b, "{name} differs between the uninterrupted and the resumed run");
    }
    let metrics = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics(&whole), metrics(&parts));

    // For `peft_fixtures.py --check`: our adapter, the base it sits on and our logits with it.
    let check = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peft-check");
    let _ = std::fs::remove_dir_all(&check);
    trained.save_adapter(check.join("adapter"), "tests/fixtures/model/qwen2_gqa").unwrap();
    std::fs::write(check.join("base.txt"), "tests/fixtures/model/qwen2_gqa").unwrap();
    let adapted = base.load_adapter(check.join("adapter")).unwrap();
    let rows = [vec![10u32, 13, 16, 19, 22, 25, 28], vec![200, 3, 45, 99, 250, 7]];
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let l = logits(&adapted, r);
        let bytes = r.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect();
        tensors.push((format!("input_ids.{i}"), bytes, vec![r.len()], safetensors::Dtype::I64));
        let v = l.len() / r.len();
        tensors.push((
            format!("logits.{i}"),
            l.iter().flat_map(|x| x.to_le_bytes()).collect(),
            vec![r.len(), v],
            safetensors::Dtype::F32,
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, b, s, d)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &check.join("logits.safetensors")).unwrap();
}

/// The inputs of the memory measurement in docs/alignment.md (run by hand, not in CI:
/// `LORA_MEMORY_DIR=DIR cargo test --test lora -- --ignored memory_inputs`): a random Qwen2 of
/// hidden 512, 8 layers, 8 heads (4 KV), intermediate 1376 (the `small` pretraining preset) with a
/// byte-level tokenizer that has the ChatML tokens, and 64 `upper: word` → `WORD` conversations.
#[test]
#[ignore]
fn memory_inputs() {
    use qwen::tokenizer::train::{BpeTrainer, TrainerConfig};
    let dir = PathBuf::from(std::env::var("LORA_MEMORY_DIR").expect("LORA_MEMORY_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    let tok = BpeTrainer::new(TrainerConfig { vocab_size: 256, specials, ..TrainerConfig::default() })
        .unwrap()
        .train()
        .unwrap();
    let config = qwen_model::QwenConfigBuilder::new(tok.vocab_size(), 512, 1376, 8, 8)
        .kv_heads(4)
        .max_positions(256)
        .build()
        .unwrap();
    QwenModel::<B>::random(config, 0.02, &Default::default()).save(&dir, qwen_model::SaveDtype::F32).unwrap();
    tok.save_tokenizer_json(dir.join("tokenizer.json")).unwrap();
    let mut rng = qwen_data::rng::SplitMix64::new(5);
    let lines: String = (0..64)
        .map(|_| {
            let w: String = (0..3 + rng.below(5)).map(|_| (b'a' + rng.below(26) as u8) as char).collect();
            let messages = serde_json::json!([
                {"role": "user", "content": format!("upper: {w}")},
                {"role": "assistant", "content": w.to_uppercase()},
            ]);
            format!("{}\n", serde_json::json!({ "messages": messages }))
        })
        .collect();
    std::fs::write(dir.join("chat.jsonl"), lines).unwrap();
}

/// Step `step`'s comparisons: a counting continuation preferred to a constant one.
fn pairs(step: u64) -> qwen_align::Result<qwen_align::PairBatch> {
    let pairs: Vec<qwen_align::Pair> = (0..2u64)
        .map(|r| {
            let s = ((step * 5 + r * 17) % 50) as u32 + 20;
            qwen_align::Pair {
                prompt: vec![s, s + 2, s + 4],
                chosen: vec![s + 6, s + 8, s + 10],
                rejected: vec![s + 1, s + 1, s + 1],
            }
        })
        .collect();
    qwen_align::PairBatch::new(&pairs, 0, 16)
}

#[test]
fn lora_dpo_trains_only_adapters_and_resumes_exactly() {
    use qwen_align::{DpoConfig, DpoRunConfig};
    let device = Default::default();
    let config = DpoRunConfig {
        dpo: DpoConfig { beta: 0.1 },
        optim: qwen_train::OptimConfig::default(),
        schedule: qwen_align::constant(5e-3, 0),
        steps: 8,
        checkpoint_every: 3,
    };
    let whole = tmp("dpo-whole");
    let mut losses = Vec::new();
    let mut run = Run::dpo(&config, lora_model(&device), &whole, &device).unwrap();
    run.train(&mut { pairs }, |s| losses.push(s.stats.loss)).unwrap();
    drop(run);
    assert!((losses[0] - std::f32::consts::LN_2).abs() < 1e-6, "policy = reference at the start: {}", losses[0]);
    assert!(losses[losses.len() - 1] < losses[0], "{losses:?}");
    let parts = tmp("dpo-parts");
    let mut run = Run::dpo(&config, lora_model(&device), &parts, &device).unwrap();
    run.train_until(5, &mut { pairs }, |_| {}).unwrap();
    drop(run);
    let mut run = Run::dpo(&config, lora_model(&device), &parts, &device).unwrap();
    assert_eq!(run.resumed_from(), Some(3));
    run.train(&mut { pairs }, |_| {}).unwrap();
    drop(run);
    for ((name, a), (_, b)) in files(&whole.join("checkpoint")).iter().zip(files(&parts.join("checkpoint"))) {
        assert!(*a == b, "{name} differs between the uninterrupted and the resumed DPO run");
    }
    let metrics = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics(&whole), metrics(&parts));
}

/// Dropout acts while training (an autodiff backend), with masks that are a function of the seed,
/// and not at inference.
#[test]
fn lora_dropout_is_seeded_and_only_trains() {
    let device = Default::default();
    let ids = vec![10u32, 13, 16, 19, 22];
    // B = 0 would hide the adapters' input, and with it the dropout: give every B values.
    let mut model = lora_model(&device);
    for layer in model.model.layers.iter_mut() {
        let a = &mut layer.self_attn;
        for l in [&mut a.q_lora, &mut a.k_lora, &mut a.v_lora, &mut a.o_lora].into_iter().flatten() {
            let b = l.lora_b.val();
            l.lora_b = Param::from_tensor(b.random_like(burn::tensor::Distribution::Normal(0.0, 0.5)));
        }
    }
    let run = |m: &QwenModel<AD>| -> Vec<f32> {
        m.forward(std::slice::from_ref(&ids)).unwrap().into_data().to_vec().unwrap()
    };
    let (a, b, c) =
        (run(&model.clone().reseed_lora(1)), run(&model.clone().reseed_lora(1)), run(&model.clone().reseed_lora(2)));
    assert_eq!(a, b, "the same seed draws the same masks");
    assert!(max_diff(&a, &c) > 1e-3, "another seed draws other masks");
    // At inference (no autodiff) there is no dropout: the same as the adapters with dropout 0.
    let inference = logits(&model.valid(), &ids);
    assert!(max_diff(&a, &inference) > 1e-3, "dropout acts while training");
    for layer in model.model.layers.iter_mut() {
        let a = &mut layer.self_attn;
        for l in [&mut a.q_lora, &mut a.k_lora, &mut a.v_lora, &mut a.o_lora].into_iter().flatten() {
            l.dropout = 0.0;
        }
    }
    assert!(max_diff(&run(&model), &inference) < 1e-5);
}

/// Qwen-1 under PEFT's names for that family: `c_attn` is one adapter on the fused q | k | v
/// (`lora_B` of 3 × hidden rows), `c_proj` both the attention output and the MLP's down projection,
/// `w1`/`w2` up and gate; the Qwen2 names map onto those. The merged model (the delta split over
/// q, k and v) computes what the unmerged one does. (No PEFT reference here: PEFT 0.21 does not run
/// Qwen-1's remote code.)
#[test]
fn qwen1_adapters_use_pefts_qwen1_names_and_merge_consistently() {
    let device = Default::default();
    let base = qwen_model::load::<B>(root().join("tests/fixtures/model/qwen1_plain"), &device).unwrap();
    let config =
        LoraConfig { target_modules: ["c_attn", "c_proj", "w1", "w2"].map(String::from).to_vec(), ..peft_config() };
    let mut model = base.clone().with_lora(&config, 9).unwrap();
    assert_eq!(model.adapters().len(), 2 * 5, "c_attn, attn.c_proj, w1, w2, mlp.c_proj in each of two layers");
    for layer in model.model.layers.iter_mut() {
        let a = &mut layer.self_attn;
        for l in [&mut a.qkv_lora, &mut a.o_lora].into_iter().flatten() {
            let b = l.lora_b.val();
            l.lora_b = Param::from_tensor(b.random_like(burn::tensor::Distribution::Normal(0.0, 0.3)));
        }
    }
    let dir = tmp("qwen1");
    model.save_adapter(&dir, "qwen1").unwrap();
    let names = names_and_shapes(&dir.join("adapter_model.safetensors"));
    let find = |n: &str| names.iter().find(|(name, _)| name == n).map(|(_, s)| s.clone());
    assert_eq!(find("base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"), Some(vec![3 * 64, 4]));
    assert_eq!(find("base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight"), Some(vec![4, 128]));
    assert_eq!(find("base_model.model.transformer.h.0.mlp.w2.lora_B.weight"), Some(vec![128, 4]));
    assert_eq!(names.len(), 2 * 5 * 2);
    let c = json(&dir.join("adapter_config.json"));
    assert_eq!(c["target_modules"], serde_json::json!(["c_attn", "c_proj", "w1", "w2"]));
    let ids = [3u32, 1, 4, 1, 5, 9, 2, 6];
    let (unmerged, merged) = (logits(&model, &ids), logits(&model.clone().merged(), &ids));
    assert!(max_diff(&unmerged, &logits(&base, &ids)) > 0.1, "the adapter changes the model");
    assert!(max_diff(&unmerged, &merged) < 1e-5, "merged {}", max_diff(&unmerged, &merged));
    assert_eq!(logits(&base.clone().load_adapter(&dir).unwrap(), &ids), unmerged);
    // The Qwen2 names given for a Qwen-1 checkpoint.
    let qwen2_names = base.with_lora(&peft_config(), 9).unwrap().lora_config().unwrap().unwrap();
    assert_eq!(qwen2_names.target_modules, ["c_attn", "c_proj", "w1", "w2"]);
}
