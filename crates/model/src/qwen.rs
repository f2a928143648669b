//! The Qwen transformer, top to bottom: rotary embedding → attention (with its KV cache) → MLP →
//! decoder layer → model. Field names are the Qwen2 checkpoint's (`q_proj`, `input_layernorm`);
//! `load.rs` maps Qwen-1's names onto them.
//!
//! Block (every family): `h += attn(rms_norm(h)); h += mlp(rms_norm(h))`, then a final RMSNorm
//! and an untied LM head (tied when the config says so). Attention has biases on Q, K and V
//! (Qwen-1, Qwen2, Qwen2-MoE; Qwen3 only with `attention_bias`, then on `o_proj` too); Qwen3 puts an
//! RMSNorm over each head's query and key before RoPE. The MLP is SwiGLU,
//! `down(silu(gate(x)) * up(x))`, or in the MoE families a sparse block of such experts
//! ([`SparseMoe`]).

use burn::module::Module;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use qwen_context::{RopeConvention, RopeFrequencies};

use crate::batch::Batch;
use crate::config::QwenConfig;
use crate::error::{ModelError, Result};
use crate::host_attention;
use crate::lora::{adapted, Lora};
use crate::moe::SparseMoe;
use crate::packed::{Packed, PackedMatrix};

// ---------------------------------------------------------------------------------------------
// Rotary embedding

/// cos/sin tables for a run of positions, `[rows, seq, 1, rotary_dim]` (one row shared by the
/// batch, or one per row), and the convention.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    convention: RopeConvention,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `start..start + len` under `freqs`, shared by every row of a batch.
    pub fn new(
        freqs: &RopeFrequencies,
        start: usize,
        len: usize,
        convention: RopeConvention,
        device: &B::Device,
    ) -> Self {
        Self::rows(&[(freqs, start as i64)], len, convention, device)
    }

    /// Tables for a batch whose rows have their own frequencies and positions: row `r` covers
    /// positions `first_r..first_r + len` (a left-padded row starts below 0; its padding columns get
    /// position 0, which no real token attends to). `[rows, len, 1, rotary_dim]`.
    ///
    /// Angles are computed in f32 as the references do (`outer(positions, inv_freq)`), then cos/sin
    /// scaled by the attention factor.
    pub fn rows(rows: &[(&RopeFrequencies, i64)], len: usize, convention: RopeConvention, device: &B::Device) -> Self {
        let positions: Vec<i64> = rows.iter().flat_map(|&(_, first)| (0..len as i64).map(move |j| first + j)).collect();
        let freqs: Vec<&RopeFrequencies> = rows.iter().map(|&(f, _)| f).collect();
        Self::positions(&freqs, &positions, len, convention, device)
    }

    /// Tables for explicit positions: row `r` (frequencies `freqs[r]`) has positions
    /// `positions[r * len..(r + 1) * len]` (below 0 counts as 0). `[rows, len, 1, rotary_dim]`.
    /// Packed training rows restart their positions at each packed sequence.
    pub fn positions(
        freqs: &[&RopeFrequencies],
        positions: &[i64],
        len: usize,
        convention: RopeConvention,
        device: &B::Device,
    ) -> Self {
        let dim = freqs.first().map_or(0, |f| 2 * f.inv_freq.len());
        let n = freqs.len() * len * dim;
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (r, freqs) in freqs.iter().enumerate() {
            let half = freqs.inv_freq.len();
            let f = freqs.attention_factor;
            for &p in &positions[r * len..(r + 1) * len] {
                let p = p.max(0) as f32;
                let angle = |i: usize| p * freqs.inv_freq[i];
                match convention {
                    // emb = cat(freqs, freqs)
                    RopeConvention::RotateHalf => {
                        for _ in 0..2 {
                            for i in 0..half {
                                cos.push(angle(i).cos() * f);
                                sin.push(angle(i).sin() * f);
                            }
                        }
                    }
                    // each frequency twice in a row
                    RopeConvention::Interleaved => {
                        for i in 0..half {
                            for _ in 0..2 {
                                cos.push(angle(i).cos() * f);
                                sin.push(angle(i).sin() * f);
                            }
                        }
                    }
                }
            }
        }
        // Sequence-major, broadcast over heads (and over the batch when there is one row): see `apply`.
        let shape = [freqs.len(), len, 1, dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            convention,
        }
    }

    /// Rotates the first `rotary_dim` features of `x: [batch, seq, heads, head_dim]`.
    ///
    /// Sequence-major, the layout a projection's output has before heads are moved forward: the
    /// element-wise products then read contiguous memory (on CPU backends a strided `[batch, heads,
    /// seq, dim]` view makes every multiply walk a strided index: the tiny training config's
    /// forward went from 104 to 93 ms with this layout).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, h, d] = x.dims();
        let r = self.cos.dims()[3];
        let (rot, pass) = if r < d { (x.clone().narrow(3, 0, r), Some(x.narrow(3, r, d - r))) } else { (x, None) };
        let rotated = match self.convention {
            RopeConvention::RotateHalf => {
                let x1 = rot.clone().narrow(3, 0, r / 2);
                let x2 = rot.clone().narrow(3, r / 2, r / 2);
                Tensor::cat(vec![x2.neg(), x1], 3)
            }
            RopeConvention::Interleaved => {
                let pairs = rot.clone().reshape([b, s, h, r / 2, 2]);
                let even = pairs.clone().narrow(4, 0, 1);
                let odd = pairs.narrow(4, 1, 1);
                Tensor::cat(vec![odd.neg(), even], 4).reshape([b, s, h, r])
            }
        };
        // The tables repeated over heads, `[1, s, h * r]` (small): against `[b, s, h * r]` that is a
        // plain row broadcast, where `[1, s, 1, r]` against `[b, s, h, r]` sends CPU backends down a
        // strided path (forward and backward).
        let rows = self.cos.dims()[0];
        let table = |t: &Tensor<B, 4>| t.clone().expand([rows, s, h, r]).reshape([rows, s, h * r]);
        let flat = |t: Tensor<B, 4>| t.reshape([b, s, h * r]);
        let out = flat(rot) * table(&self.cos) + flat(rotated) * table(&self.sin);
        let out = out.reshape([b, s, h, r]);
        match pass {
            Some(p) => Tensor::cat(vec![out, p], 3),
            None => out,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KV cache

/// Keys and values of one layer.
///
/// A full-attention layer preallocates the cache capacity and writes each step in place. A layer
/// with a window `w` shorter than the capacity keeps only the last `w - 1` keys between steps:
/// no later query can see anything older, so older keys are dropped and the layer's memory stays
/// `O(w)` however long the sequence grows.
#[derive(Debug, Clone)]
pub enum LayerCache<B: Backend> {
    /// Preallocated to the capacity, written in place.
    Full { k: Tensor<B, 4>, v: Tensor<B, 4> },
    /// The last keys of a windowed layer (`None` before the first step), the first one at
    /// absolute position `start`.
    Window { window: usize, kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>, start: usize },
}

impl<B: Backend> LayerCache<B> {
    /// Adds this step's keys and values (`[b, kv_heads, s, d]`, positions `offset..offset + s`) and
    /// returns every key and value the step's queries may need, with the absolute position of the
    /// first one.
    fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>, offset: usize) -> (Tensor<B, 4>, Tensor<B, 4>, usize) {
        let [b, n, s, d] = k.dims();
        let end = offset + s;
        match self {
            Self::Full { k: ck, v: cv } => {
                // Moved out, not cloned: a buffer nobody else holds is written in place, where a
                // shared one is copied whole first (copy-on-write), every layer and every step.
                let placeholder = || Tensor::<B, 4>::empty([0, 0, 0, 0], &k.device());
                let (old_k, old_v) = (std::mem::replace(ck, placeholder()), std::mem::replace(cv, placeholder()));
                *ck = old_k.slice_assign([0..b, 0..n, offset..end, 0..d], k);
                *cv = old_v.slice_assign([0..b, 0..n, offset..end, 0..d], v);
                (ck.clone().narrow(2, 0, end), cv.clone().narrow(2, 0, end), 0)
            }
            Self::Window { window, kv, start } => {
                let first = *start;
                let (k, v) = match kv.take() {
                    Some((ck, cv)) => (Tensor::cat(vec![ck, k], 2), Tensor::cat(vec![cv, v], 2)),
                    None => (k, v),
                };
                // What the next query (at `end`) can still see: the last `window - 1` keys.
                let keep = (*window - 1).min(end - first);
                if keep > 0 {
                    let from = end - keep - first;
                    *kv = Some((k.clone().narrow(2, from, keep), v.clone().narrow(2, from, keep)));
                }
                *start = end - keep;
                (k, v, first)
            }
        }
    }

    /// Cached positions (the preallocated length for full-attention layers).
    fn len(&self) -> usize {
        match self {
            Self::Full { k, .. } => k.dims()[2],
            Self::Window { kv, .. } => kv.as_ref().map_or(0, |(k, _)| k.dims()[2]),
        }
    }
}

