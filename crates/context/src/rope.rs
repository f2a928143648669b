//! RoPE frequency schedules.
//!
//! Plain RoPE rotates pair `i` of a `dim`-wide head by `position * inv_freq[i]` with
//! `inv_freq[i] = base^(-2i/dim)`. The schedules differ in how `inv_freq` depends on the length of
//! the sequence being processed:
//!
//! | schedule | inv_freq for length `L` | during decode |
//! |---|---|---|
//! | [`RopeScaling::None`] | plain | fixed |
//! | [`RopeScaling::Ntk`] (fixed alpha) | base' = base · α^(dim/(dim−2)) | fixed |
//! | [`RopeScaling::QwenDynamicNtk`] | α = max(2^⌈log2(L/S)+1⌉ − 1, 1), as above | fixed at prefill |
//! | [`RopeScaling::HfDynamic`] | base' = base · (f·L/M − (f−1))^(dim/(dim−2)) for L > M | follows the longest length seen |
//! | [`RopeScaling::Yarn`] | ramp between interpolated and extrapolated, cos/sin × attention factor | fixed |

use serde::{Deserialize, Serialize};

use crate::{ContextError, Result};

/// How the two halves of a head are paired for rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RopeConvention {
    /// GPT-NeoX / HF / Qwen: dimension `i` pairs with `i + dim/2` (`rotate_half`).
    #[default]
    RotateHalf,
    /// GPT-J / Meta / burn's `RotaryEncoding`: dimension `2i` pairs with `2i + 1`.
    Interleaved,
}

/// Inverse frequencies for one sequence, and the factor on cos/sin (1 except for YaRN).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFrequencies {
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
}

/// The RoPE variants found in Qwen configs, with their parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// NTK-aware interpolation with a fixed alpha.
    Ntk { alpha: f64 },
    /// Qwen-1 `use_dynamic_ntk`: alpha stepped from the prefill length against `seq_length`.
    QwenDynamicNtk { seq_length: usize },
    /// HF `rope_type: dynamic`: continuous, recomputed as the sequence grows.
    HfDynamic { factor: f64, max_position_embeddings: usize },
    /// HF `rope_type: yarn` (Qwen2.5 long-context configs).
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        /// `None`: 0.1·ln(factor) + 1.
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

/// A RoPE schedule: base, rotated width and scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    pub base: f64,
    /// Rotated dimensions per head (the head dim times `rotary_pct`); even.
    pub dim: usize,
    pub scaling: RopeScaling,
}

impl Rope {
    /// Validates the parameters.
    pub fn new(base: f64, dim: usize, scaling: RopeScaling) -> Result<Self> {
        let bad = |m: String| Err(ContextError::InvalidRope(m));
        if !(base > 1.0 && base.is_finite()) {
            return bad(format!("base {base} must be a finite number > 1"));
        }
        if dim < 4 || !dim.is_multiple_of(2) {
            return bad(format!("rotary dim {dim} must be even and at least 4"));
        }
        match &scaling {
            RopeScaling::Ntk { alpha } if alpha.is_nan() || *alpha < 1.0 => {
                return bad(format!("NTK alpha {alpha} must be >= 1"))
            }
            RopeScaling::QwenDynamicNtk { seq_length: 0 } => return bad("seq_length must be > 0".into()),
            RopeScaling::HfDynamic { factor, max_position_embeddings }
                if factor.is_nan() || *factor < 1.0 || *max_position_embeddings == 0 =>
            {
                return bad(format!("dynamic factor {factor} must be >= 1 with max_position_embeddings > 0"))
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, .. }
                if factor.is_nan() || *factor < 1.0 || *original_max_position_embeddings == 0 =>
            {
                return bad(format!("yarn factor {factor} must be >= 1 with original_max_position_embeddings > 0"))
            }
            _ => {}
        }
        Ok(Self { base, dim, scaling })
    }

    fn plain(&self, base: f64) -> Vec<f32> {
        // Computed in f32 like the references (`torch.arange(0, dim, 2).float() / dim`).
        (0..self.dim / 2).map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / self.dim as f32)).collect()
    }

    fn ntk_base(&self, alpha: f64) -> f64 {
        self.base * alpha.powf(self.dim as f64 / (self.dim as f64 - 2.0))
    }
}

/// Qwen-1's `get_ntk_alpha`: `max(2^ceil(log2(L/S) + 1) - 1, 1)`.
pub fn qwen_ntk_alpha(seq_len: usize, seq_length: usize) -> f64 {
    let context_value = (seq_len as f64 / seq_length as f64).log2() + 1.0;
    (2f64.powf(context_value.ceil()) - 1.0).max(1.0)
}

