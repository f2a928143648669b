//! Parity with the real references on the real Qwen vocabularies: tiktoken on `qwen.tiktoken`
//! and HF `tokenizers` on the Qwen2-family `tokenizer.json`, via fixtures written by
//! `tools/reference/tokenizer_fixtures.py` (see `tests/fixtures/tokenizer/README.md`).

mod common;

use common::{fixture, ids, qwen2_json, qwen_tiktoken};
use qwen_tokenizer::{AllowedSpecial, ChatMl, Normalization, Tokenizer};

/// Compares every sample and reports the first few differences before failing.
fn check_all(name: &str, cases: &[serde_json::Value], field: &str, encode: impl Fn(&str) -> Vec<u32>) {
    let mut bad = Vec::new();
    let mut tokens = 0;
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let want = ids(&c[field]);
        tokens += want.len();
        let got = encode(text);
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
            bad.push(format!(
                "[{}] {:?}...: first difference at token {at}: got {:?} want {:?}",
                c["source"].as_str().unwrap_or("?"),
                text.chars().take(60).collect::<String>(),
                &got[at..(at + 5).min(got.len())],
                &want[at..(at + 5).min(want.len())]
            ));
        }
    }
    assert!(tokens > 0, "{name}: empty fixture");
    assert!(
        bad.is_empty(),
        "{name}: {} of {} samples differ:\n{}",
        bad.len(),
        cases.len(),
        bad[..bad.len().min(10)].join("\n")
    );
}

#[test]
fn tiktoken_ids_identical_on_corpus() {
    let tok = qwen_tiktoken();
    let corpus = fixture("corpus.jsonl");
    assert!(corpus.len() >= 1000, "corpus fixture too small: {}", corpus.len());
    check_all("tiktoken", &corpus, "tiktoken", |t| tok.encode(t, &AllowedSpecial::None).unwrap());
}

/// NFC depends on the Unicode version of the normalization tables: combining marks assigned
/// after a reference's version keep their order there but are reordered by ours (Unicode 16+).
/// The reference's normalized text is its ids decoded (tokenization is lossless). Where it equals
/// ours the ids must be identical; where it does not, the text must contain a character newer
/// than the reference's tables, and encoding the reference's normalized text must give its ids.
fn check_nfc(name: &str, field: &str, unicode_age: &str, tok: &Tokenizer) {
    let newer = fancy_regex::Regex::new(&format!(r"\P{{Age={unicode_age}}}")).unwrap();
    let plain = tok.clone().with_normalization(Normalization::None);
    let (mut same, mut diverged) = (Vec::new(), 0);
    for c in fixture("corpus.jsonl") {
        let text = c["text"].as_str().unwrap();
        let reference = plain.decode(&ids(&c[field])).unwrap();
        if Normalization::Nfc.apply(text) == reference {
            same.push(c);
        } else {
            assert!(
                newer.is_match(text).unwrap(),
                "{name}: NFC differs on text with no character newer than {unicode_age}: {text:?}"
            );
            assert_eq!(plain.encode_ordinary(&reference).unwrap(), ids(&c[field]), "{name}: {text:?}");
            diverged += 1;
        }
    }
    assert!(diverged <= 2, "{name}: {diverged} samples normalize differently");
    check_all(name, &same, field, |t| tok.encode_ordinary(t).unwrap());
}

#[test]
fn tiktoken_with_nfc_matches_qwen1_tokenize() {
    // Python 3.11's unicodedata is Unicode 14.0.
    check_nfc("tiktoken+nfc", "tiktoken_nfc", "V14_0", &qwen_tiktoken().with_normalization(Normalization::Nfc));
}

#[test]
fn hf_tokenizer_json_ids_identical_on_corpus() {
    let tok = qwen2_json();
    assert_eq!(tok.normalization(), Normalization::Nfc, "tokenizer.json declares an NFC normalizer");
    // HF's normalizer tables (unicode-normalization-alignments) predate Unicode 10.
    check_nfc("tokenizer.json", "hf", "V9_0", &tok);
}

#[test]
fn batch_encoding_equals_sequential() {
    let tok = qwen_tiktoken();
    let corpus = fixture("corpus.jsonl");
    let texts: Vec<&str> = corpus.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let batch = tok.encode_ordinary_batch(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batch) {
        assert_eq!(&tok.encode_ordinary(t).unwrap(), b);
    }
}

