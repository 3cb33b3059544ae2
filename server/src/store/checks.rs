//! Human win-rate checks: an evaluation's samples (the policy's completion against the
//! reference's, with the judge's verdict) sent to a chosen group of raters through the ordinary
//! rater flow, and the human win-rate they give set beside the judge's on the same pairs.
//!
//! A check's pairs are ordinary pairs, so leases, overlap, randomised sides, labels and undo
//! work unchanged; they are kind 'train' (the kind CHECK of `pairs` cannot be altered on
//! SQLite) with `check_id` set, and every read of training data excludes them. Completion A is
//! the policy's text and B the reference's, so a label `a` is a win for the policy. The
//! evaluation's stored outcome is copied into `check_pairs` with the sample's index.
//!
//! Figures are computed on every read from the labels so far (a check is at most a few hundred
//! pairs), so an undone label changes them back at once.

use std::collections::{HashMap, HashSet};

use apl_shared::{CheckPair, HumanCheck, NewHumanCheck, RateInterval};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::imports::{NewCompletion, insert_completion, insert_prompt};
use super::{Result, Store, StoreError, new_id, now_ms};
use crate::analytics::agreement::cohen_kappa;
use crate::analytics::bootstrap::{LEVEL, RESAMPLES, bootstrap};
use apl_engine::eval::Outcome;

/// The bootstrap's seed: the panel shows the same interval on every load.
const SEED: u64 = 0x00c0_ffee;

/// One stored evaluation sample.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    /// Recorded by evaluations since checks exist; older ones have only the text.
    prompt_id: Option<String>,
    prompt: String,
    policy: String,
    reference: String,
    outcome: Outcome,
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Win => "win",
        Outcome::Tie => "tie",
        Outcome::Loss => "loss",
    }
}

fn parse_outcome(s: &str) -> Option<Outcome> {
    serde_json::from_value(Value::String(s.to_string())).ok()
}

/// A human label as an outcome for the policy (completion A); skips are none.
fn label_outcome(choice: &str) -> Option<Outcome> {
    match choice {
        "a" => Some(Outcome::Win),
        "b" => Some(Outcome::Loss),
        "tie" | "both_bad" => Some(Outcome::Tie),
        _ => None,
    }
}

/// The samples of an evaluation's `details`, or what is wrong with them.
fn samples_of(evaluation: &str, details: &Value) -> Result<Vec<Sample>> {
    let bad = |i: usize, what: &str| {
        StoreError::Invalid(format!("evaluation: sample {i} of evaluation {evaluation:?} {what}"))
    };
    let Some(list) = details["samples"].as_array() else { return Ok(Vec::new()) };
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let text = |k: &str| s[k].as_str().map(str::to_string).ok_or_else(|| bad(i, &format!("has no {k} text")));
            Ok(Sample {
                prompt_id: s["prompt_id"].as_str().map(str::to_string),
                prompt: text("prompt")?,
                policy: text("policy")?,
                reference: text("reference")?,
                outcome: s["outcome"]
                    .as_str()
                    .and_then(parse_outcome)
                    .ok_or_else(|| bad(i, "has no outcome (win, tie or loss)"))?,
            })
        })
        .collect()
}

/// A check's figures from its pairs: (judge outcome, human outcomes so far) per pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub human: Option<RateInterval>,
    pub judge_rate: Option<RateInterval>,
    pub agreement: Option<f64>,
    pub kappa: Option<f64>,
}

