//! LoRA (Hu et al. 2021) as PEFT implements it, on the model's projections.
//!
//! An adapted projection computes `y = W x + b + (alpha / r) · B(A(dropout(x)))`, with `A: in → r`
//! and `B: r → out`. [`QwenModel::with_lora`] attaches fresh adapters as PEFT initialises them
//! (`A` Kaiming-uniform with `a = √5`, i.e. uniform in `±1/√in`; `B` zeros, so a fresh adapter
//! changes nothing); [`QwenModel::freeze_base`] leaves only the adapters trainable. The adapters
//! live inside the projections' owners ([`crate::qwen::Attention`]'s `q_lora` … and
//! [`crate::qwen::Mlp`]'s `gate_lora` …, `None` without LoRA), after the base parameters, so a
//! model without adapters visits exactly the parameters it always did.
//!
//! Targets are PEFT's module names of the checkpoint's family ([`LoraConfig::target_modules`]):
//! Qwen2/Qwen3 `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`; Qwen-1
//! `c_attn` (the fused q | k | v: one `A`, one `B` of `3 · hidden` rows), `c_proj` (both the
//! attention output and the MLP's down projection, as PEFT's suffix match takes both; `attn.c_proj`
//! or `mlp.c_proj` for one), `w1` (up) and `w2` (gate). Qwen2 names given for a Qwen-1 checkpoint
//! map onto those (`q_proj`/`k_proj`/`v_proj` → `c_attn`, `o_proj` → `attn.c_proj`, `down_proj` →
//! `mlp.c_proj`, `up_proj` → `w1`, `gate_proj` → `w2`). Sparse (MoE) MLPs take no adapters.
//!
//! On disk the layout is PEFT's ([`QwenModel::save_adapter`], [`QwenModel::load_adapter`]):
//! `adapter_config.json` and `adapter_model.safetensors` with tensors
//! `base_model.model.{module}.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`, so
//! `peft.PeftModel.from_pretrained(base, DIR)` loads what this writes and the reverse.
//! [`QwenModel::merged`] folds the adapters into the weights (`W + scale · B A`, PEFT's
//! `merge_and_unload`).
//!
//! Dropout (training only: on an autodiff backend) draws its masks from a counter-based generator
//! seeded by [`Lora::seed`], not from the backend's global generator, so a training step's masks are
//! a function of the seed its trainer gives it ([`QwenModel::reseed_lora`]) and a resumed run draws
//! the masks an uninterrupted one drew.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::Family;
use crate::error::{ModelError, Result};
use crate::load::Checkpoint;
use crate::packed::PackedMatrix;
use crate::qwen::{project_packed, DecoderLayer, FeedForward, Precision, QwenModel};

/// File name of the adapter's config (PEFT's `CONFIG_NAME`).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File name of the adapter's weights (PEFT's `SAFETENSORS_WEIGHTS_NAME`).
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// One adapter: `A` `[in, r]` and `B` `[r, out]` (burn's `[in, out]` layout; PEFT stores their
/// transposes), the scale `alpha / r`, the dropout probability and the dropout seed.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub lora_a: Param<Tensor<B, 2>>,
    pub lora_b: Param<Tensor<B, 2>>,
    pub scaling: f64,
    pub dropout: f64,
    /// Seed of this adapter's dropout masks (see the module docs).
    pub seed: u64,
}

/// `x · w` with the matmul in `precision`.
fn matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, precision: Precision) -> Tensor<B, 2> {
    match precision {
        Precision::Full => x.matmul(w),
        Precision::Bf16 => {
            let dtype = x.dtype();
            x.cast(FloatDType::BF16).matmul(w.cast(FloatDType::BF16)).cast(dtype)
        }
    }
}

/// SplitMix64: a counter-based generator (the same as `qwen-data`'s, which this crate does not
/// depend on).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `seed` and `index` mixed into one seed.
fn mix(seed: u64, index: u64) -> u64 {
    SplitMix(seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03)).next()
}

