//! Resumable checkpoints, written atomically.
//!
//! A checkpoint directory holds:
//! - `config.json` + `model.safetensors`: the model in HF layout, f32 (so resuming is exact), via
//!   `QwenModel::save` on the inner backend;
//! - `adapter/`, when the model carries LoRA adapters: them, in PEFT's layout (the base weights
//!   above are then frozen and never change);
//! - `optimizer.bin`: the AdamW state (moments and per-parameter time) of each parameter in the
//!   module's visiting order ([`Stepper::save`]) through `BinFileRecorder<FullPrecisionSettings>`;
//! - `trainer_state.json`: step, [`TrainConfig`] (schedule, optimizer settings, seed), the data
//!   loader's [`LoaderState`], the RoPE convention, the parameter count;
//! - `checksums.json`: sha256 and size of every other file, written last.
//!
//! Nothing in it depends on burn's parameter ids (random per process) or on hash-map order: a run
//! resumed any number of times writes the same bytes as one that never stopped.
//!
//! Atomicity: everything is written into `DIR.tmp-<pid>` and synced; then an existing `DIR` is
//! renamed to `DIR.old-<pid>`, the new one renamed to `DIR`, and the old one removed. A crash
//! leaves either the old or the new checkpoint under `DIR` (or, between the two renames, the old
//! one under `DIR.old-<pid>`). [`Trainer::resume`] loads only a checkpoint whose checksums verify,
//! falling back to an intact `DIR.old-*` ([`crate::persist::intact_checkpoint`]).

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use qwen_context::RopeConvention;
use qwen_data::LoaderState;
use qwen_model::SaveDtype;

use crate::error::{Result, TrainError};
use crate::persist::{
    fault_point, load_trainable, read_json, resume_dir, write_dir_atomically, write_json, ADAPTER_DIR,
};
use crate::step::{Stepper, StepperState};
use crate::trainer::{TrainConfig, Trainer};

/// File name of the trainer state inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// File stem of the optimizer record (the recorder adds `.bin`).
pub const OPTIMIZER_FILE: &str = "optimizer";
const FORMAT_VERSION: u32 = 2;

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
    /// The optimizer record's parameter count and layout.
    pub optimizer: StepperState,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Saves everything [`Trainer::resume`] needs into `dir`, atomically (see the module docs).
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>, loader: Option<LoaderState>) -> Result<()> {
        write_dir_atomically(dir, |tmp| {
            let model = self.valid_model();
            model.save(tmp, SaveDtype::F32)?;
            if model.has_lora() {
                // The adapters, in PEFT's layout; the base above is frozen (`load_trainable` puts
                // them back and freezes it again).
                model.save_adapter(tmp.join(ADAPTER_DIR), "..")?;
            }
            fault_point("model-written");
            let saved = self.stepper.save(&self.model.model, tmp.join(OPTIMIZER_FILE))?;
            fault_point("optimizer-written");
            let state = TrainerState {
                format_version: FORMAT_VERSION,
                step: saved.step,
                config: self.config,
                loader,
                convention: self.model.convention,
                optimizer: saved,
            };
            write_json(tmp.join(STATE_FILE), &state)
        })
    }

    /// Rebuilds the trainer saved in `dir`: model, optimizer state, step, config; also returns
    /// the saved data-loader state. Only a checkpoint whose checksums verify is loaded: `dir`, or
    /// the intact previous one an interrupted write left beside it
    /// ([`crate::persist::intact_checkpoint`]).
    ///
    /// # Errors
    /// [`TrainError::Corrupt`] when no intact checkpoint is there, [`TrainError::Config`] when
    /// there is none at all, [`TrainError::Mismatch`] for another format.
    pub fn resume(dir: impl AsRef<Path>, device: &B::Device) -> Result<(Self, Option<LoaderState>)> {
        let dir = &resume_dir(dir)?;
        let path = dir.join(STATE_FILE);
        let value: serde_json::Value = read_json(&path)?;
        let format = value.get("format_version").and_then(serde_json::Value::as_u64);
        if format != Some(FORMAT_VERSION.into()) {
            return Err(TrainError::Mismatch(format!(
                "trainer state format {format:?} (this build reads {FORMAT_VERSION})"
            )));
        }
        let state: TrainerState =
            serde_json::from_value(value).map_err(|source| TrainError::State { path: path.clone(), source })?;
        state.config.validate()?;
        let model = load_trainable::<B>(dir, device, state.convention, state.config.precision)?;
        let (optim, schedule) = (state.config.optim, state.config.schedule);
        let stepper = Stepper::load(optim, schedule, &state.optimizer, dir.join(OPTIMIZER_FILE), &model.model, device)?;
        Ok((Self { model, stepper, config: state.config }, state.loader))
    }
}
