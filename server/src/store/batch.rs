//! Group commit of the raters' writes on SQLite.
//!
//! SQLite has one writer, and each commit in WAL mode with `synchronous = FULL` is an fsync
//! (~0.3 ms on this machine's disk, more than the statements of a label). With one transaction
//! per request the raters' pair claims and labels queue for the writer one fsync each, which
//! capped a project at a few hundred labels a second however fast the rest was. Here the
//! write operations of concurrent requests are run one after the other in *one* transaction,
//! by one task that owns the write lock while it runs them; the batch is committed with one
//! fsync, and only then is each operation's answer handed back: a label is still acknowledged
//! only once it is durable. Under light load a batch is one operation and nothing waits.
//!
//! The contract an operation keeps: when it fails for a reason of its own (a conflict, a pair
//! not found: any error but the database's) it has written nothing, so the others in its batch
//! commit unharmed. A database error fails the whole batch (it is rolled back, every operation
//! in it answers the error, none was acknowledged).
//!
//! PostgreSQL has many writers and flushes concurrent commits together itself (its WAL writer),
//! so there each operation runs in a transaction of its own, as before; one code path writes
//! both.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Result, StoreError};

/// At most this many operations share a commit.
const MAX_BATCH: usize = 64;

/// A write operation: statements on the open transaction's connection.
pub trait WriteOp<T>: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static {}
impl<T, F> WriteOp<T> for F where F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T>> + Send + 'static {}

/// An operation queued for the batch, its result type erased: it runs on the connection (or,
/// given none because the transaction could not begin, does not), says whether it failed with
/// a database error, and leaves a reply to send once the commit is known.
type Job = Box<dyn for<'c> FnOnce(Option<&'c mut AnyConnection>) -> BoxFuture<'c, (bool, Reply)> + Send>;
type Reply = Box<dyn FnOnce(std::result::Result<(), Arc<sqlx::Error>>) + Send>;

/// The queue into the batching task.
#[derive(Clone)]
pub(super) struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the task that runs queued operations in shared transactions, holding
    /// `write_lock` (the store's SQLite write lock) for each batch.
    pub(super) fn start(pool: AnyPool, write_lock: Arc<Mutex<()>>) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, write_lock, rx));
        Self { jobs }
    }

    /// Runs `op` in the next batch; answers once the batch is committed (or failed).
    pub(super) async fn submit<T: Send + 'static>(&self, op: impl WriteOp<T>) -> Result<T> {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = match conn {
                    Some(conn) => op(conn).await,
                    None => Err(StoreError::Invalid("no transaction".into())),
                };
                let db_failed = matches!(result, Err(StoreError::Db(_)));
                let reply: Reply = Box::new(move |commit| {
                    let answer = match (commit, result) {
                        (Ok(()), result) => result,
                        (Err(_), Err(StoreError::Db(own))) => Err(StoreError::Db(own)),
                        // The batch was rolled back: whatever this operation did is gone.
                        (Err(batch), _) => Err(StoreError::Batch(batch)),
                    };
                    let _ = tx.send(answer);
                });
                (db_failed, reply)
            })
        });
        self.jobs.send(job).map_err(|_| StoreError::Invalid("the store is shutting down".into()))?;
        // No answer: the operation panicked (logged) or the writer stopped.
        rx.await.map_err(|_| StoreError::Batch(Arc::new(sqlx::Error::WorkerCrashed)))?
    }
}

async fn run(pool: AnyPool, write_lock: Arc<Mutex<()>>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let _guard = write_lock.lock().await;
        let mut replies = Vec::new();
        let outcome = run_batch(&pool, first, &mut rx, &mut replies).await;
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, operations = replies.len(), "a batch of writes failed and was rolled back");
        }
        let outcome = outcome.map_err(Arc::new);
        for reply in replies {
            reply(outcome.clone());
        }
    }
}

