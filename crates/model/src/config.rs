//! Model configuration, read straight from an HF `config.json`.
//!
//! Five families, told apart by `model_type` (or `architectures`):
//! - **Qwen-1** (`"qwen"`, `QWenLMHeadModel`): Dec-2023 keys (`hidden_size`, `num_hidden_layers`,
//!   ...) and the Aug-2023 names (`n_embd`, `n_layer`, `n_head`, `ffn_hidden_size`, `n_positions`,
//!   `padded_vocab_size`); the MLP is `intermediate_size / 2` wide; `seq_length`,
//!   `use_dynamic_ntk` and `use_logn_attn` select the long-context behaviour at inference.
//! - **Qwen2/2.5** (`"qwen2"`, `Qwen2ForCausalLM`): `rope_theta` + `rope_scaling` + `torch_dtype`
//!   as real checkpoints have them, or transformers-5 `rope_parameters` + `layer_types` + `dtype`;
//!   `head_dim` when given; `use_sliding_window`/`sliding_window`/`max_window_layers`.
//!
//! - **Qwen3** (`"qwen3"`, `Qwen3ForCausalLM`): the Qwen2 keys plus per-head RMSNorm on queries and
//!   keys (`q_norm`/`k_norm`), `attention_bias` (default false) and an explicit `head_dim` (default
//!   128, as `Qwen3Config` has it).
//! - **Qwen2-MoE** / **Qwen3-MoE** (`"qwen2_moe"`, `"qwen3_moe"`): sparse MLP layers (top-k routing
//!   over `num_experts` — or `num_local_experts`, as transformers 5 writes it — experts of width
//!   `moe_intermediate_size`; dense layers by `mlp_only_layers` and `decoder_sparse_step`), and for
//!   Qwen2-MoE a shared expert gated by `sigmoid(shared_expert_gate)`. See [`Moe`].
//!
//! All become one [`QwenConfig`], validated, which keeps the original JSON to write it back.

use serde::Deserialize;
use serde_json::Value;

use qwen_context::{LayerWindows, LogN, Rope, RopeScaling};

use crate::error::{ModelError, Result};

/// Which published implementation (and checkpoint layout) a config belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `QWenLMHeadModel`: `transformer.h.N.attn.c_attn` (fused q|k|v), `mlp.w1`/`w2`/`c_proj`.
    Qwen1,
    /// `Qwen2ForCausalLM`: `model.layers.N.self_attn.q_proj`, `mlp.gate_proj`/`up_proj`/`down_proj`.
    Qwen2,
    /// `Qwen3ForCausalLM`: Qwen2's layout plus `self_attn.q_norm`/`k_norm`.
    Qwen3,
    /// `Qwen2MoeForCausalLM`: sparse layers `mlp.gate`, `mlp.experts.E.*`, `mlp.shared_expert.*`,
    /// `mlp.shared_expert_gate`.
    Qwen2Moe,
    /// `Qwen3MoeForCausalLM`: Qwen3's attention, sparse layers `mlp.gate`, `mlp.experts.E.*`.
    Qwen3Moe,
}

impl Family {
    /// The transformers class name (`architectures[0]` of a causal LM).
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Qwen1 => "QWenLMHeadModel",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Qwen2Moe => "Qwen2MoeForCausalLM",
            Self::Qwen3Moe => "Qwen3MoeForCausalLM",
        }
    }

    /// Whether checkpoints use the HF layout (`model.layers.N...`): every family but Qwen-1.
    pub fn hf_layout(self) -> bool {
        self != Self::Qwen1
    }
}

/// The sparse (mixture-of-experts) MLP of Qwen2-MoE and Qwen3-MoE, as transformers runs it: the
/// router `mlp.gate` gives softmax probabilities over the experts, each token goes to its
/// `num_experts_per_tok` most probable experts (ties to the lower index), weighted by those
/// probabilities (renormalised to sum 1 when `norm_topk_prob`).
#[derive(Debug, Clone, PartialEq)]
pub struct Moe {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    /// Width of each expert's SwiGLU.
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    /// Qwen2-MoE's shared expert width (every token, gated by `sigmoid(shared_expert_gate(x))`).
    pub shared_expert_intermediate_size: Option<usize>,
    /// Weight of the load-balancing loss in the training loss.
    pub router_aux_loss_coef: f64,
    /// Whether the training loss includes the load-balancing loss (`output_router_logits`).
    pub output_router_logits: bool,
    /// Per layer: sparse (true) or a dense MLP of `intermediate_size` (false).
    pub sparse_layers: Vec<bool>,
}

