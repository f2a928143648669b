//! Hostile files: every reader of outside data gives a typed error — not a panic, not an
//! out-of-memory abort — on files built to break it, and allocates nothing sized by an untrusted
//! number before checking it against the file's size or a stated limit.
//!
//! The cases that would need gigabytes if a reader trusted the file run a second time in a child
//! process (this binary, one ignored test), whose peak resident memory (`wait4`'s `ru_maxrss`)
//! must stay far below what trusting the file would take. Big files are sparse (`set_len`): no
//! gigabytes are written to disk.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use qwen_data::{ChatJsonl, DataError, PreferenceJsonl, ShardReader, MAX_LINE_BYTES};
use qwen_model::{Checkpoint, ModelError, QwenConfig};
use qwen_tokenizer::{Tokenizer, TokenizerError, QWEN_PATTERN};
use qwen_train::persist::verify_checksums;
use qwen_train::TrainError;

mod common;

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A safetensors file from a header (JSON text) and `data` bytes.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn open_single(dir: &Path, bytes: &[u8]) -> Result<Checkpoint, ModelError> {
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    Checkpoint::open(dir)
}

#[test]
fn safetensors_headers_that_lie() {
    let dir = scratch("safetensors");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty file", vec![]),
        ("header length past the end", {
            let mut b = 1_000_000u64.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("header length u64::MAX", u64::MAX.to_le_bytes().to_vec()),
        ("header not JSON", safetensors("{not json", &[])),
        (
            "shape of 2^40 x 2^40 elements",
            safetensors(r#"{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#, &[0; 4]),
        ),
        (
            "shape whose product overflows u64",
            safetensors(
                r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
                &[0; 4],
            ),
        ),
        (
            "data offsets past the end of the file",
            safetensors(r#"{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#, &[0; 16]),
        ),
        ("data offsets reversed", safetensors(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, &[0; 4])),
        (
            "shape that disagrees with the offsets",
            safetensors(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, &[0; 4]),
        ),
        (
            "two tensors overlapping",
            safetensors(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                &[0; 4],
            ),
        ),
    ];
    for (what, bytes) in cases {
        match open_single(&dir, &bytes) {
            Err(ModelError::Safetensors { .. }) => {}
            Err(e) => panic!("{what}: not a Safetensors error: {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    // A well-formed file read with a shape other than the stored one: refused, nothing read.
    let ok = safetensors(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 8]);
    let mut ckpt = open_single(&dir, &ok).unwrap();
    assert!(matches!(ckpt.take("w", &[1 << 40]), Err(ModelError::Shape { .. })));
    assert_eq!(ckpt.take("w", &[2]).unwrap(), vec![0.0, 0.0]);
    // An integer tensor where floats belong.
    let ints = safetensors(r#"{"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, &[0; 8]);
    assert!(matches!(open_single(&dir, &ints).unwrap().take("w", &[1]), Err(ModelError::Dtype { .. })));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn index_files_that_lie() {
    let dir = scratch("index");
    let fixture = common::root().join("tests/fixtures/model/qwen2_bf16_sharded");
    std::fs::copy(fixture.join("model-00001-of-00003.safetensors"), dir.join("model-00001-of-00003.safetensors"))
        .unwrap();
    let index = dir.join("model.safetensors.index.json");
    let cases = [
        ("a missing shard", r#"{"weight_map":{"a":"model-00002-of-00003.safetensors"}}"#),
        ("a shard outside the folder", r#"{"weight_map":{"a":"../model-00001-of-00003.safetensors"}}"#),
        ("an absolute shard path", r#"{"weight_map":{"a":"/etc/passwd"}}"#),
        ("no weight_map", r#"{"metadata":{}}"#),
        ("a file that is not a string", r#"{"weight_map":{"a":7}}"#),
        ("not JSON", "{"),
        ("the folder itself as a shard", r#"{"weight_map":{"a":""}}"#),
    ];
    for (what, text) in cases {
        std::fs::write(&index, text).unwrap();
        match Checkpoint::open(&dir) {
            Err(ModelError::Index { .. }) => {}
            Err(ModelError::Io { source, .. }) if what == "a missing shard" => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
            }
            Err(ModelError::Io { .. } | ModelError::Safetensors { .. }) if what.contains("folder itself") => {}
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    // The same shard named twice under two names is one file, read once: not an error.
    std::fs::write(
        &index,
        r#"{"weight_map":{"a":"model-00001-of-00003.safetensors","b":"model-00001-of-00003.safetensors"}}"#,
    )
    .unwrap();
    assert!(Checkpoint::open(&dir).is_ok());
    // An index larger than the stated limit is refused before it is read (sparse: no disk used).
    std::fs::File::create(&index).unwrap().set_len(qwen_model::load::MAX_JSON_BYTES + 1).unwrap();
    match Checkpoint::open(&dir) {
        Err(ModelError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge),
        other => panic!("an oversized index: {:?}", other.err()),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A valid Qwen2 config with `key` replaced by `value` (JSON text).
fn qwen2_with(key: &str, value: &str) -> String {
    let text = std::fs::read_to_string(common::root().join("tests/fixtures/model/qwen2_gqa/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key] = serde_json::from_str(value).unwrap_or(serde_json::Value::Null);
    v.to_string().replace("\"@RAW@\"", value)
}

fn qwen1_with(key: &str, value: &str) -> String {
    let text = std::fs::read_to_string(common::root().join("tests/fixtures/model/qwen1_plain/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[key] = serde_json::Value::String("@RAW@".into());
    v.to_string().replace("\"@RAW@\"", value)
}

#[test]
fn configs_with_impossible_sizes() {
    assert!(QwenConfig::from_json_str(&qwen2_with("model_type", "\"qwen2\"")).is_ok());
    assert!(QwenConfig::from_json_str(&qwen1_with("model_type", "\"qwen\"")).is_ok());
    let raw = |key: &str, value: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&qwen2_with("model_type", "\"qwen2\"")).unwrap();
        v[key] = serde_json::Value::String("@RAW@".into());
        v.to_string().replace("\"@RAW@\"", value)
    };
    let mut cases: Vec<(String, String)> = Vec::new();
    for (key, value) in [
        ("hidden_size", "0"),
        ("hidden_size", "-1"),
        ("hidden_size", "1.5"),
        ("hidden_size", "18446744073709551616"),
        ("hidden_size", "\"64\""),
        ("vocab_size", "0"),
        ("vocab_size", "1099511627776"),
        ("intermediate_size", "4611686018427387904"),
        ("num_attention_heads", "0"),
        ("num_key_value_heads", "0"),
        ("num_key_value_heads", "3"),
        ("num_hidden_layers", "0"),
        ("num_hidden_layers", "1099511627776"),
        ("head_dim", "0"),
        ("head_dim", "1099511627776"),
        ("max_position_embeddings", "0"),
        ("max_position_embeddings", "18446744073709551615"),
        ("rms_norm_eps", "0"),
        ("rms_norm_eps", "-1e-6"),
        ("rope_parameters", r#"{"rope_theta": -1, "rope_type": "default"}"#),
        ("rope_parameters", r#"{"rope_theta": 1e400, "rope_type": "default"}"#),
        ("rope_parameters", r#"{"rope_theta": 10000, "rope_type": "yarn", "factor": 0}"#),
        ("rope_parameters", r#"{"rope_theta": 10000, "rope_type": "dynamic"}"#),
    ] {
        cases.push((format!("qwen2 {key} = {value}"), raw(key, value)));
    }
    // Sliding windows in every layer of a huge model: refused before one window per layer is built.
    let mut sliding: serde_json::Value = serde_json::from_str(&raw("num_hidden_layers", "1099511627776")).unwrap();
    sliding["use_sliding_window"] = true.into();
    sliding["sliding_window"] = 64.into();
    cases.push(("qwen2 2^40 sliding layers".into(), sliding.to_string()));
    let mut zero_window: serde_json::Value = serde_json::from_str(&raw("sliding_window", "0")).unwrap();
    zero_window["use_sliding_window"] = true.into();
    cases.push(("qwen2 sliding_window 0".into(), zero_window.to_string()));
    for (key, value) in [
        ("hidden_size", "0"),
        ("hidden_size", "66"), // not a multiple of the 4 heads
        ("num_attention_heads", "0"),
        ("intermediate_size", "3"), // odd: the MLP is half as wide
        ("num_hidden_layers", "1099511627776"),
        ("vocab_size", "1099511627776"),
        ("rotary_pct", "0"),
        ("rotary_pct", "2"),
        ("kv_channels", "1099511627776"),
    ] {
        cases.push((format!("qwen1 {key} = {value}"), qwen1_with(key, value)));
    }
    let moe = std::fs::read_to_string(common::root().join("tests/fixtures/model/qwen2_moe/config.json")).unwrap();
    for (key, value) in [
        ("num_experts", "0"),
        ("num_experts", "1099511627776"),
        ("num_experts_per_tok", "0"),
        ("num_experts_per_tok", "1000"),
        ("decoder_sparse_step", "0"),
        ("moe_intermediate_size", "0"),
        ("shared_expert_intermediate_size", "0"),
        ("mlp_only_layers", "[1099511627776]"),
        ("num_hidden_layers", "1099511627776"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&moe).unwrap();
        v[key] = serde_json::Value::String("@RAW@".into());
        cases.push((format!("qwen2_moe {key} = {value}"), v.to_string().replace("\"@RAW@\"", value)));
    }
    cases.push(("not an object".into(), "[]".into()));
    cases.push(("unknown model_type".into(), qwen2_with("model_type", "\"llama\"")));
    for (what, text) in cases {
        match QwenConfig::from_json_str(&text) {
            Err(ModelError::Config(_) | ModelError::Unsupported(_) | ModelError::Context(_)) => {}
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(c) => panic!("{what}: accepted as {c:?}"),
        }
    }
    // config.json past the stated limit: refused before it is read.
    let dir = scratch("config");
    let path = dir.join("config.json");
    std::fs::File::create(&path).unwrap().set_len(qwen_model::load::MAX_JSON_BYTES + 1).unwrap();
    match QwenConfig::from_file(&path) {
        Err(ModelError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge),
        other => panic!("an oversized config: {:?}", other.err()),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn vocabulary_files_that_lie() {
    let specials = || vec![("<|endoftext|>".to_string(), 1_000_000)];
    // Single bytes 0..=255 as ranks 0..=255, then a duplicate.
    let mut base = Vec::new();
    let bytes: Vec<u8> = (0..=255).collect();
    qwen_tokenizer::tiktoken::write_ranks(&mut base, bytes.iter().map(|b| (std::slice::from_ref(b), *b as u32)))
        .unwrap();
    assert!(Tokenizer::from_tiktoken(&base, specials(), QWEN_PATTERN).is_ok());
    let with = |extra: &str| [base.clone(), extra.as_bytes().to_vec()].concat();
    for (what, data) in [
        ("a duplicate rank", with("YWI= 5\n")),
        ("a duplicate token", with("AA== 256\n")),
        ("a rank of 4e9 (a gap)", with("YWI= 4000000000\n")),
        ("a rank past u32", with("YWI= 4294967296\n")),
        ("a negative rank", with("YWI= -1\n")),
        ("bad base64", with("@@@ 256\n")),
        ("no rank", with("YWI=\n")),
        ("not UTF-8", with("\u{0}\n").into_iter().chain([0xff, 0xfe]).collect()),
        ("no ranks at all", Vec::new()),
    ] {
        match Tokenizer::from_tiktoken(&data, specials(), QWEN_PATTERN) {
            Err(TokenizerError::MalformedTiktoken { .. } | TokenizerError::InvalidVocab(_)) => {}
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    // A 4-GiB one-line file (sparse): refused by its size, before any of it is read.
    let dir = scratch("vocab");
    let path = dir.join("huge.tiktoken");
    std::fs::File::create(&path).unwrap().set_len(4 << 30).unwrap();
    for result in [Tokenizer::qwen_from_file(&path).map(|_| ()), Tokenizer::from_tokenizer_json_file(&path).map(|_| ())]
    {
        match result {
            Err(TokenizerError::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge),
            other => panic!("a 4-GiB vocabulary: {:?}", other.err()),
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `len` bytes of `b'x'` then a newline, generated as read: never in memory as a whole.
struct LongLine {
    left: u64,
}

impl Read for LongLine {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        buf[..n].fill(b'x');
        self.left -= n as u64;
        if self.left == 0 {
            buf[n - 1] = b'\n';
        }
        Ok(n)
    }
}

/// A 100-MB line, then a good record: the long line is a typed error, the next record reads.
fn long_line_then_record(line_bytes: u64) {
    let good = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let reader = BufReader::new(LongLine { left: line_bytes }.chain(std::io::Cursor::new(good.as_bytes().to_vec())));
    let records: Vec<_> = ChatJsonl::from_reader("long.jsonl", reader).collect();
    assert_eq!(records.len(), 2);
    match &records[0] {
        Err(DataError::LineTooLong { line: 1, limit, .. }) => assert_eq!(*limit, MAX_LINE_BYTES),
        other => panic!("a {line_bytes}-byte line: {other:?}"),
    }
    assert_eq!(records[1].as_ref().unwrap().messages.len(), 1);
}

#[test]
fn jsonl_with_a_100_mb_line() {
    long_line_then_record(100 << 20);
    // The same from a file: a sparse 100-MiB line of NUL bytes, then nothing.
    let dir = scratch("jsonl");
    let path = dir.join("long.jsonl");
    std::fs::File::create(&path).unwrap().set_len(100 << 20).unwrap();
    let records: Vec<_> = PreferenceJsonl::open(&path).unwrap().collect();
    assert!(matches!(records.as_slice(), [Err(DataError::LineTooLong { line: 1, .. })]), "{records:?}");
    // A line just under the limit is read (and is then malformed JSON, a typed error too).
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&vec![b'x'; 1 << 20]).unwrap();
    f.write_all(b"\n").unwrap();
    let records: Vec<_> = ChatJsonl::open(&path).unwrap().collect();
    assert!(matches!(records.as_slice(), [Err(DataError::MalformedJsonl { line: 1, .. })]), "{records:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn shards_and_checkpoints_that_lie() {
    let dir = scratch("shards");
    let path = dir.join("s.bin");
    let header = |count: u64| {
        let mut h = b"QWTK".to_vec();
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&100u32.to_le_bytes());
        h.extend_from_slice(&count.to_le_bytes());
        h
    };
    for (what, bytes) in [
        ("a count of u64::MAX", header(u64::MAX)),
        ("a count of 2^62 (overflows bytes)", header(1 << 62)),
        ("a count past the end", [header(1000), vec![0; 8]].concat()),
        ("bytes after the ids", [header(1), vec![0; 8]].concat()),
    ] {
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(ShardReader::open(&path, 100, true), Err(DataError::Truncated { .. })), "{what}");
    }
    std::fs::write(&path, [header(1), 100u32.to_le_bytes().to_vec()].concat()).unwrap();
    assert!(matches!(ShardReader::open(&path, 100, true), Err(DataError::TokenOutOfRange { .. })));
    // checksums.json: a path out of the folder, a huge size, a file past the limit.
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("w.bin"), b"abc").unwrap();
    let sums = ckpt.join("checksums.json");
    let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; // sha256("abc")
    std::fs::write(&sums, format!(r#"{{"format":1,"files":{{"w.bin":{{"bytes":3,"sha256":"{sha}"}}}}}}"#)).unwrap();
    verify_checksums(&ckpt).unwrap();
    for text in [
        format!(r#"{{"format":1,"files":{{"../w.bin":{{"bytes":3,"sha256":"{sha}"}}}}}}"#),
        format!(r#"{{"format":1,"files":{{"/etc/passwd":{{"bytes":3,"sha256":"{sha}"}}}}}}"#),
        format!(r#"{{"format":1,"files":{{"w.bin":{{"bytes":18446744073709551615,"sha256":"{sha}"}}}}}}"#),
        r#"{"format":1,"files":{"w.bin":{"bytes":3,"sha256":"00"}}}"#.to_string(),
        r#"{"format":2,"files":{}}"#.to_string(),
        "[".to_string(),
    ] {
        std::fs::write(&sums, &text).unwrap();
        assert!(matches!(verify_checksums(&ckpt), Err(TrainError::Corrupt { .. })), "{text}");
    }
    std::fs::File::create(&sums).unwrap().set_len(qwen_train::persist::MAX_JSON_BYTES + 1).unwrap();
    match verify_checksums(&ckpt) {
        Err(TrainError::Corrupt { reason, .. }) => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("an oversized checksums.json: {other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn runaway_chat_templates_end() {
    use qwen_tokenizer::template::{ChatTemplate, RenderOptions};
    let nested = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}";
    let t = ChatTemplate::new(nested).unwrap();
    let start = std::time::Instant::now();
    assert!(matches!(t.render(&[], &RenderOptions::generation()), Err(TokenizerError::Template(_))));
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    let huge = "{{ 'x' * 1000000000000 }}";
    assert!(matches!(
        ChatTemplate::new(huge).unwrap().render(&[], &RenderOptions::generation()),
        Err(TokenizerError::Template(_))
    ));
    // Within its fuel, a short loop over a long string writes megabytes (the `chat_template`
    // fuzz target's hang: 40,000 x 230 bytes, then seconds of tokenizing): the output bound
    // stops it, and a render below the bound is untouched.
    let wide = format!("{{% for a in range(40000) %}}{}{{% endfor %}}", "o(".repeat(115));
    let t = ChatTemplate::new(&wide).unwrap();
    assert_eq!(t.render(&[], &RenderOptions::generation()).unwrap().len(), 40_000 * 230);
    match t.with_max_output(1 << 20).render(&[], &RenderOptions::generation()) {
        Err(TokenizerError::Template(reason)) => assert!(reason.contains("exceeds 1048576 bytes"), "{reason}"),
        other => panic!("a render past the output bound: {other:?}"),
    }
}

/// Peak resident memory of this process, in bytes.
fn max_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    usage.ru_maxrss as u64 * 1024
}

/// Run in a child by [`bounded_memory`]: the inputs that would take gigabytes if trusted. Prints
/// its peak resident memory.
#[test]
#[ignore = "run in a child process by bounded_memory"]
fn bounded_memory_child() {
    let before = max_rss();
    // A 1-GiB JSONL line, generated as read: read whole it would take more than 1 GiB.
    long_line_then_record(1 << 30);
    // A 4-GiB sparse vocabulary file, a 2^40-element safetensors shape, 2^40 layers.
    let dir = scratch("child");
    let path = dir.join("huge.tiktoken");
    std::fs::File::create(&path).unwrap().set_len(4 << 30).unwrap();
    assert!(Tokenizer::qwen_from_file(&path).is_err());
    let st = safetensors(r#"{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4]}}"#, &[0; 4]);
    assert!(open_single(&dir, &st).is_err());
    assert!(QwenConfig::from_json_str(&qwen2_with("num_hidden_layers", "1099511627776")).is_err());
    std::fs::remove_dir_all(dir).unwrap();
    println!("MAX_RSS_BEFORE={before} MAX_RSS={}", max_rss());
}

#[test]
fn bounded_memory() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "bounded_memory_child", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let value = |key: &str| -> u64 {
        let at = stdout.find(&format!("{key}=")).unwrap_or_else(|| panic!("no {key} in {stdout}")) + key.len() + 1;
        stdout[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let grown = value("MAX_RSS").saturating_sub(value("MAX_RSS_BEFORE"));
    eprintln!("peak resident memory grew by {} MiB on the hostile inputs", grown >> 20);
    // The line limit (64 MiB) bounds the largest buffer; trusting any input would take > 1 GiB.
    assert!(grown < 2 * MAX_LINE_BYTES as u64 + (32 << 20), "grew by {grown} bytes");
}