/// The KV cache of a whole model for one batch of rows.
///
/// Rows share one column space: column `c` of row `r` holds position `c - left_pad[r]`, the left
/// padding being fixed at prefill. Each row keeps the RoPE frequencies chosen at its prefill
/// (Qwen-1 dynamic NTK picks its alpha per row, from the row's own length). Finished rows leave
/// with [`KvCache::retain`], so they stop costing work.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    len: usize,
    capacity: usize,
    batch: usize,
    /// Padding columns at the start of each row (all 0 before prefill).
    left_pad: Vec<usize>,
    /// Each row's frequencies from prefill (empty before it).
    prefill_freqs: Vec<RopeFrequencies>,
    /// Elements per cached position, layer and row: `kv_heads * head_dim`, for K and V each.
    row: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `batch` sequences of up to `capacity` tokens. Layers whose window (from
    /// the config) is shorter than `capacity` keep only their window (see [`LayerCache`]).
    pub fn new(config: &QwenConfig, batch: usize, capacity: usize, device: &B::Device) -> Self {
        let shape = [batch, config.num_key_value_heads, capacity, config.head_dim];
        let layers = (0..config.num_hidden_layers)
            .map(|i| match config.windows.window(i).filter(|&w| w < capacity) {
                Some(window) => LayerCache::Window { window, kv: None, start: 0 },
                None => LayerCache::Full { k: Tensor::zeros(shape, device), v: Tensor::zeros(shape, device) },
            })
            .collect();
        let row = config.num_key_value_heads * config.head_dim;
        Self { layers, len: 0, capacity, batch, left_pad: vec![0; batch], prefill_freqs: Vec::new(), row }
    }

    /// Bytes held for keys and values now (f32): what the windows save shows here.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| 2 * l.len() * self.batch * self.row * std::mem::size_of::<f32>()).sum()
    }

    /// Columns cached so far (the longest row's length; shorter rows are left-padded).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of columns.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows in the cache.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens row `r` holds (its columns less its padding).
    pub fn row_len(&self, r: usize) -> usize {
        self.len - self.left_pad[r]
    }

    /// Keeps only `rows` (indices into the current batch, in the order given): a finished row
    /// leaves the batch and costs nothing from the next step on.
    ///
    /// # Errors
    /// [`ModelError::Config`] for an index past the batch or a repeated one.
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        let mut seen = vec![false; self.batch];
        for &r in rows {
            if r >= self.batch || std::mem::replace(&mut seen[r], true) {
                return Err(ModelError::Config(format!(
                    "row {r} is not in a cache of {} rows (or repeated)",
                    self.batch
                )));
            }
        }
        if rows.len() == self.batch && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let pick = |t: Tensor<B, 4>| {
            let device = t.device();
            let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            t.select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(index, [rows.len()]), &device))
        };
        for layer in &mut self.layers {
            match layer {
                LayerCache::Full { k, v } => {
                    *k = pick(k.clone());
                    *v = pick(v.clone());
                }
                LayerCache::Window { kv, .. } => {
                    if let Some((k, v)) = kv.take() {
                        *kv = Some((pick(k), pick(v)));
                    }
                }
            }
        }
        self.left_pad = rows.iter().map(|&r| self.left_pad[r]).collect();
        if !self.prefill_freqs.is_empty() {
            self.prefill_freqs = rows.iter().map(|&r| self.prefill_freqs[r].clone()).collect();
        }
        self.batch = rows.len();
        Ok(())
    }

    /// Appends `other`'s rows after this cache's (continuous batching: requests prefilled on their
    /// own join a running batch). The shorter side is shifted right, its rows gaining left padding,
    /// so every row keeps its positions: column `c` of a row still holds position `c - left_pad`.
    /// Each side keeps the room it had after its last column, so the capacity is the larger of the
    /// two. Layers whose window kind differs between the two sides (one cache was made short
    /// enough to hold every key) become full layers; masking hides what the window hides either way.
    ///
    /// # Errors
    /// [`ModelError::Config`] when the caches belong to different model shapes, or one of them has
    /// rows but was never prefilled.
    pub fn join(&mut self, other: KvCache<B>) -> Result<()> {
        if other.batch == 0 {
            return Ok(());
        }
        if self.batch == 0 {
            *self = other;
            return Ok(());
        }
        if self.layers.len() != other.layers.len() || self.row != other.row {
            return Err(ModelError::Config("joining the KV caches of two different model shapes".into()));
        }
        if self.prefill_freqs.is_empty() || other.prefill_freqs.is_empty() {
            return Err(ModelError::Config("only prefilled KV caches can be joined".into()));
        }
        let empty = |c: &KvCache<B>| c.layers.iter().any(|l| matches!(l, LayerCache::Window { kv: None, .. }));
        if empty(self) || empty(&other) {
            // A window of one key keeps nothing between steps.
            return Err(ModelError::Config("a layer that keeps no keys cannot be joined".into()));
        }
        let len = self.len.max(other.len);
        let (shift_a, shift_b) = (len - self.len, len - other.len);
        let capacity = (self.capacity + shift_a).max(other.capacity + shift_b);
        let (len_a, len_b) = (self.len, other.len);
        // Both sides' columns `from..to` of the joined column space, one side's rows after the other's.
        let stack = |(a, first_a): (Tensor<B, 4>, usize), (b, first_b): (Tensor<B, 4>, usize), from, to| {
            Tensor::cat(vec![span(a, first_a + shift_a, from, to), span(b, first_b + shift_b, from, to)], 0)
        };
        for (a, b) in self.layers.iter_mut().zip(other.layers) {
            *a = match (std::mem::replace(a, LayerCache::Window { window: 0, kv: None, start: 0 }), b) {
                (
                    LayerCache::Window { window, kv: Some((ka, va)), start: sa },
                    LayerCache::Window { window: wb, kv: Some((kb, vb)), start: sb },
                ) if window == wb => {
                    let start = (sa + shift_a).min(sb + shift_b);
                    let k = stack((ka, sa), (kb, sb), start, len);
                    let v = stack((va, sa), (vb, sb), start, len);
                    LayerCache::Window { window, kv: Some((k, v)), start }
                }
                (a, b) => {
                    let (ka, va, sa) = a.keys(len_a)?;
                    let (kb, vb, sb) = b.keys(len_b)?;
                    LayerCache::Full {
                        k: stack((ka, sa), (kb, sb), 0, capacity),
                        v: stack((va, sa), (vb, sb), 0, capacity),
                    }
                }
            };
        }
        self.left_pad =
            self.left_pad.iter().map(|p| p + shift_a).chain(other.left_pad.iter().map(|p| p + shift_b)).collect();
        self.prefill_freqs.extend(other.prefill_freqs);
        self.batch += other.batch;
        self.len = len;
        self.capacity = capacity;
        Ok(())
    }

    /// Drops the columns that are padding in every row (after the longest rows left, the rest
    /// share leading padding): each row keeps its positions and the room after its last column,
    /// and attention stops reading keys nobody can see.
    pub fn compact(&mut self) {
        let drop = self.left_pad.iter().copied().min().unwrap_or(0);
        if drop == 0 {
            return;
        }
        for layer in &mut self.layers {
            match layer {
                LayerCache::Full { k, v } => {
                    let cols = k.dims()[2] - drop;
                    *k = k.clone().narrow(2, drop, cols);
                    *v = v.clone().narrow(2, drop, cols);
                }
                LayerCache::Window { kv, start, .. } => {
                    if let Some((k, v)) = kv.take() {
                        let cut = drop.saturating_sub(*start).min(k.dims()[2]);
                        let cols = k.dims()[2] - cut;
                        if cols > 0 {
                            *kv = Some((k.narrow(2, cut, cols), v.narrow(2, cut, cols)));
                        }
                    }
                    *start = start.saturating_sub(drop);
                }
            }
        }
        self.left_pad.iter_mut().for_each(|p| *p -= drop);
        self.len -= drop;
        self.capacity -= drop;
    }

    /// Makes room for `columns` columns in all (growing the preallocated layers with zeros), so a
    /// cache can start at the prompt's length and grow as its rows decode.
    pub fn reserve(&mut self, columns: usize) {
        if columns <= self.capacity {
            return;
        }
        for layer in &mut self.layers {
            if let LayerCache::Full { k, v } = layer {
                *k = span(k.clone(), 0, 0, columns);
                *v = span(v.clone(), 0, 0, columns);
            }
        }
        self.capacity = columns;
    }

    /// Left padding of each row (columns before its first token).
    pub fn left_pad(&self) -> &[usize] {
        &self.left_pad
    }
}

