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
//! transfers); across machines, a replica joins with [`Trainer::join_node`] and its node's
//! [`NodeGroup`]: burn-collective's global mode ([`crate::multinode`]), in one registration round
//! per all-reduce ([`NodeMember`]; a step's gradients and loss then go in one concatenated tensor),
//! every collective call bounded by the node's timeout ([`Peer::timeout`]).
//!
//! [`Replicas`] runs replicas 1..N on their own threads for a caller whose own trainer is replica
//! 0 (what [`crate::run`] does): it starts them from that trainer (or its checkpoint), feeds each
//! step's micro-batches through channels and joins them at the end.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use burn::collective::{finish_collective, register, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};

use qwen_data::TokenBatch;
use qwen_model::QwenModel;

use crate::error::{Result, TrainError};
use crate::multinode::{bounded, NodeConfig, NodeGroup, NodeMember};
use crate::trainer::{count_targets, StepStats, Trainer};

fn collective_err(e: burn::collective::CollectiveError) -> TrainError {
    TrainError::Collective(format!("{e:?}"))
}

/// A replica's place in the collective: its peer id, and how long any collective call may wait
/// (`None`: without a bound, as within one process); in a multi-node run, its [`NodeMember`].
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: PeerId,
    pub timeout: Option<Duration>,
    node: Option<Arc<NodeMember>>,
}

impl From<PeerId> for Peer {
    fn from(id: PeerId) -> Self {
        Self { id, timeout: None, node: None }
    }
}

/// Sums a float tensor across the replicas (in a multi-node run, one registration round).
fn all_reduce_tensor<B: AutodiffBackend>(
    peer: &Peer,
    t: Tensor<B::InnerBackend, 1>,
    device: &B::Device,
) -> Result<Tensor<B::InnerBackend, 1>> {
    let t = t.into_primitive().tensor();
    let summed = match &peer.node {
        Some(member) => member.all_reduce::<B::InnerBackend>(device, t)?,
        None => {
            let id = peer.id;
            bounded("all-reduce", peer.timeout, move || {
                burn::collective::all_reduce::<B::InnerBackend>(id, t, ReduceOperation::Sum).map_err(collective_err)
            })?
        }
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
}

/// Sums a scalar across the replicas.
fn all_reduce_scalar<B: AutodiffBackend>(peer: &Peer, value: f64, device: &B::Device) -> Result<f64> {
    let t = Tensor::<B::InnerBackend, 1>::from_floats([value as f32], device);
    Ok(all_reduce_tensor::<B>(peer, t, device)?.into_scalar().elem::<f64>())
}

/// Takes every gradient of a module out of `grads`, flattened, in visiting order.
struct Pack<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    layout: Vec<(ParamId, Vec<usize>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Pack<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let dims = g.dims();
            self.layout.push((param.id, dims.to_vec()));
            self.parts.push(g.reshape([dims.iter().product::<usize>()]));
        }
    }
}

