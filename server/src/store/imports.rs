//! Writing prompts and pairs, from an upload or from the model worker. The worker's writes are
//! one transaction each. An upload is an *import*: a row in `imports` and batches of
//! [`BATCH`] records, each its own short transaction, so raters' labels interleave with a large
//! file instead of waiting behind it. Whole-or-nothing is kept by visibility: everything an import
//! writes carries its id and no reader sees it ([`settled`]) until the import is marked done; an
//! import that stops (an error, a crash, a dropped request) is deleted with all it wrote, at once
//! on an error and by [`Store::sweep_imports`] once its heartbeat is stale.

use apl_engine::data::prompts::PromptRecord;
use apl_shared::{Acquisition, Choice, ExtraFields, PairKind, Preference, Side, Split};
use sha2::{Digest, Sha256};

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
    /// An imported pair is stored once per project (see [`import_key`]); `None` for the worker's.
    pub import_key: Option<String>,
    /// The imported row's other fields, written back in the DPO export.
    pub extra: Option<ExtraFields>,
}

/// Records per import batch: one short write transaction each (a few milliseconds), so a
/// rater's label waits behind at most one batch of a large import.
pub const BATCH: usize = 16;

/// An unfinished import whose last batch is older than this has stopped and is deleted.
const STALE_MS: i64 = 60_000;

/// SQL: the row aliased `alias` is not part of an unfinished import. A scalar subquery, not
/// `NOT EXISTS`: PostgreSQL turns the latter into an anti-join over every candidate row, which
/// stops a `LIMIT` walk in index order from stopping early (the raters' claim).
pub(crate) fn settled(alias: &str) -> String {
    format!("({alias}.import_id IS NULL OR (SELECT i.done FROM imports i WHERE i.id = {alias}.import_id) = 1)")
}

