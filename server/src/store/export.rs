//! Reading labelled data back out: TRL DPO rows with their metadata, every raw vote, and the
//! admin's view of pairs. Human votes on a pair are aggregated by majority between A and B
//! (ties, both-bad and skips counted but never turned into a side); judge labels stay a
//! separate source.
//!
//! Pairs of human win-rate checks (`check_id` set) are evaluation data: none of these reads
//! return them or their votes; `store::checks` reports them.

use std::collections::BTreeMap;

use apl_shared::PairRecord;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError};

/// Which labels make a preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSource {
    Human,
    Judge,
    /// Human votes where a pair has any, else judge labels.
    HumanThenJudge,
}

impl std::str::FromStr for LabelSource {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "human" => Ok(Self::Human),
            "judge" => Ok(Self::Judge),
            "human_then_judge" => Ok(Self::HumanThenJudge),
            _ => Err(StoreError::Invalid(format!("source: {s:?} is not human, judge or human_then_judge"))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VoteCounts {
    pub a: i64,
    pub b: i64,
    pub tie: i64,
    pub both_bad: i64,
    pub skip: i64,
}

impl VoteCounts {
    fn add(&mut self, choice: &str) {
        match choice {
            "a" => self.a += 1,
            "b" => self.b += 1,
            "tie" => self.tie += 1,
            "both_bad" => self.both_bad += 1,
            _ => self.skip += 1,
        }
    }

    /// The strict majority between A and B, if any.
    pub fn winner(&self) -> Option<bool> {
        (self.a != self.b && self.a + self.b > 0).then_some(self.a > self.b)
    }
}

/// A labelled pair with its aggregated preference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preference {
    pub pair: PairRecord,
    pub votes: VoteCounts,
    /// Names of the raters (or judges) who voted.
    pub raters: Vec<String>,
    /// True when A is preferred.
    pub a_wins: bool,
}

/// One vote as stored, for the raw exports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vote {
    pub pair_id: String,
    pub pair_kind: String,
    pub round: Option<i64>,
    pub rater_id: String,
    pub rater: String,
    pub choice: String,
    /// Which completion (a or b) was on the left.
    pub left: String,
    pub time_ms: i64,
    pub rationale: Option<String>,
    pub gold_choice: Option<String>,
    pub created_at: i64,
}

const PAIR_COLS: &str = "p.id, p.kind, p.round, p.acquisition, pr.text AS prompt, ca.text AS text_a, \
    cb.text AS text_b, p.r_a, p.r_b, p.margin, p.entropy, p.gold_choice, p.target_votes, p.votes, p.created_at";
const PAIR_JOINS: &str = "FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id \
    JOIN completions ca ON ca.id = p.completion_a JOIN completions cb ON cb.id = p.completion_b";

