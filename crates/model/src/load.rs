//! Loading and saving HF checkpoints: `config.json` plus `model.safetensors`, or shards listed
//! in `model.safetensors.index.json`; f32, bf16 or f16 on disk, f32 in the model.
//!
//! Files are memory-mapped and each tensor is converted straight from the map into the backend,
//! so at most one tensor exists twice at any moment. Every tensor the model needs must be there
//! with the right shape, and every tensor in the files must be used: anything else is a typed
//! error naming the tensor.
//!
//! Qwen-1 names map onto the Qwen2 ones: `transformer.wte` → `embed_tokens`, `h.N.ln_1` →
//! `input_layernorm`, `attn.c_attn` (rows q|k|v, with bias) → `q_proj`/`k_proj`/`v_proj`,
//! `attn.c_proj` → `o_proj`, `mlp.w2` → `gate_proj` (w2 is the gate: `c_proj(w1(x) * silu(w2(x)))`),
//! `mlp.w1` → `up_proj`, `mlp.c_proj` → `down_proj`, `ln_2` → `post_attention_layernorm`,
//! `transformer.ln_f` → `norm`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Family, QwenConfig};
use crate::error::{ModelError, Result};
use crate::qwen::{Attention, DecoderLayer, Mlp, Qwen, QwenModel};

/// The memory-mapped tensors of a checkpoint, by name.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    /// name → file index
    names: BTreeMap<String, usize>,
    used: BTreeSet<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_path_buf(), source }
}

impl Checkpoint {
    /// Opens the safetensors files of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(io(&index))?;
            let bad = |reason: String| ModelError::Index { path: index.clone(), reason };
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no weight_map".into()))?;
            let mut files = BTreeSet::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| bad(format!("{name}: file is not a string")))?;
                if file.contains('/') || file.contains("..") {
                    return Err(bad(format!("{name}: file {file:?} is outside the checkpoint folder")));
                }
                files.insert(file.to_string());
            }
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(ModelError::NoWeights(dir.to_path_buf()));
        };
        let mut files = Vec::new();
        let mut names = BTreeMap::new();
        for path in paths {
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            // SAFETY: the map is read-only and lives as long as `Checkpoint`; a file changed under
            // us while loading is outside what any loader can defend against.
            let map = unsafe { Mmap::map(&file) }.map_err(io(&path))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
            for name in st.names() {
                if names.insert(name.to_string(), files.len()).is_some() {
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        reason: format!("tensor {name} appears in two files"),
                    });
                }
            }
            files.push((path, map));
        }
        Ok(Self { files, names, used: BTreeSet::new() })
    }

    /// Whether the checkpoint has a tensor.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// A tensor as f32 values, checked against `shape`; marks it used.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let &i = self.names.get(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let (path, map) = &self.files[i];
        let st = SafeTensors::deserialize(map)
            .map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
        let view =
            st.tensor(name).map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
        if view.shape() != shape {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(ModelError::Dtype { name: name.into(), dtype: format!("{other:?}") }),
        };
        self.used.insert(name.to_string());
        Ok(values)
    }

    /// Names never taken.
    pub fn unused(&self) -> impl Iterator<Item = &str> {
        self.names.keys().filter(|n| !self.used.contains(*n)).map(String::as_str)
    }
}

struct Builder<'a, B: Backend> {
    ckpt: &'a mut Checkpoint,
    device: &'a B::Device,
}

impl<B: Backend> Builder<'_, B> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let values = self.ckpt.take(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), self.device))
    }

    /// A linear layer from an HF `[out, in]` weight (burn stores `[in, out]`).
    fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let w = self.ckpt.take(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let b = if bias { Some(self.ckpt.take(&format!("{prefix}.bias"), &[d_out])?) } else { None };
        Ok(linear_from(&w, b, d_out, d_in, self.device))
    }

    fn norm(&mut self, name: &str, d: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm { gamma: Param::from_tensor(self.tensor(name, [d])?), epsilon: eps })
    }
}

/// A linear layer from row-major `[out, in]` values. The weight is transposed here, into a
/// contiguous `[in, out]` tensor: a transposed *view* would make every matmul ~20x slower on CPU.
fn linear_from<B: Backend>(w: &[f32], b: Option<Vec<f32>>, d_out: usize, d_in: usize, device: &B::Device) -> Linear<B> {
    let mut t = vec![0f32; w.len()];
    for (o, row) in w.chunks_exact(d_in).enumerate() {
        for (i, &x) in row.iter().enumerate() {
            t[i * d_out + o] = x;
        }
    }
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(t, [d_in, d_out]), device)),
        bias: b.map(|b| Param::from_tensor(Tensor::from_data(TensorData::new(b, [d_out]), device))),
    }
}

/// Loads `config.json` and the weights of `dir` onto `device`.
pub fn load<B: Backend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<QwenModel<B>> {
    Ok(load_with(dir, device, true, |_| Ok(()))?.0)
}