/// One transaction: `first`, then whatever else is queued (up to [`MAX_BATCH`]), committed.
async fn run_batch(
    pool: &AnyPool,
    first: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    replies: &mut Vec<Reply>,
) -> std::result::Result<(), sqlx::Error> {
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            // Nothing runs: the first operation answers the error.
            replies.push(first(None).await.1);
            return Err(e);
        }
    };
    let mut next = Some(first);
    let mut db_failed = false;
    while let Some(job) = next.take() {
        // A panic in an operation must not take the writer (and every later label) with it:
        // its batch is rolled back and the operation answers an error (its reply is gone).
        match std::panic::AssertUnwindSafe(job(Some(&mut tx))).catch_unwind().await {
            Ok((failed, reply)) => {
                replies.push(reply);
                if failed {
                    db_failed = true;
                    break;
                }
            }
            Err(_) => {
                tracing::error!("a write operation panicked; its batch is rolled back");
                db_failed = true;
                break;
            }
        }
        if replies.len() < MAX_BATCH {
            next = rx.try_recv().ok();
        }
    }
    if db_failed {
        tx.rollback().await?;
        return Err(sqlx::Error::Protocol("an operation of the batch failed; the batch was rolled back".into()));
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    /// An operation that inserts `x`; `plain` inserts without `ON CONFLICT`, so a repeated
    /// value is a database error.
    async fn insert(store: &Store, x: i64, plain: bool) -> Result<i64> {
        store
            .write(move |c| {
                Box::pin(async move {
                    let q = if plain {
                        "INSERT INTO t (x) VALUES ($1)"
                    } else {
                        "INSERT INTO t (x) VALUES ($1) ON CONFLICT DO NOTHING"
                    };
                    sqlx::query(q).bind(x).execute(&mut *c).await?;
                    Ok(x)
                })
            })
            .await
    }

    async fn stored(store: &Store) -> Vec<i64> {
        sqlx::query_scalar("SELECT x FROM t ORDER BY x").fetch_all(&store.pool).await.unwrap()
    }

    /// Operations queued while the writer is busy share one commit; one that refuses (having
    /// written nothing) leaves the others committed; a database error rolls back its whole
    /// batch and every operation in it answers an error, none is left half-written.
    #[tokio::test]
    async fn a_batch_commits_together_and_fails_together() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            std::sync::Arc::new(Store::connect(&dir.path().join("b.sqlite").display().to_string()).await.unwrap());
        sqlx::query("CREATE TABLE t (x BIGINT PRIMARY KEY)").execute(&store.pool).await.unwrap();

        // The writer is held, so the next operations queue and run as one batch.
        let held = store.write_lock.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for x in 1..=5 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { insert(&s, x, false).await }));
        }
        let s = store.clone();
        let refusal = tokio::spawn(async move {
            s.write(|_c| Box::pin(async { Err::<(), _>(StoreError::Conflict("no".into())) })).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(held);
        for (x, t) in (1..=5).zip(tasks) {
            assert_eq!(t.await.unwrap().unwrap(), x);
        }
        assert!(matches!(refusal.await.unwrap(), Err(StoreError::Conflict(_))));
        assert_eq!(stored(&store).await, vec![1, 2, 3, 4, 5]);

        // A batch with a database error in it: 6 and 7 go with it, nothing of it is stored.
        let held = store.write_lock.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for (x, plain) in [(6, false), (3, true), (7, false)] {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { insert(&s, x, plain).await }));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(held);
        let answers: Vec<Result<i64>> =
            futures_util::future::join_all(tasks).await.into_iter().map(|t| t.unwrap()).collect();
        assert!(matches!(answers[0], Err(StoreError::Batch(_))), "{:?}", answers[0]);
        assert!(matches!(answers[1], Err(StoreError::Db(_))), "{:?}", answers[1]);
        // The operation after the failing one was not run in that batch: it runs in the next.
        assert_eq!(answers[2].as_ref().ok(), Some(&7), "{:?}", answers[2]);
        assert_eq!(stored(&store).await, vec![1, 2, 3, 4, 5, 7]);

        // An operation that panics fails alone with an error; the writer goes on.
        let r = store.write(|_c| Box::pin(async { panic!("a bug in an operation") as Result<()> })).await;
        assert!(matches!(r, Err(StoreError::Batch(_))), "{r:?}");
        assert_eq!(insert(&store, 8, false).await.unwrap(), 8);
        assert_eq!(stored(&store).await, vec![1, 2, 3, 4, 5, 7, 8]);
    }
}
