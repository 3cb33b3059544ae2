//! What the model worker writes: rounds of acquired pairs, oracle labels, checkpoints and
//! evaluations, each in one transaction.

use apl_shared::{AcquireStats, Acquisition, PairKind, Preference, Side};
use sqlx::Row;

use super::imports::{NewPair, insert_pairs_tx};
use super::{Result, Store, StoreError, new_id, now_ms};

pub use apl_shared::{CheckpointRow, EvaluationRow, RoundRow};

/// A pair awaiting an oracle's label.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PairTexts {
    pub id: String,
    pub prompt: String,
    pub a: String,
    pub b: String,
}

/// A round as the worker acquired it.
#[derive(Debug, Clone, Copy)]
pub struct NewRound<'a> {
    pub number: i64,
    pub acquisition: Acquisition,
    /// The policy that generated it (none: the starting model).
    pub policy_checkpoint: Option<&'a str>,
    pub stats: &'a AcquireStats,
    pub pairs: &'a [NewPair],
    pub used_prompts: &'a [String],
}

/// A round's pairs for raters by votes: (votes, votes wanted, pairs), one row per pair.
pub type VoteCounts = Vec<(i64, i64, i64)>;

impl Store {
    /// The project's newest round: (number, acquired at).
    pub async fn newest_round(&self, project_id: &str) -> Result<Option<(i64, i64)>> {
        Ok(sqlx::query_as("SELECT number, created_at FROM rounds WHERE project_id = $1 ORDER BY number DESC LIMIT 1")
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A checkpoint trained on round `round` or later (the newest), if any: the round was
    /// trained on.
    pub async fn trained_on(&self, project_id: &str, round: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM checkpoints WHERE project_id = $1 AND round >= $2 ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(project_id)
        .bind(round)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Round `round`'s pairs for raters (not human checks') grouped by votes given and wanted.
    pub async fn round_votes(&self, project_id: &str, round: i64) -> Result<VoteCounts> {
        Ok(sqlx::query_as(
            "SELECT votes, target_votes, COUNT(*) FROM pairs WHERE project_id = $1 AND round = $2 AND kind = $3 \
             AND target_votes > 0 AND check_id IS NULL GROUP BY votes, target_votes",
        )
        .bind(project_id)
        .bind(round)
        .bind(PairKind::Train)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether a checkpoint of the project can be evaluated, as the worker decides: with an
    /// automatic judge and evaluation prompts.
    pub async fn can_evaluate(&self, project: &apl_shared::Project) -> Result<bool> {
        Ok(project.config.loop_settings.eval.judge.is_automatic()
            && !self.prompts(&project.id, apl_shared::Split::Eval, false, 1).await?.is_empty())
    }
    pub async fn next_round_number(&self, project_id: &str) -> Result<i64> {
        let r = sqlx::query("SELECT COALESCE(MAX(number), 0) FROM rounds WHERE project_id = $1")
            .bind(project_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get::<i64, _>(0)? + 1)
    }

    /// Stores a round: its pairs, and its prompts marked used. Fails (storing nothing) if the
    /// round number was taken meanwhile.
    pub async fn record_round(&self, project_id: &str, round: &NewRound<'_>) -> Result<Vec<String>> {
        let NewRound { number, acquisition, policy_checkpoint, stats, pairs, used_prompts } = *round;
        let mut w = self.begin_write().await?;
        let r = sqlx::query(
            "INSERT INTO rounds (id, project_id, number, acquisition, policy_checkpoint, stats, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(new_id())
        .bind(project_id)
        .bind(number)
        .bind(acquisition)
        .bind(policy_checkpoint)
        .bind(stats)
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("round {number} of this project already exists")));
        }
        for id in used_prompts {
            sqlx::query("UPDATE prompts SET used_round = $1 WHERE id = $2 AND project_id = $3")
                .bind(number)
                .bind(id)
                .bind(project_id)
                .execute(&mut *w.tx)
                .await?;
        }
        let ids = insert_pairs_tx(&mut w, project_id, pairs, "acquired", None).await?;
        w.commit().await?;
        Ok(ids)
    }

    /// Training pairs without a label from `judge`.
    pub async fn pairs_without_judge(&self, project_id: &str, judge: &str) -> Result<Vec<PairTexts>> {
        Ok(sqlx::query_as(
            "SELECT p.id, pr.text AS prompt, ca.text AS a, cb.text AS b FROM pairs p \
             JOIN prompts pr ON pr.id = p.prompt_id \
             JOIN completions ca ON ca.id = p.completion_a JOIN completions cb ON cb.id = p.completion_b \
             WHERE p.project_id = $1 AND p.kind = $3 AND p.check_id IS NULL \
               AND NOT EXISTS (SELECT 1 FROM judge_labels j WHERE j.pair_id = p.id AND j.judge = $2) \
             ORDER BY p.created_at, p.id",
        )
        .bind(project_id)
        .bind(judge)
        .bind(PairKind::Train)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Stores judge labels: (pair, preference, rationale), shown in A-B order.
    pub async fn add_judge_labels(
        &self,
        judge: &str,
        labels: &[(String, Preference, Option<String>)],
    ) -> Result<usize> {
        let mut w = self.begin_write().await?;
        let now = now_ms();
        let mut n = 0;
        for (pair, choice, rationale) in labels {
            let r = sqlx::query(
                "INSERT INTO judge_labels (id, pair_id, judge, choice, first_shown, rationale, created_at) \
                 VALUES ($1, $2, $3, $4, $7, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(new_id())
            .bind(pair)
            .bind(judge)
            .bind(*choice)
            .bind(rationale.as_deref())
            .bind(now)
            .bind(Side::A)
            .execute(&mut *w.tx)
            .await?;
            n += r.rows_affected() as usize;
        }
        w.commit().await?;
        Ok(n)
    }

    /// Every judge label of a project: (pair, judge, preference), oldest first.
    pub async fn judge_labels(&self, project_id: &str) -> Result<Vec<(String, String, Preference)>> {
        Ok(sqlx::query_as(
            "SELECT j.pair_id, j.judge, j.choice FROM judge_labels j JOIN pairs p ON p.id = j.pair_id \
             WHERE p.project_id = $1 ORDER BY j.created_at, j.id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn rounds(&self, project_id: &str) -> Result<Vec<RoundRow>> {
        Ok(sqlx::query_as(
            "SELECT r.number, r.acquisition, r.policy_checkpoint, r.stats, r.created_at, \
               (SELECT COUNT(*) FROM pairs p WHERE p.project_id = r.project_id AND p.round = r.number) AS pairs \
             FROM rounds r WHERE r.project_id = $1 ORDER BY r.number",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn latest_checkpoint(&self, project_id: &str) -> Result<Option<CheckpointRow>> {
        Ok(sqlx::query_as(
            "SELECT id, round, path, pairs, report, created_at FROM checkpoints WHERE project_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn checkpoint(&self, project_id: &str, id: &str) -> Result<CheckpointRow> {
        sqlx::query_as(
            "SELECT id, round, path, pairs, report, created_at FROM checkpoints WHERE project_id = $1 AND id = $2",
        )
        .bind(project_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no checkpoint {id:?} in this project")))
    }

    pub async fn checkpoints(&self, project_id: &str) -> Result<Vec<CheckpointRow>> {
        Ok(sqlx::query_as(
            "SELECT id, round, path, pairs, report, created_at FROM checkpoints WHERE project_id = $1 \
             ORDER BY created_at, id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn add_checkpoint(&self, project_id: &str, c: &CheckpointRow) -> Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO checkpoints (id, project_id, round, path, pairs, report, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.id)
        .bind(project_id)
        .bind(c.round)
        .bind(&c.path)
        .bind(c.pairs)
        .bind(&c.report)
        .bind(c.created_at)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    pub async fn add_evaluation(&self, project_id: &str, e: &EvaluationRow) -> Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO evaluations (id, project_id, checkpoint_id, judge, baseline, win_rate, stderr, n, details, \
               created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&e.id)
        .bind(project_id)
        .bind(e.checkpoint_id.as_deref())
        .bind(&e.judge)
        .bind(&e.baseline)
        .bind(e.win_rate)
        .bind(e.stderr)
        .bind(e.n)
        .bind(&e.details)
        .bind(e.created_at)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    pub async fn evaluations(&self, project_id: &str) -> Result<Vec<EvaluationRow>> {
        Ok(sqlx::query_as(
            "SELECT id, checkpoint_id, judge, baseline, win_rate, stderr, n, details, created_at FROM evaluations \
             WHERE project_id = $1 ORDER BY created_at, id",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
