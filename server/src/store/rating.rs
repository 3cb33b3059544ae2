//! The rater flow: who gets which pair, leases, labels and undo.
//!
//! A pair wants `target_votes` distinct raters. Slot `s` of a pair is one row of
//! `assignments`; the primary key (pair, slot) caps the overlap and the unique (pair, rater)
//! keeps a rater to one slot, so two servers racing for the last slot cannot both win. A
//! claim is one conditional statement: an INSERT of a free slot (`ON CONFLICT DO NOTHING`) or
//! an UPDATE that takes over a slot whose lease has expired unfinished. Gold pairs are open
//! to every rater once, mixed in at the project's rate. Pairs of a human win-rate check
//! (`pairs.check_id`, see `store::checks`) go only to the check's raters, before anything else.
//!
//! Sides are randomised per assignment and stored with it; raters answer left/right and only
//! the server maps that back to A/B.

use apl_shared::{
    Assignment, Choice, JobKind, JobState, LabelAck, LabelRequest, NextPair, NextStatus, OPEN_AHEAD, PairKind,
    ProjectConfig, RaterChoice, RaterProgress, RatingConfig, Side,
};
use rand::Rng;
use rand::seq::SliceRandom;

use super::db::Db;
use super::{Result, Store, StoreError, new_id, now_ms, tokens};

/// A rater resolved from their token.
#[derive(Debug, Clone)]
pub struct Rater {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub quota: Option<i64>,
}

/// What `POST /api/rate/next` found for a rater.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Assigned(Assignment),
    Done,
    Wait { retry_after_seconds: u64 },
    NothingYet { retry_after_seconds: u64 },
}

impl From<Next> for NextPair {
    fn from(n: Next) -> Self {
        let (assignment, status, retry_after_seconds) = match n {
            Next::Assigned(a) => (Some(a), NextStatus::Assigned, None),
            Next::Done => (None, NextStatus::Done, None),
            Next::Wait { retry_after_seconds } => (None, NextStatus::Wait, Some(retry_after_seconds)),
            Next::NothingYet { retry_after_seconds } => (None, NextStatus::NothingYet, Some(retry_after_seconds)),
        };
        NextPair { assignment, status, retry_after_seconds }
    }
}

/// Why a rater token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefused {
    /// No such token, or the rater was removed.
    Unknown,
    /// The invite's `expires_at` has passed.
    Expired,
}

const MAX_RATIONALE: usize = 2000;

fn as_choice(side: Side) -> Choice {
    match side {
        Side::A => Choice::A,
        Side::B => Choice::B,
    }
}

fn side_choice(left_side: Side, c: RaterChoice) -> Choice {
    let (left, right) = (as_choice(left_side), as_choice(left_side.other()));
    match c {
        RaterChoice::Left => left,
        RaterChoice::Right => right,
        RaterChoice::Tie => Choice::Tie,
        RaterChoice::BothBad => Choice::BothBad,
        RaterChoice::Skip => Choice::Skip,
    }
}

fn screen_choice(left_side: Side, c: Choice) -> RaterChoice {
    match c {
        Choice::A if left_side == Side::A => RaterChoice::Left,
        Choice::B if left_side == Side::B => RaterChoice::Left,
        Choice::A | Choice::B => RaterChoice::Right,
        Choice::Tie => RaterChoice::Tie,
        Choice::BothBad => RaterChoice::BothBad,
        Choice::Skip => RaterChoice::Skip,
    }
}

/// Open pairs of a pool: `p.kind` is spelled into the SQL (from the enum) rather than bound, so
/// the planners of both databases can use the partial index `pairs_open`, whose predicate names
/// the kind; a bound parameter cannot be proven to match it. Pairs of an import still running
/// are not open yet.
fn open_train_pairs() -> String {
    format!("p.kind = '{}' AND p.votes < p.target_votes AND {}", PairKind::Train, super::imports::settled("p"))
}

/// How soon a rater waiting while a job prepares the next batch asks again.
const NEXT_BATCH_POLL_SECONDS: u64 = 5;
/// How soon a rater asks again while others finish a round that auto-continue will go on from.
const NEXT_BATCH_WAIT_SECONDS: u64 = 15;

