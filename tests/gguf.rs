//! llama.cpp's GGUF files against real references. The fixtures in `tests/fixtures/gguf/` were
//! written by llama.cpp's own Python package (gguf-py 0.19.0, `tools/reference/gguf_fixtures.py`):
//!
//! - `quants.gguf`: tensors of every type this stack dequantizes (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
//!   Q5_0, Q5_1 quantized by `gguf.quants.quantize`; Q2_K, Q3_K, Q4_K, Q5_K, Q6_K as seeded raw
//!   blocks), each next to gguf-py's own dequantization `NAME.expected`: ours must equal it bit for
//!   bit.
//! - `{qwen2_gqa,qwen2_tied}.{f32,f16,q8_0}.gguf`: the tiny Qwen2 checkpoints of
//!   `tests/fixtures/model/` under llama.cpp's tensor names and metadata keys; their logits must
//!   match transformers' logits in those folders' `reference.safetensors`, and llama.cpp's own
//!   logits for the same files (`llama_cpp_logits.gguf`, llama-cpp-python 0.3.36).
//!
//! Malformed and hostile files are built here byte by byte: every one is a typed error.

use std::path::PathBuf;
use std::process::Command;

use burn::backend::Flex;
use qwen_model::gguf::{dequantize, GgmlType, GgufFile};
use qwen_model::{ModelError, QwenConfig, QwenModel, WeightDtype};
use qwen_tokenizer::AllowedSpecial;

mod common;

use common::{max_diff, Reference};

type B = Flex;

fn gguf_fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/gguf").join(name)
}

fn model_dir() -> PathBuf {
    common::root().join("tests/fixtures/model/qwen2_gqa")
}

#[test]
fn dequantization_equals_gguf_py_bit_for_bit() {
    let file = GgufFile::open(gguf_fixture("quants.gguf")).unwrap();
    assert_eq!(file.version, 3);
    let mut types = Vec::new();
    for (name, info) in file.tensors.iter().filter(|(n, _)| !n.ends_with(".expected")) {
        let (shape, got) = file.tensor_f32(name).unwrap();
        let (want_shape, want) = file.tensor_f32(&format!("{name}.expected")).unwrap();
        assert_eq!(shape, want_shape, "{name}");
        assert_eq!(got.len(), want.len(), "{name}");
        let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{name} ({}): {differ} of {} values differ from gguf-py", info.ggml_type, got.len());
        assert!(got.iter().any(|&x| x != 0.0), "{name}: all zero");
        types.push(info.ggml_type);
    }
    for t in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        assert!(types.contains(&t), "quants.gguf has no {t} tensor");
        assert!(t.dequantizable());
    }
}

/// The config the GGUF metadata stands for is the config.json it was converted from.
#[test]
fn gguf_metadata_is_the_checkpoint_config() {
    for (case, ftype, _) in files() {
        let want =
            QwenConfig::from_file(common::root().join("tests/fixtures/model").join(case).join("config.json")).unwrap();
        {
            let file = GgufFile::open(gguf_fixture(&format!("{case}.{ftype}.gguf"))).unwrap();
            let got = qwen_model::gguf_config(&file).unwrap();
            let what = format!("{case} {ftype}");
            assert_eq!(got.family, want.family);
            assert_eq!(
                (got.vocab_size, got.hidden_size, got.intermediate_size, got.num_hidden_layers),
                (want.vocab_size, want.hidden_size, want.intermediate_size, want.num_hidden_layers),
                "{what}"
            );
            assert_eq!(
                (got.num_attention_heads, got.num_key_value_heads, got.head_dim, got.qkv_bias),
                (want.num_attention_heads, want.num_key_value_heads, want.head_dim, want.qkv_bias),
                "{what}"
            );
            assert_eq!((got.rms_norm_eps, got.tie_word_embeddings), (want.rms_norm_eps, want.tie_word_embeddings));
            assert_eq!(got.max_position_embeddings, want.max_position_embeddings, "{what}");
            assert_eq!(format!("{:?}", got.rope), format!("{:?}", want.rope), "{what}");
        }
    }
}