#[test]
fn decode_inverts_encode_on_corpus() {
    let tk = qwen_tiktoken();
    let hf = qwen2_json();
    for c in fixture("corpus.jsonl") {
        let text = c["text"].as_str().unwrap();
        assert_eq!(tk.decode(&ids(&c["tiktoken"])).unwrap(), text);
        assert_eq!(tk.decode(&tk.encode_ordinary(text).unwrap()).unwrap(), text);
        assert_eq!(hf.decode(&hf.encode_ordinary(text).unwrap()).unwrap(), Normalization::Nfc.apply(text));
    }
}

#[test]
fn special_tokens_follow_the_allowed_set() {
    let tok = qwen_tiktoken();
    let hf = qwen2_json();
    let cases = fixture("specials.jsonl");
    assert!(cases.len() >= 20);
    check_all("plain", &cases, "tiktoken_plain", |t| tok.encode(t, &AllowedSpecial::None).unwrap());
    check_all("all", &cases, "tiktoken_all", |t| tok.encode(t, &AllowedSpecial::All).unwrap());
    let im = AllowedSpecial::only(["<|im_start|>", "<|im_end|>"]);
    check_all("im only", &cases, "tiktoken_im_only", |t| tok.encode(t, &im).unwrap());
    // HF splits every added token out of text; that is our `All`.
    check_all("hf default", &cases, "hf_default", |t| hf.encode(t, &AllowedSpecial::All).unwrap());
}

#[test]
fn chatml_identical_to_qwen1_make_context() {
    let tok = qwen_tiktoken().with_normalization(Normalization::Nfc);
    let chat = ChatMl::new(&tok).unwrap();
    let cases = fixture("chatml.jsonl");
    assert!(cases.len() >= 5);
    for c in cases {
        let history: Vec<(String, String)> = c["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t[0].as_str().unwrap().to_string(), t[1].as_str().unwrap().to_string()))
            .collect();
        let out = chat
            .make_context(
                c["system"].as_str().unwrap(),
                &history,
                c["query"].as_str().unwrap(),
                c["max_window_size"].as_u64().unwrap() as usize,
            )
            .unwrap();
        assert_eq!(out.ids, ids(&c["ids"]), "ids of {:?}", c["query"]);
        assert_eq!(out.raw_text, c["raw_text"].as_str().unwrap());
        assert_eq!(out.tags.len(), out.ids.len());
    }
}

#[test]
fn qwen1_vocabulary_facts() {
    let tok = qwen_tiktoken();
    assert_eq!(tok.bpe().len(), 151_643);
    assert_eq!(tok.specials().len(), 208);
    assert_eq!(tok.vocab_size(), 151_851);
    assert_eq!(tok.special_id("<|endoftext|>").unwrap(), 151_643);
    assert_eq!(tok.special_id("<|im_start|>").unwrap(), 151_644);
    assert_eq!(tok.special_id("<|im_end|>").unwrap(), 151_645);
    assert_eq!(tok.special_id("<|extra_204|>").unwrap(), 151_850);
    // Digits are split one by one: no token of the vocabulary has two digits.
    assert!(tok.bpe().iter().all(|(b, _)| b.iter().filter(|c| c.is_ascii_digit()).count() <= 1));
    assert_eq!(tok.encode_ordinary("1234567").unwrap().len(), 7);
}

/// The merges tiktoken's rank rule implies, derived from `qwen.tiktoken` alone, are exactly the
/// merge list of the independently published `tokenizer.json`.
#[test]
fn tiktoken_ranks_imply_tokenizer_json_merges() {
    let tk = qwen_tiktoken();
    let hf = qwen2_json();
    let a = tk.bpe().merge_list();
    let b = hf.bpe().merge_list();
    assert_eq!(a.len(), 151_387);
    assert_eq!(a, b);
    // And the same bytes under the same ids.
    assert!(tk.bpe().iter().zip(hf.bpe().iter()).all(|(x, y)| x == y));
}

/// Writing `tokenizer.json` from the tiktoken vocabulary and loading it back gives a tokenizer
/// with the same ids.
#[test]
fn tiktoken_exported_as_tokenizer_json_round_trips() {
    let tk = qwen_tiktoken();
    let json = serde_json::to_vec(&tk.to_tokenizer_json()).unwrap();
    let back = Tokenizer::from_tokenizer_json(&json).unwrap();
    for c in fixture("corpus.jsonl").iter().step_by(7) {
        let t = c["text"].as_str().unwrap();
        assert_eq!(back.encode_ordinary(t).unwrap(), ids(&c["tiktoken"]));
    }
}
