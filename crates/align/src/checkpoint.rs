//! What the alignment trainers' checkpoints are made of: a trained model (a policy in HF Qwen2
//! layout, or a score model in HF sequence-classification layout, both f32 so that resuming is
//! exact), its optimizer record (in the module's visiting order, independent of burn's parameter
//! ids) and a state file with the update count, the RoPE convention and the precision. Built on
//! `qwen_train::persist` (the same pieces as the pretraining checkpoints); the trainers write whole
//! checkpoints atomically, with `checksums.json`, and load only intact ones
//! ([`qwen_train::persist::resume_dir`]).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use qwen_context::RopeConvention;
use qwen_model::{Precision, Qwen, QwenModel, SaveDtype};
use qwen_train::persist::{fault_point, load_trainable, read_json, with_stable_ids_in, write_json};
use qwen_train::{OptimConfig, Schedule, Stepper, StepperState};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::reward::ScoreModel;

/// A trained score model with its stepper.
pub(crate) type TrainedScore<B> = (ScoreModel<B>, Stepper<B, ScoreModel<B>>);
/// A trained policy with its stepper.
pub(crate) type TrainedPolicy<B> = (QwenModel<B>, Stepper<B, Qwen<B>>);

/// Name of the state file in a model's checkpoint folder.
pub const STATE_FILE: &str = "trainer_state.json";
/// File stem of the optimizer record (the recorder adds `.bin`).
pub const OPTIMIZER_FILE: &str = "optimizer";

/// What a trained model's checkpoint records besides its weights and optimizer state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ModelState {
    stepper: StepperState,
    convention: RopeConvention,
    precision: Precision,
}

fn save_state<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    stepper: &Stepper<B, M>,
    convention: RopeConvention,
    precision: Precision,
    dir: &Path,
) -> Result<()> {
    let stepper = stepper.save(module, dir.join(OPTIMIZER_FILE))?;
    fault_point("optimizer-written");
    Ok(write_json(dir.join(STATE_FILE), &ModelState { stepper, convention, precision })?)
}

/// Saves a score model and its stepper into `dir.join(sub)`.
pub(crate) fn save_score_model<B: AutodiffBackend>(
    model: &ScoreModel<B>,
    stepper: &Stepper<B, ScoreModel<B>>,
    dir: &Path,
    sub: &str,
) -> Result<()> {
    let dir = dir.join(sub);
    model.valid().save(&dir, SaveDtype::F32)?;
    fault_point("model-written");
    save_state(model, stepper, model.trunk.convention, model.trunk.precision, &dir)
}

/// The [`stable_ids_in`](qwen_train::persist::stable_ids_in) namespace of score models.
const SCORE_ID_NAMESPACE: u64 = 1;

/// What [`save_score_model`] wrote: the model trainable, with stable parameter ids and its
/// optimizer state back.
pub(crate) fn load_score_model<B: AutodiffBackend>(
    dir: &Path,
    sub: &str,
    optim: OptimConfig,
    schedule: Schedule,
    device: &B::Device,
) -> Result<TrainedScore<B>> {
    let dir = dir.join(sub);
    let state: ModelState = read_json(dir.join(STATE_FILE))?;
    let inner = ScoreModel::<B::InnerBackend>::load(&dir, device)?;
    // Not the policy's ids: PPO trains a value model beside its policy in one process.
    let mut model = with_stable_ids_in::<B, _>(ScoreModel::<B>::from_inner(inner), SCORE_ID_NAMESPACE);
    model.trunk.convention = state.convention;
    model.trunk.precision = state.precision;
    let stepper = Stepper::load(optim, schedule, &state.stepper, dir.join(OPTIMIZER_FILE), &model, device)?;
    Ok((model, stepper))
}

/// Saves a policy and its stepper into `dir.join(sub)`.
pub(crate) fn save_policy<B: AutodiffBackend>(
    policy: &QwenModel<B>,
    stepper: &Stepper<B, Qwen<B>>,
    dir: &Path,
    sub: &str,
) -> Result<()> {
    let dir = dir.join(sub);
    let valid = policy.valid();
    valid.save(&dir, SaveDtype::F32)?;
    if valid.has_lora() {
        // The adapters beside the frozen base; `load_trainable` attaches them and freezes the base.
        valid.save_adapter(dir.join(qwen_train::persist::ADAPTER_DIR), "..")?;
    }
    fault_point("model-written");
    save_state(&policy.model, stepper, policy.convention, policy.precision, &dir)
}

/// What [`save_policy`] wrote: the policy trainable, with stable parameter ids and its optimizer
/// state back.
pub(crate) fn load_policy<B: AutodiffBackend>(
    dir: &Path,
    sub: &str,
    optim: OptimConfig,
    schedule: Schedule,
    device: &B::Device,
) -> Result<TrainedPolicy<B>> {
    let dir = dir.join(sub);
    let state: ModelState = read_json(dir.join(STATE_FILE))?;
    let policy = load_trainable::<B>(&dir, device, state.convention, state.precision)?;
    let stepper = Stepper::load(optim, schedule, &state.stepper, dir.join(OPTIMIZER_FILE), &policy.model, device)?;
    Ok((policy, stepper))
}