/// Max |logit error| against transformers, per file type (measured: f32 5.0e-6 / 6.5e-6, f16
/// 7.4e-3 / 8.7e-3, q8_0 1.5e-1 / 2.2e-1 for qwen2_gqa / qwen2_tied). F32 is the same weights; F16
/// and Q8_0 are gguf-py's rounding of them (llama.cpp's own F16/Q8_0 errors are as large).
const TOLERANCES: [(&str, f32); 3] = [("f32", 1e-5), ("f16", 1.5e-2), ("q8_0", 3e-1)];

/// The converted checkpoints and their file types: Qwen2 GQA with head_dim 24 != 64/4, Qwen2 GQA
/// with tied embeddings (each at F32, F16, Q8_0), and Qwen3 with q/k norms, biases on q/k/v/o, tied
/// embeddings and YaRN (F32).
fn files() -> Vec<(&'static str, &'static str, f32)> {
    let mut v: Vec<_> = ["qwen2_gqa", "qwen2_tied"]
        .into_iter()
        .flat_map(|case| TOLERANCES.into_iter().map(move |(ftype, tol)| (case, ftype, tol)))
        .collect();
    v.push(("qwen3_tied_bias_yarn", "f32", TOLERANCES[0].1));
    v
}

fn logits(model: &QwenModel<B>, ids: &[u32]) -> Vec<f32> {
    model.forward(&[ids.to_vec()]).unwrap().into_data().to_vec().unwrap()
}

#[test]
fn gguf_logits_match_transformers() {
    let device = Default::default();
    let mut report = Vec::new();
    for (case, ftype, tolerance) in files() {
        let r = Reference::open(&common::root().join("tests/fixtures/model").join(case));
        {
            let path = gguf_fixture(&format!("{case}.{ftype}.gguf"));
            let model: QwenModel<B> =
                qwen_model::load(&path, &device).unwrap_or_else(|e| panic!("{case} {ftype}: {e}"));
            let v = model.config.vocab_size;
            let (mut worst, mut positions, mut same) = (0f32, 0, 0);
            for i in 0.. {
                let Some(ids) = r.ids(&format!("input_ids.{i}")) else { break };
                let want = r.floats(&format!("logits.{i}")).unwrap();
                let got = logits(&model, &ids);
                worst = worst.max(max_diff(&got, &want));
                for (p, (g, w)) in got.chunks(v).zip(want.chunks(v)).enumerate() {
                    let (ga, wa) = (qwen_model::generate::argmax(g), qwen_model::generate::argmax(w));
                    // Where no error within the tolerance can swap the reference's top two, the
                    // argmax must agree (random tiny models have top-2 margins down to ~0.07).
                    let mut sorted = w.to_vec();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    if sorted[0] - sorted[1] > 2.0 * tolerance {
                        assert_eq!(ga, wa, "{case} {ftype} input {i} position {p}: argmax differs");
                    }
                    same += usize::from(ga == wa);
                    positions += 1;
                }
            }
            assert!(positions > 30, "{case}: {positions} positions");
            assert!(worst <= tolerance, "{case} {ftype}: max |logit error| {worst:e} > {tolerance:e}");
            report.push(format!(
                "{case} {ftype}: max |logit error| {worst:.2e}, argmax equal at {same}/{positions} positions"
            ));
        }
    }
    println!("{}", report.join("\n"));
}

/// llama.cpp's own logits for the same files (`llama_cpp_logits.gguf`: llama-cpp-python 0.3.36,
/// f32 KV cache, 2 CPU threads; only qwen2_tied, as llama.cpp's Qwen2 graph cannot take a head_dim
/// other than n_embd / n_head). At F32 both compute the same function of the same weights. At F16
/// and Q8_0 llama.cpp also rounds the activations (to f16, resp. Q8_0 blocks) before each matmul
/// while this stack multiplies f32 activations by the dequantized weights, so the allowed
/// difference is the size of llama.cpp's own error against transformers (measured: f16 8.3e-3,
/// q8_0 2.6e-1), not more.
const LLAMA_CPP_TOLERANCES: [(&str, f32); 3] = [("f32", 1e-5), ("f16", 1e-2), ("q8_0", 2.5e-1)];

