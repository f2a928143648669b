//! Data parallelism with burn-collective (feature `collective`): one [`Trainer`] replica per
//! device, each on its own thread, every step's gradients summed across replicas by burn's
//! all-reduce. No communication code of our own.
//!
//! All replicas must start from the same weights and parameter ids (clone one model, then move each
//! clone to its device: burn's all-reduce matches gradients by parameter id) and call the same
//! methods in the same order. A step: each replica counts the targets of its own micro-batches; the
//! counts are all-reduced into the global count; each replica's gradients of `sum NLL / global count`
//! are all-reduced (summed), which gives exactly the token-weighted gradient of all micro-batches
//! together; then every replica clips and applies the same AdamW update, so the replicas stay equal.
//! A non-finite loss anywhere becomes [`TrainError::NonFinite`] on every replica, after the same
//! collective calls, so no replica is left waiting.
//!
//! On one machine burn-collective all-reduces between devices in process (on CUDA through its own
//! transfers); across machines it has a global orchestrator (`CollectiveConfig`'s node and global
//! addresses), which this crate passes through but has not exercised.

use burn::collective::{finish_collective, register, CollectiveConfig, PeerId, ReduceOperation};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};

use qwen_data::TokenBatch;

use crate::error::{Result, TrainError};
use crate::trainer::{count_targets, StepStats, Trainer};

fn collective_err(e: burn::collective::CollectiveError) -> TrainError {
    TrainError::Collective(format!("{e:?}"))
}

/// Sums a scalar across the replicas.
fn all_reduce_scalar<B: AutodiffBackend>(peer: PeerId, value: f64, device: &B::Device) -> Result<f64> {
    let t = Tensor::<B::InnerBackend, 1>::from_floats([value as f32], device);
    let summed =
        burn::collective::all_reduce::<B::InnerBackend>(peer, t.into_primitive().tensor(), ReduceOperation::Sum)
            .map_err(collective_err)?;
    Ok(Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(summed)).into_scalar().elem::<f64>())
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Registers this replica as `peer` of a collective of `replicas` devices (once, before the
    /// first [`Trainer::train_step_collective`]; every replica on its own thread).
    pub fn join_collective(&self, peer: PeerId, replicas: usize) -> Result<()> {
        let config = CollectiveConfig::default().with_num_devices(replicas);
        register::<B::InnerBackend>(peer, self.model.device(), config).map_err(collective_err)
    }

    /// Leaves the collective (after the last step).
    pub fn leave_collective(&self, peer: PeerId) -> Result<()> {
        finish_collective::<B::InnerBackend>(peer).map_err(collective_err)
    }

    /// One data-parallel optimizer step: this replica's `batches`, gradients summed with the other
    /// replicas' (see the module docs). The returned loss and token count are the global ones.
    pub fn train_step_collective(&mut self, batches: &[TokenBatch], peer: PeerId) -> Result<StepStats> {
        let device = self.model.device();
        let local = count_targets(batches)?;
        // f32 holds counts exactly up to 2^24 targets per step.
        let total = all_reduce_scalar::<B>(peer, local as f64, &device)?.round() as usize;
        if total == 0 {
            return Err(TrainError::Batch("every target of every replica is ignored".into()));
        }
        let (nll, grads) = self.nll_and_grads(batches, total)?;
        let nll = all_reduce_scalar::<B>(peer, nll, &device)?;
        let grads = grads.all_reduce::<B::InnerBackend>(peer, ReduceOperation::Sum).map_err(collective_err)?;
        self.apply((nll / total as f64) as f32, grads, total)
    }
}
