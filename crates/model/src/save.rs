//! Writing a model back in HF layout: `config.json` + `model.safetensors` with the names of its
//! family, so transformers (Qwen2) or Qwen-1's own code loads what this crate writes. Both files
//! are written to temporary names and renamed into place.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use safetensors::{Dtype, View};

use crate::config::Family;
use crate::error::{ModelError, Result};
use crate::qwen::QwenModel;

/// On-disk float type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    BF16,
    F16,
}

struct Raw {
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

fn raw<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: SaveDtype) -> Raw {
    let shape = t.dims().to_vec();
    let values: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("f32 tensor data");
    let (dtype, bytes) = match dtype {
        SaveDtype::F32 => (Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        SaveDtype::BF16 => (Dtype::BF16, values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()),
        SaveDtype::F16 => (Dtype::F16, values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()),
    };
    Raw { dtype, shape, bytes }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| ModelError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
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
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Write { path: dir.to_path_buf(), source })?;
        let c = &self.config;
        let m = &self.model;
        let mut tensors: Vec<(String, Raw)> = Vec::new();
        let mut put2 = |name: String, t: Tensor<B, 2>| tensors.push((name, raw(t, dtype)));
        // burn Linear weights are [in, out]; HF stores [out, in].
        let w = |l: &burn::nn::Linear<B>| l.weight.val().transpose();
        let mut vectors: Vec<(String, Tensor<B, 1>)> = Vec::new();
        match c.family {
            Family::Qwen2 => {
                put2("model.embed_tokens.weight".into(), m.embedding_matrix());
                for (i, l) in m.layers.iter().enumerate() {
                    let p = format!("model.layers.{i}");
                    let a = &l.self_attn;
                    for (n, lin) in
                        [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("o_proj", &a.o_proj)]
                    {
                        put2(format!("{p}.self_attn.{n}.weight"), w(lin));
                        if let Some(b) = &lin.bias {
                            vectors.push((format!("{p}.self_attn.{n}.bias"), b.val()));
                        }
                    }
                    for (n, lin) in
                        [("gate_proj", &l.mlp.gate_proj), ("up_proj", &l.mlp.up_proj), ("down_proj", &l.mlp.down_proj)]
                    {
                        put2(format!("{p}.mlp.{n}.weight"), w(lin));
                    }
                    vectors.push((format!("{p}.input_layernorm.weight"), l.input_layernorm.gamma.val()));
                    vectors
                        .push((format!("{p}.post_attention_layernorm.weight"), l.post_attention_layernorm.gamma.val()));
                }
                vectors.push(("model.norm.weight".into(), m.norm.gamma.val()));
            }
            Family::Qwen1 => {
                put2("transformer.wte.weight".into(), m.embedding_matrix());
                for (i, l) in m.layers.iter().enumerate() {
                    let p = format!("transformer.h.{i}");
                    let a = &l.self_attn;
                    put2(
                        format!("{p}.attn.c_attn.weight"),
                        Tensor::cat(vec![w(&a.q_proj), w(&a.k_proj), w(&a.v_proj)], 0),
                    );
                    let bias = |lin: &burn::nn::Linear<B>| lin.bias.as_ref().expect("Qwen-1 q/k/v have biases").val();
                    vectors.push((
                        format!("{p}.attn.c_attn.bias"),
                        Tensor::cat(vec![bias(&a.q_proj), bias(&a.k_proj), bias(&a.v_proj)], 0),
                    ));
                    put2(format!("{p}.attn.c_proj.weight"), w(&a.o_proj));
                    put2(format!("{p}.mlp.w1.weight"), w(&l.mlp.up_proj));
                    put2(format!("{p}.mlp.w2.weight"), w(&l.mlp.gate_proj));
                    put2(format!("{p}.mlp.c_proj.weight"), w(&l.mlp.down_proj));
                    vectors.push((format!("{p}.ln_1.weight"), l.input_layernorm.gamma.val()));
                    vectors.push((format!("{p}.ln_2.weight"), l.post_attention_layernorm.gamma.val()));
                }
                vectors.push(("transformer.ln_f.weight".into(), m.norm.gamma.val()));
            }
        }
        if !c.tie_word_embeddings && extra.lm_head {
            put2("lm_head.weight".into(), w(&m.lm_head));
        }
        for (name, t) in extra.tensors {
            put2(name, t);
        }
        tensors.extend(vectors.into_iter().map(|(n, t)| (n, raw(t, dtype))));
        let views: Vec<(String, &Raw)> = tensors.iter().map(|(n, r)| (n.clone(), r)).collect();
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| ModelError::Safetensors { path: dir.join("model.safetensors"), reason: e.to_string() })?;
        write_atomic(&dir.join("model.safetensors"), &bytes)?;
        let mut config = c.source.clone();
        if let Some(o) = config.as_object_mut() {
            let name = match dtype {
                SaveDtype::F32 => "float32",
                SaveDtype::BF16 => "bfloat16",
                SaveDtype::F16 => "float16",
            };
            match c.family {
                Family::Qwen2 => {
                    let key = if o.contains_key("dtype") { "dtype" } else { "torch_dtype" };
                    o.insert(key.into(), name.into());
                }
                Family::Qwen1 => {
                    for (k, on) in [("fp32", SaveDtype::F32), ("bf16", SaveDtype::BF16), ("fp16", SaveDtype::F16)] {
                        o.insert(k.into(), (on == dtype).into());
                    }
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
