//! Arbitrary bytes as `trainer_state.json`, the file `Trainer::resume` reads (step, training
//! config, data-loader state, optimizer layout): a typed error, or a state that validates and
//! writes back to JSON that reads to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_train::checkpoint::TrainerState;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = serde_json::from_slice::<TrainerState>(data) else { return };
    // What resume accepts must be what a later save can write back (JSON has no inf or NaN).
    if state.config.validate().is_err() {
        return;
    }
    let json = serde_json::to_vec(&state).unwrap();
    let again: TrainerState = serde_json::from_slice(&json).expect("a written state reads back");
    assert_eq!(format!("{again:?}"), format!("{state:?}"));
});
