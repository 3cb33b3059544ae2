//! Reading labelled data back out: TRL DPO rows with their metadata, every raw vote, and the
//! admin's view of pairs. Human votes on a pair are aggregated by majority between A and B
//! (ties, both-bad and skips counted but never turned into a side); judge labels stay a
//! separate source.
//!
//! Pairs of human win-rate checks (`check_id` set) are evaluation data: none of these reads
//! return them or their votes; `store::checks` reports them.

use std::collections::BTreeMap;

use apl_shared::{Choice, DpoLine, DpoMetadata, LabelSource, PairKind, PairRecord, Preference, Side, Vote, VoteCounts};
use serde::Serialize;

use super::imports::settled;
use super::{Result, Store};

/// A judge's label counted as a vote: a side, a tie, or (no decision) a skip, never a side.
fn add_judged(votes: &mut VoteCounts, p: Preference) {
    votes.add(match p {
        Preference::A => Choice::A,
        Preference::B => Choice::B,
        Preference::Tie => Choice::Tie,
        Preference::NoDecision => Choice::Skip,
    });
}

/// A labelled pair with its aggregated preference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelledPair {
    pub pair: PairRecord,
    pub votes: VoteCounts,
    /// Names of the raters (or judges) who voted.
    pub raters: Vec<String>,
    /// The preferred completion.
    pub chosen: Side,
}

impl LabelledPair {
    /// The (chosen, rejected) completion texts.
    pub fn chosen_rejected(&self) -> (&str, &str) {
        let (a, b) = (self.pair.completion_a.as_str(), self.pair.completion_b.as_str());
        match self.chosen {
            Side::A => (a, b),
            Side::B => (b, a),
        }
    }
}

/// The columns of [`PairRecord`].
const PAIR_COLS: &str = "p.id, p.kind, p.round, p.acquisition, pr.text AS prompt, ca.text AS completion_a, \
    cb.text AS completion_b, p.r_a, p.r_b, p.margin, p.entropy, p.gold_choice, p.target_votes, p.votes, p.created_at, \
    p.extra";
const PAIR_JOINS: &str = "FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id \
    JOIN completions ca ON ca.id = p.completion_a JOIN completions cb ON cb.id = p.completion_b";

