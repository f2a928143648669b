//! AdamW as the Qwen report sets it (β1 0.9, β2 0.95, ε 1e-8, weight decay 0.1), with decay on
//! matrices only, and clipping by the global gradient norm.
//!
//! burn 0.21 has neither parameter groups nor global-norm clipping (its
//! `GradientClippingConfig::Norm` clips each tensor on its own), so this module has its own
//! [`QwenAdamW`] (a burn `SimpleOptimizer`, so burn's adaptor, records and recorders work as for
//! burn's optimizers):
//!
//! - decoupled decay `p ← p · (1 − lr · wd)` applied only to parameters of rank ≥ 2 (projection,
//!   embedding and head matrices; the rank is the optimizer step's const generic), before the Adam
//!   update as in burn's own AdamW. Rank-1 parameters (RMSNorm gammas, Q/K/V biases) are not
//!   decayed;
//! - two ways to run the update, same math and same state: [`Update::Tensor`] with burn tensor
//!   operations (what a GPU backend wants), and [`Update::Host`], one fused pass per parameter
//!   over host memory (what a CPU backend wants: burn's formulation is ~14 element-wise
//!   operations per parameter, each a full traversal and most an allocation, which on the CPU
//!   cost more than the rest of the optimizer step together);
//! - [`clip_global_norm`]: `‖g‖₂` over every gradient of the module, all of them scaled by
//!   `max_norm / ‖g‖` when it is larger.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use qwen_model::Qwen;

use crate::error::{Result, TrainError};

/// The optimizer the trainer steps: [`QwenAdamW`] through burn's adaptor.
pub type QwenOptimizer<B> = OptimizerAdaptor<QwenAdamW, Qwen<B>, B>;

/// Where the AdamW update runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Update {
    /// burn tensor operations on the backend's device (GPU backends).
    #[default]
    Tensor,
    /// One fused pass over host memory per parameter, in parallel (CPU backends, where reading
    /// a tensor's data is free; on a GPU this would copy every parameter to the host and back).
    Host,
}

/// Optimizer settings; [`Default`] is the Qwen report's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// Decoupled weight decay, applied to rank ≥ 2 parameters only.
    pub weight_decay: f32,
    /// Global L2 norm the gradients are clipped to; `None` turns clipping off.
    pub clip_norm: Option<f32>,
    /// Where the update runs; it does not change the result beyond float rounding order.
    #[serde(default)]
    pub update: Update,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.1,
            clip_norm: Some(1.0),
            update: Update::Tensor,
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..1.0).contains(&self.beta_1)
            && (0.0..1.0).contains(&self.beta_2)
            && self.epsilon > 0.0
            && self.epsilon.is_finite()
            && self.weight_decay >= 0.0
            && self.weight_decay.is_finite()
            && self.clip_norm.is_none_or(|c| c > 0.0 && c.is_finite());
        if ok {
            Ok(())
        } else {
            Err(TrainError::Config(format!("optimizer settings out of range: {self:?}")))
        }
    }

    /// The optimizer for a Qwen module.
    pub fn init<B: AutodiffBackend>(&self) -> QwenOptimizer<B> {
        OptimizerAdaptor::from(QwenAdamW { config: *self })
    }
}

/// AdamW with rank-aware decoupled decay (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct QwenAdamW {
    pub config: OptimConfig,
}

/// Per-parameter state: first and second moments and the number of updates so far.
#[derive(Record, Clone, Debug)]
pub struct AdamWState<B: Backend, const D: usize> {
    pub moment_1: Tensor<B, D>,
    pub moment_2: Tensor<B, D>,
    pub time: usize,
}

/// Constants of one update.
#[derive(Clone, Copy)]
struct Coeffs {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// `1 − lr · wd` (1 for rank-1 parameters).
    keep: f32,
    lr: f32,
    /// `1 − β1^t`, `sqrt(1 − β2^t)`.
    bias_1: f32,
    bias_2_sqrt: f32,
}

