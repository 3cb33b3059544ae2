//! The job table: the queue the model workers take from, and the record the browser watches.
//!
//! Any server process may run a queued job; a claim is one conditional UPDATE so two workers
//! never take the same job. A running job's worker writes a heartbeat with its progress; a job
//! whose heartbeat stopped (its process died) is queued again, or failed with its reason after
//! [`MAX_ATTEMPTS`]. Jobs commit their results in one transaction at their end, so running one
//! again from its start never duplicates anything.

use apl_shared::{Job, JobKind, JobParams, JobProgress, JobResult, JobState, ProjectConfig};
use sqlx::Row;

use super::{Result, Store, StoreError, new_id, now_ms};

pub const MAX_ATTEMPTS: i64 = 3;
/// The columns of [`Job`], in its order.
pub(super) const JOB_COLUMNS: &str =
    "id, project_id, kind, params, state, progress, result, error, attempts, created_at, started_at, finished_at";
/// A running job whose heartbeat is older than this is taken to be orphaned.
pub const STALE_MS: i64 = 60_000;

/// How a job ended, as its worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Done(Box<JobResult>),
    /// The reason, with its causes.
    Failed(String),
}

impl Store {
    /// Queues a `continue` job for every human-rated project with auto-continue on whose
    /// newest round is labelled enough (see [`apl_shared::AutoContinue`]), not yet trained on,
    /// with no job of the project queued or running, and whose `continue` for that round has
    /// not failed or been cancelled already (then it waits for an admin instead of repeating). Run by every
    /// worker process; the unique index `jobs_one_continue` keeps it to one. Returns the jobs
    /// queued.
    pub async fn queue_due_continues(&self) -> Result<Vec<Job>> {
        // Read as text: one project whose settings do not read (hand-edited) is passed over,
        // not allowed to stop auto-continue for every other.
        let projects: Vec<(String, String)> =
            sqlx::query_as("SELECT id, config FROM projects").fetch_all(&self.pool).await?;
        let mut queued = Vec::new();
        for (pid, config) in projects {
            let Ok(config) = serde_json::from_str::<ProjectConfig>(&config) else { continue };
            let auto = &config.rating.auto_continue;
            if !auto.enabled || config.loop_settings.labeller.is_automatic() {
                continue;
            }
            let Some((round, acquired_at)) = self.newest_round(&pid).await? else { continue };
            let busy: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE project_id = $1 AND state IN ($2, $3)")
                .bind(&pid)
                .bind(JobState::Queued)
                .bind(JobState::Running)
                .fetch_one(&self.pool)
                .await?;
            if busy > 0 || self.trained_on(&pid, round).await?.is_some() || self.continue_stopped(&pid, round).await? {
                continue;
            }
            let votes = self.round_votes(&pid, round).await?;
            let pairs: i64 = votes.iter().map(|v| v.2).sum();
            let complete: i64 = votes.iter().filter(|v| v.0 >= v.1).map(|v| v.2).sum();
            let enough = complete >= auto.needed(pairs);
            let late = auto.deadline_minutes.is_some_and(|m| now_ms() - acquired_at >= m as i64 * 60_000);
            if pairs == 0 || complete == 0 || !(enough || late) {
                continue;
            }
            let params = JobParams { after_round: Some(round), ..Default::default() };
            if let Some(job) = self.insert_job(&pid, JobKind::Continue, &params).await? {
                queued.push(job);
            }
        }
        Ok(queued)
    }

    /// Whether auto-continue was stopped for `round`: a `continue` for it failed or was
    /// cancelled (it then waits for an admin instead of repeating). What queues continues, what
    /// raters are told, and the stepper's note all ask this.
    pub async fn continue_stopped(&self, project_id: &str, round: i64) -> Result<bool> {
        let stopped: Vec<JobParams> =
            sqlx::query_scalar("SELECT params FROM jobs WHERE project_id = $1 AND kind = $2 AND state IN ($3, $4)")
                .bind(project_id)
                .bind(JobKind::Continue)
                .bind(JobState::Failed)
                .bind(JobState::Cancelled)
                .fetch_all(&self.pool)
                .await?;
        Ok(stopped.iter().any(|p| p.after_round == Some(round)))
    }

    pub async fn create_job(&self, project_id: &str, kind: JobKind, params: &JobParams) -> Result<Job> {
        self.project(project_id).await?;
        match self.insert_job(project_id, kind, params).await? {
            Some(job) => Ok(job),
            None => Err(StoreError::Conflict(format!(
                "a {kind} job of this project is already queued or running; cancel it or wait for it"
            ))),
        }
    }

