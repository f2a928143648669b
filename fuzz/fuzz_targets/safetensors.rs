//! Arbitrary bytes as `model.safetensors` (header length, JSON header, data): opening the
//! checkpoint gives a typed error or tensors that each read back as exactly `product(shape)`
//! values, never a panic or an allocation sized by the header's numbers.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use qwen_model::{Checkpoint, ModelError};
use safetensors::{Dtype, SafeTensors};

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch("safetensors");
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
    let Ok(mut ckpt) = Checkpoint::open(dir) else { return };
    // The checkpoint accepted the file: so does the safetensors crate, and every tensor reads.
    let st = SafeTensors::deserialize(data).expect("accepted by Checkpoint::open");
    let tensors: Vec<(String, Vec<usize>, Dtype)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.dtype())).collect();
    let all_float = tensors.iter().all(|(_, _, d)| matches!(d, Dtype::F32 | Dtype::BF16 | Dtype::F16));
    for (name, shape, dtype) in tensors {
        assert!(ckpt.contains(&name));
        let n: usize = shape.iter().product();
        match ckpt.take(&name, &shape) {
            Ok(values) => assert_eq!(values.len(), n, "{name}"),
            Err(ModelError::Dtype { .. }) => assert!(!matches!(dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16)),
            Err(e) => panic!("{name}: {e}"),
        }
        // A wrong shape is refused, not read.
        let mut wrong = shape.clone();
        wrong.push(1);
        assert!(matches!(ckpt.take(&name, &wrong), Err(ModelError::Shape { .. })));
    }
    if all_float {
        assert_eq!(ckpt.unused().count(), 0);
    }
});