/// The rater's labels so far (skips are not work done): a scalar subquery, `rater` and `skip`
/// the parameters holding the rater's id and `Choice::Skip`. Counted on the covering index
/// `labels_rater_choice`.
fn labels_done_sql(rater: &str, skip: &str) -> String {
    format!("(SELECT COUNT(*) FROM labels l WHERE l.rater_id = {rater} AND l.choice <> {skip})")
}

/// Pairs still open to the rater (a check's pairs only for its raters), counted up to
/// [`OPEN_AHEAD`] so the cost stays flat however large the pool (set a quota for a fixed
/// target): a scalar subquery over the parameters holding the rater's and the project's ids.
/// The limit is a literal: PostgreSQL's generic plan for a parameter limit scans every open pair.
fn open_count_sql(rater: &str, project: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM (SELECT 1 FROM pairs p WHERE p.project_id = {project} AND {} \
           AND (p.check_id IS NULL OR EXISTS (SELECT 1 FROM check_raters c \
                  WHERE c.check_id = p.check_id AND c.rater_id = {rater})) \
           AND (SELECT COUNT(*) FROM labels l WHERE l.pair_id = p.id AND l.rater_id = {rater}) = 0 \
           LIMIT {OPEN_AHEAD}) AS open)",
        open_train_pairs()
    )
}

/// A rater's progress: their quota, or their labels plus the pairs still open to them
/// (`open`, counted up to [`OPEN_AHEAD`]).
fn rater_progress(quota: Option<i64>, done: i64, open: i64) -> RaterProgress {
    match quota {
        Some(q) => RaterProgress { done, target: q, at_least: false },
        None => RaterProgress { done, target: done + open, at_least: open >= OPEN_AHEAD },
    }
}

/// Training pairs: not part of any human check.
const TRAINING_PAIRS: &str = "p.check_id IS NULL";
/// Pairs of the checks this rater (`$2`) was chosen for.
const CHECK_PAIRS: &str = "p.check_id IN (SELECT c.check_id FROM check_raters c WHERE c.rater_id = $2)";

/// What a claim of the oldest open pair of a pool came to.
enum Claim {
    Got(String),
    /// Nothing open for this rater.
    Empty,
    /// Open pairs, but other raters took every one while we tried.
    Busy,
}

fn random_side() -> Side {
    if rand::rng().random_bool(0.5) { Side::A } else { Side::B }
}

impl Store {
    /// The rater holding `token`: refused when there is none (or they were removed), or when
    /// their invite has expired.
    pub async fn rater_by_token(&self, token: &str) -> Result<std::result::Result<Rater, TokenRefused>> {
        let h = tokens::hash(token);
        type Row = (String, String, String, Option<i64>, String, Option<i64>);
        let row: Option<Row> = self
            .read()?
            .db()
            .fetch_optional(
                "SELECT id, project_id, name, quota, token_hash, expires_at FROM raters \
                 WHERE token_hash = $1 AND disabled = 0",
                &[&h],
            )
            .await?;
        let Some((id, project_id, name, quota, token_hash, expires_at)) = row else {
            return Ok(Err(TokenRefused::Unknown));
        };
        if !tokens::same_hash(&token_hash, &h) {
            return Ok(Err(TokenRefused::Unknown));
        }
        if expires_at.is_some_and(|t| t <= now_ms()) {
            return Ok(Err(TokenRefused::Expired));
        }
        Ok(Ok(Rater { id, project_id, name, quota }))
    }

    pub async fn rating_config(&self, project_id: &str) -> Result<RatingConfig> {
        Ok(self.project(project_id).await?.config.rating)
    }

    pub async fn progress(&self, rater: &Rater) -> Result<RaterProgress> {
        let mut read = self.read()?;
        if let Some(q) = rater.quota {
            let sql = format!("SELECT {}", labels_done_sql("$1", "$2"));
            let (done,): (i64,) = read.db().fetch_one(&sql, &[&rater.id, &Choice::Skip]).await?;
            return Ok(rater_progress(Some(q), done, 0));
        }
        let sql = format!("SELECT {}, {}", labels_done_sql("$1", "$2"), open_count_sql("$1", "$3"));
        let (done, open): (i64, i64) =
            read.db().fetch_one(&sql, &[&rater.id, &Choice::Skip, &rater.project_id]).await?;
        Ok(rater_progress(None, done, open))
    }