impl<B: Backend> LayerCache<B> {
    /// The cached keys and values of a layer whose rows are `len` columns long, with the column
    /// of the first one.
    fn keys(self, len: usize) -> Result<(Tensor<B, 4>, Tensor<B, 4>, usize)> {
        match self {
            Self::Full { k, v } => Ok((k.narrow(2, 0, len), v.narrow(2, 0, len), 0)),
            Self::Window { kv: Some((k, v)), start, .. } => Ok((k, v, start)),
            // A window of one key keeps nothing between steps.
            Self::Window { kv: None, .. } => {
                Err(ModelError::Config("a layer that keeps no keys cannot be joined".into()))
            }
        }
    }
}

/// Columns `from..to` of `t: [b, n, l, d]`, whose first column is column `first`: zeros where `t`
/// has nothing.
fn span<B: Backend>(t: Tensor<B, 4>, first: usize, from: usize, to: usize) -> Tensor<B, 4> {
    let [b, n, l, d] = t.dims();
    let (lo, hi) = (first.max(from), (first + l).min(to));
    let device = t.device();
    let zeros = |cols: usize| Tensor::<B, 4>::zeros([b, n, cols, d], &device);
    if hi <= lo {
        return zeros(to - from);
    }
    let mut parts = Vec::with_capacity(3);
    if lo > from {
        parts.push(zeros(lo - from));
    }
    parts.push(t.narrow(2, lo - first, hi - lo));
    if to > hi {
        parts.push(zeros(to - hi));
    }
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, 2)
    }
}

// ---------------------------------------------------------------------------------------------
// Precision

/// The float type of the matrix multiplications (every `Linear`, the LM head included).
///
/// `Bf16` is mixed precision as the report trains: inputs and weights are cast to bf16 for each
/// matmul and the product back to the backend's float type, so the parameters (the master
/// weights, which the optimizer updates), norms, RoPE, softmax, residuals and the loss stay f32.
/// Under autodiff the casts pass gradients through, so gradients arrive in f32. burn 0.21 has no
/// autocast; this is the same thing written out at the one place it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in the backend's float type.
    #[default]
    Full,
    /// bf16 matmuls, f32 everything else.
    Bf16,
}

/// `linear(x)` with the matmul in `precision`.
pub(crate) fn project<B: Backend, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    // One `[rows, in] x [in, out]` matmul for every leading dimension. burn's `Linear::forward` on
    // `[batch, seq, in]` is a batched matmul that multiplies each batch row against the weight
    // separately, reading the weight once per row: on the CPU backend a batch of 8 decode rows
    // then cost 2x what the same rows cost as one matrix (measured on the 151936 x 896 head).
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, d_in]);
    let w = linear.weight.val();
    let y = match precision {
        Precision::Full => x.matmul(w),
        Precision::Bf16 => {
            let dtype = x.dtype();
            x.cast(FloatDType::BF16).matmul(w.cast(FloatDType::BF16)).cast(dtype)
        }
    };
    let y = match &linear.bias {
        Some(b) => y + b.val().unsqueeze::<2>(),
        None => y,
    };
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

/// `linear(x)` with the weight `packed` when given ([`packed_forward`]), else [`project`].
pub(crate) fn project_packed<B: Backend, const D: usize>(
    linear: &Linear<B>,
    packed: Option<&PackedMatrix>,
    x: Tensor<B, D>,
    precision: Precision,
) -> Tensor<B, D> {
    match packed {
        Some(w) => packed_forward(w, x),
        None => project(linear, x, precision),
    }
}

/// `x` as f32 on the host, and its row count (every dimension but the last).
fn host_rows<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Vec<f32>, usize) {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let host = x.into_data().convert::<f32>().into_vec::<f32>().expect("converted to f32 just above");
    (host, rows)
}

