//! Writing a model back in HF layout: `config.json` + `model.safetensors` (or the Hub's shards and
//! index) with the names of its family, so transformers (Qwen2, Qwen3, the MoE families) or
//! Qwen-1's own code loads what this crate writes. Every file is written to a temporary name and
//! renamed into place.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use safetensors::{Dtype, View};

use crate::error::{ModelError, Result};
use crate::qwen::{FeedForward, QwenModel};

/// On-disk float type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    BF16,
    F16,
}

pub(crate) struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

pub(crate) fn raw<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: SaveDtype) -> Raw {
    let shape = t.dims().to_vec();
    let values: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("f32 tensor data");
    let (dtype, bytes) = match dtype {
        SaveDtype::F32 => (Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        SaveDtype::BF16 => (Dtype::BF16, values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()),
        SaveDtype::F16 => (Dtype::F16, values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()),
    };
    Raw { dtype, shape, bytes }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| ModelError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// `tensors` as one safetensors file at `path` (metadata `format: pt`, as transformers and PEFT
/// write), atomically.
pub(crate) fn write_safetensors(tensors: &[(String, Raw)], path: &Path) -> Result<()> {
    let views: Vec<(String, &Raw)> = tensors.iter().map(|(n, r)| (n.clone(), r)).collect();
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// The weight files: one `model.safetensors`, or shards and their index. Files of the other layout
/// left by an earlier save are removed, so a folder never holds two disagreeing checkpoints.
fn write_weights(dir: &Path, tensors: &[(String, Raw)], max_shard_bytes: Option<usize>) -> Result<()> {
    let serialize = write_safetensors;
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let stale_shards = || -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("model-") && name.contains("-of-") && name.ends_with(".safetensors") {
                std::fs::remove_file(e.path()).map_err(|source| ModelError::Write { path: e.path(), source })?;
            }
        }
        Ok(())
    };
    let remove = |p: &Path| match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ModelError::Write { path: p.to_path_buf(), source: e })
        }
        _ => Ok(()),
    };
    let Some(max) = max_shard_bytes else {
        serialize(tensors, &single)?;
        remove(&index)?;
        return stale_shards();
    };
    // Greedy in order, as transformers' `max_shard_size` does.
    let mut shards: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, (_, r)) in tensors.iter().enumerate() {
        if i > start && size + r.bytes.len() > max {
            shards.push(start..i);
            (start, size) = (i, 0);
        }
        size += r.bytes.len();
    }
    shards.push(start..tensors.len());
    remove(&index)?;
    stale_shards()?;
    remove(&single)?;
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (k, range) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        for (name, _) in &tensors[range.clone()] {
            weight_map.insert(name.clone(), file.clone().into());
        }
        serialize(&tensors[range], &dir.join(&file))?;
    }
    let total: usize = tensors.iter().map(|(_, r)| r.bytes.len()).sum();
    let doc = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    write_atomic(&index, serde_json::to_string_pretty(&doc).expect("JSON value serializes").as_bytes())
}

/// What a checkpoint holds besides the transformer, for models built on its trunk (e.g. a reward
/// model saved as HF `Qwen2ForSequenceClassification`: no `lm_head`, a `score.weight`).
#[derive(Debug, Clone)]
pub struct Extra<B: Backend> {
    /// Write `lm_head.weight` (untied models). Tied models always keep their embedding.
    pub lm_head: bool,
    /// More matrices in HF's `[out, in]` layout, by name.
    pub tensors: Vec<(String, Tensor<B, 2>)>,
    /// Entries set in `config.json` (e.g. `architectures`, `num_labels`).
    pub config: serde_json::Map<String, serde_json::Value>,
}

impl<B: Backend> Default for Extra<B> {
    /// A plain causal LM: the head, nothing else.
    fn default() -> Self {
        Self { lm_head: true, tensors: Vec::new(), config: serde_json::Map::new() }
    }
}

impl<B: Backend> QwenModel<B> {
    /// Writes `config.json` and `model.safetensors` into `dir` (created if needed).
    pub fn save(&self, dir: impl AsRef<Path>, dtype: SaveDtype) -> Result<()> {
        self.save_with(dir, dtype, Extra::default())
    }

    /// [`QwenModel::save`] with `extra` tensors and config entries, and without the LM head if
    /// `extra.lm_head` is false.
    pub fn save_with(&self, dir: impl AsRef<Path>, dtype: SaveDtype, extra: Extra<B>) -> Result<()> {
        self.write(dir.as_ref(), dtype, extra, None)
    }

    /// [`QwenModel::save`] in the Hub's sharded layout: `model-0000k-of-0000n.safetensors` files
    /// of at most `max_shard_bytes` each (a tensor larger than that gets a shard of its own), and
    /// `model.safetensors.index.json` naming each tensor's file, written last.
    pub fn save_sharded(&self, dir: impl AsRef<Path>, dtype: SaveDtype, max_shard_bytes: usize) -> Result<()> {
        self.write(dir.as_ref(), dtype, Extra::default(), Some(max_shard_bytes))
    }

