//! A Qwen2/2.5 or Qwen3 model from one of llama.cpp's GGUF files ([`load_gguf`]).
//!
//! - Config: `general.architecture` (`qwen2`, `qwen3`) and its `{arch}.*` keys as llama.cpp's
//!   `convert_hf_to_gguf.py` writes them (`block_count`, `embedding_length`,
//!   `feed_forward_length`, `attention.head_count`, `attention.head_count_kv`, `context_length`,
//!   `rope.freq_base`, `attention.layer_norm_rms_epsilon`, `attention.key_length` for an explicit
//!   head width, `rope.scaling.*` for YaRN/linear) become the HF `config.json` they came from, which
//!   [`QwenConfig::from_json`] then validates like any other. The vocabulary size is
//!   `token_embd`'s row count; the embedding is tied when there is no `output.weight`; Qwen3's
//!   `attention_bias` is whether `blk.0.attn_q.bias` exists.
//! - Weights: llama.cpp's names (`token_embd`, `blk.N.attn_norm`, `attn_q`/`attn_k`/`attn_v`
//!   (+ `.bias`), `attn_q_norm`/`attn_k_norm`, `attn_output`, `ffn_norm`, `ffn_gate`/`ffn_up`/
//!   `ffn_down`, `output_norm`, `output`) map onto the HF ones. GGUF dims are ggml's `ne`
//!   (innermost first), so a `[d_out, d_in]` HF weight is `ne = [d_in, d_out]`: reversed, the
//!   row-major data is the same. Qwen2 weights are not permuted by the converter (llama.cpp
//!   runs Qwen2 with NeoX RoPE, as HF does).
//! - [`load_gguf`] dequantizes every tensor to f32 ([`crate::gguf::dequantize`]).
//!   [`load_gguf_as`] keeps the projections and the head as a [`WeightDtype`] instead
//!   ([`crate::packed`]): a tensor already stored in that dtype (F16, BF16, Q8_0) is kept byte for
//!   byte, never requantized; any other is dequantized to f32 and packed (e.g. a Q4_K file loaded
//!   as Q8_0). Every tensor the model needs must be there with its shape, and every tensor in the
//!   file must be used.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::{json, Value as Json};

use crate::config::QwenConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;
use crate::gguf::GgufFile;
use crate::init::{build_as, placeholder, Weights};
use crate::load::linear_from;
use crate::packed::{PackedMatrix, WeightDtype};
use crate::qwen::QwenModel;

/// Whether `path` is a GGUF file (by its first four bytes).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file() && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// The HF `config.json` a GGUF file's metadata stands for.
pub fn gguf_config_json(file: &GgufFile) -> Result<Json> {
    let arch = file.string("general.architecture")?;
    let (model_type, architecture) = match arch {
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "qwen3" => ("qwen3", "Qwen3ForCausalLM"),
        other => {
            return Err(ModelError::Unsupported(format!("GGUF architecture {other:?} (qwen2 and qwen3 are read)")))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let need =
        |k: &str| -> Result<u64> { file.opt_u64(&key(k))?.ok_or_else(|| file.error(format!("{} is missing", key(k)))) };
    let heads = need("attention.head_count")?;
    let hidden = need("embedding_length")?;
    let vocab = file
        .tensors
        .get("token_embd.weight")
        .and_then(|t| t.dims.get(1).copied())
        .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
    let mut config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": file.opt_u64(&key("attention.head_count_kv"))?.unwrap_or(heads),
        "max_position_embeddings": need("context_length")?,
        // llama.cpp's defaults when a key is absent.
        "rope_theta": file.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
        "rms_norm_eps": file
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| file.error(format!("{} is missing", key("attention.layer_norm_rms_epsilon"))))?,
        "tie_word_embeddings": !file.tensors.contains_key("output.weight"),
        "hidden_act": "silu",
    });
    // llama.cpp: the head width is `key_length` when given, else `embedding_length / head_count`.
    let hd = match file.opt_u64(&key("attention.key_length"))? {
        Some(hd) => hd,
        None if heads > 0 && hidden % heads == 0 => hidden / heads,
        None => {
            return Err(
                file.error(format!("{} is missing and heads do not divide the width", key("attention.key_length")))
            )
        }
    };
    config["head_dim"] = json!(hd);
    if file.opt_u64(&key("attention.value_length"))?.is_some_and(|v| v != hd) {
        return Err(ModelError::Unsupported("attention.value_length different from key_length".into()));
    }
    if let Some(rot) = file.opt_u64(&key("rope.dimension_count"))? {
        if rot != hd {
            return Err(ModelError::Unsupported(format!(
                "rope.dimension_count {rot} (partial rotary) with head width {hd}"
            )));
        }
    }
    match file.get(&key("rope.scaling.type")).map(|v| v.as_str()) {
        None | Some(Some("none")) => {}
        Some(Some(kind @ ("yarn" | "linear"))) => {
            let factor = file
                .opt_f64(&key("rope.scaling.factor"))?
                .ok_or_else(|| file.error(format!("{} is missing", key("rope.scaling.factor"))))?;
            let mut scaling = json!({"rope_type": kind, "type": kind, "factor": factor});
            if let Some(orig) = file.opt_u64(&key("rope.scaling.original_context_length"))? {
                scaling["original_max_position_embeddings"] = json!(orig);
            }
            config["rope_scaling"] = scaling;
        }
        Some(other) => return Err(ModelError::Unsupported(format!("GGUF rope.scaling.type {other:?}"))),
    }
    if model_type == "qwen3" {
        config["attention_bias"] = json!(file.tensors.contains_key("blk.0.attn_q.bias"));
    }
    Ok(config)
}

