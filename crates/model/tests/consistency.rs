//! Properties of the model that need no external reference: save → load is exact, the two
//! checkpoint layouts hold the same model, cached decoding equals full recompute, both RoPE
//! conventions compute the same function on correspondingly permuted weights, and every loader
//! error is typed.

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use qwen_context::RopeConvention;
use qwen_model::{load, KvCache, ModelError, QwenConfig, QwenModel, SaveDtype};

type B = Flex;

fn qwen2_config(extra: serde_json::Value) -> QwenConfig {
    let mut v = serde_json::json!({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 96, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": false, "torch_dtype": "float32"
    });
    for (k, val) in extra.as_object().unwrap() {
        v.as_object_mut().unwrap().insert(k.clone(), val.clone());
    }
    QwenConfig::from_json(v).unwrap()
}

fn qwen1_config() -> QwenConfig {
    QwenConfig::from_json(serde_json::json!({
        "model_type": "qwen", "architectures": ["QWenLMHeadModel"], "vocab_size": 96, "hidden_size": 32,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "kv_channels": 8,
        "max_position_embeddings": 64, "seq_length": 8, "layer_norm_epsilon": 1e-6, "rotary_pct": 1.0,
        "rotary_emb_base": 10000, "use_dynamic_ntk": true, "use_logn_attn": true, "no_bias": true,
        "tie_word_embeddings": false
    }))
    .unwrap()
}

fn ids(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + seed * 11 + 5) % 96).collect()
}