/// The inverse of [`Pack`] (visiting the same module): slices `flat` back into gradients of the
/// packed shapes.
struct Unpack<'a, B: AutodiffBackend> {
    flat: &'a Tensor<B::InnerBackend, 1>,
    layout: &'a [(ParamId, Vec<usize>)],
    next: usize,
    offset: usize,
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unpack<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((id, dims)) = self.layout.get(self.next) else { return };
        if *id != param.id || dims.len() != D {
            return;
        }
        let n = dims.iter().product::<usize>();
        let shape: [usize; D] = std::array::from_fn(|i| dims[i]);
        let g = self.flat.clone().narrow(0, self.offset, n).reshape(shape);
        self.grads.register::<B::InnerBackend, D>(param.id, g);
        (self.next, self.offset) = (self.next + 1, self.offset + n);
    }
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Registers this replica as `peer` of a collective of `replicas` devices (once, before the
    /// first [`Trainer::train_step_collective`]; every replica on its own thread).
    pub fn join_collective(&self, peer: PeerId, replicas: usize) -> Result<()> {
        let config = CollectiveConfig::default().with_num_devices(replicas);
        register::<B::InnerBackend>(peer, self.model.device(), config).map_err(collective_err)
    }

    /// Registers this replica as local replica `local` of `group`'s node in a multi-node
    /// collective (every local replica on its own thread; returns once every node has joined;
    /// see [`NodeMember`]). The model must have the same parameter ids in every process
    /// ([`crate::persist::with_stable_ids`]: burn's all-reduce matches gradients by parameter id).
    ///
    /// # Errors
    /// [`TrainError::CollectiveTimeout`] when not every node joined within the node's timeout;
    /// [`TrainError::Collective`] when burn refuses; [`TrainError::NodeConfig`] for a bad `local`.
    pub fn join_node(&self, local: usize, group: &NodeGroup) -> Result<Peer> {
        let member = NodeMember::join::<B::InnerBackend>(group, local, &self.model.device())?;
        Ok(Peer { id: member.peer(), timeout: Some(group.config().timeout), node: Some(Arc::new(member)) })
    }

    /// Leaves the collective (after the last step).
    pub fn leave_collective(&self, peer: impl Into<Peer>) -> Result<()> {
        let peer = peer.into();
        if let Some(member) = &peer.node {
            return member.leave::<B::InnerBackend>();
        }
        let id = peer.id;
        bounded("finish", peer.timeout, move || finish_collective::<B::InnerBackend>(id).map_err(collective_err))
    }

    /// One data-parallel optimizer step: this replica's `batches`, gradients summed with the other
    /// replicas' (see the module docs). The returned loss and token count are the global ones.
    pub fn train_step_collective(&mut self, batches: &[TokenBatch], peer: impl Into<Peer>) -> Result<StepStats> {
        let peer = peer.into();
        let device = self.model.device();
        let local = count_targets(batches)?;
        // f32 holds counts exactly up to 2^24 targets per step.
        let total = all_reduce_scalar::<B>(&peer, local as f64, &device)?.round() as usize;
        if total == 0 {
            return Err(TrainError::Batch("every target of every replica is ignored".into()));
        }
        let (nll, grads) = self.nll_and_grads(batches, total)?;
        let (nll, grads) = if peer.node.is_some() {
            self.all_reduce_packed(&peer, nll, grads)?
        } else {
            let nll = all_reduce_scalar::<B>(&peer, nll, &device)?;
            let id = peer.id;
            let grads = bounded("gradient all-reduce", peer.timeout, move || {
                grads.all_reduce::<B::InnerBackend>(id, ReduceOperation::Sum).map_err(collective_err)
            })?;
            (nll, grads)
        };
        self.apply((nll / total as f64) as f32, grads, total)
    }

    /// Sums `nll` and `grads` across the replicas in one all-reduce: every gradient flattened and
    /// concatenated in the model's visiting order, `nll` last (the same element-wise sums as one
    /// all-reduce per parameter; a multi-node run pays one registration round per all-reduce).
    fn all_reduce_packed(&self, peer: &Peer, nll: f64, mut grads: GradientsParams) -> Result<(f64, GradientsParams)> {
        let device = self.model.device();
        let mut pack = Pack::<B> { grads: &mut grads, parts: Vec::new(), layout: Vec::new() };
        self.model.model.visit(&mut pack);
        let (mut parts, layout) = (pack.parts, pack.layout);
        parts.push(Tensor::from_floats([nll as f32], &device));
        let flat = all_reduce_tensor::<B>(peer, Tensor::cat(parts, 0), &device)?;
        let n = flat.dims()[0];
        let nll = flat.clone().narrow(0, n - 1, 1).into_scalar().elem::<f64>();
        let mut unpack =
            Unpack::<B> { flat: &flat, layout: &layout, next: 0, offset: 0, grads: GradientsParams::new() };
        self.model.model.visit(&mut unpack);
        Ok((nll, unpack.grads))
    }
}

/// A replica's input channel and thread.
type Worker = (Sender<Vec<TokenBatch>>, JoinHandle<Result<()>>);

