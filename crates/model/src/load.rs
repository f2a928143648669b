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
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Family, QwenConfig};
use crate::error::{ModelError, Result};
use crate::init::{build_as, Weights};
use crate::packed::WeightDtype;
use crate::qwen::QwenModel;

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

/// The largest JSON file (`config.json`, `model.safetensors.index.json`) read: 64 MiB, hundreds of
/// times the largest published index.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// A JSON file's text, refused with [`std::io::ErrorKind::FileTooLarge`] past [`MAX_JSON_BYTES`]
/// before more than the limit is read.
pub(crate) fn read_json_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    if len <= MAX_JSON_BYTES {
        file.take(MAX_JSON_BYTES + 1).read_to_string(&mut text).map_err(io(path))?;
    }
    if len.max(text.len() as u64) > MAX_JSON_BYTES {
        let reason = format!("longer than the limit of {MAX_JSON_BYTES} bytes");
        return Err(io(path)(std::io::Error::new(std::io::ErrorKind::FileTooLarge, reason)));
    }
    Ok(text)
}

impl Checkpoint {
    /// Opens the safetensors files of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.is_file() {
            let text = read_json_text(&index)?;
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
        Self::open_files(paths)
    }

    /// Opens the given safetensors files as one checkpoint (a tensor may appear in one only).
    pub fn open_files(paths: Vec<PathBuf>) -> Result<Self> {
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

/// The checkpoint as a [`Weights`] source for [`crate::init::build`]: HF Qwen2 names are read as
/// they are, or mapped onto Qwen-1's (whose fused `c_attn` rows q | k | v are split on first use).
struct CheckpointWeights<'a, B: Backend> {
    ckpt: &'a mut Checkpoint,
    device: &'a B::Device,
    family: Family,
    /// Whether an untied checkpoint has `lm_head.weight` (not a sequence-classification trunk).
    lm_head: bool,
    /// Qwen-1: the k and v parts of the last split `c_attn`, by their Qwen2 names.
    split: std::collections::HashMap<String, Linear<B>>,
}

/// Qwen-1's name for a Qwen2 name (not for the q/k/v projections, which are one fused tensor).
fn qwen1_name(name: &str) -> String {
    let name = name.replace("model.layers.", "transformer.h.");
    [
        ("input_layernorm", "ln_1"),
        ("post_attention_layernorm", "ln_2"),
        ("self_attn.o_proj", "attn.c_proj"),
        // w2 is the gate: `c_proj(w1(x) * silu(w2(x)))`.
        ("mlp.gate_proj", "mlp.w2"),
        ("mlp.up_proj", "mlp.w1"),
        ("mlp.down_proj", "mlp.c_proj"),
        ("model.norm", "transformer.ln_f"),
        ("model.embed_tokens", "transformer.wte"),
    ]
    .iter()
    .fold(name, |n, (from, to)| n.replace(from, to))
}

impl<B: Backend> CheckpointWeights<'_, B> {
    /// The checkpoint's name for a tensor named as in Qwen2.
    fn file_name(&self, name: &str) -> String {
        match self.family {
            Family::Qwen1 => qwen1_name(name),
            _ => name.to_string(),
        }
    }
}