impl<B: Backend> Lora<B> {
    /// Rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// `scaling · B(A(dropout(x)))` for `x: [..., in]`.
    pub fn delta<const D: usize>(&self, x: Tensor<B, D>, precision: Precision) -> Tensor<B, D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product::<usize>();
        let x = self.dropped(x.reshape([rows, d_in]));
        let h = matmul(x, self.lora_a.val(), precision);
        let y = matmul(h, self.lora_b.val(), precision) * self.scaling;
        let mut out = dims;
        out[D - 1] = y.dims()[1];
        y.reshape(out)
    }

    /// Inverted dropout (PEFT's `nn.Dropout`) while training, i.e. on an autodiff backend.
    fn dropped(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = x.device();
        if self.dropout <= 0.0 || !B::ad_enabled(&device) {
            return x;
        }
        let [n, d] = x.dims();
        let keep = 1.0 - self.dropout;
        // Four 16-bit draws per generator step (keep probability to 1/65536).
        let threshold = (keep * 65536.0).round() as u64;
        let mut rng = SplitMix(self.seed);
        let mut dropped: Vec<bool> = Vec::with_capacity(n * d + 3);
        while dropped.len() < n * d {
            let r = rng.next();
            dropped.extend((0..4).map(|k| (r >> (16 * k)) & 0xffff >= threshold));
        }
        dropped.truncate(n * d);
        // A boolean mask, as torch's dropout keeps one: the backward pass holds a byte per input
        // element, not a float (with seven adapters a layer, a float mask was a third of a LoRA
        // run's peak memory).
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(dropped, [n, d]), &device);
        x.mask_fill(mask, 0.0) * (1.0 / keep)
    }

    /// The weight change `scaling · (B A)` in burn's `[in, out]` layout (PEFT's `get_delta_weight`,
    /// transposed).
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scaling
    }
}

/// `linear(x)`, plus the adapter's `delta(x)` when there is one.
pub(crate) fn adapted<B: Backend, const D: usize>(
    linear: &Linear<B>,
    packed: Option<&PackedMatrix>,
    lora: &Option<Lora<B>>,
    x: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    match lora {
        Some(l) => project_packed(linear, packed, x.clone(), precision) + l.delta(x, precision),
        None => project_packed(linear, packed, x, precision),
    }
}

/// A projection that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    /// Qwen-1's fused `c_attn` (q | k | v).
    Qkv,
}