#[test]
fn gguf_logits_match_llama_cpp() {
    let device = Default::default();
    let case = "qwen2_tied";
    let reference = GgufFile::open(gguf_fixture("llama_cpp_logits.gguf")).unwrap();
    let r = Reference::open(&common::root().join("tests/fixtures/model").join(case));
    let mut report = Vec::new();
    for (ftype, tolerance) in LLAMA_CPP_TOLERANCES {
        let model: QwenModel<B> = qwen_model::load(gguf_fixture(&format!("{case}.{ftype}.gguf")), &device).unwrap();
        let (mut worst, mut n) = (0f32, 0);
        for i in 0.. {
            let Some(ids) = r.ids(&format!("input_ids.{i}")) else { break };
            let (shape, want) = reference.tensor_f32(&format!("{case}.{ftype}.logits.{i}")).unwrap();
            assert_eq!(shape, [ids.len(), model.config.vocab_size]);
            worst = worst.max(max_diff(&logits(&model, &ids), &want));
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(worst <= tolerance, "{ftype}: max |logit difference| from llama.cpp {worst:e} > {tolerance:e}");
        report.push(format!("{case} {ftype}: max |logit difference| from llama.cpp {worst:.2e}"));
    }
    println!("{}", report.join("\n"));
}

#[test]
fn gguf_greedy_generation_matches_transformers() {
    let device = Default::default();
    let r = Reference::open(&model_dir());
    let prompt = r.ids("greedy.prompt").unwrap();
    let want = r.ids("greedy.tokens").unwrap();
    for ftype in ["f32", "f16"] {
        let model: QwenModel<B> = qwen_model::load(gguf_fixture(&format!("qwen2_gqa.{ftype}.gguf")), &device).unwrap();
        let config = qwen_model::GenerateConfig {
            max_new_tokens: want.len(),
            stop_ids: vec![],
            sampling: qwen_model::SamplingConfig::default(),
        };
        assert_eq!(model.generate(&prompt, &config, |_| true).unwrap(), want, "{ftype}");
    }
}

/// The fixture's vocabulary is Qwen2's first 256 tokens (the single bytes): text encodes to the
/// ids Qwen2's tokenizer.json gives each byte.
#[test]
fn tokenizer_from_gguf_metadata() {
    let file = GgufFile::open(gguf_fixture("qwen2_gqa.f32.gguf")).unwrap();
    let tok = qwen::gguf::tokenizer(&file).unwrap();
    assert_eq!(tok.vocab_size(), 256);
    let hf = common::qwen2_json();
    let text = "Hello, GGUF! \u{e9}\u{4e2d}\n\t42";
    let ids = tok.encode(text, &AllowedSpecial::None).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte: the fixture has no merges");
    for (&id, b) in ids.iter().zip(text.bytes()) {
        assert_eq!(hf.decode_bytes(&[id]).unwrap(), vec![b], "id {id} is byte {b:#x} in Qwen2's vocabulary");
    }
    assert_eq!(tok.decode_bytes(&ids).unwrap(), text.as_bytes());
}

/// The real Qwen2 vocabulary written as a vocabulary-only GGUF by gguf_fixtures.py (~6 MB, not
/// committed: run the script, then `cargo test --test gguf -- --ignored`): tokenizes as
/// tokenizer.json does on the committed real-text corpus.
#[test]
#[ignore = "needs target/gguf-fixtures/qwen2_vocab.gguf from tools/reference/gguf_fixtures.py"]
fn real_qwen2_vocabulary_from_gguf_tokenizes_as_tokenizer_json() {
    let file = GgufFile::open(common::root().join("target/gguf-fixtures/qwen2_vocab.gguf")).unwrap();
    // tokenizer.json has HF's NFC normalizer; GGUF has none (llama.cpp does not normalize).
    let tok = qwen::gguf::tokenizer(&file).unwrap().with_normalization(qwen_tokenizer::Normalization::Nfc);
    let hf = common::qwen2_json();
    assert_eq!(tok.vocab_size(), hf.vocab_size());
    let lines = std::fs::read_to_string(common::root().join("tests/fixtures/tokenizer/corpus.jsonl")).unwrap();
    let mut n = 0;
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap_or_default();
        assert_eq!(tok.encode(text, &AllowedSpecial::All).unwrap(), hf.encode(text, &AllowedSpecial::All).unwrap());
        n += 1;
    }
    assert!(n > 100, "{n} texts");
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        assert_eq!(tok.specials().id(special), hf.specials().id(special), "{special}");
    }
    // The file's chat template renders and tokenizes the committed Qwen2.5 cases as transformers'
    // apply_chat_template did (tests/fixtures/chat_template/cases.jsonl).
    let template = qwen::gguf::chat_template(&file).unwrap().expect("the file has a chat template");
    let cases = std::fs::read_to_string(common::root().join("tests/fixtures/chat_template/cases.jsonl")).unwrap();
    let mut checked = 0;
    for case in cases.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()) {
        if case["template"] != "qwen2.5" || !case["tools"].is_null() || case["kwargs"] != serde_json::json!({}) {
            continue;
        }
        let mut options = qwen_tokenizer::RenderOptions::generation();
        options.add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
        let messages = case["messages"].as_array().unwrap();
        let prompt = template.encode(&tok, messages, &options).unwrap();
        assert_eq!(prompt.ids, common::ids(&case["ids"]), "{}", case["case"]);
        checked += 1;
    }
    assert!(checked >= 2, "{checked} cases");
}