impl Store {
    /// Pairs of a project (not those of human checks), oldest first; `round` narrows to one round.
    pub async fn pair_records(
        &self,
        project_id: &str,
        round: Option<i64>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<PairRecord>> {
        let q = format!(
            "SELECT {PAIR_COLS} {PAIR_JOINS} WHERE p.project_id = $1 AND p.check_id IS NULL AND ($2 IS NULL OR p.round = $2) \
             AND {} ORDER BY p.created_at, p.id LIMIT $3 OFFSET $4",
            settled("p")
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(project_id)
            .bind(round)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Training pairs with a majority preference from `source`, oldest first.
    pub async fn preferences(&self, project_id: &str, source: LabelSource) -> Result<Vec<LabelledPair>> {
        let q = format!(
            "SELECT {PAIR_COLS} {PAIR_JOINS} WHERE p.project_id = $1 AND p.kind = $2 AND p.check_id IS NULL AND {} \
             ORDER BY p.created_at, p.id",
            settled("p")
        );
        let pairs: Vec<PairRecord> =
            sqlx::query_as(sqlx::AssertSqlSafe(q)).bind(project_id).bind(PairKind::Train).fetch_all(&self.pool).await?;
        let human: Vec<(String, Choice, String)> = sqlx::query_as(
            "SELECT l.pair_id, l.choice, r.name FROM labels l JOIN raters r ON r.id = l.rater_id \
             JOIN pairs p ON p.id = l.pair_id WHERE p.project_id = $1 AND p.kind = $2 AND p.check_id IS NULL \
             ORDER BY l.created_at, l.id",
        )
        .bind(project_id)
        .bind(PairKind::Train)
        .fetch_all(&self.pool)
        .await?;
        let judge: Vec<(String, Preference, String)> = sqlx::query_as(
            "SELECT l.pair_id, l.choice, l.judge FROM judge_labels l JOIN pairs p ON p.id = l.pair_id \
             WHERE p.project_id = $1 AND p.kind = $2 AND p.check_id IS NULL ORDER BY l.created_at, l.id",
        )
        .bind(project_id)
        .bind(PairKind::Train)
        .fetch_all(&self.pool)
        .await?;
        type Tally = BTreeMap<String, (VoteCounts, Vec<String>)>;
        fn tally<C: Copy>(rows: Vec<(String, C, String)>, add: fn(&mut VoteCounts, C)) -> Tally {
            let mut m = Tally::new();
            for (pair, choice, who) in rows {
                let e = m.entry(pair).or_default();
                add(&mut e.0, choice);
                if !e.1.contains(&who) {
                    e.1.push(who);
                }
            }
            m
        }
        let (human, judge) = (tally(human, VoteCounts::add), tally(judge, add_judged));
        let mut out = Vec::new();
        for pair in pairs {
            let h = human.get(&pair.id).filter(|(v, _)| v.winner().is_some());
            let j = judge.get(&pair.id).filter(|(v, _)| v.winner().is_some());
            let picked = match source {
                LabelSource::Human => h,
                LabelSource::Judge => j,
                LabelSource::HumanThenJudge => h.or(j),
            };
            if let Some((votes, raters)) = picked {
                let chosen = votes.winner().expect("filtered on a winner");
                out.push(LabelledPair { pair, votes: votes.clone(), raters: raters.clone(), chosen });
            }
        }
        Ok(out)
    }

    /// Every human vote of a project on training and gold pairs, in the order given (the raw
    /// exports and the label-quality analytics read these).
    pub async fn votes(&self, project_id: &str) -> Result<Vec<Vote>> {
        Ok(sqlx::query_as(
            "SELECT l.pair_id, p.kind AS pair_kind, p.round, l.rater_id, r.name AS rater, l.choice, \
               l.left_side AS \"left\", l.time_ms, l.rationale, p.gold_choice, l.created_at \
             FROM labels l JOIN pairs p ON p.id = l.pair_id JOIN raters r ON r.id = l.rater_id \
             WHERE p.project_id = $1 AND p.check_id IS NULL ORDER BY l.created_at, l.id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl LabelledPair {
    /// The pair as a line of the DPO export.
    pub fn dpo_line(&self) -> DpoLine {
        let (chosen, rejected) = self.chosen_rejected();
        let p = &self.pair;
        DpoLine {
            prompt: p.prompt.clone(),
            chosen: chosen.to_string(),
            rejected: rejected.to_string(),
            metadata: DpoMetadata {
                pair_id: p.id.clone(),
                round: p.round,
                acquisition: p.acquisition,
                r_a: p.r_a,
                r_b: p.r_b,
                margin: p.margin,
                entropy: p.entropy,
                chosen_is: self.chosen,
                votes: self.votes.clone(),
                raters: self.raters.clone(),
                extra: p.extra.clone(),
            },
        }
    }
}

/// The raw votes as CSV, with a header (the fields of [`Vote`]).
pub fn votes_csv(votes: &[Vote]) -> String {
    if votes.is_empty() {
        return csv_of(std::iter::empty::<Vote>()) + &VOTE_COLUMNS.join(",") + "\n";
    }
    csv_of(votes)
}

/// Rows as CSV, header from their fields, written by the `csv` crate (quoting) with every cell
/// passed through [`apl_shared::csv_cell`] (no cell a spreadsheet would run as a formula).
pub fn csv_of<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).expect("in-memory write");
    }
    let raw = w.into_inner().expect("in-memory flush");
    // Read back as records (serde's field order and the header), then written cell by cell.
    let mut read = csv::ReaderBuilder::new().has_headers(false).from_reader(raw.as_slice());
    let mut out = csv::Writer::from_writer(Vec::new());
    for record in read.records() {
        let record = record.expect("CSV just written");
        out.write_record(record.iter().map(|c| apl_shared::csv_cell(c).into_owned())).expect("in-memory write");
    }
    String::from_utf8(out.into_inner().expect("in-memory flush")).expect("CSV of UTF-8 strings")
}

/// The CSV header, for an export with no votes (serialising writes it from the first row).
const VOTE_COLUMNS: [&str; 11] = [
    "pair_id",
    "pair_kind",
    "round",
    "rater_id",
    "rater",
    "choice",
    "left",
    "time_ms",
    "rationale",
    "gold_choice",
    "created_at",
];