/// Loads a model built on the Qwen trunk: the transformer as [`load`] does, then `rest` takes the
/// checkpoint's other tensors (e.g. a reward model's `score.weight`). With `lm_head` false the
/// checkpoint has no `lm_head.weight` (HF `Qwen2ForSequenceClassification`) and an untied head is
/// filled with zeros. Any tensor left untaken is [`ModelError::UnexpectedTensor`].
pub fn load_with<B: Backend, T>(
    dir: impl AsRef<Path>,
    device: &B::Device,
    lm_head: bool,
    rest: impl FnOnce(&mut Checkpoint) -> Result<T>,
) -> Result<(QwenModel<B>, T)> {
    let dir = dir.as_ref();
    let config = QwenConfig::from_file(dir.join("config.json"))?;
    let mut ckpt = Checkpoint::open(dir)?;
    let model = build(&config, &mut ckpt, device, lm_head)?;
    let taken = rest(&mut ckpt)?;
    if let Some(extra) = ckpt.unused().find(|n| !n.ends_with("rotary_emb.inv_freq")) {
        return Err(ModelError::UnexpectedTensor(extra.to_string()));
    }
    Ok((QwenModel::new(config, model), taken))
}

fn build<B: Backend>(c: &QwenConfig, ckpt: &mut Checkpoint, device: &B::Device, lm_head: bool) -> Result<Qwen<B>> {
    let mut b = Builder::<B> { ckpt, device };
    let (h, v, eps) = (c.hidden_size, c.vocab_size, c.rms_norm_eps);
    let (nh, nkv, hd, ff) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
    let attention = |q_proj, k_proj, v_proj, o_proj| Attention {
        q_proj,
        k_proj,
        v_proj,
        o_proj,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    let (embed, norm, head_name) = match c.family {
        Family::Qwen2 => {
            for i in 0..c.num_hidden_layers {
                let p = format!("model.layers.{i}");
                layers.push(DecoderLayer {
                    input_layernorm: b.norm(&format!("{p}.input_layernorm.weight"), h, eps)?,
                    self_attn: attention(
                        b.linear(&format!("{p}.self_attn.q_proj"), h, nh * hd, true)?,
                        b.linear(&format!("{p}.self_attn.k_proj"), h, nkv * hd, true)?,
                        b.linear(&format!("{p}.self_attn.v_proj"), h, nkv * hd, true)?,
                        b.linear(&format!("{p}.self_attn.o_proj"), nh * hd, h, false)?,
                    ),
                    post_attention_layernorm: b.norm(&format!("{p}.post_attention_layernorm.weight"), h, eps)?,
                    mlp: Mlp {
                        gate_proj: b.linear(&format!("{p}.mlp.gate_proj"), h, ff, false)?,
                        up_proj: b.linear(&format!("{p}.mlp.up_proj"), h, ff, false)?,
                        down_proj: b.linear(&format!("{p}.mlp.down_proj"), ff, h, false)?,
                    },
                });
            }
            (b.ckpt.take("model.embed_tokens.weight", &[v, h])?, b.norm("model.norm.weight", h, eps)?, "lm_head")
        }
        Family::Qwen1 => {
            let proj = nh * hd;
            for i in 0..c.num_hidden_layers {
                let p = format!("transformer.h.{i}");
                // c_attn: rows q | k | v
                let w = b.ckpt.take(&format!("{p}.attn.c_attn.weight"), &[3 * proj, h])?;
                let bias = b.ckpt.take(&format!("{p}.attn.c_attn.bias"), &[3 * proj])?;
                let part = |k: usize| {
                    let rows = k * proj..(k + 1) * proj;
                    let w = &w[rows.start * h..rows.end * h];
                    linear_from::<B>(w, Some(bias[rows].to_vec()), proj, h, device)
                };
                layers.push(DecoderLayer {
                    input_layernorm: b.norm(&format!("{p}.ln_1.weight"), h, eps)?,
                    self_attn: attention(
                        part(0),
                        part(1),
                        part(2),
                        b.linear(&format!("{p}.attn.c_proj"), proj, h, false)?,
                    ),
                    post_attention_layernorm: b.norm(&format!("{p}.ln_2.weight"), h, eps)?,
                    mlp: Mlp {
                        gate_proj: b.linear(&format!("{p}.mlp.w2"), h, ff, false)?,
                        up_proj: b.linear(&format!("{p}.mlp.w1"), h, ff, false)?,
                        down_proj: b.linear(&format!("{p}.mlp.c_proj"), ff, h, false)?,
                    },
                });
            }
            (b.ckpt.take("transformer.wte.weight", &[v, h])?, b.norm("transformer.ln_f.weight", h, eps)?, "lm_head")
        }
    };
    let (embed_tokens, lm_head) = if c.tie_word_embeddings {
        // Some tied checkpoints still carry a copy of the head; the embedding is the one used.
        if b.ckpt.contains("lm_head.weight") {
            b.ckpt.take("lm_head.weight", &[v, h])?;
        }
        (None, linear_from(&embed, None, v, h, device))
    } else {
        let embed = Tensor::from_data(TensorData::new(embed, [v, h]), device);
        let head = if lm_head {
            b.linear(head_name, h, v, false)?
        } else {
            Linear { weight: Param::from_tensor(Tensor::zeros([h, v], device)), bias: None }
        };
        (Some(Embedding { weight: Param::from_tensor(embed) }), head)
    };
    Ok(Qwen { embed_tokens, layers, norm, lm_head })
}