#[test]
fn logits_example_reads_a_gguf_file() {
    let r = Reference::open(&model_dir());
    let ids = r.ids("input_ids.0").unwrap();
    let want = r.floats("logits.0").unwrap();
    let got = common::logits_example(&gguf_fixture("qwen2_gqa.f32.gguf"), &ids);
    assert!(max_diff(&got, &want) <= 1e-5);
}

/// `generate --model FILE.gguf` with no `--tokenizer`: the greedy text of the library's own greedy
/// ids for the same prompt (the tokenizer and model both from the file), with the weights kept as
/// `--dtype` says (the f32 file as f32 and f16; the Q8_0 file as its own Q8_0 blocks).
#[test]
fn generate_example_runs_a_gguf_file_alone() {
    for (name, dtype) in [
        ("qwen2_gqa.f32.gguf", WeightDtype::F32),
        ("qwen2_gqa.f32.gguf", WeightDtype::F16),
        ("qwen2_gqa.q8_0.gguf", WeightDtype::Q8_0),
    ] {
        let path = gguf_fixture(name);
        let out = Command::new(common::example("generate"))
            .arg("--model")
            .arg(&path)
            .args(["--prompt", "Hi there", "--max-new-tokens", "6", "--dtype", dtype.name()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} {dtype}: {}", String::from_utf8_lossy(&out.stderr));
        let file = GgufFile::open(&path).unwrap();
        let tok = qwen::gguf::tokenizer(&file).unwrap().with_normalization(qwen_tokenizer::Normalization::Nfc);
        let model: QwenModel<B> = qwen_model::load_gguf::load_gguf_as(&path, &Default::default(), dtype).unwrap();
        let prompt = tok.encode("Hi there", &AllowedSpecial::None).unwrap();
        let config = qwen_model::GenerateConfig {
            max_new_tokens: 6,
            stop_ids: vec![],
            sampling: qwen_model::SamplingConfig::default(),
        };
        let new = model.generate(&prompt, &config, |_| true).unwrap();
        let mut want = b"Hi there".to_vec();
        want.extend(tok.decode_bytes(&new).unwrap());
        let want = String::from_utf8_lossy(&want).to_string();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'),
            want.trim_end_matches('\n'),
            "{name} {dtype}"
        );
    }
}

/// A minimal GGUF writer for hostile files.
struct Writer(Vec<u8>);

impl Writer {
    fn new(version: u32, tensors: u64, kvs: u64) -> Self {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        Self(b)
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.extend((s.len() as u64).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    /// A tensor info: name, dims (ne order), type, offset.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad_data(&mut self, bytes: usize) -> Vec<u8> {
        while self.0.len() % 32 != 0 {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0x11u8, bytes));
        self.0.clone()
    }
}

fn gguf_err(bytes: Vec<u8>) -> ModelError {
    GgufFile::from_bytes("hostile.gguf", bytes).expect_err("a malformed file must be refused")
}