    /// The rater's current pair: a lease they already hold, else a newly claimed one; when there
    /// is none, why: done, waiting on other raters' leases, or no pairs yet.
    pub async fn next_assignment(&self, rater: &Rater) -> Result<Next> {
        let NextContext { rating: cfg, held, checks, done, human_loop } =
            next_context(&mut self.read()?.db(), rater).await?;
        let now = now_ms();
        let lease = cfg.lease_seconds as i64 * 1000;
        // 1. A pair they already hold (the newest first, so an undone label comes back first):
        // its lease renewed.
        if let Some(pair) = held {
            let (rater_id, held) = (rater.id.clone(), pair.clone());
            self.write(move |mut db| {
                Box::pin(async move {
                    db.execute(
                        "UPDATE assignments SET lease_expires = $1 WHERE pair_id = $2 AND rater_id = $3 AND done = 0",
                        &[&(now + lease), &held, &rater_id],
                    )
                    .await?;
                    Ok(())
                })
            })
            .await?;
            return self.assignment_view(rater, &pair, done).await.map(Next::Assigned);
        }
        if rater.quota.is_some_and(|q| done >= q) {
            return Ok(Next::Done);
        }
        // 2. A pair of a human check this rater was chosen for, before anything else. Asked only
        // of a rater in some check: the claim walks the open pairs in age order, which for a
        // rater in none would be every open pair of the project on every request.
        if checks > 0 {
            match self.claim_oldest(rater, CHECK_PAIRS, now, lease).await? {
                Claim::Got(pair) => return self.assignment_view(rater, &pair, done).await.map(Next::Assigned),
                // None open, or other check raters hold them all: go on to the rest.
                Claim::Empty | Claim::Busy => {}
            }
        }
        // 3. A gold pair, at the project's rate.
        if cfg.gold_rate > 0.0
            && rand::rng().random_bool(cfg.gold_rate.min(1.0))
            && let Some(pair) = self.claim_gold(rater, now, lease).await?
        {
            return self.assignment_view(rater, &pair, done).await.map(Next::Assigned);
        }
        // 4. The oldest training pair still short of votes that this rater has not seen.
        match self.claim_oldest(rater, TRAINING_PAIRS, now, lease).await? {
            Claim::Got(pair) => self.assignment_view(rater, &pair, done).await.map(Next::Assigned),
            Claim::Empty => self.why_none(rater, now, human_loop).await,
            // Every candidate went to other raters while we looked: the pool is busy, not empty.
            Claim::Busy => Ok(Next::Wait { retry_after_seconds: 1 }),
        }
    }

    /// Why no pair could be claimed: a job is acquiring the next batch, or the project has no
    /// pairs yet (ask again soon); pairs this rater has not seen are still short of votes but
    /// leased to others (wait until the first lease ends, asking sooner when auto-continue will
    /// bring a batch); others are still labelling a round auto-continue will go on from
    /// (`human_loop`; the next batch is on its way); or nothing is left for them.
    ///
    /// Raters poll this while they wait, so every read stops at its first row.
    ///
    /// Through sqlx's pool on both databases, not a read connection of the caller's thread: the
    /// first-expiry query reads every open pair leased to others, unbounded.
    async fn why_none(&self, rater: &Rater, now: i64, human_loop: bool) -> Result<Next> {
        let mut read = super::ReadConn::Pool(&self.pool);
        let acquiring: Option<(i64,)> = read
            .db()
            .fetch_optional(
                "SELECT 1 FROM jobs WHERE project_id = $1 AND state IN ($2, $3) AND kind IN ($4, $5, $6) LIMIT 1",
                &[
                    &rater.project_id,
                    &JobState::Queued,
                    &JobState::Running,
                    &JobKind::Round,
                    &JobKind::Generate,
                    &JobKind::Continue,
                ],
            )
            .await?;
        if acquiring.is_some() {
            return Ok(Next::NothingYet { retry_after_seconds: NEXT_BATCH_POLL_SECONDS });
        }
        let q = format!("SELECT 1 FROM pairs p WHERE p.project_id = $1 AND p.kind = $2 AND {TRAINING_PAIRS} LIMIT 1");
        let any: Option<(i64,)> = read.db().fetch_optional(&q, &[&rater.project_id, &PairKind::Train]).await?;
        if any.is_none() {
            return Ok(Next::NothingYet { retry_after_seconds: 30 });
        }
        // The first expiry among other raters' live leases on pairs this rater could still take.
        let q = format!(
            "SELECT MIN(a.lease_expires) FROM pairs p JOIN assignments a ON a.pair_id = p.id \
             WHERE p.project_id = $1 AND {open} AND ({TRAINING_PAIRS} OR {CHECK_PAIRS}) AND a.done = 0 \
               AND a.lease_expires > $3 \
               AND NOT EXISTS (SELECT 1 FROM assignments m WHERE m.pair_id = p.id AND m.rater_id = $2) \
               AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.rater_id = $2)",
            open = open_train_pairs()
        );
        let (first_expiry,): (Option<i64>,) = read.db().fetch_one(&q, &[&rater.project_id, &rater.id, &now]).await?;
        let next_batch = human_loop && self.next_batch_coming(&rater.project_id).await?;
        if let Some(t) = first_expiry {
            let mut retry = ((t - now).max(0) as u64).div_ceil(1000).max(1);
            if next_batch {
                retry = retry.min(NEXT_BATCH_WAIT_SECONDS);
            }
            return Ok(Next::Wait { retry_after_seconds: retry });
        }
        Ok(match next_batch {
            true => Next::NothingYet { retry_after_seconds: NEXT_BATCH_WAIT_SECONDS },
            false => Next::Done,
        })
    }

