//! Prefers the longer completion, in characters. A deterministic oracle with a preference a
//! model can learn (tokens carry different numbers of characters), for tests.

use super::{Comparison, Judgement, Oracle, OracleError, Preference};

#[derive(Debug, Clone, Copy, Default)]
pub struct LengthOracle;

impl Oracle for LengthOracle {
    fn name(&self) -> String {
        apl_shared::Labeller::Length.name().into()
    }

    fn score(&self, _prompt: &str, completion: &str) -> Option<f64> {
        Some(completion.chars().count() as f64)
    }

    fn judge(&self, c: &Comparison) -> Result<Judgement, OracleError> {
        let (a, b) = (c.a.chars().count(), c.b.chars().count());
        Ok(Judgement {
            preference: match a.cmp(&b) {
                std::cmp::Ordering::Greater => Preference::A,
                std::cmp::Ordering::Less => Preference::B,
                std::cmp::Ordering::Equal => Preference::NoDecision,
            },
            rationale: Some(format!("{a} vs {b} characters")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_wins_equal_is_undecided() {
        let j = |a: &str, b: &str| LengthOracle.judge(&Comparison { prompt: "p", a, b }).unwrap().preference;
        assert_eq!(j("long one", "short"), Preference::A);
        assert_eq!(j("x", "xy"), Preference::B);
        assert_eq!(j("ab", "cd"), Preference::NoDecision);
        // Characters, not bytes.
        assert_eq!(j("ééé", "abcd"), Preference::B);
    }
}