impl Rope {
    /// Frequencies for a forward pass whose keys span `seq_len` positions in total.
    pub fn frequencies(&self, seq_len: usize) -> RopeFrequencies {
        let plain = |inv_freq| RopeFrequencies { inv_freq, attention_factor: 1.0 };
        match &self.scaling {
            RopeScaling::None => plain(self.plain(self.base)),
            RopeScaling::Ntk { alpha } => plain(self.plain(self.ntk_base(*alpha))),
            RopeScaling::QwenDynamicNtk { seq_length } => {
                plain(self.plain(self.ntk_base(qwen_ntk_alpha(seq_len, *seq_length))))
            }
            RopeScaling::HfDynamic { factor, max_position_embeddings } => {
                let m = *max_position_embeddings as f64;
                if seq_len as f64 <= m {
                    plain(self.plain(self.base))
                } else {
                    let scale = factor * seq_len as f64 / m - (factor - 1.0);
                    let base = self.base * scale.powf(self.dim as f64 / (self.dim as f64 - 2.0));
                    plain(self.plain(base))
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => yarn(
                self.base,
                self.dim,
                *factor,
                *original_max_position_embeddings,
                *beta_fast,
                *beta_slow,
                *attention_factor,
                *truncate,
            ),
        }
    }

    /// Whether a decode step past the prefill may use frequencies other than the prefill's
    /// (HF dynamic: yes; Qwen-1 dynamic NTK: no, alpha is fixed at prefill).
    pub fn changes_during_decode(&self) -> bool {
        matches!(self.scaling, RopeScaling::HfDynamic { .. })
    }
}

/// transformers' `_compute_yarn_parameters`.
#[allow(clippy::too_many_arguments)]
fn yarn(
    base: f64,
    dim: usize,
    factor: f64,
    original_max: usize,
    beta_fast: f64,
    beta_slow: f64,
    attention_factor: Option<f64>,
    truncate: bool,
) -> RopeFrequencies {
    let mscale = |scale: f64| if scale <= 1.0 { 1.0 } else { 0.1 * scale.ln() + 1.0 };
    let attention_factor = attention_factor.unwrap_or_else(|| mscale(factor));
    let correction_dim = |rotations: f64| {
        (dim as f64 * (original_max as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let (low, high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    let high = if low == high { high + 0.001 } else { high };
    let inv_freq = (0..dim / 2)
        .map(|i| {
            let pos_freq = (base as f32).powf((2 * i) as f32 / dim as f32);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor as f32 * pos_freq);
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0) as f32;
            let extrapolation_factor = 1.0 - ramp;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect();
    RopeFrequencies { inv_freq, attention_factor: attention_factor as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `qwen-reference.md`: L<=S -> 1; S<L<=2S -> 3; <=4S -> 7; <=8S -> 15; <=16S -> 31.
    #[test]
    fn qwen_alpha_steps() {
        let s = 2048;
        for (len, alpha) in [
            (1, 1.0),
            (1024, 1.0),
            (2048, 1.0),
            (2049, 3.0),
            (4096, 3.0),
            (4097, 7.0),
            (8192, 7.0),
            (16384, 15.0),
            (32768, 31.0),
        ] {
            assert_eq!(qwen_ntk_alpha(len, s), alpha, "len {len}");
        }
    }

    /// `qwen-reference.md`: at dim 128, alpha 3 -> base 30527.7, 7 -> 72195.9, 15 -> 156588.3.
    #[test]
    fn qwen_ntk_bases() {
        let rope = Rope::new(10000.0, 128, RopeScaling::None).unwrap();
        for (alpha, base) in [(3.0, 30527.7), (7.0, 72195.9), (15.0, 156588.3)] {
            assert!((rope.ntk_base(alpha) - base).abs() < 0.1, "alpha {alpha}: {}", rope.ntk_base(alpha));
        }
    }

    #[test]
    fn dynamic_schedules_leave_short_sequences_alone() {
        let plain = Rope::new(10000.0, 64, RopeScaling::None).unwrap().frequencies(10);
        let qwen = Rope::new(10000.0, 64, RopeScaling::QwenDynamicNtk { seq_length: 16 }).unwrap();
        let hf = Rope::new(10000.0, 64, RopeScaling::HfDynamic { factor: 2.0, max_position_embeddings: 16 }).unwrap();
        assert_eq!(qwen.frequencies(16), plain);
        assert_eq!(hf.frequencies(16), plain);
        assert_ne!(qwen.frequencies(17), plain);
        assert_ne!(hf.frequencies(17), plain);
        assert!(!qwen.changes_during_decode() && hf.changes_during_decode());
    }

    #[test]
    fn invalid_settings_are_errors() {
        assert!(Rope::new(1.0, 64, RopeScaling::None).is_err());
        assert!(Rope::new(10000.0, 63, RopeScaling::None).is_err());
        assert!(Rope::new(10000.0, 64, RopeScaling::Ntk { alpha: 0.5 }).is_err());
        assert!(Rope::new(10000.0, 64, RopeScaling::QwenDynamicNtk { seq_length: 0 }).is_err());
    }
}