    /// Whether auto-continue will go on from the project's newest round (the caller knows it
    /// is on, with people labelling): the round has pairs for raters, is not trained on yet,
    /// and its continue was not stopped by a failure or a cancel.
    pub async fn next_batch_coming(&self, project_id: &str) -> Result<bool> {
        let Some((round, _)) = self.newest_round(project_id).await? else { return Ok(false) };
        let trained = self.trained_on(project_id, round).await?;
        let for_raters: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM pairs WHERE project_id = $1 AND round = $2 AND kind = $3 AND target_votes > 0 \
             AND check_id IS NULL LIMIT 1",
        )
        .bind(project_id)
        .bind(round)
        .bind(PairKind::Train)
        .fetch_optional(&self.pool)
        .await?;
        Ok(trained.is_none() && for_raters.is_some() && !self.continue_stopped(project_id, round).await?)
    }

    /// Claims the oldest open pair matching `pool` (a fixed SQL condition on `p`, where `$2` is
    /// the rater) that this rater has not seen.
    async fn claim_oldest(&self, rater: &Rater, pool: &'static str, now: i64, lease: i64) -> Result<Claim> {
        let q = candidates_sql(pool);
        // The common case in one statement; pairs whose slots are all held, some by expired
        // leases, and collisions, go the long way below.
        let r = rater.clone();
        let got = self
            .write(move |mut db| Box::pin(async move { claim_free_slot(&mut db, &r, pool, now, lease).await }))
            .await?;
        if let Some(pair) = got {
            return Ok(Claim::Got(pair));
        }
        for _ in 0..4 {
            let candidates: Vec<(String, i64)> =
                self.read()?.db().fetch_all(&q, &[&rater.project_id, &rater.id, &now]).await?;
            if candidates.is_empty() {
                return Ok(Claim::Empty);
            }
            // Raters asking at once would all race for the oldest pair: each tries the oldest
            // few in its own random order. A failed try writes nothing (as `Store::write` asks).
            let mut candidates = candidates;
            candidates.shuffle(&mut rand::rng());
            let rater_id = rater.id.clone();
            let got = self
                .write(move |mut db| {
                    Box::pin(async move {
                        for (pair, target) in candidates {
                            if claim_slot(&mut db, &pair, &rater_id, target, now, lease).await? {
                                return Ok(Some(pair));
                            }
                        }
                        Ok(None)
                    })
                })
                .await?;
            if let Some(pair) = got {
                return Ok(Claim::Got(pair));
            }
        }
        Ok(Claim::Busy)
    }

    async fn claim_gold(&self, rater: &Rater, now: i64, lease: i64) -> Result<Option<String>> {
        let rows: Vec<(String,)> = self
            .read()?
            .db()
            .fetch_all(
                "SELECT p.id FROM pairs p WHERE p.project_id = $1 AND p.kind = $3 \
                   AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.pair_id = p.id AND a.rater_id = $2) \
                   AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.rater_id = $2) \
                 LIMIT 64",
                &[&rater.project_id, &rater.id, &PairKind::Gold],
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let pair = rows[rand::rng().random_range(0..rows.len())].0.clone();
        let rater_id = rater.id.clone();
        self.write(move |mut db| {
            Box::pin(async move {
                let got = claim_slot(&mut db, &pair, &rater_id, i64::MAX, now, lease).await?;
                Ok(got.then_some(pair))
            })
        })
        .await
    }

    /// The pair as this rater sees it (they must hold or have held it), with their progress
    /// (`done`: their labels so far), in one statement.
    async fn assignment_view(&self, rater: &Rater, pair: &str, done: i64) -> Result<Assignment> {
        let q = format!(
            "SELECT a.left_side, a.lease_expires, pr.text AS prompt, ca.text AS text_a, cb.text AS text_b, {} AS open \
             FROM assignments a JOIN pairs p ON p.id = a.pair_id JOIN prompts pr ON pr.id = p.prompt_id \
             JOIN completions ca ON ca.id = p.completion_a JOIN completions cb ON cb.id = p.completion_b \
             WHERE a.pair_id = $1 AND a.rater_id = $2",
            if rater.quota.is_some() { "0".to_string() } else { open_count_sql("$2", "$3") }
        );
        let (left_side, lease_expires_at, prompt, a, b, open): (Side, i64, String, String, String, i64) = self
            .read()?
            .db()
            .fetch_optional(&q, &[&pair, &rater.id, &rater.project_id])
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("pair {pair:?} is not assigned to you")))?;
        let (left, right) = match left_side {
            Side::A => (a, b),
            Side::B => (b, a),
        };
        Ok(Assignment {
            pair: pair.to_string(),
            prompt,
            left,
            right,
            lease_expires_at,
            progress: rater_progress(rater.quota, done, open),
        })
    }

    /// Stores a label; acknowledged only once committed. A retry of the same label returns the
    /// stored one; a different answer for a labelled pair must be undone first.
    pub async fn submit_label(&self, rater: &Rater, req: &LabelRequest) -> Result<LabelAck> {
        if let Some(r) = &req.rationale
            && r.chars().count() > MAX_RATIONALE
        {
            return Err(StoreError::Invalid(format!("rationale: longer than {MAX_RATIONALE} characters")));
        }
        if req.time_ms > 24 * 3600 * 1000 {
            return Err(StoreError::Invalid("time_ms: more than a day".into()));
        }
        let (rater_c, req_c) = (rater.clone(), req.clone());
        let stored =
            self.write(move |mut db| Box::pin(async move { store_label(&mut db, &rater_c, &req_c).await })).await?;
        // The next pair, when asked for, is claimed after the label is committed: a failure
        // there cannot take the label back. (Claiming it in the label's own commit measured no
        // faster: the writer's statements, not its commits, are what raters queue for.)
        let next: Option<NextPair> = match req.next {
            // The label is stored: a failure to find the next pair is not reported as its
            // failure (the page then asks for the next pair itself).
            true => match self.next_assignment(rater).await {
                Ok(n) => Some(n.into()),
                Err(e) => {
                    tracing::warn!(rater = %rater.id, error = %e, "the next pair after a label");
                    None
                }
            },
            false => None,
        };
        let progress = match next.as_ref().and_then(|n| n.assignment.as_ref()) {
            Some(a) => a.progress,
            None => self.progress(rater).await?,
        };
        Ok(LabelAck { pair: req.pair.clone(), choice: stored.choice, created_at: stored.created_at, progress, next })
    }

    /// Takes back the rater's label on `pair` and gives the pair back to them.
    pub async fn undo_label(&self, rater: &Rater, pair: &str) -> Result<Assignment> {
        let cfg = self.rating_config(&rater.project_id).await?;
        let now = now_ms();
        let lease = cfg.lease_seconds as i64 * 1000;
        let mut w = self.begin_write().await?;
        // Deleted and read in one statement: of two undos at once only one deletes the row
        // (PostgreSQL's second waits on the row, then finds it gone), so only one takes the
        // vote back.
        let deleted: Option<Choice> =
            sqlx::query_scalar("DELETE FROM labels WHERE pair_id = $1 AND rater_id = $2 RETURNING choice")
                .bind(pair)
                .bind(&rater.id)
                .fetch_optional(&mut *w.tx)
                .await?;
        let Some(choice) = deleted else {
            w.rollback().await?;
            return Err(StoreError::NotFound(format!("you have no label on pair {pair:?}")));
        };
        if choice == Choice::Skip {
            let (kind, target_votes): (PairKind, i64) =
                sqlx::query_as("SELECT kind, target_votes FROM pairs WHERE id = $1")
                    .bind(pair)
                    .fetch_one(&mut *w.tx)
                    .await?;
            let target = if kind == PairKind::Gold { i64::MAX } else { target_votes };
            if !claim_slot(&mut Db::Conn(&mut w.tx), pair, &rater.id, target, now, lease).await? {
                w.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "pair {pair:?} went to other raters after you skipped it; it cannot be undone"
                )));
            }
        } else {
            sqlx::query(
                "UPDATE assignments SET done = 0, leased_at = $1, lease_expires = $2 WHERE pair_id = $3 AND rater_id = $4",
            )
            .bind(now)
            .bind(now + lease)
            .bind(pair)
            .bind(&rater.id)
            .execute(&mut *w.tx)
            .await?;
            sqlx::query("UPDATE pairs SET votes = votes - 1 WHERE id = $1").bind(pair).execute(&mut *w.tx).await?;
        }
        w.commit().await?;
        let done = self.progress(rater).await?.done;
        self.assignment_view(rater, pair, done).await
    }

    /// The rater's own labels, newest first.
    pub async fn own_labels(&self, rater: &Rater, limit: i64) -> Result<Vec<LabelAck>> {
        let rows: Vec<(String, Choice, Side, i64)> = sqlx::query_as(
            "SELECT pair_id, choice, left_side, created_at FROM labels WHERE rater_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(&rater.id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let progress = self.progress(rater).await?;
        Ok(rows
            .into_iter()
            .map(|(pair, choice, left, created_at)| LabelAck {
                pair,
                choice: screen_choice(left, choice),
                created_at,
                progress,
                next: None,
            })
            .collect())
    }
}