impl<B: Backend> Weights<B> for CheckpointWeights<'_, B> {
    fn linear(&mut self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        if let Some(l) = self.split.remove(name) {
            return Ok(l);
        }
        let layer = name.strip_prefix("model.layers.").and_then(|rest| rest.strip_suffix(".self_attn.q_proj"));
        if let (Family::Qwen1, Some(layer)) = (self.family, layer) {
            // c_attn: rows q | k | v, each `d_out` wide (Qwen-1 has no grouped heads), with biases.
            let fused = format!("transformer.h.{layer}.attn.c_attn");
            let w = self.ckpt.take(&format!("{fused}.weight"), &[3 * d_out, d_in])?;
            let b = self.ckpt.take(&format!("{fused}.bias"), &[3 * d_out])?;
            let part = |k: usize| {
                let rows = k * d_out..(k + 1) * d_out;
                let w = &w[rows.start * d_in..rows.end * d_in];
                linear_from::<B>(w, Some(b[rows].to_vec()), d_out, d_in, self.device)
            };
            self.split.insert(format!("model.layers.{layer}.self_attn.k_proj"), part(1));
            self.split.insert(format!("model.layers.{layer}.self_attn.v_proj"), part(2));
            return Ok(part(0));
        }
        let name = self.file_name(name);
        let w = self.ckpt.take(&format!("{name}.weight"), &[d_out, d_in])?;
        let b = if bias { Some(self.ckpt.take(&format!("{name}.bias"), &[d_out])?) } else { None };
        Ok(linear_from(&w, b, d_out, d_in, self.device))
    }

    fn vector(&mut self, name: &str, d: usize) -> Result<Tensor<B, 1>> {
        let name = self.file_name(name);
        let values = self.ckpt.take(&name, &[d])?;
        Ok(Tensor::from_data(TensorData::new(values, [d]), self.device))
    }

    fn embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
    ) -> Result<(Option<Embedding<B>>, Linear<B>)> {
        let (v, h) = (vocab, hidden);
        let embed_name = match self.family {
            Family::Qwen1 => "transformer.wte.weight",
            _ => "model.embed_tokens.weight",
        };
        let embed = self.ckpt.take(embed_name, &[v, h])?;
        if tied {
            // Some tied checkpoints still carry a copy of the head; the embedding is the one used.
            if self.ckpt.contains("lm_head.weight") {
                self.ckpt.take("lm_head.weight", &[v, h])?;
            }
            return Ok((None, linear_from(&embed, None, v, h, self.device)));
        }
        let embed = Tensor::from_data(TensorData::new(embed, [v, h]), self.device);
        let head = if self.lm_head {
            let w = self.ckpt.take("lm_head.weight", &[v, h])?;
            linear_from(&w, None, v, h, self.device)
        } else {
            Linear { weight: Param::from_tensor(Tensor::zeros([h, v], self.device)), bias: None }
        };
        Ok((Some(Embedding { weight: Param::from_tensor(embed) }), head))
    }
}

/// A linear layer from row-major `[out, in]` values. The weight is transposed here, into a
/// contiguous `[in, out]` tensor: a transposed *view* would make every matmul ~20x slower on CPU.
pub(crate) fn linear_from<B: Backend>(
    w: &[f32],
    b: Option<Vec<f32>>,
    d_out: usize,
    d_in: usize,
    device: &B::Device,
) -> Linear<B> {
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

/// Loads `config.json` and the weights of `dir` onto `device`; a GGUF file instead of a folder is
/// loaded by [`crate::load_gguf::load_gguf`].
pub fn load<B: Backend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<QwenModel<B>> {
    load_as(dir, device, WeightDtype::F32)
}

/// [`load`] with the projections and the head kept as `dtype` for CPU inference
/// ([`crate::packed`]; F32 is [`load`]). Safetensors are loaded one f32 matrix at a time and
/// packed; a GGUF file's tensors already in `dtype` are kept as stored.
pub fn load_as<B: Backend>(dir: impl AsRef<Path>, device: &B::Device, dtype: WeightDtype) -> Result<QwenModel<B>> {
    if crate::load_gguf::is_gguf(dir.as_ref()) {
        return crate::load_gguf::load_gguf_as(dir, device, dtype);
    }
    Ok(load_with_as(dir, device, true, dtype, |_| Ok(()))?.0)
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
    load_with_as(dir, device, lm_head, WeightDtype::F32, rest)
}

/// [`load_with`] with the weights kept as `dtype`.
fn load_with_as<B: Backend, T>(
    dir: impl AsRef<Path>,
    device: &B::Device,
    lm_head: bool,
    dtype: WeightDtype,
    rest: impl FnOnce(&mut Checkpoint) -> Result<T>,
) -> Result<(QwenModel<B>, T)> {
    let dir = dir.as_ref();
    let config = QwenConfig::from_file(dir.join("config.json"))?;
    let mut ckpt = Checkpoint::open(dir)?;
    let mut weights =
        CheckpointWeights { ckpt: &mut ckpt, device, family: config.family, lm_head, split: Default::default() };
    let model = build_as(&config, &mut weights, dtype)?;
    let taken = rest(&mut ckpt)?;
    if let Some(extra) = ckpt.unused().find(|n| !n.ends_with("rotary_emb.inv_freq")) {
        return Err(ModelError::UnexpectedTensor(extra.to_string()));
    }
    Ok((QwenModel::new(config, model), taken))
}
