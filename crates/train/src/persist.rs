//! The pieces every resumable checkpoint is made of, for the pretraining [`Trainer`](crate::Trainer)
//! and for any other training run (the alignment stages):
//!
//! - [`write_dir_atomically`]: a checkpoint folder is written into `DIR.tmp-<pid>` and renamed into
//!   place; an existing `DIR` is first renamed to `DIR.old-<pid>` and removed after. A crash leaves
//!   either the old or the new folder under `DIR` (or, between the two renames, the old one under
//!   `DIR.old-<pid>`). [`write_file_atomically`] does the same for one file.
//! - [`write_json`] / [`read_json`]: state files, with typed errors naming the file.
//! - [`param_ids`] / [`with_param_ids`]: burn keys optimizer state by parameter id and a module
//!   loaded from safetensors gets fresh ids, so a checkpoint lists the ids in the module's
//!   (deterministic) visiting order and resuming gives them back.
//! - [`load_trainable`]: a Qwen language model from a checkpoint folder, on the autodiff backend,
//!   trainable, with its saved parameter ids.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use qwen_context::RopeConvention;
use qwen_model::{Precision, Qwen, QwenModel};

use crate::error::{io, Result, TrainError};

struct CollectIds(Vec<ParamId>);

impl<B: Backend> ModuleVisitor<B> for CollectIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.id);
    }
}

struct AssignIds<'a> {
    ids: &'a [u64],
    next: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for AssignIds<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, value, mapper) = param.consume();
        // Counted past the end: the caller compares `next` with the number of ids.
        let id = self.ids.get(self.next).map(|&v| ParamId::from(v)).unwrap_or_default();
        self.next += 1;
        // Loaded weights are not marked trainable; every parameter of a trained module is.
        Param::from_mapped_value(id, value.require_grad(), mapper)
    }
}

/// `module`'s parameter ids in visiting order.
pub fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<u64> {
    let mut ids = CollectIds(Vec::new());
    module.visit(&mut ids);
    ids.0.iter().map(|id| id.val()).collect()
}

/// `module` with `ids` as its parameter ids (in visiting order), every parameter trainable.
///
/// # Errors
/// [`TrainError::Mismatch`] when the module has a different number of parameters.
pub fn with_param_ids<B: AutodiffBackend, M: Module<B>>(module: M, ids: &[u64]) -> Result<M> {
    let mut assign = AssignIds { ids, next: 0 };
    let module = module.map(&mut assign);
    if assign.next != ids.len() {
        return Err(TrainError::Mismatch(format!(
            "the model has {} parameters, the checkpoint lists {}",
            assign.next,
            ids.len()
        )));
    }
    Ok(module)
}

/// `DIR` with `.{tag}-<pid>` appended to its last component.
fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| TrainError::Config(format!("checkpoint path {} has no final component", path.display())))?;
    let mut name = name.to_os_string();
    name.push(format!(".{tag}-{}", std::process::id()));
    Ok(path.with_file_name(name))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    Ok(())
}

/// Calls `write` on a fresh temporary folder beside `dir`, then puts that folder in place of `dir`
/// (see the module docs). When `write` fails, `dir` is untouched and the temporary folder removed.
/// Generic over the error type so that other crates' writers (with their own errors) fit.
pub fn write_dir_atomically<E: From<TrainError>>(
    dir: impl AsRef<Path>,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dir = dir.as_ref();
    let tmp = sibling(dir, "tmp")?;
    remove_dir_if_present(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = sibling(dir, "old")?;
        remove_dir_if_present(&old)?;
        std::fs::rename(dir, &old).map_err(io(dir))?;
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
    }
    Ok(())
}

/// Writes `bytes` to `path.tmp-<pid>` and renames it to `path`.
pub fn write_file_atomically(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let tmp = sibling(path, "tmp")?;
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `value` as pretty JSON in `path` (atomically).
pub fn write_json<T: Serialize>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let path = path.as_ref();
    let json = serde_json::to_vec_pretty(value).map_err(|source| TrainError::State { path: path.into(), source })?;
    write_file_atomically(path, &json)
}

/// The JSON value in `path`.
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| TrainError::State { path: path.into(), source })
}

/// The language model saved (f32, by `QwenModel::save`) in `dir`, on the autodiff backend, every
/// parameter trainable and given the saved `ids`, with the run's `convention` and `precision`.
pub fn load_trainable<B: AutodiffBackend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
    ids: &[u64],
    convention: RopeConvention,
    precision: Precision,
) -> Result<QwenModel<B>> {
    let inner = qwen_model::load::<B::InnerBackend>(dir, device)?;
    let model = with_param_ids::<B, _>(Qwen::<B>::from_inner(inner.model), ids)?;
    Ok(QwenModel { config: inner.config, model, convention, precision })
}
