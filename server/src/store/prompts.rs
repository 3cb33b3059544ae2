//! The admin's view of a project's prompts: a page of them with what became of each (used by
//! which round, how many pairs), disabling one (never acquired or evaluated again; its pairs
//! and labels stay, since labels are data a rater spent time on) and deleting one that no pair
//! uses. Rows of an import still running are not shown (`imports::settled`).

use apl_shared::{PromptInfo, Split};

use super::imports::settled;
use super::{Result, Store, StoreError};

#[derive(sqlx::FromRow)]
struct PromptInfoRow {
    id: String,
    split: Split,
    text: String,
    reference: Option<String>,
    source: String,
    used_round: Option<i64>,
    disabled: i64,
    pairs: i64,
    created_at: i64,
}

impl Store {
    /// A page of a project's prompts, oldest first; `split` narrows to one split.
    pub async fn prompt_infos(
        &self,
        project_id: &str,
        split: Option<Split>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<PromptInfo>> {
        let q = format!(
            "SELECT p.id, p.split, p.text, p.reference, p.source, p.used_round, p.disabled, p.created_at, \
               (SELECT COUNT(*) FROM pairs x WHERE x.prompt_id = p.id) AS pairs \
             FROM prompts p WHERE p.project_id = $1 AND ($2 IS NULL OR p.split = $2) AND {} \
             ORDER BY p.created_at, p.id LIMIT $3 OFFSET $4",
            settled("p")
        );
        let rows: Vec<PromptInfoRow> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(project_id)
            .bind(split)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| PromptInfo {
                id: r.id,
                split: r.split,
                text: r.text,
                reference: r.reference,
                source: r.source,
                used_round: r.used_round,
                disabled: r.disabled != 0,
                pairs: r.pairs,
                created_at: r.created_at,
            })
            .collect())
    }

    /// Disables (or enables again) a prompt of the project.
    pub async fn set_prompt_disabled(&self, project_id: &str, prompt_id: &str, disabled: bool) -> Result<()> {
        let mut w = self.begin_write().await?;
        let r = sqlx::query("UPDATE prompts SET disabled = $1 WHERE id = $2 AND project_id = $3")
            .bind(i64::from(disabled))
            .bind(prompt_id)
            .bind(project_id)
            .execute(&mut *w.tx)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no prompt {prompt_id:?} in this project")));
        }
        w.commit().await
    }

    /// Deletes a prompt no pair uses; one with pairs is refused (their labels would go too).
    pub async fn delete_prompt(&self, project_id: &str, prompt_id: &str) -> Result<()> {
        let mut w = self.begin_write().await?;
        let pairs: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM pairs x WHERE x.prompt_id = p.id) FROM prompts p WHERE p.id = $1 AND p.project_id = $2",
        )
        .bind(prompt_id)
        .bind(project_id)
        .fetch_optional(&mut *w.tx)
        .await?;
        match pairs {
            None => return Err(StoreError::NotFound(format!("no prompt {prompt_id:?} in this project"))),
            Some(n) if n > 0 => {
                return Err(StoreError::Conflict(format!(
                    "the prompt has {n} pair(s), whose labels would be deleted with it; disable it instead"
                )));
            }
            Some(_) => {}
        }
        sqlx::query("DELETE FROM prompts WHERE id = $1").bind(prompt_id).execute(&mut *w.tx).await?;
        w.commit().await
    }
}