impl LoraTarget {
    const ALL: [LoraTarget; 8] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down, Self::Qkv];

    /// The module's path in the checkpoint's family, as PEFT names it (`model.layers.3.self_attn.q_proj`).
    pub fn module_path(self, family: Family, layer: usize) -> String {
        if family.hf_layout() {
            let (block, name) = match self {
                Self::Q | Self::Qkv => ("self_attn", "q_proj"),
                Self::K => ("self_attn", "k_proj"),
                Self::V => ("self_attn", "v_proj"),
                Self::O => ("self_attn", "o_proj"),
                Self::Gate => ("mlp", "gate_proj"),
                Self::Up => ("mlp", "up_proj"),
                Self::Down => ("mlp", "down_proj"),
            };
            format!("model.layers.{layer}.{block}.{name}")
        } else {
            let name = match self {
                Self::Q | Self::K | Self::V | Self::Qkv => "attn.c_attn",
                Self::O => "attn.c_proj",
                // w2 is the gate: `c_proj(w1(x) * silu(w2(x)))`.
                Self::Gate => "mlp.w2",
                Self::Up => "mlp.w1",
                Self::Down => "mlp.c_proj",
            };
            format!("transformer.h.{layer}.{name}")
        }
    }

    fn slot<'a, B: Backend>(self, layer: &'a DecoderLayer<B>) -> Option<&'a Option<Lora<B>>> {
        let a = &layer.self_attn;
        match self {
            Self::Q => Some(&a.q_lora),
            Self::K => Some(&a.k_lora),
            Self::V => Some(&a.v_lora),
            Self::O => Some(&a.o_lora),
            Self::Qkv => Some(&a.qkv_lora),
            Self::Gate | Self::Up | Self::Down => match &layer.mlp {
                FeedForward::Dense(m) => Some(match self {
                    Self::Gate => &m.gate_lora,
                    Self::Up => &m.up_lora,
                    _ => &m.down_lora,
                }),
                FeedForward::Sparse(_) => None,
            },
        }
    }

    fn slot_mut<B: Backend>(self, layer: &mut DecoderLayer<B>) -> Option<&mut Option<Lora<B>>> {
        let a = &mut layer.self_attn;
        match self {
            Self::Q => Some(&mut a.q_lora),
            Self::K => Some(&mut a.k_lora),
            Self::V => Some(&mut a.v_lora),
            Self::O => Some(&mut a.o_lora),
            Self::Qkv => Some(&mut a.qkv_lora),
            Self::Gate | Self::Up | Self::Down => match &mut layer.mlp {
                FeedForward::Dense(m) => Some(match self {
                    Self::Gate => &mut m.gate_lora,
                    Self::Up => &mut m.up_lora,
                    _ => &mut m.down_lora,
                }),
                FeedForward::Sparse(_) => None,
            },
        }
    }

    /// The base linear layer(s) this target adapts: one, or Qwen-1's q, k and v for `c_attn`.
    fn bases<B: Backend>(self, layer: &DecoderLayer<B>) -> Vec<&Linear<B>> {
        let a = &layer.self_attn;
        match (self, &layer.mlp) {
            (Self::Q, _) => vec![&a.q_proj],
            (Self::K, _) => vec![&a.k_proj],
            (Self::V, _) => vec![&a.v_proj],
            (Self::O, _) => vec![&a.o_proj],
            (Self::Qkv, _) => vec![&a.q_proj, &a.k_proj, &a.v_proj],
            (Self::Gate, FeedForward::Dense(m)) => vec![&m.gate_proj],
            (Self::Up, FeedForward::Dense(m)) => vec![&m.up_proj],
            (Self::Down, FeedForward::Dense(m)) => vec![&m.down_proj],
            (_, FeedForward::Sparse(_)) => vec![],
        }
    }

    /// `(in, out)` of the adapted projection.
    fn shape<B: Backend>(self, layer: &DecoderLayer<B>) -> Option<(usize, usize)> {
        let bases = self.bases(layer);
        let d_in = bases.first()?.weight.dims()[0];
        Some((d_in, bases.iter().map(|l| l.weight.dims()[1]).sum()))
    }
}

