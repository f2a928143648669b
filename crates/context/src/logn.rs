//! LogN attention scaling (Qwen-1 `use_logn_attn`): queries at positions past the training length
//! are multiplied by `log_S(p + 1)`, keeping attention entropy stable as the context grows.
//!
//! Qwen-1 applies it to the query only, after RoPE, at inference, when the keys span more than
//! `S = seq_length` positions; position `p` (0-based) gets `log(p + 1) / log(S)` if `p + 1 > S`,
//! else 1.

use serde::{Deserialize, Serialize};

/// Qwen-1's LogN scaling against the training length `seq_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogN {
    pub seq_length: usize,
}

impl LogN {
    /// Factor on the query at absolute position `position` when the keys span `key_len` positions.
    pub fn scale(&self, position: usize, key_len: usize) -> f32 {
        let i = position + 1;
        if key_len > self.seq_length && i > self.seq_length {
            // Python's math.log(i, S) in f64, then cast to the query's f32 like the reference's tensor.
            ((i as f64).ln() / (self.seq_length as f64).ln()) as f32
        } else {
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logn_is_one_inside_the_training_length() {
        let l = LogN { seq_length: 2048 };
        assert_eq!(l.scale(0, 4096), 1.0);
        assert_eq!(l.scale(2047, 4096), 1.0);
        assert_eq!(l.scale(3000, 2048), 1.0, "keys within S: no scaling");
        assert!((l.scale(4095, 4096) - 4096f32.ln() / 2048f32.ln()).abs() < 1e-6);
        assert!(l.scale(2048, 4096) > 1.0);
    }
}