/// Everything the model needs to know, whatever file it came from.
#[derive(Debug, Clone)]
pub struct QwenConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP (Qwen-1: `intermediate_size / 2`).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Biases on the q/k/v projections (Qwen-1, Qwen2: always; Qwen2-MoE: `qkv_bias`; Qwen3:
    /// `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on `o_proj` (Qwen3's `attention_bias` covers it too; never in the other families).
    pub o_proj_bias: bool,
    /// Qwen3: RMSNorm over each head's query and key (weight `[head_dim]`), before RoPE.
    pub qk_norm: bool,
    /// The sparse MLP of the MoE families.
    pub moe: Option<Moe>,
    pub rms_norm_eps: f64,
    /// RoPE base, rotated width and scaling (plain, Qwen-1 dynamic NTK, HF dynamic, YaRN).
    pub rope: Rope,
    /// Qwen-1 `use_logn_attn`.
    pub logn: Option<LogN>,
    /// Keys each layer may see.
    pub windows: LayerWindows,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    /// Parameter dtype named by the config (`torch_dtype`/`dtype`), if any.
    pub dtype: Option<String>,
    /// The JSON this config was read from (written back on save).
    pub source: Value,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_one() -> f64 {
    1.0
}
fn default_base() -> f64 {
    10000.0
}
fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct Qwen1Json {
    vocab_size: Option<usize>,
    /// Aug-2023: embedding rows (and `vocab_size` the head's rows).
    padded_vocab_size: Option<usize>,
    #[serde(alias = "n_embd")]
    hidden_size: usize,
    #[serde(alias = "n_layer")]
    num_hidden_layers: usize,
    #[serde(alias = "n_head")]
    num_attention_heads: usize,
    #[serde(alias = "ffn_hidden_size")]
    intermediate_size: usize,
    #[serde(alias = "n_positions")]
    max_position_embeddings: Option<usize>,
    kv_channels: Option<usize>,
    #[serde(default = "default_one")]
    rotary_pct: f64,
    #[serde(default = "default_base")]
    rotary_emb_base: f64,
    #[serde(default)]
    use_dynamic_ntk: bool,
    #[serde(default)]
    use_logn_attn: bool,
    seq_length: Option<usize>,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_true")]
    no_bias: bool,
}

#[derive(Deserialize)]
struct Qwen2Json {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    use_sliding_window: bool,
    sliding_window: Option<usize>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    attention_bias: Option<bool>,
    qkv_bias: Option<bool>,
}

#[derive(Deserialize)]
struct MoeJson {
    num_experts_per_tok: usize,
    moe_intermediate_size: usize,
    #[serde(default)]
    norm_topk_prob: bool,
    shared_expert_intermediate_size: Option<usize>,
    #[serde(default = "default_one_usize")]
    decoder_sparse_step: usize,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    #[serde(default = "default_aux")]
    router_aux_loss_coef: f64,
    #[serde(default)]
    output_router_logits: bool,
}

fn default_one_usize() -> usize {
    1
}
fn default_aux() -> f64 {
    0.001
}

/// The most elements one weight matrix may have (2^36: 256 GiB of f32, past any published
/// checkpoint's largest matrix by far). Configs asking for more are refused before anything is
/// built.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 36;
/// The most decoder layers a config may ask for.
pub const MAX_LAYERS: usize = 4096;

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::Config(msg.into())
}

/// The layer count is checked before anything per layer (windows, sparse-layer flags) is built.
fn check_layers(layers: usize) -> Result<()> {
    if layers > MAX_LAYERS {
        return Err(invalid(format!("num_hidden_layers {layers} exceeds {MAX_LAYERS}")));
    }
    Ok(())
}

