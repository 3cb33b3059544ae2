//! The rows of the exports (`GET /api/projects/{id}/export/...`): TRL DPO lines with the
//! metadata to slice them by, and every raw vote. Files, not JSON replies, but the same
//! contract: the server writes these types and whoever reads the files can parse them back.

use serde::{Deserialize, Serialize};

use crate::vocab::{Acquisition, Choice, PairKind, Side};

/// How a pair's votes fell (a judge's "no decision" counts as a skip, never as a side).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VoteCounts {
    pub a: i64,
    pub b: i64,
    pub tie: i64,
    pub both_bad: i64,
    pub skip: i64,
}

impl VoteCounts {
    pub fn add(&mut self, choice: Choice) {
        match choice {
            Choice::A => self.a += 1,
            Choice::B => self.b += 1,
            Choice::Tie => self.tie += 1,
            Choice::BothBad => self.both_bad += 1,
            Choice::Skip => self.skip += 1,
        }
    }

    /// The strict majority between A and B, if any.
    pub fn winner(&self) -> Option<Side> {
        (self.a != self.b && self.a + self.b > 0).then_some(if self.a > self.b { Side::A } else { Side::B })
    }
}

/// A line of `dpo.jsonl`: TRL's `{prompt, chosen, rejected}` and the metadata to slice by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoLine {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub metadata: DpoMetadata,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoMetadata {
    pub pair_id: String,
    pub round: Option<i64>,
    pub acquisition: Option<Acquisition>,
    pub r_a: Option<f64>,
    pub r_b: Option<f64>,
    pub margin: Option<f64>,
    pub entropy: Option<f64>,
    /// Which completion is `chosen`.
    pub chosen_is: Side,
    pub votes: VoteCounts,
    /// Names of the raters (or judges) who voted.
    pub raters: Vec<String>,
}

/// One vote as stored: a line of `votes.jsonl`, a row of `votes.csv` (in this column order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct Vote {
    pub pair_id: String,
    pub pair_kind: PairKind,
    pub round: Option<i64>,
    pub rater_id: String,
    pub rater: String,
    pub choice: Choice,
    /// Which completion was on the left.
    pub left: Side,
    pub time_ms: i64,
    pub rationale: Option<String>,
    pub gold_choice: Option<Choice>,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_between_a_and_b_only() {
        let mut v = VoteCounts::default();
        assert_eq!(v.winner(), None);
        for c in [Choice::A, Choice::Tie, Choice::BothBad, Choice::Skip] {
            v.add(c);
        }
        assert_eq!(v.winner(), Some(Side::A));
        v.add(Choice::B);
        assert_eq!(v.winner(), None, "a tie between A and B is no preference");
    }
}