/// `x · Wᵀ + bias` of a packed weight ([`crate::packed`]): the activations go to the host, are
/// multiplied there ([`PackedMatrix::matmul`]: the kernel for a few rows, a GEMM on the weight's
/// own bytes or dequantized tiles for many), and the product comes back. No f32 copy of the
/// whole weight exists, and an f32 weight is never copied at all.
pub(crate) fn packed_forward<B: Backend, const D: usize>(w: &PackedMatrix, x: Tensor<B, D>) -> Tensor<B, D> {
    let mut parts = packed_forward_parts(w, x, &[w.rows]);
    parts.pop().expect("one part asked for")
}

/// [`packed_forward`] of a fused weight (q | k | v), its output columns split on the host into
/// one tensor per width of `widths` (summing to the weight's rows). Each part is contiguous: a
/// narrowed view of the fused product would send every later op (RoPE, the cache's copy) through
/// burn's strided iteration, ~10% of a 128-token prefill.
pub(crate) fn packed_forward_parts<B: Backend, const D: usize>(
    w: &PackedMatrix,
    x: Tensor<B, D>,
    widths: &[usize],
) -> Vec<Tensor<B, D>> {
    debug_assert_eq!(widths.iter().sum::<usize>(), w.rows);
    let dims = x.dims();
    let device = x.device();
    let (host, rows) = host_rows(x);
    let y = w.matmul(&host, rows);
    let tensor = |part: Vec<f32>, width: usize| {
        let mut out = dims;
        out[D - 1] = width;
        Tensor::<B, 2>::from_data(TensorData::new(part, [rows, width]), &device).reshape(out)
    };
    if let [width] = widths {
        return vec![tensor(y, *width)];
    }
    let mut first = 0;
    widths
        .iter()
        .map(|&width| {
            let part = y.chunks_exact(w.rows.max(1)).flat_map(|row| &row[first..first + width]).copied().collect();
            first += width;
            tensor(part, width)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Attention

/// Multi-head attention with grouped key/value heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    /// Qwen3: RMSNorm over each query head (`[head_dim]`), after the projection, before RoPE.
    pub q_norm: Option<RmsNorm<B>>,
    /// Qwen3: the same over each key head.
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// LoRA adapters on `q_proj`, `k_proj`, `v_proj`, `o_proj` ([`crate::lora`]; `None` without).
    pub q_lora: Option<Lora<B>>,
    pub k_lora: Option<Lora<B>>,
    pub v_lora: Option<Lora<B>>,
    pub o_lora: Option<Lora<B>>,
    /// Qwen-1's LoRA on its fused `c_attn` (one `A`, a `B` whose rows are q | k | v).
    pub qkv_lora: Option<Lora<B>>,
    /// Kept packed for CPU inference ([`crate::packed`]): q | k | v as one matrix, then o (with
    /// their biases); the `Linear`s then hold `[1, 1]` placeholder weights and no bias.
    pub packed: Packed,
}

/// Per-forward inputs shared by every layer.
pub struct Step<'a, B: Backend> {
    pub rope: &'a RopeTables<B>,
    /// `[1 or batch, 1, seq, 1]` query factors (LogN), if any differ from 1.
    pub query_scale: Option<Tensor<B, 4>>,
    /// Column of the first query (the cache's length before this step).
    pub offset: usize,
    /// Padding columns at the start of each row, when any row has some.
    pub left_pad: Option<&'a [usize]>,
    /// Packed rows: `true` where a query may NOT see a key because it belongs to another packed
    /// sequence or comes after the query, `[batch, 1, seq, seq]`; built once per forward
    /// ([`packed_mask`]), shared by every layer.
    pub packed: Option<Tensor<B, 4, Bool>>,
    pub precision: Precision,
}

impl<B: Backend> Attention<B> {
    /// `x: [batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        step: &Step<'_, B>,
        window: Option<usize>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let p = step.precision;
        // [b, s, n * hd] -> [b, s, n, hd], normed per head (Qwen3) and rotated there (contiguous),
        // then [b, n, s, hd].
        let rotated = |t: Tensor<B, 3>, n: usize, norm: &Option<RmsNorm<B>>| {
            let t = t.reshape([b, s, n, hd]);
            let t = match norm {
                Some(norm) => norm.forward(t),
                None => t,
            };
            step.rope.apply(t).swap_dims(1, 2)
        };
        let (mut q, mut k, mut v) = match self.packed.get(0) {
            // Packed: q | k | v are one matrix, one pass of the kernel.
            Some(qkv) => {
                let [q, k, v]: [Tensor<B, 3>; 3] = packed_forward_parts(qkv, x.clone(), &[nh * hd, nkv * hd, nkv * hd])
                    .try_into()
                    .expect("three parts asked for");
                let delta = |l: &Option<Lora<B>>, t: Tensor<B, 3>| match l {
                    Some(l) => t + l.delta(x.clone(), p),
                    None => t,
                };
                (delta(&self.q_lora, q), delta(&self.k_lora, k), delta(&self.v_lora, v))
            }
            None => (
                adapted(&self.q_proj, None, &self.q_lora, x.clone(), p),
                adapted(&self.k_proj, None, &self.k_lora, x.clone(), p),
                adapted(&self.v_proj, None, &self.v_lora, x.clone(), p),
            ),
        };
        if let Some(qkv) = &self.qkv_lora {
            let delta = qkv.delta(x, p);
            let (dq, dk) = (nh * hd, nkv * hd);
            q = q + delta.clone().narrow(2, 0, dq);
            k = k + delta.clone().narrow(2, dq, dk);
            v = v + delta.narrow(2, dq + dk, dk);
        }
        let q = rotated(q, nh, &self.q_norm);
        let k = rotated(k, nkv, &self.k_norm);
        let v = v.reshape([b, s, nkv, hd]).swap_dims(1, 2);
        // LogN multiplies the query only, after RoPE.
        let q = match &step.query_scale {
            Some(f) => q * f.clone(),
            None => q,
        };
        let (k, v, key_start) = match cache {
            Some(c) => c.append(k, v, step.offset),
            None => (k, v, 0),
        };
        let kv_len = k.dims()[2];
        let groups = nh / nkv;
        let device = q.device();
        if s > 1 && self.packed.get(0).is_some() && step.packed.is_none() && !B::ad_enabled(&device) {
            // CPU inference prefill: on the host, each query head reading its key/value head's
            // keys where they lie ([`crate::host_attention`]; no `repeat_kv` copies, no mask
            // tensor). Training (autodiff) and packed rows keep burn's attention below.
            let shape = host_attention::Shape {
                batch: b,
                queries: s,
                keys: kv_len,
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                offset: step.offset,
                key_start,
                window: window.unwrap_or(usize::MAX),
                left_pad: step.left_pad,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let host = |t: Tensor<B, 4>| t.into_data().convert::<f32>().into_vec::<f32>().expect("converted to f32");
            let out = host_attention::attention(&shape, &host(q.swap_dims(1, 2)), &host(k), &host(v));
            let out = Tensor::<B, 3>::from_data(TensorData::new(out, [b, s, nh * hd]), &device);
            return adapted(&self.o_proj, self.packed.get(1), &self.o_lora, out, p);
        }
        // A mask only when padding or the window hides a key from some query; otherwise burn's
        // causal attention (bottom-right aligned) is the same thing.
        let mask = attention_mask::<B>(s, kv_len, step.offset, key_start, window, step.left_pad, &device);
        // Packed rows (training, no cache, no padding): their block-diagonal causal mask, and the
        // window's on top where a layer has one.
        let mask = match (&step.packed, mask) {
            (Some(p), None) => Some(p.clone()),
            (Some(p), Some(w)) => Some(p.clone().bool_or(w.expand([b, 1, s, kv_len]))),
            (None, m) => m,
        };
        let scale = Some(1.0 / (hd as f64).sqrt());
        let out = if s == 1 && groups > 1 {
            // One query per row (decode): the `groups` query heads that share a key/value head are
            // that head's `groups` query rows, so keys and values are read as cached instead of
            // copied `groups` times (`repeat_kv` was ~15% of a 16-row decode step on the 0.5B
            // shape). A single query sees every key it is not masked from: nothing is causal.
            let q = q.reshape([b, nkv, groups, hd]);
            let mask = mask.map(|m| m.expand([b, nkv, groups, kv_len]));
            let options = AttentionModuleOptions { scale, softcap: None, is_causal: false };
            attention(q, k, v, mask, None, options).reshape([b, nh, 1, hd])
        } else {
            let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
            let mask = mask.map(|m| m.expand([b, nh, s, kv_len]));
            // Bottom-right aligned: query i sees keys 0..=offset+i.
            let options = AttentionModuleOptions { scale, softcap: None, is_causal: mask.is_none() };
            attention(q, k, v, mask, None, options)
        };
        adapted(&self.o_proj, self.packed.get(1), &self.o_lora, out.swap_dims(1, 2).reshape([b, s, nh * hd]), p)
    }
}

/// `[b, kv_heads, len, d]` → `[b, kv_heads * groups, len, d]`, each kv head serving `groups` heads.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [b, n, l, d] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, n, groups, l, d]).reshape([b, n * groups, l, d])
}

