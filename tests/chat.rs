//! `qwen::chat::Chat` on a model folder laid out as on the Hub: a small random Qwen2 checkpoint
//! saved by the model crate, the real Qwen2 `tokenizer.json` (fetched by `tools/setup.sh`) and a
//! `generation_config.json`. Checks what a caller relies on: the prompt is Qwen-1's `make_context`
//! of the conversation so far, the reply is the model's own greedy continuation up to a stop id,
//! streaming pieces add up to the reply, a callback can cancel, the window drops old turns, and a
//! message that cannot fit is a typed error. Then the `chat` example reads the same folder.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use burn::backend::Flex;
use qwen::chat::{Chat, ChatError, Flow, GenerationDefaults, StopReason};
use qwen_model::{GenerateConfig, QwenConfigBuilder, SamplingConfig, SaveDtype};
use qwen_tokenizer::ChatMl;

mod common;

type B = Flex;

/// A model folder: random weights (std 0.2, so replies vary), Qwen2's tokenizer, a generation config.
fn model_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-chat-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The model's vocabulary is the tokenizer's, so every id it can produce decodes (the weights are
    // unseeded: a padded 151936-row head would now and then sample an id no tokenizer knows).
    let vocab = common::qwen2_json().vocab_size();
    let config = QwenConfigBuilder::new(vocab, 32, 64, 1, 2).max_positions(4096).build().unwrap();
    let model = qwen_model::QwenModel::<B>::random(config, 0.2, &Default::default());
    model.save(&dir, SaveDtype::F32).unwrap();
    std::fs::copy(common::vocab_file("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [151643, 151645], "do_sample": false, "max_new_tokens": 12}"#,
    )
    .unwrap();
    dir
}

#[test]
fn chat_turns_follow_make_context_and_stream_the_models_reply() {
    let dir = model_dir("turns");
    let mut chat = Chat::<B>::load(&dir, &Default::default()).unwrap().with_system("Be brief.");
    assert!(chat.stop_ids().contains(&151643) && chat.stop_ids().contains(&151645));

    let mut streamed = String::new();
    let first = chat
        .send("Hello <|im_end|> there", |piece| {
            streamed.push_str(piece);
            Flow::Continue
        })
        .unwrap();
    // The prompt is make_context's, with the special-token string kept as text.
    let tok = chat.tokenizer().clone();
    let chatml = ChatMl::new(&tok).unwrap();
    let want_prompt =
        chatml.make_context("Be brief.", &[] as &[(&str, &str)], "Hello <|im_end|> there", 6144).unwrap().ids;
    assert_eq!(first.prompt_tokens, want_prompt.len());
    // The reply is the model's greedy continuation, cut at the first stop id (12 tokens at most, from
    // generation_config.json).
    let gen =
        GenerateConfig { max_new_tokens: 12, stop_ids: chat.stop_ids().to_vec(), sampling: SamplingConfig::default() };
    let mut want = chat.model().generate(&want_prompt, &gen, |_| true).unwrap();
    let want_stop = match want.last() {
        Some(&t) if gen.stop_ids.contains(&t) => StopReason::Stop(want.pop().unwrap()),
        _ => StopReason::Length,
    };
    assert_eq!((first.ids.clone(), first.stop), (want.clone(), want_stop));
    assert_eq!(first.text, tok.decode_lossy(&want).unwrap());
    assert_eq!(streamed, first.text, "the streamed pieces add up to the reply");

    // The second turn's prompt holds the first turn.
    let second_prompt = chat.prompt("And again?").unwrap();
    let history = [("Hello <|im_end|> there".to_string(), first.text.clone())];
    assert_eq!(second_prompt, chatml.make_context("Be brief.", &history, "And again?", 6144).unwrap().ids);
    chat.send("And again?", |_| Flow::Continue).unwrap();
    assert_eq!(chat.history().len(), 2);

    // A window with room for the new message but not for the old turn drops the turn; one too
    // small for the message alone is a typed error.
    let alone = chatml.make_context("Be brief.", &[] as &[(&str, &str)], "And again?", 6144).unwrap().ids;
    let mut small =
        Chat::<B>::load(&dir, &Default::default()).unwrap().with_system("Be brief.").with_max_window(alone.len() + 1);
    small.send("Hi", |_| Flow::Continue).unwrap();
    assert_eq!(small.history().len(), 1);
    assert_eq!(small.prompt("And again?").unwrap(), alone);
    let tiny = Chat::<B>::load(&dir, &Default::default()).unwrap().with_max_window(5);
    assert!(matches!(tiny.prompt("a message"), Err(ChatError::TooLong { window: 5, .. })));

    chat.reset();
    assert!(chat.history().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_callback_can_cancel_the_reply() {
    let dir = model_dir("cancel");
    // Sampled at a high temperature so the reply runs long enough to cancel.
    let mut chat = Chat::<B>::load(&dir, &Default::default())
        .unwrap()
        .with_max_new_tokens(40)
        .with_sampling(SamplingConfig { temperature: 5.0, seed: 3, ..Default::default() });
    let mut pieces = 0;
    let reply = chat
        .send("Tell me a long story", |_| {
            pieces += 1;
            if pieces == 2 {
                Flow::Cancel
            } else {
                Flow::Continue
            }
        })
        .unwrap();
    // Seeded: this reply runs past two pieces, so the cancel is what ends it.
    assert_eq!(reply.stop, StopReason::Cancelled, "{reply:?}");
    assert_eq!(pieces, 2, "no piece after the cancel");
    assert!(reply.ids.len() < 40);
    assert_eq!(chat.history().len(), 1, "a cancelled reply joins the history as far as it got");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generation_config_files_are_read_or_refused_with_a_reason() {
    let dir = std::env::temp_dir().join(format!("qwen-chat-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |text: &str| {
        let p = dir.join("generation_config.json");
        std::fs::write(&p, text).unwrap();
        p
    };
    // Qwen-1's file: stop words as single-token lists, a window, sampling settings.
    let q1 = GenerationDefaults::from_file(&write(
        r#"{"chat_format": "chatml", "eos_token_id": 151643, "stop_words_ids": [[151643], [1, 2]],
            "max_window_size": 6144, "do_sample": true, "top_p": 0.8, "top_k": 0}"#,
    ))
    .unwrap();
    assert_eq!((q1.stop_ids, q1.max_window_size), (vec![151643, 151643], Some(6144)));
    assert_eq!(q1.sampling.unwrap().top_p, 0.8);
    assert!(matches!(GenerationDefaults::from_file(&write("{")), Err(ChatError::GenerationConfig { .. })));
    assert!(matches!(
        GenerationDefaults::from_file(&write(r#"{"eos_token_id": -1}"#)),
        Err(ChatError::GenerationConfig { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
    // A folder without a tokenizer says what it looked for.
    let empty = std::env::temp_dir().join(format!("qwen-chat-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    assert!(matches!(qwen::chat::find_tokenizer(&empty), Err(ChatError::NoTokenizer(_))));
    std::fs::remove_dir_all(&empty).unwrap();
}

/// The example's smoke run: piped lines are messages, `/reset` and `/system` are commands, and the
/// replies are what `Chat` gives for the same conversation.
#[test]
fn chat_example_answers_piped_messages() {
    let dir = model_dir("example");
    let exe = common::example("chat");
    let mut child = Command::new(exe)
        .args(["--model", dir.to_str().unwrap(), "--system", "Be brief."])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n/reset\nhello\n/quit\nnever sent\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut chat = Chat::<B>::load(&dir, &Default::default()).unwrap().with_system("Be brief.");
    let reply = chat.send("hello", |_| Flow::Continue).unwrap().text;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, format!("{reply}\n{reply}\n"), "the same reply twice (the second after /reset)");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Qwen3-style folder: its `tokenizer_config.json` carries the real Qwen3 chat template. The
/// prompt is the template's rendering of the conversation (transformers' `apply_chat_template`,
/// verified against transformers in tests/chat_template.rs), `enable_thinking=false` opens an
/// empty think block, and the window drops the oldest turns first.
#[test]
fn a_folder_with_a_chat_template_renders_with_it() {
    use qwen_tokenizer::template::{ChatTemplate, RenderOptions};
    let dir = model_dir("template");
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_template/templates/qwen3.jinja"),
    )
    .unwrap();
    let config = serde_json::json!({"chat_template": source, "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let mut chat = Chat::<B>::load(&dir, &Default::default()).unwrap().with_thinking(false);
    assert!(chat.template().is_some());
    assert_eq!(chat.system(), None);
    let template = ChatTemplate::new(source).unwrap();
    let tok = chat.tokenizer().clone();
    let user = |c: &str| serde_json::json!({"role": "user", "content": c});
    let options = RenderOptions::generation().with_thinking(false);

    let first_prompt = chat.prompt("Hi <|im_end|>").unwrap();
    assert_eq!(first_prompt, template.encode(&tok, &[user("Hi <|im_end|>")], &options).unwrap().ids);
    assert_eq!(&first_prompt[first_prompt.len() - 4..], &[151667, 271, 151668, 271]);
    let first = chat.send("Hi <|im_end|>", |_| Flow::Continue).unwrap();

    let second_prompt = chat.prompt("More?").unwrap();
    let history =
        [user("Hi <|im_end|>"), serde_json::json!({"role": "assistant", "content": first.text}), user("More?")];
    assert_eq!(second_prompt, template.encode(&tok, &history, &options).unwrap().ids);

    // A window that fits the newest message but not the history drops the first turn.
    let alone = template.encode(&tok, &[user("More?")], &options).unwrap().ids;
    let narrow = Chat::<B>::load(&dir, &Default::default()).unwrap().with_thinking(false);
    let mut narrow = narrow.with_max_window(alone.len() + 1);
    narrow.send("A", |_| Flow::Cancel).unwrap();
    assert_eq!(narrow.prompt("More?").unwrap(), alone);
    let _ = std::fs::remove_dir_all(&dir);
}
