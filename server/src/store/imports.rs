//! Writing prompts and pairs, from an upload or from the model worker. Every batch is one
//! transaction: a file is stored whole or not at all.

use apl_engine::data::prompts::PromptRecord;
use apl_shared::{Acquisition, Choice, PairKind, Preference, Side, Split};

use super::{Result, Store, StoreError, WriteTx, new_id, now_ms};

/// A stored prompt.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PromptRow {
    pub id: String,
    pub text: String,
    /// The reference text (TL;DR summaries), when the import had one.
    pub reference: Option<String>,
}

/// A completion to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCompletion {
    pub text: String,
    /// `import`, `reference`, or `policy:<checkpoint id or base>`.
    pub source: String,
    pub logp: Option<f64>,
    pub tokens: Option<i64>,
}

/// Where a new pair's prompt comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptRef {
    Existing(String),
    /// Created as a used training prompt.
    New(String),
}

/// A pair to store, with its acquisition scores when it was acquired.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPair {
    pub prompt: PromptRef,
    pub a: NewCompletion,
    pub b: NewCompletion,
    pub kind: PairKind,
    pub round: Option<i64>,
    pub acquisition: Option<Acquisition>,
    pub r_a: Option<f64>,
    pub r_b: Option<f64>,
    pub margin: Option<f64>,
    pub entropy: Option<f64>,
    pub gold_choice: Option<Choice>,
    /// Distinct raters wanted; 0 keeps the pair away from raters.
    pub target_votes: i64,
    /// A known preference to store as a judge label (judge name, preference), e.g. an import's.
    pub known: Option<(String, Preference)>,
}

impl Store {
    /// Stores the prompts whose text (trimmed) the project's `split` does not hold yet; returns
    /// (stored, duplicates). Importing a file twice stores it once.
    pub async fn insert_prompts(
        &self,
        project_id: &str,
        records: &[PromptRecord],
        split: Split,
        source: &str,
    ) -> Result<(usize, usize)> {
        self.project(project_id).await?;
        let mut w = self.begin_write().await?;
        // Imports into one project take turns, so a concurrent import of the same file (a
        // double click, a retry) sees this one's prompts: SQLite's write lock does that; on
        // PostgreSQL the project's row is locked for the transaction.
        if self.backend == super::Backend::Postgres {
            sqlx::query("SELECT id FROM projects WHERE id = $1 FOR UPDATE")
                .bind(project_id)
                .execute(&mut *w.tx)
                .await?;
        }
        let held: Vec<String> = sqlx::query_scalar("SELECT text FROM prompts WHERE project_id = $1 AND split = $2")
            .bind(project_id)
            .bind(split)
            .fetch_all(&mut *w.tx)
            .await?;
        let mut seen: std::collections::HashSet<String> = held.into_iter().map(|t| t.trim().to_string()).collect();
        let now = now_ms();
        let mut stored = 0;
        for r in records {
            if !seen.insert(r.prompt.trim().to_string()) {
                continue;
            }
            insert_prompt(&mut w, project_id, &r.prompt, r.reference.as_deref(), split, source, None, now).await?;
            stored += 1;
        }
        w.commit().await?;
        Ok((stored, records.len() - stored))
    }

    /// Stores pairs (and their completions and new prompts); returns their ids.
    pub async fn insert_pairs(&self, project_id: &str, pairs: &[NewPair], source: &str) -> Result<Vec<String>> {
        let mut w = self.begin_write().await?;
        let ids = insert_pairs_tx(&mut w, project_id, pairs, source).await?;
        w.commit().await?;
        Ok(ids)
    }