/// A label as stored: the rater's answer and when it was first given.
struct Stored {
    choice: RaterChoice,
    created_at: i64,
}

/// Stores `req` as `rater`'s label, in the caller's transaction: the write of
/// [`Store::submit_label`]. A repeat of the stored label answers that label; every refusal is
/// decided before anything is written.
async fn store_label(db: &mut Db<'_>, rater: &Rater, req: &LabelRequest) -> Result<Stored> {
    let now = now_ms();
    let rationale = req.rationale.as_deref().map(str::trim).filter(|s| !s.is_empty());
    // The common case: the rater holds the pair, unlabelled. Their slot is marked done first,
    // which reads its sides and locks it: on PostgreSQL a concurrent takeover of an expired
    // lease is waited for, after which the slot is no longer theirs and nothing is written (a
    // label inserted first could outlive its slot and count a vote past the target).
    let held: Option<(Side,)> = db
        .fetch_optional(
            "UPDATE assignments SET done = 1 WHERE pair_id = $1 AND rater_id = $2 AND done = 0 RETURNING left_side",
            &[&req.pair, &rater.id],
        )
        .await?;
    if let Some((left,)) = held {
        let choice = side_choice(left, req.choice);
        let inserted = db
            .execute(
                "INSERT INTO labels (id, pair_id, rater_id, choice, left_side, time_ms, rationale, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (pair_id, rater_id) DO NOTHING",
                &[&new_id(), &req.pair, &rater.id, &choice, &left, &(req.time_ms as i64), &rationale, &now],
            )
            .await?;
        if inserted == 0 {
            // An unfinished slot with a label cannot be (undo takes both back together): a
            // database-level error, so everything of this write is rolled back.
            return Err(StoreError::Db(sqlx::Error::Protocol(format!(
                "pair {:?}: a label stored on an unfinished slot",
                req.pair
            ))));
        }
        if choice == Choice::Skip {
            // The slot goes back to the pool; the label row keeps the pair from this rater.
            db.execute("DELETE FROM assignments WHERE pair_id = $1 AND rater_id = $2", &[&req.pair, &rater.id]).await?;
        } else {
            db.execute("UPDATE pairs SET votes = votes + 1 WHERE id = $1", &[&req.pair]).await?;
        }
        return Ok(Stored { choice: req.choice, created_at: now });
    }
    // No unfinished slot: the pair has the rater's label already (a retry, another tab), or
    // they do not hold it. Which, read in one statement.
    let (held, choice, label_left, created_at): (Option<Side>, Option<Choice>, Option<Side>, Option<i64>) = db
        .fetch_one(
            "SELECT a.left_side, l.choice, l.left_side, l.created_at FROM (SELECT 1 AS one) o \
             LEFT JOIN assignments a ON a.pair_id = $1 AND a.rater_id = $2 \
             LEFT JOIN labels l ON l.pair_id = $1 AND l.rater_id = $2",
            &[&req.pair, &rater.id],
        )
        .await?;
    if let (Some(choice), Some(left), Some(created_at)) = (choice, label_left, created_at) {
        let stored = screen_choice(left, choice);
        if stored != req.choice {
            return Err(StoreError::Conflict(format!(
                "pair {:?} already has your label ({stored:?}); undo it to change it",
                req.pair
            )));
        }
        return Ok(Stored { choice: stored, created_at });
    }
    if held.is_some() {
        // Held and unlabelled now, finished a moment ago: a concurrent undo took the label back
        // between the update and this read (PostgreSQL).
        return Err(StoreError::Conflict(format!("pair {:?}: another request changed it; try again", req.pair)));
    }
    let in_project = db
        .fetch_optional::<(i64,)>(
            "SELECT 1 FROM pairs WHERE id = $1 AND project_id = $2",
            &[&req.pair, &rater.project_id],
        )
        .await?
        .is_some();
    Err(if in_project {
        StoreError::Conflict(format!(
            "your lease on pair {:?} expired and it went to another rater; ask for the next pair",
            req.pair
        ))
    } else {
        StoreError::NotFound(format!("pair {:?} is not assigned to you", req.pair))
    })
}

