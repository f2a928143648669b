//! Arbitrary bytes as `model.safetensors.index.json` beside the three shards of a real
//! sharded fixture: a typed error (malformed index, shard named outside the folder, missing
//! shard, tensor in two files) or a checkpoint holding exactly the tensors of the named shards.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qwen_model::Checkpoint;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch("safetensors_index").clone();
        let fixture = common::repo("tests/fixtures/model/qwen2_bf16_sharded");
        for i in 1..=3 {
            let name = format!("model-0000{i}-of-00003.safetensors");
            std::fs::copy(fixture.join(&name), dir.join(&name)).unwrap();
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    std::fs::write(dir.join("model.safetensors.index.json"), data).unwrap();
    let Ok(ckpt) = Checkpoint::open(dir) else { return };
    let index: serde_json::Value = serde_json::from_slice(data).expect("accepted index is JSON");
    let map = index["weight_map"].as_object().expect("accepted index has a weight_map");
    for file in map.values() {
        let file = file.as_str().unwrap();
        assert!(!file.contains('/') && !file.contains(".."), "{file:?} escapes the folder");
    }
    if map.is_empty() {
        assert_eq!(ckpt.unused().count(), 0);
    }
});