/// Pairs with at least one human vote count. Each scores its raters' mean (win 1, tie 1/2,
/// loss 0); the human rate is the mean over pairs and the judge's the mean of its outcomes on
/// the same pairs, each with a 95% percentile bootstrap over pairs. The raters' majority of a
/// pair is win when its score is above 1/2 (more wins than losses), loss below, tie at 1/2;
/// agreement is the share of pairs where it equals the judge's outcome, kappa Cohen's over
/// win / tie / loss.
pub fn figures(pairs: &[(Outcome, Vec<Outcome>)]) -> Figures {
    let voted: Vec<(f64, Outcome, f64, Outcome)> = pairs
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(judge, h)| {
            let score = h.iter().map(|o| o.score()).sum::<f64>() / h.len() as f64;
            let (wins, losses) =
                (h.iter().filter(|o| **o == Outcome::Win).count(), h.iter().filter(|o| **o == Outcome::Loss).count());
            let majority = match wins.cmp(&losses) {
                std::cmp::Ordering::Greater => Outcome::Win,
                std::cmp::Ordering::Less => Outcome::Loss,
                std::cmp::Ordering::Equal => Outcome::Tie,
            };
            (score, majority, judge.score(), *judge)
        })
        .collect();
    let n = voted.len();
    let rate = |pick: fn(&(f64, Outcome, f64, Outcome)) -> f64| {
        let mean = |idx: &[usize]| {
            (!idx.is_empty()).then(|| idx.iter().map(|&i| pick(&voted[i])).sum::<f64>() / idx.len() as f64)
        };
        bootstrap(n, RESAMPLES, LEVEL, SEED, mean).map(|ci| RateInterval {
            rate: ci.estimate,
            low: ci.lo,
            high: ci.hi,
            n,
        })
    };
    let category = |o: Outcome| match o {
        Outcome::Win => 0,
        Outcome::Tie => 1,
        Outcome::Loss => 2,
    };
    let humans: Vec<usize> = voted.iter().map(|v| category(v.1)).collect();
    let judges: Vec<usize> = voted.iter().map(|v| category(v.3)).collect();
    let agree = humans.iter().zip(&judges).filter(|(h, j)| h == j).count();
    Figures {
        human: rate(|v| v.0),
        judge_rate: rate(|v| v.2),
        agreement: (n > 0).then(|| agree as f64 / n as f64),
        kappa: cohen_kappa(&humans, &judges),
    }
}