    fn write(&self, dir: &Path, dtype: SaveDtype, extra: Extra<B>, shard: Option<usize>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Write { path: dir.to_path_buf(), source })?;
        let c = &self.config;
        let m = &self.model;
        let mut tensors: Vec<(String, Raw)> = Vec::new();
        let mut put2 = |name: String, t: Tensor<B, 2>| tensors.push((name, raw(t, dtype)));
        // burn Linear weights are [in, out]; HF stores [out, in].
        let w = |l: &burn::nn::Linear<B>| l.weight.val().transpose();
        let mut vectors: Vec<(String, Tensor<B, 1>)> = Vec::new();
        if c.family.hf_layout() {
            put2("model.embed_tokens.weight".into(), m.embedding_matrix());
            for (i, l) in m.layers.iter().enumerate() {
                let p = format!("model.layers.{i}");
                let a = &l.self_attn;
                let mut linear = |name: String, lin: &burn::nn::Linear<B>| {
                    put2(format!("{name}.weight"), w(lin));
                    if let Some(b) = &lin.bias {
                        vectors.push((format!("{name}.bias"), b.val()));
                    }
                };
                for (n, lin) in
                    [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("o_proj", &a.o_proj)]
                {
                    linear(format!("{p}.self_attn.{n}"), lin);
                }
                let mut mlp = |prefix: String, mlp: &crate::qwen::Mlp<B>| {
                    for (n, lin) in
                        [("gate_proj", &mlp.gate_proj), ("up_proj", &mlp.up_proj), ("down_proj", &mlp.down_proj)]
                    {
                        linear(format!("{prefix}.{n}"), lin);
                    }
                };
                match &l.mlp {
                    FeedForward::Dense(d) => mlp(format!("{p}.mlp"), d),
                    FeedForward::Sparse(moe) => {
                        for (e, expert) in moe.experts.iter().enumerate() {
                            mlp(format!("{p}.mlp.experts.{e}"), expert);
                        }
                        if let Some(shared) = &moe.shared_expert {
                            mlp(format!("{p}.mlp.shared_expert"), shared);
                        }
                        linear(format!("{p}.mlp.gate"), &moe.gate);
                        if let Some(g) = &moe.shared_expert_gate {
                            linear(format!("{p}.mlp.shared_expert_gate"), g);
                        }
                    }
                }
                for (n, norm) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                    if let Some(norm) = norm {
                        vectors.push((format!("{p}.self_attn.{n}.weight"), norm.gamma.val()));
                    }
                }
                vectors.push((format!("{p}.input_layernorm.weight"), l.input_layernorm.gamma.val()));
                vectors.push((format!("{p}.post_attention_layernorm.weight"), l.post_attention_layernorm.gamma.val()));
            }
            vectors.push(("model.norm.weight".into(), m.norm.gamma.val()));
        } else {
            put2("transformer.wte.weight".into(), m.embedding_matrix());
            for (i, l) in m.layers.iter().enumerate() {
                let p = format!("transformer.h.{i}");
                let a = &l.self_attn;
                let mlp = l.mlp.dense().ok_or_else(|| ModelError::Unsupported("Qwen-1 with a sparse MLP".into()))?;
                put2(format!("{p}.attn.c_attn.weight"), Tensor::cat(vec![w(&a.q_proj), w(&a.k_proj), w(&a.v_proj)], 0));
                let bias = |lin: &burn::nn::Linear<B>| lin.bias.as_ref().expect("Qwen-1 q/k/v have biases").val();
                vectors.push((
                    format!("{p}.attn.c_attn.bias"),
                    Tensor::cat(vec![bias(&a.q_proj), bias(&a.k_proj), bias(&a.v_proj)], 0),
                ));
                put2(format!("{p}.attn.c_proj.weight"), w(&a.o_proj));
                put2(format!("{p}.mlp.w1.weight"), w(&mlp.up_proj));
                put2(format!("{p}.mlp.w2.weight"), w(&mlp.gate_proj));
                put2(format!("{p}.mlp.c_proj.weight"), w(&mlp.down_proj));
                vectors.push((format!("{p}.ln_1.weight"), l.input_layernorm.gamma.val()));
                vectors.push((format!("{p}.ln_2.weight"), l.post_attention_layernorm.gamma.val()));
            }
            vectors.push(("transformer.ln_f.weight".into(), m.norm.gamma.val()));
        }
        if !c.tie_word_embeddings && extra.lm_head {
            put2("lm_head.weight".into(), w(&m.lm_head));
        }
        for (name, t) in extra.tensors {
            put2(name, t);
        }
        tensors.extend(vectors.into_iter().map(|(n, t)| (n, raw(t, dtype))));
        write_weights(dir, &tensors, shard)?;
        let mut config = c.source.clone();
        if let Some(o) = config.as_object_mut() {
            let name = match dtype {
                SaveDtype::F32 => "float32",
                SaveDtype::BF16 => "bfloat16",
                SaveDtype::F16 => "float16",
            };
            if c.family.hf_layout() {
                let key = if o.contains_key("dtype") { "dtype" } else { "torch_dtype" };
                o.insert(key.into(), name.into());
            } else {
                for (k, on) in [("fp32", SaveDtype::F32), ("bf16", SaveDtype::BF16), ("fp16", SaveDtype::F16)] {
                    o.insert(k.into(), (on == dtype).into());
                }
            }
        }
        if let Some(o) = config.as_object_mut() {
            o.extend(extra.config);
        }
        let text = serde_json::to_string_pretty(&config).expect("JSON value serializes");
        write_atomic(&dir.join("config.json"), text.as_bytes())
    }
}