/// `true` where a query may NOT see a key: keys after it, `window` or more columns before it, or
/// padding. Queries are at columns `offset..offset + queries`, keys at `key_start..key_start + keys`.
/// A padding query sees itself only (its output is never read, but a row with every key hidden
/// would make the softmax NaN, and 0 × NaN poisons the real rows' sums in the next layer).
///
/// `None` when nothing but causality hides a key (then burn's causal path runs). The last query
/// has the most keys before it: all of them, so a window hides something only when
/// `keys > window`.
///
/// `[1 or batch, 1, queries, keys]`, for the caller to expand over its heads.
fn attention_mask<B: Backend>(
    queries: usize,
    keys: usize,
    offset: usize,
    key_start: usize,
    window: Option<usize>,
    left_pad: Option<&[usize]>,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let window = window.filter(|&w| keys > w);
    // Padding matters only while padding columns are among the keys.
    let left_pad = left_pad.filter(|p| p.iter().any(|&p| p > key_start));
    if window.is_none() && left_pad.is_none() {
        return None;
    }
    let w = window.unwrap_or(usize::MAX);
    let rows = left_pad.map_or(1, <[usize]>::len);
    let mut m = Vec::with_capacity(rows * queries * keys);
    for r in 0..rows {
        let pad = left_pad.map_or(0, |p| p[r]);
        for i in 0..queries {
            let q = offset + i;
            m.extend((key_start..key_start + keys).map(|k| host_attention::hidden(pad, w, q, k)));
        }
    }
    let mask = Tensor::<B, 3, Bool>::from_data(TensorData::new(m, [rows, queries, keys]), device);
    Some(mask.unsqueeze_dim::<4>(1))
}

/// Where each token's packed sequence starts: the column of the first token of its run of equal
/// segment ids, per row of `seq` columns.
fn segment_starts(segments: &[u32], seq: usize) -> Vec<usize> {
    let mut starts = Vec::with_capacity(segments.len());
    for row in segments.chunks(seq) {
        let mut start = 0;
        for (c, id) in row.iter().enumerate() {
            if c > 0 && *id != row[c - 1] {
                start = c;
            }
            starts.push(start);
        }
    }
    starts
}

/// The mask of packed rows, `[batch, 1, seq, seq]`: `true` where a query may NOT see a key, i.e.
/// the key comes after the query or before the first token of the query's packed sequence
/// (`starts` from [`segment_starts`]). Block-diagonal causal: no packed sequence sees another.
fn packed_mask<B: Backend>(starts: &[usize], batch: usize, seq: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let mut m = Vec::with_capacity(batch * seq * seq);
    for (i, &start) in starts.iter().enumerate() {
        let q = i % seq;
        m.extend((0..seq).map(|k| k > q || k < start));
    }
    Tensor::<B, 3, Bool>::from_data(TensorData::new(m, [batch, seq, seq]), device).unsqueeze_dim::<4>(1)
}

// ---------------------------------------------------------------------------------------------
// MLP, layer, model

/// SwiGLU: `down_proj(silu(gate_proj(x)) * up_proj(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    /// LoRA adapters on the three projections ([`crate::lora`]; `None` without).
    pub gate_lora: Option<Lora<B>>,
    pub up_lora: Option<Lora<B>>,
    pub down_lora: Option<Lora<B>>,
    /// Kept packed for CPU inference (see [`Attention::packed`]): gate | up as one matrix, then down.
    pub packed: Packed,
}

impl<B: Backend> Mlp<B> {
    /// `x: [..., hidden]` → `[..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, precision: Precision) -> Tensor<B, D> {
        let (Some(gate_up), Some(down)) = (self.packed.get(0), self.packed.get(1)) else {
            let gate = adapted(&self.gate_proj, None, &self.gate_lora, x.clone(), precision);
            let up = adapted(&self.up_proj, None, &self.up_lora, x, precision);
            return adapted(&self.down_proj, None, &self.down_lora, silu(gate) * up, precision);
        };
        let ff = gate_up.rows / 2;
        let dims = x.dims();
        let plain = self.gate_lora.is_none() && self.up_lora.is_none() && self.down_lora.is_none();
        if plain {
            // The whole block on the host, one transfer each way (the gate and up halves of the
            // fused product are never narrowed views on the backend).
            let device = x.device();
            let (host, rows) = host_rows(x);
            let gu = gate_up.matmul(&host, rows);
            let mut h = vec![0.0f32; rows * ff];
            let swiglu = |(h, gu): (&mut [f32], &[f32])| {
                let (g, u) = gu.split_at(ff);
                for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                    *h = g / (1.0 + (-g).exp()) * u;
                }
            };
            if rows < crate::packed::GEMM_ROWS {
                h.chunks_exact_mut(ff).zip(gu.chunks_exact(2 * ff)).for_each(swiglu);
            } else {
                use rayon::prelude::*;
                h.par_chunks_exact_mut(ff).zip(gu.par_chunks_exact(2 * ff)).for_each(swiglu);
            }
            let mut out = dims;
            out[D - 1] = down.rows;
            let y = down.matmul(&h, rows);
            return Tensor::<B, 2>::from_data(TensorData::new(y, [rows, down.rows]), &device).reshape(out);
        }
        let [gate, up]: [Tensor<B, D>; 2] =
            packed_forward_parts(gate_up, x.clone(), &[ff, ff]).try_into().expect("two parts asked for");
        let delta = |l: &Option<Lora<B>>, t: Tensor<B, D>, x: &Tensor<B, D>| match l {
            Some(l) => t + l.delta(x.clone(), precision),
            None => t,
        };
        let gate = delta(&self.gate_lora, gate, &x);
        let up = delta(&self.up_lora, up, &x);
        let h = silu(gate) * up;
        delta(&self.down_lora, packed_forward(down, h.clone()), &h)
    }
}