/// The other data-parallel replicas (devices 1..N), each a [`Trainer`] on its own thread fed its
/// micro-batches through a channel; the caller's trainer is replica 0. With one device (and one
/// node), steps are plain [`Trainer::train_step`]s. With a [`NodeConfig`], these are one node's
/// replicas of a multi-node run.
pub struct Replicas<B: AutodiffBackend> {
    workers: Vec<Worker>,
    /// The caller's replica in the collective (`None` alone on one device).
    peer: Option<Peer>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> Replicas<B> {
    /// Starts replicas on `devices[1..]` (`devices[0]` is `trainer`'s) with `trainer`'s weights and
    /// parameter ids: a fork of its model, or, when `resume` names the checkpoint `trainer` was
    /// resumed from, that checkpoint. Registers `trainer` as peer 0 when there is more than one.
    pub fn start(trainer: &Trainer<B>, devices: &[B::Device], resume: Option<&Path>) -> Result<Self> {
        Self::start_on_node(trainer, devices, resume, None)
    }

    /// [`Replicas::start`] as one `node` of a multi-node run (`None`: alone), `node.devices` being
    /// `devices.len()`; returns once every node has joined. Every node must start from the same
    /// weights and parameter ids.
    pub fn start_on_node(
        trainer: &Trainer<B>,
        devices: &[B::Device],
        resume: Option<&Path>,
        node: Option<&NodeConfig>,
    ) -> Result<Self> {
        if devices.is_empty() {
            return Err(TrainError::Config("data parallelism needs at least one device".into()));
        }
        let n = devices.len();
        let group = match node {
            Some(node) => {
                if node.devices != n {
                    return Err(TrainError::NodeConfig(format!("{n} devices given for a node of {}", node.devices)));
                }
                Some(NodeGroup::new(node.clone())?)
            }
            None => None,
        };
        let mut workers = Vec::new();
        for (i, device) in devices.iter().enumerate().skip(1) {
            let (tx, rx) = channel::<Vec<TokenBatch>>();
            let device = device.clone();
            let model = trainer.model().clone();
            let config = *trainer.config();
            let resume = resume.map(PathBuf::from);
            let group = group.clone();
            let handle = std::thread::spawn(move || -> Result<()> {
                let mut t = match resume {
                    Some(dir) => Trainer::<B>::resume(&dir, &device)?.0,
                    None => Trainer::new(QwenModel { model: model.model.fork(&device), ..model }, config)?,
                };
                let peer = match &group {
                    Some(group) => t.join_node(i, group)?,
                    None => {
                        let id = PeerId::from(i as u32);
                        t.join_collective(id, n)?;
                        Peer::from(id)
                    }
                };
                while let Ok(batches) = rx.recv() {
                    t.train_step_collective(&batches, peer.clone())?;
                }
                t.leave_collective(peer)
            });
            workers.push((tx, handle));
        }
        let peer = match &group {
            Some(group) => Some(trainer.join_node(0, group)?),
            None if n > 1 => {
                trainer.join_collective(PeerId::from(0), n)?;
                Some(Peer::from(PeerId::from(0)))
            }
            None => None,
        };
        Ok(Self { workers, peer, _backend: std::marker::PhantomData })
    }

    /// Replicas in all on this node, the caller's included.
    pub fn len(&self) -> usize {
        self.workers.len() + 1
    }

    /// Always false: the caller's trainer is one.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One optimizer step: `batches[0]` for `trainer`, `batches[i]` for replica `i`.
    pub fn step(&self, trainer: &mut Trainer<B>, mut batches: Vec<Vec<TokenBatch>>) -> Result<StepStats> {
        if batches.len() != self.len() {
            return Err(TrainError::Batch(format!("{} batch lists for {} replicas", batches.len(), self.len())));
        }
        let mine = batches.remove(0);
        let Some(peer) = &self.peer else {
            return trainer.train_step(&mine);
        };
        for ((tx, _), b) in self.workers.iter().zip(batches) {
            tx.send(b).map_err(|_| TrainError::Collective("a replica stopped".into()))?;
        }
        trainer.train_step_collective(&mine, peer.clone())
    }

    /// Closes every channel (the replicas then leave the collective with `trainer`) and joins the
    /// threads; the first error of any replica is returned.
    pub fn finish(self, trainer: &Trainer<B>) -> Result<()> {
        let Some(peer) = self.peer else {
            return Ok(());
        };
        let (senders, handles): (Vec<_>, Vec<_>) = self.workers.into_iter().unzip();
        drop(senders);
        let mut result = trainer.leave_collective(peer);
        for handle in handles {
            let r = handle.join().map_err(|_| TrainError::Collective("a replica panicked".into())).and_then(|r| r);
            result = result.and(r);
        }
        result
    }
}