/// The GGUF name of a tensor named as in HF Qwen2/Qwen3.
fn gguf_name(hf: &str) -> Result<String> {
    let simple = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Ok(s.to_string());
    }
    let unsupported = || ModelError::Unsupported(format!("tensor {hf} has no GGUF name here"));
    let rest = hf.strip_prefix("model.layers.").ok_or_else(unsupported)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unsupported)?;
    let (module, suffix) = rest.rsplit_once('.').ok_or_else(unsupported)?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return Err(unsupported()),
    };
    Ok(format!("blk.{layer}.{g}.{suffix}"))
}

/// The GGUF file as a [`Weights`] source for [`crate::init::build`].
struct GgufWeights<'a, B: Backend> {
    file: &'a GgufFile,
    device: &'a B::Device,
    used: BTreeSet<String>,
}

impl<B: Backend> GgufWeights<'_, B> {
    /// The f32 values of the tensor HF calls `hf`, checked against the row-major `shape`.
    fn take(&mut self, hf: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let name = gguf_name(hf)?;
        let (found, values) = self.file.tensor_f32(&name)?;
        if found != shape {
            return Err(ModelError::Shape { name, expected: shape.to_vec(), found });
        }
        self.file.release(&name);
        self.used.insert(name);
        Ok(values)
    }

    /// The tensor HF calls `hf`, `[rows, cols]`, packed as `dtype`: its own bytes when the file
    /// stores it in that dtype, else dequantized and packed.
    fn take_packed(&mut self, hf: &str, rows: usize, cols: usize, dtype: WeightDtype) -> Result<PackedMatrix> {
        let name = gguf_name(hf)?;
        let (info, bytes) = self.file.tensor_bytes(&name)?;
        let same = matches!(
            (info.ggml_type, dtype),
            (GgmlType::F16, WeightDtype::F16)
                | (GgmlType::BF16, WeightDtype::Bf16)
                | (GgmlType::Q8_0, WeightDtype::Q8_0)
                | (GgmlType::F32, WeightDtype::F32Packed)
        );
        if same {
            if info.shape() != [rows, cols] {
                return Err(ModelError::Shape { name, expected: vec![rows, cols], found: info.shape() });
            }
            let file = self.file;
            let packed = PackedMatrix::from_ggml_bytes_with(bytes, rows, cols, dtype, |start, len| {
                file.release_range(&name, start, len)
            });
            self.file.release(&name);
            self.used.insert(name);
            return packed;
        }
        let values = self.take(hf, &[rows, cols])?;
        PackedMatrix::from_f32(&values, rows, cols, dtype)
    }
}