/// What [`QwenModel::with_lora`] attaches, and what `adapter_config.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`: the scale is `alpha / r`.
    pub alpha: f64,
    /// `lora_dropout`.
    pub dropout: f64,
    /// PEFT's `target_modules` (see the module docs for the names of each family).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// Finetune.py's and PEFT's usual choice for Qwen2: every projection of attention and MLP.
    pub const ALL_PROJECTIONS: [&'static str; 7] =
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// The scale `alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Checks the numbers (rank > 0, finite alpha, dropout in `[0, 1)`, some target).
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(format!("LoRA: {m}")));
        if self.r == 0 {
            return bad("the rank must be > 0".into());
        }
        if !self.alpha.is_finite() {
            return bad(format!("lora_alpha {} is not finite", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("lora_dropout {} is not in [0, 1)", self.dropout));
        }
        if self.target_modules.is_empty() {
            return bad("no target module".into());
        }
        Ok(())
    }

    /// The projections `target_modules` names in `family` (sorted, each once).
    ///
    /// # Errors
    /// [`ModelError::Config`] for a name that is no projection of that family.
    pub fn targets(&self, family: Family) -> Result<Vec<LoraTarget>> {
        use LoraTarget::*;
        let mut out = BTreeSet::new();
        for name in &self.target_modules {
            let found: &[LoraTarget] = match (family.hf_layout(), name.as_str()) {
                (true, "q_proj") => &[Q],
                (true, "k_proj") => &[K],
                (true, "v_proj") => &[V],
                (true, "o_proj") => &[O],
                (true, "gate_proj") => &[Gate],
                (true, "up_proj") => &[Up],
                (true, "down_proj") => &[Down],
                (false, "c_attn" | "attn.c_attn" | "q_proj" | "k_proj" | "v_proj") => &[Qkv],
                (false, "c_proj") => &[O, Down],
                (false, "attn.c_proj" | "o_proj") => &[O],
                (false, "mlp.c_proj" | "down_proj") => &[Down],
                (false, "w1" | "mlp.w1" | "up_proj") => &[Up],
                (false, "w2" | "mlp.w2" | "gate_proj") => &[Gate],
                _ => {
                    let known = if family.hf_layout() {
                        Self::ALL_PROJECTIONS.join(", ")
                    } else {
                        "c_attn, c_proj, attn.c_proj, mlp.c_proj, w1, w2 (or the Qwen2 names)".into()
                    };
                    return Err(ModelError::Config(format!(
                        "LoRA target {name:?} is not a projection of this {family:?} checkpoint (known: {known})"
                    )));
                }
            };
            out.extend(found);
        }
        Ok(out.into_iter().collect())
    }

    /// PEFT's `target_modules` for a set of adapted projections of `family` (sorted).
    fn names_for(targets: &BTreeSet<LoraTarget>, family: Family) -> Vec<String> {
        use LoraTarget::*;
        let mut names = BTreeSet::new();
        for &t in targets {
            let name = if family.hf_layout() {
                LoraTarget::module_path(t, family, 0).rsplit('.').next().unwrap_or_default().to_string()
            } else {
                match t {
                    O if targets.contains(&Down) => "c_proj".into(),
                    Down if targets.contains(&O) => "c_proj".into(),
                    O => "attn.c_proj".into(),
                    Down => "mlp.c_proj".into(),
                    Gate => "w2".into(),
                    Up => "w1".into(),
                    Q | K | V | Qkv => "c_attn".into(),
                }
            };
            names.insert(name);
        }
        names.into_iter().collect()
    }
}

/// The `adapter_config.json` PEFT 0.21 writes for a LoRA adapter (every key it writes; the values
/// this crate does not implement are PEFT's defaults and are refused on loading when they differ).
fn adapter_config_json(c: &LoraConfig, base_model: &str) -> serde_json::Value {
    serde_json::json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        // An integer as PEFT writes one (`lora_alpha=16`), unless it has a fraction.
        "lora_alpha": if c.alpha.fract() == 0.0 && c.alpha.abs() < 1e15 { serde_json::json!(c.alpha as i64) } else { serde_json::json!(c.alpha) },
        "lora_bias": false,
        "lora_dropout": c.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": c.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": c.target_modules,
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    })
}