impl QwenConfig {
    /// Parses and validates an HF `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        Self::from_json(value)
    }

    /// Reads and validates `config.json` from a file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json_str(&crate::load::read_json_text(path)?)
    }

    /// Validates a parsed `config.json`.
    pub fn from_json(value: Value) -> Result<Self> {
        let model_type = value.get("model_type").and_then(Value::as_str);
        let arch = value.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str);
        let family = match (model_type, arch) {
            (Some("qwen"), _) | (None, Some("QWenLMHeadModel")) => Family::Qwen1,
            (Some("qwen2"), _) | (None, Some("Qwen2ForCausalLM")) => Family::Qwen2,
            (Some("qwen3"), _) | (None, Some("Qwen3ForCausalLM")) => Family::Qwen3,
            (Some("qwen2_moe"), _) | (None, Some("Qwen2MoeForCausalLM")) => Family::Qwen2Moe,
            (Some("qwen3_moe"), _) | (None, Some("Qwen3MoeForCausalLM")) => Family::Qwen3Moe,
            (m, a) => return Err(ModelError::Unsupported(format!("model_type {m:?} / architectures {a:?}"))),
        };
        let config = match family {
            Family::Qwen1 => Self::qwen1(&value)?,
            _ => Self::hf(&value, family)?,
        };
        config.validate()?;
        Ok(Self { source: value, ..config })
    }

    fn qwen1(value: &Value) -> Result<Self> {
        let c: Qwen1Json = serde_json::from_value(value.clone()).map_err(|e| invalid(format!("Qwen-1 config: {e}")))?;
        let vocab_size = match (c.vocab_size, c.padded_vocab_size) {
            (Some(a), Some(b)) if a != b => {
                return Err(ModelError::Unsupported(format!("padded_vocab_size {b} differs from vocab_size {a}")))
            }
            (Some(v), _) | (None, Some(v)) => v,
            (None, None) => return Err(invalid("Qwen-1 config: missing field `vocab_size`")),
        };
        check_layers(c.num_hidden_layers)?;
        if !c.no_bias {
            return Err(ModelError::Unsupported("Qwen-1 with no_bias = false (biases on every projection)".into()));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of {} heads",
                c.hidden_size, c.num_attention_heads
            )));
        }
        let head_dim = c.kv_channels.unwrap_or(c.hidden_size / c.num_attention_heads);
        if !(c.rotary_pct > 0.0 && c.rotary_pct <= 1.0) {
            return Err(invalid(format!("rotary_pct {} must be in (0, 1]", c.rotary_pct)));
        }
        let rotary_dim = (head_dim as f64 * c.rotary_pct) as usize;
        let seq_length = c.seq_length.or(c.max_position_embeddings).unwrap_or(2048);
        let scaling = if c.use_dynamic_ntk { RopeScaling::QwenDynamicNtk { seq_length } } else { RopeScaling::None };
        if !c.intermediate_size.is_multiple_of(2) {
            return Err(invalid(format!(
                "Qwen-1 intermediate_size {} must be even (MLP width is half)",
                c.intermediate_size
            )));
        }
        Ok(Self {
            family: Family::Qwen1,
            qkv_bias: true,
            o_proj_bias: false,
            qk_norm: false,
            moe: None,
            vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size / 2,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_attention_heads,
            head_dim,
            rms_norm_eps: c.layer_norm_epsilon,
            rope: Rope::new(c.rotary_emb_base, rotary_dim, scaling)?,
            logn: c.use_logn_attn.then_some(LogN { seq_length }),
            windows: LayerWindows::full(c.num_hidden_layers),
            tie_word_embeddings: c.tie_word_embeddings,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(seq_length),
            dtype: ["bf16", "fp16", "fp32"]
                .into_iter()
                .find(|k| value.get(*k).and_then(Value::as_bool) == Some(true))
                .map(str::to_string),
            source: Value::Null,
        })
    }

    /// The HF-layout families (Qwen2, Qwen3 and the MoE ones) share one key set.
    fn hf(value: &Value, family: Family) -> Result<Self> {
        let what = family.architecture();
        let c: Qwen2Json = serde_json::from_value(value.clone()).map_err(|e| invalid(format!("{what} config: {e}")))?;
        if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ModelError::Unsupported(format!("hidden_act {act:?} (Qwen uses silu)")));
        }
        if c.num_attention_heads == 0 {
            return Err(invalid("num_attention_heads is 0"));
        }
        let qwen3 = matches!(family, Family::Qwen3 | Family::Qwen3Moe);
        // Qwen3Config declares head_dim = 128; the others (Qwen3MoeConfig too) fall back to
        // hidden / heads, as their attention does (`getattr(config, "head_dim", ...)`).
        let head_dim =
            c.head_dim.unwrap_or(if family == Family::Qwen3 { 128 } else { c.hidden_size / c.num_attention_heads });
        // transformers 5 folds rope_theta and rope_scaling into rope_parameters.
        let params = c.rope_parameters.clone().or_else(|| c.rope_scaling.clone()).filter(|v| !v.is_null());
        let get_f = |k: &str| params.as_ref().and_then(|p| p.get(k)).and_then(Value::as_f64);
        let get_u = |k: &str| params.as_ref().and_then(|p| p.get(k)).and_then(Value::as_u64).map(|v| v as usize);
        let theta = get_f("rope_theta").or(c.rope_theta).unwrap_or(10000.0);
        let rope_type = params
            .as_ref()
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let factor = || get_f("factor").ok_or_else(|| invalid(format!("rope type {rope_type} needs a factor")));
        let scaling = match rope_type {
            "default" => RopeScaling::None,
            "dynamic" => RopeScaling::HfDynamic {
                factor: factor()?,
                max_position_embeddings: get_u("original_max_position_embeddings").unwrap_or(c.max_position_embeddings),
            },
            "yarn" => RopeScaling::Yarn {
                factor: factor()?,
                original_max_position_embeddings: get_u("original_max_position_embeddings")
                    .unwrap_or(c.max_position_embeddings),
                beta_fast: get_f("beta_fast").unwrap_or(32.0),
                beta_slow: get_f("beta_slow").unwrap_or(1.0),
                attention_factor: get_f("attention_factor"),
                truncate: params.as_ref().and_then(|p| p.get("truncate")).and_then(Value::as_bool).unwrap_or(true),
            },
            other => return Err(ModelError::Unsupported(format!("rope type {other:?}"))),
        };
        let layers = c.num_hidden_layers;
        check_layers(layers)?;
        let windows = match (&c.layer_types, c.use_sliding_window, c.sliding_window) {
            (_, false, _) | (_, true, None) => LayerWindows::full(layers),
            // Qwen3-MoE's attention takes `config.sliding_window` in every layer (no layer types).
            (_, true, Some(w)) if family == Family::Qwen3Moe => {
                if w == 0 {
                    return Err(invalid("sliding_window is 0"));
                }
                LayerWindows { windows: vec![Some(w); layers] }
            }
            (Some(types), true, Some(w)) => {
                if types.len() != layers {
                    return Err(invalid(format!("layer_types has {} entries for {layers} layers", types.len())));
                }
                let mut windows = Vec::with_capacity(layers);
                for t in types {
                    windows.push(match t.as_str() {
                        "full_attention" => None,
                        "sliding_attention" => Some(w),
                        other => return Err(ModelError::Unsupported(format!("layer type {other:?}"))),
                    });
                }
                if w == 0 {
                    return Err(invalid("sliding_window is 0"));
                }
                LayerWindows { windows }
            }
            (None, true, Some(w)) => LayerWindows::qwen2(layers, w, c.max_window_layers.unwrap_or(layers))?,
        };
        let moe = match family {
            Family::Qwen2Moe | Family::Qwen3Moe => Some(Self::moe(value, layers, family)?),
            _ => None,
        };
        let (qkv_bias, o_proj_bias) = match family {
            // Qwen2MoeConfig's `qkv_bias` (default true); neither has a bias on o_proj.
            Family::Qwen2Moe => (c.qkv_bias.unwrap_or(true), false),
            Family::Qwen3 | Family::Qwen3Moe => {
                let b = c.attention_bias.unwrap_or(false);
                (b, b)
            }
            _ => (true, false),
        };
        Ok(Self {
            family,
            qkv_bias,
            o_proj_bias,
            qk_norm: qwen3,
            moe,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            rms_norm_eps: c.rms_norm_eps,
            rope: Rope::new(theta, head_dim, scaling)?,
            logn: None,
            windows,
            tie_word_embeddings: c.tie_word_embeddings,
            max_position_embeddings: c.max_position_embeddings,
            dtype: c.dtype.or(c.torch_dtype),
            source: Value::Null,
        })
    }

    fn moe(value: &Value, layers: usize, family: Family) -> Result<Moe> {
        let what = family.architecture();
        let m: MoeJson = serde_json::from_value(value.clone()).map_err(|e| invalid(format!("{what} config: {e}")))?;
        let count = |k: &str| -> Result<Option<usize>> {
            match value.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| invalid(format!("{k} {v} is not a count")))
                }
            }
        };
        // Hub checkpoints say `num_experts`; transformers 5 writes `num_local_experts`.
        let num_experts = match (count("num_experts")?, count("num_local_experts")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(format!("num_experts {a} and num_local_experts {b} disagree")))
            }
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => return Err(invalid(format!("{what} config: missing field `num_experts`"))),
        };
        if num_experts == 0 {
            return Err(invalid("num_experts must be > 0"));
        }
        if m.num_experts_per_tok == 0 || m.num_experts_per_tok > num_experts {
            return Err(invalid(format!(
                "num_experts_per_tok {} must be in 1..={num_experts} (num_experts)",
                m.num_experts_per_tok
            )));
        }
        if m.decoder_sparse_step == 0 {
            return Err(invalid("decoder_sparse_step must be > 0"));
        }
        if let Some(&l) = m.mlp_only_layers.iter().find(|&&l| l >= layers) {
            return Err(invalid(format!("mlp_only_layers names layer {l} of {layers}")));
        }
        let shared =
            match family {
                Family::Qwen2Moe => Some(m.shared_expert_intermediate_size.ok_or_else(|| {
                    invalid(format!("{what} config: missing field `shared_expert_intermediate_size`"))
                })?),
                _ => None,
            };
        for (name, v) in
            [("moe_intermediate_size", Some(m.moe_intermediate_size)), ("shared_expert_intermediate_size", shared)]
        {
            if v == Some(0) {
                return Err(invalid(format!("{name} must be > 0")));
            }
        }
        // transformers: sparse iff not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0.
        let sparse_layers =
            (0..layers).map(|i| !m.mlp_only_layers.contains(&i) && (i + 1) % m.decoder_sparse_step == 0).collect();
        Ok(Moe {
            num_experts,
            num_experts_per_tok: m.num_experts_per_tok,
            moe_intermediate_size: m.moe_intermediate_size,
            norm_topk_prob: m.norm_topk_prob,
            shared_expert_intermediate_size: shared,
            router_aux_loss_coef: m.router_aux_loss_coef,
            output_router_logits: m.output_router_logits,
            sparse_layers,
        })
    }

    /// Whether layer `i` has the sparse MLP.
    pub fn is_sparse(&self, i: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.sparse_layers.get(i).copied().unwrap_or(false))
    }

    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(invalid(format!("{name} must be > 0")));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(invalid(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.rope.dim > self.head_dim {
            return Err(invalid(format!("rotary dim {} exceeds head_dim {}", self.rope.dim, self.head_dim)));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(invalid(format!("rms_norm_eps {} must be in (0, 1)", self.rms_norm_eps)));
        }
        self.check_sizes()
    }

    /// Every weight matrix's element count fits [`MAX_TENSOR_ELEMENTS`] (no product of untrusted
    /// sizes overflows, and nothing is allocated from a number no checkpoint could back).
    fn check_sizes(&self) -> Result<()> {
        let (h, hd) = (self.hidden_size, self.head_dim);
        let mut shapes = vec![
            ("vocab_size × hidden_size", self.vocab_size, h),
            ("num_attention_heads × head_dim × hidden_size", self.num_attention_heads.saturating_mul(hd), h),
            ("num_key_value_heads × head_dim × hidden_size", self.num_key_value_heads.saturating_mul(hd), h),
            ("intermediate_size × hidden_size", self.intermediate_size, h),
            ("max_position_embeddings × head_dim", self.max_position_embeddings, hd),
        ];
        if let Some(m) = &self.moe {
            shapes.push(("moe_intermediate_size × hidden_size", m.moe_intermediate_size, h));
            shapes.push(("num_experts × hidden_size", m.num_experts, h));
            if let Some(w) = m.shared_expert_intermediate_size {
                shapes.push(("shared_expert_intermediate_size × hidden_size", w, h));
            }
        }
        for (what, a, b) in shapes {
            if a.checked_mul(b).is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
                return Err(invalid(format!("{what} = {a} × {b} exceeds {MAX_TENSOR_ELEMENTS} elements")));
            }
        }
        check_layers(self.num_hidden_layers)
    }

    /// Heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// A Qwen2 config built in code (burn's config idiom): presets for the shapes this project