fn values(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qwen-model-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn save_then_load_gives_identical_logits() {
    let device = Default::default();
    for (name, config) in [
        ("qwen2", qwen2_config(serde_json::json!({}))),
        ("qwen2-tied", qwen2_config(serde_json::json!({"tie_word_embeddings": true}))),
        ("qwen1", qwen1_config()),
    ] {
        let model = QwenModel::<B>::random(config, 0.2, &device);
        let dir = tmp(name);
        model.save(&dir, SaveDtype::F32).unwrap();
        let back = load::<B>(&dir, &device).unwrap();
        let input = vec![ids(20, 1)];
        let d = max_diff(&values(model.forward(&input).unwrap()), &values(back.forward(&input).unwrap()));
        assert_eq!(d, 0.0, "{name}");
    }
}

#[test]
fn bf16_and_f16_files_load_to_the_rounded_values() {
    let device = Default::default();
    let model = QwenModel::<B>::random(qwen2_config(serde_json::json!({})), 0.2, &device);
    let input = vec![ids(12, 2)];
    let exact = values(model.forward(&input).unwrap());
    for dtype in [SaveDtype::BF16, SaveDtype::F16] {
        let dir = tmp(&format!("{dtype:?}"));
        model.save(&dir, dtype).unwrap();
        let back = load::<B>(&dir, &device).unwrap();
        let d = max_diff(&exact, &values(back.forward(&input).unwrap()));
        assert!(d > 0.0 && d < 0.1, "{dtype:?}: max diff {d}");
        // Saving the rounded model again is lossless.
        let dir2 = tmp(&format!("{dtype:?}-again"));
        back.save(&dir2, dtype).unwrap();
        assert_eq!(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            std::fs::read(dir2.join("model.safetensors")).unwrap()
        );
    }
}

/// The same weights written in Qwen-1 layout (fused c_attn, w1/w2) and in Qwen2 layout give the
/// same logits when the long-context flags are off.
#[test]
fn qwen1_and_qwen2_layouts_hold_the_same_model() {
    let device = Default::default();
    let mut c1 = qwen1_config();
    c1.rope.scaling = qwen_context::RopeScaling::None;
    c1.logn = None;
    let m1 = QwenModel::<B>::random(c1.clone(), 0.2, &device);
    let c2 = qwen2_config(serde_json::json!({"num_key_value_heads": 4, "intermediate_size": 48}));
    let m2 = QwenModel::new(c2, m1.model.clone());
    let (d1, d2) = (tmp("layout1"), tmp("layout2"));
    m1.save(&d1, SaveDtype::F32).unwrap();
    m2.save(&d2, SaveDtype::F32).unwrap();
    let mut a = load::<B>(&d1, &device).unwrap();
    a.config.rope.scaling = qwen_context::RopeScaling::None;
    a.config.logn = None;
    let b = load::<B>(&d2, &device).unwrap();
    let input = vec![ids(16, 3)];
    assert_eq!(max_diff(&values(a.forward(&input).unwrap()), &values(b.forward(&input).unwrap())), 0.0);
}

/// Prefill + one token at a time equals one full forward, position by position.
#[test]
fn cached_decode_equals_full_recompute() {
    let device = Default::default();
    for config in [
        qwen2_config(serde_json::json!({})),
        qwen2_config(serde_json::json!({"use_sliding_window": true, "sliding_window": 5, "max_window_layers": 1})),
        qwen1_config(),
    ] {
        let model = QwenModel::<B>::random(config.clone(), 0.2, &device);
        // Qwen-1 changes alpha and LogN once the keys pass seq_length (8), and fixes alpha at
        // prefill: within seq_length the two must agree (past it, see the reference fixtures).
        let seq = ids(if config.logn.is_some() { 8 } else { 14 }, 4);
        let full = values(model.forward(std::slice::from_ref(&seq)).unwrap());
        let mut cache = KvCache::new(&model.config, 1, 32, &device);
        let prefill = 6;
        let mut got = values(model.forward_cached(&[seq[..prefill].to_vec()], &mut cache).unwrap());
        for &t in &seq[prefill..] {
            got.extend(values(model.forward_cached(&[vec![t]], &mut cache).unwrap()));
        }
        let d = max_diff(&full, &got);
        assert!(d < 1e-4, "{:?}: max diff {d}", config.family);
    }
}

/// The report's layer-wise windows (3, 6 and 9 keys in three layers): prefill + decode and
/// chunked prefill through the cache — which drops the keys a layer can no longer see — equal
/// one full forward with masks, and the cache holds at most `window - 1` positions per layer.
#[test]
fn windowed_cache_drops_old_keys_and_equals_full_recompute() {
    let device = Default::default();
    let mut config = qwen2_config(serde_json::json!({"num_hidden_layers": 3}));
    config.windows = qwen_context::LayerWindows::layer_wise(3, 3, 9).unwrap();
    let model = QwenModel::<B>::random(config, 0.2, &device);
    let seq = ids(30, 6);
    let full = values(model.forward(std::slice::from_ref(&seq)).unwrap());
    let row = model.config.num_key_value_heads * model.config.head_dim * 4;
    for chunk in [1, 4, 11] {
        let mut cache = KvCache::new(&model.config, 1, 64, &device);
        let mut got = Vec::new();
        let mut peak = 0;
        for part in seq.chunks(chunk) {
            got.extend(values(model.forward_cached(&[part.to_vec()], &mut cache).unwrap()));
            peak = peak.max(cache.bytes());
        }
        let d = max_diff(&full, &got);
        assert!(d < 1e-4, "chunks of {chunk}: max diff {d}");
        assert_eq!(cache.bytes(), 2 * (2 + 5 + 8) * row, "chunks of {chunk}");
        assert!(peak <= 2 * (2 + 5 + 8) * row);
    }
    // Without windows every layer holds the whole capacity.
    let plain = QwenModel::<B>::new(qwen2_config(serde_json::json!({"num_hidden_layers": 3})), model.model.clone());
    assert_eq!(KvCache::<B>::new(&plain.config, 1, 64, &device).bytes(), 3 * 2 * 64 * row);
}

/// Dynamic NTK + LogN + layer-wise windows on one Qwen-1 model: cached decoding still equals the
/// full forward within seq_length, and the windows change the logits.
#[test]
fn long_context_extensions_compose() {
    let device = Default::default();
    let mut config = qwen1_config();
    config.windows = qwen_context::LayerWindows::layer_wise(2, 3, 5).unwrap();
    let model = QwenModel::<B>::random(config, 0.2, &device);
    let seq = ids(8, 7);
    let full = values(model.forward(std::slice::from_ref(&seq)).unwrap());
    let mut cache = KvCache::new(&model.config, 1, 32, &device);
    let mut got = values(model.forward_cached(&[seq[..4].to_vec()], &mut cache).unwrap());
    for &t in &seq[4..] {
        got.extend(values(model.forward_cached(&[vec![t]], &mut cache).unwrap()));
    }
    assert!(max_diff(&full, &got) < 1e-4);
    let mut no_window = model.clone();
    no_window.config.windows = qwen_context::LayerWindows::full(2);
    assert!(max_diff(&full, &values(no_window.forward(std::slice::from_ref(&seq)).unwrap())) > 1e-3);
}

/// Interleaved RoPE on weights whose q/k output features are permuted from half-split to
/// interleaved order computes exactly what rotate-half computes on the original weights.
#[test]
fn rope_conventions_agree_on_permuted_weights() {
    let device = Default::default();
    let model = QwenModel::<B>::random(qwen2_config(serde_json::json!({})), 0.2, &device);
    let hd = model.config.head_dim;
    // Output feature order: for each head, (0, hd/2, 1, hd/2+1, ...).
    let perm_head: Vec<usize> = (0..hd / 2).flat_map(|i| [i, i + hd / 2]).collect();
    let mut permuted = model.clone();
    permuted.convention = RopeConvention::Interleaved;
    for layer in permuted.model.layers.iter_mut() {
        for lin in [&mut layer.self_attn.q_proj, &mut layer.self_attn.k_proj] {
            let [d_in, d_out] = lin.weight.val().dims();
            let perm: Vec<usize> = (0..d_out / hd).flat_map(|h| perm_head.iter().map(move |&p| h * hd + p)).collect();
            let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(
                TensorData::new(perm.iter().map(|&p| p as i64).collect::<Vec<_>>(), [d_out]),
                &device,
            );
            lin.weight = Param::from_tensor(lin.weight.val().select(1, idx.clone()));
            assert_eq!(lin.weight.val().dims(), [d_in, d_out]);
            if let Some(b) = &lin.bias {
                lin.bias = Some(Param::from_tensor(b.val().select(0, idx)));
            }
        }
    }
    let input = vec![ids(10, 5)];
    let d = max_diff(&values(model.forward(&input).unwrap()), &values(permuted.forward(&input).unwrap()));
    assert!(d < 1e-4, "max diff {d}");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let device = Default::default();
    let model = QwenModel::<B>::random(qwen2_config(serde_json::json!({})), 0.2, &device);
    assert!(matches!(model.forward(&[vec![96]]), Err(ModelError::TokenOutOfRange { id: 96, .. })));
    assert!(matches!(model.forward(&[vec![]]), Err(ModelError::EmptyInput)));
    // Rows of different lengths are left-padded, not refused.
    assert_eq!(model.forward(&[vec![1, 2], vec![3]]).unwrap().dims(), [2, 2, 96]);
    let mut cache = KvCache::new(&model.config, 1, 4, &device);
    assert!(matches!(
        model.forward_cached(&[ids(5, 1)], &mut cache),
        Err(ModelError::SequenceTooLong { len: 5, limit: 4 })
    ));
    // A cache is for one batch size; padding only at prefill; a row must have a token.
    assert!(matches!(model.forward_cached(&[vec![1], vec![2]], &mut cache), Err(ModelError::Config(_))));
    let mut cache = KvCache::new(&model.config, 2, 8, &device);
    model.forward_cached(&[vec![1, 2], vec![3]], &mut cache).unwrap();
    assert!(matches!(model.forward_cached(&[vec![1, 2], vec![3]], &mut cache), Err(ModelError::Config(_))));
    let ids = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::zeros([2, 3], &device);
    assert!(matches!(qwen_model::Batch::new(ids.clone(), vec![0, 3]), Err(ModelError::Config(_))));
    assert!(matches!(qwen_model::Batch::new(ids, vec![0]), Err(ModelError::Config(_))));
}

/// Rewrites the safetensors file of `dir` with `edit` applied to its tensor list.
fn rewrite(dir: &std::path::Path, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut list: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut list);
    let views: Vec<(String, safetensors::tensor::TensorView)> = list
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
}

