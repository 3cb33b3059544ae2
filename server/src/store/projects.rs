//! Projects and the raters who join them. Configuration is stored as JSON text and validated
//! before it gets here.

use apl_shared::{Choice, NewRater, PairKind, Project, ProjectConfig, ProjectStats, RaterStats, Split, Task};

use super::{Result, Store, StoreError, new_id, now_ms, tokens};

const PROJECT_COLUMNS: &str = "SELECT id, name, task, config, created_at FROM projects";

/// A rater's row with their counts; `RaterStats` adds the median time per label.
#[derive(sqlx::FromRow)]
struct RaterRow {
    id: String,
    name: String,
    quota: Option<i64>,
    disabled: i64,
    labels: i64,
    skips: i64,
    gold_answered: i64,
    gold_correct: i64,
    created_at: i64,
    expires_at: Option<i64>,
}

impl Store {
    pub async fn create_project(&self, name: &str, task: Task, config: &ProjectConfig) -> Result<Project> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::Invalid("name: must have 1 to 200 characters".into()));
        }
        let p = Project { id: new_id(), name: name.to_string(), task, config: config.clone(), created_at: now_ms() };
        let mut w = self.begin_write().await?;
        let r = sqlx::query(
            "INSERT INTO projects (id, name, task, config, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(p.task)
        .bind(&p.config)
        .bind(p.created_at)
        .execute(&mut *w.tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("name: a project called {name:?} already exists")));
        }
        w.commit().await?;
        Ok(p)
    }

    pub async fn projects(&self) -> Result<Vec<Project>> {
        let q = format!("{PROJECT_COLUMNS} ORDER BY created_at, id");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(q)).fetch_all(&self.pool).await?)
    }

    pub async fn project(&self, id: &str) -> Result<Project> {
        let q = format!("{PROJECT_COLUMNS} WHERE id = $1");
        sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no project {id:?}")))
    }

    pub async fn set_project_config(&self, id: &str, config: &ProjectConfig) -> Result<Project> {
        let mut w = self.begin_write().await?;
        let r = sqlx::query("UPDATE projects SET config = $1 WHERE id = $2")
            .bind(config)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no project {id:?}")));
        }
        w.commit().await?;
        self.project(id).await
    }

    /// Counts of the project's data. Pairs and labels of human win-rate checks are evaluation,
    /// not training data, and are left out (the checks endpoints report them).
    pub async fn project_stats(&self, id: &str) -> Result<ProjectStats> {
        let q = "SELECT \
            (SELECT COUNT(*) FROM prompts WHERE project_id = $1 AND split = $2) AS prompts_train, \
            (SELECT COUNT(*) FROM prompts WHERE project_id = $1 AND split = $3) AS prompts_eval, \
            (SELECT COUNT(*) FROM prompts WHERE project_id = $1 AND split = $2 AND used_round IS NULL) \
                AS prompts_unused, \
            (SELECT COUNT(*) FROM pairs WHERE project_id = $1 AND kind = $4 AND check_id IS NULL) AS pairs, \
            (SELECT COUNT(*) FROM pairs WHERE project_id = $1 AND kind = $5) AS gold_pairs, \
            (SELECT COUNT(*) FROM pairs WHERE project_id = $1 AND kind = $4 AND check_id IS NULL \
                AND target_votes > 0 AND votes >= target_votes) AS pairs_complete, \
            (SELECT COUNT(*) FROM labels l JOIN pairs p ON p.id = l.pair_id WHERE p.project_id = $1 \
                AND p.check_id IS NULL AND l.choice <> $6) AS labels, \
            (SELECT COUNT(*) FROM judge_labels l JOIN pairs p ON p.id = l.pair_id WHERE p.project_id = $1) \
                AS judge_labels, \
            (SELECT COUNT(*) FROM raters WHERE project_id = $1) AS raters, \
            (SELECT COUNT(*) FROM rounds WHERE project_id = $1) AS rounds, \
            (SELECT COUNT(*) FROM checkpoints WHERE project_id = $1) AS checkpoints";
        Ok(sqlx::query_as(q)
            .bind(id)
            .bind(Split::Train)
            .bind(Split::Eval)
            .bind(PairKind::Train)
            .bind(PairKind::Gold)
            .bind(Choice::Skip)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Creates a rater and returns them with their token (shown this once).
    pub async fn create_rater(&self, project_id: &str, req: &NewRater) -> Result<(RaterStats, String)> {
        let (name, quota) = (&req.name, req.quota);
        self.project(project_id).await?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(StoreError::Invalid("name: must have 1 to 100 characters".into()));
        }
        if quota.is_some_and(|q| q < 1) {
            return Err(StoreError::Invalid("quota: must be at least 1".into()));
        }
        let hours = req.expires_in_hours;
        if hours.is_some_and(|h| !(h > 0.0 && h <= 24.0 * 366.0)) {
            return Err(StoreError::Invalid("expires_in_hours: must be above 0 and at most a year".into()));
        }
        let token = tokens::generate("apl_rater");
        let id = new_id();
        let now = now_ms();
        let expires_at = hours.map(|h| now + (h * 3_600_000.0) as i64);
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO raters (id, project_id, name, token_hash, quota, disabled, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
        )
        .bind(&id)
        .bind(project_id)
        .bind(name)
        .bind(tokens::hash(&token))
        .bind(quota)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        let stats = RaterStats {
            id,
            name: name.to_string(),
            quota,
            disabled: false,
            labels: 0,
            skips: 0,
            gold_answered: 0,
            gold_correct: 0,
            median_seconds: None,
            created_at: now,
            expires_at,
        };
        Ok((stats, token))
    }

    pub async fn disable_rater(&self, project_id: &str, rater_id: &str) -> Result<()> {
        let mut w = self.begin_write().await?;
        let r = sqlx::query("UPDATE raters SET disabled = 1 WHERE id = $1 AND project_id = $2")
            .bind(rater_id)
            .bind(project_id)
            .execute(&mut *w.tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no rater {rater_id:?} in this project")));
        }
        // Their open leases go back to the pool at once.
        sqlx::query("DELETE FROM assignments WHERE rater_id = $1 AND done = 0")
            .bind(rater_id)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }

    /// Every rater of a project with counts, gold accuracy and median time per label.
    pub async fn rater_stats(&self, project_id: &str) -> Result<Vec<RaterStats>> {
        let rows: Vec<RaterRow> = sqlx::query_as(
            "SELECT r.id, r.name, r.quota, r.disabled, r.created_at, r.expires_at, \
               (SELECT COUNT(*) FROM labels l WHERE l.rater_id = r.id AND l.choice <> $2) AS labels, \
               (SELECT COUNT(*) FROM labels l WHERE l.rater_id = r.id AND l.choice = $2) AS skips, \
               (SELECT COUNT(*) FROM labels l JOIN pairs p ON p.id = l.pair_id \
                  WHERE l.rater_id = r.id AND p.kind = $3 AND l.choice <> $2) AS gold_answered, \
               (SELECT COUNT(*) FROM labels l JOIN pairs p ON p.id = l.pair_id \
                  WHERE l.rater_id = r.id AND p.kind = $3 AND l.choice = p.gold_choice) AS gold_correct \
             FROM raters r WHERE r.project_id = $1 ORDER BY r.created_at, r.id",
        )
        .bind(project_id)
        .bind(Choice::Skip)
        .bind(PairKind::Gold)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let times: Vec<i64> = sqlx::query_scalar("SELECT time_ms FROM labels WHERE rater_id = $1 AND choice <> $2")
                .bind(&r.id)
                .bind(Choice::Skip)
                .fetch_all(&self.pool)
                .await?;
            out.push(RaterStats {
                id: r.id,
                name: r.name,
                quota: r.quota,
                disabled: r.disabled != 0,
                labels: r.labels,
                skips: r.skips,
                gold_answered: r.gold_answered,
                gold_correct: r.gold_correct,
                median_seconds: median(times).map(|ms| ms / 1000.0),
                created_at: r.created_at,
                expires_at: r.expires_at,
            });
        }
        Ok(out)
    }
}

fn median(mut v: Vec<i64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] as f64 } else { (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0 })
}