/// trains and benchmarks, setters for the rest, and [`QwenConfigBuilder::build`], which writes the
/// `config.json` transformers would and reads it back through the validating parser, so a built
/// config saves and loads like a downloaded one.
///
/// ```
/// use qwen_model::QwenConfigBuilder;
/// let config = QwenConfigBuilder::tiny(4099).layers(2).build().unwrap();
/// assert_eq!((config.hidden_size, config.num_hidden_layers, config.head_dim), (256, 2, 64));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct QwenConfigBuilder {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl QwenConfigBuilder {
    /// A shape with multi-head attention, RoPE base 10,000, ε 1e-6, 32k positions, untied head.
    pub fn new(vocab_size: usize, hidden_size: usize, intermediate_size: usize, layers: usize, heads: usize) -> Self {
        Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: heads,
            max_position_embeddings: 32768,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
        }
    }

    /// Hidden 256, 4 layers, 4 heads, intermediate 688 (~2.3M parameters past the embeddings):
    /// the CPU pretraining default.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size, 256, 688, 4, 4)
    }

    /// Hidden 512, 8 layers, 8 heads with 4 key/value heads, intermediate 1376 (~21M past the
    /// embeddings): pretraining on a GPU backend.
    pub fn small(vocab_size: usize) -> Self {
        Self::new(vocab_size, 512, 1376, 8, 8).kv_heads(4)
    }

    /// Qwen2.5-0.5B's shape: vocab 151,936, hidden 896, 24 layers, 14 heads with 2 key/value
    /// heads, intermediate 4864, RoPE base 1e6, tied embeddings (the benchmarks' model).
    pub fn qwen2_5_0_5b() -> Self {
        Self::new(151_936, 896, 4864, 24, 14).kv_heads(2).rope_theta(1e6).tied(true)
    }

    pub fn layers(mut self, n: usize) -> Self {
        self.num_hidden_layers = n;
        self
    }
    pub fn kv_heads(mut self, n: usize) -> Self {
        self.num_key_value_heads = n;
        self
    }
    pub fn max_positions(mut self, n: usize) -> Self {
        self.max_position_embeddings = n;
        self
    }
    pub fn rope_theta(mut self, theta: f64) -> Self {
        self.rope_theta = theta;
        self
    }
    pub fn tied(mut self, tied: bool) -> Self {
        self.tie_word_embeddings = tied;
        self
    }

    /// The HF `config.json` of this shape (`Qwen2ForCausalLM`, float32).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("plain fields serialize");
        let o = v.as_object_mut().expect("a struct serializes to an object");
        o.insert("model_type".into(), "qwen2".into());
        o.insert("architectures".into(), serde_json::json!(["Qwen2ForCausalLM"]));
        o.insert("hidden_act".into(), "silu".into());
        o.insert("torch_dtype".into(), "float32".into());
        v
    }

    /// Validates the shape into a [`QwenConfig`].
    ///
    /// # Errors
    /// [`ModelError::Config`] as [`QwenConfig::from_json`] reports it (zero sizes, heads that do
    /// not divide, ...).
    pub fn build(&self) -> Result<QwenConfig> {
        QwenConfig::from_json(self.to_json())
    }
}