/// What the choice of a rater's next pair depends on.
struct NextContext {
    rating: RatingConfig,
    /// A pair they hold unlabelled (the newest first, so an undone label comes back first).
    held: Option<String>,
    /// Human checks they were chosen for.
    checks: i64,
    /// Their labels so far.
    done: i64,
    /// People label the project's rounds and auto-continue is on: a rater with nothing left
    /// in a round not yet trained on is waiting for the next batch, not done.
    human_loop: bool,
}

/// Reads the [`NextContext`] in one statement (each statement is a round trip to the database's
/// connection).
async fn next_context(db: &mut Db<'_>, rater: &Rater) -> Result<NextContext> {
    let q = format!(
        "SELECT p.config, \
           (SELECT a.pair_id FROM assignments a WHERE a.rater_id = $2 AND a.done = 0 \
              ORDER BY a.leased_at DESC LIMIT 1) AS held, \
           (SELECT COUNT(*) FROM check_raters c WHERE c.rater_id = $2) AS checks, \
           {} AS done \
         FROM projects p WHERE p.id = $1",
        labels_done_sql("$2", "$3")
    );
    let (config, held, checks, done): (ProjectConfig, Option<String>, i64, i64) = db
        .fetch_optional(&q, &[&rater.project_id, &rater.id, &Choice::Skip])
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("no project {:?}", rater.project_id)))?;
    let human_loop = config.rating.auto_continue.enabled && !config.loop_settings.labeller.is_automatic();
    Ok(NextContext { rating: config.rating, held, checks, done, human_loop })
}

