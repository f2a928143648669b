mod common;

use common::{ByteTok, EOT};
use qwen_data::pack::{pack_documents, pack_to_shard, TokenStream};
use qwen_data::{DataError, Document, PackConfig, SequencePacker, ShardReader, ShardWriter};
use qwen_tokenizer::{AllowedSpecial, Tokenize};

fn corpus(n: usize) -> Vec<Document> {
    (0..n).map(|i| Document::new("t", format!("doc {i}: {}", "xyz".repeat(i % 7)))).collect()
}

/// The stream every window must come from: documents in the packer's order, EOT after each.
fn stream(tok: &ByteTok, docs: &[Document], config: &PackConfig) -> Vec<u32> {
    TokenStream::new(tok, docs.iter().cloned().map(Ok), config).unwrap().flat_map(Result::unwrap).collect()
}

#[test]
fn windows_are_exact_and_only_the_tail_is_dropped() {
    let tok = ByteTok;
    let docs = corpus(50);
    for l in [1usize, 7, 16, 64] {
        let config = PackConfig { buffer_docs: 8, ..PackConfig::new(l, 11) };
        let (seqs, stats) = pack_documents(&tok, docs.iter().cloned().map(Ok), &config).unwrap();
        let s = stream(&tok, &docs, &config);
        let total: usize = docs.iter().map(|d| d.text.len() + 1).sum();
        assert_eq!(s.len(), total);
        assert_eq!(stats.tokens as usize, total);
        assert_eq!(stats.documents, 50);
        assert_eq!(s.iter().filter(|&&t| t == EOT).count(), 50);
        assert_eq!(*s.last().unwrap(), EOT);
        // Window i is s[i*L ..= i*L + L].
        assert_eq!(seqs.len(), (total - 1) / l);
        assert_eq!(stats.sequences, seqs.len());
        for (i, q) in seqs.iter().enumerate() {
            assert_eq!(q.input.len(), l);
            assert_eq!(q.target.len(), l);
            assert_eq!(q.input[1..], q.target[..l - 1]);
            assert_eq!(q.input, s[i * l..i * l + l]);
            assert_eq!(q.target, s[i * l + 1..i * l + l + 1]);
        }
        // Every token is a target once, except the first (input only) and the dropped tail.
        assert_eq!(stats.tail_dropped as usize, total - 1 - seqs.len() * l);
        assert!((stats.tail_dropped as usize) < l);
    }
}

#[test]
fn eot_separates_documents_and_shuffle_is_seeded() {
    let tok = ByteTok;
    let docs = [Document::new("t", "ab"), Document::new("t", "cde"), Document::new("t", "f")];
    let config = PackConfig { seed: None, ..PackConfig::new(3, 0) };
    let (seqs, stats) = pack_documents(&tok, docs.iter().cloned().map(Ok), &config).unwrap();
    // a b EOT c d e EOT f EOT -> windows [a b EOT|c], [c d e|EOT], tail: f EOT.
    let (a, b, c, d, e) = (97, 98, 99, 100, 101);
    assert_eq!(seqs.len(), 2);
    assert_eq!(seqs[0].input, vec![a, b, EOT]);
    assert_eq!(seqs[0].target, vec![b, EOT, c]);
    assert_eq!(seqs[1].input, vec![c, d, e]);
    assert_eq!(seqs[1].target, vec![d, e, EOT]);
    assert_eq!(stats.tail_dropped, 2);

    let many = corpus(40);
    let shuffled = |seed| stream(&tok, &many, &PackConfig::new(4, seed));
    assert_eq!(shuffled(1), shuffled(1));
    assert_ne!(shuffled(1), shuffled(2));
    let mut sorted1 = shuffled(1);
    let mut plain = stream(&tok, &many, &PackConfig { seed: None, ..PackConfig::new(4, 0) });
    sorted1.sort();
    plain.sort();
    assert_eq!(sorted1, plain, "shuffling only reorders documents");
}

#[test]
fn special_strings_stay_text_and_eot_is_configurable() {
    struct NoEot;
    impl Tokenize for NoEot {
        fn encode(&self, t: &str, a: &AllowedSpecial) -> qwen_tokenizer::Result<Vec<u32>> {
            ByteTok.encode(t, a)
        }
        fn decode_bytes(&self, ids: &[u32]) -> qwen_tokenizer::Result<Vec<u8>> {
            ByteTok.decode_bytes(ids)
        }
        fn special_id(&self, _: &str) -> Option<u32> {
            None
        }
        fn vocab_size(&self) -> usize {
            300
        }
    }
    let docs = || [Ok(Document::new("t", "<|endoftext|>"))];
    let err = pack_documents(&NoEot, docs(), &PackConfig::new(4, 0)).unwrap_err();
    assert!(matches!(err, DataError::Config(_)));
    let config = PackConfig { eot_id: Some(299), ..PackConfig::new(4, 0) };
    // The special-token string is encoded as its 13 bytes; the configured id follows it.
    let s: Vec<u32> = TokenStream::new(&NoEot, docs().into_iter(), &config).unwrap().flat_map(Result::unwrap).collect();
    let mut expected: Vec<u32> = b"<|endoftext|>".iter().map(|&b| u32::from(b)).collect();
    expected.push(299);
    assert_eq!(s, expected);
    let (seqs, stats) = pack_documents(&NoEot, docs(), &config).unwrap();
    assert_eq!((seqs.len(), stats.tail_dropped), (3, 1));
}

#[test]
fn packer_pending_counts() {
    let mut p = SequencePacker::new(4);
    p.push(&[1, 2, 3]);
    assert!(p.pop().is_none());
    assert_eq!(p.pending(), 3);
    p.push(&[4, 5, 6]);
    assert_eq!(p.pop().unwrap().target, vec![2, 3, 4, 5]);
    assert_eq!(p.pending(), 1); // 6; 5 was already a target
}

/// `pack::windows` over a whole stream cuts what the streaming packer emits, fed in pieces.
#[test]
fn windows_of_a_stream_equal_the_packer() {
    let ids: Vec<u32> = (0..103).collect();
    for l in [1, 4, 7, 102, 103] {
        let mut p = SequencePacker::new(l);
        let mut streamed = Vec::new();
        for chunk in ids.chunks(10) {
            p.push(chunk);
            streamed.extend(std::iter::from_fn(|| p.pop()));
        }
        let cut: Vec<_> = qwen_data::pack::windows(&ids, l).collect();
        assert_eq!(cut, streamed, "seq_len {l}");
        assert_eq!(cut.len(), 102 / l);
        assert!(cut.iter().all(|s| s.input.len() == l && s.input[1..] == s.target[..l - 1]));
    }
    assert_eq!(qwen_data::pack::windows(&ids, 0).count(), 0);
}

#[test]
fn pack_to_shard_matches_in_memory_stream() {
    let tok = ByteTok;
    let dir = common::TempDir::new("pack-shard");
    let docs = corpus(30);
    let config = PackConfig::new(8, 5);
    let mut w = ShardWriter::create(dir.join("s.bin"), tok.vocab_size()).unwrap();
    let stats = pack_to_shard(&tok, docs.iter().cloned().map(Ok), &config, &mut w).unwrap();
    w.finish().unwrap();
    let r = ShardReader::open(dir.join("s.bin"), 257, true).unwrap();
    assert_eq!(r.to_vec(), stream(&tok, &docs, &config));
    let (_, mem) = pack_documents(&tok, docs.iter().cloned().map(Ok), &config).unwrap();
    assert_eq!(stats, mem);
}
