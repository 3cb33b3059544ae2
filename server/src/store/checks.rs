//! Human win-rate checks: an evaluation's samples (the policy's completion against the
//! baseline's, with the judge's verdict) sent to a chosen group of raters through the ordinary
//! rater flow. The store keeps the check and returns what was voted; the figures (human
//! win-rate beside the judge's, agreement) are `analytics::checks`.
//!
//! A check's pairs are ordinary pairs, so leases, overlap, randomised sides, labels and undo
//! work unchanged; they are kind 'train' (the kind CHECK of `pairs` cannot be altered on
//! SQLite) with `check_id` set, and every read of training data excludes them. Completion A is
//! the policy's text and B the baseline's, so a label `a` is a win for the policy. The
//! evaluation's stored outcome is copied into `check_pairs` with the sample's index.

use std::collections::{HashMap, HashSet};

use apl_shared::{CheckPair, Choice, EvalSample, EvaluationDetails, NewHumanCheck, Outcome, PairKind, Split};

use super::imports::{NewCompletion, insert_completion, insert_prompt};
use super::{Result, Store, StoreError, new_id, now_ms};

/// A check as stored: its evaluation, raters, and per pair the judge's outcome and the raters'
/// votes so far (as outcomes for the policy, skips left out).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRecord {
    pub id: String,
    pub evaluation: String,
    pub checkpoint: Option<String>,
    pub judge: String,
    pub raters: Vec<String>,
    pub overlap: i64,
    pub pairs: Vec<(Outcome, Vec<Outcome>)>,
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
struct CheckRow {
    id: String,
    evaluation_id: String,
    overlap: i64,
    created_at: i64,
    checkpoint_id: Option<String>,
    judge: String,
}

/// A human label as an outcome for the policy (completion A); skips are none.
fn label_outcome(choice: Choice) -> Option<Outcome> {
    match choice {
        Choice::A => Some(Outcome::Win),
        Choice::B => Some(Outcome::Loss),
        Choice::Tie | Choice::BothBad => Some(Outcome::Tie),
        Choice::Skip => None,
    }
}

/// The samples of an evaluation, each with its outcome, or which one lacks it.
fn samples_of(evaluation: &str, details: &EvaluationDetails) -> Result<Vec<(EvalSample, Outcome)>> {
    details
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let outcome = s.outcome.ok_or_else(|| {
                StoreError::Invalid(format!(
                    "evaluation: sample {i} of evaluation {evaluation:?} has no outcome (win, tie or loss)"
                ))
            })?;
            Ok((s.clone(), outcome))
        })
        .collect()
}