fn pair_of(r: &AnyRow) -> Result<PairRecord> {
    Ok(PairRecord {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        round: r.try_get("round")?,
        acquisition: r.try_get("acquisition")?,
        prompt: r.try_get("prompt")?,
        completion_a: r.try_get("text_a")?,
        completion_b: r.try_get("text_b")?,
        r_a: r.try_get("r_a")?,
        r_b: r.try_get("r_b")?,
        margin: r.try_get("margin")?,
        entropy: r.try_get("entropy")?,
        gold_choice: r.try_get("gold_choice")?,
        target_votes: r.try_get("target_votes")?,
        votes: r.try_get("votes")?,
        created_at: r.try_get("created_at")?,
    })
}

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
             ORDER BY p.created_at, p.id LIMIT $3 OFFSET $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(project_id)
            .bind(round)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(pair_of).collect()
    }

    /// Training pairs with a majority preference from `source`, oldest first.
    pub async fn preferences(&self, project_id: &str, source: LabelSource) -> Result<Vec<Preference>> {
        let q = format!(
            "SELECT {PAIR_COLS} {PAIR_JOINS} WHERE p.project_id = $1 AND p.kind = 'train' AND p.check_id IS NULL \
             ORDER BY p.created_at, p.id"
        );
        let pairs = sqlx::query(sqlx::AssertSqlSafe(q)).bind(project_id).fetch_all(&self.pool).await?;
        let human = sqlx::query(
            "SELECT l.pair_id, l.choice, r.name FROM labels l JOIN raters r ON r.id = l.rater_id \
             JOIN pairs p ON p.id = l.pair_id WHERE p.project_id = $1 AND p.kind = 'train' AND p.check_id IS NULL \
             ORDER BY l.created_at, l.id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        let judge = sqlx::query(
            "SELECT l.pair_id, l.choice, l.judge FROM judge_labels l JOIN pairs p ON p.id = l.pair_id \
             WHERE p.project_id = $1 AND p.kind = 'train' AND p.check_id IS NULL ORDER BY l.created_at, l.id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        let group = |rows: &[AnyRow]| -> Result<BTreeMap<String, (VoteCounts, Vec<String>)>> {
            let mut m: BTreeMap<String, (VoteCounts, Vec<String>)> = BTreeMap::new();
            for r in rows {
                let e = m.entry(r.try_get(0)?).or_default();
                let choice: String = r.try_get(1)?;
                // A judge's "none" (no decision) is recorded as a skip, never as a side.
                e.0.add(if choice == "none" { "skip" } else { &choice });
                let who: String = r.try_get(2)?;
                if !e.1.contains(&who) {
                    e.1.push(who);
                }
            }
            Ok(m)
        };
        let (human, judge) = (group(&human)?, group(&judge)?);
        let mut out = Vec::new();
        for row in &pairs {
            let pair = pair_of(row)?;
            let h = human.get(&pair.id).filter(|(v, _)| v.winner().is_some());
            let j = judge.get(&pair.id).filter(|(v, _)| v.winner().is_some());
            let picked = match source {
                LabelSource::Human => h,
                LabelSource::Judge => j,
                LabelSource::HumanThenJudge => h.or(j),
            };
            if let Some((votes, raters)) = picked {
                let a_wins = votes.winner().expect("filtered on a winner");
                out.push(Preference { pair, votes: votes.clone(), raters: raters.clone(), a_wins });
            }
        }
        Ok(out)
    }

    /// Every human vote of a project on training and gold pairs, in the order given (the raw
    /// exports and the label-quality analytics read these).
    pub async fn votes(&self, project_id: &str) -> Result<Vec<Vote>> {
        let rows = sqlx::query(
            "SELECT l.pair_id, p.kind, p.round, l.rater_id, r.name, l.choice, l.left_side, l.time_ms, l.rationale, \
               p.gold_choice, l.created_at \
             FROM labels l JOIN pairs p ON p.id = l.pair_id JOIN raters r ON r.id = l.rater_id \
             WHERE p.project_id = $1 AND p.check_id IS NULL ORDER BY l.created_at, l.id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Vote {
                    pair_id: r.try_get(0)?,
                    pair_kind: r.try_get(1)?,
                    round: r.try_get(2)?,
                    rater_id: r.try_get(3)?,
                    rater: r.try_get(4)?,
                    choice: r.try_get(5)?,
                    left: r.try_get(6)?,
                    time_ms: r.try_get(7)?,
                    rationale: r.try_get(8)?,
                    gold_choice: r.try_get(9)?,
                    created_at: r.try_get(10)?,
                })
            })
            .collect()
    }
}

/// A TRL DPO line: prompt, chosen, rejected, and the metadata a researcher needs to slice it.
pub fn dpo_line(p: &Preference) -> serde_json::Value {
    let (chosen, rejected) = if p.a_wins {
        (&p.pair.completion_a, &p.pair.completion_b)
    } else {
        (&p.pair.completion_b, &p.pair.completion_a)
    };
    serde_json::json!({
        "prompt": p.pair.prompt,
        "chosen": chosen,
        "rejected": rejected,
        "metadata": {
            "pair_id": p.pair.id,
            "round": p.pair.round,
            "acquisition": p.pair.acquisition,
            "r_a": p.pair.r_a,
            "r_b": p.pair.r_b,
            "margin": p.pair.margin,
            "entropy": p.pair.entropy,
            "chosen_is": if p.a_wins { "a" } else { "b" },
            "votes": p.votes,
            "raters": p.raters,
        }
    })
}

/// The raw votes as CSV, with a header.
pub fn votes_csv(votes: &[Vote]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
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
    ])
    .expect("in-memory write");
    for v in votes {
        w.write_record([
            v.pair_id.clone(),
            v.pair_kind.clone(),
            v.round.map(|r| r.to_string()).unwrap_or_default(),
            v.rater_id.clone(),
            v.rater.clone(),
            v.choice.clone(),
            v.left.clone(),
            v.time_ms.to_string(),
            v.rationale.clone().unwrap_or_default(),
            v.gold_choice.clone().unwrap_or_default(),
            v.created_at.to_string(),
        ])
        .expect("in-memory write");
    }
    String::from_utf8(w.into_inner().expect("in-memory flush")).expect("CSV of UTF-8 strings")
}