/// The oldest open pairs matching `pool` (a fixed SQL condition on `p`, where `$2` is the
/// rater) that the rater has not seen and that are short of live or finished slots; `$1` the
/// project, `$3` now.
///
/// Per-pair conditions are scalar subqueries (COUNT ... = 0), not NOT EXISTS: PostgreSQL makes
/// anti-joins of the latter, materialises every open pair and sorts them (2.5 s at 60k pairs),
/// where the scalar form walks `pairs_open` in order and stops at the LIMIT (0.3 ms). SQLite
/// plans both forms as this walk.
fn candidates_sql(pool: &str) -> String {
    format!(
        "SELECT p.id, p.target_votes FROM pairs p \
         WHERE p.project_id = $1 AND {open} AND {pool} \
           AND (SELECT COUNT(*) FROM assignments a WHERE a.pair_id = p.id AND a.rater_id = $2) = 0 \
           AND (SELECT COUNT(*) FROM labels l WHERE l.pair_id = p.id AND l.rater_id = $2) = 0 \
           AND (SELECT COUNT(*) FROM assignments a WHERE a.pair_id = p.id \
                  AND (a.done = 1 OR a.lease_expires > $3)) < p.target_votes \
         ORDER BY p.created_at, p.id LIMIT 8",
        open = open_train_pairs()
    )
}

