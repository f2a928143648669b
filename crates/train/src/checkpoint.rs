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

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use qwen_context::RopeConvention;
use qwen_data::LoaderState;
use qwen_model::SaveDtype;

use crate::error::{Result, TrainError};
use crate::persist::{load_trainable, read_json, write_dir_atomically, write_json};
use crate::step::{Stepper, StepperState};
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

impl<B: AutodiffBackend> Trainer<B> {
    /// Saves everything [`Trainer::resume`] needs into `dir`, atomically (see the module docs).
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>, loader: Option<LoaderState>) -> Result<()> {
        write_dir_atomically(dir, |tmp| {
            self.valid_model().save(tmp, SaveDtype::F32)?;
            let saved = self.stepper.save(&self.model.model, tmp.join(OPTIMIZER_FILE))?;
            let state = TrainerState {
                format_version: FORMAT_VERSION,
                step: saved.step,
                config: self.config,
                loader,
                convention: self.model.convention,
                param_ids: saved.param_ids,
            };
            write_json(tmp.join(STATE_FILE), &state)
        })
    }

    /// Rebuilds the trainer saved in `dir`: model, optimizer state, step, config; also returns
    /// the saved data-loader state.
    pub fn resume(dir: impl AsRef<Path>, device: &B::Device) -> Result<(Self, Option<LoaderState>)> {
        let dir = dir.as_ref();
        let state: TrainerState = read_json(dir.join(STATE_FILE))?;
        if state.format_version != FORMAT_VERSION {
            return Err(TrainError::Mismatch(format!("trainer state format {}", state.format_version)));
        }
        state.config.validate()?;
        let model = load_trainable::<B>(dir, device, &state.param_ids, state.convention, state.config.precision)?;
        let saved = StepperState { step: state.step, param_ids: state.param_ids };
        let stepper =
            Stepper::load(state.config.optim, state.config.schedule, &saved, dir.join(OPTIMIZER_FILE), device)?;
        Ok((Self { model, stepper, config: state.config }, state.loader))
    }
}