impl QwenConfig {
    /// A model of this config with random weights (normal, std 0.02 as Qwen2's
    /// `initializer_range`; norms at 1). Loading (`crate::load`) builds the same layout from a
    /// checkpoint.
    pub fn init<B: burn::tensor::backend::Backend>(&self, device: &B::Device) -> crate::QwenModel<B> {
        crate::QwenModel::random(self.clone(), 0.02, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen2() -> Value {
        serde_json::json!({
            "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 256, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu"
        })
    }

    #[test]
    fn qwen2_legacy_and_transformers5_keys_agree() {
        let legacy = QwenConfig::from_json(qwen2()).unwrap();
        let mut v5 = qwen2();
        let o = v5.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.insert("rope_parameters".into(), serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}));
        o.insert("dtype".into(), "float32".into());
        let new = QwenConfig::from_json(v5).unwrap();
        assert_eq!(legacy.rope, new.rope);
        assert_eq!(legacy.head_dim, 16);
        assert_eq!(legacy.kv_groups(), 2);
    }

    #[test]
    fn qwen2_sliding_window_rule() {
        let mut v = qwen2();
        let o = v.as_object_mut().unwrap();
        o.insert("use_sliding_window".into(), true.into());
        o.insert("sliding_window".into(), 6.into());
        o.insert("max_window_layers".into(), 1.into());
        let c = QwenConfig::from_json(v).unwrap();
        assert_eq!(c.windows.windows, [None, Some(6), Some(6)]);
    }