/// Reads `adapter_config.json`: r, alpha, dropout, targets; refuses what this crate does not
/// implement (DoRA, rsLoRA, a LoRA bias, per-module ranks, `fan_in_fan_out`, a regex target).
fn read_adapter_config(path: &Path) -> Result<LoraConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    let bad = |m: String| ModelError::Config(format!("{}: {m}", path.display()));
    let unsupported = |m: String| ModelError::Unsupported(format!("{}: {m}", path.display()));
    if v["peft_type"].as_str() != Some("LORA") {
        return Err(unsupported(format!("peft_type {} (only LORA)", v["peft_type"])));
    }
    for (key, default) in [("use_dora", false), ("use_rslora", false), ("fan_in_fan_out", false), ("lora_bias", false)]
    {
        if v[key].as_bool().unwrap_or(default) != default {
            return Err(unsupported(format!("{key} = {}", v[key])));
        }
    }
    if v["bias"].as_str().is_some_and(|b| b != "none") {
        return Err(unsupported(format!("bias {}", v["bias"])));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v[key].as_object().is_some_and(|o| !o.is_empty()) {
            return Err(unsupported(format!("{key} (per-module ranks)")));
        }
    }
    if v["modules_to_save"].as_array().is_some_and(|a| !a.is_empty()) {
        return Err(unsupported("modules_to_save".into()));
    }
    let r = v["r"].as_u64().ok_or_else(|| bad("no integer r".into()))? as usize;
    let alpha = v["lora_alpha"].as_f64().ok_or_else(|| bad("no lora_alpha".into()))?;
    let dropout = v["lora_dropout"].as_f64().unwrap_or(0.0);
    let target_modules = match &v["target_modules"] {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or_else(|| bad(format!("target {t} is not a string"))))
            .collect::<Result<Vec<_>>>()?,
        serde_json::Value::String(s) => return Err(unsupported(format!("target_modules as a pattern ({s:?})"))),
        other => return Err(bad(format!("target_modules {other}"))),
    };
    let config = LoraConfig { r, alpha, dropout, target_modules };
    config.validate()?;
    Ok(config)
}

