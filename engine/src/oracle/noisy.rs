//! A simulated noisy rater: the choice a person might make, drawn from an automatic oracle's
//! scores, so a study can ask how each acquisition function degrades as raters get noisier.
//!
//! Bradley-Terry with a temperature: P(A) = sigmoid((s_a - s_b) / temperature), s the oracle's
//! score of each text (sentiment: log-odds of positive; length: characters); temperature 0 is the
//! oracle's own deterministic choice. Then the answer is flipped with probability `flip` (a
//! careless click). Draws are seeded by the settings' seed and the item's texts, so a rerun asks
//! and answers the same, whatever order or batch the items come in.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Comparison, Judgement, Oracle, OracleError, Preference};

pub use apl_shared::settings::RaterNoise;

/// Why noise cannot be simulated over an oracle.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {0} labeller compares without scores, so a noisy rater cannot be simulated over it (use sentiment or length)"
)]
pub struct NoScores(pub String);

pub struct NoisyRater {
    pub inner: Arc<dyn Oracle>,
    pub noise: RaterNoise,
}

/// FNV-1a over the parts, each followed by a separator: stable across platforms and Rust
/// versions (std's hasher is not), enough to key a seeded draw.
fn key(seed: u64, parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// P(A) under Bradley-Terry with `temperature` (0: 1, 0 or 1/2 by the sign of the difference).
pub fn p_first(score_a: f64, score_b: f64, temperature: f64) -> f64 {
    let d = score_a - score_b;
    if temperature <= 0.0 {
        return if d > 0.0 {
            1.0
        } else if d < 0.0 {
            0.0
        } else {
            0.5
        };
    }
    1.0 / (1.0 + (-d / temperature).exp())
}

impl Oracle for NoisyRater {
    fn name(&self) -> String {
        format!("{} (noisy: temperature {}, flip {})", self.inner.name(), self.noise.temperature, self.noise.flip)
    }

    fn judge(&self, c: &Comparison) -> Result<Judgement, OracleError> {
        let no_scores = || OracleError::new(self.name(), NoScores(self.inner.name()));
        let sa = self.inner.score(c.prompt, c.a).ok_or_else(no_scores)?;
        let sb = self.inner.score(c.prompt, c.b).ok_or_else(no_scores)?;
        let p = p_first(sa, sb, self.noise.temperature);
        let mut rng = ChaCha8Rng::seed_from_u64(key(self.noise.seed, &[c.prompt, c.a, c.b]));
        let (u, v): (f64, f64) = (rng.random(), rng.random());
        // An exact tie at temperature 0 stays undecided, as the oracle itself says.
        let mut preference = if self.noise.temperature <= 0.0 && sa == sb {
            Preference::NoDecision
        } else if u < p {
            Preference::A
        } else {
            Preference::B
        };
        let flipped = preference != Preference::NoDecision && v < self.noise.flip;
        if flipped {
            preference = if preference == Preference::A { Preference::B } else { Preference::A };
        }
        Ok(Judgement {
            preference,
            rationale: Some(format!(
                "scores A {sa:.3}, B {sb:.3}; P(A) {p:.3}{}",
                if flipped { "; flipped" } else { "" }
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::length::LengthOracle;

    fn rater(temperature: f64, flip: f64) -> NoisyRater {
        NoisyRater { inner: Arc::new(LengthOracle), noise: RaterNoise { temperature, flip, seed: 7 } }
    }

    /// Share of A over 20,000 distinct items whose scores differ by `d` characters.
    fn share_a(r: &NoisyRater, d: usize) -> f64 {
        let n = 20_000;
        let hits = (0..n)
            .filter(|i| {
                let prompt = format!("p{i}");
                let (a, b) = ("x".repeat(10 + d), "y".repeat(10));
                r.judge(&Comparison { prompt: &prompt, a: &a, b: &b }).unwrap().preference == Preference::A
            })
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn bradley_terry_choices_follow_the_score_gap() {
        // sigmoid(1) = 0.731059, sigmoid(2 / 4) = 0.622459 (scipy.special.expit(1), expit(0.5)).
        assert!((p_first(3.0, 2.0, 1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((p_first(2.0, 0.0, 4.0) - 0.622_459_3).abs() < 1e-6);
        assert_eq!((p_first(1.0, 0.0, 0.0), p_first(0.0, 1.0, 0.0)), (1.0, 0.0));
        // Empirical shares within 4 standard errors (sqrt(p q / 20000) ~ 0.0032).
        assert!((share_a(&rater(1.0, 0.0), 1) - 0.731_059).abs() < 0.013);
        assert!((share_a(&rater(4.0, 0.0), 2) - 0.622_459).abs() < 0.014);
        // A flip rate on a deterministic oracle: the longer text loses 20% of the time.
        assert!((share_a(&rater(0.0, 0.2), 3) - 0.8).abs() < 0.012);
        // Both: P(A) = 0.731059 * 0.9 + 0.268941 * 0.1 = 0.684847.
        assert!((share_a(&rater(1.0, 0.1), 1) - 0.684_847).abs() < 0.013);
    }

    #[test]
    fn draws_are_seeded_by_the_item_not_the_order() {
        let r = rater(2.0, 0.1);
        let items: Vec<(String, String)> = (0..50).map(|i| ("a".repeat(i % 7), "b".repeat(i % 5))).collect();
        let judge = |order: &mut dyn Iterator<Item = usize>| -> Vec<(usize, Preference)> {
            let mut v: Vec<(usize, Preference)> = order
                .map(|i| {
                    let c = Comparison { prompt: "p", a: &items[i].0, b: &items[i].1 };
                    (i, r.judge(&c).unwrap().preference)
                })
                .collect();
            v.sort_by_key(|x| x.0);
            v
        };
        assert_eq!(judge(&mut (0..50)), judge(&mut (0..50).rev()));
        // Equal texts at temperature 0 stay undecided, and are never flipped.
        let c = Comparison { prompt: "p", a: "same", b: "abcd" };
        assert_eq!(rater(0.0, 0.5).judge(&c).unwrap().preference, Preference::NoDecision);
    }

    #[test]
    fn oracles_without_scores_are_refused_with_the_reason() {
        struct Compares;
        impl Oracle for Compares {
            fn name(&self) -> String {
                "judge".into()
            }
            fn judge(&self, _: &Comparison) -> Result<Judgement, OracleError> {
                Ok(Judgement::new(Preference::A))
            }
        }
        let r = NoisyRater { inner: Arc::new(Compares), noise: RaterNoise { temperature: 1.0, flip: 0.0, seed: 0 } };
        let e = r.judge(&Comparison { prompt: "p", a: "a", b: "b" }).unwrap_err();
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("without scores"), "{cause}");
    }
}