/// Claims, in one statement, a free slot of one of the [`candidates_sql`] pairs, picked at
/// random among them so raters asking at once rarely collide. None when there is none (or a
/// racing claim took it): nothing is written then.
async fn claim_free_slot(db: &mut Db<'_>, rater: &Rater, pool: &str, now: i64, lease: i64) -> Result<Option<String>> {
    let q = format!(
        "INSERT INTO assignments (pair_id, slot, rater_id, left_side, leased_at, lease_expires, done) \
         SELECT c.id, c.free, $2, $4, $3, $5, 0 FROM \
           (SELECT o.id, o.target_votes, {free} AS free FROM ({candidates}) o) c \
         WHERE c.free < c.target_votes ORDER BY random() LIMIT 1 \
         ON CONFLICT DO NOTHING RETURNING pair_id",
        free = free_slot_sql("o.id"),
        candidates = candidates_sql(pool),
    );
    let got: Option<(String,)> =
        db.fetch_optional(&q, &[&rater.project_id, &rater.id, &now, &random_side(), &(now + lease)]).await?;
    Ok(got.map(|(pair,)| pair))
}

/// The lowest free slot of the pair `pair` (an SQL expression): the slots held are 0.. with
/// holes where a rater skipped, so the lowest free one is 0 or one past a held one.
fn free_slot_sql(pair: &str) -> String {
    format!(
        "(SELECT MIN(s.slot) FROM (SELECT 0 AS slot UNION ALL SELECT h.slot + 1 FROM assignments h WHERE h.pair_id = {pair}) s \
           WHERE s.slot NOT IN (SELECT f.slot FROM assignments f WHERE f.pair_id = {pair}))"
    )
}

/// Claims a slot of `pair` for `rater`: takes over an expired unfinished lease, else inserts
/// the lowest free slot below `target`. False when every slot is live (someone else won).
async fn claim_slot(db: &mut Db<'_>, pair: &str, rater: &str, target: i64, now: i64, lease: i64) -> Result<bool> {
    let side = random_side();
    // The lowest free slot, inserted in one statement when it is below the target (the common
    // case: a pair not yet leased to enough raters). A rater already in the pair, or a racing
    // claim of the same slot, hits a unique key and inserts nothing.
    let insert = format!(
        "INSERT INTO assignments (pair_id, slot, rater_id, left_side, leased_at, lease_expires, done) \
             SELECT $1, f.slot, $2, $3, $4, $5, 0 FROM (SELECT {} AS slot) f \
             WHERE f.slot < $6 ON CONFLICT DO NOTHING",
        free_slot_sql("$1")
    );
    let inserted = db.execute(&insert, &[&pair, &rater, &side, &now, &(now + lease), &target]).await?;
    if inserted == 1 {
        return Ok(true);
    }
    // Every slot below the target is held: take over one whose lease expired unfinished.
    let taken = db
        .execute(
            "UPDATE assignments SET rater_id = $1, left_side = $2, leased_at = $3, lease_expires = $4 \
             WHERE pair_id = $5 AND done = 0 AND lease_expires <= $3 \
               AND slot = (SELECT MIN(slot) FROM assignments WHERE pair_id = $5 AND done = 0 AND lease_expires <= $3) \
               AND NOT EXISTS (SELECT 1 FROM assignments WHERE pair_id = $5 AND rater_id = $1)",
            &[&rater, &side, &now, &(now + lease), &pair],
        )
        .await?;
    Ok(taken == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_map_back_and_forth() {
        for left in [Side::A, Side::B] {
            for c in [RaterChoice::Left, RaterChoice::Right, RaterChoice::Tie, RaterChoice::BothBad, RaterChoice::Skip]
            {
                assert_eq!(screen_choice(left, side_choice(left, c)), c);
            }
        }
        assert_eq!(side_choice(Side::B, RaterChoice::Left), Choice::B);
        assert_eq!(side_choice(Side::B, RaterChoice::Right), Choice::A);
    }
}