impl Store {
    /// Creates a check of `req.evaluation` for `req.raters`: one pair per sample (the first
    /// `req.pairs`), each wanting `req.overlap` of those raters, all in one transaction.
    pub async fn create_check(&self, project_id: &str, req: &NewHumanCheck) -> Result<CheckRecord> {
        self.project(project_id).await?;
        if req.raters.is_empty() {
            return Err(StoreError::Invalid("raters: at least one rater is needed".into()));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = req.raters.iter().find(|r| !seen.insert(r.as_str())) {
            return Err(StoreError::Invalid(format!("raters: {dup:?} is listed twice")));
        }
        let overlap = req.overlap.unwrap_or(1);
        if overlap < 1 || overlap as usize > req.raters.len() {
            return Err(StoreError::Invalid(format!(
                "overlap: must be 1 to {} (the number of raters), not {overlap}",
                req.raters.len()
            )));
        }
        let mut w = self.begin_write().await?;
        let (checkpoint, details): (Option<String>, EvaluationDetails) =
            sqlx::query_as("SELECT checkpoint_id, details FROM evaluations WHERE id = $1 AND project_id = $2")
                .bind(&req.evaluation)
                .bind(project_id)
                .fetch_optional(&mut *w.tx)
                .await?
                .ok_or_else(|| {
                    StoreError::Invalid(format!("evaluation: no evaluation {:?} in this project", req.evaluation))
                })?;
        let samples = samples_of(&req.evaluation, &details)?;
        if samples.is_empty() {
            return Err(StoreError::Invalid(format!(
                "evaluation: evaluation {:?} has no samples to check",
                req.evaluation
            )));
        }
        let n = req.pairs.unwrap_or(samples.len());
        if n < 1 || n > samples.len() {
            return Err(StoreError::Invalid(format!(
                "pairs: must be 1 to {} (the evaluation's samples), not {n}",
                samples.len()
            )));
        }
        for rater in &req.raters {
            let disabled: i64 = sqlx::query_scalar("SELECT disabled FROM raters WHERE id = $1 AND project_id = $2")
                .bind(rater)
                .bind(project_id)
                .fetch_optional(&mut *w.tx)
                .await?
                .ok_or_else(|| StoreError::Invalid(format!("raters: no rater {rater:?} in this project")))?;
            if disabled != 0 {
                return Err(StoreError::Invalid(format!("raters: rater {rater:?} is disabled")));
            }
        }

        let id = new_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO human_checks (id, project_id, evaluation_id, overlap, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(project_id)
        .bind(&req.evaluation)
        .bind(overlap as i64)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        for rater in &req.raters {
            sqlx::query("INSERT INTO check_raters (check_id, rater_id) VALUES ($1, $2)")
                .bind(&id)
                .bind(rater)
                .execute(&mut *w.tx)
                .await?;
        }
        // The samples' prompts: the recorded id when it is still this project's, else the
        // oldest evaluation prompt with the same text, else a new evaluation prompt (never a
        // training one, so a checked prompt cannot reach the training pool).
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, text FROM prompts WHERE project_id = $1 AND split = $2 ORDER BY created_at DESC, id DESC",
        )
        .bind(project_id)
        .bind(Split::Eval)
        .fetch_all(&mut *w.tx)
        .await?;
        let mut by_id: HashMap<String, String> = HashMap::new();
        let mut by_text: HashMap<String, String> = HashMap::new();
        for (pid, text) in rows {
            // Newest first, so the oldest with a text wins.
            by_text.insert(text.clone(), pid.clone());
            by_id.insert(pid, text);
        }
        let policy_source = format!("policy:{}", checkpoint.as_deref().unwrap_or("base"));
        for (i, (s, outcome)) in samples.iter().take(n).enumerate() {
            let recorded = s.prompt_id.as_ref().filter(|p| by_id.get(*p) == Some(&s.prompt));
            let prompt_id = match recorded.or_else(|| by_text.get(&s.prompt)) {
                Some(p) => p.clone(),
                None => {
                    let p = insert_prompt(&mut w, project_id, &s.prompt, None, Split::Eval, "check", None, None, now)
                        .await?;
                    by_text.insert(s.prompt.clone(), p.clone());
                    p
                }
            };
            let completion = |text: &str, source: &str| NewCompletion {
                text: text.into(),
                source: source.into(),
                logp: None,
                tokens: None,
            };
            let a = insert_completion(&mut w, &prompt_id, &completion(&s.policy, &policy_source), now).await?;
            let b = insert_completion(&mut w, &prompt_id, &completion(&s.baseline, "reference"), now).await?;
            let pair = new_id();
            sqlx::query(
                "INSERT INTO pairs (id, project_id, prompt_id, completion_a, completion_b, kind, round, acquisition, \
                   r_a, r_b, margin, entropy, gold_choice, target_votes, votes, created_at, check_id) \
                 VALUES ($1, $2, $3, $4, $5, $9, NULL, NULL, NULL, NULL, NULL, NULL, NULL, $6, 0, $7, $8)",
            )
            .bind(&pair)
            .bind(project_id)
            .bind(&prompt_id)
            .bind(&a)
            .bind(&b)
            .bind(overlap as i64)
            .bind(now)
            .bind(&id)
            .bind(PairKind::Train)
            .execute(&mut *w.tx)
            .await?;
            sqlx::query("INSERT INTO check_pairs (pair_id, check_id, sample, judge) VALUES ($1, $2, $3, $4)")
                .bind(&pair)
                .bind(&id)
                .bind(i as i64)
                .bind(*outcome)
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await?;
        self.check(&id).await
    }

    /// The checks of a project with their votes so far, newest first.
    pub async fn checks(&self, project_id: &str) -> Result<Vec<CheckRecord>> {
        let q = format!("{CHECK_SELECT} WHERE h.project_id = $1 ORDER BY h.created_at DESC, h.id DESC");
        let rows: Vec<CheckRow> = sqlx::query_as(sqlx::AssertSqlSafe(q)).bind(project_id).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.check_record(r).await?);
        }
        Ok(out)
    }

    /// One check with its votes so far.
    pub async fn check(&self, id: &str) -> Result<CheckRecord> {
        let q = format!("{CHECK_SELECT} WHERE h.id = $1");
        let r: CheckRow = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no check {id:?}")))?;
        self.check_record(r).await
    }