#[test]
fn hostile_and_malformed_files_are_typed_errors() {
    let reason = |e: ModelError| match e {
        ModelError::Gguf { reason, .. } => reason,
        other => panic!("expected ModelError::Gguf, got {other:?}"),
    };
    // Every truncation of a real file.
    let real = std::fs::read(gguf_fixture("qwen2_gqa.q8_0.gguf")).unwrap();
    let header_end = 4096.min(real.len());
    // (GGUFWriter pads after the last tensor too: cutting only that padding leaves a valid file.)
    let last_end = real.len() - 31;
    for n in (0..header_end).chain((header_end..last_end).step_by(997)) {
        reason(gguf_err(real[..n].to_vec()));
    }
    assert!(GgufFile::from_bytes("ok.gguf", real.clone()).is_ok());
    // Wrong magic and versions.
    assert!(reason(gguf_err(b"GGML\x03\0\0\0".to_vec())).contains("magic"));
    for v in [1u32, 4, u32::MAX] {
        assert!(reason(gguf_err(Writer::new(v, 0, 0).0)).contains("version"));
    }
    // Counts far beyond the file: refused before any allocation.
    assert!(reason(gguf_err(Writer::new(3, u64::MAX, 0).0)).contains("tensor count"));
    assert!(reason(gguf_err(Writer::new(3, 0, 1 << 60).0)).contains("metadata count"));
    let mut w = Writer::new(3, 0, 1);
    w.str("k").u32(9).u32(8).u64(u64::MAX / 2);
    assert!(reason(gguf_err(w.0.clone())).contains("array length"));
    let mut w = Writer::new(3, 0, 1);
    w.str("k").u32(8).u64(1 << 50);
    assert!(reason(gguf_err(w.0.clone())).contains("string length"));
    // Unknown value type, bad bool, nesting, invalid UTF-8, duplicate key.
    let mut w = Writer::new(3, 0, 1);
    w.str("k").u32(13).u64(0);
    assert!(reason(gguf_err(w.0.clone())).contains("unknown value type"));
    let mut w = Writer::new(3, 0, 1);
    w.str("k").u32(7).0.push(2);
    assert!(reason(gguf_err(w.0.clone())).contains("bool"));
    let mut w = Writer::new(3, 0, 1);
    w.str("k").u32(9);
    for _ in 0..100 {
        w.u32(9).u64(1);
    }
    assert!(reason(gguf_err(w.0.clone())).contains("nested"));
    let mut w = Writer::new(3, 0, 1);
    w.u64(2).0.extend([0xff, 0xfe]);
    w.u32(4).u32(0);
    assert!(reason(gguf_err(w.0.clone())).contains("UTF-8"));
    let mut w = Writer::new(3, 0, 2);
    w.kv_str("a", "x").kv_str("a", "y");
    assert!(reason(gguf_err(w.0.clone())).contains("twice"));
    // Alignment that is not a power of two.
    let mut w = Writer::new(3, 0, 1);
    w.str("general.alignment").u32(4).u32(24);
    assert!(reason(gguf_err(w.0.clone())).contains("alignment"));
    // Tensor infos: too many dims, unknown GGML type, partial blocks, misaligned, past the end,
    // dims that overflow, duplicates.
    let one = |dims: &[u64], ty: u32, offset: u64, data: usize| {
        let mut w = Writer::new(3, 1, 0);
        w.tensor("t", dims, ty, offset);
        reason(gguf_err(w.pad_data(data)))
    };
    assert!(one(&[1, 1, 1, 1, 1], 0, 0, 4).contains("dims"));
    assert!(one(&[32], 1000, 0, 64).contains("unknown GGML type id 1000"));
    assert!(one(&[33], 8, 0, 1000).contains("blocks"));
    assert!(one(&[4], 0, 8, 64).contains("alignment"));
    assert!(one(&[1024], 0, 0, 4095).contains("past the end"));
    assert!(one(&[u64::MAX, u64::MAX], 0, 0, 64).contains("overflow"));
    // No values, but the shape's product in row-major order overflows (the fuzz target's second
    // crash, in CI: a panic multiplying `shape()`).
    assert!(one(&[0, 1 << 40, 1 << 40], 0, 0, 64).contains("overflow"));
    assert!(one(&[1 << 40, 0, 1 << 40], 0, 0, 64).contains("overflow"));
    assert!(one(&[1 << 62], 0, 0, 64).contains("overflow") || one(&[1 << 62], 0, 0, 64).contains("past the end"));
    let mut w = Writer::new(3, 2, 0);
    w.tensor("t", &[4], 0, 0).tensor("t", &[4], 0, 32);
    assert!(reason(gguf_err(w.pad_data(64))).contains("twice"));
    // An empty tensor in a data section that an alignment of 2^31 puts past the end of the file
    // (the `gguf` fuzz target's first crash: a slice past the end when the tensor was read).
    let mut w = Writer::new(3, 1, 1);
    w.str("general.alignment").u32(4).u32(1 << 31).tensor("t", &[0], 0, 0);
    assert!(reason(gguf_err(w.0.clone())).contains("past the end of the file"));
}