impl Store {
    /// Creates a check of `req.evaluation` for `req.raters`: one pair per sample (the first
    /// `req.pairs`), each wanting `req.overlap` of those raters, all in one transaction.
    pub async fn create_check(&self, project_id: &str, req: &NewHumanCheck) -> Result<HumanCheck> {
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
        let e = sqlx::query("SELECT checkpoint_id, details FROM evaluations WHERE id = $1 AND project_id = $2")
            .bind(&req.evaluation)
            .bind(project_id)
            .fetch_optional(&mut *w.tx)
            .await?
            .ok_or_else(|| {
                StoreError::Invalid(format!("evaluation: no evaluation {:?} in this project", req.evaluation))
            })?;
        let checkpoint: Option<String> = e.try_get("checkpoint_id")?;
        let details: String = e.try_get("details")?;
        let details: Value = serde_json::from_str(&details).map_err(|err| {
            StoreError::Invalid(format!("stored details of the evaluation are not valid JSON: {err}"))
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
            let r = sqlx::query("SELECT disabled FROM raters WHERE id = $1 AND project_id = $2")
                .bind(rater)
                .bind(project_id)
                .fetch_optional(&mut *w.tx)
                .await?
                .ok_or_else(|| StoreError::Invalid(format!("raters: no rater {rater:?} in this project")))?;
            if r.try_get::<i64, _>(0)? != 0 {
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
        let rows = sqlx::query(
            "SELECT id, text FROM prompts WHERE project_id = $1 AND split = 'eval' ORDER BY created_at DESC, id DESC",
        )
        .bind(project_id)
        .fetch_all(&mut *w.tx)
        .await?;
        let mut by_id: HashMap<String, String> = HashMap::new();
        let mut by_text: HashMap<String, String> = HashMap::new();
        for r in &rows {
            let (pid, text): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            // Newest first, so the oldest with a text wins.
            by_text.insert(text.clone(), pid.clone());
            by_id.insert(pid, text);
        }
        let policy_source = format!("policy:{}", checkpoint.as_deref().unwrap_or("base"));
        for (i, s) in samples.iter().take(n).enumerate() {
            let recorded = s.prompt_id.as_ref().filter(|p| by_id.get(*p) == Some(&s.prompt));
            let prompt_id = match recorded.or_else(|| by_text.get(&s.prompt)) {
                Some(p) => p.clone(),
                None => {
                    let p = insert_prompt(&mut w, project_id, &s.prompt, None, "eval", "check", None, now).await?;
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
            let b = insert_completion(&mut w, &prompt_id, &completion(&s.reference, "reference"), now).await?;
            let pair = new_id();
            sqlx::query(
                "INSERT INTO pairs (id, project_id, prompt_id, completion_a, completion_b, kind, round, acquisition, \
                   r_a, r_b, margin, entropy, gold_choice, target_votes, votes, created_at, check_id) \
                 VALUES ($1, $2, $3, $4, $5, 'train', NULL, NULL, NULL, NULL, NULL, NULL, NULL, $6, 0, $7, $8)",
            )
            .bind(&pair)
            .bind(project_id)
            .bind(&prompt_id)
            .bind(&a)
            .bind(&b)
            .bind(overlap as i64)
            .bind(now)
            .bind(&id)
            .execute(&mut *w.tx)
            .await?;
            sqlx::query("INSERT INTO check_pairs (pair_id, check_id, sample, judge) VALUES ($1, $2, $3, $4)")
                .bind(&pair)
                .bind(&id)
                .bind(i as i64)
                .bind(outcome_name(s.outcome))
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit().await?;
        self.check(&id).await
    }

    /// The checks of a project with their figures so far, newest first.
    pub async fn checks(&self, project_id: &str) -> Result<Vec<HumanCheck>> {
        let q = format!("{CHECK_SELECT} WHERE h.project_id = $1 ORDER BY h.created_at DESC, h.id DESC");
        let rows = sqlx::query(sqlx::AssertSqlSafe(q)).bind(project_id).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.human_check(r).await?);
        }
        Ok(out)
    }

    /// One check with its figures so far.
    pub async fn check(&self, id: &str) -> Result<HumanCheck> {
        let q = format!("{CHECK_SELECT} WHERE h.id = $1");
        let r = sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no check {id:?}")))?;
        self.human_check(&r).await
    }

    async fn human_check(&self, r: &AnyRow) -> Result<HumanCheck> {
        let id: String = r.try_get("id")?;
        let raters = sqlx::query(
            "SELECT c.rater_id FROM check_raters c JOIN raters r ON r.id = c.rater_id WHERE c.check_id = $1 \
             ORDER BY r.created_at, r.id",
        )
        .bind(&id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<std::result::Result<Vec<_>, _>>()?;
        let rows = sqlx::query(
            "SELECT c.pair_id, c.judge, l.choice FROM check_pairs c \
             LEFT JOIN labels l ON l.pair_id = c.pair_id AND l.choice <> 'skip' \
             WHERE c.check_id = $1 ORDER BY c.sample, l.created_at, l.id",
        )
        .bind(&id)
        .fetch_all(&self.pool)
        .await?;
        let mut pairs: Vec<(Outcome, Vec<Outcome>)> = Vec::new();
        let mut last: Option<String> = None;
        for row in &rows {
            let pair: String = row.try_get(0)?;
            if last.as_deref() != Some(pair.as_str()) {
                let judge: String = row.try_get(1)?;
                let judge = parse_outcome(&judge).ok_or_else(|| {
                    StoreError::Invalid(format!("stored judge outcome {judge:?} is not win, tie or loss"))
                })?;
                pairs.push((judge, Vec::new()));
                last = Some(pair);
            }
            let choice: Option<String> = row.try_get(2)?;
            if let Some(o) = choice.as_deref().and_then(label_outcome) {
                pairs.last_mut().expect("pushed above").1.push(o);
            }
        }
        let overlap: i64 = r.try_get("overlap")?;
        let f = figures(&pairs);
        Ok(HumanCheck {
            id,
            evaluation: r.try_get("evaluation_id")?,
            checkpoint: r.try_get("checkpoint_id")?,
            judge: r.try_get("judge")?,
            raters,
            overlap: overlap as u32,
            pairs: pairs.len() as i64,
            votes: pairs.iter().map(|p| p.1.len() as i64).sum(),
            target_votes: pairs.len() as i64 * overlap,
            human: f.human,
            judge_rate: f.judge_rate,
            agreement: f.agreement,
            kappa: f.kappa,
            created_at: r.try_get("created_at")?,
        })
    }

    /// A check's pairs in sample order with the judge's outcome and the human votes so far.
    pub async fn check_pairs(&self, id: &str) -> Result<Vec<CheckPair>> {
        let found = sqlx::query("SELECT 1 FROM human_checks WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!("no check {id:?}")));
        }
        let rows = sqlx::query(
            "SELECT p.id, pr.text AS prompt, ca.text AS policy, cb.text AS reference, c.judge FROM check_pairs c \
             JOIN pairs p ON p.id = c.pair_id JOIN prompts pr ON pr.id = p.prompt_id \
             JOIN completions ca ON ca.id = p.completion_a JOIN completions cb ON cb.id = p.completion_b \
             WHERE c.check_id = $1 ORDER BY c.sample",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let labels = sqlx::query(
            "SELECT l.pair_id, l.choice FROM labels l JOIN check_pairs c ON c.pair_id = l.pair_id \
             WHERE c.check_id = $1 AND l.choice <> 'skip' ORDER BY l.created_at, l.id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut human: HashMap<String, Vec<String>> = HashMap::new();
        for l in &labels {
            let choice: String = l.try_get(1)?;
            if let Some(o) = label_outcome(&choice) {
                human.entry(l.try_get(0)?).or_default().push(outcome_name(o).to_string());
            }
        }
        rows.iter()
            .map(|r| {
                let pair: String = r.try_get("id")?;
                Ok(CheckPair {
                    human: human.remove(&pair).unwrap_or_default(),
                    pair,
                    prompt: r.try_get("prompt")?,
                    policy: r.try_get("policy")?,
                    reference: r.try_get("reference")?,
                    judge: r.try_get("judge")?,
                })
            })
            .collect()
    }
}

const CHECK_SELECT: &str = "SELECT h.id, h.evaluation_id, h.overlap, h.created_at, e.checkpoint_id, e.judge \
    FROM human_checks h JOIN evaluations e ON e.id = h.evaluation_id";

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    #[test]
    fn figures_by_hand() {
        // Pair 1: humans win, win (score 1, majority win), judge win: agree.
        // Pair 2: humans win, loss (score 1/2, tie), judge loss: disagree.
        // Pair 3: humans tie (score 1/2, tie), judge tie: agree.
        // Pair 4: no votes: left out.
        // Human rate (1 + .5 + .5) / 3 = 2/3; judge (1 + 0 + .5) / 3 = 1/2; agreement 2/3.
        // Kappa over (win, tie, tie) vs (win, loss, tie): p_o = 2/3;
        // p_e = (1/3)(1/3) [win] + (2/3)(1/3) [tie] + 0 [loss] = 3/9 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 1/2.
        let pairs = vec![(Win, vec![Win, Win]), (Loss, vec![Win, Loss]), (Tie, vec![Tie]), (Win, vec![])];
        let f = figures(&pairs);
        let h = f.human.unwrap();
        assert!((h.rate - 2.0 / 3.0).abs() < 1e-12 && h.n == 3, "{h:?}");
        assert!(h.low <= h.rate && h.rate <= h.high && h.low >= 0.5 && h.high <= 1.0, "{h:?}");
        let j = f.judge_rate.unwrap();
        assert!((j.rate - 0.5).abs() < 1e-12 && j.n == 3 && j.low >= 0.0 && j.high <= 1.0, "{j:?}");
        assert!((f.agreement.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((f.kappa.unwrap() - 0.5).abs() < 1e-12, "{:?}", f.kappa);
        assert_eq!(figures(&pairs), f, "seeded");

        let none = figures(&[(Win, vec![])]);
        assert_eq!(none, Figures { human: None, judge_rate: None, agreement: None, kappa: None });
    }

    #[test]
    fn samples_name_what_is_missing() {
        let d = serde_json::json!({"samples": [
            {"prompt": "p", "prompt_id": "x", "policy": "a", "reference": "b", "outcome": "loss"},
            {"prompt": "p", "policy": "a", "reference": "b", "outcome": "maybe"},
        ]});
        let e = samples_of("e", &d).unwrap_err().to_string();
        assert!(e.starts_with("evaluation: sample 1") && e.contains("outcome"), "{e}");
        let ok = samples_of("e", &serde_json::json!({"samples": [d["samples"][0]]})).unwrap();
        assert_eq!(ok[0].outcome, Loss);
        assert_eq!(ok[0].prompt_id.as_deref(), Some("x"));
        assert!(samples_of("e", &serde_json::json!({})).unwrap().is_empty());
    }
}
