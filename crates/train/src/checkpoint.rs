//! Resumable checkpoints, written atomically.
//!
//! A checkpoint directory holds:
//! - `config.json` + `model.safetensors`: the model in HF layout, f32 (so resuming is exact), via
//!   `QwenModel::save` on the inner backend;
//! - `optimizer.bin`: burn's AdamW record (moments and per-parameter time) through
//!   `BinFileRecorder<FullPrecisionSettings>`;
//! - `trainer_state.json`: step, [`TrainConfig`] (schedule, optimizer settings, seed), the data
//!   loader's [`LoaderState`], the RoPE convention, and the parameter ids in visiting order.
//!
//! burn's optimizer record is keyed by parameter id, and a model loaded from safetensors gets
//! fresh ids, so [`Trainer::resume`] gives the loaded parameters back their saved ids (in the
//! module's deterministic visiting order) before loading the record.
//!
//! Atomicity: everything is written into `DIR.tmp-<pid>`; then an existing `DIR` is renamed to
//! `DIR.old-<pid>`, the new one renamed to `DIR`, and the old one removed. A crash leaves either
//! the old or the new checkpoint under `DIR` (or, between the two renames, the old one under
//! `DIR.old-<pid>`).

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use qwen_context::RopeConvention;
use qwen_data::LoaderState;
use qwen_model::{Qwen, QwenModel, SaveDtype};

use crate::error::{io, Result, TrainError};
use crate::trainer::{TrainConfig, Trainer};

/// File name of the trainer state inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// File stem of the optimizer record (the recorder adds `.bin`).
pub const OPTIMIZER_FILE: &str = "optimizer";
const FORMAT_VERSION: u32 = 1;

/// Contents of `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format_version: u32,
    /// Optimizer steps taken.
    pub step: u64,
    pub config: TrainConfig,
    /// Where the data loader stands, if the caller gave it.
    pub loader: Option<LoaderState>,
    pub convention: RopeConvention,
    /// Parameter ids in the module's visiting order (keys of the optimizer record).
    pub param_ids: Vec<u64>,
}

struct CollectIds(Vec<ParamId>);

impl<B: AutodiffBackend> ModuleVisitor<B> for CollectIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.id);
    }
}

struct AssignIds {
    ids: Vec<ParamId>,
    next: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for AssignIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, value, mapper) = param.consume();
        // Counted past the end: the caller compares `next` with the number of ids.
        let id = self.ids.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        // Loaded weights are not marked trainable; every parameter of this model is.
        Param::from_mapped_value(id, value.require_grad(), mapper)
    }
}

fn sibling(dir: &Path, tag: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| TrainError::Config(format!("checkpoint path {} has no final component", dir.display())))?;
    let mut name = name.to_os_string();
    name.push(format!(".{tag}-{}", std::process::id()));
    Ok(dir.with_file_name(name))
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Saves everything [`Trainer::resume`] needs into `dir`, atomically (see the module docs).
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>, loader: Option<LoaderState>) -> Result<()> {
        let dir = dir.as_ref();
        let tmp = sibling(dir, "tmp")?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

        self.valid_model().save(&tmp, SaveDtype::F32)?;

        let opt_path = tmp.join(OPTIMIZER_FILE);
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(self.optim.to_record(), opt_path.clone())
            .map_err(|e| TrainError::Record { path: opt_path, reason: e.to_string() })?;

        let mut ids = CollectIds(Vec::new());
        self.model.model.visit::<CollectIds>(&mut ids);
        let state = TrainerState {
            format_version: FORMAT_VERSION,
            step: self.step,
            config: self.config,
            loader,
            convention: self.model.convention,
            param_ids: ids.0.iter().map(|id| id.val()).collect(),
        };
        let state_path = tmp.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(&state)
            .map_err(|source| TrainError::State { path: state_path.clone(), source })?;
        std::fs::write(&state_path, json).map_err(io(&state_path))?;

        if dir.exists() {
            let old = sibling(dir, "old")?;
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            std::fs::rename(dir, &old).map_err(io(dir))?;
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
        }
        Ok(())
    }

    /// Rebuilds the trainer saved in `dir`: model, optimizer state, step, config; also returns
    /// the saved data-loader state.
    pub fn resume(dir: impl AsRef<Path>, device: &B::Device) -> Result<(Self, Option<LoaderState>)> {
        let dir = dir.as_ref();
        let state_path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&state_path).map_err(io(&state_path))?;
        let state: TrainerState =
            serde_json::from_slice(&bytes).map_err(|source| TrainError::State { path: state_path.clone(), source })?;
        if state.format_version != FORMAT_VERSION {
            return Err(TrainError::Mismatch(format!("trainer state format {}", state.format_version)));
        }
        state.config.validate()?;

        let inner = qwen_model::load::<B::InnerBackend>(dir, device)?;
        let module = Qwen::<B>::from_inner(inner.model);
        let ids: Vec<ParamId> = state.param_ids.iter().map(|&v| ParamId::from(v)).collect();
        let mut assign = AssignIds { ids, next: 0 };
        let module = module.map::<AssignIds>(&mut assign);
        if assign.next != assign.ids.len() {
            return Err(TrainError::Mismatch(format!(
                "the model has {} parameters, the checkpoint lists {}",
                assign.next,
                assign.ids.len()
            )));
        }
        let model = QwenModel {
            config: inner.config,
            model: module,
            convention: state.convention,
            precision: state.config.precision,
        };

        let opt_path = dir.join(OPTIMIZER_FILE);
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(opt_path.clone(), device)
            .map_err(|e| TrainError::Record { path: opt_path, reason: e.to_string() })?;
        let optim = state.config.optim.init::<B>().load_record(record);

        Ok((Self { model, optim, config: state.config, step: state.step }, state.loader))
    }
}