#[test]
fn unsupported_types_and_architectures_are_typed_errors() {
    // An IQ2_XXS tensor is a known type the file may hold, and a typed error when read.
    let mut w = Writer::new(3, 1, 1);
    w.kv_str("general.architecture", "qwen2").tensor("blk.0.ffn_up.weight", &[256], 16, 0);
    let file = GgufFile::from_bytes("iq2.gguf", w.pad_data(66)).unwrap();
    match file.tensor_f32("blk.0.ffn_up.weight") {
        Err(ModelError::GgufType { name, ggml_type }) => {
            assert_eq!((name.as_str(), ggml_type.as_str()), ("blk.0.ffn_up.weight", "IQ2_XXS"))
        }
        other => panic!("expected GgufType, got {other:?}"),
    }
    assert!(dequantize(GgmlType(16), &[0; 66]).is_none());
    // Another architecture.
    let mut w = Writer::new(3, 0, 1);
    w.kv_str("general.architecture", "llama");
    let file = GgufFile::from_bytes("llama.gguf", w.pad_data(0)).unwrap();
    assert!(matches!(qwen_model::gguf_config(&file), Err(ModelError::Unsupported(_))));
}

/// Seeded random corruption of a real file's header, metadata and tensor infos (a few bytes at a
/// time, 3,000 times): every result is a file or a typed error, and whatever opens can be read
/// (every tensor, the config, the tokenizer) without a panic.
#[test]
fn corrupted_files_never_panic() {
    let real = std::fs::read(gguf_fixture("qwen2_tied.q8_0.gguf")).unwrap();
    let header = GgufFile::from_bytes("x", real.clone()).unwrap();
    let data_start = real.len() - header.tensors.values().map(|t| t.offset + t.size).max().unwrap() - 64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut opened, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut bytes = real.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % data_start as u64) as usize;
            bytes[at] = match next() % 3 {
                0 => next() as u8,
                1 => bytes[at] ^ (1 << (next() % 8)),
                _ => 0xFF,
            };
        }
        match GgufFile::from_bytes("corrupt.gguf", bytes) {
            Ok(file) => {
                opened += 1;
                for name in file.tensors.keys() {
                    let _ = file.tensor_f32(name);
                }
                let _ = qwen_model::gguf_config(&file);
                let _ = qwen::gguf::tokenizer(&file);
            }
            Err(ModelError::Gguf { .. }) => refused += 1,
            Err(other) => panic!("expected ModelError::Gguf, got {other:?}"),
        }
    }
    assert!(opened > 100 && refused > 100, "opened {opened}, refused {refused}");
}

/// `tokenizer.chat_template` with the texts of the bos/eos token ids as `bos_token`/`eos_token`.
#[test]
fn chat_template_from_gguf_metadata() {
    let mut w = Writer::new(3, 0, 3);
    w.kv_str("tokenizer.chat_template", "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{{ eos_token }}");
    w.str("tokenizer.ggml.tokens").u32(9).u32(8).u64(3).str("a").str("<s>").str("</s>");
    w.str("tokenizer.ggml.eos_token_id").u32(4).u32(2);
    let file = GgufFile::from_bytes("template.gguf", w.pad_data(0)).unwrap();
    let template = qwen::gguf::chat_template(&file).unwrap().unwrap();
    let messages = [serde_json::json!({"role": "user", "content": "hi"})];
    let mut options = qwen_tokenizer::RenderOptions::generation();
    options.add_generation_prompt = false;
    assert_eq!(template.render(&messages, &options).unwrap(), "[hi]</s>");
    let mut w = Writer::new(3, 0, 0);
    assert!(qwen::gguf::chat_template(&GgufFile::from_bytes("none.gguf", w.pad_data(0)).unwrap()).unwrap().is_none());
}