impl Coeffs {
    /// `p ← p·keep − lr · (m / bias_1) / (sqrt(v) / bias_2_sqrt + ε)` after the moment updates.
    #[inline(always)]
    fn apply(&self, p: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        *m = self.beta_1 * *m + (1.0 - self.beta_1) * g;
        *v = self.beta_2 * *v + (1.0 - self.beta_2) * g * g;
        let denom = v.sqrt() / self.bias_2_sqrt + self.epsilon;
        *p = *p * self.keep - self.lr * (*m / self.bias_1) / denom;
    }
}

/// A tensor's values as f32 on the host (no copy on CPU backends when the tensor is contiguous,
/// f32 and not shared).
fn host_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    let data = t.into_data();
    let data = if data.dtype == DType::F32 { data } else { data.convert::<f32>() };
    // `into_vec` fails only on a dtype mismatch, which the conversion above rules out.
    data.into_vec::<f32>().expect("f32 tensor data")
}

impl<B: Backend> SimpleOptimizer<B> for QwenAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let c = &self.config;
        let (moment_1, moment_2, time) = match state {
            Some(s) => (s.moment_1, s.moment_2, s.time + 1),
            None => (grad.zeros_like(), grad.zeros_like(), 1),
        };
        let decay = if D >= 2 { lr * c.weight_decay as f64 } else { 0.0 };
        let k = Coeffs {
            beta_1: c.beta_1,
            beta_2: c.beta_2,
            epsilon: c.epsilon,
            keep: (1.0 - decay) as f32,
            lr: lr as f32,
            bias_1: 1.0 - c.beta_1.powi(time as i32),
            bias_2_sqrt: (1.0 - c.beta_2.powi(time as i32)).sqrt(),
        };
        let (tensor, moment_1, moment_2) = match c.update {
            Update::Tensor => {
                let m = moment_1.mul_scalar(k.beta_1).add(grad.clone().mul_scalar(1.0 - k.beta_1));
                let v = moment_2.mul_scalar(k.beta_2).add(grad.square().mul_scalar(1.0 - k.beta_2));
                let denom = v.clone().sqrt().div_scalar(k.bias_2_sqrt).add_scalar(k.epsilon);
                let delta = m.clone().div(denom).mul_scalar(k.lr / k.bias_1);
                let kept = if decay == 0.0 { tensor } else { tensor.mul_scalar(k.keep) };
                (kept.sub(delta), m, v)
            }
            Update::Host => {
                let (device, dtype) = (tensor.device(), tensor.dtype());
                let shape = tensor.shape();
                let (mut p, mut m, mut v) = (host_vec(tensor), host_vec(moment_1), host_vec(moment_2));
                let g = host_vec(grad);
                const CHUNK: usize = 1 << 14;
                p.par_chunks_mut(CHUNK)
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .zip(g.par_chunks(CHUNK))
                    .for_each(|(((p, m), v), g)| {
                        for i in 0..p.len() {
                            k.apply(&mut p[i], &mut m[i], &mut v[i], g[i]);
                        }
                    });
                let back = |values: Vec<f32>| {
                    let d = TensorData::new(values, shape.clone());
                    let d = if dtype == DType::F32 { d } else { d.convert_dtype(dtype) };
                    Tensor::<B, D>::from_data(d, &device)
                };
                (back(p), back(m), back(v))
            }
        };
        (tensor, Some(AdamWState { moment_1, moment_2, time }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdamWState { moment_1: state.moment_1.to_device(device), moment_2: state.moment_2.to_device(device), ..state }
    }
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The L2 norm of all of `module`'s gradients in `grads` taken together (summed in the
/// backend's float type, then square-rooted in f64).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm::<B> { grads, sum: None };
    module.visit(&mut v);
    v.sum.map_or(0.0, |s| s.into_scalar().elem::<f64>().sqrt())
}

/// Scales every gradient by `max_norm / ‖g‖` if the global norm `‖g‖` exceeds `max_norm`;
/// returns the norm before clipping. Non-finite norms are returned without scaling anything.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_norm::<B, M>(module, grads);
    if norm.is_finite() && norm > max_norm {
        let mut v = Scale { grads, factor: max_norm / norm };
        module.visit::<Scale<'_>>(&mut v);
    }
    norm
}