/// A layer's MLP: dense SwiGLU, or the sparse block of the MoE families.
#[derive(Module, Debug)]
pub enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Sparse(SparseMoe<B>),
}

impl<B: Backend> FeedForward<B> {
    /// The dense MLP, if this is one.
    pub fn dense(&self) -> Option<&Mlp<B>> {
        match self {
            Self::Dense(m) => Some(m),
            Self::Sparse(_) => None,
        }
    }

    /// The output, and the router logits of a sparse block pushed onto `router` when given.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        precision: Precision,
        router: Option<&mut Vec<Tensor<B, 2>>>,
    ) -> Tensor<B, 3> {
        match self {
            Self::Dense(m) => m.forward(x, precision),
            Self::Sparse(moe) => {
                let (y, logits) = moe.forward(x, precision);
                if let Some(r) = router {
                    r.push(logits);
                }
                y
            }
        }
    }
}

/// Pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: FeedForward<B>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn forward(
        &self,
        h: Tensor<B, 3>,
        step: &Step<'_, B>,
        window: Option<usize>,
        cache: Option<&mut LayerCache<B>>,
        router: Option<&mut Vec<Tensor<B, 2>>>,
    ) -> Tensor<B, 3> {
        let h = h.clone() + self.self_attn.forward(self.input_layernorm.forward(h), step, window, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h), step.precision, router)
    }
}

/// The causal language model.
///
/// With tied embeddings there is one matrix, kept in the head's layout (`lm_head.weight`,
/// `[hidden, vocab]`): the head is then a plain contiguous matmul (a matmul against a transposed
/// view of the `[vocab, hidden]` embedding is ~20x slower on CPU backends), and the embedding
/// lookup gathers columns of it instead of rows.
#[derive(Module, Debug)]
pub struct Qwen<B: Backend> {
    /// `None` when tied to `lm_head`.
    pub embed_tokens: Option<Embedding<B>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub lm_head: Linear<B>,
    /// The head `[vocab, hidden]` kept packed for CPU inference (see [`Attention::packed`]); a
    /// tied embedding then reads its rows from it.
    pub packed_head: Packed,
}

impl<B: Backend> Qwen<B> {
    /// Embeddings of `ids: [batch, seq]` → `[batch, seq, hidden]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match &self.embed_tokens {
            Some(e) => e.forward(ids),
            None if self.packed_head.get(0).is_some() => {
                let w = self.packed_head.get(0).expect("checked just above");
                let [b, s] = ids.dims();
                let device = ids.device();
                let ids = ids.into_data().convert::<i64>().into_vec::<i64>().expect("converted to i64 just above");
                let mut h = vec![0.0f32; ids.len() * w.cols];
                for (&id, row) in ids.iter().zip(h.chunks_exact_mut(w.cols)) {
                    w.dequantize_row(id as usize, row);
                }
                Tensor::from_data(TensorData::new(h, [b, s, w.cols]), &device)
            }
            None => {
                let [b, s] = ids.dims();
                let w = self.lm_head.weight.val();
                let h = w.dims()[0];
                w.select(1, ids.reshape([b * s])).transpose().reshape([b, s, h])
            }
        }
    }

    /// The `[vocab, hidden]` embedding matrix (a transposed copy of the head when tied).
    pub fn embedding_matrix(&self) -> Tensor<B, 2> {
        match &self.embed_tokens {
            Some(e) => e.weight.val(),
            None => self.lm_head.weight.val().transpose(),
        }
    }
}

/// Whether inference-only long-context behaviour applies (Qwen-1 turns dynamic NTK and LogN off
/// while training).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inference,
    Training,
}

/// A model with its config: what callers use.
///
/// A burn [`Module`] (the config, RoPE convention and precision ride along as constants), so
/// models built on it — a reward model's trunk, a policy in an optimizer — are modules too.
#[derive(Module, Debug)]
pub struct QwenModel<B: Backend> {
    pub model: Qwen<B>,
    pub config: QwenConfig,
    pub convention: RopeConvention,
    /// The matmuls' float type ([`Precision::Full`] unless set).
    pub precision: Precision,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position, `[batch, seq, vocab]`.
    All,
    /// The last column only, `[batch, 1, vocab]`: what generation needs (a 128-token prefill of a
    /// 152k vocabulary would otherwise spend ~17 GFLOP on logits nobody reads).
    Last,
}

impl<B: Backend> QwenModel<B> {
    /// Wraps loaded weights (rotate-half RoPE, as every Qwen checkpoint uses).
    pub fn new(config: QwenConfig, model: Qwen<B>) -> Self {
        Self { config, model, convention: RopeConvention::RotateHalf, precision: Precision::Full }
    }

    /// A model with random weights (normal, `std`; norms at 1), e.g. for tests and benchmarks.
    /// [`QwenConfig::init`] is the same with the config's initializer range.
    pub fn random(config: QwenConfig, std: f64, device: &B::Device) -> Self {
        let model = crate::init::build(&config, &mut crate::init::RandomWeights::new(std, device))
            .expect("random weights have every shape the layout asks for");
        Self::new(config, model)
    }

    /// [`QwenModel::random`] with the projections and the head kept as `dtype`
    /// ([`crate::packed`]); an error when the shapes do not fit it (Q8_0: widths of 32s).
    pub fn random_as(
        config: QwenConfig,
        std: f64,
        dtype: crate::packed::WeightDtype,
        device: &B::Device,
    ) -> Result<Self> {
        let model = crate::init::build_as(&config, &mut crate::init::RandomWeights::new(std, device), dtype)?;
        Ok(Self::new(config, model))
    }

    /// Bytes of the weights a decode step reads: packed matrices at their dtype's width, and
    /// every burn parameter but an untied embedding (only its looked-up rows are read) at 4 bytes.
    pub fn weight_bytes(&self) -> usize {
        let m = &self.model;
        let embed = m.embed_tokens.as_ref().map_or(0, |e| e.weight.val().shape().num_elements());
        let params = self.num_params() - embed;
        let packed: usize = m.packed_head.bytes()
            + m.layers
                .iter()
                .map(|l| l.self_attn.packed.bytes() + l.mlp.dense().map_or(0, |d| d.packed.bytes()))
                .sum::<usize>();
        params * 4 + packed
    }

    pub fn device(&self) -> B::Device {
        self.model.lm_head.weight.device()
    }