    async fn check_record(&self, r: CheckRow) -> Result<CheckRecord> {
        let raters: Vec<String> = sqlx::query_scalar(
            "SELECT c.rater_id FROM check_raters c JOIN raters r ON r.id = c.rater_id WHERE c.check_id = $1 \
             ORDER BY r.created_at, r.id",
        )
        .bind(&r.id)
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<(String, Outcome, Option<Choice>)> = sqlx::query_as(
            "SELECT c.pair_id, c.judge, l.choice FROM check_pairs c \
             LEFT JOIN labels l ON l.pair_id = c.pair_id AND l.choice <> $2 \
             WHERE c.check_id = $1 ORDER BY c.sample, l.created_at, l.id",
        )
        .bind(&r.id)
        .bind(Choice::Skip)
        .fetch_all(&self.pool)
        .await?;
        let mut pairs: Vec<(Outcome, Vec<Outcome>)> = Vec::new();
        let mut last: Option<String> = None;
        for (pair, judge, choice) in rows {
            if last.as_deref() != Some(pair.as_str()) {
                pairs.push((judge, Vec::new()));
                last = Some(pair);
            }
            if let Some(o) = choice.and_then(label_outcome) {
                pairs.last_mut().expect("pushed above").1.push(o);
            }
        }
        Ok(CheckRecord {
            id: r.id,
            evaluation: r.evaluation_id,
            checkpoint: r.checkpoint_id,
            judge: r.judge,
            raters,
            overlap: r.overlap,
            pairs,
            created_at: r.created_at,
        })
    }

    /// A check's pairs in sample order with the judge's outcome and the human votes so far.
    pub async fn check_pairs(&self, id: &str) -> Result<Vec<CheckPair>> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM human_checks WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!("no check {id:?}")));
        }
        let mut pairs: Vec<CheckPair> = sqlx::query_as(
            "SELECT p.id AS pair, pr.text AS prompt, ca.text AS policy, cb.text AS baseline, c.judge FROM check_pairs c \
             JOIN pairs p ON p.id = c.pair_id JOIN prompts pr ON pr.id = p.prompt_id \
             JOIN completions ca ON ca.id = p.completion_a JOIN completions cb ON cb.id = p.completion_b \
             WHERE c.check_id = $1 ORDER BY c.sample",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let labels: Vec<(String, Choice)> = sqlx::query_as(
            "SELECT l.pair_id, l.choice FROM labels l JOIN check_pairs c ON c.pair_id = l.pair_id \
             WHERE c.check_id = $1 AND l.choice <> $2 ORDER BY l.created_at, l.id",
        )
        .bind(id)
        .bind(Choice::Skip)
        .fetch_all(&self.pool)
        .await?;
        let mut human: HashMap<String, Vec<Outcome>> = HashMap::new();
        for (pair, choice) in labels {
            if let Some(o) = label_outcome(choice) {
                human.entry(pair).or_default().push(o);
            }
        }
        for p in &mut pairs {
            p.human = human.remove(&p.pair).unwrap_or_default();
        }
        Ok(pairs)
    }
}

const CHECK_SELECT: &str = "SELECT h.id, h.evaluation_id, h.overlap, h.created_at, e.checkpoint_id, e.judge \
    FROM human_checks h JOIN evaluations e ON e.id = h.evaluation_id";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_name_what_is_missing() {
        let d: EvaluationDetails = serde_json::from_value(serde_json::json!({
            "win_rate": {"win_rate": 0.5, "stderr": 0.1, "n": 2, "wins": 1, "ties": 0, "losses": 1},
            "samples": [
                {"prompt": "p", "prompt_id": "x", "policy": "a", "reference": "b", "outcome": "loss"},
                {"prompt": "p", "policy": "a", "baseline": "b"},
            ]
        }))
        .unwrap();
        let e = samples_of("e", &d).unwrap_err().to_string();
        assert!(e.starts_with("evaluation: sample 1") && e.contains("outcome"), "{e}");
        let first = EvaluationDetails { samples: d.samples[..1].to_vec(), ..d.clone() };
        let ok = samples_of("e", &first).unwrap();
        assert_eq!(ok[0].1, Outcome::Loss);
        assert_eq!(ok[0].0.prompt_id.as_deref(), Some("x"));
        assert_eq!(ok[0].0.baseline, "b", "older rows spell it `reference`");
    }

    #[test]
    fn labels_are_outcomes_for_the_policy() {
        assert_eq!(label_outcome(Choice::A), Some(Outcome::Win));
        assert_eq!(label_outcome(Choice::B), Some(Outcome::Loss));
        assert_eq!(label_outcome(Choice::BothBad), Some(Outcome::Tie));
        assert_eq!(label_outcome(Choice::Skip), None);
    }
}
