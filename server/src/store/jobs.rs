//! The job table: the queue the model workers take from, and the record the browser watches.
//!
//! Any server process may run a queued job; a claim is one conditional UPDATE so two workers
//! never take the same job. A running job's worker writes a heartbeat with its progress; a job
//! whose heartbeat stopped (its process died) is queued again, or failed with its reason after
//! [`MAX_ATTEMPTS`]. Jobs commit their results in one transaction at their end, so running one
//! again from its start never duplicates anything.

use apl_shared::{Job, JobProgress};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, json_col, new_id, now_ms};

pub const MAX_ATTEMPTS: i64 = 3;
/// A running job whose heartbeat is older than this is taken to be orphaned.
pub const STALE_MS: i64 = 60_000;

fn job_of(r: &AnyRow) -> Result<Job> {
    let result: Option<String> = r.try_get("result")?;
    Ok(Job {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        kind: r.try_get("kind")?,
        params: json_col(r, "params")?,
        state: r.try_get("state")?,
        progress: json_col(r, "progress")?,
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

impl Store {
    pub async fn create_job(&self, project_id: &str, kind: &str, params: &serde_json::Value) -> Result<Job> {
        self.project(project_id).await?;
        let id = new_id();
        let progress = JobProgress { phase: "queued".into(), ..Default::default() };
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO jobs (id, project_id, kind, params, state, progress, attempts, created_at) \
             VALUES ($1, $2, $3, $4, 'queued', $5, 0, $6)",
        )
        .bind(&id)
        .bind(project_id)
        .bind(kind)
        .bind(params.to_string())
        .bind(serde_json::to_string(&progress).expect("progress serialises"))
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        self.job(&id).await
    }

    pub async fn job(&self, id: &str) -> Result<Job> {
        let r = sqlx::query("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        job_of(&r.ok_or_else(|| StoreError::NotFound(format!("no job {id:?}")))?)
    }

    pub async fn jobs(&self, project_id: &str) -> Result<Vec<Job>> {
        let rows = sqlx::query("SELECT * FROM jobs WHERE project_id = $1 ORDER BY created_at DESC, id DESC LIMIT 200")
            .bind(project_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_of).collect()
    }

    /// Takes the oldest queued job for `owner`, if any.
    pub async fn claim_job(&self, owner: &str) -> Result<Option<Job>> {
        loop {
            let next = sqlx::query("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = next else { return Ok(None) };
            let id: String = row.try_get(0)?;
            let now = now_ms();
            let mut w = self.begin_write().await?;
            let r = sqlx::query(
                "UPDATE jobs SET state = 'running', owner = $1, heartbeat = $2, started_at = $2, \
                 attempts = attempts + 1 WHERE id = $3 AND state = 'queued'",
            )
            .bind(owner)
            .bind(now)
            .bind(&id)
            .execute(&mut *w.tx)
            .await?;
            w.commit().await?;
            if r.rows_affected() == 1 {
                return self.job(&id).await.map(Some);
            }
        }
    }

    /// Records progress and the heartbeat; false when the job is no longer this owner's to
    /// run (cancelled, or taken back as orphaned).
    pub async fn job_progress(&self, id: &str, owner: &str, p: &JobProgress) -> Result<bool> {
        let mut w = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE jobs SET progress = $1, heartbeat = $2 WHERE id = $3 AND owner = $4 AND state = 'running'",
        )
        .bind(serde_json::to_string(p).expect("progress serialises"))
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends a running job: done with its result, or failed with the reason.
    pub async fn finish_job(
        &self,
        id: &str,
        owner: &str,
        outcome: std::result::Result<serde_json::Value, String>,
    ) -> Result<()> {
        let (state, result, error) = match outcome {
            Ok(v) => ("done", Some(v.to_string()), None),
            Err(e) => ("failed", None, Some(e)),
        };
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, error = $3, finished_at = $4 \
             WHERE id = $5 AND owner = $6 AND state = 'running'",
        )
        .bind(state)
        .bind(result)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<Job> {
        let mut w = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1, error = 'cancelled by the admin' \
             WHERE id = $2 AND state IN ('queued', 'running')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        let job = self.job(id).await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("job {id:?} has already ended ({})", job.state)));
        }
        Ok(job)
    }

    /// Queues again (or fails, after too many attempts) running jobs whose worker is gone:
    /// those with a heartbeat older than `stale_ms` (0: every running job, for a sole process
    /// starting up over SQLite). Returns how many were touched.
    pub async fn recover_jobs(&self, stale_ms: i64) -> Result<u64> {
        let cutoff = now_ms() - stale_ms;
        let mut w = self.begin_write().await?;
        let failed = sqlx::query(
            "UPDATE jobs SET state = 'failed', finished_at = $1, \
               error = 'the server stopped while running this job, ' || CAST(attempts AS TEXT) || ' times; not retried' \
             WHERE state = 'running' AND (heartbeat IS NULL OR heartbeat <= $2) AND attempts >= $3",
        )
        .bind(now_ms())
        .bind(cutoff)
        .bind(MAX_ATTEMPTS)
        .execute(&mut *w.tx)
        .await?;
        let queued = sqlx::query(
            "UPDATE jobs SET state = 'queued', owner = NULL, \
               progress = '{\"phase\":\"queued\",\"message\":\"resumed after a server restart\"}' \
             WHERE state = 'running' AND (heartbeat IS NULL OR heartbeat <= $1)",
        )
        .bind(cutoff)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(failed.rows_affected() + queued.rows_affected())
    }
}
