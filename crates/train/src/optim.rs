//! AdamW as the Qwen report sets it (β1 0.9, β2 0.95, ε 1e-8, weight decay 0.1), with decay on
//! matrices only, and clipping by the global gradient norm.
//!
//! burn 0.21 has neither parameter groups nor global-norm clipping (its
//! `GradientClippingConfig::Norm` clips each tensor on its own), so this module:
//!
//! - runs burn's [`AdamW`] with `weight_decay = 0` (the adaptive update and its state, which
//!   burn's records save and load), and
//! - applies the decoupled decay itself, `p ← p · (1 − lr · wd)`, to parameters of rank ≥ 2
//!   (projection, embedding and head matrices), before the Adam update, which is the order burn's
//!   own AdamW uses. Rank-1 parameters (RMSNorm gammas, Q/K/V biases) are not decayed.
//! - computes `‖g‖₂` over every gradient of the module and scales all of them by
//!   `max_norm / ‖g‖` when it is larger ([`clip_global_norm`]).

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use qwen_model::Qwen;

use crate::error::{Result, TrainError};

/// burn's AdamW over the Qwen module.
pub type QwenOptimizer<B> = OptimizerAdaptor<AdamW, Qwen<B>, B>;

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
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { beta_1: 0.9, beta_2: 0.95, epsilon: 1e-8, weight_decay: 0.1, clip_norm: Some(1.0) }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..1.0).contains(&self.beta_1)
            && (0.0..1.0).contains(&self.beta_2)
            && self.epsilon > 0.0
            && self.weight_decay >= 0.0
            && self.clip_norm.is_none_or(|c| c > 0.0 && c.is_finite());
        if ok {
            Ok(())
        } else {
            Err(TrainError::Config(format!("optimizer settings out of range: {self:?}")))
        }
    }

    /// burn's AdamW with these moments and no decay of its own (see the module docs).
    pub fn init<B: AutodiffBackend>(&self) -> QwenOptimizer<B> {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(0.0)
            .init::<B, Qwen<B>>()
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

struct Decay<'a> {
    grads: &'a GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Decay<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if D < 2 || self.grads.get::<B::InnerBackend, D>(param.id).is_none() {
            return param;
        }
        let factor = self.factor;
        param.map(|t| {
            let require_grad = t.is_require_grad();
            Tensor::from_inner(t.inner().mul_scalar(factor)).set_require_grad(require_grad)
        })
    }
}

/// Decoupled weight decay: multiplies every rank ≥ 2 parameter that has a gradient in `grads`
/// by `1 − lr · weight_decay`. Parameter ids are kept, so the optimizer state still matches.
pub fn apply_weight_decay<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    grads: &GradientsParams,
    lr: f64,
    weight_decay: f64,
) -> M {
    let factor = 1.0 - lr * weight_decay;
    if factor == 1.0 {
        return module;
    }
    module.map(&mut Decay { grads, factor })
}