    /// A batch of token rows of any lengths, left-padded to the longest (padding id 0, masked).
    ///
    /// # Errors
    /// [`ModelError::EmptyInput`] for no rows or an empty row; [`ModelError::TokenOutOfRange`] for
    /// an id past the vocabulary.
    pub fn batch<R: AsRef<[u32]>>(&self, rows: &[R]) -> Result<Batch<B>> {
        for row in rows {
            if let Some(&id) = row.as_ref().iter().find(|&&id| id as usize >= self.config.vocab_size) {
                return Err(ModelError::TokenOutOfRange { id, vocab_size: self.config.vocab_size });
            }
        }
        Batch::left_padded(rows, &self.device())
    }

    /// Logits `[batch, seq, vocab]` without a cache, as the reference computes them at inference
    /// (dynamic NTK and LogN apply past the training length). Rows of different lengths are
    /// left-padded (see [`QwenModel::batch`]).
    pub fn forward<R: AsRef<[u32]>>(&self, ids: &[R]) -> Result<Tensor<B, 3>> {
        self.forward_mode(ids, Mode::Inference)
    }

    /// Logits without a cache in the given mode.
    pub fn forward_mode<R: AsRef<[u32]>>(&self, ids: &[R], mode: Mode) -> Result<Tensor<B, 3>> {
        self.logits(&self.batch(ids)?, mode)
    }

    /// The final-norm hidden states `[batch, seq, hidden]` that the LM head (`lm_head`) turns into
    /// [`QwenModel::forward_mode`]'s logits. Training uses it to fuse the head with the loss.
    pub fn hidden_mode<R: AsRef<[u32]>>(&self, ids: &[R], mode: Mode) -> Result<Tensor<B, 3>> {
        self.hidden(&self.batch(ids)?, mode)
    }

    /// Logits of a batch, every position, without a cache.
    pub fn logits(&self, batch: &Batch<B>, mode: Mode) -> Result<Tensor<B, 3>> {
        Ok(self.head(self.hidden(batch, mode)?))
    }

    /// Final-norm hidden states of a batch, without a cache.
    pub fn hidden(&self, batch: &Batch<B>, mode: Mode) -> Result<Tensor<B, 3>> {
        self.run_hidden(batch, mode, None, Logits::All, None)
    }

    /// [`QwenModel::hidden`] and each sparse layer's router logits `[batch * seq, experts]`
    /// (none for a dense model): what the MoE load-balancing loss reads.
    pub fn hidden_and_router(&self, batch: &Batch<B>, mode: Mode) -> Result<(Tensor<B, 3>, Vec<Tensor<B, 2>>)> {
        let mut router = Vec::new();
        let h = self.run_hidden(batch, mode, None, Logits::All, Some(&mut router))?;
        Ok((h, router))
    }

    /// `router_aux_loss_coef ×` the load-balancing loss ([`crate::moe::load_balancing_loss`]) of
    /// `batch`'s router logits, padding left out: what transformers adds to an MoE model's
    /// training loss when its config has `output_router_logits`. `None` for a dense model.
    pub fn router_aux_loss(&self, batch: &Batch<B>, router_logits: &[Tensor<B, 2>]) -> Option<Tensor<B, 1>> {
        let moe = self.config.moe.as_ref()?;
        let [_, s] = batch.dims();
        let valid: Vec<bool> = batch.left_pad.iter().flat_map(|&p| (0..s).map(move |c| c >= p)).collect();
        let loss = crate::moe::load_balancing_loss(router_logits, moe.num_experts_per_tok, Some(&valid))?;
        Some(loss * moe.router_aux_loss_coef as f32)
    }

