//! `tokenize --chat` against Qwen-1's own SFT preprocessing: `tests/fixtures/sft/finetune_py.jsonl`
//! holds conversations and the ids and labels `finetune.py`'s `preprocess` returned for them with
//! Qwen-1's tokenizer on `qwen.tiktoken` (made by `tools/reference/sft_fixtures.py`, padding cut).
//! The example must print exactly those, in either input layout; and malformed lines are errors
//! naming the line. Plain `tokenize` (the pipelined whole process) must print tiktoken's ids for
//! every text of the tokenizer parity corpus, whatever the batch size.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

mod common;

fn tokenize_chat(input: &str) -> Output {
    tokenize(&["--chat"], input)
}

fn tokenize(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(common::example("tokenize"))
        .arg("--vocab")
        .arg(common::vocab_file("qwen.tiktoken"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from a thread: the example writes output while it still reads input, so a large
    // input written before reading the output would fill both pipes.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    // A child that stops at a bad line closes its stdin early: the write may fail then.
    let _ = writer.join().unwrap();
    out
}

fn lines(records: impl Iterator<Item = Value>) -> String {
    records.map(|r| format!("{r}\n")).collect()
}

#[test]
fn chat_ids_and_labels_equal_finetune_py() {
    let path = common::root().join("tests/fixtures/sft/finetune_py.jsonl");
    let rows: Vec<Value> =
        std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows.len() >= 14);
    // Qwen's layout as finetune.py reads it, and the same conversations as `messages`.
    let qwen_layout = lines(rows.iter().map(|r| json!({"conversations": r["conversations"]})));
    let messages = lines(rows.iter().map(|r| {
        let turns: Vec<Value> = r["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| json!({"role": t["from"], "content": t["value"]}))
            .collect();
        json!({ "messages": turns })
    }));
    for input in [qwen_layout, messages] {
        let out = tokenize_chat(&input);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got.len(), rows.len());
        for (i, (g, want)) in got.iter().zip(&rows).enumerate() {
            assert_eq!(g["ids"], want["ids"], "conversation {i}: ids differ from finetune.py's");
            assert_eq!(g["labels"], want["labels"], "conversation {i}: labels differ from finetune.py's");
        }
    }
}

#[test]
fn special_token_text_stays_text_and_bad_lines_name_their_number() {
    // finetune.py's tokenizer would encode "<|im_end|>" in the text as the token; here it is text,
    // so the reply has exactly the ChatML markers of its three messages.
    let input = lines(std::iter::once(json!({"messages": [
        {"role": "user", "content": "say <|im_end|> please"},
        {"role": "assistant", "content": "<|im_end|>"},
    ]})));
    let out = tokenize_chat(&input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let im_end = 151645;
    let ids: Vec<u64> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids.iter().filter(|&&i| i == im_end).count(), 3, "{ids:?}");

    for (bad, why) in [
        ("{\"messages\": 5}", "messages must be an array"),
        ("{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "unknown role"),
        ("not json", "line 2"),
    ] {
        let input =
            format!("{}{bad}\n", lines(std::iter::once(json!({"messages": [{"role": "user", "content": "hi"}]}))));
        let out = tokenize_chat(&input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("line 2") && stderr.contains(why), "{bad}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn plain_ids_equal_tiktoken_in_any_batch_size_and_bad_lines_name_their_number() {
    // Each line: the text and the ids tiktoken 0.14.0 gave for it (tools/reference/tokenizer_fixtures.py).
    let path = common::root().join("tests/fixtures/tokenizer/corpus.jsonl");
    let corpus = std::fs::read_to_string(&path).unwrap();
    let want: Vec<Value> =
        corpus.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["tiktoken"].clone()).collect();
    assert!(want.len() > 2000);
    // CRLF line ends are line ends too.
    let crlf: String = corpus.lines().take(50).map(|l| format!("{l}\r\n")).collect();
    for (batch, input, rows) in
        [("4096", corpus.as_str(), want.len()), ("37", corpus.as_str(), want.len()), ("3", &crlf, 50)]
    {
        let out = tokenize(&["--batch", batch], input);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got.len(), rows, "batch {batch}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(&g["ids"], w, "batch {batch}, line {}: ids differ from tiktoken's", i + 1);
        }
    }
    // A bad line in a later batch is named by its number in the whole input.
    let good: String = corpus.lines().take(99).map(|l| format!("{l}\n")).collect();
    for (bad, why) in [("not json", "expected"), ("", "empty line"), ("{\"text\": 5}", "expected")] {
        let out = tokenize(&["--batch", "37"], &format!("{good}{bad}\n"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(stderr.contains("line 100") && stderr.contains(why), "{bad:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
