//! Arbitrary bytes as the JSON Lines files of SFT (conversations) and DPO/reward training
//! (preference pairs): each record is a typed error (naming its line) or a record that keeps the
//! reader's promises; a line past the length limit is a typed error, never a read of the whole
//! line into memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwen_data::{ChatJsonl, DataError, PreferenceJsonl};
use qwen_tokenizer::Role;

fn check_error(e: &DataError) {
    assert!(
        matches!(e, DataError::MalformedJsonl { .. } | DataError::LineTooLong { .. } | DataError::Io { .. }),
        "{e}"
    );
}

fuzz_target!(|data: &[u8]| {
    for record in ChatJsonl::from_reader("fuzz.jsonl", std::io::Cursor::new(data.to_vec())) {
        match record {
            Ok(r) => {
                assert!(!r.messages.is_empty());
                assert!(r.messages.iter().all(|m| m.role != Role::System));
            }
            Err(e) => check_error(&e),
        }
    }
    for record in PreferenceJsonl::from_reader("fuzz.jsonl", std::io::Cursor::new(data.to_vec())) {
        match record {
            Ok(r) => assert_eq!(r.prompt.last().map(|m| m.role), Some(Role::User)),
            Err(e) => check_error(&e),
        }
    }
});