    /// Queues a job; None when the unique index `jobs_one_continue` refused it (a second
    /// `continue` of the project).
    async fn insert_job(&self, project_id: &str, kind: JobKind, params: &JobParams) -> Result<Option<Job>> {
        let id = new_id();
        let progress = JobProgress { phase: JobState::Queued.name().into(), ..Default::default() };
        let mut w = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, project_id, kind, params, state, progress, attempts, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(project_id)
        .bind(kind)
        .bind(params)
        .bind(JobState::Queued)
        .bind(&progress)
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit().await?;
        if inserted == 0 {
            return Ok(None);
        }
        self.job(&id).await.map(Some)
    }

    pub async fn job(&self, id: &str) -> Result<Job> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no job {id:?}")))
    }

    pub async fn jobs(&self, project_id: &str) -> Result<Vec<Job>> {
        let q =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE project_id = $1 ORDER BY created_at DESC, id DESC LIMIT 200");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(q)).bind(project_id).fetch_all(&self.pool).await?)
    }

    /// Takes the oldest queued job for `owner`, if any.
    pub async fn claim_job(&self, owner: &str) -> Result<Option<Job>> {
        loop {
            let next = sqlx::query("SELECT id FROM jobs WHERE state = $1 ORDER BY created_at, id LIMIT 1")
                .bind(JobState::Queued)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = next else { return Ok(None) };
            let id: String = row.try_get(0)?;
            let now = now_ms();
            let mut w = self.begin_write().await?;
            let r = sqlx::query(
                "UPDATE jobs SET state = $4, owner = $1, heartbeat = $2, started_at = $2, \
                 attempts = attempts + 1 WHERE id = $3 AND state = $5",
            )
            .bind(owner)
            .bind(now)
            .bind(&id)
            .bind(JobState::Running)
            .bind(JobState::Queued)
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
        let r =
            sqlx::query("UPDATE jobs SET progress = $1, heartbeat = $2 WHERE id = $3 AND owner = $4 AND state = $5")
                .bind(p)
                .bind(now_ms())
                .bind(id)
                .bind(owner)
                .bind(JobState::Running)
                .execute(&mut *w.tx)
                .await?;
        w.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends a running job: done with its result, or failed with the reason.
    pub async fn finish_job(&self, id: &str, owner: &str, outcome: &JobOutcome, progress: &JobProgress) -> Result<()> {
        let (state, result, error) = match outcome {
            JobOutcome::Done(r) => (JobState::Done, Some(&**r), None),
            JobOutcome::Failed(e) => (JobState::Failed, None, Some(e.as_str())),
        };
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, error = $3, finished_at = $4, progress = $8 \
             WHERE id = $5 AND owner = $6 AND state = $7",
        )
        .bind(state)
        .bind(result)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .bind(JobState::Running)
        .bind(progress)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<Job> {
        let mut w = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE jobs SET state = $3, finished_at = $1, error = 'cancelled by the admin' \
             WHERE id = $2 AND state IN ($4, $5)",
        )
        .bind(now_ms())
        .bind(id)
        .bind(JobState::Cancelled)
        .bind(JobState::Queued)
        .bind(JobState::Running)
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
            "UPDATE jobs SET state = $4, finished_at = $1, \
               error = 'the server stopped while running this job, ' || CAST(attempts AS TEXT) || ' times; not retried' \
             WHERE state = $5 AND (heartbeat IS NULL OR heartbeat <= $2) AND attempts >= $3",
        )
        .bind(now_ms())
        .bind(cutoff)
        .bind(MAX_ATTEMPTS)
        .bind(JobState::Failed)
        .bind(JobState::Running)
        .execute(&mut *w.tx)
        .await?;
        let resumed = JobProgress {
            phase: JobState::Queued.name().into(),
            message: "resumed after a server restart".into(),
            ..Default::default()
        };
        let queued = sqlx::query(
            "UPDATE jobs SET state = $2, owner = NULL, progress = $3 \
             WHERE state = $4 AND (heartbeat IS NULL OR heartbeat <= $1)",
        )
        .bind(cutoff)
        .bind(JobState::Queued)
        .bind(&resumed)
        .bind(JobState::Running)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(failed.rows_affected() + queued.rows_affected())
    }
}
