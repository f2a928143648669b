//! Two policies compared on the same checked prompts: which prompts a stage turned right, which it
//! turned wrong, and whether the difference is more than noise.
//!
//! A small change of a policy flips a few borderline prompts both ways, so the difference of two
//! accuracies on a few hundred prompts moves by a few prompts whatever the change did. What tells
//! a real change from that is the split of the flips: McNemar's test, here its exact form (the
//! two-sided sign test on the discordant prompts).
//!
//! ```
//! use qwen_align::Flips;
//!
//! // 3 prompts turned right, 12 turned wrong: p = 0.035, a real fall at the 5% level.
//! let before = [vec![false; 3], vec![true; 12], vec![true; 85]].concat();
//! let after = [vec![true; 3], vec![false; 12], vec![true; 85]].concat();
//! let flips = Flips::new(&before, &after);
//! assert_eq!((flips.gained, flips.lost), (3, 12));
//! assert!((flips.p_value - 0.0352).abs() < 1e-4);
//! assert!(flips.significantly_lower(0.05));
//! ```

use serde::Serialize;

/// The prompts a stage turned right (`gained`) and turned wrong (`lost`), and the exact
/// two-sided sign test of that split ([`sign_test`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Flips {
    pub gained: usize,
    pub lost: usize,
    pub p_value: f64,
}

impl Flips {
    /// The flips from `before` to `after`, whether each prompt was answered right (the same
    /// prompts in the same order; extra entries of the longer slice are ignored).
    pub fn new(before: &[bool], after: &[bool]) -> Self {
        let gained = before.iter().zip(after).filter(|&(&b, &a)| !b && a).count();
        let lost = before.iter().zip(after).filter(|&(&b, &a)| b && !a).count();
        Self { gained, lost, p_value: sign_test(gained, lost) }
    }

    /// Whether more prompts were lost than gained, at significance level `alpha`.
    pub fn significantly_lower(&self, alpha: f64) -> bool {
        self.lost > self.gained && self.p_value < alpha
    }

    /// Whether more prompts were gained than lost, at significance level `alpha`.
    pub fn significantly_higher(&self, alpha: f64) -> bool {
        self.gained > self.lost && self.p_value < alpha
    }
}

impl std::fmt::Display for Flips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "+{} -{} prompts (sign test p = {:.3})", self.gained, self.lost, self.p_value)
    }
}

/// The exact two-sided sign test of `a` against `b` (McNemar's exact test on `a + b` discordant
/// pairs): `P(X ≤ min) + P(X ≥ max)` for `X ~ Binomial(a + b, ½)`, capped at 1; 1 when `a + b = 0`.
/// Each term from the binomial coefficient's logarithm, since `2^-n` underflows past n = 1074.
pub fn sign_test(a: usize, b: usize) -> f64 {
    let n = a + b;
    let (mut ln_choose, mut tail) = (0.0f64, 0.0f64);
    for i in 0..=a.min(b) {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose - n as f64 * std::f64::consts::LN_2).exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_test_is_the_exact_binomial_tail() {
        // Binomial(10, ½): P(X ≤ 1) = 11 / 1024, two-sided 22 / 1024, either way round.
        assert!((sign_test(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((sign_test(9, 1) - 22.0 / 1024.0).abs() < 1e-12);
        // Binomial(8, ½): P(X ≤ 2) = 37 / 256.
        assert!((sign_test(2, 6) - 74.0 / 256.0).abs() < 1e-12);
        // 2 · Σ_{i ≤ 9} C(25, i) / 2^25 = 0.229522943...
        assert!((sign_test(9, 16) - 0.229_522_943_496_704_1).abs() < 1e-12);
        assert_eq!(sign_test(0, 0), 1.0);
        assert_eq!(sign_test(5, 5), 1.0);
        // Far past 2^-1074 the tail underflows to 0 (not NaN), with or without one flip the other way.
        assert_eq!(sign_test(0, 1200), 0.0);
        assert_eq!(sign_test(1, 1200), 0.0);
    }

    #[test]
    fn flips_count_each_direction() {
        let flips = Flips::new(&[true, true, false, true, false], &[false, true, true, false, false]);
        assert_eq!((flips.gained, flips.lost), (1, 2));
        assert!(!flips.significantly_lower(0.05) && !flips.significantly_higher(0.05));
        let up = Flips::new(&[false; 10], &[true; 10]);
        assert!(up.significantly_higher(0.05) && !up.significantly_lower(0.05));
    }
}