#[test]
fn broken_checkpoints_are_typed_errors_naming_the_tensor() {
    let device = Default::default();
    let model = QwenModel::<B>::random(qwen2_config(serde_json::json!({})), 0.2, &device);
    let fresh = |name: &str| {
        let d = tmp(name);
        model.save(&d, SaveDtype::F32).unwrap();
        d
    };
    let q = "model.layers.0.self_attn.q_proj.weight";

    let d = fresh("truncated");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    assert!(matches!(load::<B>(&d, &device), Err(ModelError::Safetensors { .. })));

    let d = fresh("missing");
    rewrite(&d, |l| l.retain(|t| t.0 != q));
    assert!(matches!(load::<B>(&d, &device), Err(ModelError::MissingTensor(n)) if n == q));

    let d = fresh("extra");
    rewrite(&d, |l| l.push(("model.layers.9.mystery.weight".into(), safetensors::Dtype::F32, vec![1], vec![0; 4])));
    assert!(
        matches!(load::<B>(&d, &device), Err(ModelError::UnexpectedTensor(n)) if n == "model.layers.9.mystery.weight")
    );

    let d = fresh("shape");
    rewrite(&d, |l| {
        let t = l.iter_mut().find(|t| t.0 == q).unwrap();
        t.2 = vec![t.2[1], t.2[0]];
        t.2.swap(0, 1);
        t.2[0] -= 1;
        t.3.truncate(t.2[0] * t.2[1] * 4);
    });
    assert!(matches!(load::<B>(&d, &device), Err(ModelError::Shape { name, .. }) if name == q));

    let d = fresh("dtype");
    rewrite(&d, |l| l.iter_mut().find(|t| t.0 == q).unwrap().1 = safetensors::Dtype::I32);
    assert!(matches!(load::<B>(&d, &device), Err(ModelError::Dtype { name, .. }) if name == q));

    let d = fresh("noweights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert!(matches!(load::<B>(&d, &device), Err(ModelError::NoWeights(_))));

    let d = fresh("badindex");
    std::fs::write(d.join("model.safetensors.index.json"), r#"{"weight_map": {"x": "../../etc/passwd"}}"#).unwrap();
    assert!(matches!(load::<B>(&d, &device), Err(ModelError::Index { .. })));

    let d = fresh("badconfig");
    std::fs::write(d.join("config.json"), r#"{"model_type": "qwen2"}"#).unwrap();
    assert!(matches!(load::<B>(&d, &device), Err(ModelError::Config(_))));
}

/// Greedy generation with the cache picks, at every step, the argmax of a full recompute.
#[test]
fn greedy_generation_matches_full_recompute() {
    use qwen_model::generate::argmax;
    use qwen_model::{GenerateConfig, SamplingConfig};
    let device = Default::default();
    let model = QwenModel::<B>::random(qwen2_config(serde_json::json!({})), 0.3, &device);
    let prompt = ids(5, 6);
    let config = GenerateConfig { max_new_tokens: 8, stop_ids: vec![], sampling: SamplingConfig::default() };
    let got = model.generate(&prompt, &config, |_| true).unwrap();
    let mut seq = prompt.clone();
    for _ in 0..8 {
        let logits = values(model.forward(std::slice::from_ref(&seq)).unwrap());
        let v = model.config.vocab_size;
        seq.push(argmax(&logits[logits.len() - v..]));
    }
    assert_eq!(got, seq[prompt.len()..]);
    // A stop id ends generation and is included.
    let stop = GenerateConfig { stop_ids: vec![got[2]], ..config.clone() };
    let first = got.iter().position(|&t| t == got[2]).unwrap();
    assert_eq!(model.generate(&prompt, &stop, |_| true).unwrap(), got[..=first]);
    // Batched prompts give what each gives alone.
    let other = ids(5, 9);
    let batch = model.generate_batch(&[prompt.clone(), other.clone(), ids(3, 1)], &config, |_, _| true).unwrap();
    assert_eq!(batch[0], got);
    assert_eq!(batch[1], model.generate(&other, &config, |_| true).unwrap());
    assert_eq!(batch[2], model.generate(&ids(3, 1), &config, |_| true).unwrap());
}

#[test]
fn sampling_is_seeded_and_filters() {
    use qwen_model::{Sampler, SamplingConfig};
    let logits = [0.0f32, 3.0, 1.0, 2.9, -1.0];
    let draw = |config: SamplingConfig| {
        let mut s = Sampler::new(config).unwrap();
        (0..200).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
    };
    let hot = SamplingConfig { temperature: 1.0, seed: 7, ..Default::default() };
    assert_eq!(draw(hot.clone()), draw(hot.clone()), "same seed, same tokens");
    assert_ne!(draw(hot.clone()), draw(SamplingConfig { seed: 8, ..hot.clone() }));
    assert!(draw(SamplingConfig { top_k: 2, ..hot.clone() }).iter().all(|&t| t == 1 || t == 3));
    assert!(draw(SamplingConfig { top_k: 1, ..hot.clone() }).iter().all(|&t| t == 1));
    // top_p 0.5: token 1 alone has ~0.47, so tokens 1 and 3 are kept.
    assert!(draw(SamplingConfig { top_p: 0.5, ..hot.clone() }).iter().all(|&t| t == 1 || t == 3));
    // A strong repetition penalty on token 1 makes 3 the greedy choice.
    let mut s = Sampler::new(SamplingConfig { repetition_penalty: 2.0, ..Default::default() }).unwrap();
    assert_eq!(s.sample(&mut logits.clone(), &[1]), 3);
    assert!(Sampler::new(SamplingConfig { top_p: 0.0, ..Default::default() }).is_err());
    assert!(Sampler::new(SamplingConfig { temperature: -1.0, ..Default::default() }).is_err());
}

/// The last-position head used by generation gives the last row of the full head.
#[test]
fn last_position_head_equals_last_row() {
    let device = Default::default();
    let model = QwenModel::<B>::random(qwen2_config(serde_json::json!({"tie_word_embeddings": true})), 0.2, &device);
    let seq = ids(9, 2);
    let mut a = KvCache::new(&model.config, 1, 16, &device);
    let mut b = KvCache::new(&model.config, 1, 16, &device);
    let full = values(model.forward_cached(std::slice::from_ref(&seq), &mut a).unwrap());
    let last = values(model.forward_cached_last(std::slice::from_ref(&seq), &mut b).unwrap());
    let v = model.config.vocab_size;
    assert_eq!(last.len(), v);
    assert!(max_diff(&full[full.len() - v..], &last) < 1e-5);
}