    #[test]
    fn qwen1_aug2023_names() {
        let v = serde_json::json!({
            "model_type": "qwen", "padded_vocab_size": 256, "n_embd": 64, "n_layer": 2, "n_head": 4,
            "ffn_hidden_size": 256, "n_positions": 64, "kv_channels": 16, "rotary_pct": 1.0,
            "rotary_emb_base": 10000, "use_dynamic_ntk": true, "use_logn_attn": true, "seq_length": 16
        });
        let c = QwenConfig::from_json(v).unwrap();
        assert_eq!((c.family, c.intermediate_size, c.num_key_value_heads), (Family::Qwen1, 128, 4));
        assert_eq!(c.rope.scaling, RopeScaling::QwenDynamicNtk { seq_length: 16 });
        assert_eq!(c.logn, Some(LogN { seq_length: 16 }));
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        let with = |k: &str, v: Value| {
            let mut c = qwen2();
            c.as_object_mut().unwrap().insert(k.into(), v);
            QwenConfig::from_json(c)
        };
        assert!(matches!(with("num_key_value_heads", 3.into()), Err(ModelError::Config(_))));
        assert!(matches!(with("vocab_size", 0.into()), Err(ModelError::Config(_))));
        assert!(matches!(with("vocab_size", "big".into()), Err(ModelError::Config(_))));
        assert!(matches!(with("hidden_act", "gelu".into()), Err(ModelError::Unsupported(_))));
        assert!(matches!(with("rope_scaling", serde_json::json!({"type": "dynamic"})), Err(ModelError::Config(_))));
        assert!(matches!(
            with("rope_scaling", serde_json::json!({"type": "longrope", "factor": 2.0})),
            Err(ModelError::Unsupported(_))
        ));
        assert!(matches!(with("model_type", "llama".into()), Err(ModelError::Unsupported(_))));
        // Sizes whose products overflow or could never be backed by a file.
        assert!(matches!(with("vocab_size", (u64::MAX / 2).into()), Err(ModelError::Config(_))));
        assert!(matches!(with("intermediate_size", (1u64 << 40).into()), Err(ModelError::Config(_))));
        assert!(matches!(with("num_hidden_layers", 1_000_000.into()), Err(ModelError::Config(_))));
        assert!(matches!(with("max_position_embeddings", (1u64 << 62).into()), Err(ModelError::Config(_))));
        assert!(matches!(with("hidden_size", (-64).into()), Err(ModelError::Config(_))));
        assert!(matches!(QwenConfig::from_json_str("{"), Err(ModelError::Config(_))));
        let mut no_hidden = qwen2();
        no_hidden.as_object_mut().unwrap().remove("hidden_size");
        assert!(matches!(QwenConfig::from_json(no_hidden), Err(ModelError::Config(_))));
    }
}