/// The identity of an imported pair: its kind and its three texts (which hold no NUL, so the
/// separator is unambiguous), hashed.
pub fn import_key(kind: PairKind, prompt: &str, chosen: &str, rejected: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind.to_string().as_str(), prompt, chosen, rejected] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Stores the prompts whose text (trimmed) the project's `split` does not hold yet, in
    /// batches, visible once all are in; returns (stored, duplicates). Importing a file twice
    /// stores it once.
    pub async fn insert_prompts(
        &self,
        project_id: &str,
        records: &[PromptRecord],
        split: Split,
        source: &str,
    ) -> Result<(usize, usize)> {
        self.project(project_id).await?;
        let import = self.start_import(project_id, records.len()).await?;
        let stored = self
            .finish_or_abandon(&import, self.insert_prompt_batches(&import, project_id, records, split, source))
            .await?;
        Ok((stored, records.len() - stored))
    }

    async fn insert_prompt_batches(
        &self,
        import: &str,
        project_id: &str,
        records: &[PromptRecord],
        split: Split,
        source: &str,
    ) -> Result<usize> {
        let held: Vec<String> = sqlx::query_scalar("SELECT text FROM prompts WHERE project_id = $1 AND split = $2")
            .bind(project_id)
            .bind(split)
            .fetch_all(&self.pool)
            .await?;
        let mut seen: std::collections::HashSet<String> = held.into_iter().map(|t| t.trim().to_string()).collect();
        let mut stored = 0;
        for batch in records.chunks(BATCH) {
            let mut w = self.import_batch(import, project_id).await?;
            let now = now_ms();
            for r in batch {
                if !seen.insert(r.prompt.trim().to_string()) {
                    continue;
                }
                let (text, reference) = (&r.prompt, r.reference.as_deref());
                insert_prompt(&mut w, project_id, text, reference, split, source, None, Some(import), now).await?;
                stored += 1;
            }
            w.commit().await?;
        }
        Ok(stored)
    }

    /// Stores the worker's pairs (and their completions and new prompts) in one transaction;
    /// returns their ids.
    pub async fn insert_pairs(&self, project_id: &str, pairs: &[NewPair], source: &str) -> Result<Vec<String>> {
        let mut w = self.begin_write().await?;
        let ids = insert_pairs_tx(&mut w, project_id, pairs, source, None).await?;
        w.commit().await?;
        Ok(ids)
    }

    /// Imports pairs in batches, visible once all are in; pairs whose [`NewPair::import_key`]
    /// the project holds are left out. Returns (stored, duplicates).
    pub async fn import_pairs(&self, project_id: &str, pairs: &[NewPair], source: &str) -> Result<(usize, usize)> {
        self.project(project_id).await?;
        let import = self.start_import(project_id, pairs.len()).await?;
        let batches = async {
            let mut stored = 0;
            for batch in pairs.chunks(BATCH) {
                let mut w = self.import_batch(&import, project_id).await?;
                stored += insert_pairs_tx(&mut w, project_id, batch, source, Some(&import)).await?.len();
                w.commit().await?;
            }
            Ok(stored)
        };
        let stored = self.finish_or_abandon(&import, batches).await?;
        Ok((stored, pairs.len() - stored))
    }

    /// Registers an import (after deleting stopped ones); returns its id. One import into a
    /// project runs at a time: a second (a double click, a retry of a slow upload) is refused
    /// while the first runs, since its duplicates check could not see the first's rows.
    async fn start_import(&self, project_id: &str, records: usize) -> Result<String> {
        self.sweep_imports(false).await?;
        let (id, now) = (new_id(), now_ms());
        let mut w = self.begin_project_write(project_id).await?;
        let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM imports WHERE project_id = $1 AND done = 0")
            .bind(project_id)
            .fetch_one(&mut *w.tx)
            .await?;
        if running > 0 {
            return Err(StoreError::Conflict(
                "another import into this project is running; send this file again when it is done".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO imports (id, project_id, done, records, created_at, heartbeat) VALUES ($1, $2, 0, $3, $4, $4)",
        )
        .bind(&id)
        .bind(project_id)
        .bind(records as i64)
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(id)
    }

    /// A write transaction for one batch of `import` (holding the project), its heartbeat
    /// renewed.
    async fn import_batch(&self, import: &str, project_id: &str) -> Result<WriteTx<'_>> {
        let mut w = self.begin_project_write(project_id).await?;
        let live = sqlx::query("UPDATE imports SET heartbeat = $1 WHERE id = $2 AND done = 0")
            .bind(now_ms())
            .bind(import)
            .execute(&mut *w.tx)
            .await?;
        if live.rows_affected() != 1 {
            // Swept as stopped (a batch stalled past STALE_MS): what it wrote is gone.
            return Err(StoreError::Conflict("the import stalled and was abandoned; upload the file again".into()));
        }
        Ok(w)
    }

    /// A write transaction that holds the project's row: imports into one project take turns
    /// (SQLite's write lock does that already; on PostgreSQL the row is locked).
    async fn begin_project_write(&self, project_id: &str) -> Result<WriteTx<'_>> {
        let mut w = self.begin_write().await?;
        if self.backend == super::Backend::Postgres {
            sqlx::query("SELECT id FROM projects WHERE id = $1 FOR UPDATE")
                .bind(project_id)
                .execute(&mut *w.tx)
                .await?;
        }
        Ok(w)
    }

    /// Marks the import done when `batches` succeeded; deletes what it wrote when they failed.
    async fn finish_or_abandon(
        &self,
        import: &str,
        batches: impl std::future::Future<Output = Result<usize>>,
    ) -> Result<usize> {
        match batches.await {
            Ok(stored) => {
                let mut w = self.begin_write().await?;
                sqlx::query("UPDATE imports SET done = 1, heartbeat = $1 WHERE id = $2")
                    .bind(now_ms())
                    .bind(import)
                    .execute(&mut *w.tx)
                    .await?;
                w.commit().await?;
                Ok(stored)
            }
            Err(e) => {
                if let Err(cleanup) = self.delete_import(import).await {
                    tracing::error!(import, error = %cleanup, "deleting a failed import; the next sweep retries");
                }
                Err(e)
            }
        }
    }

    /// Deletes imports that stopped before they were done, with everything they wrote; returns
    /// how many. Runs before every import and when the store opens. An import is stopped when
    /// its last batch is older than a minute, or, opening SQLite (one server process owns the
    /// file), when it is unfinished at all.
    pub async fn sweep_imports(&self, any_unfinished: bool) -> Result<usize> {
        let before = if any_unfinished { i64::MAX } else { now_ms() - STALE_MS };
        let stale: Vec<String> = sqlx::query_scalar("SELECT id FROM imports WHERE done = 0 AND heartbeat < $1")
            .bind(before)
            .fetch_all(&self.pool)
            .await?;
        for id in &stale {
            tracing::warn!(import = %id, "deleting an import that stopped before it was done");
            self.delete_import(id).await?;
        }
        Ok(stale.len())
    }

    /// Deletes an import's pairs, prompts (and so their completions and labels) and its row.
    async fn delete_import(&self, import: &str) -> Result<()> {
        let mut w = self.begin_write().await?;
        for q in [
            "DELETE FROM pairs WHERE import_id = $1",
            "DELETE FROM prompts WHERE import_id = $1",
            "DELETE FROM imports WHERE id = $1",
        ] {
            sqlx::query(q).bind(import).execute(&mut *w.tx).await?;
        }
        w.commit().await?;
        Ok(())
    }

    /// Prompts of a split that the loop may use (not disabled, not of a running import), oldest
    /// first. With `unused`, only training prompts no round has used yet.
    pub async fn prompts(&self, project_id: &str, split: Split, unused: bool, limit: i64) -> Result<Vec<PromptRow>> {
        let unused = if unused { "AND p.used_round IS NULL" } else { "" };
        let q = format!(
            "SELECT p.id, p.text, p.reference FROM prompts p WHERE p.project_id = $1 AND p.split = $2 {unused} \
             AND p.disabled = 0 AND {} \
             ORDER BY p.created_at, p.id LIMIT $3",
            settled("p")
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(project_id)
            .bind(split)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
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
    import: Option<&str>,
    now: i64,
) -> Result<String> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO prompts (id, project_id, text, reference, split, source, used_round, created_at, import_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(project_id)
    .bind(text)
    .bind(reference)
    .bind(split)
    .bind(source)
    .bind(used_round)
    .bind(now)
    .bind(import)
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
    import: Option<&str>,
) -> Result<Vec<String>> {
    let now = now_ms();
    let mut ids = Vec::with_capacity(pairs.len());
    for p in pairs {
        if let Some(key) = &p.import_key {
            let held = sqlx::query("SELECT 1 FROM pairs WHERE project_id = $1 AND import_key = $2")
                .bind(project_id)
                .bind(key)
                .fetch_optional(&mut *w.tx)
                .await?;
            if held.is_some() {
                continue;
            }
        }
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
                insert_prompt(w, project_id, text, None, Split::Train, source, Some(0), import, now).await?
            }
        };
        let a = insert_completion(w, &prompt_id, &p.a, now).await?;
        let b = insert_completion(w, &prompt_id, &p.b, now).await?;
        let id = new_id();
        sqlx::query(
            "INSERT INTO pairs (id, project_id, prompt_id, completion_a, completion_b, kind, round, acquisition, \
               r_a, r_b, margin, entropy, gold_choice, target_votes, votes, created_at, import_id, import_key, extra) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULLIF($9, 'NaN'), NULLIF($10, 'NaN'), NULLIF($11, 'NaN'), \
               NULLIF($12, 'NaN'), $13, $14, 0, $15, $16, $17, $18)",
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
        .bind(import)
        .bind(&p.import_key)
        .bind(&p.extra)
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