impl<B: Backend> Weights<B> for GgufWeights<'_, B> {
    fn linear(&mut self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let w = self.take(&format!("{name}.weight"), &[d_out, d_in])?;
        let b = if bias { Some(self.take(&format!("{name}.bias"), &[d_out])?) } else { None };
        Ok(linear_from(&w, b, d_out, d_in, self.device))
    }

    fn packed_linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        dtype: WeightDtype,
    ) -> Result<(Linear<B>, PackedMatrix)> {
        let packed = self.take_packed(&format!("{name}.weight"), d_out, d_in, dtype)?;
        let b = if bias { Some(self.vector(&format!("{name}.bias"), d_out)?) } else { None };
        Ok((placeholder(b, self.device), packed))
    }

    fn packed_embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
        dtype: WeightDtype,
    ) -> Result<(Option<Embedding<B>>, Linear<B>, PackedMatrix)> {
        let head = if tied { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let packed = self.take_packed(head, vocab, hidden, dtype)?;
        let embed = if tied {
            None
        } else {
            let values = self.take("model.embed_tokens.weight", &[vocab, hidden])?;
            let embed = Tensor::from_data(TensorData::new(values, [vocab, hidden]), self.device);
            Some(Embedding { weight: Param::from_tensor(embed) })
        };
        Ok((embed, placeholder(None, self.device), packed))
    }

    fn vector(&mut self, name: &str, d: usize) -> Result<Tensor<B, 1>> {
        let values = self.take(name, &[d])?;
        Ok(Tensor::from_data(TensorData::new(values, [d]), self.device))
    }

    fn embedding_and_head(
        &mut self,
        vocab: usize,
        hidden: usize,
        tied: bool,
    ) -> Result<(Option<Embedding<B>>, Linear<B>)> {
        let embed = self.take("model.embed_tokens.weight", &[vocab, hidden])?;
        if tied {
            return Ok((None, linear_from(&embed, None, vocab, hidden, self.device)));
        }
        let head = self.take("lm_head.weight", &[vocab, hidden])?;
        let embed = Tensor::from_data(TensorData::new(embed, [vocab, hidden]), self.device);
        Ok((
            Some(Embedding { weight: Param::from_tensor(embed) }),
            linear_from(&head, None, vocab, hidden, self.device),
        ))
    }
}

/// The config of an open GGUF file.
pub fn gguf_config(file: &GgufFile) -> Result<QwenConfig> {
    QwenConfig::from_json(gguf_config_json(file)?)
}

/// Loads a Qwen2/Qwen3 model from a GGUF file onto `device`, every tensor dequantized to f32
/// ([`load_gguf_as`] keeps them packed).
pub fn load_gguf<B: Backend>(path: impl AsRef<Path>, device: &B::Device) -> Result<QwenModel<B>> {
    let file = GgufFile::open(path)?;
    load_gguf_file(&file, device)
}

/// [`load_gguf`] with the projections and the head kept as `dtype` (see the module docs).
pub fn load_gguf_as<B: Backend>(
    path: impl AsRef<Path>,
    device: &B::Device,
    dtype: WeightDtype,
) -> Result<QwenModel<B>> {
    let file = GgufFile::open(path)?;
    load_gguf_file_as(&file, device, dtype)
}

/// [`load_gguf`] from an open file.
pub fn load_gguf_file<B: Backend>(file: &GgufFile, device: &B::Device) -> Result<QwenModel<B>> {
    load_gguf_file_as(file, device, WeightDtype::F32)
}

/// [`load_gguf_as`] from an open file.
pub fn load_gguf_file_as<B: Backend>(file: &GgufFile, device: &B::Device, dtype: WeightDtype) -> Result<QwenModel<B>> {
    let config = gguf_config(file)?;
    let mut weights = GgufWeights { file, device, used: BTreeSet::new() };
    let model = build_as(&config, &mut weights, dtype)?;
    if let Some(extra) = file.tensors.keys().find(|n| !weights.used.contains(*n)) {
        return Err(ModelError::UnexpectedTensor(extra.clone()));
    }
    Ok(QwenModel::new(config, model))
}