    /// Prompts of a split, oldest first. With `unused`, only training prompts no round has
    /// used yet.
    pub async fn prompts(&self, project_id: &str, split: Split, unused: bool, limit: i64) -> Result<Vec<PromptRow>> {
        let q = if unused {
            "SELECT id, text, reference FROM prompts WHERE project_id = $1 AND split = $2 AND used_round IS NULL \
             ORDER BY created_at, id LIMIT $3"
        } else {
            "SELECT id, text, reference FROM prompts WHERE project_id = $1 AND split = $2 ORDER BY created_at, id LIMIT $3"
        };
        Ok(sqlx::query_as(q).bind(project_id).bind(split).bind(limit).fetch_all(&self.pool).await?)
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_prompt(
    w: &mut WriteTx<'_>,
    project_id: &str,
    text: &str,
    reference: Option<&str>,
    split: Split,
    source: &str,
    used_round: Option<i64>,
    now: i64,
) -> Result<String> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO prompts (id, project_id, text, reference, split, source, used_round, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(project_id)
    .bind(text)
    .bind(reference)
    .bind(split)
    .bind(source)
    .bind(used_round)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    Ok(id)
}

pub(crate) async fn insert_completion(
    w: &mut WriteTx<'_>,
    prompt_id: &str,
    c: &NewCompletion,
    now: i64,
) -> Result<String> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO completions (id, prompt_id, text, source, logp, tokens, created_at) \
         VALUES ($1, $2, $3, $4, NULLIF($5, 'NaN'), $6, $7)",
    )
    .bind(&id)
    .bind(prompt_id)
    .bind(&c.text)
    .bind(&c.source)
    .bind(nullable_f64(c.logp))
    .bind(c.tokens)
    .bind(now)
    .execute(&mut *w.tx)
    .await?;
    Ok(id)
}

/// An optional float as a bind parameter: NaN for none, which the SQL turns into NULL with
/// `NULLIF($n, 'NaN')` (SQLite stores a bound NaN as NULL anyway). sqlx 0.9's Any driver sends a
/// NULL f64 typed as float4 (`any/arguments.rs` maps Null(Double) to `Option<f32>`); PostgreSQL
/// then caches the statement with a float4 parameter and rejects the next real f64 bound on that
/// connection ("incorrect binary data format in bind parameter").
fn nullable_f64(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

pub(crate) async fn insert_pairs_tx(
    w: &mut WriteTx<'_>,
    project_id: &str,
    pairs: &[NewPair],
    source: &str,
) -> Result<Vec<String>> {
    let now = now_ms();
    let mut ids = Vec::with_capacity(pairs.len());
    for p in pairs {
        let prompt_id = match &p.prompt {
            PromptRef::Existing(id) => {
                let owner: Option<String> = sqlx::query_scalar("SELECT project_id FROM prompts WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *w.tx)
                    .await?;
                if owner.as_deref() != Some(project_id) {
                    return Err(StoreError::NotFound(format!("no prompt {id:?} in this project")));
                }
                id.clone()
            }
            PromptRef::New(text) => {
                insert_prompt(w, project_id, text, None, Split::Train, source, Some(0), now).await?
            }
        };
        let a = insert_completion(w, &prompt_id, &p.a, now).await?;
        let b = insert_completion(w, &prompt_id, &p.b, now).await?;
        let id = new_id();
        sqlx::query(
            "INSERT INTO pairs (id, project_id, prompt_id, completion_a, completion_b, kind, round, acquisition, \
               r_a, r_b, margin, entropy, gold_choice, target_votes, votes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULLIF($9, 'NaN'), NULLIF($10, 'NaN'), NULLIF($11, 'NaN'), \
               NULLIF($12, 'NaN'), $13, $14, 0, $15)",
        )
        .bind(&id)
        .bind(project_id)
        .bind(&prompt_id)
        .bind(&a)
        .bind(&b)
        .bind(p.kind)
        .bind(p.round)
        .bind(p.acquisition)
        .bind(nullable_f64(p.r_a))
        .bind(nullable_f64(p.r_b))
        .bind(nullable_f64(p.margin))
        .bind(nullable_f64(p.entropy))
        .bind(p.gold_choice)
        .bind(p.target_votes)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        if let Some((judge, choice)) = &p.known {
            sqlx::query(
                "INSERT INTO judge_labels (id, pair_id, judge, choice, first_shown, rationale, created_at) \
                 VALUES ($1, $2, $3, $4, $6, NULL, $5)",
            )
            .bind(new_id())
            .bind(&id)
            .bind(judge)
            .bind(*choice)
            .bind(now)
            .bind(Side::A)
            .execute(&mut *w.tx)
            .await?;
        }
        ids.push(id);
    }
    Ok(ids)
}
