mod common;

use common::TempDir;
use qwen_data::{ChatJsonl, DataError, PreferenceJsonl, PromptJsonl};
use qwen_tokenizer::{Message, Role};

#[test]
fn chat_records_in_both_layouts_with_errors_by_line() {
    let dir = TempDir::new("chat");
    let p = dir.write(
        "chat.jsonl",
        concat!(
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
            "\n\n",
            r#"{"id": "q1", "conversations": [{"from": "user", "value": "2+2?"}, {"from": "assistant", "value": "4"}]}"#,
            "\n",
            "not json\n",
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "late"}]}"#,
            "\n",
            r#"{"messages": [{"role": "robot", "content": "x"}]}"#,
            "\n",
            r#"{"text": "no messages"}"#,
            "\n",
            r#"{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}"#,
            "\n",
        ),
    );
    let all: Vec<_> = ChatJsonl::open(&p).unwrap().collect();
    assert_eq!(all.len(), 7, "the blank line is skipped");
    let first = all[0].as_ref().unwrap();
    assert_eq!(first.system.as_deref(), Some("Be brief."));
    assert_eq!(first.messages, vec![Message::new(Role::User, "hi"), Message::new(Role::Assistant, "hello")]);
    let second = all[1].as_ref().unwrap();
    assert_eq!((second.system.as_deref(), second.messages[1].content.as_str()), (None, "4"));
    for (i, line) in [(2, 4), (3, 5), (4, 6), (5, 7)] {
        match &all[i] {
            Err(DataError::MalformedJsonl { line: l, .. }) => assert_eq!(*l, line, "record {i}"),
            other => panic!("record {i}: {other:?}"),
        }
    }
    let last = all[6].as_ref().unwrap();
    assert_eq!(last.messages.iter().map(|m| m.role).collect::<Vec<_>>(), vec![Role::User, Role::Assistant]);
    assert!(matches!(ChatJsonl::open(dir.path().join("missing.jsonl")), Err(DataError::Io { .. })));
}

#[test]
fn preference_records_with_string_or_message_prompts() {
    let dir = TempDir::new("prefs");
    let p = dir.write(
        "prefs.jsonl",
        concat!(
            r#"{"prompt": "2+2?", "chosen": "4", "rejected": "5"}"#,
            "\n",
            r#"{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}"#,
            "\n",
            r#"{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a", "rejected": "b"}"#,
            "\n",
            r#"{"prompt": "q", "chosen": "a"}"#,
            "\n",
        ),
    );
    let all: Vec<_> = PreferenceJsonl::open(&p).unwrap().collect();
    let a = all[0].as_ref().unwrap();
    assert_eq!(
        (a.prompt.clone(), a.chosen.as_str(), a.rejected.as_str()),
        (vec![Message::new(Role::User, "2+2?")], "4", "5")
    );
    let b = all[1].as_ref().unwrap();
    assert_eq!((b.system.as_deref(), b.prompt.len()), (Some("s"), 1));
    assert!(matches!(all[2], Err(DataError::MalformedJsonl { line: 3, .. })), "a prompt must end with the user");
    assert!(matches!(all[3], Err(DataError::MalformedJsonl { line: 4, .. })), "rejected is missing");
}

#[test]
fn prompt_records_with_optional_answers_and_errors_by_line() {
    let dir = TempDir::new("prompts");
    let p = dir.write(
        "prompts.jsonl",
        concat!(
            r#"{"prompt": "2+2?", "answer": "4"}"#,
            "\n\n",
            r#"{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}"#,
            "\n",
            r#"{"prompt": "q", "answer": 4}"#,
            "\n",
            r#"{"question": "q"}"#,
            "\n",
            "not json\n",
        ),
    );
    let all: Vec<_> = PromptJsonl::open(&p).unwrap().collect();
    assert_eq!(all.len(), 5);
    let a = all[0].as_ref().unwrap();
    assert_eq!(
        (a.prompt.clone(), a.answer.as_deref(), a.system.as_deref()),
        (vec![Message::new(Role::User, "2+2?")], Some("4"), None)
    );
    let b = all[1].as_ref().unwrap();
    assert_eq!((b.system.as_deref(), b.prompt.len(), b.answer.as_deref()), (Some("s"), 1, None));
    assert!(matches!(all[2], Err(DataError::MalformedJsonl { line: 4, .. })), "the answer must be a string");
    assert!(matches!(all[3], Err(DataError::MalformedJsonl { line: 5, .. })), "no prompt");
    assert!(matches!(all[4], Err(DataError::MalformedJsonl { line: 6, .. })), "not JSON");
}