    /// The LM head on hidden states.
    pub fn head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        project_packed(&self.model.lm_head, self.model.packed_head.get(0), hidden, self.precision)
    }

    /// Logits for `batch` appended to what `cache` holds; fills the cache (inference mode). The
    /// first call (prefill) may be left-padded and fixes each row's padding; later calls append
    /// the same number of tokens to every row, without padding.
    pub fn decode(&self, batch: &Batch<B>, cache: &mut KvCache<B>, logits: Logits) -> Result<Tensor<B, 3>> {
        let mut step = || Ok(self.head(self.run_hidden(batch, Mode::Inference, Some(cache), logits, None)?));
        // On the CPU the step fans out to rayon's pool many times (burn Flex's kernels, and the
        // packed projections ~4 times per layer: ~100 times per decoded token). Called from a
        // thread outside the pool, each fan-out wakes the pool's sleeping workers and blocks until
        // they are done: two cross-thread wake-ups each. Run on one of the pool's own threads
        // (`rayon::scope` moves the step there, or runs it inline when already in the pool), the
        // caller works on its share and the other worker steals the rest. Measured (2 threads,
        // docs/model.md): prefill +5% (f32) to +10% (packed), q8_0 decode +9%, the rest within
        // noise. GPU backends keep the calling thread.
        let on_rayon = self.model.packed_head.get(0).is_some() || B::name(&self.device()) == "flex";
        if on_rayon {
            rayon::scope(|_| step())
        } else {
            step()
        }
    }

    /// Logits for `ids` appended to what `cache` holds; fills the cache.
    pub fn forward_cached<R: AsRef<[u32]>>(&self, ids: &[R], cache: &mut KvCache<B>) -> Result<Tensor<B, 3>> {
        self.decode(&self.batch(ids)?, cache, Logits::All)
    }

    /// Like [`QwenModel::forward_cached`], but the LM head runs on the last position only,
    /// `[batch, 1, vocab]`.
    pub fn forward_cached_last<R: AsRef<[u32]>>(&self, ids: &[R], cache: &mut KvCache<B>) -> Result<Tensor<B, 3>> {
        self.decode(&self.batch(ids)?, cache, Logits::Last)
    }

    /// The final-norm hidden states that the LM head reads.
    ///
    /// Per row: positions count from the row's first real token; the RoPE frequencies follow the
    /// row's own length (Qwen-1 dynamic NTK picks alpha per sample, as its code does); LogN scales
    /// by the row's own positions and length. A batch without padding takes the shared-table path
    /// of a single sequence.
    fn run_hidden(
        &self,
        batch: &Batch<B>,
        mode: Mode,
        mut cache: Option<&mut KvCache<B>>,
        logits: Logits,
        mut router: Option<&mut Vec<Tensor<B, 2>>>,
    ) -> Result<Tensor<B, 3>> {
        let [b, s] = batch.ids.dims();
        if b == 0 || s == 0 {
            return Err(ModelError::EmptyInput);
        }
        let padded = batch.left_pad.iter().any(|&p| p > 0);
        if batch.segments.is_some() && (cache.is_some() || mode != Mode::Training || padded) {
            return Err(ModelError::Config(
                "packed rows are for the training forward only (no cache, no padding)".into(),
            ));
        }
        let (offset, left_pad) = match cache.as_deref_mut() {
            Some(c) => {
                if c.batch != b {
                    return Err(ModelError::Config(format!(
                        "batch of {b} rows does not match the cache's {}",
                        c.batch
                    )));
                }
                if c.is_empty() {
                    c.left_pad = batch.left_pad.clone();
                } else if padded {
                    return Err(ModelError::Config("padding is only allowed at prefill (an empty cache)".into()));
                }
                if c.len + s > c.capacity {
                    return Err(ModelError::SequenceTooLong { len: c.len + s, limit: c.capacity });
                }
                (c.len, c.left_pad.clone())
            }
            None => (0, batch.left_pad.clone()),
        };
        let end = offset + s;
        let any_pad = left_pad.iter().any(|&p| p > 0);
        // Each row's RoPE frequencies for its own length `end - pad`.
        let freqs: Vec<RopeFrequencies> = match mode {
            Mode::Training => {
                let plain = qwen_context::Rope { scaling: qwen_context::RopeScaling::None, ..self.config.rope.clone() };
                vec![plain.frequencies(s)]
            }
            Mode::Inference => {
                let schedule = &self.config.rope;
                let fixed =
                    cache.as_deref().filter(|c| !c.prefill_freqs.is_empty() && !schedule.changes_during_decode());
                let rows: Vec<RopeFrequencies> = match fixed {
                    Some(c) => c.prefill_freqs.clone(),
                    None => left_pad.iter().map(|&p| schedule.frequencies(end - p)).collect(),
                };
                if let Some(c) = cache.as_deref_mut().filter(|c| c.prefill_freqs.is_empty()) {
                    c.prefill_freqs = rows.clone();
                }
                rows
            }
        };
        let device = self.device();
        let shared = !any_pad && freqs.iter().all(|f| *f == freqs[0]);
        // Packed rows: positions restart at each packed sequence, and one block-diagonal causal
        // mask serves every layer.
        let starts = batch.segments.as_deref().map(|seg| segment_starts(seg, s));
        let packed = starts.as_deref().map(|st| packed_mask::<B>(st, b, s, &device));
        let rope = if let Some(starts) = &starts {
            let positions: Vec<i64> = starts.iter().enumerate().map(|(i, &st)| (i % s - st) as i64).collect();
            RopeTables::positions(&vec![&freqs[0]; b], &positions, s, self.convention, &device)
        } else if shared {
            RopeTables::new(&freqs[0], offset, s, self.convention, &device)
        } else {
            let rows: Vec<(&RopeFrequencies, i64)> =
                (0..b).map(|r| (freqs.get(r).unwrap_or(&freqs[0]), offset as i64 - left_pad[r] as i64)).collect();
            RopeTables::rows(&rows, s, self.convention, &device)
        };
        let query_scale = match mode {
            Mode::Inference => self.query_scale(offset, s, end, if any_pad { &left_pad } else { &[0] }),
            Mode::Training => None,
        };
        let step = Step {
            rope: &rope,
            query_scale,
            offset,
            left_pad: any_pad.then_some(left_pad.as_slice()),
            packed,
            precision: self.precision,
        };
        let mut h = self.model.embed(batch.ids.clone());
        for (i, layer) in self.model.layers.iter().enumerate() {
            let window = self.config.windows.window(i);
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = layer.forward(h, &step, window, layer_cache, router.as_deref_mut());
        }
        if let Some(c) = cache {
            c.len = end;
        }
        let h = match logits {
            Logits::Last => h.narrow(1, s - 1, 1),
            Logits::All => h,
        };
        Ok(self.model.norm.forward(h))
    }

    /// `[rows, 1, s, 1]` LogN factors for the queries at columns `offset..offset + s` of rows with
    /// `left_pad` padding columns, keys up to column `end`: each row by its own positions and
    /// length. `None` when every factor is 1.
    fn query_scale(&self, offset: usize, s: usize, end: usize, left_pad: &[usize]) -> Option<Tensor<B, 4>> {
        let logn = self.config.logn.as_ref()?;
        let mut f = Vec::with_capacity(left_pad.len() * s);
        for &pad in left_pad {
            f.extend((offset..offset + s).map(|c| if c < pad { 1.0 } else { logn.scale(c - pad, end - pad) }));
        }
        if f.iter().all(|&x| x == 1.0) {
            return None;
        }
        Some(Tensor::from_data(TensorData::new(f, [left_pad.len(), 1, s, 1]), &self.device()))
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> QwenModel<B> {
    /// The same model on the inner backend, without the autodiff graph (for evaluation, saving,
    /// generation, or as a frozen reference). Shares the weights as they are now.
    pub fn valid(&self) -> QwenModel<B::InnerBackend> {
        use burn::module::AutodiffModule;
        AutodiffModule::valid(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// Packed rows: each token's sequence starts at the first column of its run of equal ids (so
    /// its position is its distance from there), and the mask lets a query see exactly the keys
    /// from that start up to itself.
    #[test]
    fn packed_rows_restart_positions_and_mask_other_sequences() {
        // Two rows of 6: [a a a b b pad], [a b b b c c]; ids may repeat across rows.
        let segments = [0, 0, 0, 1, 1, 2, 7, 3, 3, 3, 7, 7];
        let starts = segment_starts(&segments, 6);
        assert_eq!(starts, [0, 0, 0, 3, 3, 5, 0, 1, 1, 1, 4, 4]);
        let mask = packed_mask::<Flex>(&starts, 2, 6, &Default::default());
        assert_eq!(mask.dims(), [2, 1, 6, 6]);
        let m = mask.into_data().to_vec::<bool>().unwrap();
        for (i, &start) in starts.iter().enumerate() {
            let (row, q) = (i / 6, i % 6);
            let seen: Vec<usize> = (0..6).filter(|&k| !m[(row * 6 + q) * 6 + k]).collect();
            assert_eq!(seen, (start..=q).collect::<Vec<_>>(), "row {row}, query {q}");
        }
    }

    /// `apply` against the formula written per element, for both conventions, with a rotary
    /// dimension smaller than the head (the rest passes through), several heads and a batch of 2.
    #[test]
    fn rope_tables_rotate_as_the_formula_says() {
        let (b, s, h, d, r) = (2, 3, 2, 6, 4);
        let freqs = RopeFrequencies { inv_freq: vec![1.0, 0.1], attention_factor: 1.0 };
        let x: Vec<f32> = (0..b * s * h * d).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5).collect();
        let device = Default::default();
        for convention in [RopeConvention::RotateHalf, RopeConvention::Interleaved] {
            let tables = RopeTables::<Flex>::new(&freqs, 5, s, convention, &device);
            let input = Tensor::<Flex, 4>::from_data(TensorData::new(x.clone(), [b, s, h, d]), &device);
            let got = tables.apply(input).into_data().to_vec::<f32>().unwrap();
            for (row, (x, got)) in x.chunks(d).zip(got.chunks(d)).enumerate() {
                let pos = 5 + (row / h) % s;
                let mut want = x.to_vec();
                for i in 0..r / 2 {
                    // The pair (a, b) rotated by the angle of frequency i.
                    let (ia, ib) = match convention {
                        RopeConvention::RotateHalf => (i, i + r / 2),
                        RopeConvention::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (sin, cos) = (pos as f32 * freqs.inv_freq[i]).sin_cos();
                    want[ia] = x[ia] * cos - x[ib] * sin;
                    want[ib] = x[ib] * cos + x[ia] * sin;
                }
                let err = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-5, "{convention:?}, row {row}: {got:?} vs {want:?}");
            }
        }
    }
}