impl<B: Backend> QwenModel<B> {
    /// Every adapter: its layer, its projection and the adapter.
    pub fn adapters(&self) -> Vec<(usize, LoraTarget, &Lora<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            for t in LoraTarget::ALL {
                if let Some(Some(l)) = t.slot(layer) {
                    out.push((i, t, l));
                }
            }
        }
        out
    }

    /// Whether any projection carries an adapter.
    pub fn has_lora(&self) -> bool {
        !self.adapters().is_empty()
    }

    /// Parameters (elements) of the adapters.
    pub fn lora_param_count(&self) -> usize {
        self.adapters().iter().map(|(_, _, l)| l.lora_a.shape().num_elements() + l.lora_b.shape().num_elements()).sum()
    }

    /// The config of the attached adapters (`None` without), as `adapter_config.json` states it.
    ///
    /// # Errors
    /// [`ModelError::Config`] when the adapters disagree in rank, scale or dropout.
    pub fn lora_config(&self) -> Result<Option<LoraConfig>> {
        let adapters = self.adapters();
        let Some((_, _, first)) = adapters.first() else { return Ok(None) };
        let (r, scaling, dropout) = (first.rank(), first.scaling, first.dropout);
        if adapters.iter().any(|(_, _, l)| l.rank() != r || l.scaling != scaling || l.dropout != dropout) {
            return Err(ModelError::Config("the adapters differ in rank, scale or dropout".into()));
        }
        let targets: BTreeSet<LoraTarget> = adapters.iter().map(|(_, t, _)| *t).collect();
        let target_modules = LoraConfig::names_for(&targets, self.config.family);
        Ok(Some(LoraConfig { r, alpha: scaling * r as f64, dropout, target_modules }))
    }

    /// Puts `make(layer, target, in, out)` on every targeted projection of every layer.
    fn attach(
        mut self,
        targets: &[LoraTarget],
        mut make: impl FnMut(usize, LoraTarget, usize, usize) -> Result<Lora<B>>,
    ) -> Result<Self> {
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for &t in targets {
                let (d_in, d_out) = t
                    .shape(layer)
                    .ok_or_else(|| ModelError::Unsupported(format!("LoRA on the MLP of sparse (MoE) layer {i}")))?;
                let lora = make(i, t, d_in, d_out)?;
                if let Some(slot) = t.slot_mut(layer) {
                    *slot = Some(lora);
                }
            }
        }
        Ok(self)
    }

    /// The model with fresh adapters on `config`'s targets, initialised as PEFT does (`A`
    /// uniform in `±1/√in` from a generator seeded by `seed`, `B` zeros: the outputs do not change).
    ///
    /// # Errors
    /// [`ModelError::Config`] for an invalid config or a target the family does not have,
    /// [`ModelError::Unsupported`] for MLP targets on sparse layers.
    pub fn with_lora(self, config: &LoraConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let targets = config.targets(self.config.family)?;
        let device = self.device();
        let (r, scaling, dropout) = (config.r, config.scaling(), config.dropout);
        self.attach(&targets, |i, t, d_in, d_out| {
            let index = (i * LoraTarget::ALL.len() + t as usize) as u64;
            let mut rng = SplitMix(mix(seed, index));
            let bound = 1.0 / (d_in as f64).sqrt();
            let a: Vec<f32> = (0..d_in * r).map(|_| ((2.0 * rng.unit() - 1.0) * bound) as f32).collect();
            Ok(Lora {
                lora_a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, r]), &device)),
                lora_b: Param::from_tensor(Tensor::zeros([r, d_out], &device)),
                scaling,
                dropout,
                seed: mix(seed, index),
            })
        })
    }

    /// Every adapter's dropout seed derived from `seed` and the adapter's place: what a trainer
    /// calls before each forward pass it trains on (the parameters and their ids do not change).
    pub fn reseed_lora(mut self, seed: u64) -> Self {
        for (i, layer) in self.model.layers.iter_mut().enumerate() {
            for t in LoraTarget::ALL {
                if let Some(Some(l)) = t.slot_mut(layer) {
                    l.seed = mix(seed, (i * LoraTarget::ALL.len() + t as usize) as u64);
                }
            }
        }
        self
    }

    /// The model with every base parameter frozen (no gradient) and the adapters trainable: only
    /// the adapters get gradients, and so only they are updated and have optimizer state.
    pub fn freeze_base(self) -> Self {
        let mut model = Self { model: self.model.no_grad(), ..self };
        for layer in model.model.layers.iter_mut() {
            for t in LoraTarget::ALL {
                if let Some(slot) = t.slot_mut(layer) {
                    if let Some(l) = slot.take() {
                        *slot = Some(Lora {
                            lora_a: l.lora_a.set_require_grad(true),
                            lora_b: l.lora_b.set_require_grad(true),
                            ..l
                        });
                    }
                }
            }
        }
        model
    }

    /// The model with the adapters folded into the weights, `W + scaling · (B A)` (PEFT's
    /// `merge_and_unload`), and no adapters left.
    pub fn merged(mut self) -> Self {
        for layer in self.model.layers.iter_mut() {
            for t in LoraTarget::ALL {
                let Some(lora) = t.slot_mut(layer).and_then(Option::take) else { continue };
                let delta = lora.delta_weight();
                let a = &mut layer.self_attn;
                let add = |lin: &mut Linear<B>, d: Tensor<B, 2>| {
                    let w = std::mem::replace(&mut lin.weight, Param::from_tensor(Tensor::zeros([1, 1], &d.device())));
                    lin.weight = w.map(|w| w + d);
                };
                match (t, &mut layer.mlp) {
                    (LoraTarget::Q, _) => add(&mut a.q_proj, delta),
                    (LoraTarget::K, _) => add(&mut a.k_proj, delta),
                    (LoraTarget::V, _) => add(&mut a.v_proj, delta),
                    (LoraTarget::O, _) => add(&mut a.o_proj, delta),
                    (LoraTarget::Qkv, _) => {
                        let (dq, dk) = (a.q_proj.weight.dims()[1], a.k_proj.weight.dims()[1]);
                        add(&mut a.q_proj, delta.clone().narrow(1, 0, dq));
                        add(&mut a.k_proj, delta.clone().narrow(1, dq, dk));
                        add(&mut a.v_proj, delta.narrow(1, dq + dk, dk));
                    }
                    (LoraTarget::Gate, FeedForward::Dense(m)) => add(&mut m.gate_proj, delta),
                    (LoraTarget::Up, FeedForward::Dense(m)) => add(&mut m.up_proj, delta),
                    (LoraTarget::Down, FeedForward::Dense(m)) => add(&mut m.down_proj, delta),
                    (_, FeedForward::Sparse(_)) => {}
                }
            }
        }
        self
    }

    /// Writes the adapters in PEFT's layout into `dir` (created if needed): `adapter_config.json`
    /// (with `base_model_name_or_path` = `base_model`) and `adapter_model.safetensors`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when the model has no adapters (or they disagree in rank, scale or
    /// dropout); write errors.
    pub fn save_adapter(&self, dir: impl AsRef<Path>, base_model: &str) -> Result<()> {
        let dir = dir.as_ref();
        let config = self.lora_config()?.ok_or_else(|| ModelError::Config("the model has no LoRA adapters".into()))?;
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Write { path: dir.to_path_buf(), source })?;
        let family = self.config.family;
        let mut tensors = Vec::new();
        for (i, t, l) in self.adapters() {
            let p = format!("base_model.model.{}", t.module_path(family, i));
            tensors.push((
                format!("{p}.lora_A.weight"),
                crate::save::raw(l.lora_a.val().transpose(), crate::SaveDtype::F32),
            ));
            tensors.push((
                format!("{p}.lora_B.weight"),
                crate::save::raw(l.lora_b.val().transpose(), crate::SaveDtype::F32),
            ));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        crate::save::write_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS))?;
        let json =
            serde_json::to_string_pretty(&adapter_config_json(&config, base_model)).expect("JSON value serializes");
        crate::save::write_atomic(&dir.join(ADAPTER_CONFIG), json.as_bytes())
    }

    /// The model with the PEFT adapter in `dir` attached (`adapter_config.json` and
    /// `adapter_model.safetensors`, as PEFT or [`QwenModel::save_adapter`] writes them). Every
    /// tensor the config implies must be there with its shape, and nothing else.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for adapter kinds this crate does not run (see the module docs),
    /// [`ModelError::MissingTensor`], [`ModelError::UnexpectedTensor`], [`ModelError::Shape`].
    pub fn load_adapter(self, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_adapter_config(&dir.join(ADAPTER_CONFIG))?;
        let targets = config.targets(self.config.family)?;
        let mut ckpt = Checkpoint::open_files(vec![dir.join(ADAPTER_WEIGHTS)])?;
        let device = self.device();
        let family = self.config.family;
        let (r, scaling, dropout) = (config.r, config.scaling(), config.dropout);
        let model = self.attach(&targets, |i, t, d_in, d_out| {
            let p = format!("base_model.model.{}", t.module_path(family, i));
            let a = ckpt.take(&format!("{p}.lora_A.weight"), &[r, d_in])?;
            let b = ckpt.take(&format!("{p}.lora_B.weight"), &[d_out, r])?;
            // Transposed on the host: a transposed view would make every matmul slow on CPU.
            let t2 = |v: Vec<f32>, rows: usize, cols: usize| {
                let mut t = vec![0f32; v.len()];
                for (r, row) in v.chunks_exact(cols).enumerate() {
                    for (c, &x) in row.iter().enumerate() {
                        t[c * rows + r] = x;
                    }
                }
                Tensor::<B, 2>::from_data(TensorData::new(t, [cols, rows]), &device)
            };
            Ok(Lora {
                lora_a: Param::from_tensor(t2(a, r, d_in)),
                lora_b: Param::from_tensor(t2(b, d_out, r)),
                scaling,
                dropout,
                seed: mix(0, (i * LoraTarget::ALL.len() + t as usize) as u64),
            })
        })?;
        if let Some(extra) = ckpt.unused().next() {
            return Err(ModelError::UnexpectedTensor(extra.to_string()));
        }
        Ok(model)
    }
}
