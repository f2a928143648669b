//! Qwen3, Qwen3-MoE and Qwen2-MoE against transformers beyond the logits and greedy tokens that
//! `model_parity.rs` checks for every fixture: the KV-cached decode's logits, save → load, padded
//! batches, the MoE training loss with its load-balancing term, and the typed errors of bad MoE
//! configs and checkpoints. Fixtures: `tools/reference/model_fixtures.py qwen3`.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use qwen_model::{CausalLm, Family, KvCache, Mode, ModelError, QwenConfig, QwenModel, SaveDtype};
use safetensors::SafeTensors;

mod common;

use common::{max_diff, Reference};

type B = Flex;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model").join(name)
}

const CASES: [(&str, Family); 5] = [
    ("qwen3_gqa", Family::Qwen3),
    ("qwen3_tied_bias_yarn", Family::Qwen3),
    ("qwen3_moe", Family::Qwen3Moe),
    ("qwen3_moe_hub_keys", Family::Qwen3Moe),
    ("qwen2_moe", Family::Qwen2Moe),
];

const MOE_CASES: [&str; 3] = ["qwen3_moe", "qwen3_moe_hub_keys", "qwen2_moe"];

fn floats<BB: burn::tensor::backend::Backend, const D: usize>(t: Tensor<BB, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

#[test]
fn configs_parse_as_their_family() {
    for (name, family) in CASES {
        let c = QwenConfig::from_file(fixture(name).join("config.json")).unwrap();
        assert_eq!(c.family, family, "{name}");
        assert_eq!(c.qk_norm, family != Family::Qwen2Moe, "{name}: q/k norms");
        assert_eq!(c.moe.is_some(), family != Family::Qwen3, "{name}: sparse MLP");
    }
    let gqa = QwenConfig::from_file(fixture("qwen3_gqa").join("config.json")).unwrap();
    assert_eq!((gqa.head_dim, gqa.num_attention_heads * gqa.head_dim, gqa.hidden_size), (24, 96, 64));
    assert_eq!(gqa.windows.windows, [None, Some(6), Some(6)]);
    assert!(!gqa.qkv_bias && !gqa.o_proj_bias);
    let biased = QwenConfig::from_file(fixture("qwen3_tied_bias_yarn").join("config.json")).unwrap();
    assert!(biased.qkv_bias && biased.o_proj_bias && biased.tie_word_embeddings);
    assert!(matches!(biased.rope.scaling, qwen_context::RopeScaling::Yarn { .. }));
    // transformers 5's `num_local_experts` and the Hub's `num_experts` both count the experts.
    let v5 = QwenConfig::from_file(fixture("qwen3_moe").join("config.json")).unwrap();
    let v5_moe = v5.moe.as_ref().unwrap();
    assert_eq!((v5_moe.num_experts, v5_moe.num_experts_per_tok, v5_moe.norm_topk_prob), (6, 2, true));
    assert_eq!(v5_moe.sparse_layers, [false, true, true]);
    let hub = QwenConfig::from_file(fixture("qwen3_moe_hub_keys").join("config.json")).unwrap();
    assert_eq!(hub.moe.as_ref().unwrap().num_experts, 8);
    assert_eq!(hub.moe.as_ref().unwrap().sparse_layers, [false, true, false, true], "decoder_sparse_step 2");
    let q2 = QwenConfig::from_file(fixture("qwen2_moe").join("config.json")).unwrap();
    let q2_moe = q2.moe.as_ref().unwrap();
    assert_eq!(
        (q2_moe.shared_expert_intermediate_size, q2_moe.sparse_layers.clone()),
        (Some(48), vec![true, false, true])
    );
    assert!(q2.qkv_bias && !q2.o_proj_bias);
}

/// The KV-cached greedy decode reproduces the logits transformers' `generate` chose each token
/// with (the token-level check is in `model_parity.rs`), and equals a full recompute.
#[test]
fn cached_decode_logits_match_transformers() {
    let device = Default::default();
    for (name, _) in CASES {
        let dir = fixture(name);
        let model: QwenModel<B> = qwen_model::load(&dir, &device).unwrap();
        let r = Reference::open(&dir);
        let prompt = r.ids("greedy.prompt").unwrap();
        let tokens = r.ids("greedy.tokens").unwrap();
        let want = r.floats("greedy.cached_logits").unwrap();
        let v = model.config.vocab_size;
        let mut cache = KvCache::new(&model.config, 1, prompt.len() + tokens.len(), &device);
        let mut got = floats(model.forward_cached_last(&[prompt.clone()], &mut cache).unwrap());
        for &t in &tokens[..tokens.len() - 1] {
            got.extend(floats(model.forward_cached_last(&[vec![t]], &mut cache).unwrap()));
        }
        assert_eq!(got.len(), tokens.len() * v);
        let d = max_diff(&got, &want);
        assert!(d <= TOLERANCE, "{name}: cached decode logits differ by {d:e}");
    }
}

/// Writing a model and reading it back gives the same logits bit for bit (f32), and the same
/// checkpoint in bf16 gives what bf16-rounded weights give.
#[test]
fn save_then_load_gives_identical_logits() {
    let device = Default::default();
    let tmp = std::env::temp_dir().join(format!("qwen-families-save-{}", std::process::id()));
    for (name, family) in CASES {
        let dir = fixture(name);
        let model: QwenModel<B> = qwen_model::load(&dir, &device).unwrap();
        let ids = vec![vec![3u32, 17, 99, 4, 250, 8, 61]];
        let before = floats(model.forward(&ids).unwrap());
        let out = tmp.join(name);
        model.save(&out, SaveDtype::F32).unwrap();
        let again: QwenModel<B> = qwen_model::load(&out, &device).unwrap();
        assert_eq!(again.config.family, family);
        assert_eq!(floats(again.forward(&ids).unwrap()), before, "{name}: f32 round trip");
        // bf16 on disk: a second round trip through bf16 changes nothing more.
        model.save(&out, SaveDtype::BF16).unwrap();
        let bf16: QwenModel<B> = qwen_model::load(&out, &device).unwrap();
        let once = floats(bf16.forward(&ids).unwrap());
        bf16.save(&out, SaveDtype::BF16).unwrap();
        let twice: QwenModel<B> = qwen_model::load(&out, &device).unwrap();
        assert_eq!(floats(twice.forward(&ids).unwrap()), once, "{name}: bf16 round trip");
        // The Hub's sharded layout replaces the single file and loads to the same model.
        model.save_sharded(&out, SaveDtype::F32, 60_000).unwrap();
        assert!(!out.join("model.safetensors").exists());
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
        let files: std::collections::BTreeSet<&str> =
            index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
        assert!(files.len() >= 2, "{name}: {files:?}");
        let sharded: QwenModel<B> = qwen_model::load(&out, &device).unwrap();
        assert_eq!(floats(sharded.forward(&ids).unwrap()), before, "{name}: sharded round trip");
        model.save(&out, SaveDtype::F32).unwrap();
        assert!(!out.join("model.safetensors.index.json").exists(), "{name}: stale index left behind");
    }
    std::fs::remove_dir_all(&tmp).ok();
}

/// Rows of different lengths in one left-padded batch give each row's logits alone: padding
/// tokens are routed like any token but never mix into real ones.
#[test]
fn padded_batches_equal_rows_alone() {
    let device = Default::default();
    for name in MOE_CASES.iter().chain(&["qwen3_gqa"]) {
        let model: QwenModel<B> = qwen_model::load(fixture(name), &device).unwrap();
        let rows: Vec<Vec<u32>> = vec![(0..19).map(|i| (i * 37 % 256) as u32).collect(), vec![5, 6, 7], vec![200]];
        let batch = model.batch(&rows).unwrap();
        let all = model.logits(&batch, Mode::Inference).unwrap();
        let [_, s, v] = all.dims();
        let all = floats(all);
        for (r, row) in rows.iter().enumerate() {
            let alone = floats(model.forward(std::slice::from_ref(row)).unwrap());
            let got = &all[(r * s + s - row.len()) * v..(r + 1) * s * v];
            let d = max_diff(got, &alone);
            assert!(d < 1e-4, "{name} row {r}: padded batch differs by {d:e}");
        }
    }
}

/// The training loss with the load-balancing term equals transformers'
/// `model(ids, labels=ids, output_router_logits=True)`: `loss` and `aux_loss`.
#[test]
fn moe_training_loss_and_aux_loss_match_transformers() {
    let device = Default::default();
    for name in MOE_CASES {
        let dir = fixture(name);
        let model: QwenModel<Autodiff<B>> = qwen_model::load(&dir, &device).unwrap();
        let r = Reference::open(&dir);
        let ids = r.ids("train.input_ids").unwrap();
        let (want_loss, want_aux) = (r.floats("train.loss").unwrap()[0], r.floats("train.aux_loss").unwrap()[0]);
        let coef = model.config.moe.as_ref().unwrap().router_aux_loss_coef as f32;
        let batch = model.batch(&[ids.clone()]).unwrap();
        let (hidden, router) = model.hidden_and_router(&batch, Mode::Training).unwrap();
        let aux = model.router_aux_loss(&batch, &router).unwrap();
        let aux_value = aux.clone().into_scalar() / coef;
        assert!((aux_value - want_aux).abs() < 1e-5, "{name}: aux loss {aux_value} vs {want_aux}");
        // Mean next-token cross-entropy (labels shifted as transformers shifts them).
        let logits = floats(model.head(hidden));
        let v = model.config.vocab_size;
        let mut nll = 0f64;
        for (t, &target) in ids[1..].iter().enumerate() {
            let row = &logits[t * v..(t + 1) * v];
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            nll += lse - row[target as usize] as f64;
        }
        let loss = nll / (ids.len() - 1) as f64 + (aux_value * coef) as f64;
        assert!((loss as f32 - want_loss).abs() < 1e-5, "{name}: loss {loss} vs {want_loss}");
        // The term reaches the router: its gradient is not zero.
        let grads = aux.backward();
        let sparse = model.model.layers.iter().find_map(|l| match &l.mlp {
            qwen_model::FeedForward::Sparse(m) => Some(m),
            _ => None,
        });
        let g = sparse.unwrap().gate.weight.val().grad(&grads).expect("router gradient");
        assert!(g.abs().sum().into_scalar() > 0.0, "{name}: the aux loss has no gradient on the router");
    }
}

/// With `output_router_logits` the training face adds the weighted term; without, it does not.
#[test]
fn training_adds_the_aux_loss_only_when_the_config_asks() {
    let device = Default::default();
    let dir = fixture("qwen3_moe");
    let model: QwenModel<B> = qwen_model::load(&dir, &device).unwrap();
    let batch = model.batch(&[vec![1u32, 2, 3, 4, 5, 6]]).unwrap();
    assert!(model.hidden_and_aux(&batch, Mode::Training).unwrap().1.is_none(), "config says false");
    let mut on = model.clone();
    on.config.moe.as_mut().unwrap().output_router_logits = true;
    let (h, aux) = on.hidden_and_aux(&batch, Mode::Training).unwrap();
    assert!(aux.unwrap().into_scalar() > 0.0);
    assert_eq!(floats(h), floats(model.hidden(&batch, Mode::Training).unwrap()));
}

fn copy_case(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn bad_expert_counts_and_missing_experts_are_typed_errors() {
    let device = Default::default();
    let tmp = std::env::temp_dir().join(format!("qwen-families-bad-{}", std::process::id()));
    let load = |dir: &Path| qwen_model::load::<B>(dir, &device).map(|_| ());
    // A checkpoint that lost one expert's tensor: the tensor is named.
    let missing = tmp.join("missing");
    copy_case("qwen3_moe", &missing);
    let gone = "model.layers.2.mlp.experts.3.down_proj.weight";
    let bytes = std::fs::read(missing.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.tensors().into_iter().filter(|(n, _)| n != gone).collect();
    std::fs::write(missing.join("model.safetensors"), safetensors::serialize(kept, None).unwrap()).unwrap();
    match load(&missing) {
        Err(ModelError::MissingTensor(t)) => assert_eq!(t, gone),
        other => panic!("expected a missing expert tensor, got {other:?}"),
    }
    // A config that counts one expert fewer than the checkpoint: the router's shape disagrees.
    let fewer = tmp.join("fewer");
    copy_case("qwen3_moe", &fewer);
    edit_config(&fewer, |o| {
        o.insert("num_local_experts".into(), 5.into());
    });
    match load(&fewer) {
        Err(ModelError::Shape { name, .. }) => assert_eq!(name, "model.layers.1.mlp.gate.weight"),
        other => panic!("expected the router's shape to disagree, got {other:?}"),
    }
    let config = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("qwen3_moe_hub_keys").join("config.json")).unwrap())
                .unwrap();
        f(v.as_object_mut().unwrap());
        QwenConfig::from_json(v)
    };
    for (what, edit) in [
        (
            "zero experts",
            Box::new(|o: &mut serde_json::Map<_, _>| drop(o.insert("num_experts".into(), 0.into())))
                as Box<dyn Fn(&mut serde_json::Map<String, serde_json::Value>)>,
        ),
        ("top-k past the experts", Box::new(|o| drop(o.insert("num_experts_per_tok".into(), 9.into())))),
        ("two spellings disagree", Box::new(|o| drop(o.insert("num_local_experts".into(), 4.into())))),
        ("negative count", Box::new(|o| drop(o.insert("num_experts".into(), (-1).into())))),
        ("no expert count", Box::new(|o| drop(o.remove("num_experts")))),
        ("sparse step 0", Box::new(|o| drop(o.insert("decoder_sparse_step".into(), 0.into())))),
        ("dense layer past the end", Box::new(|o| drop(o.insert("mlp_only_layers".into(), serde_json::json!([4]))))),
    ] {
        match config(&*edit) {
            Err(ModelError::Config(msg)) => assert!(!msg.is_empty(), "{what}"),
            other => panic!("{what}: expected a config error, got {other:?}"),
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
}

/// An expert that no token chose costs nothing and changes nothing: scrambling its weights leaves
/// the logits bit for bit as they were (two tokens choose at most 4 of each sparse layer's 6
/// experts).
#[test]
fn an_expert_no_token_chooses_does_not_matter() {
    let device = Default::default();
    let mut model: QwenModel<B> = qwen_model::load(fixture("qwen3_moe"), &device).unwrap();
    let ids = vec![vec![17u32, 201]];
    let (_, router) = model.hidden_and_router(&model.batch(&ids).unwrap(), Mode::Inference).unwrap();
    let before = floats(model.forward(&ids).unwrap());
    let mut scrambled = 0;
    let sparse = model.model.layers.iter_mut().filter_map(|l| match &mut l.mlp {
        qwen_model::FeedForward::Sparse(m) => Some(m),
        _ => None,
    });
    for (moe, logits) in sparse.zip(&router) {
        let e = moe.experts.len();
        let probs = floats(burn::tensor::activation::softmax(logits.clone(), 1));
        let used: Vec<usize> = qwen_model::moe::route(&probs, e, moe.top_k).concat();
        let idle = (0..e).find(|x| !used.contains(x)).expect("an idle expert");
        let up = moe.experts[idle].up_proj.weight.val();
        moe.experts[idle].up_proj.weight = burn::module::Param::from_tensor(up * 1000.0);
        scrambled += 1;
    }
    assert_eq!(scrambled, 2);
    assert_eq!(floats(model.forward(&ids).unwrap()), before);
}

/// `logits --model DIR` (the example a user runs) on each new family: every position within the
/// tolerance of transformers.
#[test]
fn the_logits_example_matches_transformers() {
    for (name, _) in CASES {
        let dir = fixture(name);
        let r = Reference::open(&dir);
        let ids = r.ids("input_ids.1").unwrap();
        let want = r.floats("logits.1").unwrap();
        let got = common::logits_example(&dir, &ids);
        let d = max_diff(&got, &want);
        assert!(d <= TOLERANCE, "{name}: logits example differs by {d:e}");
    }
}

/// The trainer's loss (`lm_nll_and_grads`, what `Trainer` and SFT step on) carries the
/// load-balancing term when the config asks: the router's gradient is the plain one plus the
/// term's, the NLL is unchanged.
#[test]
fn the_trainer_steps_on_the_aux_loss() {
    type A = Autodiff<B>;
    let device = Default::default();
    let off: QwenModel<A> = qwen_model::load(fixture("qwen3_moe"), &device).unwrap();
    let mut on = off.clone();
    on.config.moe.as_mut().unwrap().output_router_logits = true;
    let row: Vec<u32> = (0..17).map(|i| (i * 29 % 256) as u32).collect();
    let batch = qwen_data::TokenBatch {
        inputs: row[..16].to_vec(),
        targets: row[1..].to_vec(),
        batch: 1,
        seq_len: 16,
        segments: Vec::new(),
    };
    let router = |m: &QwenModel<A>| match &m.model.layers[1].mlp {
        qwen_model::FeedForward::Sparse(moe) => moe.gate.weight.clone(),
        _ => panic!("layer 1 is sparse"),
    };
    let grad = |m: &QwenModel<A>| {
        let (nll, grads) = qwen_train::lm_nll_and_grads(m, std::slice::from_ref(&batch), 16).unwrap();
        let g: Tensor<B, 2> = grads.get(router(m).id).unwrap();
        (nll, floats(g))
    };
    let ((nll_off, g_off), (nll_on, g_on)) = (grad(&off), grad(&on));
    assert_eq!(nll_off, nll_on);
    let b = on.batch(&[row[..16].to_vec()]).unwrap();
    let (_, logits) = on.hidden_and_router(&b, Mode::Training).unwrap();
    let aux_grads = on.router_aux_loss(&b, &logits).unwrap().backward();
    let g_aux = floats(router(&on).val().grad(&aux_grads).unwrap());
    let expected: Vec<f32> = g_off.iter().zip(&g_aux).map(|(a, b)| a + b).collect();
    let d = max_diff(&g_on, &expected);
    assert!(d < 1e-6, "router gradient: {d:e} from plain + aux");
    assert!(g_aux.iter().any(|&x| x != 0.0));
}

/// Each case carries its config in the other key style too (`config.hub.json`: `rope_theta`,
/// `rope_scaling`, `torch_dtype`, `num_experts`; `config.transformers5.json`: `rope_parameters`,
/// `layer_types`, `dtype`, `num_local_experts`), which transformers reads to identical logits: so
/// does this crate.
#[test]
fn both_key_styles_give_identical_logits() {
    let device = Default::default();
    let tmp = std::env::temp_dir().join(format!("qwen-families-keys-{}", std::process::id()));
    for (name, _) in CASES {
        let dir = fixture(name);
        let alt = ["config.hub.json", "config.transformers5.json"].into_iter().find(|f| dir.join(f).is_file());
        let alt = alt.unwrap_or_else(|| panic!("{name}: no config in the other key style"));
        let copy = tmp.join(name);
        copy_case(name, &copy);
        std::fs::copy(dir.join(alt), copy.join("config.json")).unwrap();
        let ids = vec![(0..23).map(|i| (i * 53 % 256) as u32).collect::<Vec<u32>>()];
        let a: QwenModel<B> = qwen_model::load(&dir, &device).unwrap();
        let b: QwenModel<B> = qwen_model::load(&copy, &device).unwrap();
        assert_eq!(floats(a.forward(&ids).unwrap()), floats(b.forward(&ids).unwrap()), "{name} with {alt}");
    }
    std::fs::remove_dir_all(&tmp).ok();
}
